"""The Cedar policy engine: baseline decisions, loading, fail-closed, slicing, shadow mode."""

from __future__ import annotations

import functools
import random
import re
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from remit.core.policy import (
    DEFAULT_DENY,
    POLICY_ERROR,
    AgentEntity,
    PolicyEngine,
    PolicyRequest,
    PolicyResult,
    PolicySource,
    ToolEntity,
    explain,
)
from remit.core.policy_pack import ACTIONS, BASELINE_IDS, CONTEXT_ATTRIBUTES
from remit.errors import InvalidRequest, PolicyInvalid

TOOL_ACTIONS = 'action in [Action::"read", Action::"write", Action::"act"]'
"""The scope a policy reading tool-call-only context needs (else it is invalid for delegate)."""
AGENT = "spiffe://example.org/agent/mailer"
OTHER_AGENT = "spiffe://example.org/agent/reporter"


def context(**overrides: object) -> dict[str, object]:
    """A full, valid tool-call context: in mandate, clean, budget left. Override any key."""
    task = {
        "id": "tsk_1",
        "principal": "alice@example.com",
        "purpose": "send the weekly report",
        "sensitivity_ceiling": 1,
        "delegation_depth": 0,
    }
    base: dict[str, object] = {
        "mode": "enforce",
        "instance": "ins_1",
        "task": task,
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
    task_overrides = overrides.pop("task", None)
    if isinstance(task_overrides, Mapping):
        base["task"] = {**task, **task_overrides}
    base.update(overrides)
    return base


def delegate_context(**overrides: object) -> dict[str, object]:
    """A full, valid delegation context: same trust domain, clean parent. Override any key."""
    parent = {
        "id": "tsk_1",
        "principal": "alice@example.com",
        "purpose": "write the weekly report",
        "sensitivity_ceiling": 2,
        "delegation_depth": 0,
    }
    base: dict[str, object] = {
        "mode": "enforce",
        "parent_task": parent,
        "child_tools": ["docs/read"],
        "child_sensitivity": 1,
        "child_budget": 5,
        "depth": 1,
        "same_trust_domain": True,
        "taint_sensitivity": 0,
        "taint_flags": [],
    }
    parent_overrides = overrides.pop("parent_task", None)
    if isinstance(parent_overrides, Mapping):
        base["parent_task"] = {**parent, **parent_overrides}
    base.update(overrides)
    return base


def delegation(
    agent: str = AGENT, receiver: str = OTHER_AGENT, **overrides: object
) -> PolicyRequest:
    return PolicyRequest.delegation(agent, receiver, delegate_context(**overrides))


def call(
    action: str = "read",
    tool: str = "email/search",
    agent: str = AGENT,
    **overrides: object,
) -> PolicyRequest:
    return PolicyRequest(agent_id=agent, action=action, tool=tool, context=context(**overrides))


def src(text: str, name: str = "ops/test.cedar") -> PolicySource:
    return PolicySource(name, text)


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    """A baseline-only engine shared by read-only tests."""
    return PolicyEngine()


# --------------------------------------------------------------------------- baseline


def test_helper_context_covers_every_schema_attribute() -> None:
    assert set(context()) == set(CONTEXT_ATTRIBUTES)


def test_engine_starts_with_baseline_and_no_entities(engine: PolicyEngine) -> None:
    assert engine.policy_ids() == BASELINE_IDS
    assert re.fullmatch(r"pv_[0-9a-f]{16}", engine.version)
    assert PolicyEngine().version == engine.version


@pytest.mark.parametrize("action", ACTIONS)
def test_call_within_mandate_is_allowed(engine: PolicyEngine, action: str) -> None:
    result = engine.evaluate(call(action))
    assert result.allowed
    assert result.reasons == ("permit-within-mandate",)
    assert result.errors == ()
    assert result.version == engine.version
    assert result.evaluated == (8 if action == "act" else 5)
    assert explain(result) == "allowed by permit-within-mandate"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"tool_in_mandate": False}, "mandate-tool-scope"),
        (
            {
                "destinations": ["email:eve@evil.test"],
                "destinations_outside": ["email:eve@evil.test"],
            },
            "mandate-destination-scope",
        ),
        ({"output_sensitivity": 2}, "sensitivity-ceiling"),
        ({"budget_remaining": 0}, "budget-exhausted"),
        ({"budget_remaining": -3}, "budget-exhausted"),
    ],
)
def test_baseline_denials_name_their_rule(
    engine: PolicyEngine, overrides: dict[str, Any], reason: str
) -> None:
    result = engine.evaluate(call("write", "docs/edit", **overrides))
    assert not result.allowed
    assert result.reasons == (reason,)
    assert explain(result) == f"denied by {reason}"


def test_several_violations_are_all_reported(engine: PolicyEngine) -> None:
    result = engine.evaluate(call(tool_in_mandate=False, budget_remaining=0))
    assert not result.allowed
    assert result.reasons == ("budget-exhausted", "mandate-tool-scope")
    assert explain(result) == "denied by budget-exhausted, mandate-tool-scope"


PATTERN_ONLY: dict[str, Any] = {
    "destinations": ["email:bob@partner.example"],
    "destinations_by_pattern": ["email:bob@partner.example"],
}
EXPLICIT: dict[str, Any] = {
    "destinations": ["email:bob@partner.example"],
    "destinations_explicit": ["email:bob@partner.example"],
}


def test_act_after_untrusted_read_to_pattern_destination_is_denied(engine: PolicyEngine) -> None:
    result = engine.evaluate(call("act", "email/send", taint_flags=["untrusted"], **PATTERN_ONLY))
    assert not result.allowed
    assert result.reasons == ("exfiltration-after-untrusted-read",)
    assert explain(result) == "denied by exfiltration-after-untrusted-read"


