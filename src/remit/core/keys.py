"""Keys: Remit's ES256 signing keys, agent instance keys, JWKs and thumbprints.

Every key here is ECDSA P-256. Remit's signing keys live in a ``KeySet``, an
immutable value whose newest key signs and whose older keys stay only long
enough for the tokens they signed to expire. Instance keys belong to agent
instances: Remit only ever sees their public half, as a JWK, and binds authority
to its RFC 7638 thumbprint (``cnf.jkt``).

``load_public_jwk`` is the one door for untrusted key material: strict about
shape, refuses private keys, and checks that the point is on the curve.
Signatures for attestation challenges are raw ``r || s`` (64 bytes), as in JWS.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, NoReturn

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from remit.core.secrets import Secret
from remit.errors import InvalidRequest

ALG: Final = "ES256"
CRV: Final = "P-256"
COORD_BYTES: Final = 32
SIGNATURE_BYTES: Final = 2 * COORD_BYTES

# The P-256 field prime and group order (FIPS 186-4, D.1.2.3).
_P256_P: Final = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# 32 bytes in unpadded base64url is exactly 43 characters.
_B64_COORD = re.compile(r"^[A-Za-z0-9_-]{43}$")
_THUMBPRINT = re.compile(r"^[A-Za-z0-9_-]{43}$")
_PUBLIC_MEMBERS: Final = frozenset({"kty", "crv", "x", "y", "kid", "alg", "use", "key_ops"})
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_KID: Final = 128
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as JOSE uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _bad_jwk(message: str) -> NoReturn:
    raise InvalidRequest(message, reason="bad_jwk")


def _require_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) or not (
        isinstance(key.curve, ec.SECP256R1)
    ):
        raise InvalidRequest("key must be an ECDSA P-256 key", reason="bad_key")


def _coordinates(public_key: ec.EllipticCurvePublicKey) -> tuple[str, str]:
    _require_p256(public_key)
    numbers = public_key.public_numbers()
    return (
        b64url_encode(numbers.x.to_bytes(COORD_BYTES, "big")),
        b64url_encode(numbers.y.to_bytes(COORD_BYTES, "big")),
    )


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The bare public JWK: ``{"kty": "EC", "crv": "P-256", "x": .., "y": ..}``."""
    x, y = _coordinates(public_key)
    return {"kty": "EC", "crv": CRV, "x": x, "y": y}


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint: unpadded base64url of SHA-256 over the required members.

    For an EC key the required members are ``crv``, ``kty``, ``x``, ``y``, in
    that (lexicographic) order, with no whitespace.
    """
    x, y = _coordinates(public_key)
    text = f'{{"crv":"{CRV}","kty":"EC","x":"{x}","y":"{y}"}}'
    return b64url_encode(hashlib.sha256(text.encode("ascii")).digest())


def is_thumbprint(value: object) -> bool:
    """Whether ``value`` has the shape of a SHA-256 JWK thumbprint."""
    return isinstance(value, str) and _THUMBPRINT.match(value) is not None


def _decode_coordinate(value: object, name: str) -> int:
    if not isinstance(value, str) or not _B64_COORD.match(value):
        _bad_jwk(f"JWK {name} must be 32 bytes of unpadded base64url")
    raw = base64.urlsafe_b64decode(value + "=")
    # Refuse non-canonical encodings (stray bits in the last character), so one
    # key has one spelling and one thumbprint.
    if b64url_encode(raw) != value:
        _bad_jwk(f"JWK {name} is not canonical base64url")
    number = int.from_bytes(raw, "big")
    if number >= _P256_P:
        _bad_jwk(f"JWK {name} is out of range")
    return number


def load_public_jwk(jwk: object) -> ec.EllipticCurvePublicKey:
    """Parse an untrusted public JWK into a P-256 key, or raise ``InvalidRequest(bad_jwk)``.

    Accepts only ``kty`` EC with ``crv`` P-256 and 32-byte ``x``/``y``, plus the
    optional ``kid``, ``alg`` (ES256), ``use`` (sig) and ``key_ops`` members.
    Any private member (``d`` …) is refused: a private key must never be sent.
    """
    if not isinstance(jwk, Mapping):
        _bad_jwk("JWK must be a JSON object")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        _bad_jwk("JWK must not contain private key material")
    if any(not isinstance(member, str) or member not in _PUBLIC_MEMBERS for member in jwk):
        _bad_jwk("JWK has an unexpected member")
    if jwk.get("kty") != "EC":
        _bad_jwk("JWK kty must be EC")
    if jwk.get("crv") != CRV:
        _bad_jwk("JWK crv must be P-256")
    if "alg" in jwk and jwk["alg"] != ALG:
        _bad_jwk("JWK alg must be ES256")
    if "use" in jwk and jwk["use"] != "sig":
        _bad_jwk("JWK use must be sig")
    if "kid" in jwk and (not isinstance(jwk["kid"], str) or not 0 < len(jwk["kid"]) <= _MAX_KID):
        _bad_jwk("JWK kid must be a short string")
    if "key_ops" in jwk:
        ops = jwk["key_ops"]
        if not isinstance(ops, list) or not ops or ops != ["verify"]:
            _bad_jwk("JWK key_ops may only be ['verify']")
    x = _decode_coordinate(jwk.get("x"), "x")
    y = _decode_coordinate(jwk.get("y"), "y")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError:
        _bad_jwk("JWK point is not on the P-256 curve")


def generate_instance_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key pair, as an agent instance would hold."""
    return ec.generate_private_key(ec.SECP256R1())


