"""Tokens and call proofs. Security tests: every forgery here must be refused."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

import remit.core.tokens as tokens_module
from remit.clock import ManualClock
from remit.core.keys import (
    KeySet,
    SigningKey,
    generate_instance_key,
    jwk_thumbprint,
    load_public_jwk,
    public_jwk,
    sign_es256,
)
from remit.core.tokens import (
    MAX_TOKEN_BYTES,
    IdentityClaims,
    ProofClaims,
    TaskClaims,
    TokenService,
    make_call_proof,
    thaw,
    token_hash,
    verify_call_proof,
)
from remit.errors import (
    InvalidProof,
    InvalidRequest,
    InvalidToken,
    RemitError,
    TokenExpired,
)

ISSUER = "https://remit.test"
AUDIENCE = "remit"
AGENT = "spiffe://remit.test/agent/mailer"
INSTANCE = "ins_0123456789abcdefXYZ"
TASK = "tsk_0123456789abcdefXYZ"
DIGEST = "sha256:" + "ab" * 32
DETAILS: list[dict[str, Any]] = [
    {"type": "remit_tool", "tools": ["mail.send"], "destinations": ["sam@acme.example"]},
    {"type": "remit_data", "sensitivity": "confidential"},
]
ACTOR = {"sub": "spiffe://remit.test/agent/planner", "act": {"sub": "user:sam@acme.example"}}
ARGS = "sha256:" + "cd" * 32
START = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
    )


@dataclass
class World:
    clock: ManualClock
    keys: KeySet
    service: TokenService
    instance_key: ec.EllipticCurvePrivateKey

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.instance_key.public_key())

    def identity(self, ttl: float = 300.0, **overrides: Any) -> tuple[str, IdentityClaims]:
        args: dict[str, Any] = {"agent_id": AGENT, "instance_id": INSTANCE, "jkt": self.jkt}
        return self.service.issue_identity(ttl=ttl, **(args | overrides))

    def task(self, ttl: float = 300.0, **overrides: Any) -> tuple[str, TaskClaims]:
        args: dict[str, Any] = {
            "agent_id": AGENT,
            "instance_id": INSTANCE,
            "task_id": TASK,
            "jkt": self.jkt,
            "mandate_digest": DIGEST,
            "authorization_details": DETAILS,
            "actor": ACTOR,
        }
        return self.service.issue_task(ttl=ttl, **(args | overrides))

    def claims(self, use: str = "task", **overrides: Any) -> dict[str, Any]:
        """A complete, valid-looking payload to sign by hand."""
        now = int(self.clock.now())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "sub": AGENT,
            "aud": [AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "j" * 22,
            "iid": INSTANCE,
            "cnf": {"jkt": self.jkt},
            "token_use": use,
        }
        if use == "task":
            payload |= {
                "tid": TASK,
                "mandate_digest": DIGEST,
                "authorization_details": DETAILS,
            }
        payload |= overrides
        return {key: value for key, value in payload.items() if value is not _DROP}

    def sign(
        self,
        payload: dict[str, Any],
        *,
        typ: str = "remit-task+jwt",
        key: ec.EllipticCurvePrivateKey | None = None,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Sign by hand with Remit's real active key (or another): any header, any claims."""
        signer = key if key is not None else self.keys.active.private_key
        header = {
            "alg": "ES256",
            "typ": typ,
            "kid": kid if kid is not None else self.keys.active.kid,
        }
        signing_input = f"{b64json(header | (headers or {}))}.{b64json(payload)}"
        return f"{signing_input}.{b64(sign_es256(signer, signing_input.encode()))}"


_DROP = object()


