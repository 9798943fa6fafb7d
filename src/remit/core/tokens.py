"""Tokens: identity tokens (JWT-SVIDs), task tokens, and per-call proofs of possession.

All three are compact JWS signed with ES256 and nothing else. Each has its own
JOSE ``typ`` and validates only as itself:

==============  ==================  ===================================================
token           ``typ``             signed by
==============  ==================  ===================================================
identity        ``JWT``             Remit (a JWT-SVID: ``sub`` is the agent SPIFFE ID)
task            ``remit-task+jwt``  Remit
call proof      ``remit-call+jwt``  the agent instance, with the key ``cnf.jkt`` names
==============  ==================  ===================================================

Verification fails closed. The header is read without trusting it: ``alg``
must be exactly ES256, only the expected members may appear (so never
``jku``, ``x5u``, ``jwk``, ``x5c`` or ``crit``), ``typ`` must match, and
``kid`` only selects one of Remit's own keys. Times are checked against the
injected clock, never the wall clock. Error messages carry no token text and
no claim values; the ``reason`` says what failed.

PyJWT lives here and nowhere else. It checks the signatures of Remit's own
tokens; call proofs are checked with ``cryptography`` directly, since each call
pays for one and the budget is close to the raw signature verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from remit.canonical import JsonLimits, JsonValue, check_json
from remit.clock import Clock
from remit.core.keys import (
    ALG,
    KeySet,
    b64url_encode,
    is_thumbprint,
    sign_es256,
    verify_es256,
)
from remit.errors import InvalidProof, InvalidRequest, InvalidToken, RemitError, TokenExpired
from remit.ids import AgentId, InstanceId, SpiffeId, TaskId

MAX_TOKEN_BYTES: Final = 8 * 1024
MAX_TTL: Final = 24 * 3600.0
IDENTITY_TYP: Final = "JWT"
TASK_TYP: Final = "remit-task+jwt"
PROOF_TYP: Final = "remit-call+jwt"
IDENTITY_USE: Final = "identity"
TASK_USE: Final = "task"

_TOKEN_HEADER: Final = frozenset({"alg", "typ", "kid"})
_PROOF_HEADER: Final = frozenset({"alg", "typ"})  # no kid, no jwk: the caller names the key
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_SHORT_ID = re.compile(r"[A-Za-z0-9._:~-]{1,128}")
_PROOF_JTI = re.compile(r"[\x21-\x7e]{16,128}")
_MANDATE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SIGNATURE_CHARS: Final = 86
_MAX_TOOL: Final = 256
_MAX_HTTP_BINDING: Final = 2048
_MAX_ARGS_DIGEST: Final = 256
_DETAILS_LIMITS: Final = JsonLimits(max_depth=8, max_bytes=4 * 1024, max_string=1024, max_items=128)

_PYJWT_OPTIONS: Final[Any] = {
    "verify_signature": True,
    # PyJWT would read time.time(); times are checked against the injected clock below.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    # Checked below, with reasons of our own.
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}
_ALGORITHMS: Final = [ALG]


# --------------------------------------------------------------------------- claims


@dataclass(frozen=True, slots=True)
class IdentityClaims:
    """A verified identity token (JWT-SVID)."""

    agent_id: AgentId
    instance_id: InstanceId
    jkt: str
    jti: str
    issued_at: float
    expires_at: float
    not_before: float
    audience: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TaskClaims:
    """A verified task token.

    ``authorization_details`` and ``actor`` are deep-frozen (read-only mappings
    and tuples), since verified claims are cached and shared; ``thaw`` gives
    plain JSON back.
    """

    agent_id: AgentId
    instance_id: InstanceId
    task_id: TaskId
    jkt: str
    jti: str
    issued_at: float
    expires_at: float
    not_before: float
    mandate_digest: str
    authorization_details: tuple[Mapping[str, Any], ...] = field(hash=False)
    actor: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class ProofClaims:
    """A verified call proof. The caller must still check ``jti`` for replay."""

    tool: str
    args_digest: str
    jti: str
    issued_at: float
    token_hash: str


_Claims = TypeVar("_Claims", IdentityClaims, TaskClaims)


def freeze(value: JsonValue) -> Any:
    """A read-only copy of a JSON value: objects as mapping proxies, arrays as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> JsonValue:
    """Plain JSON (dicts and lists) from a value made by ``freeze``."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


# --------------------------------------------------------------------------- helpers


def _fail(error: type[RemitError], reason: str, message: str) -> NoReturn:
    raise error(message, reason=reason)


def _b64decode(segment: str) -> bytes:
    # The caller has already checked the base64url alphabet.
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError("non-finite number")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object from untrusted bytes, or None: duplicate keys and NaN refused."""
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _split(
    token: object,
    typ: str,
    allowed: frozenset[str],
    error: type[RemitError],
    known: tuple[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], str, str, bytes]:
    """Check size, shape and the untrusted header.

    Returns the header, the signing input, the payload segment and the raw
    signature. ``known`` is a header segment already known to be good, with its
    parsed form, to skip parsing the usual header.
    """
    if not isinstance(token, str):
        _fail(error, "malformed", "token must be a string")
    if len(token) > MAX_TOKEN_BYTES:
        _fail(error, "too_large", f"token is too large (max {MAX_TOKEN_BYTES} bytes)")
    if not token.isascii() or not _JWS.fullmatch(token):
        _fail(error, "malformed", "token is not a compact JWS")
    signing_input, _, signature_segment = token.rpartition(".")
    header_segment, _, payload_segment = signing_input.partition(".")
    if known is not None and header_segment == known[0]:
        header = known[1]
    else:
        try:
            parsed = _json_object(_b64decode(header_segment))
        except (binascii.Error, ValueError):
            parsed = None
        if parsed is None:
            _fail(error, "malformed", "token header is not a JSON object")
        header = parsed
    if header.get("alg") != ALG:
        _fail(error, "alg_not_allowed", "token algorithm is not allowed (ES256 only)")
    # An ES256 signature is 64 bytes: 86 characters, in its one canonical spelling,
    # so a token has exactly one string form (and one cache entry).
    signature = _b64decode(signature_segment) if len(signature_segment) == _SIGNATURE_CHARS else b""
    if not signature or b64url_encode(signature) != signature_segment:
        _fail(error, "malformed", "token signature is not 64 bytes of canonical base64url")
    if not header.keys() <= allowed:
        _fail(error, "header_not_allowed", "token header has a member that is not allowed")
    if header.get("typ") != typ:
        _fail(error, "typ_mismatch", "token is not of the expected type")
    return header, signing_input, payload_segment, signature