def sign_es256(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ES256 over ``data``; the signature is raw ``r || s``, 64 bytes."""
    _require_p256(private_key)
    r, s = decode_dss_signature(private_key.sign(data, _ECDSA_SHA256))
    return r.to_bytes(COORD_BYTES, "big") + s.to_bytes(COORD_BYTES, "big")


def verify_es256(public_key: ec.EllipticCurvePublicKey, data: bytes, signature_raw: bytes) -> bool:
    """Whether ``signature_raw`` (``r || s``, 64 bytes) is a valid ES256 signature of ``data``."""
    _require_p256(public_key)
    if not isinstance(signature_raw, bytes) or len(signature_raw) != SIGNATURE_BYTES:
        return False
    r = int.from_bytes(signature_raw[:COORD_BYTES], "big")
    s = int.from_bytes(signature_raw[COORD_BYTES:], "big")
    if not (0 < r < _P256_N and 0 < s < _P256_N):
        return False
    try:
        public_key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of Remit's token-signing keys. ``kid`` is the key's JWK thumbprint.

    The private key never shows in ``repr``; ``to_pem`` returns a ``Secret``.
    Equality and hashing go by ``kid`` and ``created_at``.
    """

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    created_at: float
    public_key: ec.EllipticCurvePublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_p256(self.private_key)
        public_key = self.private_key.public_key()
        if self.kid != jwk_thumbprint(public_key):
            raise InvalidRequest("signing key id must be its JWK thumbprint", reason="bad_key")
        object.__setattr__(self, "public_key", public_key)

    @classmethod
    def from_private_key(
        cls, private_key: ec.EllipticCurvePrivateKey, created_at: float
    ) -> SigningKey:
        _require_p256(private_key)
        return cls(jwk_thumbprint(private_key.public_key()), private_key, created_at)

    @classmethod
    def generate(cls, created_at: float) -> SigningKey:
        return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()), created_at)

    def public_jwk(self) -> dict[str, str]:
        """The public JWK as published in the JWKS, with ``kid``, ``alg`` and ``use``."""
        return {**public_jwk(self.public_key), "kid": self.kid, "alg": ALG, "use": "sig"}

    def to_pem(self) -> Secret:
        """The private key as unencrypted PKCS#8 PEM, wrapped so it cannot leak by accident."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Secret(pem.decode("ascii"))

    @classmethod
    def from_pem(cls, pem: Secret, created_at: float) -> SigningKey:
        """Load a key saved by ``to_pem``; only unencrypted P-256 private keys are accepted."""
        try:
            key = serialization.load_pem_private_key(pem.reveal().encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm):
            raise InvalidRequest("signing key PEM could not be loaded", reason="bad_key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidRequest("signing key must be an ECDSA P-256 key", reason="bad_key")
        return cls.from_private_key(key, created_at)


class KeySet:
    """Remit's own signing keys: an immutable value; ``rotated`` returns a new one.

    The key with the newest ``created_at`` is ``active`` and signs new tokens
    (on a tie, the later one in the sequence). ``get`` looks up only these keys:
    a ``kid`` from a token header can select one of them, never bring its own.
    """

    __slots__ = ("_by_kid", "_keys", "active")

    _keys: tuple[SigningKey, ...]
    _by_kid: Mapping[str, SigningKey]
    active: SigningKey

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        items = tuple(keys)
        if not items:
            raise InvalidRequest("a key set needs at least one key", reason="no_keys")
        by_kid: dict[str, SigningKey] = {}
        for key in items:
            if not isinstance(key, SigningKey):
                raise InvalidRequest("a key set holds signing keys only", reason="bad_key")
            if key.kid in by_kid:
                raise InvalidRequest("a key set must not repeat a key", reason="duplicate_kid")
            by_kid[key.kid] = key
        active = max(enumerate(items), key=lambda pair: (pair[1].created_at, pair[0]))[1]
        object.__setattr__(self, "_keys", items)
        object.__setattr__(self, "_by_kid", MappingProxyType(by_kid))
        object.__setattr__(self, "active", active)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("KeySet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("KeySet is immutable")

    def __repr__(self) -> str:
        return f"KeySet(active={self.active.kid!r}, kids={list(self._by_kid)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeySet):
            return NotImplemented
        return self._keys == other._keys

    def __hash__(self) -> int:
        return hash(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[SigningKey]:
        return iter(self._keys)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return self._keys

    def get(self, kid: str) -> SigningKey | None:
        """One of Remit's own keys by id, or None."""
        return self._by_kid.get(kid) if isinstance(kid, str) else None

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set, newest key first."""
        ordered = sorted(self._keys, key=lambda key: key.created_at, reverse=True)
        return {"keys": [key.public_jwk() for key in ordered]}

    def rotated(self, new_key: SigningKey, *, retain_after: float, now: float) -> KeySet:
        """A new set with ``new_key`` active.

        Older keys are kept while ``created_at >= now - retain_after``, so tokens
        they signed still verify during the overlap. The key that was active
        until now is always kept (it signed tokens up to this moment); it goes
        at a later rotation once it falls outside the window. ``retain_after``
        should be at least the longest token lifetime plus the rotation period.
        """
        if new_key.kid in self._by_kid:
            raise InvalidRequest("the new key is already in the key set", reason="duplicate_kid")
        if new_key.created_at < self.active.created_at:
            raise InvalidRequest("the new key is older than the active key", reason="stale_key")
        if retain_after < 0:
            raise InvalidRequest("retain_after must not be negative", reason="bad_window")
        cutoff = now - retain_after
        kept = [k for k in self._keys if k is self.active or k.created_at >= cutoff]
        return KeySet([*kept, new_key])

    @staticmethod
    def generate(now: float) -> KeySet:
        """A key set with one fresh key, created ``now``."""
        return KeySet([SigningKey.generate(now)])
