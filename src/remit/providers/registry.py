"""The credential provider registry: every configured provider by name.

Built once by the composition root from the config file's ``[[credential_providers]]``
tables (``Settings.credential_providers``)::

    [[credential_providers]]
    name = "billing-api"            # what catalog entries name: {provider: billing-api, ...}
    secret = "billing.key"          # kind "static" is implicit: a sealed secret by name

    [[credential_providers]]
    name = "ledger"
    kind = "signed-token"
    audience = "https://ledger.internal"
    ttl_seconds = 60                # optional; algorithm = "ES256" | "EdDSA"; issuer

    [[credential_providers]]
    name = "orders-db"
    kind = "postgres"               # keys: see remit.providers.postgres

The list is validated whole before anything is used: every table a mapping with a unique
``name``, a known ``kind``, and only that kind's keys. Secrets are never inline: a provider
refers to sealed secrets by name. A catalog entry ``{secret: NAME, ...}`` uses an implicit
static provider for that secret (``StaticSecretProvider``), not listed here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from remit.core.secrets import Secret
from remit.errors import InvalidRequest
from remit.ids import check_name
from remit.providers.base import CredentialProvider
from remit.providers.signed_token import SignedTokenProvider, signed_token_provider_from_config
from remit.providers.static import SecretLookup, static_provider_from_config

KINDS: Final = ("static", "signed-token", "postgres")
MAX_PROVIDERS: Final = 256
POSTGRES_MODULE: Final = "remit.providers.postgres"


class ProviderRegistry:
    """Configured providers by name. Immutable once built."""

    def __init__(self, providers: Mapping[str, CredentialProvider] | None = None) -> None:
        self._providers: dict[str, CredentialProvider] = dict(providers or {})

    def get(self, name: str) -> CredentialProvider | None:
        return self._providers.get(name)

    def names(self) -> list[str]:
        return sorted(self._providers)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __len__(self) -> int:
        return len(self._providers)

    def describe(self) -> list[dict[str, Any]]:
        """Name and kind of each provider: never keys or secrets."""
        return [{"name": n, "kind": p.kind} for n, p in sorted(self._providers.items())]

    def jwks(self, name: str) -> dict[str, Any] | None:
        """The public JWKS of a signed-token provider; None for any other name."""
        provider = self._providers.get(name)
        if isinstance(provider, SignedTokenProvider):
            return provider.jwks()
        return None


def _postgres(
    name: str, raw: Mapping[str, object], reveal_secret: Callable[[str], Secret]
) -> CredentialProvider:
    try:
        module = importlib.import_module(POSTGRES_MODULE)
    except ImportError:
        raise InvalidRequest(
            f"credential provider {name!r}: the postgres provider is not available",
            reason="bad_config",
        ) from None
    factory = module.postgres_provider_from_config
    provider: CredentialProvider = factory(name, raw, reveal_secret)
    return provider


def build_registry(
    configs: Sequence[Mapping[str, object]] | Iterable[Mapping[str, object]],
    *,
    key_dir: Path,
    issuer: str,
    lookup_secret: SecretLookup,
    reveal_secret: Callable[[str], Secret],
) -> ProviderRegistry:
    """Validate and build every configured provider; the first problem refuses all."""
    tables = list(configs)
    if len(tables) > MAX_PROVIDERS:
        raise InvalidRequest("too many credential providers", reason="bad_config")
    seen: set[str] = set()
    for index, raw in enumerate(tables):
        if not isinstance(raw, Mapping):
            raise InvalidRequest(
                f"credential_providers[{index}] must be a table", reason="bad_config"
            )
        try:
            name = check_name(raw.get("name"), "provider name")
        except InvalidRequest:
            raise InvalidRequest(
                f"credential_providers[{index}]: name must be 1-64 lowercase letters, digits, "
                "'.', '_' or '-'",
                reason="bad_config",
            ) from None
        if name in seen:
            raise InvalidRequest(
                f"credential provider {name!r} is configured twice", reason="bad_config"
            )
        seen.add(name)
        kind = raw.get("kind", "static")
        if kind not in KINDS:
            raise InvalidRequest(
                f"credential provider {name!r}: kind must be one of {list(KINDS)}",
                reason="bad_config",
            )
    providers: dict[str, CredentialProvider] = {}
    for raw in tables:
        name = str(raw["name"])
        kind = raw.get("kind", "static")
        if kind == "static":
            providers[name] = static_provider_from_config(name, raw, lookup_secret)
        elif kind == "signed-token":
            providers[name] = signed_token_provider_from_config(
                name, raw, key_dir=key_dir, default_issuer=issuer
            )
        else:
            rest = {k: v for k, v in raw.items() if k not in ("name", "kind")}
            providers[name] = _postgres(name, rest, reveal_secret)
    return ProviderRegistry(providers)
