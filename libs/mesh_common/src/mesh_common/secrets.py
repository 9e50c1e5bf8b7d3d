"""Secrets at rest: encrypt connection credentials before they are stored in a service database.

AES-256-GCM (``cryptography``) with keys from the environment (``MESH_SECRET_KEY``: one or more
base64-encoded 32-byte keys separated by commas or whitespace). The first key encrypts; any listed
key decrypts, so keys rotate by prepending a new one, re-encrypting (:meth:`SecretBox.rotate`),
then dropping the old one. Tokens look like ``v1.<key id>.<base64 nonce+ciphertext>``; the key id
is a short hash of the key, so decryption picks the right key directly and a retired key gives a
clear error. An optional ``context`` is bound as associated data, so a token copied into another
column or row-kind does not decrypt there.

This module must never put a key, a plaintext or a token into an exception message, a repr or a
log line, and must not read the environment at import time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr
from sqlalchemy import Dialect, Text
from sqlalchemy.types import TypeDecorator

ENV_VAR = "MESH_SECRET_KEY"
_VERSION = "v1"
_AAD_PREFIX = b"edumesh.secret.v1|"
_NONCE = 12

Plain = str | dict[str, Any]


class SecretsError(Exception):
    """Base of every secrets failure. Messages never contain key material or plaintext."""


class SecretKeyMissing(SecretsError):
    """No key configured."""


class InvalidSecretKey(SecretsError):
    """A configured key is not base64 of exactly 32 bytes."""


class DecryptionError(SecretsError):
    """The token is malformed, was made with a key we do not hold, or was tampered with."""


def generate_key() -> str:
    """A fresh key in the format ``MESH_SECRET_KEY`` expects (urlsafe base64 of 32 bytes)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _decode_key(raw: str | bytes, position: int) -> bytes:
    if isinstance(raw, bytes) and len(raw) == 32:
        return raw
    text = raw.decode() if isinstance(raw, bytes) else raw
    text = text.strip()
    try:
        # Accept both alphabets: keys come from `openssl rand -base64 32` as well as Fernet tools.
        key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecretKey(f"secret key #{position + 1} is not valid base64") from None
    if len(key) != 32:
        raise InvalidSecretKey(
            f"secret key #{position + 1} decodes to {len(key)} bytes, expected 32"
        )
    return key


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"edumesh.key-id|" + key).hexdigest()[:8]


