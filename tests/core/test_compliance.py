"""The compliance report core: the control catalog, statuses from evidence, and the
act-tool policy coverage evaluated by real Cedar."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from remit.core.catalog import catalog_from_data
from remit.core.compliance import (
    CONTROLS,
    FRAMEWORKS,
    GENERIC_POLICIES,
    ActCoverage,
    Evidence,
    act_policy_coverage,
    build_metrics,
    compliance_report,
    item_status,
)
from remit.core.identity import Agent, AgentStatus, Mode, ceiling_from_data
from remit.core.policy import AgentEntity, PolicyEngine, PolicySource, ToolEntity
from remit.core.policy_pack import BASELINE_IDS

CATALOG = yaml.safe_load(
    """
tools:
  - {name: docs/read, privilege: read, labels: [public]}
  - {name: email/send, privilege: act, destinations: {to: email}}
  - {name: billing/refund, privilege: act, risk: [payment, no-destination]}
  - {name: chat/post, privilege: act, destinations: {channel: channel}}
  - {name: shell/run, privilege: act, risk: [no-destination]}
"""
)


def _agent(name: str, tools: list[str]) -> Agent:
    catalog = catalog_from_data(CATALOG)
    ceiling = ceiling_from_data(
        {
            "tools": tools,
            "privileges": ["read", "act"],
            "destinations": ["email:*"],
            "max_sensitivity": "confidential",
        },
        catalog,
    )
    return Agent(
        f"spiffe://acme.example/agent/{name}",
        name,
        "sam@acme.example",
        "",
        ceiling,
        AgentStatus.ACTIVE,
        Mode.ENFORCE,
        0.0,
        0.0,
    )


def _engine(agents: list[Agent]) -> PolicyEngine:
    """An engine with the entities the service would give it (agents, catalog tools)."""
    catalog = catalog_from_data(CATALOG)
    engine = PolicyEngine()
    engine.set_entities(
        [AgentEntity(a.agent_id, a.owner) for a in agents],
        [ToolEntity(s.name, s.privilege.value, s.risk) for s in catalog.tools.values()],
    )
    return engine


def clean_evidence(**changes: Any) -> Evidence:
    base = Evidence(
        generated_at=1_800_000_000.0,
        window_days=30,
        identity_ttl_seconds=3600,
        task_token_max_ttl_seconds=900,
        max_task_ttl_seconds=3600,
        join_token_ttl_seconds=600,
        approval_ttl_seconds=600,
        lease_ttl_seconds=900.0,
        tasks=4,
        tasks_request_derived=1,
        tasks_wildcard=1,
        tasks_delegated=0,
        task_ttls=(600, 300, 1200, 900),
        agents=1,
        agents_active=1,
        owner_required=True,
        agents_without_owner=(),
        owners_unknown=(),
        agents_shadow=(),
        agents_suspended=(),
        kill_switch_all=False,
        kill_switch_agents=(),
        secrets=1,
        stale_secrets=(),
        leases=0,
        long_leases=(),
        admin_tokens_active=1,
        admin_tokens_no_expiry=(),
        admin_tokens_old=(),
        grants=2,
        unused_grants=(),
        policy_version="pv_x",
        operator_policies=0,
        act_coverage=ActCoverage(("billing/refund",), {"billing/refund": ("a",)}, "pv_x"),
        catalog_tools=2,
        shadow_tools=(),
        pinned_tools=0,
        decisions={"allow": 3, "deny": 1},
        approvals={},
        audit_ok=True,
        audit_records=10,
        audit_head_seq=10,
        audit_checkpoints=1,
        audit_last_checkpoint_seq=10,
        audit_last_checkpoint_ts=1_800_000_000.0,
        audit_problems=(),
    )
    return replace(base, **changes)


def _status(report: Any, item: str) -> str:
    for _, items in report.frameworks:
        for result in items:
            if result.id == item:
                return str(result.status)
    raise KeyError(item)


def test_catalog_is_complete_and_consistent() -> None:
    ids = {f.id: [i.id for i in f.items] for f in FRAMEWORKS}
    assert ids["owasp-asi-2026"] == [f"ASI{n:02d}" for n in range(1, 11)]
    assert ids["owasp-nhi-2025"] == [f"NHI{n}" for n in range(1, 11)]
    assert ids["nist-ai-rmf-1.0"] == ["GOVERN", "MAP", "MEASURE", "MANAGE"]
    assert ids["csa-maestro"] == [f"L{n}" for n in range(1, 8)]
    metrics = set(build_metrics(clean_evidence()))
    for framework in FRAMEWORKS:
        for item in framework.items:
            assert item.coverage in ("addressed", "partial", "not_addressed")
            assert set(item.controls) <= set(CONTROLS)
            assert set(item.metrics) <= metrics
            # An item Remit addresses (fully or partly) names its controls and evidence.
            assert (item.coverage == "not_addressed") == (not item.controls)
    assert set(BASELINE_IDS) >= GENERIC_POLICIES
    titles = {i.id: i.title for f in FRAMEWORKS for i in f.items}
    assert titles["ASI01"] == "Agent Goal Hijack"
    assert titles["NHI7"] == "Long-Lived Secrets"
    assert titles["L4"] == "Deployment and Infrastructure"


def test_status_rules() -> None:
    assert item_status("not_addressed", ["x"]) == "not-addressed"
    assert item_status("addressed", ["x"]) == "attention"
    assert item_status("partial", ["x"]) == "attention"
    assert item_status("partial", []) == "partial"
    assert item_status("addressed", []) == "met"


def test_clean_evidence_has_no_findings_and_honest_gaps() -> None:
    report = compliance_report(clean_evidence())
    assert all(not m.findings for m in report.metrics.values())
    assert _status(report, "ASI02") == "met"
    assert _status(report, "NHI7") == "met"
    assert _status(report, "ASI01") == "partial"
    assert _status(report, "NHI6") == "not-addressed"
    assert _status(report, "L1") == "not-addressed"
    counts = report.counts()
    assert sum(counts.values()) == 10 + 10 + 4 + 7
    task_ttls = report.metrics["task_ttls"].value
    assert task_ttls["max_seconds"] == 1200 and task_ttls["median_seconds"] == 750.0
    assert report.metrics["request_derived"].value["share"] == 0.25


@pytest.mark.parametrize(
    ("changes", "metric", "items"),
    [
        ({"stale_secrets": (("old.key", 120),)}, "long_lived_credentials", ["NHI7", "ASI03"]),
        ({"long_leases": (("lse_1", 7200.0),)}, "long_lived_credentials", ["NHI7"]),
        ({"admin_tokens_no_expiry": ("ops",)}, "long_lived_credentials", ["NHI4"]),
        ({"owners_unknown": (("bot", "ghost"),)}, "owners", ["ASI03", "NHI1", "GOVERN"]),
        ({"unused_grants": (("bot", "email/send"),)}, "unused_grants", ["NHI5", "ASI02"]),
        (
            {"audit_ok": False, "audit_problems": ("record 3 was altered",)},
            "audit_chain",
            ["ASI10", "L5", "MEASURE"],
        ),
        ({"agents_shadow": ("bot",)}, "enforcement", ["ASI08", "L5"]),
        ({"identity_ttl_seconds": 86_400}, "token_ttls", ["NHI4", "NHI7"]),
        (
            {"act_coverage": ActCoverage(("a/b", "c/d"), {"a/b": ("x",)}, "pv")},
            "act_policy_coverage",
            ["ASI02", "NHI5"],
        ),
    ],
)
def test_a_finding_turns_its_items_to_attention(
    changes: dict[str, Any], metric: str, items: list[str]
) -> None:
    report = compliance_report(clean_evidence(**changes))
    assert report.metrics[metric].findings
    for item in items:
        assert _status(report, item) == "attention", item
    assert _status(report, "NHI6") == "not-addressed"  # never claimed, whatever the evidence


def test_inventory_findings_reach_nhi_items() -> None:
    inventory = {
        "credentials": 3,
        "max_age_days": 90,
        "shared": [{"id": "svc-crm", "agents": ["a", "b"]}],
        "stale": [],
        "missing_owner": [],
        "unbrokered_credentials": [],
        "unknown_users": [],
    }
    report = compliance_report(clean_evidence(inventory=inventory))
    assert _status(report, "NHI9") == "attention"
    assert "svc-crm" in " ".join(report.metrics["inventory"].findings)
    assert _status(report, "NHI9") != _status(compliance_report(clean_evidence()), "NHI9")


def test_report_data_is_json_shaped() -> None:
    data = compliance_report(clean_evidence()).to_data()
    assert data["report"] == "remit-compliance"
    assert [f["id"] for f in data["frameworks"]] == [f.id for f in FRAMEWORKS]
    assert data["metrics"]["audit_chain"]["value"]["ok"] is True


def test_act_policy_coverage_with_real_cedar() -> None:
    catalog = catalog_from_data(CATALOG)
    agents = [_agent("bot", ["docs/read", "email/send", "billing/refund", "chat/post"])]
    engine = _engine(agents)
    baseline = act_policy_coverage(engine, catalog, agents)
    assert baseline.tools == ("billing/refund", "chat/post", "email/send", "shell/run")
    # The baseline alone: only the payment-tagged tool has a tool-specific control.
    assert dict(baseline.covered) == {"billing/refund": ("approval-high-risk-act",)}
    assert baseline.share == 0.25

    engine.load(
        [
            PolicySource(
                "ops.cedar",
                """
