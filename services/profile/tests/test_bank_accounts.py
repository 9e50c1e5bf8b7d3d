"""Bank accounts over REST: masked only, validated, encrypted at rest, own accounts only, and
deleted only when no order or mandate needs them. Every response is scanned for full IBANs."""

from __future__ import annotations

import re

import httpx
from coursedb.banking import mask
from coursedb.schema import bank_accounts
from sqlalchemy import select

from .conftest import Rig, World, bearer, iban, participant_token

_BAD_CHECKSUM = "DE00370400440532013000"


def leaks(text: str, world: World, extra: tuple[str, ...] = ()) -> list[str]:
    """Full IBANs (compact or printed in groups of four) or their account numbers in ``text``."""
    found = []
    flat = re.sub(r"\s", "", text)
    for plain in (*world.ibans.values(), *extra):
        if plain in flat or plain[4:] in flat or plain[-10:] in flat:
            found.append(plain[-4:])
    return found


class Recorder:
    """Wraps the client and remembers every response body for the leak scan."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.bodies: list[str] = []

    async def __call__(self, method: str, url: str, **kw: object) -> httpx.Response:
        r = await self.client.request(method, url, **kw)  # type: ignore[arg-type]
        self.bodies.append(r.text + " " + " ".join(f"{k}:{v}" for k, v in r.headers.items()))
        return r


async def test_list_add_default_delete(rig: Rig) -> None:
    w = rig.world
    h = bearer(participant_token(w.alice))
    call = Recorder(rig.client)

    listed = await call("GET", "/me/bank-accounts", headers=h)
    assert listed.status_code == 200
    accounts = listed.json()["accounts"]
    assert [a["id"] for a in accounts] == [w.acct_open, w.acct_free, w.acct_history]
    first = accounts[0]
    assert first["is_default"] and first["iban_masked"] == mask(w.ibans[w.acct_open])
    assert first["iban_masked"].replace(" ", "").startswith("DE**")
    assert first["bic"] == "COBADEFFXXX" and first["bank_name"]
    assert first["mandate_reference"] and first["mandate_signed_on"]
    assert set(first) == {
        "id",
        "iban_masked",
        "account_holder",
        "bic",
        "bank_name",
        "is_default",
        "mandate_reference",
        "mandate_signed_on",
    }

    new_iban = iban(4242424242)
    spaced = " ".join(new_iban[i : i + 4] for i in range(0, len(new_iban), 4)).lower()
    added = await call(
        "POST",
        "/me/bank-accounts",
        headers=h,
        json={"account_holder": " Alice   Adler ", "iban": spaced, "make_default": True},
    )
    assert added.status_code == 201, added.text
    account = added.json()
    assert account["iban_masked"] == mask(new_iban) and account["is_default"]
    assert account["account_holder"] == "Alice Adler"
    assert added.headers["location"] == f"/me/bank-accounts/{account['id']}"
    again = await call(
        "POST", "/me/bank-accounts", headers=h, json={"account_holder": "A", "iban": new_iban}
    )
    assert again.status_code == 200 and again.json()["id"] == account["id"]

    # Stored only encrypted: the row holds no digits of the IBAN beyond the masked tail.
    async with rig.engine.connect() as conn:
        row = (
            await conn.execute(select(bank_accounts).where(bank_accounts.c.id == account["id"]))
        ).one()
    stored = " ".join(str(v) for v in row)
    assert new_iban not in stored and new_iban[4:] not in stored and new_iban[-10:] not in stored

    defaults = [
        a["id"]
        for a in (await call("GET", "/me/bank-accounts", headers=h)).json()["accounts"]
        if a["is_default"]
    ]
    assert defaults == [account["id"]]
    moved = await call("PUT", f"/me/bank-accounts/{w.acct_free}/default", headers=h)
    assert moved.status_code == 200 and moved.json()["is_default"]
    one = await call("GET", f"/me/bank-accounts/{account['id']}", headers=h)
    assert one.status_code == 200 and not one.json()["is_default"]

    in_use = await call("DELETE", f"/me/bank-accounts/{w.acct_open}", headers=h)
    assert in_use.status_code == 409 and in_use.json()["code"] == "bank-account-in-use"
    retained = await call("DELETE", f"/me/bank-accounts/{w.acct_history}", headers=h)
    assert retained.status_code == 409 and retained.json()["code"] == "bank-account-retained"

    # Deleting the default hands the default to the newest remaining account.
    gone = await call("DELETE", f"/me/bank-accounts/{w.acct_free}", headers=h)
    assert gone.status_code == 204
    after = (await call("GET", "/me/bank-accounts", headers=h)).json()["accounts"]
    assert [a["id"] for a in after] == [account["id"], w.acct_history, w.acct_open]
    assert after[0]["is_default"] and not any(a["is_default"] for a in after[1:])
    missing = await call("DELETE", f"/me/bank-accounts/{w.acct_free}", headers=h)
    assert missing.status_code == 404

    assert leaks("\n".join(call.bodies), w, (new_iban,)) == []
    assert leaks(f"echo {spaced.upper()} echo", w, (new_iban,))  # the scan itself can fail


async def test_invalid_iban_and_bic_are_refused_without_echo(rig: Rig) -> None:
    h = bearer(participant_token(rig.world.alice))
    before = (await rig.client.get("/me/bank-accounts", headers=h)).json()
    for bad in (_BAD_CHECKSUM, "DE8937040044053201300", "XX89370400440532013000", "hello-iban"):
        r = await rig.client.post(
            "/me/bank-accounts", headers=h, json={"account_holder": "Alice", "iban": bad}
        )
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "iban-invalid"
        assert "IBAN" in r.json()["detail"]
        assert bad not in r.text and bad[4:] not in r.text  # no digits echoed
    valid = iban(1234567)
    bic = await rig.client.post(
        "/me/bank-accounts",
        headers=h,
        json={"account_holder": "Alice", "iban": valid, "bic": "NOTABIC"},
    )
    assert bic.status_code == 422 and bic.json()["code"] == "bic-invalid"
    assert valid not in bic.text
    too_long = await rig.client.post(
        "/me/bank-accounts", headers=h, json={"account_holder": "Alice", "iban": "D" * 65}
    )
    assert too_long.status_code == 422 and "D" * 20 not in too_long.text
    # Nothing was written.
    assert (await rig.client.get("/me/bank-accounts", headers=h)).json() == before


async def test_other_participants_accounts_do_not_exist_for_me(rig: Rig) -> None:
    w = rig.world
    bob = bearer(participant_token(w.bob))
    mine = (await rig.client.get("/me/bank-accounts", headers=bob)).json()["accounts"]
    assert [a["id"] for a in mine] == [w.bob_acct]
    for method, path in (
        ("GET", f"/me/bank-accounts/{w.acct_free}"),
        ("PUT", f"/me/bank-accounts/{w.acct_free}/default"),
        ("DELETE", f"/me/bank-accounts/{w.acct_free}"),
    ):
        theirs = await rig.client.request(method, path, headers=bob)
        nobody = await rig.client.request(
            method, path.replace(str(w.acct_free), "99999999"), headers=bob
        )
        assert theirs.status_code == nobody.status_code == 404, path
        assert theirs.json()["code"] == nobody.json()["code"] == "bank-account-not-found"
    # Ids beyond the 32-bit coursedb range are a clear 422, never a database error.
    huge = await rig.client.get("/me/bank-accounts/99999999999", headers=bob)
    assert huge.status_code == 422 and huge.json()["code"] == "validation-error"
    alice = bearer(participant_token(w.alice))
    ids = [
        a["id"]
        for a in (await rig.client.get("/me/bank-accounts", headers=alice)).json()["accounts"]
    ]
    assert w.acct_free in ids  # bob's attempts changed nothing