def test_act_after_untrusted_read_to_explicit_destination_is_allowed(engine: PolicyEngine) -> None:
    result = engine.evaluate(call("act", "email/send", taint_flags=["untrusted"], **EXPLICIT))
    assert result.allowed
    assert result.reasons == ("permit-within-mandate",)


def test_act_to_pattern_destination_without_taint_is_allowed(engine: PolicyEngine) -> None:
    result = engine.evaluate(call("act", "email/send", taint_flags=["pii"], **PATTERN_ONLY))
    assert result.allowed


@pytest.mark.parametrize("taint", [2, 3])
def test_act_after_confidential_read(engine: PolicyEngine, taint: int) -> None:
    denied = engine.evaluate(call("act", "email/send", taint_sensitivity=taint, **PATTERN_ONLY))
    assert not denied.allowed
    assert denied.reasons == ("exfiltration-after-confidential-read",)
    allowed = engine.evaluate(call("act", "email/send", taint_sensitivity=taint, **EXPLICIT))
    assert allowed.allowed


def test_act_after_internal_read_to_pattern_destination_is_allowed(engine: PolicyEngine) -> None:
    assert engine.evaluate(call("act", "email/send", taint_sensitivity=1, **PATTERN_ONLY)).allowed


def test_both_exfiltration_rules_fire_together(engine: PolicyEngine) -> None:
    result = engine.evaluate(
        call("act", "email/send", taint_flags=["untrusted"], taint_sensitivity=3, **PATTERN_ONLY)
    )
    assert result.reasons == (
        "exfiltration-after-confidential-read",
        "exfiltration-after-untrusted-read",
    )


@pytest.mark.parametrize("action", ["read", "write"])
def test_read_and_write_after_taint_are_still_allowed(engine: PolicyEngine, action: str) -> None:
    result = engine.evaluate(
        call(action, "email/search", taint_flags=["untrusted"], taint_sensitivity=3, **PATTERN_ONLY)
    )
    assert result.allowed


def test_context_may_use_sets_and_tuples(engine: PolicyEngine) -> None:
    result = engine.evaluate(
        call(
            "act",
            "email/send",
            taint_flags=frozenset({"untrusted"}),
            destinations=("email:bob@partner.example",),
            destinations_by_pattern={"email:bob@partner.example"},
        )
    )
    assert result.reasons == ("exfiltration-after-untrusted-read",)


# --------------------------------------------------------------------------- fail closed


def test_erroring_forbid_with_broad_permit_denies() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("allow-all") permit (principal, action, resource);\n'
                '@id("overflow") forbid (principal, action in [Action::"read", Action::"write", '
                'Action::"act"], resource)\n'
                "when { context.budget_remaining * 9223372036854775807 > 0 };"
            )
        ]
    )
    result = engine.evaluate(call(tool_in_mandate=False))  # baseline forbids too
    assert not result.allowed
    assert POLICY_ERROR in result.reasons
    result = engine.evaluate(call())
    assert not result.allowed
    assert result.reasons == (POLICY_ERROR,)
    assert any("overflow" in e for e in result.errors)
    assert explain(result) == "denied: policy evaluation failed (policy-error)"


def test_erroring_forbid_reports_other_forbids_too() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("overflow") forbid (principal, action in [Action::"read", Action::"write", '
                'Action::"act"], resource)\n'
                "when { context.budget_remaining * 9223372036854775807 > 0 };"
            )
        ]
    )
    result = engine.evaluate(call(tool_in_mandate=False))
    assert result.reasons == ("mandate-tool-scope", POLICY_ERROR)
    assert explain(result) == (
        "denied by mandate-tool-scope; policy evaluation failed (policy-error)"
    )


@pytest.mark.parametrize("missing", ["taint_flags", "approved", "hour_utc", "task"])
def test_context_missing_an_attribute_denies(engine: PolicyEngine, missing: str) -> None:
    # "approved" and "hour_utc" are read by no baseline policy: only request
    # validation against the schema catches them.
    ctx = context()
    del ctx[missing]
    result = engine.evaluate(PolicyRequest(AGENT, "read", "email/search", ctx))
    assert not result.allowed
    assert result.reasons == (POLICY_ERROR,)
    assert result.errors


def test_task_missing_an_attribute_denies(engine: PolicyEngine) -> None:
    ctx = context()
    task = dict(ctx["task"])  # type: ignore[call-overload]
    del task["purpose"]
    ctx["task"] = task
    assert engine.evaluate(PolicyRequest(AGENT, "read", "email/search", ctx)).reasons == (
        POLICY_ERROR,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"taint_flags": "untrusted"},
        {"budget_remaining": "10"},
        {"budget_remaining": True},
        {"approved": 1},
        {"tool_in_mandate": "yes"},
        {"budget_remaining": 2**70},
        {"budget_remaining": 1.5},
        {"unexpected": 1},
        {"task": {"sensitivity_ceiling": "3"}},
    ],
)
def test_context_with_wrong_type_or_extra_attribute_denies(
    engine: PolicyEngine, overrides: dict[str, Any]
) -> None:
    result = engine.evaluate(call(**overrides))
    assert not result.allowed
    assert result.reasons == (POLICY_ERROR,)


def test_unserializable_or_nan_context_denies(engine: PolicyEngine) -> None:
    assert engine.evaluate(call(instance=object())).reasons == (POLICY_ERROR,)
    assert engine.evaluate(call(budget_remaining=float("nan"))).reasons == (POLICY_ERROR,)


def test_unknown_action_denies(engine: PolicyEngine) -> None:
    result = engine.evaluate(call("delete"))
    assert not result.allowed
    assert result.reasons == (POLICY_ERROR,)