@pytest.fixture
def world() -> World:
    clock = ManualClock(START)
    keys = KeySet.generate(clock.now())
    service = TokenService(keys, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    return World(clock, keys, service, generate_instance_key())


def refused(
    call: Callable[[], object],
    token: str,
    reason: str,
    error: type[RemitError] = InvalidToken,
    *,
    exact: bool = True,
) -> RemitError:
    """Assert ``call`` raises ``error`` with ``reason``, and that the message leaks nothing."""
    with pytest.raises(error) as info:
        call()
    exc = info.value
    if exact:
        assert type(exc) is error
    assert exc.reason == reason, (exc.reason, reason)
    text = str(exc) + repr(exc)
    if isinstance(token, str) and len(token) >= 8:
        assert token not in text
        for part in token.split("."):
            if len(part) >= 8:
                assert part not in text
    for value in (AGENT, INSTANCE, TASK, DIGEST, "mail.send", "sam@acme.example"):
        assert value not in text
    return exc


def verify_both(world: World, token: str) -> Iterator[Callable[[], object]]:
    yield lambda: world.service.verify_task(token)
    yield lambda: world.service.verify_identity(token)


# --------------------------------------------------------------------------- issuing


def test_issue_and_verify_task(world: World) -> None:
    token, claims = world.task()
    assert world.service.verify_task(token) == claims
    assert claims.agent_id == AGENT and claims.instance_id == INSTANCE and claims.task_id == TASK
    assert claims.jkt == world.jkt and claims.mandate_digest == DIGEST
    assert claims.issued_at == claims.not_before == START and claims.expires_at == START + 300
    assert thaw(claims.authorization_details) == DETAILS
    assert claims.actor is not None and thaw(claims.actor) == ACTOR
    header, payload = segments(token)
    assert header == {"alg": "ES256", "typ": "remit-task+jwt", "kid": world.keys.active.kid}
    assert payload["iss"] == ISSUER and payload["aud"] == [AUDIENCE] and payload["sub"] == AGENT
    assert payload["token_use"] == "task" and payload["cnf"] == {"jkt": world.jkt}
    assert payload["tid"] == TASK and payload["iid"] == INSTANCE
    assert payload["act"] == ACTOR and payload["authorization_details"] == DETAILS
    assert isinstance(payload["jti"], str) and len(payload["jti"]) >= 16


def test_issue_and_verify_identity(world: World) -> None:
    token, claims = world.identity(ttl=600)
    assert world.service.verify_identity(token) == claims
    assert claims.agent_id == AGENT and claims.instance_id == INSTANCE
    assert claims.audience == (AUDIENCE,) and claims.expires_at == START + 600
    header, payload = segments(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": world.keys.active.kid}
    assert set(payload) == {
        "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "iid", "cnf", "token_use",
    }  # fmt: skip
    assert payload["token_use"] == "identity"


def test_task_without_actor(world: World) -> None:
    token, claims = world.task(actor=None)
    assert claims.actor is None
    assert "act" not in segments(token)[1]
    assert world.service.verify_task(token).actor is None


def test_jti_is_unique(world: World) -> None:
    jtis = {world.task()[1].jti for _ in range(20)}
    assert len(jtis) == 20


def test_claims_are_deep_frozen_and_detached_from_input(world: World) -> None:
    details = [{"type": "remit_tool", "tools": ["mail.send"]}]
    token, claims = world.task(authorization_details=details)
    details[0]["tools"].append("shell.exec")
    assert thaw(claims.authorization_details) == [{"type": "remit_tool", "tools": ["mail.send"]}]
    verified = world.service.verify_task(token)
    with pytest.raises(TypeError):
        verified.authorization_details[0]["tools"] = ["shell.exec"]  # type: ignore[index]
    assert isinstance(verified.authorization_details[0]["tools"], tuple)
    with pytest.raises(AttributeError):
        verified.task_id = "tsk_other"  # type: ignore[misc]
    # The cached claims are the same and unpoisoned.
    assert thaw(world.service.verify_task(token).authorization_details) == thaw(
        claims.authorization_details
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"agent_id": "mailer"},
        {"agent_id": "spiffe://remit.test/"},
        {"agent_id": "spiffe://REMIT/agent/x"},
        {"agent_id": None},
        {"instance_id": ""},
        {"instance_id": "ins with space"},
        {"instance_id": "x" * 129},
        {"instance_id": "inś_1"},
        {"jkt": "short"},
        {"jkt": None},
        {"jkt": "A" * 43 + "="},
        {"ttl": 0},
        {"ttl": 0.5},
        {"ttl": -10},
        {"ttl": 10**9},
        {"ttl": True},
        {"ttl": float("nan")},
        {"ttl": "300"},
        {"task_id": ""},
        {"mandate_digest": "sha256:xyz"},
        {"mandate_digest": "md5:" + "0" * 32},
        {"mandate_digest": "SHA256:" + "0" * 64},
        {"authorization_details": {"type": "remit_tool"}},
        {"authorization_details": [{"tools": ["x"]}]},
        {"authorization_details": [{"type": ""}]},
        {"authorization_details": ["remit_tool"]},
        {"authorization_details": [{"type": "t", "n": float("inf")}]},
        {"authorization_details": [{"type": "t", "big": "x" * 5000}]},
        {"authorization_details": [{"type": "t", "x": object()}]},
        {"actor": {"client_id": "x"}},
        {"actor": {"sub": "a", "act": {"no": "sub"}}},
        {"actor": "spiffe://remit.test/agent/planner"},
    ],
)
def test_issue_task_refuses_bad_input(world: World, overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        world.task(**overrides)


def test_issue_identity_refuses_bad_input(world: World) -> None:
    with pytest.raises(InvalidRequest):
        world.identity(ttl=0)
    with pytest.raises(InvalidRequest):
        world.identity(agent_id="spiffe://remit.test")


def test_service_config_is_checked() -> None:
    clock = ManualClock()
    keys = KeySet.generate(clock.now())
    for kwargs in (
        {"issuer": "", "audience": "a"},
        {"issuer": "i", "audience": ""},
        {"issuer": "i", "audience": "a", "leeway": -1},
        {"issuer": "i", "audience": "a", "cache_size": -1},
    ):
        with pytest.raises(InvalidRequest):
            TokenService(keys, clock=clock, **kwargs)


def test_jwks_serves_public_keys_and_interoperates(world: World) -> None:
    token, _ = world.task()
    jwks = world.service.jwks()
    assert [jwk["kid"] for jwk in jwks["keys"]] == [world.keys.active.kid]
    assert all("d" not in jwk for jwk in jwks["keys"])
    # A gateway verifying offline with a standard library and the published JWKS.
    jwk = jwt.PyJWKSet.from_dict(jwks)[world.keys.active.kid]
    payload = jwt.decode(
        token,
        jwk,
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert payload["tid"] == TASK


# --------------------------------------------------------------------------- algorithm forgeries


def test_alg_none_is_refused(world: World) -> None:
    header = {"alg": "none", "typ": "remit-task+jwt", "kid": world.keys.active.kid}
    forged = f"{b64json(header)}.{b64json(world.claims())}."
    for call in verify_both(world, forged):
        refused(call, forged, "alg_not_allowed")
    # With a trailing signature from a real token, and without typ/kid.
    real, _ = world.task()
    forged2 = f"{b64json(header)}.{b64json(world.claims())}.{real.split('.')[2]}"
    refused(lambda: world.service.verify_task(forged2), forged2, "alg_not_allowed")
    forged3 = f"{b64json({'alg': 'none'})}.{b64json(world.claims())}."
    refused(lambda: world.service.verify_task(forged3), forged3, "alg_not_allowed")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_public_key_pem_as_secret_is_refused(world: World, alg: str) -> None:
    public_pem = world.keys.active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digestmod = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = {"alg": alg, "typ": "remit-task+jwt", "kid": world.keys.active.kid}
    signing_input = f"{b64json(header)}.{b64json(world.claims())}"
    for secret in (public_pem, public_pem.strip(), json.dumps(world.service.jwks()).encode()):
        mac = hmac.new(secret, signing_input.encode(), digestmod).digest()
        forged = f"{signing_input}.{b64(mac)}"
        for call in verify_both(world, forged):
            refused(call, forged, "alg_not_allowed")


@pytest.mark.parametrize(
    "alg",
    [
        "None", "NONE", "nOnE", "RS256", "PS256", "ES384", "ES512", "ES256K", "EdDSA",
        "Ed25519", "es256", "ES256 ", " ES256", "", None, 256, ["ES256"], {"alg": "ES256"},
        "dir", "A128KW",
    ],
)  # fmt: skip
def test_other_algorithms_are_refused(world: World, alg: Any) -> None:
    header = {"alg": alg, "typ": "remit-task+jwt", "kid": world.keys.active.kid}
    real, _ = world.task()
    forged = f"{b64json(header)}.{real.split('.', 1)[1]}"
    refused(lambda: world.service.verify_task(forged), forged, "alg_not_allowed")


def test_missing_alg_is_refused(world: World) -> None:
    header = {"typ": "remit-task+jwt", "kid": world.keys.active.kid}
    real, _ = world.task()
    forged = f"{b64json(header)}.{real.split('.', 1)[1]}"
    refused(lambda: world.service.verify_task(forged), forged, "alg_not_allowed")


def test_eddsa_signed_token_is_refused(world: World) -> None:
    forged = jwt.encode(
        world.claims(),
        ed25519.Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"typ": "remit-task+jwt", "kid": world.keys.active.kid},
    )
    refused(lambda: world.service.verify_task(forged), forged, "alg_not_allowed")


# --------------------------------------------------------------------------- keys and signatures


def test_unknown_kid_is_refused(world: World) -> None:
    attacker = generate_instance_key()
    attacker_kid = jwk_thumbprint(attacker.public_key())
    forged = world.sign(world.claims(), key=attacker, kid=attacker_kid)
    refused(lambda: world.service.verify_task(forged), forged, "unknown_kid")
    header = {"alg": "ES256", "typ": "remit-task+jwt"}  # no kid at all
    real, _ = world.task()
    no_kid = f"{b64json(header)}.{real.split('.', 1)[1]}"
    refused(lambda: world.service.verify_task(no_kid), no_kid, "unknown_kid")
    for kid in (None, 7, ["k"], "", "../../etc/passwd", world.keys.active.kid.lower()):
        bad = f"{b64json(header | {'kid': kid})}.{real.split('.', 1)[1]}"
        refused(lambda bad=bad: world.service.verify_task(bad), bad, "unknown_kid")


def test_remit_kid_with_another_signing_key_is_refused(world: World) -> None:
    forged = world.sign(world.claims(), key=generate_instance_key())
    refused(lambda: world.service.verify_task(forged), forged, "bad_signature")
    forged_id = world.sign(world.claims("identity"), typ="JWT", key=generate_instance_key())
    refused(lambda: world.service.verify_identity(forged_id), forged_id, "bad_signature")


def test_signature_from_another_token_is_refused(world: World) -> None:
    a, _ = world.task()
    b, _ = world.task(task_id="tsk_another0123456789")
    spliced = a.rsplit(".", 1)[0] + "." + b.rsplit(".", 1)[1]
    refused(lambda: world.service.verify_task(spliced), spliced, "bad_signature")


def test_tampered_payload_is_refused(world: World) -> None:
    token, _ = world.task()
    header, _, signature = token.split(".")
    escalated = world.claims(
        authorization_details=[{"type": "remit_tool", "tools": ["shell.exec"]}]
    )
    forged = f"{header}.{b64json(escalated)}.{signature}"
    refused(lambda: world.service.verify_task(forged), forged, "bad_signature")


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "https://evil.example/jwks.json"},
        {"x5u": "https://evil.example/cert.pem"},
        {"x5c": ["MIIBszCCAVmgAwIBAgIUU"]},
        {"crit": ["exp"]},
        {"b64": False, "crit": ["b64"]},
        {"x5t": "abc"},
        {"cty": "JWT"},
        {"zip": "DEF"},
    ],
)
def test_headers_that_are_not_allowed(world: World, extra: dict[str, Any]) -> None:
    # Even signed with Remit's own key, a header with these members is refused.
    forged = world.sign(world.claims(), headers=extra)
    refused(lambda: world.service.verify_task(forged), forged, "header_not_allowed")


