"""FLT-05: random storage errors on ~20% of operations during a randomized workload.

The store fails below Remit's error mapping (see ``injector``). Every operation either
returns or raises a ``RemitError``; an allowed decision always has its committed audit
record; the chain verifies; no task spends more than its budget; and once the faults
stop, a sweep leaves no lease open for a task that has ended.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.core.leases import LeaseState
from remit.core.pipeline import Decision, Obligation
from remit.core.tasks import TaskStatus
from remit.errors import RemitError
from remit.service import Remit

from ..conftest import PRINCIPAL
from .conftest import APPROVER, PAY, SECRET, build, intent, setup
from .injector import ErrorInjector, install

OPERATIONS = 2000
SEED = 20240605
DEADLINE_SECONDS = 40.0


class Workload:
    def __init__(self, remit: Remit, session: AgentSession, clock: ManualClock, seed: int):
        self.remit, self.session, self.clock = remit, session, clock
        self.rng = random.Random(seed)
        self.tasks: list[TaskSession] = []
        self.allowed: list[Decision] = []
        self.obligations: list[Obligation] = []
        self.approvals: list[tuple[TaskSession, str]] = []
        self.outcomes: Counter[str] = Counter()

    def _task(self) -> TaskSession:
        if not self.tasks:
            raise LookupError
        return self.rng.choice(self.tasks[-6:])

    def _decided(self, decision: Decision) -> None:
        if decision.allowed:
            self.allowed.append(decision)
            self.obligations.extend(decision.obligations)
        if decision.approval_id is not None and not decision.allowed:
            self.approvals.append((self.tasks[-1], decision.approval_id))

    def step(self) -> str:
        op = self.rng.choices(
            [
                "open",
                "allow",
                "deny",
                "credential",
                "use_credential",
                "approval",
                "end",
                "revoke",
                "sweep",
            ],
            weights=[14, 30, 10, 15, 6, 8, 3, 3, 2],
        )[0]
        if op == "open":
            self.tasks.append(
                self.session.open_task(
                    principal=PRINCIPAL, intent=intent(call_budget=self.rng.randint(2, 8))
                )
            )
        elif op == "allow":
            self._decided(self._task().authorize("docs/read", {"q": self.rng.random()}))
        elif op == "deny":  # not in the task's intent
            self._decided(self._task().authorize("crm/export", {"q": 1}))
        elif op == "credential":
            self._decided(self._task().authorize("billing/charge", {"n": self.rng.random()}))
        elif op == "use_credential":
            if self.obligations:
                injection = self.remit.credential_for(self.rng.choice(self.obligations[-5:]))
                assert injection.headers["Authorization"].reveal() == f"Bearer {SECRET}"
        elif op == "approval":
            if self.approvals and self.rng.random() < 0.6:
                task, approval_id = self.rng.choice(self.approvals[-4:])
                if self.rng.random() < 0.5:
                    self.remit.approve(approval_id, by=APPROVER)
                else:
                    self._decided(task.authorize("payments/transfer", PAY, approval=approval_id))
            else:
                task = self._task()
                decision = task.authorize("payments/transfer", PAY)
                if decision.approval_id is not None:
                    self.approvals.append((task, decision.approval_id))
                self._decided(decision)
        elif op == "end":
            self._task().end()
        elif op == "revoke":
            self.remit.revoke_task(self._task().task_id, reason="fault test")
        elif op == "sweep":
            self.clock.advance(self.rng.choice([1.0, 30.0]))
            self.remit.sweep()
        return op

    def run(self, count: int, deadline: float) -> None:
        for _ in range(count):
            assert time.monotonic() < deadline, "the workload ran past its deadline"
            try:
                op = self.step()
            except LookupError:
                self.outcomes["skipped"] += 1
            except RemitError as exc:  # anything else fails the test
                self.outcomes[f"error:{exc.code}"] += 1
            else:
                self.outcomes[f"ok:{op}"] += 1


def _check_invariants(remit: Remit, work: Workload) -> None:
    remit.audit.flush()
    records = {r.seq: r for r in remit.store.iter_audit()}
    # I1: every allowed decision's audit record is committed, and is that decision.
    for decision in work.allowed:
        record = records.get(decision.audit_seq)
        assert record is not None, f"allowed {decision.decision_id} has no audit record"
        assert record.kind == "decision"
        assert record.data["decision_id"] == decision.decision_id
        assert record.data["allowed"] is True
    # I6: the chain verifies (no gap, no duplicate, no broken link).
    report = remit.verify_audit()
    assert report.ok, report
    # Budgets: never exceeded, and never an allowed decision whose call was not counted.
    allowed_per_task = Counter(
        r.data["task"]
        for r in records.values()
        if r.kind == "decision" and r.data.get("allowed") is True
    )
    for task_session in work.tasks:
        task = remit.get_task(task_session.task_id)
        assert task.calls_used <= task.mandate.call_budget
        assert allowed_per_task[task.task_id] <= task.calls_used, task.task_id


def test_random_storage_errors_fail_closed(tmp_path: Path) -> None:
    started = time.monotonic()
    clock = ManualClock()
    remit = build(tmp_path, clock)
    try:
        session = setup(remit, clock)
        injector = ErrorInjector(SEED, rate=0.2)
        install(remit.store, injector)
        work = Workload(remit, session, clock, SEED)
        injector.enabled = True
        work.run(OPERATIONS, started + DEADLINE_SECONDS)
        injector.enabled = False

        # The faults were real and hit every part of the workload.
        assert injector.injected >= 0.1 * injector.operations > 100
        assert (
            work.outcomes["error:store_unavailable"] + work.outcomes["error:audit_unavailable"] > 50
        ), work.outcomes
        assert len(work.allowed) > 30, work.outcomes
        assert any(d.obligations for d in work.allowed), "no credentialed call was allowed"

        _check_invariants(remit, work)

        # After the faults stop, a sweep ends every lease of an ended task.
        remit.sweep()
        for task_session in work.tasks:
            task = remit.get_task(task_session.task_id)
            if task.status is not TaskStatus.OPEN:
                leases = remit.list_leases(task_id=task.task_id)
                still = [lease.lease_id for lease in leases if lease.state is LeaseState.OPEN]
                assert not still, (task.task_id, task.status, still)
        # And the service works normally again.
        fresh = session.open_task(principal=PRINCIPAL, intent=intent())
        assert fresh.authorize("docs/read", {"q": "after"}).allowed
        assert remit.verify_audit().ok
    finally:
        remit.close()
    print(f"FLT-05: {dict(work.outcomes)}; injected {injector.injected}/{injector.operations}")
