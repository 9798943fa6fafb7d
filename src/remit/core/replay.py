"""Policy replay (issue 7 item 4): re-decide recorded calls under a candidate policy set.

Every ``decision`` audit record written by the pipeline carries what the policies saw
(``policy_input``: action, tool and the Cedar context) and what decided beside them
(``mandate_violations``, ``monitor_reasons``, the monitor's ``anomaly`` response), plus
how approvals went. ``redecide`` evaluates the recorded input with a candidate
``PolicyEngine`` and recombines the result exactly as the pipeline does
(``remit.core.pipeline.combine_outcome``, then the recorded approval step, credential
refusal and post-policy budget refusal), so replaying under the policy set that made a
decision reproduces it, outcome and reasons. Credential issuance decisions (step 7)
are not re-decided: their context is not recorded.

``ReplayAggregate`` folds re-decisions into a report: counts per change kind
(``allow->deny``, ``deny->allow``, ``allow->approval_required``, ...), grouped by the
policies that made the difference and by agent, with up to ``examples`` examples each.
Memory is bounded by the number of groups, not by the number of records.

Each call is re-decided on its own, against its recorded context (taint, budget,
destinations, approvals as they were): replay does not simulate how a different
decision would have changed later calls (a denied read taints nothing, an unspent
budget leaves room). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from remit.core.identity import Mode
from remit.core.monitor import ANOMALY_REASON, AnomalyResponse
from remit.core.pipeline import Outcome, combine_outcome
from remit.core.policy import DEFAULT_DENY, PolicyEngine, PolicyRequest
from remit.errors import InvalidRequest

__all__ = [
    "BUDGET_REASON",
    "MAX_EXAMPLES",
    "Change",
    "RecordedDecision",
    "Redecision",
    "ReplayAggregate",
    "SkipReason",
    "change_kind",
    "redecide",
]

BUDGET_REASON: Final = "budget-exhausted"
CREDENTIAL_DENIED: Final = "credential-denied"  # step 7: the issuance policy said no
MAX_EXAMPLES: Final = 50
_APPROVAL_REFUSAL_PREFIX: Final = "approval_"  # check_use reasons; never a policy @id
_RESTRICTIVENESS: Final = {Outcome.ALLOW: 0, Outcome.APPROVAL_REQUIRED: 1, Outcome.DENY: 2}


class SkipReason(StrEnum):
    """Why a decision record cannot be re-decided."""

    REFUSED = "refused"  # refused before a decision (bad token, proof, arguments)
    UNKNOWN_TOOL = "unknown_tool"  # denied before policy: the tool was not in the catalog
    NO_POLICY_INPUT = "no_policy_input"  # written before policy inputs were recorded
    MALFORMED = "malformed"  # the record does not have the expected shape


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """The parts of one ``decision`` audit record that replay needs."""

    seq: int
    ts: float
    decision_id: str
    agent: str
    task: str
    tool: str
    destinations: tuple[str, ...]
    mode: Mode
    outcome: Outcome
    reasons: tuple[str, ...]
    approved: bool
    approval: str | None
    mandate_violations: tuple[str, ...]
    monitor_reasons: tuple[str, ...]
    monitor_approval: tuple[str, ...]
    action: str
    context: Mapping[str, Any] = field(hash=False)
    policy_version: str = ""

    @classmethod
    def parse(cls, seq: int, ts: float, data: Mapping[str, Any]) -> RecordedDecision | SkipReason:
        """The record, or why it cannot be re-decided."""
        outcome = data.get("outcome")
        if outcome == "refused":
            return SkipReason.REFUSED
        policy_input = data.get("policy_input")
        if policy_input is None:
            if data.get("reasons") == ["unknown-tool"]:
                return SkipReason.UNKNOWN_TOOL
            return SkipReason.NO_POLICY_INPUT
        try:
            if not isinstance(policy_input, Mapping):
                raise TypeError
            context = policy_input["context"]
            if not isinstance(context, Mapping):
                raise TypeError
            return cls(
                seq=int(seq),
                ts=float(ts),
                decision_id=_text(data.get("decision_id", "")),
                agent=_text(data["agent"]),
                task=_text(data.get("task", "")),
                tool=_text(policy_input["tool"]),
                destinations=_texts(data.get("destinations", ())),
                mode=Mode(data["mode"]),
                outcome=Outcome(_text(outcome)),
                reasons=_texts(data.get("reasons", ())),
                approved=data.get("approved", False) is True,
                approval=_text(data["approval"]) if data.get("approval") is not None else None,
                mandate_violations=_texts(data.get("mandate_violations", ())),
                monitor_reasons=_texts(data.get("monitor_reasons", ())),
                monitor_approval=_monitor_approval(data.get("anomaly")),
                action=_text(policy_input["action"]),
                context=context,
                policy_version=_text(data.get("policy_version", "")),
            )
        except (KeyError, TypeError, ValueError):
            return SkipReason.MALFORMED

    @property
    def budget_refused_after_policy(self) -> bool:
        """Allowed by steps 3-6, then refused when the budget was taken (a lost race)."""
        return (
            self.mode is Mode.ENFORCE
            and self.outcome is Outcome.DENY
            and self.reasons == (BUDGET_REASON,)
            and BUDGET_REASON not in self.mandate_violations
        )

    @property
    def credential_denied(self) -> bool:
        """Allowed by steps 3-6 (or shadow), then refused its credential (step 7)."""
        return self.outcome is Outcome.DENY and self.reasons[:1] == (CREDENTIAL_DENIED,)

    @property
    def approval_refused(self) -> bool:
        """An approval was presented and refused (pending, mismatched, used, expired...)."""
        return (
            self.mode is Mode.ENFORCE
            and self.outcome is Outcome.DENY
            and not self.approved
            and not self.mandate_violations
            and not self.monitor_reasons
            and bool(self.reasons)
            and self.reasons[0].startswith(_APPROVAL_REFUSAL_PREFIX)
        )


def _monitor_approval(anomaly: object) -> tuple[str, ...]:
    """The monitor's approval reasons, from the ``anomaly`` it recorded (step 4)."""
    if anomaly is None:
        return ()
    if not isinstance(anomaly, Mapping):
        raise TypeError("anomaly must be an object")
    if anomaly.get("response") == AnomalyResponse.REQUIRE_APPROVAL.value:
        return (ANOMALY_REASON,)
    return ()


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError("expected a list")
    return tuple(_text(v) for v in value)


