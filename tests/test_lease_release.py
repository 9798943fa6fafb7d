"""Leases that never dangle: a lease issued in step 7 for a call that is then refused (a
replayed proof, a budget spent meanwhile by a concurrent call, an audit write that fails)
is released at once, revoked downstream and audited with a ``call_refused`` reason. A
lease the call merely reused (a task's shared static lease) is never revoked by someone
else's refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import yaml

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.core.audit import AuditRecord
from remit.core.catalog import ToolSpec
from remit.core.labels import Labels
from remit.core.leases import LeaseState
from remit.core.pipeline import LeaseResolver, LeaseStep, Mode, Obligation
from remit.core.secrets import Secret
from remit.core.tasks import Task
from remit.errors import AuditUnavailable, InvalidProof, TokenRevoked
from remit.providers.base import IssuedCredential, IssueRequest
from remit.providers.registry import ProviderRegistry, build_registry
from remit.service import Remit

from .conftest import CATALOG, CEILING, open_task

CANARY = "canary-91c4-RELEASE-NEVER-PRINT"

TOOLS = """
  - name: billing/charge
    privilege: write
    labels: [internal]
    credential: {secret: billing.key, header: Authorization, format: "Bearer {value}"}
  - name: ledger/post
    privilege: write
    labels: [internal]
    credential: {provider: ledger, header: Authorization, format: "Bearer {value}", value: token}
  - name: vault/once
    privilege: read
    labels: [internal]
    credential: {provider: vault, header: X-Vault, value: token, per_call: true}
"""
TOOL_NAMES = ["billing/charge", "ledger/post", "vault/once"]


class VaultProvider:
    """A downstream with real state: an issued handle is live until it is revoked."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.count = 0

    @property
    def kind(self) -> str:
        return "vault"

    def issue(self, request: IssueRequest) -> IssuedCredential:
        self.count += 1
        handle = f"v{self.count}"
        self.live.add(handle)
        return IssuedCredential(handle, {"token": Secret(f"{CANARY}-{self.count}")})

    def revoke(self, handle: str) -> None:
        self.live.discard(handle)


@pytest.fixture
def vault() -> VaultProvider:
    return VaultProvider()


@pytest.fixture
def rremit(remit: Remit, vault: VaultProvider) -> Remit:
    built = build_registry(
        [
            {
                "name": "ledger",
                "kind": "signed-token",
                "audience": "https://ledger.internal",
                "ttl_seconds": 60,
            }
        ],
        key_dir=remit.settings.key_dir,
        issuer=remit.settings.issuer,
        lookup_secret=remit._secret_value,
        reveal_secret=remit.reveal_secret,
    )
    ledger = built.get("ledger")
    assert ledger is not None
    remit.use_providers(ProviderRegistry({"ledger": ledger, "vault": vault}))
    remit.load_catalog(yaml.safe_load(CATALOG + TOOLS))
    remit.put_secret("billing.key", Secret(CANARY))
    return remit


@pytest.fixture
def session(rremit: Remit, clock: ManualClock) -> AgentSession:
    ceiling = dict(CEILING, tools=[*CEILING["tools"], *TOOL_NAMES])
    agent = rremit.register_agent("release-bot", owner="sam@acme.example", ceiling=ceiling)
    return AgentSession.attest(rremit, rremit.create_join_token(agent.agent_id), clock=clock)


def _task(session: AgentSession, **intent: Any) -> TaskSession:
    return open_task(session, tools=[*TOOL_NAMES, "docs/read"], **intent)


def _open(remit: Remit, task: TaskSession) -> list[str]:
    return [x.lease_id for x in remit.list_leases(task_id=task.task_id, state="open")]


def _audit(remit: Remit) -> list[tuple[str, dict[str, Any]]]:
    remit.audit.flush()
    return [(r.kind, dict(r.data)) for r in remit.store.iter_audit()]