def test_request_errors_do_not_echo_the_context(engine: PolicyEngine) -> None:
    secretish = "purpose-text-that-should-not-be-echoed-" * 3
    result = engine.evaluate(call(task={"purpose": secretish}, budget_remaining="x"))
    assert result.reasons == (POLICY_ERROR,)
    assert all(secretish not in e and len(e) <= 300 for e in result.errors)


# --------------------------------------------------------------------------- loading


HOURS = """
@id("no-night-acts")
forbid (principal, action == Action::"act", resource)
when { context.hour_utc < 6 };

@id("anomaly-stop")
forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource)
when { context.anomaly_score >= 80 };
"""


def test_operator_policies_load_and_name_their_reasons() -> None:
    engine = PolicyEngine()
    baseline_version = engine.version
    version = engine.load([src(HOURS, "ops/limits.cedar")])
    assert version == engine.version != baseline_version
    assert engine.policy_ids() == (*BASELINE_IDS, "no-night-acts", "anomaly-stop")

    assert engine.evaluate(call("act", "email/send", hour_utc=3)).reasons == ("no-night-acts",)
    assert engine.evaluate(call("read", "email/search", hour_utc=3)).allowed
    result = engine.evaluate(call("act", "email/send", hour_utc=3, anomaly_score=95))
    assert result.reasons == ("anomaly-stop", "no-night-acts")
    assert engine.evaluate(call("act", "email/send", hour_utc=7)).allowed


def test_operator_permit_cannot_widen_the_mandate() -> None:
    engine = PolicyEngine()
    engine.load([src('@id("allow-all") permit (principal, action, resource);')])
    result = engine.evaluate(call(tool_in_mandate=False))
    assert not result.allowed
    assert result.reasons == ("mandate-tool-scope",)
    assert engine.evaluate(call()).reasons == ("allow-all", "permit-within-mandate")


def test_load_of_nothing_returns_to_the_baseline() -> None:
    engine = PolicyEngine()
    baseline_version = engine.version
    engine.load([src(HOURS)])
    assert engine.load([]) == baseline_version
    assert engine.policy_ids() == BASELINE_IDS


def _refused(engine: PolicyEngine, *sources: PolicySource) -> str:
    before = engine.version
    with pytest.raises(PolicyInvalid) as caught:
        engine.load(list(sources))
    assert caught.value.code == "policy_invalid"
    assert engine.version == before
    with pytest.raises(PolicyInvalid):
        engine.validate(list(sources))
    return caught.value.message


def test_policy_without_id_is_refused_naming_the_file() -> None:
    message = _refused(
        PolicyEngine(), src("permit (principal, action, resource);", "ops/anon.cedar")
    )
    assert "ops/anon.cedar" in message
    assert "no @id" in message


@pytest.mark.parametrize("bad", ["Upper", "-leading", "has space", "x" * 64, "", "a_b"])
def test_malformed_id_is_refused(bad: str) -> None:
    message = _refused(PolicyEngine(), src(f'@id("{bad}") permit (principal, action, resource);'))
    assert "ops/test.cedar" in message


@pytest.mark.parametrize("reserved", [DEFAULT_DENY, POLICY_ERROR])
def test_reserved_id_is_refused(reserved: str) -> None:
    message = _refused(
        PolicyEngine(), src(f'@id("{reserved}") forbid (principal, action, resource);')
    )
    assert "reserved" in message


def test_duplicate_id_is_refused_within_and_across_files() -> None:
    engine = PolicyEngine()
    same_file = '@id("dup") permit (principal, action, resource);\n' * 2
    assert "dup" in _refused(engine, src(same_file, "ops/a.cedar"))
    message = _refused(
        engine,
        src('@id("dup") permit (principal, action, resource);', "ops/a.cedar"),
        src('@id("dup") forbid (principal, action, resource);', "ops/b.cedar"),
    )
    assert "ops/b.cedar" in message
    assert "ops/a.cedar" in message


def test_reusing_a_baseline_id_is_refused() -> None:
    message = _refused(
        PolicyEngine(),
        src('@id("budget-exhausted") permit (principal, action, resource);', "ops/x.cedar"),
    )
    assert "ops/x.cedar" in message
    assert "budget-exhausted" in message


def test_schema_invalid_policy_is_refused_with_file_and_id() -> None:
    message = _refused(
        PolicyEngine(),
        src('@id("typo") forbid (principal, action, resource) when { context.tain };', "o.cedar"),
    )
    assert "o.cedar: typo:" in message
    assert "tain" in message
    assert message.count("tain") == 1  # one line, not one per action


@pytest.mark.parametrize(
    "text",
    [
        '@id("bad-action") permit (principal, action == Action::"delete", resource);',
        '@id("bad-type") permit (principal, action, resource) when { context.hour_utc == "x" };',
        '@id("bad-entity") permit (principal, action, resource in Server::"x");',
        '@id("bad-attr") permit (principal, action, resource) when { principal.name == "x" };',
    ],
)
def test_policies_not_fitting_the_schema_are_refused(text: str) -> None:
    assert "ops/test.cedar" in _refused(PolicyEngine(), src(text))


def test_bad_syntax_is_refused() -> None:
    message = _refused(
        PolicyEngine(),
        src('@id("ok") permit (principal, action, resource);', "ops/good.cedar"),
        src('@id("broken") permit (principal, action resource);', "ops/broken.cedar"),
    )
    assert "ops/broken.cedar: syntax error" in message
    assert "ops/good.cedar" not in message


def test_templates_are_refused() -> None:
    message = _refused(
        PolicyEngine(), src('@id("tpl") permit (principal == ?principal, action, resource);')
    )
    assert "template" in message


def test_unknown_mode_is_refused() -> None:
    message = _refused(
        PolicyEngine(),
        src('@id("m") @mode("audit") forbid (principal, action, resource);'),
    )
    assert "@mode" in message


