"""Effective permissions: the real Cedar policy set over the context grid."""

from __future__ import annotations

import pytest

from remit.core.analysis import DESTINATION_CLASSES, TAINTS, Permission, effective_permissions
from remit.core.catalog import Catalog, catalog_from_data
from remit.core.identity import Agent, AgentStatus, Mode, ceiling_from_data
from remit.core.labels import Sensitivity
from remit.core.mandate import Mandate
from remit.core.policy import AgentEntity, PolicyEngine, PolicySource, ToolEntity

AGENT_ID = "spiffe://acme.example/agent/support"
EXFIL = {"exfiltration-after-untrusted-read", "exfiltration-after-confidential-read"}


@pytest.fixture
def catalog() -> Catalog:
    return catalog_from_data(
        {
            "tools": [
                {"name": "ticket/read", "privilege": "read", "labels": ["internal", "untrusted"]},
                {"name": "crm/read", "privilege": "read", "labels": ["confidential", "pii"]},
                {"name": "email/send", "privilege": "act", "destinations": {"to": "email"}},
                {"name": "notes/write", "privilege": "write", "labels": ["internal"]},
            ]
        }
    )


def make_agent(catalog: Catalog, **ceiling: object) -> Agent:
    data: dict[str, object] = {
        "tools": ["ticket/read", "crm/read", "email/send"],
        "privileges": ["read", "act"],
        "destinations": ["email:*"],
        "max_sensitivity": "confidential",
        **ceiling,
    }
    return Agent(
        agent_id=AGENT_ID,
        name="support",
        owner="sam@acme.example",
        description="",
        ceiling=ceiling_from_data(data, catalog),
        status=AgentStatus.ACTIVE,
        mode=Mode.ENFORCE,
        created_at=0.0,
        updated_at=0.0,
    )


def make_engine(catalog: Catalog, *policies: str) -> PolicyEngine:
    engine = PolicyEngine()
    engine.load([PolicySource(f"ops{i}.cedar", text) for i, text in enumerate(policies)])
    engine.set_entities(
        [AgentEntity(AGENT_ID, "sam@acme.example")],
        [ToolEntity(s.name, s.privilege.value, s.risk) for s in catalog.tools.values()],
    )
    return engine


def grid(found: list[Permission]) -> dict[tuple[str, str, str], Permission]:
    return {(p.tool, p.destination_class, p.taint): p for p in found}


def test_only_tools_within_the_ceiling_and_the_full_grid(catalog: Catalog) -> None:
    found = effective_permissions(make_engine(catalog), catalog, make_agent(catalog))
    assert sorted({p.tool for p in found}) == ["crm/read", "email/send", "ticket/read"]
    assert len(found) == 2 * len(TAINTS) + len(DESTINATION_CLASSES) * len(TAINTS)
    # Read tools have no destination arguments: only the "none" class.
    assert {p.destination_class for p in found if p.privilege == "read"} == {"none"}


def test_baseline(catalog: Catalog) -> None:
    by = grid(effective_permissions(make_engine(catalog), catalog, make_agent(catalog)))
    for taint in TAINTS:
        read = by[("ticket/read", "none", taint)]
        assert read.allowed and read.reasons == ("permit-within-mandate",)
        outside = by[("email/send", "outside", taint)]
        assert not outside.allowed and "mandate-destination-scope" in outside.reasons
        assert by[("email/send", "explicit", taint)].allowed
    assert by[("email/send", "by_pattern", "none")].allowed
    untrusted = by[("email/send", "by_pattern", "untrusted")]
    assert not untrusted.allowed
    assert set(untrusted.reasons) == {"exfiltration-after-untrusted-read"}
    confidential = by[("email/send", "by_pattern", "confidential")]
    assert not confidential.allowed
    assert set(confidential.reasons) == {"exfiltration-after-confidential-read"}
    assert not any(set(p.reasons) & EXFIL for p in by.values() if p.allowed)


def test_sensitivity_ceiling_comes_from_the_agent_or_the_mandate(catalog: Catalog) -> None:
    engine = make_engine(catalog)
    low = make_agent(catalog, max_sensitivity="internal")
    crm = grid(effective_permissions(engine, catalog, low))[("crm/read", "none", "none")]
    assert not crm.allowed and "sensitivity-ceiling" in crm.reasons
    mandate = Mandate(
        purpose="test",
        tools=frozenset({"crm/read", "ticket/read"}),
        destinations=(),
        request_derived=(),
        sensitivity_ceiling=Sensitivity.PUBLIC,
        call_budget=10,
        ttl_seconds=60,
        delegation_depth=0,
    )
    found = effective_permissions(engine, catalog, make_agent(catalog), mandate=mandate)
    assert {p.tool for p in found} == {"crm/read", "ticket/read"}
    assert not any(p.allowed for p in found)  # both outputs are above "public"


def test_an_operator_forbid_is_the_reason(catalog: Catalog) -> None:
    engine = make_engine(
        catalog,
        '@id("no-email-after-any-read") forbid (principal, action == Action::"act", '
        'resource == Tool::"email/send") when { context.taint_flags.contains("untrusted") };',
    )
    by = grid(effective_permissions(engine, catalog, make_agent(catalog)))
    explicit = by[("email/send", "explicit", "untrusted")]
    assert not explicit.allowed and explicit.reasons == ("no-email-after-any-read",)
    assert by[("email/send", "explicit", "none")].allowed


def test_matches_a_brute_force_explain_of_each_point(catalog: Catalog) -> None:
    from remit.core.policy_cases import PolicyCase, evaluate_case

    engine = make_engine(catalog)
    agent = make_agent(catalog)
    for p in effective_permissions(engine, catalog, agent):
        facts: dict[str, object] = {
            "task": {"sensitivity_ceiling": int(agent.ceiling.max_sensitivity)},
            "output_sensitivity": int(catalog.tools[p.tool].output_labels.sensitivity),
            "output_flags": sorted(catalog.tools[p.tool].output_labels.flags),
            "taint_flags": ["untrusted"] if p.taint == "untrusted" else [],
            "taint_sensitivity": 2 if p.taint == "confidential" else 0,
        }
        if p.destination_class != "none":
            facts[f"destinations_{p.destination_class}"] = ["email:x@example.com"]
        outcome = evaluate_case(
            engine,
            PolicyCase(
                name="x",
                tool=p.tool,
                action=p.privilege,
                expect="allow",
                agent=AGENT_ID,
                context=facts,
            ),
        )
        assert (outcome.result.allowed, outcome.result.reasons) == (p.allowed, p.reasons)