class SecretBox:
    """Encrypts JSON-able credentials (a string or a dict) into opaque string tokens."""

    __slots__ = ("_by_id", "_index_key", "_index_keys", "_primary_id")

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if isinstance(keys, str | bytes):
            keys = [keys]
        if not keys:
            raise SecretKeyMissing("no secret key given")
        self._by_id: dict[str, AESGCM] = {}
        decoded = [_decode_key(k, i) for i, k in enumerate(keys)]
        for key in decoded:
            self._by_id.setdefault(_key_id(key), AESGCM(key))
        self._primary_id = _key_id(decoded[0])
        # A separate sub-key for blind indexes, so the AES key itself is never used for HMAC.
        self._index_keys = [
            hmac.new(key, b"edumesh.blind-index.v1", hashlib.sha256).digest()
            for key in dict.fromkeys(decoded)
        ]
        self._index_key = self._index_keys[0]

    @classmethod
    def from_env(cls, var: str = ENV_VAR, environ: Mapping[str, str] | None = None) -> SecretBox:
        """Build from ``var`` (comma/whitespace separated keys, first one encrypts)."""
        env = os.environ if environ is None else environ
        raw = env.get(var, "")
        keys = [k for k in re.split(r"[\s,]+", raw) if k]
        if not keys:
            raise SecretKeyMissing(
                f"{var} is not set; generate one with "
                "`python -c 'from mesh_common.secrets import generate_key; print(generate_key())'`"
            )
        return cls(keys)

    def __repr__(self) -> str:
        return f"SecretBox(keys={len(self._by_id)}, primary={self._primary_id})"

    @property
    def key_ids(self) -> list[str]:
        """Short ids of the held keys, primary first (safe to log)."""
        return [self._primary_id, *(k for k in self._by_id if k != self._primary_id)]

    def blind_index(self, value: str, *, context: str) -> str:
        """A keyed fingerprint (HMAC-SHA256, hex) of ``value`` for equality lookups and unique
        constraints on encrypted columns, without storing the value. Derived from the primary key:
        after a key rotation, recompute stored indexes together with :meth:`rotate`, and look
        up with :meth:`blind_indexes` until every stored index is current."""
        msg = context.encode() + b"|" + value.encode()
        return hmac.new(self._index_key, msg, hashlib.sha256).hexdigest()

    def blind_indexes(self, value: str, *, context: str) -> list[str]:
        """:meth:`blind_index` under every held key, the primary key's first: a lookup that
        matches any of them still finds rows indexed before a rotation (while the old key is
        listed). Writes always store :meth:`blind_index`."""
        msg = context.encode() + b"|" + value.encode()
        return [hmac.new(k, msg, hashlib.sha256).hexdigest() for k in self._index_keys]

    def encrypt(self, value: Plain, *, context: str = "") -> str:
        """Encrypt a string or a JSON-able dict with the primary key."""
        if not isinstance(value, str | dict):
            raise TypeError(f"can only encrypt str or dict, not {type(value).__name__}")
        plaintext = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        nonce = os.urandom(_NONCE)
        sealed = self._by_id[self._primary_id].encrypt(
            nonce, plaintext, _AAD_PREFIX + context.encode()
        )
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_VERSION}.{self._primary_id}.{body}"

    def decrypt(self, token: str, *, context: str = "") -> Plain:
        """Return the original string or dict; :class:`DecryptionError` if anything is off."""
        _, kid, body = self._split(token)
        aes = self._by_id.get(kid)
        if aes is None:
            raise DecryptionError(
                f"token was encrypted with key id {kid}, which is not configured "
                f"(held: {', '.join(self.key_ids)})"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise DecryptionError("token body is not valid base64") from None
        if len(raw) < _NONCE + 16:
            raise DecryptionError("token is too short")
        try:
            plaintext = aes.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD_PREFIX + context.encode())
        except InvalidTag:
            raise DecryptionError(
                "token failed authentication (tampered, wrong key or wrong context)"
            ) from None
        value = json.loads(plaintext)
        if not isinstance(value, str | dict):  # pragma: no cover - we only ever encrypt these
            raise DecryptionError("token holds an unexpected payload type")
        return value

    def decrypt_secret(self, token: str, *, context: str = "") -> SecretStr:
        """Decrypt a string credential as :class:`SecretStr`, whose repr/str are masked."""
        value = self.decrypt(token, context=context)
        if not isinstance(value, str):
            raise DecryptionError("token holds a dict, use decrypt_secrets()")
        return SecretStr(value)

    def decrypt_secrets(self, token: str, *, context: str = "") -> dict[str, Any]:
        """Decrypt a dict credential with every string inside wrapped in :class:`SecretStr`."""
        value = self.decrypt(token, context=context)
        if not isinstance(value, dict):
            raise DecryptionError("token holds a string, use decrypt_secret()")
        wrapped = _wrap(value)
        assert isinstance(wrapped, dict)
        return wrapped

    def needs_rotation(self, token: str) -> bool:
        """True when ``token`` was not made with the primary key."""
        return self._split(token)[1] != self._primary_id

    def rotate(self, token: str, *, context: str = "") -> str:
        """Re-encrypt with the primary key (returns ``token`` unchanged if already current)."""
        if not self.needs_rotation(token):
            return token
        return self.encrypt(self.decrypt(token, context=context), context=context)

    @staticmethod
    def _split(token: str) -> tuple[str, str, str]:
        if not isinstance(token, str):
            raise DecryptionError(f"token must be str, not {type(token).__name__}")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or not parts[1] or not parts[2]:
            raise DecryptionError("not a secret token (expected 'v1.<key id>.<data>')")
        return parts[0], parts[1], parts[2]


def _wrap(value: Any) -> Any:
    if isinstance(value, str):
        return SecretStr(value)
    if isinstance(value, dict):
        return {k: _wrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class EncryptedJSON(TypeDecorator[Plain]):
    """Column type that stores a str/dict encrypted and returns it decrypted.

    ``box`` may be a :class:`SecretBox` or a zero-argument callable returning one, so tables can be
    declared at import time while the key is only read when the app starts (settings rule).
    ``context`` (e.g. ``"connections.credentials"``) binds tokens to this column.
    """

    impl = Text
    cache_ok = True

    def __init__(self, box: SecretBox | Callable[[], SecretBox], context: str = "") -> None:
        super().__init__()
        self.box = box
        self.context = context

    def _box(self) -> SecretBox:
        return self.box if isinstance(self.box, SecretBox) else self.box()

    def process_bind_param(self, value: Plain | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return self._box().encrypt(value, context=self.context)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> Plain | None:
        if value is None:
            return None
        return self._box().decrypt(value, context=self.context)

    @property
    def python_type(self) -> type[Any]:
        return dict
