"""The signed-token provider: a short-lived JWT minted per call for an internal service.

Each issue mints one token (ES256 by default, or EdDSA/Ed25519) with a dedicated provider
key kept in the data dir's key directory (``provider-<name>.pem``, 0600, created on first
use). Claims::

    iss   the configured issuer (default: Remit's)      sub   the agent's SPIFFE ID
    aud   the configured audience                        jti   unique per token
    iat, nbf  the issue time                             exp   ≤ the lease's expiry and
    task, tool, lease, call   ids of what it was minted for     ≤ iat + ttl_seconds
    act   {"sub": instance id} when the service passes one (RFC 8693 actor)

The internal service verifies it offline with the provider's public JWKS
(``GET /v1/providers/{name}/jwks``; ``kid`` is the RFC 7638 thumbprint of the key),
checking ``aud`` and ``exp``. Tokens are never stored by the provider; ``revoke`` is a
no-op because a token dies at ``exp`` (at most ``ttl_seconds``, default 60 s), and the
service makes every lease of this kind per call, so each token serves one decision.
Signing uses PyJWT over ``cryptography`` keys: no hand-rolled crypto.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from remit.core.secrets import Secret
from remit.errors import InvalidRequest, ProviderUnavailable
from remit.ids import new_id
from remit.providers.base import IssuedCredential, IssueRequest

KIND: Final = "signed-token"
DEFAULT_TTL: Final = 60
MAX_TTL: Final = 3600
ALGORITHMS: Final = ("ES256", "EdDSA")
TOKEN_TYPE: Final = "JWT"  # noqa: S105 - a JOSE header value, not a password
_KEYS = {"name", "kind", "audience", "ttl_seconds", "algorithm", "issuer"}
_TEXT = re.compile(r"^[\x21-\x7e]{1,256}$")

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _public_jwk(key: PrivateKey) -> dict[str, str]:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


def _thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order."""
    required = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    text = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(text.encode("ascii")).digest())


def _load_or_create(path: Path, algorithm: str) -> PrivateKey:
    """The provider key at ``path``; created (0600, exclusive) on first use."""
    if not path.exists():
        key: PrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if algorithm == "ES256"
            else ed25519.Ed25519PrivateKey.generate()
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError):
        raise InvalidRequest(
            f"the provider key {path.name} cannot be read", reason="bad_provider_key"
        ) from None
    if (
        algorithm == "ES256"
        and isinstance(loaded, ec.EllipticCurvePrivateKey)
        and isinstance(loaded.curve, ec.SECP256R1)
    ):
        return loaded
    if algorithm == "EdDSA" and isinstance(loaded, ed25519.Ed25519PrivateKey):
        return loaded
    raise InvalidRequest(
        f"the provider key {path.name} does not fit algorithm {algorithm}",
        reason="bad_provider_key",
    )


class SignedTokenProvider:
    """Mints one short-lived JWT per issue, for ``audience``."""

    def __init__(
        self,
        name: str,
        *,
        key: PrivateKey,
        issuer: str,
        audience: str,
        ttl_seconds: int = DEFAULT_TTL,
        algorithm: str = "ES256",
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise InvalidRequest("algorithm must be ES256 or EdDSA", reason="bad_config")
        if not 0 < ttl_seconds <= MAX_TTL:
            raise InvalidRequest(f"ttl_seconds must be 1 to {MAX_TTL}", reason="bad_config")
        self.name = name
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self.algorithm = algorithm
        self._key = key
        self._jwk = _public_jwk(key)
        self.kid = _thumbprint(self._jwk)
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return KIND

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key set an internal service verifies these tokens with."""
        return {
            "keys": [dict(self._jwk, kid=self.kid, use="sig", alg=self.algorithm)],
        }

    def issue(self, request: IssueRequest) -> IssuedCredential:
        now = int(request.issued_at)
        exp = min(int(request.issued_at + self.ttl_seconds), int(request.expires_at))
        if exp <= now:
            raise ProviderUnavailable(
                "the lease ends too soon for a signed token", reason="lease_too_short"
            )
        jti = new_id("jti")
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": request.agent_id,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
            "task": request.task_id,
            "tool": request.tool,
            "lease": request.lease_id,
        }
        if request.call_id is not None:
            claims["call"] = request.call_id
        act = request.options.get("act")
        if isinstance(act, Mapping):
            claims["act"] = dict(act)
        try:
            token = jwt.encode(
                claims,
                self._key,
                algorithm=self.algorithm,
                headers={"kid": self.kid, "typ": TOKEN_TYPE},
            )
        except Exception:  # pragma: no cover - a loaded key of the right type signs
            raise ProviderUnavailable(
                "the signed token could not be minted", reason="sign_failed"
            ) from None
        return IssuedCredential(handle=jti, values={"token": Secret(token)})

    def revoke(self, handle: str) -> None:
        """Nothing to undo: the token expires within ``ttl_seconds``."""

    def __repr__(self) -> str:
        return f"SignedTokenProvider(name={self.name!r}, audience={self.audience!r})"


def signed_token_provider_from_config(
    name: str, raw: Mapping[str, object], *, key_dir: Path, default_issuer: str
) -> SignedTokenProvider:
    """``[[credential_providers]]`` with ``kind = "signed-token"``: ``audience`` (required),
    ``ttl_seconds`` (default 60, at most 3600), ``algorithm`` (``ES256`` or ``EdDSA``),
    ``issuer`` (default: Remit's issuer)."""
    where = f"credential provider {name!r}"
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise InvalidRequest(f"{where}: unknown keys {unknown}", reason="bad_config")
    audience = raw.get("audience")
    if not isinstance(audience, str) or not _TEXT.match(audience):
        raise InvalidRequest(f"{where}: audience must be a short string", reason="bad_config")
    issuer = raw.get("issuer", default_issuer)
    if not isinstance(issuer, str) or not _TEXT.match(issuer):
        raise InvalidRequest(f"{where}: issuer must be a short string", reason="bad_config")
    ttl = raw.get("ttl_seconds", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL:
        raise InvalidRequest(
            f"{where}: ttl_seconds must be an integer from 1 to {MAX_TTL}", reason="bad_config"
        )
    algorithm = raw.get("algorithm", "ES256")
    if algorithm not in ALGORITHMS:
        raise InvalidRequest(f"{where}: algorithm must be ES256 or EdDSA", reason="bad_config")
    key = _load_or_create(key_dir / f"provider-{name}.pem", str(algorithm))
    return SignedTokenProvider(
        name,
        key=key,
        issuer=issuer,
        audience=audience,
        ttl_seconds=ttl,
        algorithm=str(algorithm),
    )
