"""Sealed secrets, credential leases and providers over HTTP (issue 6).

Operator routes (scopes in ``LEASE_ROUTE_SCOPES``, merged into ``ROUTE_SCOPES``):

* ``GET /v1/secrets`` names, versions and dates; never a value (readonly);
* ``PUT /v1/secrets/{name}`` seal and store the next version; the value is in the body and
  never echoed (admin);
* ``POST /v1/secrets/rotate-master`` a new master key, every data key re-wrapped, old key
  files retired; ``POST /v1/secrets/rewrap`` re-wrap everything not wrapped by the active
  key and report which other keys are still needed (admin; both answer key ids and counts);
* ``GET /v1/leases`` with ``task``, ``state``, ``outstanding`` filters; ``GET
  /v1/leases/{lease_id}``; ``POST /v1/leases/{lease_id}/revoke`` (admin);
* ``GET /v1/providers`` names and kinds of the configured credential providers.

Public: ``GET /v1/providers/{name}/jwks``, the public keys an internal service verifies a
signed-token provider's tokens with (like ``/.well-known/jwks.json``, no authentication).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Path, Query
from fastapi.routing import APIRoute
from pydantic import StringConstraints

from remit.core.leases import Lease
from remit.core.sealing import MAX_VALUE_BYTES
from remit.core.secrets import Secret
from remit.http.problems import BODY_ERRORS, documented
from remit.http.wire import EmptyRequest, JwksOut, Reason, Request, Response
from remit.service import Remit, SecretInfo

LEASE_ROUTE_SCOPES: Final[dict[tuple[str, str], str]] = {
    ("GET", "/v1/secrets"): "readonly",
    ("PUT", "/v1/secrets/{name}"): "admin",
    ("POST", "/v1/secrets/rotate-master"): "admin",
    ("POST", "/v1/secrets/rewrap"): "admin",
    ("GET", "/v1/leases"): "readonly",
    ("GET", "/v1/leases/{lease_id}"): "readonly",
    ("POST", "/v1/leases/{lease_id}/revoke"): "admin",
    ("GET", "/v1/providers"): "readonly",
}

NAME_PATTERN: Final = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$"
NameParam = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]
LeaseIdParam = Annotated[str, Path(pattern=r"^lse_[A-Za-z0-9_-]{1,64}$", max_length=68)]
TaskFilter = Annotated[str | None, Query(pattern="^tsk_[A-Za-z0-9_-]{16,64}$", max_length=68)]
StateFilter = Annotated[
    Literal["open", "revoking", "revoked", "expired"] | None, Query(max_length=16)
]
LeaseLimit = Annotated[int, Query(ge=1, le=10_000)]


class SecretOut(Response):
    name: str
    version: int
    master_kid: str
    created_at: float
    rotated_at: float | None


class SecretsOut(Response):
    secrets: list[SecretOut]


class PutSecretRequest(Request):
    """The value to seal. It is never echoed, logged or audited."""

    value: Annotated[str, StringConstraints(min_length=1, max_length=MAX_VALUE_BYTES)]

    def __repr__(self) -> str:
        return "PutSecretRequest(value=Secret('**redacted**'))"


class MasterRotationOut(Response):
    """Master key ids and counts only: never key material."""

    old_kid: str
    new_kid: str
    rewrapped: int
    lease_values: int
    retired: list[str]
    still_needed: list[str]


class MasterRewrapOut(Response):
    """Master key ids and counts only: never key material."""

    active_kid: str
    rewrapped: int
    lease_values: int
    still_needed: list[str]
    missing: list[str]
    unreadable: int
    retired: list[str]
    previous: list[str]
    complete: bool


class LeaseOut(Response):
    lease_id: str
    task_id: str
    secret: str
    provider: str | None
    kind: str
    tool: str
    obligation: str
    per_call: bool
    call_id: str | None
    issued_at: float
    expires_at: float
    used_at: float | None
    revoked_at: float | None
    revoke_reason: str | None
    state: str
    outstanding: bool
    revoke_attempts: int
    next_attempt_at: float | None
    last_error: str | None


class LeasesOut(Response):
    leases: list[LeaseOut]


class RevokeLeaseRequest(Request):
    reason: Reason = "operator"


class ProviderOut(Response):
    name: str
    kind: str


class ProvidersOut(Response):
    providers: list[ProviderOut]


def secret_out(info: SecretInfo) -> SecretOut:
    return SecretOut.model_validate(info.to_data())


def lease_out(lease: Lease) -> LeaseOut:
    return LeaseOut.model_validate(lease.to_data())


RouteFactory = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]


# ``/v1/secrets/rotate-master`` and ``/v1/secrets/rewrap`` are actions, not secret names: the
# ``PUT /v1/secrets/{name}`` route does not match them (a PUT there is 405, Allow: POST).
_SECRET_ACTIONS: Final = ("rotate-master", "rewrap")


def _reserve_action_names(router: APIRouter) -> None:
    actions = "|".join(re.escape(a) for a in _SECRET_ACTIONS)
    for entry in router.routes:
        if isinstance(entry, APIRoute) and entry.path == "/v1/secrets/{name}":
            entry.path_regex = re.compile(rf"^/v1/secrets/(?!(?:{actions})$)(?P<name>[^/]+)$")


def add_lease_routes(router: APIRouter, remit: Remit, route: RouteFactory) -> None:
    """Add the routes above; ``route`` is the operator route factory (auth and scopes)."""

    @route("GET", "/v1/secrets", response_model=SecretsOut)
    def list_secrets() -> SecretsOut:
        return SecretsOut(secrets=[secret_out(s) for s in remit.list_secrets()])

    @route("PUT", "/v1/secrets/{name}", *BODY_ERRORS, response_model=SecretOut)
    def put_secret(name: NameParam, body: Annotated[PutSecretRequest, Body()]) -> SecretOut:
        return secret_out(remit.put_secret(name, Secret(body.value)))

    @route("POST", "/v1/secrets/rotate-master", *BODY_ERRORS, 503, response_model=MasterRotationOut)
    def rotate_master(body: Annotated[EmptyRequest | None, Body()] = None) -> MasterRotationOut:
        return MasterRotationOut.model_validate(remit.rotate_master_key().to_data())

    @route("POST", "/v1/secrets/rewrap", *BODY_ERRORS, 503, response_model=MasterRewrapOut)
    def rewrap_secrets(body: Annotated[EmptyRequest | None, Body()] = None) -> MasterRewrapOut:
        return MasterRewrapOut.model_validate(remit.rewrap_secrets().to_data())

    _reserve_action_names(router)

    @route("GET", "/v1/leases", response_model=LeasesOut)
    def list_leases(
        task: TaskFilter = None,
        state: StateFilter = None,
        outstanding: bool = False,
        limit: LeaseLimit = 1000,
    ) -> LeasesOut:
        found = remit.list_leases(task_id=task, state=state, outstanding=outstanding, limit=limit)
        return LeasesOut(leases=[lease_out(x) for x in found])

    @route("GET", "/v1/leases/{lease_id}", 404, response_model=LeaseOut)
    def get_lease(lease_id: LeaseIdParam) -> LeaseOut:
        return lease_out(remit.get_lease(lease_id))

    @route("POST", "/v1/leases/{lease_id}/revoke", *BODY_ERRORS, 404, 409, response_model=LeaseOut)
    def revoke_lease(
        lease_id: LeaseIdParam, body: Annotated[RevokeLeaseRequest | None, Body()] = None
    ) -> LeaseOut:
        reason = body.reason if body else "operator"
        return lease_out(remit.revoke_lease(lease_id, reason=reason))

    @route("GET", "/v1/providers", response_model=ProvidersOut)
    def list_providers() -> ProvidersOut:
        return ProvidersOut(providers=[ProviderOut(**p) for p in remit.list_providers()])

    @router.get(
        "/v1/providers/{name}/jwks",
        tags=["public"],
        response_model=JwksOut,
        responses=documented(400, 404),
        summary="A signed-token provider's public keys, for the internal service to verify",
    )
    def provider_jwks(name: NameParam) -> JwksOut:
        return JwksOut.model_validate(remit.provider_jwks(name))