def test_embedded_jwk_header_is_refused(world: World) -> None:
    attacker = generate_instance_key()
    jwk = public_jwk(attacker.public_key())
    forged = world.sign(world.claims(), key=attacker, headers={"jwk": jwk})
    refused(lambda: world.service.verify_task(forged), forged, "header_not_allowed")


# --------------------------------------------------------------------------- claims


def test_wrong_issuer_and_audience(world: World) -> None:
    other_issuer = TokenService(
        world.keys, issuer="https://evil.test", audience=AUDIENCE, clock=world.clock
    )
    token, _ = other_issuer.issue_task(
        agent_id=AGENT, instance_id=INSTANCE, task_id=TASK, jkt=world.jkt, ttl=60,
        mandate_digest=DIGEST, authorization_details=DETAILS,
    )  # fmt: skip
    refused(lambda: world.service.verify_task(token), token, "iss_mismatch")
    other_audience = TokenService(
        world.keys, issuer=ISSUER, audience="another-gateway", clock=world.clock
    )
    token2, _ = other_audience.issue_identity(
        agent_id=AGENT, instance_id=INSTANCE, jkt=world.jkt, ttl=60
    )
    refused(lambda: world.service.verify_identity(token2), token2, "aud_mismatch")
    for aud in ([], ["another"], "another", None, [AUDIENCE.upper()], [1], {"a": AUDIENCE}):
        bad = world.sign(world.claims(aud=aud))
        refused(lambda bad=bad: world.service.verify_task(bad), bad, "aud_mismatch")
    for iss in (None, "", ISSUER + "/", ISSUER.upper(), [ISSUER]):
        bad = world.sign(world.claims(iss=iss))
        refused(lambda bad=bad: world.service.verify_task(bad), bad, "iss_mismatch")


