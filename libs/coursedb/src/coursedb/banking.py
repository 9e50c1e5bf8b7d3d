"""Bank accounts in the coursedb, with the IBAN encrypted at rest.

The coursedb never holds a readable IBAN. :class:`BankCipher` turns an IBAN into three columns:

- ``iban_ciphertext``: AES-256-GCM token (``mesh_common.secrets.SecretBox``, key from
  ``MESH_SECRET_KEY``), bound to the context ``coursedb.bank_accounts.iban`` so a token copied into
  another column does not decrypt;
- ``iban_fingerprint``: a keyed HMAC (blind index) of the normalised IBAN, so "does this
  participant already have this account?" and the unique constraint work without the plaintext;
- ``iban_masked``: what screens, mails and APIs show, e.g. ``DE** **** **** **** **30 00``.

IBANs are validated with schwifty (ISO 13616 structure, check digits, national BBAN format) before
anything is written. Callers must not log IBANs; :class:`InvalidIBAN` messages never contain one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh_common.secrets import SecretBox
from schwifty import IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy import Row, RowMapping, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coursedb.schema import bank_accounts

CONTEXT = "coursedb.bank_accounts.iban"


class InvalidIBAN(ValueError):
    """The IBAN is malformed or its check digits are wrong. The message names no digits."""


@dataclass(frozen=True, slots=True)
class CheckedIBAN:
    compact: str  # electronic format: upper case, no spaces
    bic: str | None  # from schwifty's bank registry when the bank is known
    bank_name: str | None


def check_iban(raw: str) -> CheckedIBAN:
    """Validate and normalise ``raw`` (spaces allowed); :class:`InvalidIBAN` if it is not valid."""
    try:
        iban = IBAN(raw)
    except SchwiftyException as exc:
        raise InvalidIBAN(f"not a valid IBAN ({type(exc).__name__})") from None
    bic = iban.bic
    return CheckedIBAN(
        compact=iban.compact,
        bic=str(bic) if bic is not None else None,
        bank_name=iban.bank_name if bic is not None else None,
    )


def mask(compact: str) -> str:
    """``DE89370400440532013000`` → ``DE** **** **** **** **30 00``: country and last four only."""
    hidden = compact[:2] + "*" * (len(compact) - 6) + compact[-4:]
    return " ".join(hidden[i : i + 4] for i in range(0, len(hidden), 4))


class BankCipher:
    """Seals and opens the IBAN columns of ``bank_accounts`` with a :class:`SecretBox`."""

    __slots__ = ("_box",)

    def __init__(self, box: SecretBox) -> None:
        self._box = box

    @classmethod
    def from_env(cls) -> BankCipher:
        """From ``MESH_SECRET_KEY``; raises ``SecretKeyMissing`` with a how-to if it is unset."""
        return cls(SecretBox.from_env())

    def __repr__(self) -> str:
        return "BankCipher(...)"

    def fingerprint(self, iban: str) -> str:
        return self._box.blind_index(check_iban(iban).compact, context=CONTEXT)

    def fingerprints(self, iban: str) -> list[str]:
        """The fingerprint under every held key (current first): lookups match all of them, so
        accounts stored before a key rotation are found until :func:`rekey_accounts` ran."""
        return self._box.blind_indexes(check_iban(iban).compact, context=CONTEXT)

    def reseal(self, row: Mapping[str, Any] | Row[Any]) -> dict[str, str] | None:
        """New ``iban_ciphertext``/``iban_fingerprint`` for a row not sealed with the current key
        (None when it already is): decrypted with whichever held key made it."""
        mapping = row._mapping if isinstance(row, Row) else row
        compact = self.open(mapping)
        fingerprint = self._box.blind_index(compact, context=CONTEXT)
        token = mapping["iban_ciphertext"]
        if not self._box.needs_rotation(token) and mapping["iban_fingerprint"] == fingerprint:
            return None
        return {
            "iban_ciphertext": self._box.encrypt(compact, context=CONTEXT),
            "iban_fingerprint": fingerprint,
        }

    def seal(self, iban: str) -> dict[str, str]:
        """The three stored columns for ``iban`` (validated first)."""
        compact = check_iban(iban).compact
        return {
            "iban_ciphertext": self._box.encrypt(compact, context=CONTEXT),
            "iban_fingerprint": self._box.blind_index(compact, context=CONTEXT),
            "iban_masked": mask(compact),
        }

    def open(self, row: Mapping[str, Any] | Row[Any]) -> str:
        """The plaintext IBAN of a ``bank_accounts`` row (only for the SEPA mandate / export)."""
        mapping = row._mapping if isinstance(row, Row) else row
        value = self._box.decrypt(mapping["iban_ciphertext"], context=CONTEXT)
        if not isinstance(value, str):  # pragma: no cover - seal only stores strings
            raise ValueError("bank account holds an unexpected IBAN payload")
        return value


async def find_account(
    conn: AsyncConnection, cipher: BankCipher, participant_id: int, iban: str
) -> RowMapping | None:
    """The participant's stored account with this IBAN, if any (looked up by fingerprint)."""
    row = (
        await conn.execute(
            select(bank_accounts).where(
                bank_accounts.c.participant_id == participant_id,
                bank_accounts.c.iban_fingerprint.in_(cipher.fingerprints(iban)),
            )
        )
    ).first()
    return row._mapping if row is not None else None