def test_all_problems_are_listed_at_once() -> None:
    with pytest.raises(PolicyInvalid) as caught:
        PolicyEngine().validate(
            [
                src("permit (principal, action, resource);", "a.cedar"),
                src('@id("t") forbid (principal, action, resource) when { context.x };', "b.cedar"),
            ]
        )
    problems = caught.value.details["problems"]
    assert len(problems) == 2
    assert problems[0].startswith("a.cedar")
    assert problems[1].startswith("b.cedar")


def test_bad_set_keeps_the_previous_version_active() -> None:
    engine = PolicyEngine()
    version_a = engine.load([src(HOURS, "ops/limits.cedar")])
    with pytest.raises(PolicyInvalid):
        engine.load(
            [
                src('@id("other") forbid (principal, action, resource);', "ops/b.cedar"),
                src('@id("typo") permit (principal, action, resource) when { context.tain };'),
            ]
        )
    assert engine.version == version_a
    assert engine.policy_ids() == (*BASELINE_IDS, "no-night-acts", "anomaly-stop")
    result = engine.evaluate(call("act", "email/send", hour_utc=3))
    assert result.reasons == ("no-night-acts",)
    assert result.version == version_a
    assert engine.evaluate(call()).allowed  # "other" was never applied


def test_validate_does_not_apply() -> None:
    engine = PolicyEngine()
    before = engine.version
    engine.validate([src(HOURS)])
    assert engine.version == before
    assert engine.policy_ids() == BASELINE_IDS


def test_version_ids_are_stable_and_canonical() -> None:
    one, two = PolicyEngine(), PolicyEngine()
    first = one.load([src(HOURS, "a.cedar"), src('@id("x") forbid (principal, action, resource);')])
    # Same policies: same version, whatever the engine, the file order or the layout.
    assert two.load([src(HOURS, "a.cedar"), src('@id("x") forbid (principal, action, resource);')])
    assert two.version == first
    reordered = [
        src('@id("x")\nforbid(principal,action,resource);  // comment', "z.cedar"),
        src(HOURS, "a.cedar"),
    ]
    assert PolicyEngine().load(reordered) == first
    # Any semantic change gives a new version.
    changed = HOURS.replace("< 6", "< 5")
    assert PolicyEngine().load(
        [src(changed), src('@id("x") forbid (principal, action, resource);')]
    )
    assert PolicyEngine().load([src(changed)]) != first


def test_version_depends_on_schema_and_baseline() -> None:
    base = PolicyEngine().version
    assert PolicyEngine(baseline="").version != base
    assert PolicyEngine(baseline="").policy_ids() == ()


def test_invalid_baseline_or_schema_fails_construction() -> None:
    with pytest.raises(PolicyInvalid):
        PolicyEngine(baseline="permit (principal, action, resource);")
    with pytest.raises(PolicyInvalid):
        PolicyEngine(schema="entity {")


def test_empty_policy_set_denies_by_default() -> None:
    result = PolicyEngine(baseline="").evaluate(call())
    assert not result.allowed
    assert result.reasons == (DEFAULT_DENY,)
    assert result.evaluated == 0
    assert explain(result) == "denied: no policy permits (default-deny)"


# --------------------------------------------------------------------------- entities


TOOLS = [
    ToolEntity("email/send", "act", frozenset({"external"})),
    ToolEntity("email/search", "read"),
    ToolEntity("payments/transfer", "act", frozenset({"payment", "external"})),
    ToolEntity("calendar/read", "read"),
]
AGENTS = [AgentEntity(AGENT, "alice@example.com"), AgentEntity(OTHER_AGENT, "mallory@example.com")]


def test_set_entities_with_empty_lists_works() -> None:
    engine = PolicyEngine()
    engine.set_entities([], [])
    assert engine.evaluate(call()).allowed


def test_toolgroup_scoped_operator_policy() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("email-office-hours")\n'
                'forbid (principal, action, resource in ToolGroup::"email")\n'
                "when { context.hour_utc < 8 };"
            )
        ]
    )
    engine.set_entities(AGENTS, TOOLS)
    version = engine.version
    assert engine.evaluate(call("act", "email/send", hour_utc=3)).reasons == ("email-office-hours",)
    assert engine.evaluate(call("read", "email/search", hour_utc=3)).reasons == (
        "email-office-hours",
    )
    assert engine.evaluate(call("read", "calendar/read", hour_utc=3)).allowed
    assert engine.evaluate(call("read", "email/search", hour_utc=9)).allowed
    # A tool missing from the entities has no parent group: the scope does not match.
    assert engine.evaluate(call("read", "email/unlisted", hour_utc=3)).allowed
    assert engine.version == version  # entities do not change the policy version
    assert engine.slice_size("read", "email/search") == 6
    assert engine.slice_size("read", "calendar/read") == 5


def test_principal_owner_policy_uses_agent_entities() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("no-mallory-payments")\n'
                'forbid (principal, action == Action::"act", resource is Tool)\n'
                'when { principal.owner == "mallory@example.com"\n'
                '       && resource.risk.contains("payment") };'
            )
        ]
    )
    pay = {"destinations": ["account:acme"], "destinations_explicit": ["account:acme"]}
    # Before entities exist, the policy's attribute access errors: fail closed.
    before = engine.evaluate(call("act", "payments/transfer", agent=OTHER_AGENT, **pay))
    assert before.reasons == (POLICY_ERROR,)

    engine.set_entities(AGENTS, TOOLS)
    denied = engine.evaluate(call("act", "payments/transfer", agent=OTHER_AGENT, **pay))
    # A plain forbid alongside the approval policy: a deny, no approval path.
    assert denied.reasons == ("approval-high-risk-act", "no-mallory-payments")
    assert denied.approval_reasons == () and denied.approval_quorum == 0
    # Only the approval policy fired: approval required, never allowed by policy.
    waiting = engine.evaluate(call("act", "payments/transfer", agent=AGENT, **pay))
    assert not waiting.allowed
    assert waiting.approval_reasons == ("approval-high-risk-act",)
    assert waiting.approval_quorum == 1
    assert engine.evaluate(call("act", "email/send", agent=OTHER_AGENT)).allowed
    unknown = engine.evaluate(call("act", "payments/transfer", agent="spiffe://x/agent/new"))
    assert not unknown.allowed
    assert unknown.reasons == ("approval-high-risk-act", POLICY_ERROR)
    assert unknown.approval_reasons == ()  # an error never turns into an approval path


