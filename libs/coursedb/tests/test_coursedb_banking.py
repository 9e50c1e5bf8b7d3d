"""Bank accounts with the IBAN encrypted at rest (coursedb.banking), on every backend."""

from __future__ import annotations

import datetime as dt

import pytest
from coursedb.banking import (
    BankCipher,
    InvalidIBAN,
    add_account,
    check_iban,
    find_account,
    mask,
    rekey_accounts,
)
from coursedb.engine import create_schema, drop_schema
from coursedb.schema import bank_accounts, participants
from mesh_common.secrets import DecryptionError, SecretBox, generate_key
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
IBAN = "DE89370400440532013000"


def test_check_iban_normalises_and_rejects_without_echoing_digits() -> None:
    checked = check_iban("de89 3704 0044 0532 0130 00")
    assert checked.compact == IBAN
    assert checked.bic == "COBADEFFXXX"
    with pytest.raises(InvalidIBAN) as err:
        check_iban("DE88370400440532013000")  # wrong check digits
    assert "0532" not in str(err.value)
    with pytest.raises(InvalidIBAN):
        check_iban("XX00")


def test_mask_keeps_country_and_last_four() -> None:
    assert mask(IBAN) == "DE** **** **** **** **30 00"


def test_fingerprint_is_keyed_and_ciphertext_bound_to_its_key() -> None:
    a, b = BankCipher(SecretBox([generate_key()])), BankCipher(SecretBox([generate_key()]))
    assert a.fingerprint(IBAN) == a.fingerprint("DE89 3704 0044 0532 0130 00")
    assert a.fingerprint(IBAN) != b.fingerprint(IBAN)
    sealed = a.seal(IBAN)
    assert IBAN not in str(sealed)
    assert a.open(sealed) == IBAN
    with pytest.raises(DecryptionError):
        b.open(sealed)


async def test_add_account_encrypts_dedupes_and_moves_the_default(
    scratch_engine: AsyncEngine,
) -> None:
    cipher = BankCipher(SecretBox([generate_key()]))
    await drop_schema(scratch_engine)
    await create_schema(scratch_engine)
    async with scratch_engine.begin() as conn:
        await conn.execute(
            participants.insert().values(
                id=1, first_name="Jürgen", last_name="Weiß", created_at=T0, updated_at=T0
            )
        )
        first = await add_account(
            conn, cipher, participant_id=1, account_holder="Jürgen Weiß", iban=IBAN
        )
        again = await add_account(
            conn,
            cipher,
            participant_id=1,
            account_holder="J. Weiß",
            iban="DE89 3704 0044 0532 0130 00",
        )
        second = await add_account(
            conn,
            cipher,
            participant_id=1,
            account_holder="Jürgen Weiß",
            iban="DE02120300000000202051",
            make_default=True,
        )
        with pytest.raises(InvalidIBAN):
            await add_account(conn, cipher, participant_id=1, account_holder="x", iban="DE00123")
    assert first == again != second
    async with scratch_engine.connect() as conn:
        rows = {r.id: r for r in await conn.execute(select(bank_accounts))}
        found = await find_account(conn, cipher, 1, "DE02 1203 0000 0000 2020 51")
    assert len(rows) == 2
    assert not rows[first].is_default and rows[second].is_default
    assert rows[first].bic == "COBADEFFXXX"
    assert all(IBAN not in str(tuple(r)) for r in rows.values())
    assert found is not None and found["id"] == second
    assert cipher.open(rows[first]) == IBAN


async def test_account_of_a_new_owner_is_the_default_in_one_statement(
    scratch_engine: AsyncEngine,
) -> None:
    cipher = BankCipher(SecretBox([generate_key()]))
    await drop_schema(scratch_engine)
    await create_schema(scratch_engine)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        statements.append(sql.split()[0].upper())

    async with scratch_engine.begin() as conn:
        await conn.execute(
            participants.insert().values(
                id=7, first_name="Ada", last_name="Neu", created_at=T0, updated_at=T0
            )
        )
        event.listen(scratch_engine.sync_engine, "before_cursor_execute", count)
        try:
            account = await add_account(
                conn,
                cipher,
                participant_id=7,
                account_holder="Ada Neu",
                iban="DE89 3704 0044 0532 0130 00",
                mandate_reference="VHS-7-NEW",
                new_owner=True,
            )
        finally:
            event.remove(scratch_engine.sync_engine, "before_cursor_execute", count)
        with pytest.raises(InvalidIBAN):
            await add_account(
                conn, cipher, participant_id=7, account_holder="x", iban="DE00123", new_owner=True
            )
    assert statements == ["INSERT"]
    async with scratch_engine.connect() as conn:
        [row] = (await conn.execute(select(bank_accounts))).all()
        found = await find_account(conn, cipher, 7, IBAN)
    assert row.id == account and row.is_default and row.mandate_reference == "VHS-7-NEW"
    assert row.iban_masked == mask(IBAN) and cipher.open(row) == IBAN
    assert IBAN not in str(tuple(row))
    assert found is not None and found["id"] == account


async def test_key_rotation_finds_old_accounts_and_rekey_moves_them_to_the_new_key(
    scratch_engine: AsyncEngine,
) -> None:
    """Step 2 of a rotation (``MESH_SECRET_KEY=<new>,<old>``): accounts stored under the old key
    are still found and not stored twice. Step 3 (``rekey_accounts``): every row is re-sealed
    with the new key, after which the old key can go and everything still opens and matches."""
    old_key, new_key = generate_key(), generate_key()
    old = BankCipher(SecretBox([old_key]))
    await drop_schema(scratch_engine)
    await create_schema(scratch_engine)
    async with scratch_engine.begin() as conn:
        for pid in (1, 2, 3):
            await conn.execute(
                participants.insert().values(
                    id=pid, first_name="P", last_name=str(pid), created_at=T0, updated_at=T0
                )
            )
            await add_account(conn, old, participant_id=pid, account_holder="P", iban=IBAN)
    rotating = BankCipher(SecretBox([new_key, old_key]))
    async with scratch_engine.begin() as conn:
        # Without the lookup under every key this would add a second account.
        again = await add_account(conn, rotating, participant_id=1, account_holder="P", iban=IBAN)
        count = len((await conn.execute(select(bank_accounts.c.id))).all())
    assert count == 3
    async with scratch_engine.connect() as conn:
        assert (await find_account(conn, rotating, 1, IBAN))["id"] == again  # type: ignore[index]

    assert await rekey_accounts(scratch_engine, rotating, dry_run=True) == {
        "checked": 3,
        "rekeyed": 3,
    }
    assert await rekey_accounts(scratch_engine, rotating, batch=2) == {"checked": 3, "rekeyed": 3}
    assert await rekey_accounts(scratch_engine, rotating) == {"checked": 3, "rekeyed": 0}

    new_only = BankCipher(SecretBox([new_key]))
    async with scratch_engine.connect() as conn:
        rows = (await conn.execute(select(bank_accounts))).all()
        assert all(new_only.open(r) == IBAN for r in rows)
        assert {r.iban_fingerprint for r in rows} == {new_only.fingerprint(IBAN)}
        assert (await find_account(conn, new_only, 2, IBAN)) is not None
    with pytest.raises(DecryptionError):
        old.open(rows[0])
