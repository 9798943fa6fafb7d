"""REV-02: revoke a task while several threads authorize calls on it, with a barrier.

Linearizability against the audit sequence: no allowed decision is chained after the
revocation's ``task.revoked`` record, and every call that starts after ``revoke_task``
has returned is refused.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from remit.agent import TaskSession
from remit.clock import ManualClock
from remit.core.pipeline import Decision
from remit.errors import RemitError
from remit.service import Remit

from ..conftest import PRINCIPAL
from .conftest import build, intent, setup

ITERATIONS = 250
THREADS = 4
CALLS_PER_THREAD = 3
JOIN_SECONDS = 10.0
DEADLINE_SECONDS = 40.0


class Call:
    __slots__ = ("end", "result", "start")

    def __init__(self, start: float, end: float, result: Decision | RemitError) -> None:
        self.start, self.end, self.result = start, end, result

    @property
    def allowed(self) -> bool:
        return isinstance(self.result, Decision) and self.result.allowed


def _race(remit: Remit, task: TaskSession) -> tuple[list[Call], float]:
    """One round: THREADS callers and one revoker released together."""
    barrier = threading.Barrier(THREADS + 1, timeout=JOIN_SECONDS)
    calls: list[Call] = []
    revoked_at: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def use(n: int) -> None:
        try:
            barrier.wait()
            for i in range(CALLS_PER_THREAD):
                begin = time.monotonic()
                try:
                    result: Decision | RemitError = task.authorize(
                        "docs/read", {"thread": n, "i": i}
                    )
                except RemitError as exc:
                    result = exc
                with lock:
                    calls.append(Call(begin, time.monotonic(), result))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def revoke() -> None:
        try:
            barrier.wait()
            remit.revoke_task(task.task_id, reason="race")
            revoked_at.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(n,)) for n in range(THREADS)]
    threads.append(threading.Thread(target=revoke))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
        assert not thread.is_alive(), "a racing call hung"
    assert not errors, errors
    (revoke_returned,) = revoked_at
    return calls, revoke_returned


def test_revoke_races_use(tmp_path: Path) -> None:
    started = time.monotonic()
    clock = ManualClock()
    remit = build(tmp_path, clock)
    stats = {"allowed": 0, "refused": 0, "after_revoke": 0}
    try:
        session = setup(remit, clock)
        seen_seq = 0
        for _ in range(ITERATIONS):
            assert time.monotonic() - started < DEADLINE_SECONDS, "ran past its deadline"
            task = session.open_task(principal=PRINCIPAL, intent=intent(call_budget=100))
            calls, revoke_returned = _race(remit, task)

            remit.audit.flush()
            records = list(remit.store.iter_audit(after_seq=seen_seq))
            seen_seq = records[-1].seq
            (revocation,) = [
                r for r in records if r.kind == "task.revoked" and r.data["task"] == task.task_id
            ]
            for call in calls:
                if call.allowed:
                    assert isinstance(call.result, Decision)
                    stats["allowed"] += 1
                    assert call.result.audit_seq < revocation.seq, (
                        "an allowed decision was chained after the revocation"
                    )
                else:
                    stats["refused"] += 1
                if call.start > revoke_returned:
                    stats["after_revoke"] += 1
                    assert not call.allowed, "a call started after the revocation was allowed"
            assert remit.get_task(task.task_id).status.value == "revoked"
        # The race was real: both outcomes happened, and calls started after the revocation.
        assert stats["allowed"] > 0 and stats["refused"] > 0 and stats["after_revoke"] > 0, stats
        assert remit.verify_audit().ok
    finally:
        remit.close()
    print(f"REV-02: {stats}")