def test_tool_attributes_are_visible() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("acts-are-act-tools")\n'
                "forbid (principal, action, resource)\n"
                'when { action == Action::"act" && resource.privilege != "act" };'
            )
        ]
    )
    engine.set_entities([], TOOLS)
    assert engine.evaluate(call("act", "email/send")).allowed
    assert engine.evaluate(call("act", "calendar/read")).reasons == ("acts-are-act-tools",)


def test_bad_entities_are_refused_and_keep_the_old_ones() -> None:
    engine = PolicyEngine()
    engine.set_entities(AGENTS, TOOLS)
    with pytest.raises(InvalidRequest):
        engine.set_entities([AGENTS[0], AGENTS[0]], [])
    with pytest.raises(InvalidRequest):
        engine.set_entities([], [ToolEntity("nogroup", "read")])
    with pytest.raises(InvalidRequest):
        engine.set_entities([], [ToolEntity("/x", "read")])
    engine.load(
        [src('@id("owner") forbid (principal, action, resource) when { principal.owner == "x" };')]
    )
    assert engine.evaluate(call()).allowed  # AGENT still known


# --------------------------------------------------------------------------- slicing


def test_slice_is_smaller_than_the_whole_set() -> None:
    engine = PolicyEngine()
    policies = "\n".join(
        f'@id("tool-{i}") forbid (principal, action == Action::"act", resource == Tool::"srv{i}/t")'
        " when { context.hour_utc == 99 };"
        for i in range(40)
    )
    engine.load([src(policies)])
    total = len(engine.policy_ids())
    assert total == len(BASELINE_IDS) + 40
    assert engine.slice_size("act", "srv3/t") == 9
    assert engine.slice_size("read", "srv3/t") == 5
    assert engine.slice_size("act", "other/t") == 8
    result = engine.evaluate(call("act", "srv3/t"))
    assert result.allowed
    assert result.evaluated == 9
    assert engine.evaluate(call("act", "srv3/t"), sliced=False).evaluated == total


def test_action_list_and_is_in_scopes_slice() -> None:
    engine = PolicyEngine(baseline="")
    engine.load(
        [
            src(
                '@id("p1") permit (principal, action in [Action::"read", Action::"write"], '
                'resource is Tool in ToolGroup::"docs");\n'
                '@id("p2") permit (principal, action in Action::"act", '
                'resource in Tool::"docs/x");\n'
                '@id("p3") permit (principal, action, resource is Tool);\n'
            )
        ]
    )
    assert engine.slice_size("read", "docs/a") == 2
    assert engine.slice_size("write", "docs/x") == 2
    assert engine.slice_size("act", "docs/a") == 1
    assert engine.slice_size("act", "docs/x") == 2
    assert engine.slice_size("read", "mail/a") == 1


GROUPS = [f"g{i}" for i in range(6)]
TOOL_NAMES = [f"{g}/t{j}" for g in GROUPS for j in range(5)]
AGENT_IDS = [
    *(f"spiffe://example.org/agent/a{i}" for i in range(4)),
    "spiffe://partner.example/agent/p0",
]
PERMIT_CONDITIONS = [
    "true",
    "context.hour_utc < {hour}",
    "context.anomaly_score < {score}",
    "context.approved || context.budget_remaining > 3",
    'principal.owner == "owner-1"',
    'resource.privilege == "act"',
    "context.same_trust_domain",
    'resource.trust_domain == "partner.example"',
    "context.child_budget < {budget}",
]
FORBID_CONDITIONS = [
    "context.hour_utc == {hour}",
    "context.anomaly_score > 90 && context.anomaly_score > {score}",
    "context.budget_remaining < 1",
    'context.taint_flags.contains("pii") && context.hour_utc == {hour}',
    'context.destinations_by_pattern.contains("email:x@y.test") && context.delegated',
    "context.delegated && context.task.delegation_depth > 2",
    'principal.owner == "owner-3" && context.hour_utc == {hour}',
    'resource.risk.contains("payment") && context.anomaly_score > {score}',
    'context.taint_flags.contains("pii")',
    "context.depth > 2 && context.child_sensitivity > 1",
    "context.taint_sensitivity >= 3 && principal.owner != resource.owner",
    'context.child_tools.contains("g0/t1") && context.parent_task.delegation_depth > 0',
]
ERRORING = "context.budget_remaining * 9223372036854775807 > {budget}"  # errors when budget > 1
ERRORING_DELEGATE = "context.child_budget * 9223372036854775807 > {budget}"


@functools.cache
def _validation_schema() -> Any:
    import cedarpy

    from remit.core.policy_pack import SCHEMA

    return cedarpy.Schema.from_str(SCHEMA)


def _valid(policy: str) -> bool:
    """Whether the policy fits the schema (the generator retries until it does)."""
    import cedarpy

    return bool(cedarpy.validate_policies(policy, _validation_schema()).validation_passed)


def _random_scope_policy(rng: random.Random, i: int) -> str:
    while True:
        policy = _random_scope_candidate(rng, i)
        if _valid(policy):
            return policy