@id("no-chat-after-untrusted")
forbid (principal, action == Action::"act", resource == Tool::"chat/post")
when { context.taint_flags.contains("untrusted") };

@id("no-shell-at-night")
forbid (principal, action == Action::"act", resource in ToolGroup::"shell")
when { context.hour_utc < 6 };

@id("shadow-email-limit")
@mode("shadow")
forbid (principal, action == Action::"act", resource == Tool::"email/send");
""",
            )
        ]
    )
    covered = act_policy_coverage(engine, catalog, agents)
    assert dict(covered.covered) == {
        "billing/refund": ("approval-high-risk-act",),
        "chat/post": ("no-chat-after-untrusted",),
        "shell/run": ("no-shell-at-night",),
    }
    assert covered.uncovered == ("email/send",)  # a shadow policy never decides
    assert covered.policy_version == engine.version


def test_coverage_is_per_agent() -> None:
    """A forbid that names one agent covers the tool only if every caller is covered."""
    catalog = catalog_from_data(CATALOG)
    one = [_agent("a", ["email/send"])]
    two = [*one, _agent("b", ["email/send"])]
    engine = _engine(two)
    engine.load(
        [
            PolicySource(
                "ops.cedar",
                """
@id("bot-a-no-email")
forbid (principal == Agent::"spiffe://acme.example/agent/a",
        action == Action::"act", resource == Tool::"email/send");
""",
            )
        ]
    )
    assert "email/send" in act_policy_coverage(engine, catalog, one).covered
    assert "email/send" not in act_policy_coverage(engine, catalog, two).covered
