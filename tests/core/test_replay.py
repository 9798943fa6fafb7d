"""The pure part of policy replay: parsing records, re-deciding with real Cedar,
recombining as the pipeline does, attributing and aggregating changes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remit.core.identity import Mode
from remit.core.pipeline import Outcome, combine_outcome
from remit.core.policy import (
    AgentEntity,
    PolicyEngine,
    PolicyRequest,
    PolicyResult,
    PolicySource,
    ToolEntity,
)
from remit.core.replay import (
    MAX_EXAMPLES,
    RecordedDecision,
    Redecision,
    ReplayAggregate,
    SkipReason,
    change_kind,
    deciding_policies,
    redecide,
)
from remit.errors import InvalidRequest

AGENT = "spiffe://acme.example/agent/bot"
NOW = 1_800_000_000.0


def context(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "mode": "enforce",
        "instance": "ins_1",
        "task": {
            "id": "tsk_1",
            "principal": "user:sam@acme.example",
            "purpose": "p",
            "sensitivity_ceiling": 2,
            "delegation_depth": 0,
        },
        "tool_in_mandate": True,
        "destinations": [],
        "destinations_explicit": [],
        "destinations_by_pattern": [],
        "destinations_outside": [],
        "output_sensitivity": 0,
        "output_flags": [],
        "taint_sensitivity": 0,
        "taint_flags": [],
        "budget_remaining": 10,
        "approved": False,
        "anomaly_score": 0,
        "delegated": False,
        "hour_utc": 12,
    }
    base.update(overrides)
    return base


def record_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "decision_id": "dec_1",
        "tool": "docs/read",
        "agent": AGENT,
        "task": "tsk_1",
        "destinations": [],
        "policy_input": {"action": "read", "tool": "docs/read", "context": context()},
        "mandate_violations": [],
        "monitor_reasons": [],
        "shadow_policies": [],
        "approved": False,
        "outcome": "allow",
        "allowed": True,
        "mode": "enforce",
        "reasons": ["permit-within-mandate"],
        "policy_version": "pv_x",
    }
    data.update(overrides)
    return data


def parsed(seq: int = 1, **overrides: Any) -> RecordedDecision:
    found = RecordedDecision.parse(seq, NOW + seq, record_data(**overrides))
    assert isinstance(found, RecordedDecision)
    return found


def engine(*texts: str) -> PolicyEngine:
    result = PolicyEngine()
    result.load([PolicySource(f"p{i}.cedar", t) for i, t in enumerate(texts)])
    result.set_entities(
        [AgentEntity(AGENT, "ops")],
        [
            ToolEntity("docs/read", "read"),
            ToolEntity("pay/transfer", "act", frozenset({"payment"})),
        ],
    )
    return result


NO_DOCS = '@id("no-docs")\nforbid(principal, action, resource == Tool::"docs/read");'
APPROVE_DOCS = (
    '@id("approve-docs")\n@approval("required")\n'
    'forbid(principal, action, resource == Tool::"docs/read");'
)


# ---------------------------------------------------------------------- records


def test_parse_skips_what_cannot_be_redecided() -> None:
    refused = {"decision_id": "d", "outcome": "refused", "error": "invalid_proof"}
    assert RecordedDecision.parse(1, NOW, refused) is SkipReason.REFUSED
    unknown = {"outcome": "deny", "reasons": ["unknown-tool"], "mode": "enforce"}
    assert RecordedDecision.parse(1, NOW, unknown) is SkipReason.UNKNOWN_TOOL
    old = record_data()
    del old["policy_input"]
    assert RecordedDecision.parse(1, NOW, old) is SkipReason.NO_POLICY_INPUT
    for bad in (
        record_data(policy_input="x"),
        record_data(policy_input={"action": "read", "tool": "docs/read", "context": []}),
        record_data(policy_input={"action": "read", "context": {}}),
        record_data(mode="loud"),
        record_data(outcome="maybe"),
        record_data(reasons="permit"),
        record_data(agent=None),
        record_data(mandate_violations=[1]),
    ):
        assert RecordedDecision.parse(1, NOW, bad) is SkipReason.MALFORMED


@given(
    st.dictionaries(
        st.sampled_from(sorted(record_data())),
        st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.lists(st.text()),
    )
)
def test_parse_never_raises(data: dict[str, Any]) -> None:
    found = RecordedDecision.parse(3, NOW, {**record_data(), **data})
    assert isinstance(found, RecordedDecision | SkipReason)


# ---------------------------------------------------------------------- the shared rule


def _old_inline_rule(
    result: PolicyResult,
    violations: tuple[str, ...],
    monitor: tuple[str, ...],
    monitor_approval: tuple[str, ...],
) -> tuple[Outcome, tuple[str, ...]]:
    """The pipeline's combination before it was factored out (kept as the reference),
    with the monitor's approval response (step 4) as the pipeline applies it."""
    if not violations and not monitor and result.approval_reasons:
        reasons, outcome = result.approval_reasons, Outcome.APPROVAL_REQUIRED
    elif violations or monitor or not result.allowed:
        policy_reasons = () if result.allowed else result.reasons
        reasons = tuple(dict.fromkeys(violations + monitor + policy_reasons))
        outcome = Outcome.DENY
    else:
        reasons, outcome = result.reasons, Outcome.ALLOW
    if monitor_approval and outcome is not Outcome.DENY:
        kept = reasons if outcome is Outcome.APPROVAL_REQUIRED else ()
        reasons = tuple(dict.fromkeys(kept + monitor_approval))
        outcome = Outcome.APPROVAL_REQUIRED
    return outcome, reasons


