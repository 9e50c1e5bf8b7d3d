"""Secrets at rest: round trip, rotation, wrong key, tampering, no plaintext leaks."""

from __future__ import annotations

import base64

import pytest
from mesh_common.secrets import (
    DecryptionError,
    EncryptedJSON,
    InvalidSecretKey,
    SecretBox,
    SecretKeyMissing,
    generate_key,
)
from pydantic import SecretStr
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select, text
from sqlalchemy.exc import IntegrityError

CREDS = {"user": "svc-export", "password": "hunter2-Üml", "port": 5432}


def test_round_trip_dict_and_str() -> None:
    box = SecretBox([generate_key()])
    assert box.decrypt(box.encrypt(CREDS)) == CREDS
    assert box.decrypt(box.encrypt("s3cr3t")) == "s3cr3t"
    # Fresh nonce per call: equal plaintexts do not give equal tokens.
    assert box.encrypt("s3cr3t") != box.encrypt("s3cr3t")


def test_ciphertext_does_not_contain_plaintext() -> None:
    box = SecretBox([generate_key()])
    token = box.encrypt(CREDS)
    for needle in ("hunter2", "svc-export", "password"):
        assert needle not in token
        assert base64.urlsafe_b64encode(needle.encode()).decode()[:6] not in token


def test_rotation_encrypt_with_first_decrypt_with_any() -> None:
    old, new = generate_key(), generate_key()
    old_box = SecretBox([old])
    token = old_box.encrypt(CREDS)
    rotated_box = SecretBox([new, old])
    assert rotated_box.decrypt(token) == CREDS
    assert rotated_box.needs_rotation(token)
    fresh = rotated_box.rotate(token)
    assert not rotated_box.needs_rotation(fresh)
    assert rotated_box.rotate(fresh) == fresh
    assert SecretBox([new]).decrypt(fresh) == CREDS
    with pytest.raises(DecryptionError):
        old_box.decrypt(fresh)


def test_wrong_key_gives_clear_error_without_secret() -> None:
    key = generate_key()
    token = SecretBox([key]).encrypt("hunter2")
    other = SecretBox([generate_key()])
    with pytest.raises(DecryptionError, match="not configured") as exc:
        other.decrypt(token)
    assert "hunter2" not in str(exc.value)
    assert key not in str(exc.value)
    assert token not in str(exc.value)


@pytest.mark.parametrize("position", [5, 20, -3])
def test_tampering_detected(position: int) -> None:
    box = SecretBox([generate_key()])
    token = box.encrypt(CREDS)
    chars = list(token)
    chars[position] = "A" if chars[position] != "A" else "B"
    with pytest.raises(DecryptionError):
        box.decrypt("".join(chars))


def test_context_binds_token_to_its_column() -> None:
    box = SecretBox([generate_key()])
    token = box.encrypt(CREDS, context="connections.credentials")
    assert box.decrypt(token, context="connections.credentials") == CREDS
    with pytest.raises(DecryptionError, match="authentication"):
        box.decrypt(token, context="other.column")


@pytest.mark.parametrize("bad", ["", "v1.x", "v2.abcd.efgh", "nonsense", "v1.abcd.!!!"])
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(DecryptionError):
        SecretBox([generate_key()]).decrypt(bad)


def test_from_env_missing_and_invalid_keys() -> None:
    with pytest.raises(SecretKeyMissing, match="MESH_SECRET_KEY"):
        SecretBox.from_env(environ={})
    with pytest.raises(SecretKeyMissing):
        SecretBox.from_env(environ={"MESH_SECRET_KEY": " , "})
    short = base64.b64encode(b"x" * 16).decode()
    with pytest.raises(InvalidSecretKey, match="16 bytes") as exc:
        SecretBox.from_env(environ={"MESH_SECRET_KEY": short})
    assert short not in str(exc.value)
    with pytest.raises(InvalidSecretKey, match="#2"):
        SecretBox.from_env(environ={"MESH_SECRET_KEY": f"{generate_key()},not*base64"})


def test_from_env_list_and_standard_base64() -> None:
    k1 = base64.b64encode(b"\xfb" * 32).decode()  # standard alphabet, contains '+' or '/'
    k2 = generate_key()
    box = SecretBox.from_env(environ={"MESH_SECRET_KEY": f"{k1}, {k2}"})
    assert len(box.key_ids) == 2
    assert SecretBox([k1]).decrypt(box.encrypt("x")) == "x"
    assert box.decrypt(SecretBox([k2]).encrypt("y")) == "y"


def test_secretstr_helpers_and_reprs_never_show_secret() -> None:
    key = generate_key()
    box = SecretBox([key])
    s = box.decrypt_secret(box.encrypt("hunter2"))
    assert isinstance(s, SecretStr)
    assert s.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    d = box.decrypt_secrets(box.encrypt(CREDS))
    assert d["password"].get_secret_value() == "hunter2-Üml"
    assert d["port"] == 5432
    assert "hunter2" not in repr(d) and "hunter2" not in str(d)
    assert key not in repr(box) and key[:8] not in repr(box)
    with pytest.raises(DecryptionError):
        box.decrypt_secret(box.encrypt(CREDS))
    with pytest.raises(DecryptionError):
        box.decrypt_secrets(box.encrypt("x"))


def test_encrypted_json_column_round_trip_on_sqlite() -> None:
    box = SecretBox([generate_key()])
    md = MetaData()
    # A provider callable: tables are declared before settings/keys are loaded.
    conn_table = Table(
        "connections",
        md,
        Column("id", Integer, primary_key=True),
        Column("credentials", EncryptedJSON(lambda: box, context="connections.credentials")),
    )
    engine = create_engine("sqlite://")
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            conn_table.insert(), [{"id": 1, "credentials": CREDS}, {"id": 2, "credentials": None}]
        )
        raw = conn.execute(text("SELECT credentials FROM connections WHERE id = 1")).scalar_one()
        assert raw.startswith("v1.") and "hunter2" not in raw
        rows = dict(conn.execute(select(conn_table.c.id, conn_table.c.credentials)).all())
    # Database errors quote the bound (already encrypted) parameters, never the plaintext.
    with pytest.raises(IntegrityError) as exc, engine.begin() as conn:
        conn.execute(conn_table.insert(), {"id": 1, "credentials": CREDS})
    assert "hunter2" not in str(exc.value) and "v1." in str(exc.value)
    assert rows == {1: CREDS, 2: None}
    # The same column read with a box lacking the key fails loudly, not with garbage.
    md2 = MetaData()
    other = Table(
        "connections",
        md2,
        Column("id", Integer, primary_key=True),
        Column("credentials", EncryptedJSON(SecretBox([generate_key()]))),
    )
    with engine.connect() as conn, pytest.raises(DecryptionError):
        conn.execute(select(other.c.credentials).where(other.c.id == 1)).all()


def test_blind_indexes_cover_every_key_primary_first() -> None:
    old, new = generate_key(), generate_key()
    before = SecretBox([old]).blind_index("x", context="c")
    rotating = SecretBox([new, old])
    indexes = rotating.blind_indexes("x", context="c")
    assert indexes == [rotating.blind_index("x", context="c"), before]
    assert indexes[0] != before
    assert SecretBox([new, new]).blind_indexes("x", context="c") == indexes[:1]
