"""Use cases: the core and the store put together. The in-process entry point.

Operators call ``Remit`` directly (or through the HTTP API and CLI, which
translate and call these methods). Agent instances use ``remit.agent``,
which makes the proofs and calls the instance-facing methods here.

Every refused request leaves one audit record (``request.rejected`` or a
refused ``decision``) and changes nothing else.
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar, cast

from remit.alerts import Alerts
from remit.approvals import StoreApprovalGate, WebhookNotifier
from remit.canonical import JsonLimits, check_json, digest
from remit.clock import Clock
from remit.config import Settings
from remit.core.analysis import Permission, effective_permissions
from remit.core.approvals import Approval, ApprovalStatus, Vote, check_vote
from remit.core.audit import AuditRecord, ChainReport
from remit.core.catalog import (
    Catalog,
    ToolSpec,
    catalog_from_data,
    check_tool_name,
    tool_definition_digest,
)
from remit.core.delegation import check_within_ceiling, narrow_mandate
from remit.core.destinations import normalize_destination, parse_pattern
from remit.core.identity import (
    Agent,
    AgentStatus,
    Instance,
    Mode,
    Principal,
    attestation_payload,
    ceiling_from_data,
    join_token_hash,
)
from remit.core.inventory import InventoryImport, InventoryItem, check_import
from remit.core.keys import jwk_thumbprint, load_public_jwk, verify_es256
from remit.core.labels import Labels
from remit.core.leases import (
    INJECT_HEADER,
    MAX_LEASE_TTL,
    OBLIGATION_KINDS,
    Lease,
    LeaseState,
    lease_ttl,
    new_lease,
    reusable,
    revoke_backoff,
)
from remit.core.mandate import Mandate, MandateLimits, build_mandate
from remit.core.monitor import Alert
from remit.core.pipeline import CallRequest, Decision, LeaseStep, Obligation, Pipeline
from remit.core.policy import (
    AgentEntity,
    PolicyEngine,
    PolicyRequest,
    PolicySource,
    ToolEntity,
    explain,
    trust_domain_of,
)
from remit.core.sealing import MasterKey, SealedSecret, rewrap, seal, unseal
from remit.core.secrets import Secret
from remit.core.task_end import TaskEnd
from remit.core.tasks import Task, TaskStatus
from remit.core.tokens import IdentityClaims, TaskClaims, TokenService, thaw, verify_call_proof
from remit.errors import (
    Conflict,
    Denied,
    Forbidden,
    InvalidGrant,
    InvalidProof,
    InvalidRequest,
    InvalidToken,
    NotFound,
    ProviderUnavailable,
    RemitError,
    SealError,
    StoreUnavailable,
    TokenExpired,
    TokenRevoked,
)
from remit.ids import SpiffeId, check_name, check_principal_id, new_id
from remit.inflight import InFlight
from remit.keystore import FileKeyStore, MasterKeyStore
from remit.providers.base import CredentialProvider, Injection, IssueRequest
from remit.providers.registry import ProviderRegistry
from remit.providers.signed_token import KIND as SIGNED_TOKEN_KIND
from remit.providers.static import StaticSecretProvider
from remit.store.audit_log import AuditLog
from remit.store.base import (
    AdminTokenRecord,
    AuditQuery,
    JoinTokenRecord,
    PolicyVersionRecord,
    StoredSecret,
    ToolPin,
)
from remit.store.sql import SqlStore, lease_values_name

_log = logging.getLogger("remit.leases")

P = ParamSpec("P")
R = TypeVar("R")

OPEN_TASK_OP = "remit:open_task"
END_TASK_OP = "remit:end_task"
RENEW_IDENTITY_OP = "remit:renew_identity"
DELEGATE_OP = "remit:delegate"
TASK_CATALOG_OP = "remit:task_catalog"
TASK_PIN_CHECK_OP = "remit:task_pin_check"
NONCE_TTL = 120.0
WEBHOOK_JOIN_SECONDS = 6.0
ADMIN_LIMITS = JsonLimits(max_depth=6, max_bytes=64 * 1024, max_string=4096, max_items=1024)


@dataclass(frozen=True, slots=True)
class Attestation:
    instance_id: str
    agent_id: str
    identity_token: str
    expires_at: float
    issued_at: float


ADMIN_SCOPES = ("admin", "approver", "auditor", "readonly")
# What each operator scope covers: admin everything; auditor and approver also readonly.
SCOPE_COVERS: dict[str, frozenset[str]] = {
    "admin": frozenset(ADMIN_SCOPES),
    "approver": frozenset({"approver", "readonly"}),
    "auditor": frozenset({"auditor", "readonly"}),
    "readonly": frozenset({"readonly"}),
}


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """An authenticated operator: who, and what their token may do."""

    token_id: str
    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        """Whether one of this token's scopes covers ``scope`` (see SCOPE_COVERS)."""
        return any(scope in SCOPE_COVERS.get(s, ()) for s in self.scopes)