def test_audience_as_string_or_among_several(world: World) -> None:
    for aud in (AUDIENCE, ["other", AUDIENCE]):
        token = world.sign(world.claims(aud=aud))
        world.service.verify_task(token)


@pytest.mark.parametrize(
    "claim",
    ["sub", "iid", "jti", "cnf", "iat", "nbf", "tid", "mandate_digest", "authorization_details"],
)
def test_missing_claims(world: World, claim: str) -> None:
    forged = world.sign(world.claims(**{claim: _DROP}))
    refused(lambda: world.service.verify_task(forged), forged, "missing_claim")


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": 7},
        {"sub": ""},
        {"iid": ["x"]},
        {"jti": None},
        {"cnf": "jkt"},
        {"cnf": {}},
        {"cnf": {"jkt": "short"}},
        {"cnf": {"x5t#S256": "A" * 43}},
        {"iat": "now"},
        {"nbf": True},
        {"exp": "later"},
        {"exp": None},
        {"tid": 5},
        {"authorization_details": {"type": "x"}},
        {"authorization_details": ["x"]},
        {"act": "planner"},
    ],
)
def test_claims_with_wrong_types(world: World, overrides: dict[str, Any]) -> None:
    forged = world.sign(world.claims(**overrides))
    refused(lambda: world.service.verify_task(forged), forged, "missing_claim")


def test_missing_exp_is_expired(world: World) -> None:
    forged = world.sign(world.claims(exp=_DROP))
    refused(lambda: world.service.verify_task(forged), forged, "expired", TokenExpired)


# --------------------------------------------------------------------------- token types


def test_identity_token_is_not_a_task_token_and_back(world: World) -> None:
    identity, _ = world.identity()
    task, _ = world.task()
    refused(lambda: world.service.verify_task(identity), identity, "typ_mismatch")
    refused(lambda: world.service.verify_identity(task), task, "typ_mismatch")
    # ...even when already verified and cached as the other type.
    world.service.verify_identity(identity)
    world.service.verify_task(task)
    refused(lambda: world.service.verify_task(identity), identity, "typ_mismatch")
    refused(lambda: world.service.verify_identity(task), task, "typ_mismatch")
    assert world.service.verify_identity(identity).instance_id == INSTANCE


def test_token_use_must_match_typ(world: World) -> None:
    # Right header typ, wrong token_use, signed by Remit's key: still refused.
    as_task = world.sign(world.claims("identity"), typ="remit-task+jwt")
    refused(lambda: world.service.verify_task(as_task), as_task, "typ_mismatch")
    as_identity = world.sign(world.claims("task"), typ="JWT")
    refused(lambda: world.service.verify_identity(as_identity), as_identity, "typ_mismatch")
    no_use = world.sign(world.claims(token_use=_DROP))
    refused(lambda: world.service.verify_task(no_use), no_use, "typ_mismatch")


@pytest.mark.parametrize("typ", ["jwt", "at+jwt", "REMIT-TASK+JWT", "remit-task", "", None, 1])
def test_header_typ_must_match_exactly(world: World, typ: Any) -> None:
    forged = world.sign(world.claims(), typ=typ)
    refused(lambda: world.service.verify_task(forged), forged, "typ_mismatch")
    missing = f"{b64json({'alg': 'ES256', 'kid': world.keys.active.kid})}.{forged.split('.', 1)[1]}"
    refused(lambda: world.service.verify_task(missing), missing, "typ_mismatch")


def test_proof_is_not_a_token(world: World) -> None:
    token, _ = world.task()
    proof = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=world.clock.now()
    )
    for call in verify_both(world, proof):
        refused(call, proof, "typ_mismatch")


def test_token_is_not_a_proof(world: World) -> None:
    token, _ = world.task()
    refused(
        lambda: verify_call_proof(
            token, public_key=world.instance_key.public_key(), token=token,
            tool="mail.send", args_digest=ARGS, now=world.clock.now(),
        ),
        token,
        "header_not_allowed",
        InvalidProof,
    )  # fmt: skip