# --------------------------------------------------------------------------- re-deciding


@dataclass(frozen=True, slots=True)
class Redecision:
    """What the candidate set decides for one recorded call."""

    outcome: Outcome
    reasons: tuple[str, ...]
    shadow_reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def redecide(record: RecordedDecision, engine: PolicyEngine) -> Redecision:
    """Re-decide ``record`` with ``engine``, combining as the pipeline does."""
    result = engine.evaluate(
        PolicyRequest(
            agent_id=record.agent, action=record.action, tool=record.tool, context=record.context
        )
    )
    outcome, reasons = combine_outcome(
        result, record.mandate_violations, record.monitor_reasons, record.monitor_approval
    )
    # Step 6, as it went: approvals apply only in enforce mode, to approval_required.
    if outcome is Outcome.APPROVAL_REQUIRED and record.mode is Mode.ENFORCE:
        if record.approved and record.reasons:
            # The consent covered this exact call; the candidate still only asks for one.
            outcome, reasons = Outcome.ALLOW, (record.reasons[0], *reasons)
        elif record.approval_refused:
            outcome, reasons = Outcome.DENY, (record.reasons[0], *reasons)
    # Step 7 as it went: the issuance decision is not re-decided (its context is not
    # recorded); a call that would go ahead again would again be refused its credential.
    if record.credential_denied and (outcome is Outcome.ALLOW or record.mode is Mode.SHADOW):
        outcome, reasons = Outcome.DENY, record.reasons
    # Budget refused after the decision (a concurrent call took the last one).
    if outcome is Outcome.ALLOW and record.budget_refused_after_policy:
        outcome, reasons = Outcome.DENY, (BUDGET_REASON,)
    return Redecision(outcome, reasons, result.shadow_reasons, result.errors)


def change_kind(before: Outcome, after: Outcome) -> str:
    return f"{before.value}->{after.value}"


@dataclass(frozen=True, slots=True)
class Change:
    """One decision the candidate would take differently."""

    record: RecordedDecision
    after: Redecision
    policies: tuple[str, ...]  # the policies that made the difference

    @property
    def kind(self) -> str:
        return change_kind(self.record.outcome, self.after.outcome)

    def to_data(self) -> dict[str, Any]:
        r = self.record
        return {
            "seq": r.seq,
            "decision_id": r.decision_id,
            "time": r.ts,
            "agent": r.agent,
            "task": r.task,
            "tool": r.tool,
            "destinations": list(r.destinations),
            "mode": r.mode.value,
            "from": r.outcome.value,
            "to": self.after.outcome.value,
            "reasons_before": list(r.reasons),
            "reasons_after": list(self.after.reasons),
            "policies": list(self.policies),
            "policy_version_before": r.policy_version,
        }