@dataclass(frozen=True, slots=True)
class TaskGrant:
    task_id: str
    task_token: str
    expires_at: float
    mandate: Mandate
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown of a stored secret: never its value or any key material."""

    name: str
    version: int
    master_kid: str
    created_at: float
    rotated_at: float | None

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "master_kid": self.master_kid,
            "created_at": self.created_at,
            "rotated_at": self.rotated_at,
        }


@dataclass(frozen=True, slots=True)
class MasterRotation:
    old_kid: str
    new_kid: str
    rewrapped: int
    retired: tuple[str, ...]  # superseded master keys deleted: no secret needs them
    lease_values: int = 0  # open leases whose sealed values were re-wrapped
    still_needed: tuple[str, ...] = ()  # older master keys something is still wrapped by

    def to_data(self) -> dict[str, Any]:
        return {
            "old_kid": self.old_kid,
            "new_kid": self.new_kid,
            "rewrapped": self.rewrapped,
            "lease_values": self.lease_values,
            "retired": list(self.retired),
            "still_needed": list(self.still_needed),
        }


@dataclass(frozen=True, slots=True)
class MasterRewrap:
    """What ``Remit.rewrap_secrets`` did: master key ids and counts, nothing else."""

    active_kid: str
    rewrapped: int  # secrets whose data key now is wrapped by the active key
    lease_values: int  # open leases whose sealed values were re-wrapped
    still_needed: tuple[str, ...]  # other master keys something is still wrapped by
    missing: tuple[str, ...]  # of those, the ones this process does not hold at all
    unreadable: int  # rows whose data key did not open with the key they name (tampered)
    retired: tuple[str, ...]  # retained key files deleted: nothing needs them any more
    previous: tuple[str, ...]  # the unwrap-only keys configured (REMIT_MASTER_KEY_PREVIOUS)

    @property
    def complete(self) -> bool:
        """Everything is wrapped by the active key: previous keys may be dropped."""
        return not self.still_needed and not self.unreadable

    def to_data(self) -> dict[str, Any]:
        return {
            "active_kid": self.active_kid,
            "rewrapped": self.rewrapped,
            "lease_values": self.lease_values,
            "still_needed": list(self.still_needed),
            "missing": list(self.missing),
            "unreadable": self.unreadable,
            "retired": list(self.retired),
            "previous": list(self.previous),
            "complete": self.complete,
        }


@dataclass(frozen=True, slots=True)
class _RewrapPass:
    secrets: int
    lease_values: int
    missing: frozenset[str]
    unreadable: int


DRAIN_SECONDS = 5.0  # how long ending a task waits for its allowed calls in flight
_SETTLE_ROUNDS = 8  # re-wraps of one row in a row before giving up (keys rotating that fast)


def _secret_info(record: StoredSecret) -> SecretInfo:
    return SecretInfo(
        record.name,
        record.version,
        record.sealed.master_kid,
        record.created_at,
        record.rotated_at,
    )


class _State:
    """The pipeline's view of the store.

    Agents, instances and principals change rarely and are read on every
    call, so they are cached; every change made through this service
    invalidates its entry at once, and the TTL bounds how long a change made
    by another replica can take to arrive. Tasks are read fresh on every call.
    """

    def __init__(self, store: SqlStore, ttl_seconds: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.in_flight = InFlight()
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, kind: str, key: str, load: Callable[[str], R]) -> R:
        now = time.monotonic()
        hit = self._cache.get((kind, key))
        if hit is not None and hit[0] > now:
            return cast(R, hit[1])
        value = load(key)
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            if value is not None:
                self._cache[(kind, key)] = (now + self.ttl, value)
        return value

    def invalidate(self, kind: str | None = None, key: str | None = None) -> None:
        with self._lock:
            if kind is None:
                self._cache.clear()
            elif key is None:
                for k in [k for k in self._cache if k[0] == kind]:
                    del self._cache[k]
            else:
                self._cache.pop((kind, key), None)

    def get_task(self, task_id: str) -> Task | None:
        return self.store.get_task(task_id)

    def get_agent(self, agent_id: str) -> Agent | None:
        return self._cached("agent", agent_id, self.store.get_agent)

    def get_instance(self, instance_id: str) -> Instance | None:
        return self._cached("instance", instance_id, self.store.get_instance)

    def get_principal(self, principal_id: str) -> Principal | None:
        return self._cached("principal", principal_id, self.store.get_principal)

    def get_pin(self, tool: str) -> ToolPin | None:
        return self._cached("pin", tool, self.store.get_tool_pin)

    def ancestors_open(self, task: Task, now: float) -> bool:
        parent_id = task.parent_id
        hops = 0
        while parent_id is not None:
            parent = self.store.get_task(parent_id)
            hops += 1
            if parent is None or parent.effective_status(now) is not TaskStatus.OPEN or hops > 16:
                return False
            parent_id = parent.parent_id
        return True

    def record_call(
        self, *, task_id: str, jti: str, jti_expires_at: float, consume: bool, taint: Labels
    ) -> tuple[bool, bool]:
        return self.store.record_call(
            task_id=task_id, jti=jti, jti_expires_at=jti_expires_at, consume=consume, taint=taint
        )

    def deciding(self, task_id: str) -> AbstractContextManager[None]:
        return self.in_flight.deciding(task_id)


class StoreLeaseResolver:
    """Step 7 over the store: an allowed call on a tool whose catalog entry names a
    credential is first checked by issuance policy (Cedar ``issue_credential``), then gets
    a lease (the task's open shareable one, or a new one issued by the credential's
    provider, its values sealed with the master key) and an ``inject_header`` or
    ``inject_env`` obligation naming the lease. Issuance fails closed."""

    def __init__(
        self,
        *,
        store: SqlStore,
        audit: AuditLog,
        clock: Clock,
        ttl_seconds: float,
        policy: PolicyEngine,
        provider_for: Callable[[str, str], CredentialProvider | None],
        seal_values: Callable[[str, Mapping[str, Secret]], SealedSecret],
        settle_values: Callable[[str], None],
        end_lease: Callable[[str, str], object],
        stopped: Callable[[str], bool],
        catalog: Callable[[], Catalog],
    ) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock
        self.ttl = ttl_seconds
        self.policy = policy
        self.provider_for = provider_for
        self.seal_values = seal_values
        # After the lease row is committed: keep its values openable across a concurrent
        # master key rotation (``Remit._settle_lease_values``).
        self.settle_values = settle_values
        # Ends one lease now, revoking it downstream, audited (``Remit._end_lease``).
        self.end_lease = end_lease
        # Whether the kill switch stops this agent now (global or per agent).
        self.stopped = stopped
        # The catalog now: a tool entry replaced during issuance must not get a lease.
        self.catalog = catalog

    def obligations(self, task: Task, spec: ToolSpec, *, call_id: str, mode: Mode) -> LeaseStep:
        credential = spec.credential
        if credential is None:
            return LeaseStep()
        now = self.clock.now()
        source = credential.source
        provider = self.provider_for(credential.provider or "", source)
        kind = provider.kind if provider is not None else "unknown"
        per_call = credential.per_call or kind == SIGNED_TOKEN_KIND
        result = self.policy.evaluate(
            PolicyRequest.issuance(
                task.agent_id, source, _issue_context(task, spec, mode, kind, per_call)
            )
        )
        if not result.allowed:
            reasons = ("credential-denied", *result.reasons)
            self.audit.append(
                "lease.refused",
                {
                    "task": task.task_id,
                    "tool": spec.name,
                    "secret": source,
                    "call": call_id,
                    "reasons": list(reasons),
                    "policy_version": result.version,
                },
            )
            return LeaseStep(denied=reasons)
        if provider is None:
            raise ProviderUnavailable(
                "the tool's credential provider is not configured", reason="unknown_provider"
            )
        ttl = lease_ttl(credential, self.ttl)
        if not per_call:
            current = self.store.find_open_lease(task.task_id, source, spec.name)
            if (
                current is not None
                and current.handle
                and current.obligation_kind == credential.obligation_kind
                and reusable(current, now, task.expires_at, ttl)
            ):
                return LeaseStep((Obligation(current.obligation_kind, current.lease_id),))
        lease = new_lease(
            new_id("lse"),
            task_id=task.task_id,
            secret_name=source,
            tool=spec.name,
            now=now,
            task_expires_at=task.expires_at,
            ttl=ttl,
            provider=credential.provider or "",
            kind=kind,
            call_id=call_id,
            per_call=per_call,
            obligation_kind=credential.obligation_kind,
        )
        request = IssueRequest(
            lease_id=lease.lease_id,
            task_id=task.task_id,
            agent_id=task.agent_id,
            tool=spec.name,
            privilege=spec.privilege,
            issued_at=now,
            expires_at=lease.expires_at,
            call_id=lease.call_id,
            options={"act": {"sub": task.instance_id}},
        )
        audit_base = {
            "lease": lease.lease_id,
            "task": task.task_id,
            "secret": source,
            "provider": lease.provider or None,
            "kind": kind,
            "tool": spec.name,
        }
        issued_handle: object = None
        try:
            issued = provider.issue(request)
            handle = issued_handle = issued.handle
            if not isinstance(handle, str) or not handle or len(handle) > 256:
                raise ProviderUnavailable("the provider returned a bad handle", reason="bad_handle")
            sealed = self.seal_values(lease.lease_id, issued.values)
        except Exception as exc:
            if isinstance(issued_handle, str) and issued_handle:
                # Minted downstream but no lease row will hold it: take it back now.
                _undo_issue(provider, issued_handle, lease.lease_id)
            failure = _provider_failure(exc, "issue_failed")
            self.audit.append(
                "lease.issue_failed", {**audit_base, "error": failure.code, "why": failure.reason}
            )
            raise failure from None
        lease = replace(lease, handle=handle)
        try:
            self.store.insert_lease(lease, sealed)
        except Exception:
            # nothing may be left downstream that no lease row can revoke
            _undo_issue(provider, handle, lease.lease_id)
            raise
        step = LeaseStep(
            (Obligation(lease.obligation_kind, lease.lease_id),), issued=(lease.lease_id,)
        )
        try:
            # The task may have ended since step 2: its lease sweep ran before this row was
            # written and did not see it, so the lease must not outlive the task.
            live = self.store.get_task(task.task_id)
            if live is None or live.effective_status(self.clock.now()) is not TaskStatus.OPEN:
                raise TokenRevoked("the task has ended", reason="task_ended")
            # Likewise the kill switch: its sweep may have run before this row existed.
            if self.stopped(task.agent_id):
                raise TokenRevoked("the agent is stopped by the kill switch", reason="kill_switch")
            if self.catalog().get(spec.name) != spec:
                raise TokenRevoked("the tool's catalog entry changed", reason="catalog_changed")
            self.settle_values(lease.lease_id)
            self.audit.append(
                "lease.issued",
                {
                    **audit_base,
                    "handle": handle,
                    "per_call": per_call,
                    "call": lease.call_id,
                    "expires_at": lease.expires_at,
                },
            )
        except BaseException as exc:
            # Recorded and live downstream, but the call cannot get it: take it back now.
            why = (exc.reason or exc.code) if isinstance(exc, RemitError) else "internal"
            self.release(step, f"call_refused:{why}")
            raise
        return step

    def release(self, step: LeaseStep, reason: str) -> None:
        """End the leases newly issued for a call that was then refused (revoked downstream,
        audited with ``reason``). A reused lease is never in ``step.issued``. Never raises:
        a lease that cannot be ended now is still reaped at its expiry."""
        for lease_id in step.issued:
            try:
                self.end_lease(lease_id, _short(reason, 120))
            except Exception:
                _log.warning("lease %s: could not be released after a refused call", lease_id)


def _issue_context(
    task: Task, spec: ToolSpec, mode: Mode, kind: str, per_call: bool
) -> dict[str, Any]:
    """The Cedar context of ``issue_credential`` (``policy_pack.ISSUE_CONTEXT_ATTRIBUTES``)."""
    return {
        "mode": mode.value,
        "task": task.policy_info(),
        "tool": spec.name,
        "privilege": spec.privilege.value,
        "tool_in_mandate": spec.name in task.mandate.tools,
        "delegated": task.parent_id is not None,
        "depth": task.depth,
        "taint_sensitivity": int(task.taint.sensitivity),
        "taint_flags": sorted(task.taint.flags),
        "kind": kind,
        "per_call": per_call,
    }


def _undo_issue(provider: CredentialProvider, handle: str, lease_id: str) -> None:
    """Revoke a credential minted for a lease that was never recorded; never raises."""
    try:
        provider.revoke(handle)
    except Exception:
        _log.warning("lease %s: could not undo an unrecorded issue", lease_id)


def _provider_failure(exc: BaseException, default_reason: str) -> ProviderUnavailable:
    """A provider failure as ``provider_unavailable``: only a stable code and a short
    reason survive, never the provider's own message (it might carry a secret)."""
    if isinstance(exc, ProviderUnavailable):
        return ProviderUnavailable(
            "the credential provider is unavailable", reason=_short(exc.reason, 64)
        )
    reason = exc.reason if isinstance(exc, RemitError) else default_reason
    return ProviderUnavailable("the credential provider is unavailable", reason=_short(reason, 64))


