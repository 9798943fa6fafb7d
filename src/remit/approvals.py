"""Approvals as a use case: pipeline step 6 over the store, and the webhook.

``StoreApprovalGate`` is the pipeline's ``ApprovalGate``. On
``approval_required`` without an approval it opens a request bound to the
exact call (or returns the pending one for the same call) and sends a webhook
notification. With ``approval=<id>`` it checks the approval against this task
and this exact call and consumes it with one conditional update in the store:
of any number of concurrent retries exactly one is allowed.

The consumption commits before the call's own transaction (jti, budget,
taint); if that one then refuses the call (a replayed proof, an exhausted
budget), the approval stays used. A store failure while consuming leaves it
unused and the call refused (503).
"""

from __future__ import annotations

from typing import Any

from remit.clock import Clock
from remit.core.approvals import Approval, ApprovalStatus, approval_binding, check_use
from remit.core.identity import Mode
from remit.core.pipeline import ApprovalStep, CallRequest, Outcome
from remit.core.tasks import Task
from remit.ids import new_id
from remit.store.audit_log import AuditLog
from remit.store.sql import SqlStore
from remit.webhooks import AuditedWebhook, Post

APPROVED_REASON = "human-approval"
WEBHOOK_TIMEOUT = 5.0
MAX_APPROVAL_ID = 128


class WebhookNotifier(AuditedWebhook):
    """POSTs a JSON summary of each new request to one URL, through ``remit.webhooks``
    (one background worker, bounded queue).

    The summary never carries the arguments (only their digest). Failures are
    audited (``approval.webhook_failed``, ``approval.webhook_dropped``) and never
    block or change a decision.
    """

    def __init__(
        self,
        url: str,
        audit: AuditLog,
        *,
        timeout: float = WEBHOOK_TIMEOUT,
        post: Post | None = None,
    ) -> None:
        super().__init__(
            url,
            audit,
            prefix="approval",
            field="approval",
            setting="REMIT_APPROVAL_WEBHOOK",
            timeout=timeout,
            post=post,
        )

    def notify(self, approval: Approval) -> None:
        self.sender.send(approval.approval_id, webhook_payload(approval))


def webhook_payload(approval: Approval) -> dict[str, Any]:
    return {
        "type": "approval.requested",
        "id": approval.approval_id,
        "task": approval.task_id,
        "agent": approval.agent_id,
        "principal": approval.principal_id,
        "tool": approval.tool,
        "args_digest": approval.args_digest,
        "reasons": list(approval.reasons),
        "quorum": approval.quorum,
        "expires_at": approval.expires_at,
    }


class StoreApprovalGate:
    """Pipeline step 6 over the store (see the module docstring)."""

    def __init__(
        self,
        *,
        store: SqlStore,
        audit: AuditLog,
        clock: Clock,
        ttl_seconds: float,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.clock = clock
        self.ttl_seconds = ttl_seconds
        self.notifier = notifier

    def resolve(
        self,
        outcome: Outcome,
        reasons: tuple[str, ...],
        call: CallRequest,
        task: Task,
        *,
        args_digest: str,
        quorum: int,
        mode: Mode,
    ) -> ApprovalStep:
        # An approval never widens a deny and is not needed for an allow; in shadow mode
        # the call goes ahead anyway, so no human is asked.
        if outcome is not Outcome.APPROVAL_REQUIRED or mode is Mode.SHADOW:
            return ApprovalStep(outcome, reasons)
        now = self.clock.now()
        binding = approval_binding(task.task_id, call.tool, args_digest)
        if call.approval is not None:
            return self._use(call.approval, reasons, task, binding, now)
        pending = self.store.find_open_approval(binding, now)
        if pending is not None:
            return ApprovalStep(outcome, reasons, approval_id=pending.approval_id)
        approval = Approval(
            approval_id=new_id("apr"),
            task_id=task.task_id,
            agent_id=task.agent_id,
            instance_id=task.instance_id,
            principal_id=task.principal_id,
            tool=call.tool,
            args_digest=args_digest,
            binding=binding,
            arguments=dict(call.arguments),
            reasons=reasons,
            quorum=max(1, quorum),
            status=ApprovalStatus.PENDING,
            created_at=now,
            expires_at=now + self.ttl_seconds,
        )
        self.store.insert_approval(approval)
        self.audit.append(
            "approval.requested",
            {
                "approval": approval.approval_id,
                "task": task.task_id,
                "agent": task.agent_id,
                "instance": task.instance_id,
                "principal": task.principal_id,
                "tool": call.tool,
                "args_digest": args_digest,
                "reasons": list(reasons),
                "quorum": approval.quorum,
                "expires_at": approval.expires_at,
            },
        )
        if self.notifier is not None:
            self.notifier.notify(approval)
        return ApprovalStep(outcome, reasons, approval_id=approval.approval_id)

    def _use(
        self, approval_id: object, reasons: tuple[str, ...], task: Task, binding: str, now: float
    ) -> ApprovalStep:
        found = None
        if isinstance(approval_id, str) and 0 < len(approval_id) <= MAX_APPROVAL_ID:
            found = self.store.get_approval(approval_id)
        why = check_use(found, task_id=task.task_id, binding=binding, now=now)
        if why is None and found is not None:
            if self.store.consume_approval(found.approval_id, binding, now):
                self.audit.append(
                    "approval.consumed",
                    {
                        "approval": found.approval_id,
                        "task": task.task_id,
                        "approvers": list(found.approvers),
                    },
                )
                return ApprovalStep(
                    Outcome.ALLOW,
                    (APPROVED_REASON, *reasons),
                    approved=True,
                    approval_id=found.approval_id,
                )
            why = "approval_consumed"  # another retry won the conditional update
        self.audit.append(
            "approval.refused",
            {
                "approval": found.approval_id if found else "<unknown>",
                "task": task.task_id,
                "reason": why,
            },
        )
        return ApprovalStep(Outcome.DENY, (str(why), *reasons))