def _random_scope_candidate(rng: random.Random, i: int) -> str:
    actions = rng.sample([*ACTIONS, "delegate"], rng.randint(1, 2))
    action = rng.choice(
        [
            "action",
            "action",
            TOOL_ACTIONS,
            f'action == Action::"{actions[0]}"',
            f'action in Action::"{actions[0]}"',
            "action in [" + ", ".join(f'Action::"{a}"' for a in actions) + "]",
        ]
    )
    group = rng.choice(GROUPS)
    tool = rng.choice(TOOL_NAMES)
    agent = rng.choice(AGENT_IDS)
    resource = rng.choice(
        [
            "resource",
            f'resource == Tool::"{tool}"',
            f'resource == Tool::"{tool}"',
            f'resource in Tool::"{tool}"',
            f'resource in ToolGroup::"{group}"',
            f'resource in ToolGroup::"{group}"',
            "resource is Tool",
            f'resource is Tool in ToolGroup::"{group}"',
            f'resource == Agent::"{agent}"',
            f'resource in Agent::"{agent}"',
            "resource is Agent",
            f'resource is Agent in Agent::"{agent}"',
        ]
    )
    principal = rng.choice(["principal", "principal", f'principal == Agent::"{AGENT_IDS[0]}"'])
    effect = rng.choice(["permit", "forbid"])
    roll = rng.random()
    if roll < 0.03:
        condition, resource = ERRORING, f'resource == Tool::"{tool}"'
    elif roll < 0.05:
        condition, action = ERRORING_DELEGATE, 'action == Action::"delegate"'
    else:
        condition = rng.choice(PERMIT_CONDITIONS if effect == "permit" else FORBID_CONDITIONS)
    condition = condition.format(
        hour=rng.randint(0, 23), score=rng.randint(0, 100), budget=rng.randint(0, 12)
    )
    mode = '@mode("shadow") ' if rng.random() < 0.1 else ""
    return (
        f'@id("gen-{i}") {mode}{effect} ({principal}, {action}, {resource})\n'
        f"when {{ {condition} }};"
    )


def _random_request(rng: random.Random) -> PolicyRequest:
    agent = rng.choice([*AGENT_IDS, "spiffe://example.org/agent/unknown"])
    if rng.random() < 0.25:
        receiver = rng.choice([*AGENT_IDS, "spiffe://example.org/agent/unknown"])
        return PolicyRequest.delegation(
            agent,
            receiver,
            delegate_context(
                child_budget=rng.randint(0, 12),
                child_sensitivity=rng.randint(0, 3),
                depth=rng.randint(1, 4),
                same_trust_domain=agent.split("/")[2] == receiver.split("/")[2],
                taint_sensitivity=rng.randint(0, 3),
                taint_flags=rng.choice([[], ["pii"], ["untrusted"]]),
                child_tools=rng.choice([[], ["g0/t1"], ["g1/t2", "g0/t1"]]),
                parent_task={"delegation_depth": rng.randint(0, 3)},
            ),
        )
    tool = rng.choice([*TOOL_NAMES, "g0/unknown", "nogroup", "zz/t0"])
    return PolicyRequest(
        agent_id=agent,
        action=rng.choice(ACTIONS),
        tool=tool,
        context=context(
            hour_utc=rng.randint(0, 23),
            anomaly_score=rng.randint(0, 100),
            budget_remaining=rng.randint(0, 12),
            taint_flags=rng.choice([[], ["pii"], ["untrusted"]]),
            destinations_by_pattern=rng.choice([[], ["email:x@y.test"]]),
            approved=rng.random() < 0.3,
            delegated=rng.random() < 0.3,
            tool_in_mandate=rng.random() < 0.8,
            task={"delegation_depth": rng.randint(0, 3)},
        ),
    )


def _decision(result: PolicyResult) -> tuple[object, ...]:
    return (
        result.allowed,
        result.reasons,
        tuple(sorted(result.errors)),
        result.shadow_reasons,
        result.version,
    )


def test_sliced_and_unsliced_evaluation_agree() -> None:
    rng = random.Random(20261128)
    engine = PolicyEngine()
    files = [
        src("\n".join(_random_scope_policy(rng, n * 100 + i) for i in range(100)), f"gen{n}.cedar")
        for n in range(4)
    ]
    engine.load(files)
    agents = [AgentEntity(a, f"owner-{i}") for i, a in enumerate(AGENT_IDS)]
    tools = [
        ToolEntity(t, rng.choice(ACTIONS), frozenset(rng.sample(["payment", "external"], 1)))
        for t in TOOL_NAMES[:-3]  # a few tools stay unknown to Cedar
    ]
    engine.set_entities(agents, tools)
    total = len(engine.policy_ids())
    assert total == len(BASELINE_IDS) + 400

    outcomes: set[tuple[bool, bool, bool]] = set()
    delegations: set[tuple[bool, bool]] = set()
    sizes: list[int] = []
    for _ in range(800):
        request = _random_request(rng)
        sliced = engine.evaluate(request)
        whole = engine.evaluate(request, sliced=False)
        assert _decision(sliced) == _decision(whole), request
        assert whole.evaluated == total
        sizes.append(sliced.evaluated)
        outcomes.add((sliced.allowed, POLICY_ERROR in sliced.reasons, bool(sliced.shadow_reasons)))
        if request.resource_agent is not None:
            delegations.add((sliced.allowed, POLICY_ERROR in sliced.reasons))
    # The corpus exercises allows, denies, errors and shadow reports, on small slices.
    assert {(True, False, False), (False, False, False), (False, True, False)} <= outcomes
    assert any(shadow for _, _, shadow in outcomes)
    assert {(True, False), (False, False), (False, True)} <= delegations
    assert max(sizes) < total / 2


