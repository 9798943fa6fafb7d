"""Tasks: one unit of work, opened by an instance for a principal, with a mandate."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from remit.core.labels import Labels
from remit.core.mandate import Mandate


class TaskStatus(StrEnum):
    OPEN = "open"
    ENDED = "ended"  # ended by the instance or an operator
    EXPIRED = "expired"  # its TTL ran out
    REVOKED = "revoked"  # an ancestor ended, or an operator revoked it


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    agent_id: str
    instance_id: str
    principal_id: str
    parent_id: str | None
    mandate: Mandate
    mandate_digest: str
    status: TaskStatus
    opened_at: float
    expires_at: float
    ended_at: float | None
    end_reason: str | None
    calls_used: int
    taint: Labels
    depth: int = 0

    def policy_info(self) -> dict[str, object]:
        """The task as Cedar sees it (the schema's ``TaskInfo``), in every request about it."""
        return {
            "id": self.task_id,
            "principal": self.principal_id,
            "purpose": self.mandate.purpose,
            "sensitivity_ceiling": int(self.mandate.sensitivity_ceiling),
            "delegation_depth": self.depth,
        }

    def effective_status(self, now: float) -> TaskStatus:
        """An open task whose TTL has run out is expired even before a sweep records it."""
        if self.status is TaskStatus.OPEN and now >= self.expires_at:
            return TaskStatus.EXPIRED
        return self.status