# --------------------------------------------------------------------------- malformed input


def test_truncated_tokens(world: World) -> None:
    token, _ = world.task()
    header, payload, signature = token.split(".")
    for bad in (
        token[:-1],
        token[:-2],
        token[:-10],
        token[: len(token) // 2],
        f"{header}.{payload}",
        f"{header}.{payload}.",
        f"{header}..{signature}",
        f".{payload}.{signature}",
        header,
        token[1:],
        token + ".",
        token + "." + signature,
    ):
        for call in verify_both(world, bad):
            with pytest.raises(InvalidToken) as info:
                call()
            assert type(info.value) is InvalidToken
            assert bad not in str(info.value)


def test_oversized_token(world: World) -> None:
    token, _ = world.task()
    huge = token + "A" * (MAX_TOKEN_BYTES + 1)
    refused(lambda: world.service.verify_task(huge), huge, "too_large")
    huge_header = b64json({"alg": "ES256", "pad": "x" * MAX_TOKEN_BYTES}) + ".e30.sig"
    refused(lambda: world.service.verify_task(huge_header), huge_header, "too_large")
    refused(
        lambda: verify_call_proof(
            huge, public_key=world.instance_key.public_key(), token=token,
            tool="t", args_digest=ARGS, now=START,
        ),
        huge,
        "too_large",
        InvalidProof,
    )  # fmt: skip


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "..",
        "...",
        "a",
        "a.b.c",
        "a.b.c.d",
        "Bearer abc.def.ghi",
        "eyJhbGciOiJFUzI1NiJ9",
        "e30.e30",
        "W10.e30." + "A" * 86,  # header is a JSON array
        "bnVsbA.e30." + "A" * 86,  # header is null
        "eyJ9.e30." + "A" * 86,  # header is not JSON
        "_w.e30." + "A" * 86,  # header is not UTF-8
        "eyJhbGciOiJFUzI1NiIsImFsZyI6IkVTMjU2In0.e30." + "A" * 86,  # duplicate alg
        "A.e30." + "A" * 86,  # impossible base64 length
        "eyJhbGciOiJFUzI1NiJ9.e30.abc+def/==",
        "€.€.€",
        "\x00.\x00.\x00",
        " " + "a.b.c",
        "a.b.c\n",
    ],
)
def test_garbage_is_malformed(world: World, garbage: str) -> None:
    for call in verify_both(world, garbage):
        with pytest.raises(InvalidToken) as info:
            call()
        assert type(info.value) is InvalidToken
        assert info.value.reason == "malformed"


@pytest.mark.parametrize("value", [None, 12, b"a.b.c", ["a.b.c"], object()])
def test_non_string_tokens_are_malformed(world: World, value: Any) -> None:
    for call in verify_both(world, value):
        with pytest.raises(InvalidToken) as info:
            call()
        assert info.value.reason == "malformed"


def test_non_ascii_token_is_malformed(world: World) -> None:
    token, _ = world.task()
    for bad in (token[:10] + "é" + token[11:], token + "\u200b", "ｅ" + token[1:]):
        refused(lambda bad=bad: world.service.verify_task(bad), bad, "malformed")


def test_non_canonical_signature_encoding_is_refused(world: World) -> None:
    token, _ = world.task()
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The last character of an 86-character segment carries 2 bits and 4 zero bits.
    twin = alphabet[alphabet.index(last) + 1]
    assert base64.urlsafe_b64decode(token.split(".")[2] + "==") == base64.urlsafe_b64decode(
        token.split(".")[2][:-1] + twin + "=="
    )
    bad = token[:-1] + twin
    refused(lambda: world.service.verify_task(bad), bad, "malformed")


@functools.cache
def _fixed_world() -> tuple[TokenService, str, str]:
    clock = ManualClock(START)
    keys = KeySet.generate(START)
    service = TokenService(keys, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    jkt = jwk_thumbprint(generate_instance_key().public_key())
    task, _ = service.issue_task(
        agent_id=AGENT, instance_id=INSTANCE, task_id=TASK, jkt=jkt, ttl=300,
        mandate_digest=DIGEST, authorization_details=DETAILS, actor=ACTOR,
    )  # fmt: skip
    identity, _ = service.issue_identity(agent_id=AGENT, instance_id=INSTANCE, jkt=jkt, ttl=300)
    service.verify_task(task)  # cached: tampering must not hit the cache either
    return service, task, identity


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    replacement=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ é\x00"
    ),
)
def test_any_tampered_character_fails(data: st.DataObject, replacement: str) -> None:
    service, task, identity = _fixed_world()
    for token, verify in ((task, service.verify_task), (identity, service.verify_identity)):
        position = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
        if token[position] == replacement:
            continue
        tampered = token[:position] + replacement + token[position + 1 :]
        with pytest.raises(InvalidToken):
            verify(tampered)
    assert service.verify_task(task).task_id == TASK


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=300)
    | st.from_regex(r"[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,90}")
)
def test_random_strings_never_verify(text: str) -> None:
    service, _, _ = _fixed_world()
    with pytest.raises(InvalidToken):
        service.verify_task(text)
    with pytest.raises(InvalidToken):
        service.verify_identity(text)


# --------------------------------------------------------------------------- time


