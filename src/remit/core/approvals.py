"""Approvals: a human's consent to one exact action (DESIGN §1, pipeline step 6).

An approval request is bound to the digest of (task, tool, canonical argument
digest). It is single use, expires, and needs ``quorum`` distinct approvers;
one denial ends it. The rules here are pure; the store makes the state changes
atomic (a vote is a row keyed by approver, consumption a conditional update).

Refusal reasons (stable, in decisions and audit records):

=====================  ==============================================================
``approval_unknown``   no such approval
``approval_wrong_task``  the approval belongs to another task
``approval_mismatch``  the call differs from the approved one (tool or arguments)
``approval_expired``   past its expiry
``approval_pending``   the quorum is not met yet
``approval_denied``    an approver denied it
``approval_consumed``  it has been used already
``self_approval``      the approver is the task's own principal
``already_voted``      this approver has approved it already
=====================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from remit.canonical import digest

DEFAULT_APPROVAL_TTL = 600
MAX_QUORUM = 5


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # quorum met, not used yet
    DENIED = "denied"
    CONSUMED = "consumed"


@dataclass(frozen=True, slots=True)
class Vote:
    approver: str  # the operator's name (for a human approver: their principal id)
    approve: bool
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    task_id: str
    agent_id: str
    instance_id: str
    principal_id: str
    tool: str
    args_digest: str
    binding: str  # approval_binding(task_id, tool, args_digest)
    arguments: Mapping[str, Any]  # shown to approvers only; never sent by the webhook
    reasons: tuple[str, ...]  # the approval policies that asked for it
    quorum: int
    status: ApprovalStatus
    created_at: float
    expires_at: float
    votes: tuple[Vote, ...] = ()
    decided_at: float | None = None
    consumed_at: float | None = None

    def effective_status(self, now: float) -> str:
        """The status, or ``expired`` for an unused approval past its expiry."""
        unused = self.status in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)
        if unused and now >= self.expires_at:
            return "expired"
        return self.status.value

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes if v.approve)


def approval_binding(task_id: str, tool: str, args_digest: str) -> str:
    """The digest one approval is bound to: this task, this tool, these exact arguments."""
    return digest({"task": task_id, "tool": tool, "args_digest": args_digest})


def check_use(approval: Approval | None, *, task_id: str, binding: str, now: float) -> str | None:
    """Why ``approval`` cannot allow this call (a reason id), or None if it can."""
    if approval is None:
        return "approval_unknown"
    if approval.task_id != task_id:
        return "approval_wrong_task"
    if approval.binding != binding:
        return "approval_mismatch"
    if approval.status is ApprovalStatus.CONSUMED:
        return "approval_consumed"
    if approval.status is ApprovalStatus.DENIED:
        return "approval_denied"
    if now >= approval.expires_at:
        return "approval_expired"
    if approval.status is ApprovalStatus.PENDING:
        return "approval_pending"
    return None


def check_vote(
    approval: Approval, *, approver: str, now: float, allow_self: bool = False
) -> str | None:
    """Why ``approver`` may not vote on ``approval`` (a reason id), or None."""
    if approval.status is not ApprovalStatus.PENDING:
        return f"approval_{approval.status.value}"
    if now >= approval.expires_at:
        return "approval_expired"
    if not allow_self and approver == approval.principal_id:
        return "self_approval"
    if approver in approval.approvers:
        return "already_voted"
    return None
