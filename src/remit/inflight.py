"""Allowed decisions in flight, per task, so that ending a task can wait for them.

An allowed decision takes its call from the budget in one transaction and commits its
audit record in the next. A revocation that commits between the two would otherwise be
chained *before* a decision it did not stop, and ``revoke_task`` could return while that
call is still about to be handed out (REV-02). The pipeline marks the span with
``deciding``; ending a task commits its status first (no later decision can take a call
from it), then ``drain`` waits for the spans already past that point. In-process only:
a second replica's decisions are not seen here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

__all__ = ["InFlight"]


class InFlight:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}

    @contextmanager
    def deciding(self, task_id: str) -> Iterator[None]:
        with self._cond:
            self._counts[task_id] = self._counts.get(task_id, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                left = self._counts[task_id] - 1
                if left:
                    self._counts[task_id] = left
                else:
                    del self._counts[task_id]
                    self._cond.notify_all()

    def drain(self, task_ids: Iterable[str], timeout: float) -> bool:
        """Wait until no decision on ``task_ids`` is in flight; False on timeout."""
        ids = set(task_ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ids.isdisjoint(self._counts):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True