_IDS = st.sampled_from(
    ["permit-within-mandate", "a", "b", "default-deny", "policy-error", "mandate-tool-scope"]
)


@given(
    allowed=st.booleans(),
    reasons=st.lists(_IDS, max_size=3).map(tuple),
    approval=st.lists(_IDS, max_size=2).map(tuple),
    violations=st.lists(st.sampled_from(["mandate-tool-scope", "budget-exhausted"])).map(tuple),
    monitor=st.lists(st.sampled_from(["kill-switch", "rate-limit"]), max_size=1).map(tuple),
    ask=st.sampled_from([(), ("anomaly",)]),
)
def test_combine_outcome_is_the_old_inline_rule(
    allowed: bool,
    reasons: tuple[str, ...],
    approval: tuple[str, ...],
    violations: tuple[str, ...],
    monitor: tuple[str, ...],
    ask: tuple[str, ...],
) -> None:
    result = PolicyResult(
        allowed=allowed,
        reasons=reasons,
        errors=(),
        version="pv",
        approval_reasons=() if allowed else approval,
        approval_quorum=1 if approval and not allowed else 0,
    )
    assert combine_outcome(result, violations, monitor, ask) == _old_inline_rule(
        result, violations, monitor, ask
    )
    if not ask:
        assert combine_outcome(result, violations, monitor) == _old_inline_rule(
            result, violations, monitor, ()
        )


def test_combine_outcome_cases() -> None:
    allow = PolicyResult(True, ("permit-within-mandate",), (), "pv")
    deny = PolicyResult(False, ("no-docs",), (), "pv")
    ask = PolicyResult(False, ("ap",), (), "pv", approval_reasons=("ap",), approval_quorum=1)
    assert combine_outcome(allow, (), ()) == (Outcome.ALLOW, ("permit-within-mandate",))
    assert combine_outcome(deny, (), ()) == (Outcome.DENY, ("no-docs",))
    assert combine_outcome(ask, (), ()) == (Outcome.APPROVAL_REQUIRED, ("ap",))
    # Mandate and monitor reasons deny, first, even where the policies allow or only ask.
    assert combine_outcome(allow, ("mandate-tool-scope",), ()) == (
        Outcome.DENY,
        ("mandate-tool-scope",),
    )
    assert combine_outcome(ask, (), ("kill-switch",)) == (Outcome.DENY, ("kill-switch", "ap"))


