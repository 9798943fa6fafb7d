"""Envelope encryption for stored secrets (pure: no I/O, no clock).

    master key (32 bytes, kept outside the database)
      └── wraps a data key (32 bytes, random per secret version), AES-256-GCM,
            AAD = "remit-dek-v1" | master kid | name | version
            └── encrypts the value, AES-256-GCM,
                  AAD = "remit-secret-v1" | name | version

The AAD binds a ciphertext to its secret's name and version: a row copied
under another name, or a data key moved to another secret, does not open.
Rotating the master key (``rewrap``) unwraps each data key with the old master
and wraps it with the new one; the value's nonce and ciphertext stay as they are.

A master key id (``kid``) is a short digest of the key, so a sealed secret
names the master that opens it without revealing it. Errors are ``SealError``
and never carry key or secret material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from remit.core.secrets import Secret
from remit.errors import InvalidRequest, SealError

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
KID_CHARS: Final = 16
MAX_VALUE_BYTES: Final = 64 * 1024
_VALUE_AAD: Final = b"remit-secret-v1"
_WRAP_AAD: Final = b"remit-dek-v1"
_KID_DOMAIN: Final = b"remit-master-kid-v1\x00"


class MasterKey:
    """A 32-byte master key and its id. ``repr`` shows the id only."""

    __slots__ = ("_key", "kid")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise SealError("a master key must be 32 bytes", reason="bad_master_key")
        self._key = key
        self.kid = hashlib.sha256(_KID_DOMAIN + key).hexdigest()[:KID_CHARS]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_b64(cls, text: Secret) -> MasterKey:
        """A master key from base64url (padding optional), as in ``REMIT_MASTER_KEY``."""
        raw = text.reveal().strip()
        try:
            key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise SealError(
                "the master key is not valid base64url", reason="bad_master_key"
            ) from None
        if len(key) != KEY_BYTES:
            raise SealError(
                "the master key must be 32 bytes (base64url encoded)", reason="bad_master_key"
            )
        return cls(key)

    def to_b64(self) -> Secret:
        return Secret(base64.urlsafe_b64encode(self._key).decode("ascii").rstrip("="))

    def _aead(self) -> AESGCM:
        return AESGCM(self._key)

    def __repr__(self) -> str:
        return f"MasterKey(kid={self.kid!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("master keys are not picklable")


MAX_PREVIOUS_KEYS: Final = 16


def parse_master_keys(text: Secret) -> tuple[MasterKey, ...]:
    """Comma-separated base64url master keys (``REMIT_MASTER_KEY_PREVIOUS``), in order,
    without duplicates; blanks around commas are ignored. ``SealError`` (never echoing the
    text) for a bad entry, an empty list or more than ``MAX_PREVIOUS_KEYS``."""
    if not isinstance(text, Secret):
        raise InvalidRequest("master keys must be a Secret", reason="bad_master_key")
    parts = [p.strip() for p in text.reveal().split(",")]
    if not any(parts):
        raise SealError("the list of master keys is empty", reason="bad_master_key")
    if len(parts) > MAX_PREVIOUS_KEYS:
        raise SealError(
            f"at most {MAX_PREVIOUS_KEYS} previous master keys may be given",
            reason="bad_master_key",
        )
    keys: dict[str, MasterKey] = {}
    for index, part in enumerate(parts):
        if not part:
            raise SealError(
                f"previous master key #{index + 1} is empty (a stray comma?)",
                reason="bad_master_key",
            )
        try:
            key = MasterKey.from_b64(Secret(part))
        except SealError:
            raise SealError(
                f"previous master key #{index + 1} is not base64url of 32 bytes",
                reason="bad_master_key",
            ) from None
        keys.setdefault(key.kid, key)
    return tuple(keys.values())


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """A secret at rest: nothing here is plaintext. ``wrapped_key`` is nonce + GCM output."""

    name: str
    version: int
    master_kid: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return (
            f"SealedSecret(name={self.name!r}, version={self.version}, "
            f"master_kid={self.master_kid!r})"
        )


class SecretReader(Protocol):
    """What a lease provider needs: one secret's value by name (``Remit.reveal_secret``)."""

    def reveal_secret(self, name: str) -> Secret: ...