def test_slice_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import remit.core.policy as policy_module

    monkeypatch.setattr(policy_module, "SLICE_CACHE_MAX", 3)
    engine = PolicyEngine()
    for i in range(10):
        assert engine.evaluate(call(tool=f"s{i}/t")).allowed
    compiled = engine._state.compiled
    assert len(compiled.slices) == 3
    assert len(compiled.by_members) <= 3


# --------------------------------------------------------------------------- shadow


SHADOW = """
@id("shadow-no-acts-at-night") @mode("shadow")
forbid (principal, action == Action::"act", resource)
when { context.hour_utc < 6 };

@id("enforced-anomaly") @mode("enforce")
forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource)
when { context.anomaly_score >= 80 };
"""


def test_shadow_forbid_reports_but_does_not_decide() -> None:
    engine = PolicyEngine()
    engine.load([src(SHADOW)])
    result = engine.evaluate(call("act", "email/send", hour_utc=3))
    assert result.allowed
    assert result.reasons == ("permit-within-mandate",)
    assert result.shadow_reasons == ("shadow-no-acts-at-night",)
    assert result.evaluated == 10
    assert explain(result) == (
        "allowed by permit-within-mandate [shadow: would be denied by shadow-no-acts-at-night]"
    )
    # Not firing: nothing to report.
    assert engine.evaluate(call("act", "email/send", hour_utc=9)).shadow_reasons == ()
    # Outside the slice (a read): not evaluated at all.
    read = engine.evaluate(call("read", "email/search", hour_utc=3))
    assert read.shadow_reasons == ()
    assert read.evaluated == 6


def test_shadow_forbid_is_reported_alongside_an_enforced_deny() -> None:
    engine = PolicyEngine()
    engine.load([src(SHADOW)])
    result = engine.evaluate(call("act", "email/send", hour_utc=3, anomaly_score=90))
    assert not result.allowed
    assert result.reasons == ("enforced-anomaly",)
    assert result.shadow_reasons == ("shadow-no-acts-at-night",)


def test_shadow_permit_cannot_allow() -> None:
    engine = PolicyEngine()
    engine.load([src('@id("wide") @mode("shadow") permit (principal, action, resource);')])
    result = engine.evaluate(call(tool_in_mandate=False))
    assert not result.allowed
    assert result.reasons == ("mandate-tool-scope",)
    assert result.shadow_reasons == ()


def test_erroring_shadow_policy_does_not_deny() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("shadow-overflow") @mode("shadow") forbid (principal, action in '
                '[Action::"read", Action::"write", Action::"act"], resource)\n'
                "when { context.budget_remaining * 9223372036854775807 > 0 };"
            )
        ]
    )
    result = engine.evaluate(call())
    assert result.allowed
    assert result.errors == ()
    assert result.shadow_reasons == (POLICY_ERROR,)


# --------------------------------------------------------------------------- threads


def test_evaluate_is_consistent_while_versions_swap() -> None:
    engine = PolicyEngine()
    night = (
        '@id("{id}") forbid (principal, action == Action::"read", resource) '
        "when {{ context.hour_utc < 6 }};"
    )
    set_a = [src(night.format(id="night-a"))]
    set_b = [src(night.format(id="night-b"))]
    version_a = engine.load(set_a)
    version_b = engine.load(set_b)
    expected = {version_a: ("night-a",), version_b: ("night-b",)}
    failures: list[Any] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            result = engine.evaluate(call(hour_utc=2))
            if expected.get(result.version) != result.reasons:
                failures.append(result)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for i in range(30):
            engine.load(set_a if i % 2 else set_b)
            engine.set_entities(AGENTS if i % 3 else [], TOOLS)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []


# ---------------------------------------------------------------------- approval policies


def test_approval_annotation_needs_a_forbid() -> None:
    engine = PolicyEngine()
    with pytest.raises(PolicyInvalid, match="goes on a forbid only"):
        engine.load([src('@id("p") @approval("required") permit (principal, action, resource);')])
    with pytest.raises(PolicyInvalid, match="goes on a forbid only"):
        engine.load([src('@id("p") @approval("maybe") forbid (principal, action, resource);')])
    with pytest.raises(PolicyInvalid, match="@quorum must be 1 to 5"):
        engine.load(
            [
                src(
                    '@id("p") @approval("required") @quorum("9") '
                    "forbid (principal, action, resource);"
                )
            ]
        )


def test_approval_quorum_is_the_largest_asked_for() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("two-approvers-for-email") @approval("required") @quorum("2")\n'
                'forbid (principal, action == Action::"act", resource == Tool::"email/send");\n'
                '@id("shadow-approval") @approval("required") @quorum("5") @mode("shadow")\n'
                'forbid (principal, action == Action::"act", resource);'
            )
        ]
    )
    result = engine.evaluate(call("act", "email/send"))
    assert not result.allowed
    assert result.approval_reasons == ("two-approvers-for-email",)
    assert result.approval_quorum == 2  # the shadow policy never decides, not even quorum
    assert result.shadow_reasons == ("shadow-approval",)  # reported like any shadow forbid
    assert engine.evaluate(call("act", "calendar/write")).approval_reasons == ()


# --------------------------------------------------------------------------- delegation

PARTNER = "spiffe://partner.example/agent/helper"
DELEGATION_AGENTS = [
    AgentEntity(AGENT, "alice@example.com"),
    AgentEntity(OTHER_AGENT, "mallory@example.com"),
    AgentEntity(PARTNER, "alice@example.com"),
]


def test_helper_delegate_context_covers_every_schema_attribute() -> None:
    from remit.core.policy_pack import DELEGATE_CONTEXT_ATTRIBUTES

    assert set(delegate_context()) == set(DELEGATE_CONTEXT_ATTRIBUTES)


