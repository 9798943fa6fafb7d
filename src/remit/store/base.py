"""The store interface. Every implementation passes tests/store/test_conformance.py.

Methods that must be atomic say so; implementations do them in one
transaction. All methods raise StoreUnavailable when the backing store fails,
so callers can fail closed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from remit.core.approvals import Approval, ApprovalStatus, Vote
from remit.core.audit import AuditRecord, Checkpoint
from remit.core.identity import Agent, Instance, Principal
from remit.core.inventory import InventoryImport, InventoryItem
from remit.core.labels import Labels
from remit.core.leases import Lease, LeaseState
from remit.core.sealing import SealedSecret
from remit.core.tasks import Task, TaskStatus


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    token_hash: str
    agent_id: str
    created_at: float
    expires_at: float
    used_at: float | None
    used_by: str | None


@dataclass(frozen=True, slots=True)
class PolicyVersionRecord:
    version: str
    sources: dict[str, str]  # file name -> text
    loaded_at: float
    active: bool


@dataclass(frozen=True, slots=True)
class AdminTokenRecord:
    token_id: str
    token_hash: str
    name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters over audit records; every given filter must match."""

    kinds: tuple[str, ...] = ()
    agent: str | None = None
    task: str | None = None
    principal: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    after_seq: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class ToolPin:
    """An admitted upstream tool definition."""

    tool: str
    digest: str
    definition: dict[str, Any]
    admitted_at: float
    admitted_by: str


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """A sealed secret as stored: the current version of one name."""

    sealed: SealedSecret
    created_at: float  # when this version was put
    rotated_at: float | None  # when its data key was last re-wrapped

    @property
    def name(self) -> str:
        return self.sealed.name

    @property
    def version(self) -> int:
        return self.sealed.version