def _value_aad(name: str, version: int) -> bytes:
    return b"\x00".join((_VALUE_AAD, name.encode("utf-8"), str(version).encode("ascii")))


def _wrap_aad(kid: str, name: str, version: int) -> bytes:
    return b"\x00".join(
        (_WRAP_AAD, kid.encode("ascii"), name.encode("utf-8"), str(version).encode("ascii"))
    )


def _wrap(data_key: bytes, master: MasterKey, name: str, version: int) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + master._aead().encrypt(nonce, data_key, _wrap_aad(master.kid, name, version))


def _master_for(sealed: SealedSecret, masters: Iterable[MasterKey]) -> MasterKey:
    by_kid = {m.kid: m for m in masters}
    master = by_kid.get(sealed.master_kid)
    if master is None:
        raise SealError(
            f"secret {sealed.name!r} is sealed by master key {sealed.master_kid}, "
            "which is not available (a wrong or missing master key)",
            reason="master_key_missing",
            kid=sealed.master_kid,
        )
    return master


def _unwrap(sealed: SealedSecret, masters: Iterable[MasterKey]) -> bytes:
    master = _master_for(sealed, masters)
    blob = sealed.wrapped_key
    try:
        data_key = master._aead().decrypt(
            blob[:NONCE_BYTES],
            blob[NONCE_BYTES:],
            _wrap_aad(master.kid, sealed.name, sealed.version),
        )
    except (InvalidTag, ValueError):
        raise SealError(
            f"the data key of secret {sealed.name!r} does not open with master key {master.kid} "
            "(tampered or moved)",
            reason="unwrap_failed",
        ) from None
    if len(data_key) != KEY_BYTES:  # pragma: no cover - only a forged blob could get here
        raise SealError("a data key has the wrong size", reason="unwrap_failed")
    return data_key


def seal(name: str, value: Secret, master: MasterKey, *, version: int = 1) -> SealedSecret:
    """Encrypt ``value`` under a fresh data key, wrapped by ``master``."""
    if not isinstance(value, Secret):
        raise InvalidRequest("a secret value must be a Secret", reason="bad_secret_value")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidRequest("a secret version must be a positive integer", reason="bad_version")
    plaintext = value.reveal().encode("utf-8")
    if len(plaintext) > MAX_VALUE_BYTES:
        raise InvalidRequest("a secret value must be at most 64 KiB", reason="secret_too_large")
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _value_aad(name, version))
    return SealedSecret(
        name=name,
        version=version,
        master_kid=master.kid,
        wrapped_key=_wrap(data_key, master, name, version),
        nonce=nonce,
        ciphertext=ciphertext,
    )


def unseal(sealed: SealedSecret, masters: Iterable[MasterKey]) -> Secret:
    """The value, or ``SealError`` (wrong or missing master, tampered or moved data)."""
    data_key = _unwrap(sealed, masters)
    try:
        plaintext = AESGCM(data_key).decrypt(
            sealed.nonce, sealed.ciphertext, _value_aad(sealed.name, sealed.version)
        )
    except (InvalidTag, ValueError):
        raise SealError(
            f"secret {sealed.name!r} does not decrypt (tampered, or moved from another name "
            "or version)",
            reason="decrypt_failed",
        ) from None
    try:
        return Secret(plaintext.decode("utf-8"))
    except UnicodeDecodeError:  # pragma: no cover - GCM authenticated what seal wrote
        raise SealError("a secret value is not UTF-8", reason="decrypt_failed") from None


def rewrap(sealed: SealedSecret, masters: Iterable[MasterKey], new: MasterKey) -> SealedSecret:
    """The same secret with its data key wrapped by ``new``; nonce and ciphertext unchanged."""
    data_key = _unwrap(sealed, masters)
    return SealedSecret(
        name=sealed.name,
        version=sealed.version,
        master_kid=new.kid,
        wrapped_key=_wrap(data_key, new, sealed.name, sealed.version),
        nonce=sealed.nonce,
        ciphertext=sealed.ciphertext,
    )