def _number(payload: Mapping[str, Any], name: str, error: type[RemitError]) -> float:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(error, "missing_claim", f"token claim {name!r} is missing or not a number")
    return value


def _string(payload: Mapping[str, Any], name: str, error: type[RemitError] = InvalidToken) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        _fail(error, "missing_claim", f"token claim {name!r} is missing or not a string")
    return value


def _check_times(expires_at: float, not_before: float, now: float, leeway: float) -> None:
    if now >= expires_at + leeway:
        raise TokenExpired("token has expired", reason="expired")
    if not_before > now + leeway:
        _fail(InvalidToken, "not_yet_valid", "token is not valid yet")


def _check_short_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SHORT_ID.fullmatch(value):
        raise InvalidRequest(f"{what} must be 1-128 ASCII id characters", reason="malformed_id")
    return value


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= MAX_TTL:
        raise InvalidRequest(f"ttl must be between 1 and {int(MAX_TTL)} seconds", reason="bad_ttl")
    return float(ttl)


def _check_jkt(jkt: object) -> str:
    if not is_thumbprint(jkt):
        raise InvalidRequest("jkt must be a SHA-256 JWK thumbprint", reason="bad_jkt")
    assert isinstance(jkt, str)
    return jkt


def token_hash(token: str) -> str:
    """Unpadded base64url SHA-256 of the ASCII token: the DPoP ``ath`` value."""
    if not isinstance(token, str) or not token.isascii():
        _fail(InvalidToken, "malformed", "token must be an ASCII string")
    return b64url_encode(hashlib.sha256(token.encode("ascii")).digest())