def test_agent_entity_trust_domain_defaults_to_the_spiffe_id() -> None:
    assert AgentEntity(AGENT, "a").trust_domain == "example.org"
    assert AgentEntity(AGENT, "a", "other.example").trust_domain == "other.example"
    assert AgentEntity("not-spiffe", "a").trust_domain == ""


def test_delegation_in_one_trust_domain_is_permitted() -> None:
    engine = PolicyEngine()
    engine.set_entities(DELEGATION_AGENTS, TOOLS)
    result = engine.evaluate(delegation())
    assert result.allowed
    assert result.reasons == ("permit-delegation-same-trust-domain",)
    # Only the two delegation policies are in its slice; the tool ones never see it.
    assert result.evaluated == 2
    assert engine.slice_size("delegate", "", resource_agent=OTHER_AGENT) == 2


def test_delegation_across_trust_domains_needs_an_operator_permit() -> None:
    engine = PolicyEngine()
    engine.set_entities(DELEGATION_AGENTS, TOOLS)
    across = delegation(receiver=PARTNER, same_trust_domain=False)
    assert engine.evaluate(across).reasons == (DEFAULT_DENY,)
    engine.load(
        [
            src(
                '@id("mailer-may-use-partner")\n'
                f'permit (principal == Agent::"{AGENT}", action == Action::"delegate", resource)\n'
                'when { resource.trust_domain == "partner.example" };'
            )
        ]
    )
    result = engine.evaluate(across)
    assert result.allowed and result.reasons == ("mailer-may-use-partner",)
    # The permit names the mailer only.
    other = delegation(OTHER_AGENT, PARTNER, same_trust_domain=False)
    assert not engine.evaluate(other).allowed


def test_restricted_taint_does_not_go_to_another_owner() -> None:
    engine = PolicyEngine()
    engine.set_entities(DELEGATION_AGENTS, TOOLS)
    result = engine.evaluate(delegation(taint_sensitivity=3))
    assert not result.allowed
    assert result.reasons == ("no-restricted-data-to-other-owners",)
    assert engine.evaluate(delegation(taint_sensitivity=2)).allowed
    same_owner = delegation(receiver=PARTNER, taint_sensitivity=3, same_trust_domain=True)
    assert engine.evaluate(same_owner).allowed


def test_delegation_to_an_unknown_agent_fails_closed() -> None:
    engine = PolicyEngine()
    engine.set_entities(DELEGATION_AGENTS, TOOLS)
    ghost = "spiffe://example.org/agent/ghost"
    # A policy reading the unknown agent's attributes errors: deny.
    result = engine.evaluate(delegation(receiver=ghost, taint_sensitivity=3))
    assert not result.allowed
    assert result.reasons == (POLICY_ERROR,)


def test_edge_scoped_forbid_is_in_the_edge_slice_only() -> None:
    engine = PolicyEngine()
    engine.load(
        [
            src(
                '@id("mailer-not-to-reporter")\n'
                f'forbid (principal == Agent::"{AGENT}", action == Action::"delegate",\n'
                f'        resource == Agent::"{OTHER_AGENT}");\n'
                '@id("nobody-to-partner")\n'
                f'forbid (principal, action, resource in Agent::"{PARTNER}");'
            )
        ]
    )
    engine.set_entities(DELEGATION_AGENTS, TOOLS)
    assert engine.slice_size("delegate", "", resource_agent=OTHER_AGENT) == 3
    assert engine.slice_size("delegate", "", resource_agent=PARTNER) == 3
    assert engine.slice_size("delegate", "", resource_agent=AGENT) == 2
    assert engine.slice_size("read", "email/search") == 5  # tool slices are unchanged
    result = engine.evaluate(delegation())
    assert result.reasons == ("mailer-not-to-reporter",)
    assert engine.evaluate(delegation(), sliced=False).reasons == ("mailer-not-to-reporter",)
    assert engine.evaluate(delegation(OTHER_AGENT, AGENT)).allowed
    assert engine.evaluate(delegation(receiver=PARTNER)).reasons == ("nobody-to-partner",)
    assert engine.evaluate(call()).allowed


def test_unscoped_policy_reading_tool_context_is_refused_with_a_hint() -> None:
    message = _refused(
        PolicyEngine(),
        src('@id("late") forbid (principal, action, resource) when { context.hour_utc > 22 };'),
    )
    assert "late" in message and 'Action::"delegate"' in message
    assert "scope its action to the tool actions" in message
    # Scoped to the tool actions, it loads and leaves delegation alone.
    engine = PolicyEngine()
    engine.load(
        [
            src(
                f'@id("late") forbid (principal, {TOOL_ACTIONS}, resource) when {{ context.hour_utc > 22 }};'
            )
        ]
    )
    engine.set_entities(DELEGATION_AGENTS, TOOLS)
    assert engine.evaluate(call(hour_utc=23)).reasons == ("late",)
    assert engine.evaluate(delegation()).allowed


def test_request_naming_both_a_tool_and_an_agent_denies(engine: PolicyEngine) -> None:
    request = PolicyRequest(AGENT, "delegate", "email/send", delegate_context(), OTHER_AGENT)
    result = engine.evaluate(request)
    assert not result.allowed and result.reasons == (POLICY_ERROR,)
    # A delegate context on a tool action, or a tool context on delegate: schema errors.
    wrong = PolicyRequest(AGENT, "read", "", delegate_context(), OTHER_AGENT)
    assert engine.evaluate(wrong).reasons == (POLICY_ERROR,)
    mixed = PolicyRequest.delegation(AGENT, OTHER_AGENT, context())
    assert engine.evaluate(mixed).reasons == (POLICY_ERROR,)