class Store(Protocol):
    # --- lifecycle
    def migrate(self) -> int: ...
    def close(self) -> None: ...

    # --- agents and principals
    def insert_agent(self, agent: Agent) -> None: ...  # Conflict if the id exists
    def update_agent(self, agent: Agent) -> None: ...
    def get_agent(self, agent_id: str) -> Agent | None: ...
    def list_agents(self) -> list[Agent]: ...
    def upsert_principal(self, principal: Principal) -> None: ...
    def get_principal(self, principal_id: str) -> Principal | None: ...

    # --- join tokens and attestation nonces (single use, atomic)
    def insert_join_token(self, record: JoinTokenRecord) -> None: ...
    def get_join_token(self, token_hash: str) -> JoinTokenRecord | None: ...
    def consume_join_token(self, token_hash: str, now: float, used_by: str) -> bool: ...
    def insert_nonce(self, nonce: str, expires_at: float) -> None: ...
    def consume_nonce(self, nonce: str, now: float) -> bool: ...

    # --- instances
    def insert_instance(
        self, instance: Instance
    ) -> None: ...  # Conflict if the key is bound already
    def get_instance(self, instance_id: str) -> Instance | None: ...
    def deactivate_instances(self, agent_id: str) -> int: ...

    # --- tasks
    def insert_task(self, task: Task) -> None: ...
    def get_task(self, task_id: str) -> Task | None: ...
    def end_task_tree(
        self, task_id: str, status: TaskStatus, reason: str, now: float
    ) -> list[str]: ...
    def expire_tasks(self, now: float) -> list[str]: ...
    def reserve_budget(self, task_id: str, calls: int) -> bool: ...  # atomic
    def join_taint(self, task_id: str, taint: Labels) -> None: ...  # atomic join
    def open_task_ids(self, agent_id: str) -> list[str]: ...
    def consume_call(
        self, task_id: str, taint: Labels
    ) -> bool: ...  # atomic budget check and taint join
    def remember_jti(self, jti: str, expires_at: float, now: float) -> bool: ...  # False if seen

    # --- audit
    def append_audit(self, records: Sequence[AuditRecord]) -> None: ...
    def audit_head(self) -> AuditRecord | None: ...
    def iter_audit(self, after_seq: int = 0) -> Iterator[AuditRecord]: ...
    def query_audit(self, query: AuditQuery) -> list[AuditRecord]: ...
    def insert_checkpoint(self, checkpoint: Checkpoint) -> None: ...
    def list_checkpoints(self) -> list[Checkpoint]: ...

    # --- admin tokens
    def insert_admin_token(self, record: AdminTokenRecord) -> None: ...
    def get_admin_token_by_hash(self, token_hash: str) -> AdminTokenRecord | None: ...
    def list_admin_tokens(self) -> list[AdminTokenRecord]: ...
    def revoke_admin_token(self, token_id: str, now: float) -> bool: ...

    # --- approvals (votes distinct per approver; consumption a conditional update)
    def insert_approval(self, approval: Approval) -> None: ...
    def get_approval(self, approval_id: str) -> Approval | None: ...
    def find_open_approval(self, binding: str, now: float) -> Approval | None: ...
    def list_approvals(self, *, status: str | None = None, limit: int = 100) -> list[Approval]: ...
    def vote_approval(
        self, approval_id: str, vote: Vote, now: float
    ) -> tuple[bool, ApprovalStatus | None]: ...  # atomic
    def consume_approval(self, approval_id: str, binding: str, now: float) -> bool: ...  # atomic

    # --- tool definition pins
    def upsert_tool_pin(self, pin: ToolPin) -> None: ...
    def get_tool_pin(self, tool: str) -> ToolPin | None: ...
    def list_tool_pins(self) -> list[ToolPin]: ...

    # --- sealed secrets (values never stored in the clear; see remit.core.sealing)
    def put_secret(self, record: StoredSecret) -> None: ...  # Conflict unless version is next
    def get_secret(self, name: str) -> StoredSecret | None: ...
    def list_secrets(self) -> list[StoredSecret]: ...
    def rewrap_secret(
        self, sealed: SealedSecret, old_kid: str, now: float
    ) -> bool: ...  # atomic: only if the row is still that version under old_kid

    # --- leases (ending one is a conditional update: only an open lease ends, once)
    def insert_lease(self, lease: Lease, values: SealedSecret | None = None) -> None: ...
    def get_lease(self, lease_id: str) -> Lease | None: ...
    def get_lease_values(self, lease_id: str) -> SealedSecret | None: ...  # None once ended
    def list_lease_values(self) -> list[tuple[str, SealedSecret]]: ...
    def rewrap_lease_values(self, lease_id: str, sealed: SealedSecret, old_kid: str) -> bool: ...
    def list_leases(
        self, *, task_id: str | None = None, state: LeaseState | None = None, limit: int = 1000
    ) -> list[Lease]: ...
    def find_open_lease(self, task_id: str, secret_name: str, tool: str) -> Lease | None: ...
    def mark_lease_used(self, lease_id: str, now: float) -> bool: ...  # atomic; per-call: once
    def end_lease(
        self,
        lease_id: str,
        state: LeaseState,
        reason: str,
        now: float,
        *,
        end_state: LeaseState | None = None,
    ) -> Lease | None: ...  # atomic: only an open lease; deletes its sealed values
    def settle_revocation(
        self,
        lease_id: str,
        *,
        ok: bool,
        attempts: int,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> Lease | None: ...  # a revoking lease: to its end state, or the retry recorded
    def due_revocation_ids(self, now: float, limit: int = 1000) -> list[str]: ...
    def open_lease_ids(self, task_ids: Sequence[str]) -> list[str]: ...
    def expired_open_lease_ids(self, now: float) -> list[str]: ...

    # --- policy versions
    def save_policy_version(self, record: PolicyVersionRecord) -> None: ...
    def active_policy_version(self) -> PolicyVersionRecord | None: ...
    def list_policy_versions(self) -> list[PolicyVersionRecord]: ...
    def get_policy_version(self, version: str) -> PolicyVersionRecord | None: ...

    # --- the imported NHI inventory (one at a time: an import replaces the previous one)
    def replace_inventory(
        self, record: InventoryImport, items: Sequence[InventoryItem]
    ) -> None: ...  # atomic: the old import and its items go, the new ones come
    def get_inventory(self) -> tuple[InventoryImport, tuple[InventoryItem, ...]] | None: ...