def test_expiry_with_leeway(world: World) -> None:
    token, claims = world.task(ttl=60)
    world.clock.set(claims.expires_at + 4.9)  # inside the 5 s leeway
    world.service.clear_cache()
    world.service.verify_task(token)
    world.clock.set(claims.expires_at + 5.0)
    refused(lambda: world.service.verify_task(token), token, "expired", TokenExpired)
    world.service.clear_cache()
    refused(lambda: world.service.verify_task(token), token, "expired", TokenExpired)


def test_expired_identity(world: World) -> None:
    token, _ = world.identity(ttl=60)
    world.clock.advance(3600)
    refused(lambda: world.service.verify_identity(token), token, "expired", TokenExpired)


def test_cached_token_is_refused_after_expiry(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = _count_decodes(monkeypatch)
    token, _ = world.task(ttl=60)
    world.service.verify_task(token)
    world.service.verify_task(token)
    assert decodes() == 1  # the second call was a cache hit
    world.clock.advance(60 + 5)
    refused(lambda: world.service.verify_task(token), token, "expired", TokenExpired)
    refused(lambda: world.service.verify_task(token), token, "expired", TokenExpired)


def test_not_yet_valid(world: World) -> None:
    token, _ = world.task()
    world.clock.set(START - 4)  # within leeway
    world.service.verify_task(token)
    world.clock.set(START - 6)
    refused(lambda: world.service.verify_task(token), token, "not_yet_valid")  # cached
    world.service.clear_cache()
    refused(lambda: world.service.verify_task(token), token, "not_yet_valid")
    world.clock.set(START)
    future_nbf = world.sign(world.claims(nbf=int(START) + 100))
    refused(lambda: world.service.verify_task(future_nbf), future_nbf, "not_yet_valid")
    future_iat = world.sign(world.claims(iat=int(START) + 100))
    refused(lambda: world.service.verify_task(future_iat), future_iat, "not_yet_valid")


def test_pyjwt_does_not_use_the_wall_clock(world: World) -> None:
    # Issued and verified in 2027 by the injected clock; the wall clock is ignored both ways.
    world.clock.set(time.time() + 10 * 365 * 86400)
    token, _ = world.task()
    world.service.verify_task(token)
    world.clock.set(1_000_000_000.0)
    old, _ = world.task()
    world.service.verify_task(old)


# --------------------------------------------------------------------------- cache


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    calls = 0
    real = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens_module.jwt, "decode", counting)
    return lambda: calls


def test_cache_is_bounded_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(START)
    keys = KeySet.generate(START)
    service = TokenService(keys, issuer=ISSUER, audience=AUDIENCE, clock=clock, cache_size=2)
    jkt = jwk_thumbprint(generate_instance_key().public_key())
    a, b, c = (
        service.issue_identity(agent_id=AGENT, instance_id=f"ins_{i}", jkt=jkt, ttl=60)[0]
        for i in range(3)
    )
    decodes = _count_decodes(monkeypatch)
    for token in (a, b, a, c):  # c evicts b, the least recently used
        service.verify_identity(token)
    assert decodes() == 3
    service.verify_identity(a)
    service.verify_identity(c)
    assert decodes() == 3
    service.verify_identity(b)
    assert decodes() == 4


