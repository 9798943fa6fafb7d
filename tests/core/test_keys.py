"""Keys: thumbprints, strict JWK loading, raw ES256 signatures, signing keys and key sets."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from remit.core.keys import (
    KeySet,
    SigningKey,
    generate_instance_key,
    jwk_thumbprint,
    load_public_jwk,
    public_jwk,
    sign_es256,
    verify_es256,
)
from remit.core.secrets import Secret
from remit.errors import InvalidRequest

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1

# RFC 9449 (DPoP) section 6.1: this P-256 JWK and its RFC 7638 thumbprint.
RFC9449_JWK = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}
RFC9449_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64int(number: int) -> str:
    return b64(number.to_bytes(32, "big"))


def bad_jwk(jwk: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        load_public_jwk(jwk)
    assert info.value.reason == "bad_jwk"


# --------------------------------------------------------------------------- thumbprints


def test_thumbprint_matches_rfc9449_vector() -> None:
    assert jwk_thumbprint(load_public_jwk(RFC9449_JWK)) == RFC9449_JKT


def test_thumbprint_is_rfc7638_recomputed() -> None:
    key = generate_instance_key().public_key()
    jwk = public_jwk(key)
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    assert jwk_thumbprint(key) == b64(hashlib.sha256(canonical).digest())
    assert len(jwk_thumbprint(key)) == 43


def test_thumbprint_deterministic_and_equal_for_equal_keys() -> None:
    private = generate_instance_key()
    key = private.public_key()
    again = load_public_jwk(public_jwk(key))
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    reloaded = serialization.load_pem_public_key(pem)
    assert isinstance(reloaded, ec.EllipticCurvePublicKey)
    assert jwk_thumbprint(key) == jwk_thumbprint(key) == jwk_thumbprint(again)
    assert jwk_thumbprint(key) == jwk_thumbprint(reloaded)
    assert jwk_thumbprint(key) != jwk_thumbprint(generate_instance_key().public_key())


def test_public_jwk_agrees_with_pyjwt() -> None:
    key = generate_instance_key().public_key()
    theirs = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    assert public_jwk(key) == {k: theirs[k] for k in ("kty", "crv", "x", "y")}
    assert set(public_jwk(key)) == {"kty", "crv", "x", "y"}


def test_thumbprint_refuses_other_curves() -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(InvalidRequest) as info:
        jwk_thumbprint(other)
    assert info.value.reason == "bad_key"


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=P256_N - 1))
def test_thumbprint_round_trip_property(scalar: int) -> None:
    key = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    loaded = load_public_jwk(public_jwk(key))
    assert loaded.public_numbers() == key.public_numbers()
    assert jwk_thumbprint(loaded) == jwk_thumbprint(key)


# --------------------------------------------------------------------------- load_public_jwk


def test_load_public_jwk_accepts_optional_public_members() -> None:
    jwk = {**RFC9449_JWK, "kid": "k1", "alg": "ES256", "use": "sig", "key_ops": ["verify"]}
    assert jwk_thumbprint(load_public_jwk(jwk)) == RFC9449_JKT


def test_load_public_jwk_refuses_private_key() -> None:
    private = generate_instance_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private))
    assert "d" in jwk
    bad_jwk(jwk)
    bad_jwk({**RFC9449_JWK, "d": jwk["d"]})
    bad_jwk({**RFC9449_JWK, "d": ""})


def test_load_public_jwk_refuses_other_curves_and_types() -> None:
    p384 = json.loads(
        jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key())
    )
    bad_jwk(p384)
    bad_jwk({**RFC9449_JWK, "crv": "P-384"})
    bad_jwk({**RFC9449_JWK, "crv": "secp256k1"})
    bad_jwk({**RFC9449_JWK, "kty": "RSA"})
    bad_jwk({**RFC9449_JWK, "kty": "OKP"})
    bad_jwk({**RFC9449_JWK, "kty": "oct"})
    bad_jwk({key: value for key, value in RFC9449_JWK.items() if key != "kty"})
    bad_jwk({key: value for key, value in RFC9449_JWK.items() if key != "crv"})


def test_load_public_jwk_refuses_off_curve_points() -> None:
    numbers = load_public_jwk(RFC9449_JWK).public_numbers()
    bad_jwk({**RFC9449_JWK, "y": b64int((numbers.y + 1) % P256_P)})
    bad_jwk({**RFC9449_JWK, "x": b64int(0), "y": b64int(0)})
    # Coordinates at or beyond the field prime are refused before any curve check.
    bad_jwk({**RFC9449_JWK, "x": b64int(P256_P)})
    bad_jwk({**RFC9449_JWK, "y": b64int(P256_P)})
    bad_jwk({**RFC9449_JWK, "x": b64((2**256 - 1).to_bytes(32, "big"))})


@pytest.mark.parametrize(
    "x",
    [
        RFC9449_JWK["x"] + "=",  # padded
        RFC9449_JWK["x"][:-1],  # 31.x bytes
        RFC9449_JWK["x"] + "A",  # too long
        "A" * 42,
        b64(bytes(31)),
        b64(bytes(33)),
        RFC9449_JWK["x"].replace("-", "+"),  # standard, not url-safe, alphabet
        RFC9449_JWK["x"][:-1] + "t",  # 't' vs 's': stray bits in the last character
        "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBF€",
        "",
        None,
        12345,
        ["x"],
    ],
)
def test_load_public_jwk_refuses_bad_coordinates(x: Any) -> None:
    bad_jwk({**RFC9449_JWK, "x": x})


@pytest.mark.parametrize(
    "jwk",
    [
        None,
        "{}",
        [RFC9449_JWK],
        {},
        {**RFC9449_JWK, "x5c": ["MIIB"]},
        {**RFC9449_JWK, "extra": 1},
        {**RFC9449_JWK, "alg": "RS256"},
        {**RFC9449_JWK, "alg": "none"},
        {**RFC9449_JWK, "use": "enc"},
        {**RFC9449_JWK, "key_ops": ["sign"]},
        {**RFC9449_JWK, "key_ops": "verify"},
        {**RFC9449_JWK, "kid": 7},
        {**RFC9449_JWK, "kid": ""},
        {**RFC9449_JWK, "kid": "k" * 500},
        {**RFC9449_JWK, 1: "x"},
    ],
)
def test_load_public_jwk_refuses_bad_shapes(jwk: Any) -> None:
    bad_jwk(jwk)


def test_load_public_jwk_error_does_not_echo_input() -> None:
    secret_d = b64int(123456789)
    with pytest.raises(InvalidRequest) as info:
        load_public_jwk({**RFC9449_JWK, "d": secret_d})
    assert secret_d not in str(info.value) and secret_d not in repr(info.value)


# --------------------------------------------------------------------------- raw ES256


def test_sign_and_verify_es256_round_trip() -> None:
    private = generate_instance_key()
    signature = sign_es256(private, b"challenge")
    assert isinstance(signature, bytes) and len(signature) == 64
    assert verify_es256(private.public_key(), b"challenge", signature)
    # Interop: the raw signature is the JWS form of an ordinary ECDSA signature.
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    private.public_key().verify(der, b"challenge", ec.ECDSA(hashes.SHA256()))


def test_verify_es256_refuses_bad_signatures() -> None:
    private = generate_instance_key()
    public = private.public_key()
    signature = sign_es256(private, b"challenge")
    assert not verify_es256(public, b"challenge!", signature)
    assert not verify_es256(generate_instance_key().public_key(), b"challenge", signature)
    assert not verify_es256(public, b"challenge", signature[:-1])
    assert not verify_es256(public, b"challenge", signature + b"\0")
    assert not verify_es256(public, b"challenge", b"")
    assert not verify_es256(public, b"challenge", bytes(64))
    assert not verify_es256(public, b"challenge", signature[:32] + P256_N.to_bytes(32, "big"))
    assert not verify_es256(public, b"challenge", (0).to_bytes(32, "big") + signature[32:])
    der = private.sign(b"challenge", ec.ECDSA(hashes.SHA256()))
    assert not verify_es256(public, b"challenge", der)  # DER is not the raw form
    flipped = bytearray(signature)
    flipped[10] ^= 1
    assert not verify_es256(public, b"challenge", bytes(flipped))


def test_es256_refuses_other_curves() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidRequest):
        sign_es256(p384, b"x")
    with pytest.raises(InvalidRequest):
        verify_es256(p384.public_key(), b"x", bytes(64))


# --------------------------------------------------------------------------- SigningKey


def test_signing_key_kid_is_thumbprint_and_repr_is_safe() -> None:
    key = SigningKey.generate(100.0)
    assert key.kid == jwk_thumbprint(key.private_key.public_key())
    pem = key.to_pem()
    assert isinstance(pem, Secret)
    assert "PRIVATE" not in repr(key) and "PRIVATE" not in str(key)
    assert "private_key" not in repr(key) and "public_key" not in repr(key)
    assert "PRIVATE" not in repr(pem) and "PRIVATE" not in str(pem)
    assert "BEGIN PRIVATE KEY" in pem.reveal()
    d = b64int(key.private_key.private_numbers().private_value)
    assert d not in repr(key)


def test_signing_key_refuses_wrong_kid() -> None:
    private = generate_instance_key()
    with pytest.raises(InvalidRequest) as info:
        SigningKey("not-the-thumbprint", private, 1.0)
    assert info.value.reason == "bad_key"


def test_signing_key_public_jwk() -> None:
    key = SigningKey.generate(1.0)
    jwk = key.public_jwk()
    assert jwk["kid"] == key.kid and jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert "d" not in jwk
    assert jwk_thumbprint(load_public_jwk(jwk)) == key.kid


def test_signing_key_pem_round_trip() -> None:
    key = SigningKey.generate(5.0)
    again = SigningKey.from_pem(key.to_pem(), created_at=5.0)
    assert again == key and again.kid == key.kid
    assert SigningKey.from_pem(key.to_pem(), created_at=6.0).kid == key.kid


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "garbage",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "é",
    ],
)
def test_signing_key_from_bad_pem(pem: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        SigningKey.from_pem(Secret(pem), created_at=0.0)
    assert info.value.reason == "bad_key"


def test_signing_key_from_pem_refuses_other_key_types() -> None:
    for private in (ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()):
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        with pytest.raises(InvalidRequest) as info:
            SigningKey.from_pem(Secret(pem), created_at=0.0)
        assert info.value.reason == "bad_key"
        assert pem not in str(info.value)


# --------------------------------------------------------------------------- KeySet


def test_key_set_requires_keys_without_repeats() -> None:
    with pytest.raises(InvalidRequest) as info:
        KeySet([])
    assert info.value.reason == "no_keys"
    key = SigningKey.generate(1.0)
    with pytest.raises(InvalidRequest) as info:
        KeySet([key, key])
    assert info.value.reason == "duplicate_kid"


def test_key_set_active_is_newest_and_lookup_is_own_keys_only() -> None:
    old, new, middle = SigningKey.generate(1.0), SigningKey.generate(3.0), SigningKey.generate(2.0)
    keys = KeySet([old, new, middle])
    assert keys.active is new
    assert keys.get(old.kid) is old
    assert keys.get(SigningKey.generate(4.0).kid) is None
    assert keys.get("") is None
    assert keys.get(None) is None  # type: ignore[arg-type]
    assert keys.get(["x"]) is None  # type: ignore[arg-type]
    assert len(keys) == 3 and set(keys) == {old, new, middle}


def test_key_set_is_immutable() -> None:
    keys = KeySet.generate(1.0)
    with pytest.raises(AttributeError):
        keys.active = SigningKey.generate(2.0)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del keys.active
    assert "PRIVATE" not in repr(keys)


def test_key_set_jwks_newest_first_public_only() -> None:
    old, new = SigningKey.generate(1.0), SigningKey.generate(2.0)
    jwks = KeySet([old, new]).jwks()
    assert [jwk["kid"] for jwk in jwks["keys"]] == [new.kid, old.kid]
    for jwk in jwks["keys"]:
        assert "d" not in jwk
        load_public_jwk(jwk)
    # Readable by a standard JOSE library, as a gateway would.
    assert len(jwt.PyJWKSet.from_dict(jwks).keys) == 2


def test_key_set_rotation_keeps_overlap_then_drops() -> None:
    k0 = SigningKey.generate(0.0)
    ks0 = KeySet([k0])
    k1 = SigningKey.generate(100.0)
    ks1 = ks0.rotated(k1, retain_after=3600.0, now=100.0)
    assert ks1.active is k1 and ks1.get(k0.kid) is k0
    assert ks0.active is k0 and ks0.get(k1.kid) is None  # the old value is unchanged
    k2 = SigningKey.generate(10_000.0)
    ks2 = ks1.rotated(k2, retain_after=3600.0, now=10_000.0)
    # k0 is outside the window; k1 was active until now, so it stays for this overlap.
    assert ks2.active is k2 and ks2.get(k0.kid) is None and ks2.get(k1.kid) is k1
    k3 = SigningKey.generate(20_000.0)
    ks3 = ks2.rotated(k3, retain_after=3600.0, now=20_000.0)
    assert [key.kid for key in ks3] == [k2.kid, k3.kid]


def test_key_set_rotation_keeps_keys_inside_window() -> None:
    keys = [SigningKey.generate(float(t)) for t in (0, 10, 20)]
    ks = KeySet(keys)
    new = SigningKey.generate(30.0)
    rotated = ks.rotated(new, retain_after=15.0, now=30.0)
    assert [key.created_at for key in rotated] == [20.0, 30.0]
    wide = ks.rotated(new, retain_after=1000.0, now=30.0)
    assert len(wide) == 4 and wide.active is new


def test_key_set_rotation_refuses_bad_new_keys() -> None:
    ks = KeySet([SigningKey.generate(10.0)])
    with pytest.raises(InvalidRequest) as info:
        ks.rotated(ks.active, retain_after=10.0, now=20.0)
    assert info.value.reason == "duplicate_kid"
    with pytest.raises(InvalidRequest) as info:
        ks.rotated(SigningKey.generate(5.0), retain_after=10.0, now=20.0)
    assert info.value.reason == "stale_key"
    with pytest.raises(InvalidRequest) as info:
        ks.rotated(SigningKey.generate(20.0), retain_after=-1.0, now=20.0)
    assert info.value.reason == "bad_window"


def test_key_set_generate() -> None:
    ks = KeySet.generate(42.0)
    assert len(ks) == 1 and ks.active.created_at == 42.0
    assert isinstance(ks.active.private_key.curve, ec.SECP256R1)
    assert ks == KeySet(list(ks)) and hash(ks) == hash(KeySet(list(ks)))