class Remit:
    """The Remit service. Build it with ``remit.runtime.build_remit``."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: SqlStore,
        keys: FileKeyStore,
        clock: Clock,
        policy: PolicyEngine,
        audit: AuditLog,
        catalog: Catalog,
        masters: MasterKeyStore | None = None,
    ) -> None:
        self.settings = settings
        self.masters = masters or MasterKeyStore.from_settings(settings)
        if not 0 < settings.lease_ttl_seconds <= MAX_LEASE_TTL:
            raise InvalidRequest("lease_ttl_seconds must be from 1 to 86400", reason="bad_setting")
        # Credential providers by name (runtime.build_remit installs the configured ones).
        self.providers = ProviderRegistry()
        self.revoke_jitter: Callable[[], float] = random.SystemRandom().random
        self._secrets_lock = threading.Lock()
        self.store = store
        self.keys = keys
        self.clock = clock
        self.policy = policy
        self.audit = audit
        self._catalog = catalog
        self._lock = threading.Lock()
        self.tokens = TokenService(
            keys.keyset, issuer=settings.issuer, audience=settings.audience, clock=clock
        )
        # Step 4 with behaviour baselines (remit.alerts): learns the recent audit log now.
        self.alerts = Alerts(
            settings=settings,
            store=store,
            audit=audit,
            suspend=lambda agent_id: self.suspend_agent(agent_id, reason="anomaly"),
        )
        self.alerts.warm(clock.now())
        self.monitor = self.alerts.monitor
        self.mandate_limits = MandateLimits(max_ttl_seconds=settings.max_task_ttl_seconds)
        self.state = _State(store)
        self.approval_notifier = WebhookNotifier(settings.approval_webhook, audit)
        self.approval_gate = StoreApprovalGate(
            store=store,
            audit=audit,
            clock=clock,
            ttl_seconds=float(settings.approval_ttl_seconds),
            notifier=self.approval_notifier,
        )
        self.pipeline = Pipeline(
            tokens=self.tokens,
            policy=policy,
            catalog=lambda: self._catalog,
            state=self.state,
            audit=audit,
            clock=clock,
            monitor=self.monitor,
            approvals=self.approval_gate,
            leases=StoreLeaseResolver(
                store=store,
                audit=audit,
                clock=clock,
                ttl_seconds=float(settings.lease_ttl_seconds),
                policy=policy,
                provider_for=self._provider_for,
                seal_values=self._seal_values,
                settle_values=self._settle_lease_values,
                end_lease=lambda lease_id, reason: self._end_lease(
                    lease_id, LeaseState.REVOKED, reason
                ),
                stopped=lambda agent_id: (
                    self.monitor.killed_all or agent_id in self.monitor.killed_agents
                ),
                catalog=lambda: self._catalog,
            ),
        )
        self._refresh_entities()

    # ------------------------------------------------------------------ plumbing
    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def close(self) -> None:
        self.approval_notifier.close(timeout=WEBHOOK_JOIN_SECONDS)
        self.alerts.close()
        self.audit.close()
        self.store.close()

    def _rejected(self, operation: str, exc: RemitError, **context: Any) -> None:
        data = {"operation": operation, "error": exc.code, "reason": exc.reason, **context}
        self.audit.append("request.rejected", data)

    def _guard(self, operation: str, fn: Callable[[], R], **context: Any) -> R:
        """Run ``fn``; on a refusal, write its denial record and re-raise."""
        try:
            return fn()
        except RemitError as exc:
            if exc.code not in ("audit_unavailable", "store_unavailable"):
                self._rejected(operation, exc, **context)
            raise

    def _refresh_entities(self) -> None:
        agents = [
            AgentEntity(a.agent_id, a.owner, trust_domain_of(a.agent_id))
            for a in self.store.list_agents()
        ]
        tools = [
            ToolEntity(s.name, s.privilege.value, s.risk) for s in self._catalog.tools.values()
        ]
        self.policy.set_entities(agents, tools)

    # ------------------------------------------------------------------ catalog and policy
    def load_catalog(self, data: object) -> Catalog:
        def run() -> Catalog:
            catalog = catalog_from_data(data)
            self._check_catalog_credentials(catalog, self.providers)
            previous, self._catalog = self._catalog, catalog
            self._refresh_entities()
            self.audit.append("catalog.loaded", {"tools": sorted(catalog.tools)})
            self._revoke_changed_leases(previous, catalog)
            return catalog

        return self._guard("catalog.load", run)

    def _revoke_changed_leases(self, old: Catalog, new: Catalog) -> None:
        """End the open leases of every tool whose privilege or credential entry changed, or
        that is gone: a reused lease must not keep grants the catalog no longer gives (a
        database role keeps INSERT after the tool became read-only). Revoked downstream and
        audited like any lease end (reason ``catalog_changed``)."""
        changed = {
            name
            for name, spec in old.tools.items()
            if spec.credential is not None
            and (
                (now := new.get(name)) is None
                or now.privilege != spec.privilege
                or now.credential != spec.credential
            )
        }
        if not changed:
            return
        for lease_id in self.store.expired_open_lease_ids(math.inf):
            lease = self.store.get_lease(lease_id)
            if lease is not None and lease.tool in changed:
                self._end_lease(lease_id, LeaseState.REVOKED, "catalog_changed")

    # ------------------------------------------------------------------ tool definition pins
    def admit_tool_definition(
        self, tool: str, definition: Mapping[str, Any], *, by: str = "operator"
    ) -> str:
        """Pin what an upstream server says a catalog tool is (name, description, input
        schema). Gateways refuse calls to a tool whose definition no longer matches."""

        def run() -> str:
            name = check_tool_name(tool)
            if name not in self._catalog:
                raise InvalidRequest(f"tool {name} is not in the catalog", reason="unknown_tool")
            pin_digest = tool_definition_digest(definition)
            previous = self.store.get_tool_pin(name)
            self.store.upsert_tool_pin(
                ToolPin(
                    name, pin_digest, _definition_data(definition), self.clock.now(), _short(by)
                )
            )
            self.state.invalidate("pin", name)
            self.audit.append(
                "tool.admitted",
                {
                    "tool": name,
                    "digest": pin_digest,
                    "previous": previous.digest if previous else None,
                    "by": _short(by),
                },
            )
            return pin_digest

        return self._guard("tool.admit", run)

    def check_tool_definition(self, tool: str, definition: Mapping[str, Any]) -> None:
        """Raise Denied unless ``definition`` is the admitted one for ``tool``.

        Reasons: ``tool_not_admitted`` (never pinned), ``tool_definition_changed``.
        A refusal is audited, with the digest that was seen.
        """
        name = check_tool_name(tool)
        seen = tool_definition_digest(definition)
        pin = self.state.get_pin(name)
        if pin is not None and pin.digest == seen:
            return
        reason = "tool_not_admitted" if pin is None else "tool_definition_changed"
        self.audit.append(
            "tool.refused",
            {"tool": name, "reason": reason, "seen": seen, "pinned": pin.digest if pin else None},
        )
        raise Denied(f"tool {name} is not admitted with this definition", reason=reason)

    def task_catalog(
        self, task_token: str, proof: str, *, binding: tuple[str, str] | None = None
    ) -> Catalog:
        """The catalog entries of the tools in the calling task's mandate, for the task itself
        (a gateway sidecar): task token and a single-use proof over ``TASK_CATALOG_OP``
        and ``{}``. No operator credential is involved."""

        def run() -> Catalog:
            claims = self.check_task_request(
                task_token=task_token, proof=proof, op=TASK_CATALOG_OP, body={}, binding=binding
            )
            mandate = self.get_task(claims.task_id).mandate.tools
            tools = self._catalog.tools
            return Catalog({name: tools[name] for name in sorted(mandate) if name in tools})

        return self._guard("task.catalog", run)

    def check_task_tool_definition(
        self,
        task_token: str,
        proof: str,
        tool: str,
        definition: Mapping[str, Any],
        *,
        binding: tuple[str, str] | None = None,
    ) -> None:
        """``check_tool_definition`` for a tool of the calling task's mandate, asked by the
        task itself: task token and a single-use proof over ``TASK_PIN_CHECK_OP`` and
        ``task_pin_body(tool, definition)``. A tool outside the mandate is ``forbidden``
        (``not_in_mandate``), whether or not it is in the catalog."""

        def run() -> str:
            body = task_pin_body(tool, definition)
            claims = self.check_task_request(
                task_token=task_token, proof=proof, op=TASK_PIN_CHECK_OP, body=body, binding=binding
            )
            name: str = body["tool"]
            if name not in self.get_task(claims.task_id).mandate.tools:
                raise Forbidden("the tool is not in this task's mandate", reason="not_in_mandate")
            return name

        self.check_tool_definition(self._guard("task.pin_check", run), definition)

    def list_tool_pins(self) -> list[ToolPin]:
        return self.store.list_tool_pins()

    def load_policies(self, sources: Sequence[PolicySource]) -> str:
        """Validate and activate an operator policy set; an invalid set is refused whole."""
        names = [s.name for s in sources]
        try:
            version = self.policy.load(sources)
        except RemitError as exc:
            self.audit.append(
                "policy.refused", {"files": names, "error": exc.code, "active": self.policy.version}
            )
            raise
        self.store.save_policy_version(
            PolicyVersionRecord(version, {s.name: s.text for s in sources}, self.clock.now(), True)
        )
        self.audit.append("policy.loaded", {"version": version, "files": names})
        return version

    # ------------------------------------------------------------------ agents and principals
    def register_agent(
        self,
        name: str,
        *,
        owner: str,
        ceiling: Mapping[str, Any],
        description: str = "",
        mode: str = "enforce",
    ) -> Agent:
        def run() -> Agent:
            check_name(name, "agent name")
            if not isinstance(owner, str) or not 0 < len(owner) <= 256 or not owner.isprintable():
                raise InvalidRequest("owner must be a short printable string", reason="bad_owner")
            if not isinstance(description, str) or len(description) > 2000:
                raise InvalidRequest(
                    "description must be at most 2000 characters", reason="bad_description"
                )
            check_json(dict(ceiling), ADMIN_LIMITS, "ceiling")
            try:
                agent_mode = Mode(mode)
            except ValueError:
                raise InvalidRequest("mode must be enforce or shadow", reason="bad_mode") from None
            agent_id = str(SpiffeId.for_agent(self.settings.trust_domain, name))
            now = self.clock.now()
            agent = Agent(
                agent_id=agent_id,
                name=name,
                owner=owner,
                description=description,
                ceiling=ceiling_from_data(ceiling, self._catalog),
                status=AgentStatus.ACTIVE,
                mode=agent_mode,
                created_at=now,
                updated_at=now,
            )
            self.store.insert_agent(agent)
            self._refresh_entities()
            self.audit.append(
                "agent.registered",
                {
                    "agent": agent_id,
                    "owner": owner,
                    "ceiling": agent.ceiling.to_data(),
                    "mode": mode,
                },
            )
            return agent

        return self._guard("agent.register", run, name=_short(name))

    def get_agent(self, agent_id: str) -> Agent:
        agent = self.store.get_agent(agent_id)
        if agent is None:
            raise NotFound("no such agent", reason="unknown_agent")
        return agent

    def list_agents(self) -> list[Agent]:
        return self.store.list_agents()

    def suspend_agent(self, agent_id: str, *, reason: str = "operator") -> Agent:
        return self._set_agent_status(agent_id, AgentStatus.SUSPENDED, reason)

    def resume_agent(self, agent_id: str) -> Agent:
        return self._set_agent_status(agent_id, AgentStatus.ACTIVE, "operator")

    def retire_agent(self, agent_id: str, *, reason: str = "operator") -> Agent:
        return self._set_agent_status(agent_id, AgentStatus.RETIRED, reason)

    def _set_agent_status(self, agent_id: str, status: AgentStatus, reason: str) -> Agent:
        def run() -> Agent:
            agent = self.get_agent(agent_id)
            if agent.status is AgentStatus.RETIRED:
                raise Conflict("a retired agent cannot change status", reason="agent_retired")
            updated = agent.with_status(status, self.clock.now())
            self.store.update_agent(updated)
            self.state.invalidate("agent", agent_id)
            if status is AgentStatus.RETIRED:
                self.store.deactivate_instances(agent_id)
                self.state.invalidate("instance")
            closed: list[str] = []
            if status is not AgentStatus.ACTIVE:
                # The kill switch for one agent: its open tasks end and every task
                # delegated from them (to any agent) is revoked with them.
                now = self.clock.now()
                for task_id in self.store.open_task_ids(agent_id):
                    closed.extend(
                        self.store.end_task_tree(
                            task_id, TaskStatus.REVOKED, f"agent {status.value}", now
                        )
                    )
                self._end_task_leases(closed, f"agent {status.value}")
            self.audit.append(
                f"agent.{status.value}",
                {"agent": agent_id, "reason": _short(reason), "closed": closed},
            )
            return updated

        return self._guard("agent.status", run, agent=_short(agent_id))

    def set_agent_mode(self, agent_id: str, mode: str) -> Agent:
        def run() -> Agent:
            agent = self.get_agent(agent_id)
            try:
                new_mode = Mode(mode)
            except ValueError:
                raise InvalidRequest("mode must be enforce or shadow", reason="bad_mode") from None
            updated = replace(agent, mode=new_mode, updated_at=self.clock.now())
            self.store.update_agent(updated)
            self.state.invalidate("agent", agent_id)
            self.audit.append("agent.mode", {"agent": agent_id, "mode": new_mode.value})
            return updated

        return self._guard("agent.mode", run, agent=_short(agent_id))

    def register_principal(
        self, principal_id: str, *, display_name: str = "", identifiers: Sequence[str] = ()
    ) -> Principal:
        def run() -> Principal:
            pid = check_principal_id(principal_id)
            if len(identifiers) > 64:
                raise InvalidRequest("too many identifiers", reason="bad_principal")
            parsed = []
            for text in identifiers:
                pattern = parse_pattern(text)
                if pattern.is_wildcard():
                    raise InvalidRequest(
                        "a principal's identifiers must be exact", reason="bad_principal"
                    )
                parsed.append(normalize_destination(pattern.kind, pattern.value))
            principal = Principal(pid, _short(display_name or pid), tuple(parsed))
            self.store.upsert_principal(principal)
            self.state.invalidate("principal", pid)
            self.audit.append(
                "principal.registered", {"principal": pid, "identifiers": [str(d) for d in parsed]}
            )
            return principal

        return self._guard("principal.register", run)

    # ------------------------------------------------------------------ join tokens and attestation
    def create_join_token(self, agent_id: str, *, ttl_seconds: int | None = None) -> Secret:
        """A single-use, short-lived join token for one new instance of ``agent_id``."""

        def run() -> Secret:
            agent = self.get_agent(agent_id)
            if agent.status is not AgentStatus.ACTIVE:
                raise Conflict("the agent is not active", reason="agent_inactive")
            ttl = ttl_seconds or self.settings.join_token_ttl_seconds
            if not 0 < ttl <= self.settings.join_token_ttl_seconds:
                raise InvalidRequest("join token TTL is out of range", reason="bad_ttl")
            token = "rjt_" + secrets.token_urlsafe(32)
            now = self.clock.now()
            token_hash = join_token_hash(token)
            self.store.insert_join_token(
                JoinTokenRecord(token_hash, agent_id, now, now + ttl, None, None)
            )
            self.audit.append(
                "join_token.created",
                {"agent": agent_id, "token_ref": token_hash[:16], "expires_at": now + ttl},
            )
            return Secret(token)

        return self._guard("join_token.create", run, agent=_short(agent_id))

    def attestation_challenge(self) -> str:
        nonce = secrets.token_urlsafe(32)
        self.store.insert_nonce(nonce, self.clock.now() + NONCE_TTL)
        return nonce

    def attest(
        self, *, join_token: str, public_jwk: Mapping[str, Any], nonce: str, signature: bytes
    ) -> Attestation:
        """Join token + instance public key + its signature over a server nonce -> identity."""
        token_hash = join_token_hash(join_token) if isinstance(join_token, str) else ""

        def run() -> Attestation:
            if (
                not isinstance(join_token, str)
                or not join_token.startswith("rjt_")
                or len(join_token) > 128
            ):
                raise InvalidGrant("the join token is malformed", reason="malformed_join_token")
            key = load_public_jwk(
                dict(public_jwk) if isinstance(public_jwk, Mapping) else public_jwk
            )
            jkt = jwk_thumbprint(key)
            if not isinstance(nonce, str) or len(nonce) > 128 or not isinstance(signature, bytes):
                raise InvalidRequest("nonce and signature are required", reason="bad_attestation")
            now = self.clock.now()
            if not verify_es256(key, attestation_payload(nonce, jkt), signature):
                raise InvalidGrant(
                    "the attestation signature does not verify", reason="bad_signature"
                )
            if not self.store.consume_nonce(nonce, now):
                raise InvalidGrant(
                    "the attestation nonce is unknown, used or expired", reason="bad_nonce"
                )
            record = self.store.get_join_token(token_hash)
            if record is None:
                raise InvalidGrant("the join token is not valid", reason="unknown_join_token")
            instance_id = new_id("ins")
            if not self.store.consume_join_token(token_hash, now, instance_id):
                reason = "join_token_reused" if record.used_at is not None else "join_token_expired"
                if record.used_at is None and record.expires_at > now:
                    reason = "join_token_reused"  # lost a race with another attestation
                raise InvalidGrant("the join token was used already or has expired", reason=reason)
            agent = self.get_agent(record.agent_id)
            if agent.status is not AgentStatus.ACTIVE:
                raise InvalidGrant("the agent is not active", reason="agent_inactive")
            instance = Instance(instance_id, agent.agent_id, jkt, _public_members(public_jwk), now)
            self.store.insert_instance(instance)
            token, claims = self.tokens.issue_identity(
                agent_id=agent.agent_id,
                instance_id=instance_id,
                jkt=jkt,
                ttl=self.settings.identity_ttl_seconds,
            )
            self.audit.append(
                "instance.attested",
                {
                    "agent": agent.agent_id,
                    "instance": instance_id,
                    "jkt": jkt,
                    "token_ref": token_hash[:16],
                },
            )
            return Attestation(
                instance_id, agent.agent_id, token, claims.expires_at, claims.issued_at
            )

        return self._guard("instance.attest", run, token_ref=token_hash[:16])

    def _verify_identity_call(
        self,
        identity_token: str,
        proof: str,
        op: str,
        body: object,
        binding: tuple[str, str] | None = None,
    ) -> tuple[IdentityClaims, Instance]:
        claims = self.tokens.verify_identity(identity_token)
        instance = self.store.get_instance(claims.instance_id)
        if instance is None or not instance.active or instance.jkt != claims.jkt:
            raise InvalidToken("the instance is not active", reason="instance_inactive")
        agent = self.store.get_agent(claims.agent_id)
        if agent is None or agent.status is not AgentStatus.ACTIVE:
            raise TokenRevoked("the agent is not active", reason="agent_inactive")
        self._check_proof(
            proof, instance=instance, token=identity_token, op=op, body=body, binding=binding
        )
        return claims, instance

    def _check_proof(
        self,
        proof: object,
        *,
        instance: Instance,
        token: str,
        op: str,
        body: object,
        binding: tuple[str, str] | None = None,
    ) -> None:
        """A proof of possession for a non-call operation, single use like every proof."""
        if not isinstance(proof, str) or len(proof) > 4096:
            raise InvalidProof("the proof is malformed", reason="malformed")
        now = self.clock.now()
        max_age = self.pipeline.proof_max_age
        checked = verify_call_proof(
            proof,
            public_key=load_public_jwk(dict(instance.public_jwk)),
            token=token,
            tool=op,
            args_digest=digest(body),
            now=now,
            max_age=max_age,
            htm=binding[0] if binding else None,
            htu=binding[1] if binding else None,
        )
        if not self.store.remember_jti(checked.jti, checked.issued_at + max_age + 10.0, now):
            raise InvalidProof("this proof was used before", reason="replayed")

    def proof_binding(self, op: str) -> tuple[str, str] | None:
        """In-process calls bind proofs to no HTTP method or URL."""
        return None

    def renew_identity(
        self, identity_token: str, proof: str, *, binding: tuple[str, str] | None = None
    ) -> Attestation:
        """A fresh identity token for the same instance (agents rotate before half-life)."""

        def run() -> Attestation:
            claims, instance = self._verify_identity_call(
                identity_token, proof, RENEW_IDENTITY_OP, {}, binding
            )
            token, new = self.tokens.issue_identity(
                agent_id=claims.agent_id,
                instance_id=instance.instance_id,
                jkt=instance.jkt,
                ttl=self.settings.identity_ttl_seconds,
            )
            self.audit.append(
                "identity.renewed", {"agent": claims.agent_id, "instance": instance.instance_id}
            )
            return Attestation(
                instance.instance_id, claims.agent_id, token, new.expires_at, new.issued_at
            )

        return self._guard("identity.renew", run)

    # ------------------------------------------------------------------ tasks
    def open_task(
        self,
        identity_token: str,
        proof: str,
        *,
        principal: str,
        intent: Mapping[str, Any],
        binding: tuple[str, str] | None = None,
    ) -> TaskGrant:
        def run() -> TaskGrant:
            body = {"principal": principal, "intent": intent}
            check_json(body, ADMIN_LIMITS, "task request")
            claims, instance = self._verify_identity_call(
                identity_token, proof, OPEN_TASK_OP, body, binding
            )
            principal_id = check_principal_id(principal)
            if self.store.get_principal(principal_id) is None:
                raise NotFound("the principal is not registered", reason="unknown_principal")
            agent = self.get_agent(claims.agent_id)
            mandate, notes = build_mandate(
                intent, agent=agent, catalog=self._catalog, limits=self.mandate_limits
            )
            now = self.clock.now()
            task = Task(
                task_id=new_id("tsk"),
                agent_id=agent.agent_id,
                instance_id=instance.instance_id,
                principal_id=principal_id,
                parent_id=None,
                mandate=mandate,
                mandate_digest=mandate.digest(),
                status=TaskStatus.OPEN,
                opened_at=now,
                expires_at=now + mandate.ttl_seconds,
                ended_at=None,
                end_reason=None,
                calls_used=0,
                taint=Labels(),
            )
            self.store.insert_task(task)
            ttl = min(float(mandate.ttl_seconds), float(self.settings.task_token_max_ttl_seconds))
            token, _ = self.tokens.issue_task(
                agent_id=agent.agent_id,
                instance_id=instance.instance_id,
                task_id=task.task_id,
                jkt=instance.jkt,
                ttl=ttl,
                mandate_digest=task.mandate_digest,
                authorization_details=mandate.authorization_details(),
            )
            self.audit.append(
                "task.opened",
                {
                    "task": task.task_id,
                    "agent": agent.agent_id,
                    "instance": instance.instance_id,
                    "principal": principal_id,
                    "owner": agent.owner,
                    "mandate": mandate.to_data(),
                    "mandate_digest": task.mandate_digest,
                    "notes": list(notes),
                },
            )
            return TaskGrant(task.task_id, token, now + ttl, mandate, notes)

        return self._guard("task.open", run)

    def delegate(
        self,
        parent_task_token: str,
        parent_proof: str,
        actor_identity_token: str,
        actor_proof: str,
        *,
        narrowing: Mapping[str, Any],
        binding: tuple[str, str] | None = None,
        actor_binding: tuple[str, str] | None = None,
    ) -> TaskGrant:
        """Agent A (holder of the parent task) hands a sub-task to agent B.

        Both sign a proof over ``delegation_body(parent task id, narrowing)`` with
        op ``remit:delegate``: A with its instance key over its task token, B with
        its instance key over its identity token (B's key never leaves B). The
        child mandate is checked to be within the parent's in every dimension
        (``core.delegation``) and within B's ceiling; its budget is carved out of
        the parent's; it starts with the parent's taint; its token carries the
        ``act`` chain (A, and A's own chain above it), built by Remit from
        verified tokens only. Policy then decides the edge itself (Cedar action
        ``delegate``, principal A, resource B; see ``core.policy_pack``): a deny
        or an evaluation error refuses with ``delegation_not_permitted``, whatever
        A's mode, before any budget is reserved.
        """

        def run() -> TaskGrant:
            check_json({"narrowing": narrowing}, ADMIN_LIMITS, "delegation request")
            claims = self.tokens.verify_task(parent_task_token)
            body = delegation_body(claims.task_id, narrowing)
            instance = self.store.get_instance(claims.instance_id)
            if instance is None or not instance.active or instance.jkt != claims.jkt:
                raise InvalidToken("the instance is not active", reason="instance_inactive")
            self._check_proof(
                parent_proof,
                instance=instance,
                token=parent_task_token,
                op=DELEGATE_OP,
                body=body,
                binding=binding,
            )
            now = self.clock.now()
            parent = self.get_task(claims.task_id)
            if parent.effective_status(now) is not TaskStatus.OPEN:
                raise TokenRevoked("the parent task has ended", reason="task_ended")
            if parent.mandate_digest != claims.mandate_digest:
                raise InvalidToken("the token does not match its task", reason="mandate_mismatch")
            if not self.state.ancestors_open(parent, now):
                raise TokenRevoked("a parent task has ended", reason="ancestor_ended")
            parent_agent = self.get_agent(parent.agent_id)
            if parent_agent.status is not AgentStatus.ACTIVE:
                raise TokenRevoked("the agent is not active", reason="agent_inactive")
            actor_claims, actor_instance = self._verify_identity_call(
                actor_identity_token, actor_proof, DELEGATE_OP, body, actor_binding
            )
            actor = self.get_agent(actor_claims.agent_id)
            if actor.agent_id in self._chain_agents(parent):
                raise Denied(
                    "the actor is already in this delegation chain", reason="delegation_cycle"
                )
            mandate = narrow_mandate(
                parent.mandate,
                narrowing,
                parent_depth=parent.depth,
                budget_left=parent.mandate.call_budget - parent.calls_used,
                seconds_left=parent.expires_at - now,
                max_depth=self.settings.max_delegation_depth,
            )
            check_within_ceiling(mandate, actor, self._catalog)
            decision = self.policy.evaluate(
                self._delegation_request(parent, parent_agent, actor, mandate)
            )
            if not decision.allowed:
                # Errors deny too (reasons then include "policy-error"); a delegate
                # forbid marked @approval has no approval path here: it denies.
                raise Denied(
                    f"policy does not permit {parent.agent_id} to delegate to "
                    f"{actor.agent_id}: {explain(decision)}",
                    reason="delegation_not_permitted",
                    policies=list(decision.reasons),
                    policy_version=decision.version,
                )
            if not self.store.reserve_budget(parent.task_id, mandate.call_budget):
                raise Denied("the parent's budget is spent", reason="widens_budget")
            child = Task(
                task_id=new_id("tsk"),
                agent_id=actor.agent_id,
                instance_id=actor_instance.instance_id,
                principal_id=parent.principal_id,
                parent_id=parent.task_id,
                mandate=mandate,
                mandate_digest=mandate.digest(),
                status=TaskStatus.OPEN,
                opened_at=now,
                expires_at=min(now + mandate.ttl_seconds, parent.expires_at),
                ended_at=None,
                end_reason=None,
                calls_used=0,
                taint=parent.taint,
                depth=parent.depth + 1,
            )
            self.store.insert_task(child)
            act: dict[str, Any] = {"sub": parent.agent_id, "instance": parent.instance_id}
            if claims.actor is not None:
                act["act"] = thaw(claims.actor)
            ttl = min(child.expires_at - now, float(self.settings.task_token_max_ttl_seconds))
            token, _ = self.tokens.issue_task(
                agent_id=actor.agent_id,
                instance_id=actor_instance.instance_id,
                task_id=child.task_id,
                jkt=actor_instance.jkt,
                ttl=ttl,
                mandate_digest=child.mandate_digest,
                authorization_details=mandate.authorization_details(),
                actor=act,
            )
            self.audit.append(
                "task.delegated",
                {
                    "task": child.task_id,
                    "parent": parent.task_id,
                    "agent": actor.agent_id,
                    "instance": actor_instance.instance_id,
                    "principal": parent.principal_id,
                    "act": act,
                    "depth": child.depth,
                    "mandate": mandate.to_data(),
                    "mandate_digest": child.mandate_digest,
                    "taint": sorted(parent.taint.flags),
                    "policies": list(decision.reasons),
                    "policy_version": decision.version,
                },
            )
            return TaskGrant(child.task_id, token, now + ttl, mandate, ())

        return self._guard("task.delegate", run)

    @staticmethod
    def _delegation_request(
        parent: Task, parent_agent: Agent, actor: Agent, mandate: Mandate
    ) -> PolicyRequest:
        """The Cedar request for the edge parent agent (A) -> actor (B)."""
        context = {
            "mode": parent_agent.mode.value,
            "parent_task": parent.policy_info(),
            "child_tools": sorted(mandate.tools),
            "child_sensitivity": int(mandate.sensitivity_ceiling),
            "child_budget": mandate.call_budget,
            "depth": parent.depth + 1,
            "same_trust_domain": trust_domain_of(parent.agent_id)
            == trust_domain_of(actor.agent_id),
            "taint_sensitivity": int(parent.taint.sensitivity),
            "taint_flags": sorted(parent.taint.flags),
        }
        return PolicyRequest.delegation(parent.agent_id, actor.agent_id, context)

    def _chain_agents(self, task: Task) -> set[str]:
        agents = {task.agent_id}
        parent_id = task.parent_id
        for _ in range(32):
            if parent_id is None:
                break
            parent = self.store.get_task(parent_id)
            if parent is None:
                break
            agents.add(parent.agent_id)
            parent_id = parent.parent_id
        return agents

    def get_task(self, task_id: str) -> Task:
        task = self.store.get_task(task_id)
        if task is None:
            raise NotFound("no such task", reason="unknown_task")
        return task

    def end_task(
        self, task_token: str, proof: str, *, binding: tuple[str, str] | None = None
    ) -> list[str]:
        """The instance ends its own task; everything derived from it is revoked."""
        return list(self.end_task_report(task_token, proof, binding=binding).closed)

    def end_task_report(
        self, task_token: str, proof: str, *, binding: tuple[str, str] | None = None
    ) -> TaskEnd:
        """``end_task``, also naming the leases still outstanding downstream (BRK-04)."""

        def run() -> TaskEnd:
            claims = self.tokens.verify_task(task_token)
            instance = self.store.get_instance(claims.instance_id)
            if instance is None or instance.jkt != claims.jkt:
                raise InvalidToken("the instance is not active", reason="instance_inactive")
            self._check_proof(
                proof,
                instance=instance,
                token=task_token,
                op=END_TASK_OP,
                body={"task": claims.task_id},
                binding=binding,
            )
            return self._end(
                claims.task_id, TaskStatus.ENDED, "completed", actor=claims.instance_id
            )

        return self._guard("task.end", run)

    def revoke_task(self, task_id: str, *, reason: str = "operator") -> list[str]:
        """An operator ends a task (and its descendants) now."""
        return list(self.revoke_task_report(task_id, reason=reason).closed)

    def revoke_task_report(self, task_id: str, *, reason: str = "operator") -> TaskEnd:
        """``revoke_task``, also naming the leases still outstanding downstream (BRK-04)."""
        return self._guard(
            "task.revoke",
            lambda: self._end(task_id, TaskStatus.REVOKED, _short(reason), "operator"),
        )

    def _end(self, task_id: str, status: TaskStatus, reason: str, actor: str) -> TaskEnd:
        task = self.get_task(task_id)
        ended = self.store.end_task_tree(task.task_id, status, reason, self.clock.now())
        # Calls that took from the budget before the end committed get their audit
        # records first: none is chained after the end, or allowed after it returns.
        self.state.in_flight.drain(ended, timeout=DRAIN_SECONDS)
        self._end_task_leases(ended, f"task {status.value}")
        outstanding = self._outstanding_leases([task.task_id, *ended])
        if task.parent_id is not None and ended:
            # Results that come back to the parent carry the child's taint.
            final = self.store.get_task(task.task_id)
            if final is not None:
                self.store.join_taint(task.parent_id, final.taint)
        self.audit.append(
            f"task.{status.value}",
            {
                "task": task_id,
                "reason": reason,
                "actor": actor,
                "closed": ended,
                "outstanding_leases": len(outstanding),
            },
        )
        return TaskEnd(tuple(ended), outstanding)

    def _outstanding_leases(self, task_ids: Sequence[str]) -> tuple[str, ...]:
        """The leases of ``task_ids`` whose downstream revocation has not succeeded yet."""
        found: dict[str, None] = {}
        for task_id in dict.fromkeys(task_ids):
            for lease in self.store.list_leases(task_id=task_id, state=LeaseState.REVOKING):
                found[lease.lease_id] = None
        return tuple(found)

    def sweep(self) -> list[str]:
        """Record the expiry of tasks whose TTL has run out (they are refused already), and
        reap leases whose TTL has run out; leases of tasks ended here are revoked."""
        now = self.clock.now()
        self.reap_leases()
        self.retry_revocations()
        expired = self.store.expire_tasks(now)
        for task_id in expired:
            self.audit.append("task.expired", {"task": task_id, "reason": "ttl"})
        self._end_task_leases(expired, "task expired")
        # Leases left open by an end whose lease sweep failed (the task ended regardless).
        for lease_id in self.store.orphaned_open_lease_ids():
            self._end_lease(lease_id, LeaseState.REVOKED, "task ended")
        self.store.sweep_jtis(now)
        return expired

    # ------------------------------------------------------------------ leases
    def use_providers(self, registry: ProviderRegistry) -> None:
        """Install the configured credential providers (the composition root does this);
        the catalog must name only configured ones."""
        self._check_catalog_credentials(self._catalog, registry)
        self.providers = registry
        if len(registry):
            self.audit.append("providers.loaded", {"providers": registry.describe()})

    def _check_catalog_credentials(self, catalog: Catalog, registry: ProviderRegistry) -> None:
        for spec in catalog.tools.values():
            credential = spec.credential
            if credential is None:
                continue
            if credential.provider is not None and credential.provider not in registry:
                raise InvalidRequest(
                    f"tool {spec.name}: credential provider {credential.provider!r} is not "
                    "configured",
                    reason="bad_catalog",
                )
            provider = registry.get(credential.provider) if credential.provider else None
            if credential.per_call and provider is not None and provider.kind == "postgres":
                # A per-call lease is revoked when it is handed out: a database role would
                # be dropped before the call could log in with it.
                raise InvalidRequest(
                    f"tool {spec.name}: a postgres credential cannot be per_call",
                    reason="bad_catalog",
                )
            if (
                credential.ttl_seconds is not None
                and credential.ttl_seconds > self.settings.lease_ttl_seconds
            ):
                raise InvalidRequest(
                    f"tool {spec.name}: credential ttl_seconds is longer than "
                    f"lease_ttl_seconds ({self.settings.lease_ttl_seconds})",
                    reason="bad_catalog",
                )

    def _provider_for(self, provider: str, source: str) -> CredentialProvider | None:
        """The configured provider ``provider``; "" is the implicit static provider of the
        sealed secret ``source``."""
        if provider:
            return self.providers.get(provider)
        return StaticSecretProvider(source, source, self._secret_value)

    def _secret_value(self, name: str) -> tuple[Secret, int]:
        record = self.store.get_secret(name)
        if record is None:
            raise NotFound("no such secret", reason="unknown_secret")
        value = self._unseal(record.sealed)
        self.audit.append("secret.revealed", {"name": name, "version": record.version})
        return value, record.version

    def _seal_values(self, lease_id: str, values: Mapping[str, Secret]) -> SealedSecret:
        if not all(isinstance(v, Secret) for v in values.values()):
            raise ProviderUnavailable("a provider returned a bare value", reason="bad_values")
        plain = json.dumps({str(k): v.reveal() for k, v in values.items()})
        return seal(lease_values_name(lease_id), Secret(plain), self.masters.active())

    def _lease_values(self, lease: Lease) -> dict[str, Secret]:
        sealed = self.store.get_lease_values(lease.lease_id)
        if sealed is None:
            raise TokenRevoked("the credential lease holds no value", reason="lease_revoked")
        data = json.loads(self._unseal(sealed).reveal())
        return {str(k): Secret(str(v)) for k, v in data.items()}

    def provider_jwks(self, name: str) -> dict[str, Any]:
        """The public JWKS an internal service verifies a signed-token provider's tokens with."""
        found = self.providers.jwks(name) if isinstance(name, str) else None
        if found is None:
            raise NotFound("no such signed-token provider", reason="unknown_provider")
        return found

    def list_providers(self) -> list[dict[str, Any]]:
        return self.providers.describe()

    def _end_lease(self, lease_id: str, state: LeaseState, reason: str) -> Lease | None:
        """End an open lease (``state``: revoked or expired) and revoke it downstream. A
        failed revocation leaves it ``revoking`` (outstanding), retried by ``sweep``."""
        lease = self.store.end_lease(
            lease_id, LeaseState.REVOKING, reason, self.clock.now(), end_state=state
        )
        if lease is None:
            return None
        return self._attempt_revocation(lease)

    def _attempt_revocation(self, lease: Lease) -> Lease:
        now = self.clock.now()
        attempts = lease.revoke_attempts + 1
        base = {
            "lease": lease.lease_id,
            "task": lease.task_id,
            "secret": lease.secret_name,
            "provider": lease.provider or None,
            "kind": lease.kind,
            "tool": lease.tool,
            "reason": lease.revoke_reason,
            "attempts": attempts,
        }
        try:
            provider = self._provider_for(lease.provider, lease.secret_name)
            if provider is None:
                raise ProviderUnavailable(
                    "the lease's provider is not configured", reason="unknown_provider"
                )
            if lease.handle:
                provider.revoke(lease.handle)
        except Exception as exc:
            failure = _provider_failure(exc, "revoke_failed")
            delay = revoke_backoff(attempts, self.revoke_jitter())
            settled = self.store.settle_revocation(
                lease.lease_id,
                ok=False,
                attempts=attempts,
                next_attempt_at=now + delay,
                error=failure.reason,
            )
            self.audit.append(
                "lease.revoke_failed",
                {**base, "error": failure.code, "why": failure.reason, "retry_at": now + delay},
            )
            _log.warning(
                "lease %s: downstream revocation failed (%s), attempt %d, retry in %.1fs",
                lease.lease_id,
                failure.reason,
                attempts,
                delay,
            )
            return settled or lease
        settled = self.store.settle_revocation(lease.lease_id, ok=True, attempts=attempts)
        final = settled or lease
        self.audit.append(f"lease.{final.state.value}", base)
        return final

    def retry_revocations(self) -> list[Lease]:
        """Retry every outstanding (revoking) lease whose next attempt is due."""
        done: list[Lease] = []
        for lease_id in self.store.due_revocation_ids(self.clock.now()):
            lease = self.store.get_lease(lease_id)
            if lease is not None and lease.state is LeaseState.REVOKING:
                done.append(self._attempt_revocation(lease))
        return done

    def _end_task_leases(self, task_ids: Sequence[str], reason: str) -> list[Lease]:
        """Revoke every open lease of the ``task_ids`` (tasks that have just ended)."""
        if not task_ids:
            return []
        ended: list[Lease] = []
        for lease_id in self.store.open_lease_ids(list(task_ids)):
            lease = self._end_lease(lease_id, LeaseState.REVOKED, reason)
            if lease is not None:
                ended.append(lease)
        return ended

    def reap_leases(self) -> list[Lease]:
        """End open leases whose TTL has run out, as expired (the reaper)."""
        reaped: list[Lease] = []
        for lease_id in self.store.expired_open_lease_ids(self.clock.now()):
            lease = self._end_lease(lease_id, LeaseState.EXPIRED, "ttl")
            if lease is not None:
                reaped.append(lease)
        return reaped

    def list_leases(
        self,
        *,
        task_id: str | None = None,
        state: str | None = None,
        outstanding: bool = False,
        limit: int = 1000,
    ) -> list[Lease]:
        """Leases (never values), oldest first. ``outstanding``: those whose downstream
        revocation has not succeeded yet (state ``revoking``)."""
        if not isinstance(limit, int) or not 0 < limit <= 10_000:
            raise InvalidRequest("limit must be from 1 to 10000", reason="bad_limit")
        try:
            wanted = None if state is None else LeaseState(state)
        except ValueError:
            raise InvalidRequest(
                "state must be open, revoking, revoked or expired", reason="bad_state"
            ) from None
        if task_id is not None and not isinstance(task_id, str):
            raise InvalidRequest("task must be a string", reason="bad_task")
        if outstanding:
            if wanted not in (None, LeaseState.REVOKING):
                return []  # both filters apply: no outstanding lease is in another state
            wanted = LeaseState.REVOKING
        return self.store.list_leases(task_id=task_id, state=wanted, limit=limit)

    def get_lease(self, lease_id: str) -> Lease:
        lease = self.store.get_lease(lease_id) if isinstance(lease_id, str) else None
        if lease is None:
            raise NotFound("no such lease", reason="unknown_lease")
        return lease

    def revoke_lease(self, lease_id: str, *, reason: str = "operator") -> Lease:
        """An operator revokes one lease now (an outstanding one is retried at once)."""

        def run() -> Lease:
            lease = self.get_lease(lease_id)
            if lease.state is LeaseState.REVOKING:
                return self._attempt_revocation(lease)
            ended = self._end_lease(lease.lease_id, LeaseState.REVOKED, _short(reason))
            if ended is None:
                raise Conflict("the lease has ended already", reason="lease_ended")
            return ended

        return self._guard("lease.revoke", run, lease=_short(lease_id, 64))

    def credential_for(self, obligation: Obligation) -> Injection:
        """For a gateway: the headers (``inject_header``) or environment (``inject_env``)
        an obligation stands for.

        Refused unless the lease is open and unexpired (not revoking), a per-call lease is
        unused, its task (and every ancestor) open, its agent active and not stopped, and
        the tool still names that credential. Values leave only in the returned Secrets:
        never in audit records or errors. A per-call lease is revoked once handed out.
        """

        def run() -> Injection:
            if not isinstance(obligation, Obligation) or obligation.kind not in OBLIGATION_KINDS:
                raise InvalidRequest("not a credential obligation", reason="bad_obligation")
            now = self.clock.now()
            lease = self.get_lease(obligation.ref)
            if lease.obligation_kind != obligation.kind:
                raise InvalidRequest(
                    "the obligation does not match its lease", reason="bad_obligation"
                )
            state = lease.effective_state(now)
            if state is LeaseState.EXPIRED:
                raise TokenExpired("the credential lease has expired", reason="lease_expired")
            if state is not LeaseState.OPEN:
                raise TokenRevoked("the credential lease was revoked", reason="lease_revoked")
            if lease.per_call and lease.used_at is not None:
                raise TokenRevoked("the per-call credential was used", reason="lease_used")
            task = self.store.get_task(lease.task_id)
            if (
                task is None
                or task.effective_status(now) is not TaskStatus.OPEN
                or not self.state.ancestors_open(task, now)
            ):
                raise TokenRevoked("the lease's task has ended", reason="lease_task_ended")
            agent = self.store.get_agent(task.agent_id)
            if (
                agent is None
                or agent.status is not AgentStatus.ACTIVE
                or self.monitor.killed_all
                or agent.agent_id in self.monitor.killed_agents
            ):
                raise TokenRevoked("the lease's agent is stopped", reason="lease_agent_stopped")
            spec = self._catalog.get(lease.tool)
            credential = spec.credential if spec is not None else None
            if (
                credential is None
                or credential.source != lease.secret_name
                or (credential.provider or "") != lease.provider
                or credential.obligation_kind != lease.obligation_kind
            ):
                raise TokenRevoked(
                    "the tool no longer names this credential", reason="credential_withdrawn"
                )
            values = self._lease_values(lease)
            if lease.obligation_kind == INJECT_HEADER and credential.header is not None:
                injection = Injection(
                    lease.lease_id,
                    lease.expires_at,
                    headers={credential.header: credential.render_header(values)},
                    issued=tuple(values.values()),
                )
                where: dict[str, Any] = {"header": credential.header}
            else:
                injection = Injection(
                    lease.lease_id,
                    lease.expires_at,
                    env=credential.render_env(values),
                    issued=tuple(values.values()),
                )
                where = {"env": sorted(injection.env)}
            if not self.store.mark_lease_used(lease.lease_id, now):
                raise TokenRevoked("the per-call credential was used", reason="lease_used")
            self.audit.append(
                "lease.used",
                {
                    "lease": lease.lease_id,
                    "task": lease.task_id,
                    "secret": lease.secret_name,
                    "provider": lease.provider or None,
                    "kind": lease.kind,
                    "handle": lease.handle,
                    "tool": lease.tool,
                    "per_call": lease.per_call,
                    **where,
                },
            )
            if lease.per_call:  # single use, then revoked
                self._end_lease(lease.lease_id, LeaseState.REVOKED, "per-call credential used")
            return injection

        ref = obligation.ref if isinstance(obligation, Obligation) else None
        return self._guard("lease.credential", run, lease=_short(ref, 64))

    # ------------------------------------------------------------------ the decision
    def authorize(
        self,
        *,
        task_token: str,
        proof: str,
        tool: str,
        arguments: Mapping[str, Any],
        approval: str | None = None,
        binding: tuple[str, str] | None = None,
    ) -> Decision:
        return self.pipeline.authorize(
            CallRequest(task_token, proof, tool, arguments, approval, binding)
        )

    # ------------------------------------------------------------------ approvals
    def list_approvals(self, *, status: str | None = None, limit: int = 100) -> list[Approval]:
        if status is not None and status not in {s.value for s in ApprovalStatus}:
            raise InvalidRequest(
                "status must be pending, approved, denied or consumed", reason="bad_status"
            )
        if not 0 < limit <= 1000:
            raise InvalidRequest("limit must be from 1 to 1000", reason="bad_limit")
        return self.store.list_approvals(status=status, limit=limit)

    def get_approval(self, approval_id: str) -> Approval:
        found = None
        if isinstance(approval_id, str) and 0 < len(approval_id) <= 128:
            found = self.store.get_approval(approval_id)
        if found is None:
            raise NotFound("no such approval", reason="unknown_approval")
        return found

    def approve(self, approval_id: str, *, by: AdminIdentity, reason: str = "") -> Approval:
        """One approver's consent. The request is approved once ``quorum`` distinct
        approvers have consented; the task's own principal may not approve (reason
        ``self_approval``) unless ``allow_self_approval`` is set."""
        return self._vote(approval_id, by, reason, approve=True)

    def deny(self, approval_id: str, *, by: AdminIdentity, reason: str = "") -> Approval:
        """One approver's refusal ends the request."""
        return self._vote(approval_id, by, reason, approve=False)

    def _vote(self, approval_id: str, by: AdminIdentity, reason: str, *, approve: bool) -> Approval:
        kind = "approved" if approve else "denied"

        def run() -> Approval:
            if not by.has("approver"):
                raise Forbidden("approving needs the approver scope", reason="insufficient_scope")
            approval = self.get_approval(approval_id)
            now = self.clock.now()
            why = check_vote(
                approval,
                approver=by.name,
                now=now,
                allow_self=self.settings.allow_self_approval,
            )
            if why is not None:
                raise Denied(f"this approval cannot be {kind}: {why}", reason=why)
            vote = Vote(by.name, approve, _short(reason, 256), now)
            recorded, status = self.store.vote_approval(approval.approval_id, vote, now)
            if not recorded:
                raise Conflict("the approval changed; look again", reason="approval_changed")
            self.audit.append(
                f"approval.{kind}",
                {
                    "approval": approval.approval_id,
                    "task": approval.task_id,
                    "approver": by.name,
                    "token_id": by.token_id,
                    "reason": vote.reason,
                    "status": status.value if status else None,
                    "quorum": approval.quorum,
                },
            )
            return self.get_approval(approval.approval_id)

        return self._guard(f"approval.{kind}", run, approval=_short(approval_id, 128))

    # ------------------------------------------------------------------ operators
    def create_admin_token(
        self, name: str, *, scopes: Sequence[str], ttl_seconds: int | None = None
    ) -> tuple[str, Secret]:
        """A new operator API token. The secret is returned once; only its hash is kept."""

        def run() -> tuple[str, Secret]:
            if not isinstance(name, str) or not 0 < len(name) <= 128 or not name.isprintable():
                raise InvalidRequest("name must be a short printable string", reason="bad_name")
            wanted = tuple(dict.fromkeys(scopes))
            if not wanted or any(s not in ADMIN_SCOPES for s in wanted):
                raise InvalidRequest(
                    f"scopes must be a non-empty subset of {', '.join(ADMIN_SCOPES)}",
                    reason="bad_scope",
                )
            if ttl_seconds is not None and not 0 < ttl_seconds <= 366 * 86400:
                raise InvalidRequest("ttl must be positive and at most a year", reason="bad_ttl")
            now = self.clock.now()
            token = "rat_" + secrets.token_urlsafe(32)
            token_id = new_id("adm")
            self.store.insert_admin_token(
                AdminTokenRecord(
                    token_id,
                    join_token_hash(token),
                    name,
                    wanted,
                    now,
                    now + ttl_seconds if ttl_seconds else None,
                    None,
                )
            )
            self.audit.append(
                "admin_token.created", {"token_id": token_id, "name": name, "scopes": list(wanted)}
            )
            return token_id, Secret(token)

        return self._guard("admin_token.create", run)

    def revoke_admin_token(self, token_id: str) -> None:
        def run() -> None:
            if not self.store.revoke_admin_token(token_id, self.clock.now()):
                raise NotFound("no such active admin token", reason="unknown_admin_token")
            self.audit.append("admin_token.revoked", {"token_id": token_id})

        self._guard("admin_token.revoke", run)

    def list_admin_tokens(self) -> list[AdminTokenRecord]:
        return self.store.list_admin_tokens()

    def authenticate_admin(self, token: object) -> AdminIdentity:
        """Raise InvalidToken unless ``token`` is a live operator token."""
        if not isinstance(token, str) or not token.startswith("rat_") or len(token) > 128:
            raise InvalidToken("the admin token is not valid", reason="bad_admin_token")
        record = self.store.get_admin_token_by_hash(join_token_hash(token))
        now = self.clock.now()
        if record is None:
            raise InvalidToken("the admin token is not valid", reason="unknown_admin_token")
        if record.revoked_at is not None:
            raise TokenRevoked("the admin token was revoked", reason="admin_token_revoked")
        if record.expires_at is not None and now >= record.expires_at:
            raise TokenExpired("the admin token has expired", reason="admin_token_expired")
        return AdminIdentity(record.token_id, record.name, frozenset(record.scopes))

    # ------------------------------------------------------------------ sealed secrets
    def put_secret(self, name: str, value: Secret) -> SecretInfo:
        """Seal and store ``value`` as the next version of ``name``."""

        def run() -> SecretInfo:
            check_name(name, "secret name")
            if not isinstance(value, Secret):
                raise InvalidRequest("a secret value must be a Secret", reason="bad_secret_value")
            if not value.reveal():
                raise InvalidRequest("a secret value must not be empty", reason="empty_secret")
            current = self.store.get_secret(name)
            version = 1 if current is None else current.version + 1
            sealed = seal(name, value, self.masters.active(), version=version)
            record = StoredSecret(sealed, self.clock.now(), None)
            self.store.put_secret(record)
            self.audit.append(
                "secret.put",
                {"name": name, "version": version, "master_kid": sealed.master_kid},
            )
            # A rotation elsewhere may have retired the key just used: re-wrap if so.
            kid = self._settle_secret(name) or sealed.master_kid
            return replace(_secret_info(record), master_kid=kid)

        return self._guard("secret.put", run, name=_short(name, 64))

    def list_secrets(self) -> list[SecretInfo]:
        """Names, versions and dates of the stored secrets (never values)."""
        infos = [_secret_info(r) for r in self.store.list_secrets()]
        self.audit.append("secret.listed", {"count": len(infos)})
        return infos

    def reveal_secret(self, name: str) -> Secret:
        """A secret's value, for lease providers inside Remit. Not exposed over HTTP."""

        def run() -> Secret:
            record = self.store.get_secret(name) if isinstance(name, str) else None
            if record is None:
                raise NotFound("no such secret", reason="unknown_secret")
            value = self._unseal(record.sealed)
            self.audit.append("secret.revealed", {"name": name, "version": record.version})
            return value

        return self._guard("secret.reveal", run, name=_short(name, 64))

    def _unseal(self, sealed: SealedSecret) -> Secret:
        master = self.masters.find(sealed.master_kid)
        return unseal(sealed, [master] if master is not None else [])

    # Master keys change while other processes seal (a rotation by ``remit secrets
    # rotate-master`` next to a running server, or by another replica). Every write of a
    # wrapped data key is followed, after its commit, by a check that the master key it
    # used can still be found by a fresh process (``MasterKeyStore.durable``); if not, the
    # row is re-wrapped at once to the active key with the old key still held in memory
    # (``_settle``). A rotation deletes a retained key file only after a scan found nothing
    # wrapped by it, and then scans again (``_retire_master_keys``). Together these close
    # the race without a grace period: see ``_retire_master_keys``.
    def _settle(
        self,
        what: str,
        load: Callable[[], SealedSecret | None],
        save: Callable[[SealedSecret, str], bool],
    ) -> str | None:
        """Keep one committed row openable by the keys on disk; the kid it ends under."""
        for _ in range(_SETTLE_ROUNDS):
            sealed = load()
            if sealed is None:
                return None
            kid = sealed.master_kid
            if self.masters.durable(kid):
                return kid
            held = self.masters.find(kid)
            if held is None:
                raise SealError(
                    f"a secret is sealed by master key {kid}, which is not available",
                    reason="master_key_missing",
                    kid=kid,
                )
            target = self.masters.active()
            if save(rewrap(sealed, [held], target), kid):
                self.audit.append(
                    "master_key.settled", {"what": what, "old_kid": kid, "new_kid": target.kid}
                )
        raise StoreUnavailable(
            "the master key kept changing while a secret was sealed; try again",
            reason="master_key_unsettled",
        )

    def _settle_secret(self, name: str) -> str | None:
        def load() -> SealedSecret | None:
            record = self.store.get_secret(name)
            return record.sealed if record is not None else None

        def save(moved: SealedSecret, old: str) -> bool:
            return self.store.rewrap_secret(moved, old, self.clock.now())

        return self._settle("secret", load, save)

    def _settle_lease_values(self, lease_id: str) -> None:
        self._settle(
            "lease",
            lambda: self.store.get_lease_values(lease_id),
            lambda moved, old: self.store.rewrap_lease_values(lease_id, moved, old),
        )

    def _sealed_rows(self) -> list[tuple[str, SealedSecret]]:
        """Every wrapped data key at rest: ("secret", ...) and ("lease", lease id) rows."""
        rows = [("secret", r.sealed) for r in self.store.list_secrets()]
        rows += [(lease_id, held) for lease_id, held in self.store.list_lease_values()]
        return rows

    def _settle_all(self) -> None:
        """``_settle`` every row whose master key a fresh process could not find."""
        durable: dict[str, bool] = {}
        for ref, sealed in self._sealed_rows():
            kid = sealed.master_kid
            if kid not in durable:
                durable[kid] = self.masters.durable(kid)
            if durable[kid]:
                continue
            try:
                if ref == "secret":
                    self._settle_secret(sealed.name)
                else:
                    self._settle_lease_values(ref)
            except SealError:
                _log.warning("a row sealed by master key %s cannot be re-wrapped here", kid)

    def _rewrap_pass(self, target: MasterKey) -> _RewrapPass:
        """Re-wrap every data key not wrapped by ``target`` (values are not touched)."""
        secrets_done = leases_done = unreadable = 0
        missing: set[str] = set()
        for ref, sealed in self._sealed_rows():
            kid = sealed.master_kid
            if kid == target.kid:
                continue
            master = self.masters.find(kid)
            if master is None:
                missing.add(kid)
                continue
            try:
                moved = rewrap(sealed, [master], target)
            except SealError:
                unreadable += 1
                continue
            if ref == "secret":
                secrets_done += self.store.rewrap_secret(moved, kid, self.clock.now())
            else:
                leases_done += self.store.rewrap_lease_values(ref, moved, kid)
        return _RewrapPass(secrets_done, leases_done, frozenset(missing), unreadable)

    def _in_use(self) -> set[str]:
        return {sealed.master_kid for _, sealed in self._sealed_rows()}

    def _retire_master_keys(self) -> tuple[str, ...]:
        """Delete the retained master key files nothing is wrapped by any more.

        Why no row can be stranded: another process P seals a row with key K (which it
        holds in memory), commits it, and only then checks that K is still on disk
        (``_settle``). Here, K's file is deleted only if the scan found no row under K, and
        after the deletion every row is scanned again: a row still under a retired K is
        re-wrapped to the active key with K from memory (``retire_unused`` loads K first).
        If P's commit came before that second scan, the scan sees it; if after, P's check
        comes after the deletion and P re-wraps the row itself. A grace period would only
        narrow the window, not close it; this needs no clock and costs one extra scan.
        """
        retired = tuple(self.masters.retire_unused(self._in_use()))
        self._settle_all()
        return retired

    def _still_needed(self, active_kid: str) -> tuple[str, ...]:
        return tuple(sorted(self._in_use() - {active_kid}))

    def rotate_master_key(self) -> MasterRotation:
        """A new master key; every data key re-wrapped in one pass; the old key retired.

        Values and their ciphertexts are not touched. The old key is kept on disk until
        no secret is wrapped by it, so a failure part way leaves every secret readable,
        and running this again (or ``rewrap_secrets``) finishes the job. Safe while other
        processes (a running server, other replicas) seal with the old key: see
        ``_retire_master_keys``. Refused when the master key comes from the environment.
        """

        def run() -> MasterRotation:
            with self._secrets_lock:
                old, new = self.masters.rotate()
                self.audit.append("master_key.rotating", {"old_kid": old.kid, "new_kid": new.kid})
                done = self._rewrap_pass(new)
                retired = self._retire_master_keys()
                still = self._still_needed(new.kid)
                rotation = MasterRotation(
                    old.kid, new.kid, done.secrets, retired, done.lease_values, still
                )
                self.audit.append("master_key.rotated", rotation.to_data())
                return rotation

        return self._guard("master_key.rotate", run)

    def rewrap_secrets(self) -> MasterRewrap:
        """Re-wrap every data key (secrets and open leases' values) that is not wrapped by
        the active master key, then delete retained key files nothing needs, and report
        which other keys are still needed: none after a complete rewrap, when
        ``REMIT_MASTER_KEY_PREVIOUS`` can be dropped (docs/secrets.md)."""

        def run() -> MasterRewrap:
            with self._secrets_lock:
                active = self.masters.active()
                self.audit.append("master_key.rewrapping", {"active_kid": active.kid})
                done = self._rewrap_pass(active)
                retired = self._retire_master_keys()
                still = self._still_needed(active.kid)
                report = MasterRewrap(
                    active_kid=active.kid,
                    rewrapped=done.secrets,
                    lease_values=done.lease_values,
                    still_needed=still,
                    missing=tuple(k for k in still if self.masters.find(k) is None),
                    unreadable=done.unreadable,
                    retired=retired,
                    previous=self.masters.previous_kids,
                )
                self.audit.append("master_key.rewrapped", report.to_data())
                return report

        return self._guard("master_key.rewrap", run)

    # ------------------------------------------------------------------ policy versions
    def list_policy_versions(self) -> list[PolicyVersionRecord]:
        return self.store.list_policy_versions()

    def activate_policy_version(self, version: str) -> str:
        """Make a stored version active again (a rollback), validated like any load."""
        record = self.store.get_policy_version(version)
        if record is None:
            raise NotFound("no such policy version", reason="unknown_policy_version")
        return self.load_policies([PolicySource(n, t) for n, t in sorted(record.sources.items())])

    def check_task_request(
        self,
        *,
        task_token: str,
        proof: str,
        op: str,
        body: Any,
        binding: tuple[str, str] | None = None,
        consume: bool = True,
    ) -> TaskClaims:
        """Authenticate a task-token request that is not itself a decided tool call (e.g. an
        MCP ``tools/list`` at a gateway): token, proof over ``op`` and ``body``, open task."""
        return self.pipeline.check_task_request(
            task_token=task_token, proof=proof, op=op, body=body, binding=binding, consume=consume
        )

    def effective_permissions(self, agent_id: str, task_id: str | None = None) -> list[Permission]:
        """What the agent (or, with ``task_id``, that task of it) can really do under the
        active policy version and catalog; see ``remit.core.analysis``."""
        agent = self.get_agent(agent_id)
        mandate: Mandate | None = None
        if task_id is not None:
            task = self.get_task(task_id)
            if task.agent_id != agent.agent_id:
                raise NotFound("no such task for this agent", reason="unknown_task")
            mandate = task.mandate
        return effective_permissions(self.policy, self._catalog, agent, mandate=mandate)

    # ------------------------------------------------------------------ keys and emergency stops
    def rotate_signing_keys(self) -> str:
        """Start signing with a new key; older keys verify until their tokens have expired."""
        keyset = self.keys.rotate(self.settings.key_overlap_seconds)
        self.audit.append(
            "keys.rotated", {"active_kid": keyset.active.kid, "kids": [k.kid for k in keyset]}
        )
        return keyset.active.kid

    def set_kill_switch(self, engaged: bool, *, agent_id: str | None = None) -> None:
        """Deny every call (or every call of one agent) at the monitor step, at once."""
        if agent_id is None:
            self.monitor.killed_all = engaged
        elif engaged:
            self.monitor.killed_agents.add(self.get_agent(agent_id).agent_id)
        else:
            self.monitor.killed_agents.discard(agent_id)
        self.audit.append("kill_switch", {"engaged": engaged, "agent": agent_id or "*"})
        if engaged:
            # An emergency stop also takes back every credential handed out for the stopped work.
            # Every one of them, unbounded: all open leases, or those of the agent's tasks.
            if agent_id is None:
                lease_ids = self.store.expired_open_lease_ids(math.inf)
            else:
                stopped = self.get_agent(agent_id).agent_id
                lease_ids = self.store.open_lease_ids(self.store.open_task_ids(stopped))
            for lease_id in lease_ids:
                self._end_lease(lease_id, LeaseState.REVOKED, "kill switch")

    # ------------------------------------------------------------------ audit
    def query_audit(self, query: AuditQuery) -> list[AuditRecord]:
        if not 0 < query.limit <= 10_000:
            raise InvalidRequest("limit must be from 1 to 10000", reason="bad_limit")
        return self.store.query_audit(query)

    def list_alerts(
        self,
        *,
        since: float | None = None,
        agent: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Anomaly alerts, newest first (docs/alerts.md); ``kind`` is a finding kind."""
        return self.alerts.list(since=since, agent=agent, kind=kind, limit=limit)

    # ------------------------------------------------------------------ NHI inventory
    def import_inventory(
        self, items: Sequence[InventoryItem], source_digest: str, *, by: str = "local"
    ) -> InventoryImport:
        """Store ``items`` as the NHI inventory, replacing the previous import whole
        (docs/compliance.md). Audited as ``inventory.imported``, with counts only."""
        checked = check_import(items, source_digest)
        record = InventoryImport(
            new_id("inv"), source_digest, by[:256], self.clock.now(), len(checked)
        )
        self.store.replace_inventory(record, checked)
        self.audit.append(
            "inventory.imported",
            {
                "import": record.import_id,
                "source_sha256": source_digest,
                "by": record.imported_by,
                "credentials": len(checked),
                "without_owner": sum(1 for i in checked if i.owner is None),
                "used_by": sum(len(i.used_by) for i in checked),
            },
        )
        return record

    def stored_inventory(self) -> tuple[InventoryImport, tuple[InventoryItem, ...]] | None:
        """The imported NHI inventory, if one was imported."""
        return self.store.get_inventory()

    def check_ready(self) -> None:
        """Raise StoreUnavailable or AuditUnavailable unless the store answers and the audit
        log can be written.

        After a failed audit write, readiness probes with a real record (``audit.resumed``):
        a replica taken out of rotation gets no traffic that could show it has recovered.
        """
        self.store.audit_head()
        self.audit.flush()
        if self.audit.write_failed:
            self.audit.append("audit.resumed", {})
            self.audit.flush()

    def verify_audit(self) -> ChainReport:
        self.audit.flush()
        return self.audit.verify()

    def jwks(self) -> dict[str, Any]:
        return self.tokens.jwks()


def delegation_body(parent_task_id: str, narrowing: Mapping[str, Any]) -> dict[str, Any]:
    """What both delegation proofs sign (as its digest): the parent task and the narrowing."""
    return {"task": parent_task_id, "narrowing": dict(narrowing)}


def task_pin_body(tool: str, definition: Mapping[str, Any]) -> dict[str, Any]:
    """What a task's proof for a pin check is over: the tool and its definition's digest."""
    return {"tool": check_tool_name(tool), "digest": tool_definition_digest(definition)}


def _definition_data(definition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": definition.get("name"),
        "description": definition.get("description") or "",
        "input_schema": dict(definition.get("input_schema") or {}),
    }


def _short(text: object, limit: int = 200) -> str:
    value = text if isinstance(text, str) else repr(type(text))
    return value[:limit].encode("ascii", "backslashreplace").decode("ascii")


def _public_members(jwk: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(jwk[k]) for k in ("kty", "crv", "x", "y")}