def deciding_policies(
    before: Outcome,
    before_reasons: Sequence[str],
    after: Outcome,
    after_reasons: Sequence[str],
) -> tuple[str, ...]:
    """The policies a change is attributed to: those deciding on the more restrictive
    side and not on the other (a new forbid, a removed forbid); when that is only
    ``default-deny`` (or nothing), also the permits that now decide on the other side."""
    if _RESTRICTIVENESS[after] >= _RESTRICTIVENESS[before]:
        strict, loose = after_reasons, before_reasons
    else:
        strict, loose = before_reasons, after_reasons
    found = [r for r in strict if r not in loose and _is_policy_id(r)]
    if not [r for r in found if r != DEFAULT_DENY]:
        found.extend(r for r in loose if r not in strict and _is_policy_id(r))
    return tuple(dict.fromkeys(found)) or ("(no policy id)",)


def _is_policy_id(reason: str) -> bool:
    # Approval-step reasons (approval_pending, ...) are not policies; a policy @id (and
    # POLICY_ERROR) never contains "_". Mandate and monitor reasons are on both sides.
    return "_" not in reason


# --------------------------------------------------------------------------- aggregation


@dataclass
class _Group:
    changed: int = 0
    by_change: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, change: Change, limit: int) -> None:
        self.changed += 1
        self.by_change[change.kind] = self.by_change.get(change.kind, 0) + 1
        if len(self.examples) < limit:
            self.examples.append(change.to_data())

    def to_data(self, key: str, value: str) -> dict[str, Any]:
        return {
            key: value,
            "changed": self.changed,
            "by_change": dict(sorted(self.by_change.items())),
            "examples": list(self.examples),
        }


class ReplayAggregate:
    """Folds re-decisions into counts and examples (a builder; ``to_data`` reports)."""

    def __init__(self, *, examples: int = 3) -> None:
        if not 0 <= examples <= MAX_EXAMPLES:
            raise InvalidRequest(
                f"examples must be from 0 to {MAX_EXAMPLES}", reason="bad_examples"
            )
        self.examples = examples
        self.read = 0
        self.replayed = 0
        self.unchanged = 0
        self.changed = 0
        self.reasons_changed = 0
        self.errors = 0
        self.skipped: dict[str, int] = {}
        self.by_change: dict[str, int] = {}
        self.by_policy: dict[str, _Group] = {}
        self.by_agent: dict[str, _Group] = {}
        self.versions: dict[str, int] = {}
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def skip(self, reason: SkipReason) -> None:
        self.read += 1
        self.skipped[reason.value] = self.skipped.get(reason.value, 0) + 1

    def add(self, record: RecordedDecision, after: Redecision) -> Change | None:
        """Count one re-decided record; return the change, if the outcome changed."""
        self.read += 1
        self.replayed += 1
        self.versions[record.policy_version] = self.versions.get(record.policy_version, 0) + 1
        self.first_ts = record.ts if self.first_ts is None else min(self.first_ts, record.ts)
        self.last_ts = record.ts if self.last_ts is None else max(self.last_ts, record.ts)
        if after.errors:
            self.errors += 1
        if after.outcome is record.outcome:
            self.unchanged += 1
            if after.reasons != record.reasons:
                self.reasons_changed += 1
            return None
        policies = deciding_policies(record.outcome, record.reasons, after.outcome, after.reasons)
        change = Change(record, after, policies)
        self.changed += 1
        self.by_change[change.kind] = self.by_change.get(change.kind, 0) + 1
        for policy in policies:
            self.by_policy.setdefault(policy, _Group()).add(change, self.examples)
        self.by_agent.setdefault(record.agent, _Group()).add(change, self.examples)
        return change

    def to_data(self) -> dict[str, Any]:
        def ranked(groups: dict[str, _Group], key: str) -> list[dict[str, Any]]:
            order = sorted(groups.items(), key=lambda item: (-item[1].changed, item[0]))
            return [group.to_data(key, name) for name, group in order]

        return {
            "records": self.read,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "reasons_changed": self.reasons_changed,
            "evaluation_errors": self.errors,
            "skipped": {
                "total": sum(self.skipped.values()),
                "by_reason": dict(sorted(self.skipped.items())),
            },
            "by_change": dict(sorted(self.by_change.items())),
            "by_policy": ranked(self.by_policy, "policy"),
            "by_agent": ranked(self.by_agent, "agent"),
            "recorded_policy_versions": dict(sorted(self.versions.items())),
            "first_time": self.first_ts,
            "last_time": self.last_ts,
        }