# ---------------------------------------------------------------------- re-deciding


def test_redecide_reproduces_and_changes() -> None:
    record = parsed()
    assert redecide(record, engine()) == Redecision(Outcome.ALLOW, ("permit-within-mandate",))
    assert redecide(record, engine(NO_DOCS)).outcome is Outcome.DENY
    assert redecide(record, engine(NO_DOCS)).reasons == ("no-docs",)
    asked = redecide(record, engine(APPROVE_DOCS))
    assert asked == Redecision(Outcome.APPROVAL_REQUIRED, ("approve-docs",))


def test_mandate_and_monitor_still_deny() -> None:
    record = parsed(
        mandate_violations=["mandate-tool-scope"],
        monitor_reasons=["kill-switch"],
        outcome="deny",
        reasons=["mandate-tool-scope", "kill-switch"],
        policy_input={
            "action": "read",
            "tool": "docs/read",
            "context": context(tool_in_mandate=False),
        },
    )
    after = redecide(record, engine(APPROVE_DOCS))
    assert after.outcome is Outcome.DENY
    assert after.reasons[:2] == ("mandate-tool-scope", "kill-switch")


def test_a_recorded_approval_still_applies_if_the_candidate_only_asks() -> None:
    approved = parsed(
        outcome="allow", approved=True, approval="apr_1", reasons=["human-approval", "old"]
    )
    assert redecide(approved, engine(APPROVE_DOCS)) == Redecision(
        Outcome.ALLOW, ("human-approval", "approve-docs")
    )
    assert redecide(approved, engine(NO_DOCS)).outcome is Outcome.DENY
    assert redecide(approved, engine()).reasons == ("permit-within-mandate",)


def test_a_refused_approval_stays_refused_if_the_candidate_only_asks() -> None:
    refused = parsed(outcome="deny", allowed=False, reasons=["approval_pending", "old"])
    assert refused.approval_refused
    assert redecide(refused, engine(APPROVE_DOCS)) == Redecision(
        Outcome.DENY, ("approval_pending", "approve-docs")
    )
    # Without the approval policy the call needs no approval: it would have gone ahead.
    assert redecide(refused, engine()).outcome is Outcome.ALLOW


def test_shadow_mode_compares_the_would_outcome() -> None:
    shadow = parsed(mode="shadow", approved=False)
    # Approvals are never asked for in shadow mode: the would-outcome is approval_required.
    assert redecide(shadow, engine(APPROVE_DOCS)).outcome is Outcome.APPROVAL_REQUIRED
    assert redecide(shadow, engine(NO_DOCS)).outcome is Outcome.DENY


def test_budget_taken_after_the_decision_stays_refused() -> None:
    lost = parsed(outcome="deny", allowed=False, reasons=["budget-exhausted"])
    assert lost.budget_refused_after_policy
    assert redecide(lost, engine()) == Redecision(Outcome.DENY, ("budget-exhausted",))
    assert redecide(lost, engine(NO_DOCS)).reasons == ("no-docs",)
    by_mandate = parsed(
        outcome="deny", reasons=["budget-exhausted"], mandate_violations=["budget-exhausted"]
    )
    assert not by_mandate.budget_refused_after_policy


def test_the_monitors_approval_response_is_replayed() -> None:
    anomaly = {"score": 90, "findings": [], "response": "require_approval"}
    asked = parsed(anomaly=anomaly, outcome="approval_required", reasons=["anomaly"])
    assert asked.monitor_approval == ("anomaly",)
    assert redecide(asked, engine()) == Redecision(Outcome.APPROVAL_REQUIRED, ("anomaly",))
    assert redecide(asked, engine(APPROVE_DOCS)).reasons == ("approve-docs", "anomaly")
    assert redecide(asked, engine(NO_DOCS)).outcome is Outcome.DENY
    approved = parsed(
        anomaly=anomaly, approved=True, outcome="allow", reasons=["human-approval", "anomaly"]
    )
    assert redecide(approved, engine()) == Redecision(Outcome.ALLOW, ("human-approval", "anomaly"))
    quiet = parsed(anomaly={"score": 10, "findings": [], "response": "none"})
    assert quiet.monitor_approval == ()
    assert RecordedDecision.parse(1, NOW, record_data(anomaly=[1])) is SkipReason.MALFORMED


