"""The static provider: a sealed secret, handed out as the issued value ``value``.

Issuing reads the secret's current version (unsealed by the service); the handle names
the secret and that version (``name@v3``), never the value. There is nothing downstream
to undo, so ``revoke`` is a no-op: the lease ending is what stops the value being
injected. Rotate the secret itself (``remit secrets put``) to invalidate it downstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from remit.core.leases import STATIC_KIND
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, ProviderUnavailable, RemitError
from remit.ids import check_name
from remit.providers.base import IssuedCredential, IssueRequest

# (value, version) of a sealed secret by name; raises NotFound when there is none.
SecretLookup = Callable[[str], tuple[Secret, int]]

_KEYS = {"name", "kind", "secret"}


class StaticSecretProvider:
    """Injects sealed secret ``secret`` as the issued value ``value``."""

    def __init__(self, name: str, secret: str, lookup: SecretLookup) -> None:
        self.name = name
        self.secret = secret
        self._lookup = lookup

    @property
    def kind(self) -> str:
        return STATIC_KIND

    def issue(self, request: IssueRequest) -> IssuedCredential:
        try:
            value, version = self._lookup(self.secret)
        except RemitError as exc:
            # Fail closed, and say which stable code failed: never a value.
            raise ProviderUnavailable(
                f"static provider {self.name!r}: the sealed secret is not available",
                reason=exc.reason,
            ) from None
        return IssuedCredential(handle=f"{self.secret}@v{version}", values={"value": value})

    def revoke(self, handle: str) -> None:
        """Nothing downstream to undo."""

    def __repr__(self) -> str:
        return f"StaticSecretProvider(name={self.name!r}, secret={self.secret!r})"


def static_provider_from_config(
    name: str, raw: Mapping[str, object], lookup: SecretLookup
) -> StaticSecretProvider:
    """``[[credential_providers]]`` with ``kind = "static"`` (or no kind) and ``secret``."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise InvalidRequest(
            f"credential provider {name!r}: unknown keys {unknown}", reason="bad_config"
        )
    try:
        secret = check_name(raw.get("secret"), "secret")
    except InvalidRequest:
        raise InvalidRequest(
            f"credential provider {name!r}: secret must name a sealed secret",
            reason="bad_config",
        ) from None
    return StaticSecretProvider(name, secret, lookup)