def _authorize_twice_with_one_proof(remit: Remit, task: TaskSession, tool: str) -> str:
    """The first use of a proof is allowed (its lease id returned), the replay refused."""
    args = {"amount": 5}
    proof = task.agent.proof(task.token, tool, args)
    first = remit.authorize(task_token=task.token, proof=proof, tool=tool, arguments=args)
    assert first.allowed, first.explain()
    with pytest.raises(InvalidProof) as info:
        remit.authorize(task_token=task.token, proof=proof, tool=tool, arguments=args)
    assert info.value.reason == "replayed"
    (obligation,) = first.obligations
    return obligation.ref


class ConcurrentSpender:
    """Step 7 as usual, then another replica's call takes the task's last budget before
    this call's own jti/budget transaction: the race that ends in ``budget-exhausted``.
    The store, the leases and the provider are the real ones."""

    def __init__(self, remit: Remit, inner: LeaseResolver) -> None:
        self.remit = remit
        self.inner = inner
        self.spent = 0

    def obligations(self, task: Task, spec: ToolSpec, *, call_id: str, mode: Mode) -> LeaseStep:
        step = self.inner.obligations(task, spec, call_id=call_id, mode=mode)
        while True:
            self.spent += 1
            _, consumed = self.remit.store.record_call(
                task_id=task.task_id,
                jti=f"other-replica-{call_id}-{self.spent}",
                jti_expires_at=self.remit.clock.now() + 60,
                consume=True,
                taint=Labels(),
            )
            if not consumed:
                return step

    def release(self, step: LeaseStep, reason: str) -> None:
        self.inner.release(step, reason)


@pytest.fixture
def spender(rremit: Remit, monkeypatch: pytest.MonkeyPatch) -> Iterator[ConcurrentSpender]:
    spender = ConcurrentSpender(rremit, rremit.pipeline.leases)
    monkeypatch.setattr(rremit.pipeline, "leases", spender)
    yield spender


# ---------------------------------------------------------------------- replayed proof


@pytest.mark.parametrize("tool", ["ledger/post", "vault/once"])
def test_a_replayed_proof_leaves_no_per_call_lease_open(
    rremit: Remit, session: AgentSession, vault: VaultProvider, tool: str
) -> None:
    task = _task(session)
    first = _authorize_twice_with_one_proof(rremit, task, tool)
    # The allowed call's own lease is untouched; the refused call's lease was released.
    assert _open(rremit, task) == [first]
    leases = rremit.list_leases(task_id=task.task_id)
    assert len(leases) == 2
    refused = next(x for x in leases if x.lease_id != first)
    assert refused.state is LeaseState.REVOKED
    assert refused.revoke_reason == "call_refused:replayed"
    assert rremit.store.get_lease_values(refused.lease_id) is None  # values dropped
    if tool == "vault/once":
        assert vault.live == {"v1"}  # revoked downstream too
    revoked = [d for k, d in _audit(rremit) if k == "lease.revoked"]
    assert [d["lease"] for d in revoked] == [refused.lease_id]
    assert revoked[0]["reason"] == "call_refused:replayed"
    # The credential of the refused call cannot be fetched.
    with pytest.raises(TokenRevoked):
        rremit.credential_for(Obligation("inject_header", refused.lease_id))
    # The allowed call's credential still works.
    assert rremit.credential_for(Obligation("inject_header", first)).headers


def test_a_replayed_proof_never_revokes_the_reused_static_lease(
    rremit: Remit, session: AgentSession
) -> None:
    task = _task(session)
    shared = _authorize_twice_with_one_proof(rremit, task, "billing/charge")
    assert _open(rremit, task) == [shared]
    assert len(rremit.list_leases(task_id=task.task_id)) == 1  # the replay reused it
    assert not [d for k, d in _audit(rremit) if k == "lease.revoked"]
    # The next honest call still gets (and can use) the same lease.
    again = task.authorize("billing/charge", {"amount": 6})
    assert again.allowed and again.obligations[0].ref == shared
    header = rremit.credential_for(Obligation("inject_header", shared)).headers
    assert header["Authorization"] == Secret(f"Bearer {CANARY}")


# ---------------------------------------------------------------------- budget spent meanwhile