def test_a_refused_credential_stays_refused_when_the_call_would_go_ahead() -> None:
    refused = parsed(outcome="deny", allowed=False, reasons=["credential-denied", "no-lease"])
    assert refused.credential_denied
    assert redecide(refused, engine()) == Redecision(
        Outcome.DENY, ("credential-denied", "no-lease")
    )
    # A candidate that forbids the call itself now decides it (same outcome).
    assert redecide(refused, engine(NO_DOCS)).reasons == ("no-docs",)
    # In shadow mode the credential is asked for whatever the would-outcome.
    shadow = parsed(mode="shadow", outcome="deny", reasons=["credential-denied", "no-lease"])
    assert redecide(shadow, engine(NO_DOCS)).reasons == ("credential-denied", "no-lease")


def test_a_bad_recorded_context_denies_with_policy_error() -> None:
    record = parsed(policy_input={"action": "read", "tool": "docs/read", "context": {"x": 1}})
    after = redecide(record, engine())
    assert after.outcome is Outcome.DENY and "policy-error" in after.reasons and after.errors


# ---------------------------------------------------------------------- attribution


def test_deciding_policies() -> None:
    allow, deny, ask = Outcome.ALLOW, Outcome.DENY, Outcome.APPROVAL_REQUIRED
    permit = ("permit-within-mandate",)
    assert deciding_policies(allow, permit, deny, ("no-docs",)) == ("no-docs",)
    assert deciding_policies(deny, ("no-docs",), allow, permit) == ("no-docs",)
    assert deciding_policies(allow, permit, ask, ("ap",)) == ("ap",)
    assert deciding_policies(ask, ("ap",), deny, ("ap", "no-docs")) == ("no-docs",)
    # A new permit lifting a default deny names the permit too.
    assert deciding_policies(deny, ("default-deny",), allow, ("new-permit",)) == (
        "default-deny",
        "new-permit",
    )
    # Mandate reasons on both sides and approval-step reasons are not policies.
    assert deciding_policies(
        deny, ("approval_pending", "ap"), allow, ("permit-within-mandate",)
    ) == ("ap",)
    assert deciding_policies(allow, ("human-approval", "ap"), deny, ("x",)) == ("x",)


def test_change_kind() -> None:
    assert change_kind(Outcome.ALLOW, Outcome.DENY) == "allow->deny"
    assert change_kind(Outcome.DENY, Outcome.APPROVAL_REQUIRED) == "deny->approval_required"


# ---------------------------------------------------------------------- aggregation


