"""What the agent reads when Remit says no, or the gateway cannot forward a call.

Every refusal is a ``CallToolResult`` with ``isError`` set, whose text starts
with the stable code, and whose ``structuredContent`` is ``{"remit": {...}}``
with the code, the reason and, for a decision, the decision itself. A denial
is never disguised as "tool not found".
"""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, TextContent

from remit.core.pipeline import Decision, Outcome
from remit.errors import RemitError


def decision_data(decision: Decision) -> dict[str, Any]:
    return {
        "decision_id": decision.decision_id,
        "outcome": decision.outcome.value,
        "allowed": decision.allowed,
        "mode": decision.mode.value,
        "reasons": list(decision.reasons),
        "policy_version": decision.policy_version,
        "task_id": decision.task_id,
        "tool": decision.tool,
        "args_digest": decision.args_digest,
        "audit_seq": decision.audit_seq,
        "approval_id": decision.approval_id,
    }


def _result(text: str, remit: dict[str, Any]) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content={"remit": remit},
        is_error=True,
    )


def refused_by_decision(decision: Decision, *, waiting_for: str | None = None) -> CallToolResult:
    """A decision that does not let the call go ahead: a deny, or an approval to wait for
    (``waiting_for``: the approval request this exact call waits for)."""
    why = ", ".join(decision.reasons) or "no reason recorded"
    data = decision_data(decision)
    approval_id = waiting_for or decision.approval_id
    if approval_id and (
        decision.outcome is Outcome.APPROVAL_REQUIRED
        or decision.reasons[:1] == ("approval_pending",)
    ):
        data.update(code="approval_required", approval_id=approval_id)
        text = (
            f"remit: approval required (approval_required): {why}. "
            f"Approval request {approval_id} asks a human approver for this exact call "
            f"(an approver runs: remit approvals approve {approval_id}). Once it is "
            "approved, make the same call again, with the same arguments. "
            "Nothing was sent to the tool."
        )
        return _result(text, data)
    data["code"] = "denied"
    return _result(f"remit denied (denied): {why}", data)


def refused_by_error(exc: RemitError, *, decision: Decision | None = None) -> CallToolResult:
    """Remit refused the request or could not decide, or an allowed call's credential could
    not be obtained (``decision``: the allowing decision). Fail closed: nothing was
    forwarded."""
    if exc.code == "denied":
        text = f"remit denied (denied): {exc.reason}: {exc.message}"
    else:
        text = f"remit refused ({exc.code}): {exc.message} [{exc.reason}]"
    data: dict[str, Any] = {"code": exc.code, "reason": exc.reason, "forwarded": False}
    if decision is not None:
        data["decision"] = decision_data(decision)
    return _result(text, data)


def gateway_error(exc: RemitError, *, decision: Decision | None = None) -> CallToolResult:
    """The call was allowed but the gateway could not complete it (unknown tool, upstream
    timeout or crash, changed definition)."""
    data: dict[str, Any] = {"code": exc.code, "reason": exc.reason}
    if decision is not None:
        data["decision"] = decision_data(decision)
    return _result(f"remit gateway ({exc.code}): {exc.message} [{exc.reason}]", data)
