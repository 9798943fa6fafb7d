"""The signed-token provider: ES256 and EdDSA, claims, key file, JWKS thumbprint kid."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import jwt
import pytest

from remit.core.catalog import Privilege
from remit.errors import InvalidRequest, ProviderUnavailable
from remit.providers.base import IssueRequest
from remit.providers.signed_token import signed_token_provider_from_config

NOCLOCK = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}


def request(**kw: Any) -> IssueRequest:
    base: dict[str, Any] = {
        "lease_id": "lse_1",
        "task_id": "tsk_1",
        "agent_id": "spiffe://acme.example/agent/a",
        "tool": "ledger/post",
        "privilege": Privilege.WRITE,
        "issued_at": 1000.0,
        "expires_at": 1030.5,
        "call_id": "dec_1",
    }
    base.update(kw)
    return IssueRequest(**base)


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_mints_verifiable_tokens(tmp_path: Path, algorithm: str) -> None:
    provider = signed_token_provider_from_config(
        "svc",
        {"name": "svc", "kind": "signed-token", "audience": "aud-1", "algorithm": algorithm},
        key_dir=tmp_path / "keys",
        default_issuer="https://remit.test",
    )
    issued = provider.issue(request())
    token = issued.values["token"].reveal()
    assert issued.handle == jwt.decode(token, options={"verify_signature": False})["jti"]
    (jwk,) = provider.jwks()["keys"]
    assert jwk["alg"] == algorithm and "d" not in jwk
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[algorithm],
        audience="aud-1",
        issuer="https://remit.test",
        options=NOCLOCK,
    )
    assert claims["exp"] == 1030 and claims["iat"] == 1000  # cut to the lease, not 60 s
    assert claims["sub"] == "spiffe://acme.example/agent/a" and claims["call"] == "dec_1"
    assert jwt.get_unverified_header(token)["kid"] == provider.kid == jwk["kid"]
    # A new token per issue.
    assert provider.issue(request()).values["token"].reveal() != token
    # The key persists across restarts (same kid), owner-only.
    path = tmp_path / "keys" / "provider-svc.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = signed_token_provider_from_config(
        "svc",
        {"audience": "aud-1", "algorithm": algorithm},
        key_dir=tmp_path / "keys",
        default_issuer="https://remit.test",
    )
    assert again.kid == provider.kid
    provider.revoke(issued.handle)  # a no-op: the token dies at exp


def test_ttl_cap_and_a_lease_too_short(tmp_path: Path) -> None:
    provider = signed_token_provider_from_config(
        "svc", {"audience": "a", "ttl_seconds": 10}, key_dir=tmp_path, default_issuer="i"
    )
    token = provider.issue(request(expires_at=5000.0)).values["token"].reveal()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 10
    with pytest.raises(ProviderUnavailable):
        provider.issue(request(expires_at=1000.5))


def test_a_key_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    signed_token_provider_from_config(
        "svc", {"audience": "a", "algorithm": "EdDSA"}, key_dir=tmp_path, default_issuer="i"
    )
    with pytest.raises(InvalidRequest) as info:
        signed_token_provider_from_config(
            "svc", {"audience": "a", "algorithm": "ES256"}, key_dir=tmp_path, default_issuer="i"
        )
    assert info.value.reason == "bad_provider_key"
    (tmp_path / "provider-junk.pem").write_text("not a key")
    with pytest.raises(InvalidRequest):
        signed_token_provider_from_config(
            "junk", {"audience": "a"}, key_dir=tmp_path, default_issuer="i"
        )
