"""The provider registry and its configuration: ``[[credential_providers]]`` tables in the
TOML config file, validated whole, unknown keys refused, secrets only by sealed name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from remit.config import load_settings
from remit.core.catalog import Privilege
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, NotFound, ProviderUnavailable
from remit.providers.base import CredentialProvider, IssueRequest
from remit.providers.registry import ProviderRegistry, build_registry
from remit.providers.signed_token import SignedTokenProvider
from remit.providers.static import StaticSecretProvider

SECRETS = {"api.key": (Secret("s3cret-value"), 3), "pg.admin": (Secret("postgresql://a:b@h/d"), 1)}


def lookup(name: str) -> tuple[Secret, int]:
    if name not in SECRETS:
        raise NotFound("no such secret", reason="unknown_secret")
    return SECRETS[name]


def reveal(name: str) -> Secret:
    return lookup(name)[0]


def build(tmp_path: Path, tables: list[Any]) -> ProviderRegistry:
    return build_registry(
        tables,
        key_dir=tmp_path / "keys",
        issuer="https://remit.test",
        lookup_secret=lookup,
        reveal_secret=reveal,
    )


def request(**kw: Any) -> IssueRequest:
    base: dict[str, Any] = {
        "lease_id": "lse_1",
        "task_id": "tsk_1",
        "agent_id": "spiffe://acme.example/agent/a",
        "tool": "api/call",
        "privilege": Privilege.READ,
        "issued_at": 1000.0,
        "expires_at": 1900.0,
    }
    base.update(kw)
    return IssueRequest(**base)


def test_static_and_signed_token_from_config(tmp_path: Path) -> None:
    registry = build(
        tmp_path,
        [
            {"name": "api", "secret": "api.key"},
            {"name": "svc", "kind": "signed-token", "audience": "https://svc.internal"},
        ],
    )
    assert registry.names() == ["api", "svc"] and len(registry) == 2
    assert registry.describe() == [
        {"name": "api", "kind": "static"},
        {"name": "svc", "kind": "signed-token"},
    ]
    api = registry.get("api")
    assert isinstance(api, StaticSecretProvider) and isinstance(api, CredentialProvider)
    issued = api.issue(request())
    assert issued.handle == "api.key@v3" and issued.values == {"value": Secret("s3cret-value")}
    api.revoke(issued.handle)  # a no-op, idempotent
    api.revoke(issued.handle)
    assert "s3cret" not in repr(api) + repr(issued)
    assert isinstance(registry.get("svc"), SignedTokenProvider)
    assert registry.jwks("svc") is not None and registry.jwks("api") is None
    assert registry.get("nope") is None and "nope" not in registry


def test_static_provider_fails_closed_without_its_secret(tmp_path: Path) -> None:
    registry = build(tmp_path, [{"name": "gone", "secret": "not.there"}])
    provider = registry.get("gone")
    assert provider is not None
    with pytest.raises(ProviderUnavailable) as info:
        provider.issue(request())
    assert info.value.reason == "unknown_secret"


@pytest.mark.parametrize(
    ("tables", "needle"),
    [
        (["not a table"], "must be a table"),
        ([{"kind": "static", "secret": "api.key"}], "name must be"),
        ([{"name": "Bad Name", "secret": "api.key"}], "name must be"),
        ([{"name": "a", "secret": "api.key"}, {"name": "a", "secret": "api.key"}], "twice"),
        ([{"name": "a", "kind": "vault"}], "kind must be"),
        ([{"name": "a", "secret": "api.key", "value": "inline!"}], "unknown keys"),
        ([{"name": "a", "secret": "Not A Name"}], "sealed secret"),
        ([{"name": "a", "kind": "signed-token"}], "audience"),
        ([{"name": "a", "kind": "signed-token", "audience": "x", "ttl_seconds": 0}], "ttl"),
        ([{"name": "a", "kind": "signed-token", "audience": "x", "ttl_seconds": 9999}], "ttl"),
        ([{"name": "a", "kind": "signed-token", "audience": "x", "algorithm": "HS256"}], "ES256"),
        ([{"name": "a", "kind": "signed-token", "audience": "x", "key": "pem"}], "unknown"),
        ([{"name": "a", "kind": "postgres", "password": "inline"}], ""),
    ],
)
def test_bad_config_is_refused_whole(tmp_path: Path, tables: list[Any], needle: str) -> None:
    good = {"name": "zz-good", "kind": "signed-token", "audience": "https://ok"}
    with pytest.raises(InvalidRequest) as info:
        build(tmp_path, [good, *tables])
    assert info.value.code == "invalid_request"
    assert needle in str(info.value)
    assert "inline" not in str(info.value)  # a refused value is never echoed


def test_postgres_kind_is_built_by_its_module(tmp_path: Path) -> None:
    registry = build(
        tmp_path,
        [
            {
                "name": "orders-db",
                "kind": "postgres",
                "admin_secret": "pg.admin",
                "host": "127.0.0.1",
                "database": "orders",
                "read_tables": ["public.orders"],
            }
        ],
    )
    provider = registry.get("orders-db")
    assert provider is not None and provider.kind == "postgres"
    assert isinstance(provider, CredentialProvider)


def test_config_file_tables(tmp_path: Path) -> None:
    config = tmp_path / "remit.toml"
    config.write_text(
        'lease_ttl_seconds = 300\n\n[[credential_providers]]\nname = "api"\nsecret = "api.key"\n'
    )
    settings = load_settings({"REMIT_CONFIG": str(config)})
    assert settings.lease_ttl_seconds == 300
    assert settings.credential_providers == ({"name": "api", "secret": "api.key"},)
    with pytest.raises(InvalidRequest):  # tables come from the file, never the environment
        load_settings({"REMIT_CREDENTIAL_PROVIDERS": "[]"})
    config.write_text('credential_providers = "api"\n')
    with pytest.raises(InvalidRequest):
        load_settings({"REMIT_CONFIG": str(config)})


def test_runtime_refuses_a_catalog_naming_an_unconfigured_provider(tmp_path: Path) -> None:
    from remit.runtime import build_remit, catalog_from_yaml
    from tests.conftest import make_settings

    catalog = catalog_from_yaml(
        "tools:\n  - name: api/call\n    privilege: read\n"
        "    credential: {provider: api, header: X-Key}\n"
    )
    with pytest.raises(InvalidRequest) as info:
        build_remit(make_settings(tmp_path), catalog=catalog)
    assert info.value.reason == "bad_catalog"
    remit = build_remit(
        make_settings(tmp_path, credential_providers=({"name": "api", "secret": "api.key"},)),
        catalog=catalog,
    )
    try:
        assert remit.list_providers() == [{"name": "api", "kind": "static"}]
    finally:
        remit.close()
    with pytest.raises(InvalidRequest):
        build_remit(make_settings(tmp_path, lease_ttl_seconds=0))