def test_aggregate_counts_groups_and_bounds_examples() -> None:
    aggregate = ReplayAggregate(examples=2)
    no_docs = engine(NO_DOCS)
    other = "spiffe://acme.example/agent/other"
    for seq in range(1, 6):
        record = parsed(seq, decision_id=f"dec_{seq}", agent=AGENT if seq < 5 else other)
        aggregate.add(record, redecide(record, no_docs))
    unchanged = parsed(9, outcome="deny", reasons=["no-docs"])
    assert aggregate.add(unchanged, redecide(unchanged, no_docs)) is None
    aggregate.skip(SkipReason.REFUSED)
    aggregate.skip(SkipReason.REFUSED)
    aggregate.skip(SkipReason.UNKNOWN_TOOL)
    data = aggregate.to_data()
    assert data["records"] == 9 and data["replayed"] == 6
    assert data["changed"] == 5 and data["unchanged"] == 1 and data["reasons_changed"] == 0
    assert data["skipped"] == {"total": 3, "by_reason": {"refused": 2, "unknown_tool": 1}}
    assert data["by_change"] == {"allow->deny": 5}
    (policy,) = data["by_policy"]
    assert policy["policy"] == "no-docs" and policy["changed"] == 5
    assert [e["decision_id"] for e in policy["examples"]] == ["dec_1", "dec_2"]
    assert [(g["agent"], g["changed"]) for g in data["by_agent"]] == [(AGENT, 4), (other, 1)]
    example = policy["examples"][0]
    assert example["from"] == "allow" and example["to"] == "deny"
    assert example["reasons_before"] == ["permit-within-mandate"]
    assert example["reasons_after"] == ["no-docs"] and example["time"] == NOW + 1
    assert data["first_time"] == NOW + 1 and data["last_time"] == NOW + 9
    assert data["recorded_policy_versions"] == {"pv_x": 6}


def test_aggregate_counts_reason_only_changes_apart() -> None:
    aggregate = ReplayAggregate()
    record = parsed(outcome="deny", reasons=["old-forbid"])
    assert aggregate.add(record, redecide(record, engine(NO_DOCS))) is None
    assert aggregate.to_data()["reasons_changed"] == 1
    assert aggregate.to_data()["changed"] == 0


@pytest.mark.parametrize("examples", [-1, MAX_EXAMPLES + 1])
def test_aggregate_refuses_bad_example_counts(examples: int) -> None:
    with pytest.raises(InvalidRequest):
        ReplayAggregate(examples=examples)


APPROVE_PAY = (
    '@id("approve-pay")\n@approval("required")\n'
    'forbid(principal, action, resource == Tool::"pay/transfer");'
)
ACTIVE_ENGINE = engine(NO_DOCS, APPROVE_PAY)


@given(
    tool=st.sampled_from(["docs/read", "pay/transfer", "other/tool"]),
    in_mandate=st.booleans(),
    taint=st.sets(st.sampled_from(["untrusted", "pii"])),
    taint_sensitivity=st.integers(0, 3),
    outside=st.lists(st.sampled_from(["email:a@x.example", "account:1"]), max_size=2),
    budget=st.integers(0, 5),
    mode=st.sampled_from(["enforce", "shadow"]),
    violations=st.lists(st.sampled_from(["mandate-tool-scope", "sensitivity-ceiling"])),
)
def test_replaying_under_the_deciding_set_is_a_fixed_point(
    tool: str,
    in_mandate: bool,
    taint: set[str],
    taint_sensitivity: int,
    outside: list[str],
    budget: int,
    mode: str,
    violations: list[str],
) -> None:
    """Record what the active engine decided for a call, as the pipeline does; replaying
    that record under the same engine never reports a change, nor other reasons."""
    action = {"docs/read": "read", "pay/transfer": "act", "other/tool": "write"}[tool]
    ctx = context(
        mode=mode,
        tool_in_mandate=in_mandate,
        taint_flags=sorted(taint),
        taint_sensitivity=taint_sensitivity,
        destinations=outside,
        destinations_outside=outside,
        budget_remaining=budget,
    )
    result = ACTIVE_ENGINE.evaluate(PolicyRequest(AGENT, action, tool, ctx))
    outcome, reasons = combine_outcome(result, tuple(violations), ())
    data = record_data(
        tool=tool,
        policy_input={"action": action, "tool": tool, "context": ctx},
        mode=mode,
        outcome=outcome.value,
        reasons=list(reasons),
        mandate_violations=violations,
    )
    record = RecordedDecision.parse(1, NOW, data)
    assert isinstance(record, RecordedDecision)
    aggregate = ReplayAggregate()
    assert aggregate.add(record, redecide(record, ACTIVE_ENGINE)) is None
    assert aggregate.to_data()["reasons_changed"] == 0
    assert record.mode is Mode(mode)