# --------------------------------------------------------------------------- service


@dataclass(frozen=True, slots=True)
class _Entry:
    claims: IdentityClaims | TaskClaims
    kid: str


class TokenService:
    """Issues and verifies Remit's identity and task tokens.

    ``keys`` is a ``KeySet`` or a function returning the current one, so key
    rotation takes effect without a new service. Verified tokens are cached by
    their exact string in a bounded LRU; a hit still re-checks ``exp``/``nbf``
    against the clock and that the signing key is still in the key set.
    Revocation is the caller's check.
    """

    def __init__(
        self,
        keys: Callable[[], KeySet] | KeySet,
        *,
        issuer: str,
        audience: str,
        clock: Clock,
        leeway: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        if isinstance(keys, KeySet):
            key_set = keys

            def fixed() -> KeySet:
                return key_set

            self._keys: Callable[[], KeySet] = fixed
        else:
            self._keys = keys
        if not isinstance(issuer, str) or not issuer:
            raise InvalidRequest("issuer must be a non-empty string", reason="bad_config")
        if not isinstance(audience, str) or not audience:
            raise InvalidRequest("audience must be a non-empty string", reason="bad_config")
        if not 0 <= leeway <= 300:
            raise InvalidRequest("leeway must be between 0 and 300 seconds", reason="bad_config")
        if cache_size < 0:
            raise InvalidRequest("cache_size must not be negative", reason="bad_config")
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._leeway = float(leeway)
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def audience(self) -> str:
        return self._audience

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set, for gateways that verify offline."""
        return self._keys().jwks()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # ----------------------------------------------------------------- issue

    def _base_claims(
        self, agent_id: object, instance_id: object, jkt: object, ttl: object, use: str
    ) -> dict[str, Any]:
        agent = str(SpiffeId.parse(agent_id))
        instance = _check_short_id(instance_id, "instance id")
        thumbprint = _check_jkt(jkt)
        lifetime = _check_ttl(ttl)
        now = self._clock.now()
        issued_at = math.floor(now)
        return {
            "iss": self._issuer,
            "sub": agent,
            "aud": [self._audience],
            "iat": issued_at,
            "nbf": issued_at,
            "exp": math.floor(now + lifetime),
            "jti": secrets.token_urlsafe(16),
            "iid": instance,
            "cnf": {"jkt": thumbprint},
            "token_use": use,
        }

    def _sign(self, payload: dict[str, Any], typ: str) -> str:
        key = self._keys().active
        token = jwt.encode(
            payload, key.private_key, algorithm=ALG, headers={"kid": key.kid, "typ": typ}
        )
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidRequest("the token would be too large", reason="too_large")
        return token

    def issue_identity(
        self, *, agent_id: str, instance_id: str, jkt: str, ttl: float
    ) -> tuple[str, IdentityClaims]:
        """An identity token (JWT-SVID) for an attested instance holding the key ``jkt``."""
        payload = self._base_claims(agent_id, instance_id, jkt, ttl, IDENTITY_USE)
        return self._sign(payload, IDENTITY_TYP), _identity_claims(payload)

    def issue_task(
        self,
        *,
        agent_id: str,
        instance_id: str,
        task_id: str,
        jkt: str,
        ttl: float,
        mandate_digest: str,
        authorization_details: list[dict[str, Any]],
        actor: dict[str, Any] | None = None,
    ) -> tuple[str, TaskClaims]:
        """A task token: the authority for one task, bound to the instance key ``jkt``."""
        payload = self._base_claims(agent_id, instance_id, jkt, ttl, TASK_USE)
        payload["tid"] = _check_short_id(task_id, "task id")
        if not isinstance(mandate_digest, str) or not _MANDATE_DIGEST.fullmatch(mandate_digest):
            raise InvalidRequest("mandate digest must be 'sha256:<hex>'", reason="bad_digest")
        payload["mandate_digest"] = mandate_digest
        payload["authorization_details"] = _check_details(authorization_details)
        if actor is not None:
            payload["act"] = _check_actor(actor)
        return self._sign(payload, TASK_TYP), _task_claims(payload)

    # ----------------------------------------------------------------- verify

    def verify_identity(self, token: str) -> IdentityClaims:
        """The claims of a valid identity token, or raise ``InvalidToken`` / ``TokenExpired``."""
        return self._verify(token, IdentityClaims, IDENTITY_TYP, IDENTITY_USE, _identity_claims)

    def verify_task(self, token: str) -> TaskClaims:
        """The claims of a valid task token, or raise ``InvalidToken`` / ``TokenExpired``."""
        return self._verify(token, TaskClaims, TASK_TYP, TASK_USE, _task_claims)

    def _verify(
        self,
        token: str,
        kind: type[_Claims],
        typ: str,
        use: str,
        parse: Callable[[dict[str, Any]], _Claims],
    ) -> _Claims:
        if not isinstance(token, str):
            _fail(InvalidToken, "malformed", "token must be a string")
        if len(token) > MAX_TOKEN_BYTES:
            _fail(InvalidToken, "too_large", f"token is too large (max {MAX_TOKEN_BYTES} bytes)")
        if self._cache_size:
            with self._lock:
                entry = self._cache.get(token)
                if entry is not None:
                    self._cache.move_to_end(token)
            if entry is not None and isinstance(entry.claims, kind):
                claims = entry.claims
                if self._keys().get(entry.kid) is not None:
                    try:
                        _check_times(
                            claims.expires_at, claims.not_before, self._clock.now(), self._leeway
                        )
                    except TokenExpired:
                        self._evict(token)
                        raise
                    return claims
                # The signing key has left the key set: verify afresh (and fail).
                self._evict(token)
        header, _, _, _ = _split(token, typ, _TOKEN_HEADER, InvalidToken)
        kid = header.get("kid")
        key = self._keys().get(kid) if isinstance(kid, str) else None
        if key is None:
            _fail(InvalidToken, "unknown_kid", "token key id is not one of Remit's keys")
        try:
            payload = jwt.decode(
                token, key.public_key, algorithms=_ALGORITHMS, options=_PYJWT_OPTIONS
            )
        except jwt.InvalidSignatureError:
            _fail(InvalidToken, "bad_signature", "token signature is not valid")
        except jwt.InvalidAlgorithmError:
            _fail(InvalidToken, "alg_not_allowed", "token algorithm is not allowed (ES256 only)")
        except jwt.PyJWTError:
            _fail(InvalidToken, "malformed", "token could not be decoded")
        if payload.get("iss") != self._issuer:
            _fail(InvalidToken, "iss_mismatch", "token issuer does not match")
        audience = payload.get("aud")
        audiences = (audience,) if isinstance(audience, str) else audience
        if (
            not isinstance(audiences, list | tuple)
            or not all(isinstance(item, str) for item in audiences)
            or self._audience not in audiences
        ):
            _fail(InvalidToken, "aud_mismatch", "token audience does not match")
        if payload.get("token_use") != use:
            _fail(InvalidToken, "typ_mismatch", "token is not of the expected type")
        if "exp" not in payload:
            raise TokenExpired("token has no expiry", reason="expired")
        claims = parse(payload)
        now = self._clock.now()
        _check_times(claims.expires_at, claims.not_before, now, self._leeway)
        if claims.issued_at > now + self._leeway:
            _fail(InvalidToken, "not_yet_valid", "token was issued in the future")
        if self._cache_size:
            with self._lock:
                self._cache[token] = _Entry(claims, key.kid)
                self._cache.move_to_end(token)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return claims

    def _evict(self, token: str) -> None:
        with self._lock:
            self._cache.pop(token, None)


# --------------------------------------------------------------------------- claims parsing


def _common(payload: Mapping[str, Any]) -> tuple[str, str, str, str, float, float, float]:
    sub = _string(payload, "sub")
    iid = _string(payload, "iid")
    jti = _string(payload, "jti")
    cnf = payload.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not is_thumbprint(jkt):
        _fail(InvalidToken, "missing_claim", "token claim 'cnf.jkt' is missing or malformed")
    assert isinstance(jkt, str)
    iat = _number(payload, "iat", InvalidToken)
    exp = _number(payload, "exp", InvalidToken)
    nbf = _number(payload, "nbf", InvalidToken)
    return sub, iid, jti, jkt, iat, exp, nbf


def _identity_claims(payload: Mapping[str, Any]) -> IdentityClaims:
    sub, iid, jti, jkt, iat, exp, nbf = _common(payload)
    aud = payload["aud"]
    return IdentityClaims(
        agent_id=AgentId(sub),
        instance_id=InstanceId(iid),
        jkt=jkt,
        jti=jti,
        issued_at=iat,
        expires_at=exp,
        not_before=nbf,
        audience=(aud,) if isinstance(aud, str) else tuple(aud),
    )


def _task_claims(payload: Mapping[str, Any]) -> TaskClaims:
    sub, iid, jti, jkt, iat, exp, nbf = _common(payload)
    tid = _string(payload, "tid")
    mandate_digest = _string(payload, "mandate_digest")
    details = payload.get("authorization_details")
    if not isinstance(details, list) or not all(isinstance(item, dict) for item in details):
        _fail(InvalidToken, "missing_claim", "token claim 'authorization_details' is malformed")
    actor = payload.get("act")
    if actor is not None and not isinstance(actor, dict):
        _fail(InvalidToken, "missing_claim", "token claim 'act' is malformed")
    return TaskClaims(
        agent_id=AgentId(sub),
        instance_id=InstanceId(iid),
        task_id=TaskId(tid),
        jkt=jkt,
        jti=jti,
        issued_at=iat,
        expires_at=exp,
        not_before=nbf,
        mandate_digest=mandate_digest,
        authorization_details=freeze(details),
        actor=freeze(actor) if actor is not None else None,
    )


def _check_details(details: object) -> list[dict[str, Any]]:
    """RFC 9396 shape: a list of objects, each with a string ``type``; plain bounded JSON."""
    if not isinstance(details, list) or not all(
        isinstance(item, dict) and isinstance(item.get("type"), str) and item["type"]
        for item in details
    ):
        raise InvalidRequest(
            "authorization_details must be a list of objects with a 'type'",
            reason="bad_authorization_details",
        )
    check_json(details, _DETAILS_LIMITS, "authorization_details")
    copied: list[dict[str, Any]] = thaw(freeze(details))
    return copied


def _check_actor(actor: object) -> dict[str, Any]:
    """RFC 8693 ``act``: an object with a string ``sub``, nesting further ``act`` objects."""
    current = actor
    while current is not None:
        if not isinstance(current, dict) or not isinstance(current.get("sub"), str):
            raise InvalidRequest("act must be an object with a 'sub'", reason="bad_actor")
        current = current.get("act")
    check_json(actor, _DETAILS_LIMITS, "act")
    copied: dict[str, Any] = thaw(freeze(actor))
    return copied


# --------------------------------------------------------------------------- call proofs

_PROOF_HEADER_SEGMENT: Final = b64url_encode(
    json.dumps({"alg": ALG, "typ": PROOF_TYP}, separators=(",", ":")).encode("ascii")
)
_PROOF_HEADER_KNOWN: Final = (_PROOF_HEADER_SEGMENT, {"alg": ALG, "typ": PROOF_TYP})


def make_call_proof(
    private_key: ec.EllipticCurvePrivateKey,
    *,
    token: str,
    tool: str,
    args_digest: str,
    now: float,
    jti: str | None = None,
    htm: str | None = None,
    htu: str | None = None,
) -> str:
    """A proof that the holder of ``private_key`` makes this call with this task token.

    What an agent instance (or the SDK for it) sends with every tool call. Over
    HTTP the proof also names the request's method and URL (``htm``/``htu``, as
    in DPoP), so it cannot be replayed against another endpoint.
    """
    if jti is None:
        jti = secrets.token_urlsafe(24)
    if not isinstance(jti, str) or not _PROOF_JTI.fullmatch(jti):
        raise InvalidRequest(
            "proof jti must be 16-128 printable ASCII characters", reason="bad_jti"
        )
    if not isinstance(tool, str) or not 0 < len(tool) <= _MAX_TOOL:
        raise InvalidRequest("tool must be a short string", reason="bad_tool")
    if not isinstance(args_digest, str) or not 0 < len(args_digest) <= _MAX_ARGS_DIGEST:
        raise InvalidRequest("args digest must be a short string", reason="bad_digest")
    payload = {
        "ath": token_hash(token),
        "tool": tool,
        "args": args_digest,
        "iat": math.floor(now),
        "jti": jti,
    }
    for name, value in (("htm", htm), ("htu", htu)):
        if value is not None:
            if not isinstance(value, str) or not 0 < len(value) <= _MAX_HTTP_BINDING:
                raise InvalidRequest(f"{name} must be a short string", reason="bad_binding")
            payload[name] = value
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    signing_input = f"{_PROOF_HEADER_SEGMENT}.{b64url_encode(body.encode('utf-8'))}"
    signature = sign_es256(private_key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def verify_call_proof(
    proof: str,
    *,
    public_key: ec.EllipticCurvePublicKey,
    token: str,
    tool: str,
    args_digest: str,
    now: float,
    max_age: float = 60.0,
    leeway: float = 5.0,
    htm: str | None = None,
    htu: str | None = None,
) -> ProofClaims:
    """Check a call proof against the instance key bound to the token (``cnf.jkt``).

    Raises ``InvalidProof``. The proof's ``jti`` is returned for the caller's
    replay check, which needs storage and so is not done here.
    """
    _, signing_input, payload_segment, signature = _split(
        proof, PROOF_TYP, _PROOF_HEADER, InvalidProof, _PROOF_HEADER_KNOWN
    )
    if not verify_es256(public_key, signing_input.encode("ascii"), signature):
        _fail(InvalidProof, "bad_signature", "proof signature is not valid for the instance key")
    # Parsed only once the signature holds; the signer is the only party that reads it.
    try:
        payload = json.loads(_b64decode(payload_segment))
    except (binascii.Error, ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        _fail(InvalidProof, "malformed", "proof payload is not a JSON object")
    ath = payload.get("ath")
    if not isinstance(ath, str) or not hmac.compare_digest(ath, token_hash(token)):
        _fail(InvalidProof, "ath_mismatch", "proof is bound to a different token")
    if payload.get("tool") != tool or not isinstance(payload.get("tool"), str):
        _fail(InvalidProof, "tool_mismatch", "proof is for a different tool")
    if payload.get("args") != args_digest or not isinstance(payload.get("args"), str):
        _fail(InvalidProof, "args_mismatch", "proof is for different arguments")
    # Bound to exactly this transport: an HTTP proof names this method and URL, and an
    # in-process proof names none, so neither can be replayed through the other door.
    if payload.get("htm") != htm or payload.get("htu") != htu:
        _fail(InvalidProof, "binding_mismatch", "proof is for a different method or URL")
    iat = _number(payload, "iat", InvalidProof)
    if iat < now - max_age:
        _fail(InvalidProof, "stale", "proof is too old")
    if iat > now + leeway:
        _fail(InvalidProof, "not_yet_valid", "proof was issued in the future")
    jti = payload.get("jti")
    if not isinstance(jti, str) or not _PROOF_JTI.fullmatch(jti):
        _fail(InvalidProof, "missing_claim", "proof jti is missing or malformed")
    return ProofClaims(tool=tool, args_digest=args_digest, jti=jti, issued_at=iat, token_hash=ath)
