"""AUD-07 / FLT-01: SIGKILL a Remit process at random moments while it decides calls,
then reopen its data directory.

After every kill: the audit chain verifies (no gap, no duplicate seq, links intact) and
the service restarts and decides. Across the kills: a task's ``calls_used`` is never
less than its allowed decision records (an allowed decision always had its budget
taken). The other direction can diverge by design: the budget is taken in one
transaction and the decision record is committed in the next, so a kill between them
leaves a call counted against the budget without a decision record (fail-safe: the
agent loses one call, nothing was allowed). The test measures it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import text

from remit.clock import ManualClock

from ..conftest import PRINCIPAL
from .conftest import build, intent, setup

KILLS = 6
READY_SECONDS = 30.0
ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(root: Path, run: int, rng: random.Random) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.crash_worker", str(root), str(run)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + READY_SECONDS
        line = child.stdout.readline()  # the worker prints "ready" or dies
        assert line.strip() == "ready", (line, child.poll(), child.stderr and child.stderr.read())
        assert time.monotonic() < deadline
        time.sleep(rng.uniform(0.05, 0.6))
        assert child.poll() is None, "the worker stopped before it was killed"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def _reopen_and_check(root: Path) -> tuple[int, int, int]:
    """(tasks, allowed decision records, calls counted without a decision record)."""
    clock = ManualClock()
    remit = build(root, clock)
    try:
        report = remit.verify_audit()
        assert report.ok, report
        seqs = [r.seq for r in remit.store.iter_audit()]
        assert seqs == list(range(1, len(seqs) + 1)), "gap or duplicate in the audit seq"
        allowed = Counter(
            r.data["task"]
            for r in remit.store.iter_audit()
            if r.kind == "decision" and r.data.get("allowed") is True
        )
        with remit.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT task_id, calls_used FROM tasks")).all()
        used = {str(row[0]): int(row[1]) for row in rows}
        for task_id, count in allowed.items():
            assert task_id in used, f"decision records for a task that was never stored: {task_id}"
            assert count <= used[task_id], (
                f"{task_id}: allowed {count} > calls_used {used[task_id]}"
            )
        unrecorded = sum(used[t] - allowed[t] for t in used)
        # Restart works: the reopened service decides and audits.
        session = setup(remit, clock, name=f"after-{len(seqs)}")
        task = session.open_task(principal=PRINCIPAL, intent=intent())
        decision = task.authorize("docs/read", {"after": "restart"})
        assert decision.allowed
        remit.audit.flush()
        assert remit.verify_audit().ok
        return len(used), sum(allowed.values()), unrecorded
    finally:
        remit.close()


def test_kill9_keeps_chain_and_budget_consistent(tmp_path: Path) -> None:
    rng = random.Random(9)
    totals: list[tuple[int, int, int]] = []
    for run in range(KILLS):
        _run_and_kill(tmp_path, run, rng)
        totals.append(_reopen_and_check(tmp_path))
    tasks, allowed, unrecorded = totals[-1]
    assert tasks > KILLS and allowed > KILLS, totals
    print(
        f"AUD-07: after {KILLS} kills: {tasks} tasks, {allowed} allowed records, "
        f"{unrecorded} calls counted without a decision record; per kill {totals}"
    )