def test_cache_can_be_disabled(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    service = TokenService(
        world.keys, issuer=ISSUER, audience=AUDIENCE, clock=world.clock, cache_size=0
    )
    token, _ = world.task()
    decodes = _count_decodes(monkeypatch)
    for _ in range(3):
        service.verify_task(token)
    assert decodes() == 3


def test_only_verified_tokens_are_cached(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = world.sign(world.claims(aud=["elsewhere"]))
    decodes = _count_decodes(monkeypatch)
    for _ in range(3):
        refused(lambda: world.service.verify_task(bad), bad, "aud_mismatch")
    assert decodes() == 3
    expired = world.sign(world.claims(exp=int(START) - 100))
    for _ in range(2):
        refused(lambda: world.service.verify_task(expired), expired, "expired", TokenExpired)
    assert decodes() == 5


def test_cache_hit_is_cheap(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    token, claims = world.task()
    world.service.verify_task(token)
    decodes = _count_decodes(monkeypatch)
    started = time.perf_counter()
    for _ in range(2000):
        assert world.service.verify_task(token) is not None
    elapsed = time.perf_counter() - started
    assert decodes() == 0  # every call was a hit; no signature verification
    assert elapsed >= 0  # timing is reported by the benchmarks, not asserted here
    assert world.service.verify_task(token) == claims


# --------------------------------------------------------------------------- rotation


def test_rotation_overlap(world: World) -> None:
    old_token, _ = world.task()
    holder = {"keys": world.keys}
    service = TokenService(
        lambda: holder["keys"], issuer=ISSUER, audience=AUDIENCE, clock=world.clock
    )
    service.verify_task(old_token)  # cached under the old key
    world.clock.advance(600)
    new_key = SigningKey.generate(world.clock.now())
    holder["keys"] = world.keys.rotated(new_key, retain_after=3600, now=world.clock.now())
    world.clock.set(START + 10)
    assert service.verify_task(old_token).task_id == TASK  # old key kept for the overlap
    new_token, _ = service.issue_task(
        agent_id=AGENT, instance_id=INSTANCE, task_id=TASK, jkt=world.jkt, ttl=60,
        mandate_digest=DIGEST, authorization_details=DETAILS,
    )  # fmt: skip
    assert segments(new_token)[0]["kid"] == new_key.kid
    service.verify_task(new_token)
    assert {jwk["kid"] for jwk in service.jwks()["keys"]} == {new_key.kid, world.keys.active.kid}
    # A key set without the old key refuses its tokens, cached or not.
    holder["keys"] = KeySet([new_key])
    refused(lambda: service.verify_task(old_token), old_token, "unknown_kid")
    fresh = TokenService(KeySet([new_key]), issuer=ISSUER, audience=AUDIENCE, clock=world.clock)
    refused(lambda: fresh.verify_task(old_token), old_token, "unknown_kid")
    fresh.verify_task(new_token)


# --------------------------------------------------------------------------- call proofs


@pytest.fixture
def proof_world(world: World) -> tuple[World, str, ec.EllipticCurvePublicKey]:
    token, claims = world.task()
    # The verifier's view: the instance key registered at attestation, bound by cnf.jkt.
    public = load_public_jwk(public_jwk(world.instance_key.public_key()))
    assert jwk_thumbprint(public) == claims.jkt
    return world, token, public


def check(
    proof: str,
    token: str,
    public: ec.EllipticCurvePublicKey,
    *,
    tool: str = "mail.send",
    args: str = ARGS,
    now: float = START,
    **kwargs: Any,
) -> ProofClaims:
    return verify_call_proof(
        proof, public_key=public, token=token, tool=tool, args_digest=args, now=now, **kwargs
    )


def test_valid_proof(proof_world: tuple[World, str, ec.EllipticCurvePublicKey]) -> None:
    world, token, public = proof_world
    proof = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START
    )
    claims = check(proof, token, public)
    assert claims.tool == "mail.send" and claims.args_digest == ARGS
    assert claims.token_hash == token_hash(token) and claims.issued_at == START
    assert 16 <= len(claims.jti) <= 128
    header, payload = segments(proof)
    assert header == {"alg": "ES256", "typ": "remit-call+jwt"}
    assert set(payload) == {"ath", "tool", "args", "iat", "jti"}
    other = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START
    )
    assert check(other, token, public).jti != claims.jti
    fixed = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START,
        jti="client-chosen-jti-0001",
    )  # fmt: skip
    assert check(fixed, token, public).jti == "client-chosen-jti-0001"


def test_token_hash_is_dpop_ath() -> None:
    token = "eyJ.abc.def"
    assert token_hash(token) == b64(hashlib.sha256(token.encode()).digest())
    with pytest.raises(InvalidToken):
        token_hash("é")


def test_proof_made_with_pyjwt_verifies(
    proof_world: tuple[World, str, ec.EllipticCurvePublicKey],
) -> None:
    world, token, public = proof_world
    proof = jwt.encode(
        {
            "ath": token_hash(token),
            "tool": "mail.send",
            "args": ARGS,
            "iat": START,
            "jti": "x" * 20,
        },
        world.instance_key,
        algorithm="ES256",
        headers={"typ": "remit-call+jwt"},
    )
    assert check(proof, token, public).jti == "x" * 20


def test_proof_with_wrong_key(proof_world: tuple[World, str, ec.EllipticCurvePublicKey]) -> None:
    world, token, public = proof_world
    thief = generate_instance_key()
    # A stolen task token used with the thief's own key: the key does not match cnf.jkt.
    proof = make_call_proof(thief, token=token, tool="mail.send", args_digest=ARGS, now=START)
    refused(lambda: check(proof, token, public), proof, "bad_signature", InvalidProof)
    good = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START
    )
    refused(lambda: check(good, token, thief.public_key()), good, "bad_signature", InvalidProof)


def test_proof_for_other_tool_args_or_token(
    proof_world: tuple[World, str, ec.EllipticCurvePublicKey],
) -> None:
    world, token, public = proof_world
    proof = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START
    )
    refused(
        lambda: check(proof, token, public, tool="mail.delete"),
        proof,
        "tool_mismatch",
        InvalidProof,
    )
    refused(
        lambda: check(proof, token, public, args="sha256:" + "00" * 32),
        proof,
        "args_mismatch",
        InvalidProof,
    )
    other_token, _ = world.task(task_id="tsk_other0123456789ab")
    refused(lambda: check(proof, other_token, public), proof, "ath_mismatch", InvalidProof)


def test_proof_age(proof_world: tuple[World, str, ec.EllipticCurvePublicKey]) -> None:
    world, token, public = proof_world
    proof = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START
    )
    check(proof, token, public, now=START + 60)
    refused(lambda: check(proof, token, public, now=START + 61), proof, "stale", InvalidProof)
    refused(
        lambda: check(proof, token, public, now=START + 11, max_age=10),
        proof,
        "stale",
        InvalidProof,
    )
    check(proof, token, public, now=START - 5)
    refused(
        lambda: check(proof, token, public, now=START - 6), proof, "not_yet_valid", InvalidProof
    )
    future = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START + 3600
    )
    refused(lambda: check(future, token, public), future, "not_yet_valid", InvalidProof)


def _signed_proof(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], payload: Any) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    return f"{signing_input}.{b64(sign_es256(key, signing_input.encode()))}"