def account_row(
    cipher: BankCipher,
    *,
    participant_id: Any,
    account_holder: str,
    iban: str | CheckedIBAN,
    bic: str | None = None,
    mandate_reference: Any = None,
    mandate_signed_on: dt.date | None = None,
    is_default: bool = False,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The columns of a new ``bank_accounts`` row: the IBAN validated (:class:`InvalidIBAN`),
    encrypted, fingerprinted and masked. For callers that insert the row themselves, e.g. in
    one statement with the participant it belongs to: ``participant_id`` and
    ``mandate_reference`` may be SQL expressions. The caller keeps the rules of
    :func:`add_account` (no duplicate IBAN per participant, one default account)."""
    checked = iban if isinstance(iban, CheckedIBAN) else check_iban(iban)
    stamp = now or dt.datetime.now(dt.UTC)
    return {
        "participant_id": participant_id,
        "account_holder": account_holder[:70],
        **cipher.seal(checked.compact),
        "bic": (bic or checked.bic),
        "bank_name": checked.bank_name,
        "mandate_reference": mandate_reference,
        "mandate_signed_on": mandate_signed_on,
        "is_default": is_default,
        "created_at": stamp,
        "updated_at": stamp,
        "row_version": 1,
    }


async def add_account(
    conn: AsyncConnection,
    cipher: BankCipher,
    *,
    participant_id: int,
    account_holder: str,
    iban: str,
    bic: str | None = None,
    mandate_reference: str | None = None,
    mandate_signed_on: dt.date | None = None,
    make_default: bool = False,
    now: dt.datetime | None = None,
    new_owner: bool = False,
) -> int:
    """Store a new account (IBAN validated and encrypted) or return the existing one's id.

    The first account of a participant becomes the default; ``make_default`` moves the default.
    Runs in the caller's transaction. ``new_owner``: the participant was created in this
    transaction and has no account yet, so nothing is looked up and the account is stored as
    the default with one INSERT (a hot path, e.g. a web booking by a new person).
    """
    checked = check_iban(iban)
    stamp = now or dt.datetime.now(dt.UTC)
    values = account_row(
        cipher,
        participant_id=participant_id,
        account_holder=account_holder,
        iban=checked,
        bic=bic,
        mandate_reference=mandate_reference,
        mandate_signed_on=mandate_signed_on,
        is_default=new_owner,
        now=stamp,
    )
    if new_owner:
        result = await conn.execute(insert(bank_accounts).values(**values))
        return int(result.inserted_primary_key[0])  # type: ignore[index]
    existing = await find_account(conn, cipher, participant_id, checked.compact)
    if existing is not None:
        account_id = int(existing["id"])
    else:
        count = await conn.scalar(
            select(func.count())
            .select_from(bank_accounts)
            .where(bank_accounts.c.participant_id == participant_id)
        )
        result = await conn.execute(insert(bank_accounts).values(**values))
        account_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        make_default = make_default or not count
    if make_default:
        await set_default(conn, participant_id, account_id, now=stamp)
    return account_id


async def set_default(
    conn: AsyncConnection, participant_id: int, account_id: int, *, now: dt.datetime | None = None
) -> None:
    """Make ``account_id`` the participant's default account (at most one default per person)."""
    stamp = now or dt.datetime.now(dt.UTC)
    await conn.execute(
        update(bank_accounts)
        .where(
            bank_accounts.c.participant_id == participant_id,
            bank_accounts.c.is_default.is_(True),
            bank_accounts.c.id != account_id,
        )
        .values(is_default=False, updated_at=stamp, row_version=bank_accounts.c.row_version + 1)
    )
    await conn.execute(
        update(bank_accounts)
        .where(bank_accounts.c.id == account_id, bank_accounts.c.participant_id == participant_id)
        .values(is_default=True, updated_at=stamp, row_version=bank_accounts.c.row_version + 1)
    )


async def rekey_accounts(
    engine: Any, cipher: BankCipher, *, batch: int = 500, dry_run: bool = False
) -> dict[str, int]:
    """Re-encrypt every IBAN with the current (first) key and recompute its fingerprint: step 3
    of a ``MESH_SECRET_KEY`` rotation (docs/operations.md). Batches of ``batch`` rows, each in
    its own transaction, keyset-paged by id, so it can run while the centre works and be
    resumed. ``row_version``/``updated_at`` are left alone: the account did not change. Returns
    ``{"checked": n, "rekeyed": m}``; ``dry_run`` only counts. A row that no held key opens
    raises ``DecryptionError`` naming the missing key id (nothing of that batch is written)."""
    a = bank_accounts
    checked = rekeyed = 0
    after = 0
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(a.c.id, a.c.iban_ciphertext, a.c.iban_fingerprint)
                    .where(a.c.id > after)
                    .order_by(a.c.id)
                    .limit(batch)
                )
            ).all()
            if not rows:
                break
            for row in rows:
                checked += 1
                new = cipher.reseal(row)
                if new is None:
                    continue
                rekeyed += 1
                if not dry_run:
                    await conn.execute(update(a).where(a.c.id == row.id).values(**new))
            after = int(rows[-1].id)
    return {"checked": checked, "rekeyed": rekeyed}