@pytest.mark.parametrize("tool", ["ledger/post", "vault/once", "billing/charge"])
def test_a_budget_spent_meanwhile_releases_the_new_lease(
    rremit: Remit,
    session: AgentSession,
    spender: ConcurrentSpender,
    vault: VaultProvider,
    tool: str,
) -> None:
    task = _task(session, call_budget=3)
    decision = task.authorize(tool, {"amount": 1})
    assert not decision.allowed and decision.reasons == ("budget-exhausted",)
    assert decision.obligations == ()
    assert _open(rremit, task) == []
    (lease,) = rremit.list_leases(task_id=task.task_id)
    assert lease.state is LeaseState.REVOKED
    assert lease.revoke_reason == "call_refused:budget-exhausted"
    assert vault.live == set()
    kinds = [k for k, _ in _audit(rremit)]
    assert kinds.index("lease.issued") < kinds.index("lease.revoked")


def test_a_budget_spent_meanwhile_keeps_the_reused_static_lease(
    rremit: Remit, session: AgentSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _task(session, call_budget=5)
    first = task.authorize("billing/charge", {"amount": 1})
    assert first.allowed
    shared = first.obligations[0].ref
    spender = ConcurrentSpender(rremit, rremit.pipeline.leases)
    monkeypatch.setattr(rremit.pipeline, "leases", spender)
    second = task.authorize("billing/charge", {"amount": 2})
    assert not second.allowed and second.reasons == ("budget-exhausted",)
    assert _open(rremit, task) == [shared]  # someone else's refusal did not revoke it
    assert rremit.get_lease(shared).state is LeaseState.OPEN


def test_shadow_mode_budget_overrun_keeps_its_lease(
    rremit: Remit, session: AgentSession, spender: ConcurrentSpender
) -> None:
    rremit.set_agent_mode(session.agent_id, "shadow")
    task = _task(session, call_budget=3)
    decision = task.authorize("vault/once", {"amount": 1})
    assert decision.allowed  # shadow: recorded, not enforced; the lease is handed out
    assert _open(rremit, task) == [decision.obligations[0].ref]


# ---------------------------------------------------------------------- audit down


def test_an_audit_failure_after_issuance_releases_the_lease(
    rremit: Remit, session: AgentSession, vault: VaultProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _task(session)
    real = rremit.store.append_audit

    def decisions_fail(records: Sequence[AuditRecord]) -> None:
        if any(r.kind == "decision" for r in records):
            raise OSError("disk full")
        real(records)

    monkeypatch.setattr(rremit.store, "append_audit", decisions_fail)
    with pytest.raises(AuditUnavailable):
        task.authorize("vault/once", {"amount": 1})
    monkeypatch.undo()
    assert _open(rremit, task) == []
    (lease,) = rremit.list_leases(task_id=task.task_id)
    assert lease.state is LeaseState.REVOKED
    assert lease.revoke_reason == "call_refused:audit_write_failed"
    assert vault.live == set()


def test_an_audit_failure_at_issuance_releases_the_lease(
    rremit: Remit, session: AgentSession, vault: VaultProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``lease.issued`` record itself cannot be written: the lease row exists and the
    downstream credential is live, but no call gets it, so it is taken back at once."""
    task = _task(session)
    real = rremit.store.append_audit

    def issued_fails(records: Sequence[AuditRecord]) -> None:
        if any(r.kind == "lease.issued" for r in records):
            raise OSError("disk full")
        real(records)

    monkeypatch.setattr(rremit.store, "append_audit", issued_fails)
    with pytest.raises(AuditUnavailable):
        task.authorize("vault/once", {"amount": 1})
    monkeypatch.undo()
    assert _open(rremit, task) == []
    assert vault.live == set()
    (lease,) = rremit.list_leases(task_id=task.task_id)
    assert lease.state is LeaseState.REVOKED


def test_released_leases_never_carry_values_into_the_audit(
    rremit: Remit, session: AgentSession, spender: ConcurrentSpender
) -> None:
    task = _task(session, call_budget=3)
    task.authorize("vault/once", {"amount": 1})
    assert CANARY not in json.dumps(_audit(rremit))