def test_proof_header_attacks(proof_world: tuple[World, str, ec.EllipticCurvePublicKey]) -> None:
    world, token, public = proof_world
    payload = {
        "ath": token_hash(token),
        "tool": "mail.send",
        "args": ARGS,
        "iat": START,
        "jti": "j" * 20,
    }
    key = world.instance_key
    none = f"{b64json({'alg': 'none', 'typ': 'remit-call+jwt'})}.{b64json(payload)}."
    refused(lambda: check(none, token, public), none, "alg_not_allowed", InvalidProof)
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_input = f"{b64json({'alg': 'HS256', 'typ': 'remit-call+jwt'})}.{b64json(payload)}"
    hs = f"{hs_input}.{b64(hmac.new(public_pem, hs_input.encode(), hashlib.sha256).digest())}"
    refused(lambda: check(hs, token, public), hs, "alg_not_allowed", InvalidProof)
    for extra in (
        {"kid": "whatever"},
        {"jwk": public_jwk(public)},
        {"jku": "https://evil.example"},
        {"x5c": ["MII"]},
        {"crit": ["b64"], "b64": False},
    ):
        bad = _signed_proof(key, {"alg": "ES256", "typ": "remit-call+jwt"} | extra, payload)
        refused(lambda bad=bad: check(bad, token, public), bad, "header_not_allowed", InvalidProof)
    for typ in ("JWT", "dpop+jwt", "remit-task+jwt", None):
        bad = _signed_proof(key, {"alg": "ES256", "typ": typ}, payload)
        refused(lambda bad=bad: check(bad, token, public), bad, "typ_mismatch", InvalidProof)
    good = _signed_proof(key, {"alg": "ES256", "typ": "remit-call+jwt"}, payload)
    assert check(good, token, public).jti == "j" * 20


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"jti": "short"}, "missing_claim"),
        ({"jti": "x" * 129}, "missing_claim"),
        ({"jti": "has space in it 123"}, "missing_claim"),
        ({"jti": 1234567890123456789}, "missing_claim"),
        ({"jti": _DROP}, "missing_claim"),
        ({"iat": _DROP}, "missing_claim"),
        ({"iat": "now"}, "missing_claim"),
        ({"iat": True}, "missing_claim"),
        ({"ath": _DROP}, "ath_mismatch"),
        ({"ath": 1}, "ath_mismatch"),
        ({"tool": _DROP}, "tool_mismatch"),
        ({"tool": ["mail.send"]}, "tool_mismatch"),
        ({"args": _DROP}, "args_mismatch"),
    ],
)
def test_proof_claims(
    proof_world: tuple[World, str, ec.EllipticCurvePublicKey],
    overrides: dict[str, Any],
    reason: str,
) -> None:
    world, token, public = proof_world
    payload = {
        "ath": token_hash(token),
        "tool": "mail.send",
        "args": ARGS,
        "iat": START,
        "jti": "j" * 20,
    }
    payload = {k: v for k, v in (payload | overrides).items() if v is not _DROP}
    bad = _signed_proof(world.instance_key, {"alg": "ES256", "typ": "remit-call+jwt"}, payload)
    refused(lambda: check(bad, token, public), bad, reason, InvalidProof)


def test_proof_payload_must_be_an_object(
    proof_world: tuple[World, str, ec.EllipticCurvePublicKey],
) -> None:
    world, token, public = proof_world
    for payload in ([1, 2], "text", None):
        bad = _signed_proof(world.instance_key, {"alg": "ES256", "typ": "remit-call+jwt"}, payload)
        refused(lambda bad=bad: check(bad, token, public), bad, "malformed", InvalidProof)


def test_tampered_or_malformed_proofs(
    proof_world: tuple[World, str, ec.EllipticCurvePublicKey],
) -> None:
    world, token, public = proof_world
    proof = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START
    )
    header, payload, signature = proof.split(".")
    swapped = {
        "ath": token_hash(token),
        "tool": "shell.exec",
        "args": ARGS,
        "iat": START,
        "jti": "j" * 20,
    }
    forged = f"{header}.{b64json(swapped)}.{signature}"
    refused(
        lambda: check(forged, token, public, tool="shell.exec"),
        forged,
        "bad_signature",
        InvalidProof,
    )
    for bad in (proof[:-1], f"{header}.{payload}", "", "a.b.c", proof + "é", 42):
        with pytest.raises(InvalidProof):
            check(bad, token, public)  # type: ignore[arg-type]


def test_proof_messages_do_not_leak(
    proof_world: tuple[World, str, ec.EllipticCurvePublicKey],
) -> None:
    world, token, public = proof_world
    proof = make_call_proof(
        world.instance_key, token=token, tool="mail.send", args_digest=ARGS, now=START
    )
    with pytest.raises(InvalidProof) as info:
        check(proof, token, public, tool="other.tool")
    text = str(info.value) + repr(info.value)
    for value in (proof, token, "mail.send", "other.tool", ARGS, token_hash(token)):
        assert value not in text


def test_make_call_proof_refuses_bad_input(world: World) -> None:
    token, _ = world.task()
    for kwargs in (
        {"jti": "short"},
        {"jti": "x" * 129},
        {"tool": ""},
        {"tool": "t" * 300},
        {"args_digest": ""},
    ):
        base: dict[str, Any] = {
            "token": token,
            "tool": "mail.send",
            "args_digest": ARGS,
            "now": START,
        }
        with pytest.raises(InvalidRequest):
            make_call_proof(world.instance_key, **(base | kwargs))
    with pytest.raises(InvalidRequest):
        make_call_proof(
            ec.generate_private_key(ec.SECP384R1()),
            token=token,
            tool="t",
            args_digest=ARGS,
            now=START,
        )
