"""Blast radius over the tool graph: real Cedar decides every edge and every finding."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remit.core.analysis import effective_permissions
from remit.core.blast_radius import (
    FINDING_KINDS,
    MAX_LISTED_CHAINS,
    SCHEMA_ID,
    SHADOW_REASON,
    BlastRadius,
    Finding,
    ToolUsage,
    blast_radius,
)
from remit.core.catalog import Catalog, catalog_from_data
from remit.core.identity import Agent, AgentStatus, Mode, ceiling_from_data
from remit.core.policy import AgentEntity, PolicyEngine, PolicySource, ToolEntity

LEAD = "spiffe://acme.example/agent/lead"
MAILER = "spiffe://acme.example/agent/mailer"
PARTNER = "spiffe://partner.example/agent/partner-bot"

NO_EMAIL_FOR_LEAD = f"""
@id("lead-sends-no-email")
forbid (principal == Agent::"{LEAD}", action == Action::"act", resource in ToolGroup::"email");
"""
LEAD_NEVER_DELEGATES_TO_MAILER = f"""
@id("lead-never-delegates-to-mailer")
forbid (principal == Agent::"{LEAD}", action == Action::"delegate",
        resource == Agent::"{MAILER}");
"""


@pytest.fixture
def catalog() -> Catalog:
    return catalog_from_data(
        {
            "tools": [
                {"name": "ticket/read", "privilege": "read", "labels": ["internal", "untrusted"]},
                {"name": "crm/read", "privilege": "read", "labels": ["confidential", "pii"]},
                {"name": "crm/export", "privilege": "read", "labels": ["restricted", "pii"]},
                {"name": "notes/write", "privilege": "write", "labels": ["internal"]},
                {"name": "email/send", "privilege": "act", "destinations": {"to": "email"}},
                {"name": "chat/post", "privilege": "act", "destinations": {"channel": "channel"}},
            ]
        }
    )


def make_agent(
    catalog: Catalog,
    agent_id: str,
    tools: list[str],
    *,
    owner: str = "sam@acme.example",
    mode: Mode = Mode.ENFORCE,
    status: AgentStatus = AgentStatus.ACTIVE,
    max_sensitivity: str = "restricted",
) -> Agent:
    ceiling = ceiling_from_data(
        {
            "tools": tools,
            "privileges": ["read", "write", "act"],
            "destinations": ["email:*", "channel:*"],
            "max_sensitivity": max_sensitivity,
        },
        catalog,
    )
    return Agent(
        agent_id=agent_id,
        name=agent_id.rsplit("/", 1)[1],
        owner=owner,
        description="",
        ceiling=ceiling,
        status=status,
        mode=mode,
        created_at=0.0,
        updated_at=0.0,
    )


def lead(catalog: Catalog) -> Agent:
    return make_agent(
        catalog, LEAD, ["ticket/read", "crm/read", "crm/export", "notes/write", "email/send"]
    )


def mailer(catalog: Catalog, **kw: object) -> Agent:
    return make_agent(catalog, MAILER, ["email/send", "chat/post"], **kw)  # type: ignore[arg-type]


def make_engine(catalog: Catalog, agents: list[Agent], *policies: str) -> PolicyEngine:
    engine = PolicyEngine()
    engine.load([PolicySource(f"ops{i}.cedar", text) for i, text in enumerate(policies)])
    engine.set_entities(
        [AgentEntity(a.agent_id, a.owner) for a in agents],
        [ToolEntity(s.name, s.privilege.value, s.risk) for s in catalog.tools.values()],
    )
    return engine


def analyse(
    catalog: Catalog, root: Agent, agents: list[Agent], *policies: str, **kw: object
) -> BlastRadius:
    engine = make_engine(catalog, agents, *policies)
    return blast_radius(engine, catalog, root, agents, **kw)  # type: ignore[arg-type]


def of_kind(report: BlastRadius, kind: str) -> list[Finding]:
    return [f for f in report.findings if f.kind == kind]


def edges(report: BlastRadius, kind: str) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in report.edges if e.kind == kind}


# --------------------------------------------------------------------------- direct reach


def test_direct_reach_is_the_effective_permissions_grid(catalog: Catalog) -> None:
    root = lead(catalog)
    engine = make_engine(catalog, [root])
    report = blast_radius(engine, catalog, root, [root])
    allowed = {p.tool for p in effective_permissions(engine, catalog, root) if p.allowed}
    reached = {e.target.removeprefix("tool:") for e in report.edges if e.source == f"agent:{LEAD}"}
    assert reached == allowed
    assert edges(report, "can_act") == {(f"agent:{LEAD}", "tool:email/send")}
    assert edges(report, "can_write") == {(f"agent:{LEAD}", "tool:notes/write")}
    assert ("tool:email/send", "system:email") in edges(report, "reaches_system")
    assert ("tool:crm/read", "label:confidential") in edges(report, "outputs_label")
    assert ("tool:ticket/read", "label:untrusted") in edges(report, "outputs_label")
    assert ("tool:email/send", "destination:email:by_pattern") in edges(report, "sends_to")
    # The baseline never lets an act go outside the mandate: no such destination node.
    assert "destination:email:outside" not in {n.id for n in report.nodes}
    assert report.direct_systems == ("crm", "email", "notes", "ticket")
    assert report.reachable_systems == report.direct_systems
    assert report.chains == 1 and not report.truncated
    assert report.policy_version == engine.version


def test_act_and_write_reach_per_system(catalog: Catalog) -> None:
    root = lead(catalog)
    report = analyse(catalog, root, [root])
    (act,) = of_kind(report, "act-reach")
    assert act.systems == ("email",)
    assert act.path == (f"agent:{LEAD}", "tool:email/send", "system:email")
    assert "permit-within-mandate" in act.reasons
    # Never outside the mandate; by pattern only on a clean task (the grid says so).
    assert act.destination_classes == ("none", "explicit", "by_pattern")
    assert act.taints == ("none", "untrusted", "confidential")
    (write,) = of_kind(report, "write-reach")
    assert write.systems == ("notes",) and write.tools == ("notes/write",)


def test_baseline_has_no_exfil_path(catalog: Catalog) -> None:
    root = lead(catalog)
    report = analyse(catalog, root, [root, mailer(catalog)])
    assert of_kind(report, "exfil-path") == []


def test_a_shadow_mode_agent_has_exfil_paths(catalog: Catalog) -> None:
    root = replace(lead(catalog), mode=Mode.SHADOW)
    report = analyse(catalog, root, [root])
    paths = of_kind(report, "exfil-path")
    assert paths
    confidential = [
        f
        for f in paths
        if f.taints == ("confidential",) and f.destination_classes == ("by_pattern",)
    ]
    (finding,) = confidential
    assert finding.path == (
        f"agent:{LEAD}",
        "tool:crm/read",
        "tool:email/send",
        "destination:email:by_pattern",
    )
    # Cedar denied it; shadow mode would let it run: both are named.
    assert "exfiltration-after-confidential-read" in finding.reasons
    assert SHADOW_REASON in finding.reasons
    assert finding.severity == "high"
    # Untrusted input (the ticket) to an outside address is a path too.
    assert any(f.taints == ("untrusted",) and f.tools[0] == "ticket/read" for f in paths)


def test_no_exfil_path_without_a_tainting_read(catalog: Catalog) -> None:
    root = make_agent(catalog, LEAD, ["email/send", "notes/write"], mode=Mode.SHADOW)
    report = analyse(catalog, root, [root])
    assert of_kind(report, "exfil-path") == []
    assert of_kind(report, "act-reach")


# --------------------------------------------------------------------------- delegation


def test_a_delegation_edge_that_widens_reach(catalog: Catalog) -> None:
    root, other = lead(catalog), mailer(catalog)
    # Without the operator forbid the mailer adds nothing the lead cannot do itself.
    plain = analyse(catalog, root, [root, other])
    assert (f"agent:{LEAD}", f"agent:{MAILER}") in edges(plain, "delegates_to")
    assert of_kind(plain, "delegation-widening") == []

    report = analyse(catalog, root, [root, other], NO_EMAIL_FOR_LEAD)
    assert "email" not in report.direct_systems
    assert "email" in report.reachable_systems
    (widening,) = of_kind(report, "delegation-widening")
    assert widening.path == (f"agent:{LEAD}", f"agent:{MAILER}")
    assert widening.systems == ("email",)
    assert widening.reasons == ("permit-delegation-same-trust-domain",)
    # Only tools in both ceilings can be handed over: never chat/post, which the lead lacks.
    assert widening.tools == ("email/send",)
    assert (f"agent:{MAILER}", "tool:email/send") in edges(report, "can_act")
    assert not any(e.target == "tool:chat/post" for e in report.edges)
    act = [f for f in of_kind(report, "act-reach") if f.systems == ("email",)]
    assert [f.path[:2] for f in act] == [(f"agent:{LEAD}", f"agent:{MAILER}")]


def test_exfil_through_delegation_and_a_policy_that_closes_it(catalog: Catalog) -> None:
    root, shadowed = lead(catalog), mailer(catalog, mode=Mode.SHADOW)
    report = analyse(catalog, root, [root, shadowed], NO_EMAIL_FOR_LEAD)
    paths = of_kind(report, "exfil-path")
    by_read = {f.tools[0]: f for f in paths if f.destination_classes == ("outside",)}
    finding = by_read["crm/read"]
    assert finding.path == (
        f"agent:{LEAD}",
        f"agent:{MAILER}",
        "tool:crm/read",
        "tool:email/send",
        "destination:email:outside",
    )
    assert "read by lead" in finding.steps
    assert "permit-delegation-same-trust-domain" in finding.reasons
    assert {"mandate-destination-scope", SHADOW_REASON} <= set(finding.reasons)
    # Every read that opens the path is named, the least sensitive first (restricted
    # data may be handed on here: both agents have the same owner).
    assert finding.tools == ("crm/read", "crm/export", "email/send")
    closed = analyse(
        catalog, root, [root, shadowed], NO_EMAIL_FOR_LEAD, LEAD_NEVER_DELEGATES_TO_MAILER
    )
    assert of_kind(closed, "exfil-path") == []
    assert edges(closed, "delegates_to") == set()
    assert closed.chains == 1


def test_restricted_taint_does_not_cross_owners(catalog: Catalog) -> None:
    root = make_agent(catalog, LEAD, ["crm/export", "email/send"])
    same = mailer(catalog, mode=Mode.SHADOW)
    assert of_kind(analyse(catalog, root, [root, same], NO_EMAIL_FOR_LEAD), "exfil-path")
    foreign = mailer(catalog, mode=Mode.SHADOW, owner="kim@acme.example")
    report = analyse(catalog, root, [root, foreign], NO_EMAIL_FOR_LEAD)
    # The edge exists (clean tasks may be handed over) but not with restricted taint.
    (edge,) = [e for e in report.edges if e.kind == "delegates_to"]
    assert not any(d.startswith("taint restricted") for d in edge.detail)
    assert of_kind(report, "exfil-path") == []


def test_cross_trust_domain_needs_an_operator_permit(catalog: Catalog) -> None:
    root = lead(catalog)
    partner = make_agent(catalog, PARTNER, ["email/send"], mode=Mode.SHADOW)
    report = analyse(catalog, root, [root, partner])
    assert edges(report, "delegates_to") == set()
    permit = f"""
    @id("lead-may-delegate-to-partner")
    permit (principal == Agent::"{LEAD}", action == Action::"delegate", resource)
    when {{ resource.trust_domain == "partner.example" }};
    """
    opened = analyse(catalog, root, [root, partner], permit)
    assert edges(opened, "delegates_to") == {(f"agent:{LEAD}", f"agent:{PARTNER}")}
    (path, *_) = of_kind(opened, "exfil-path")
    assert "lead-may-delegate-to-partner" in path.reasons


def test_chains_follow_depth_and_skip_retired_agents(catalog: Catalog) -> None:
    root = lead(catalog)
    middle = make_agent(catalog, "spiffe://acme.example/agent/middle", ["email/send"])
    last = mailer(catalog)
    report = analyse(catalog, root, [root, middle, last], max_depth=2)
    assert ("agent:spiffe://acme.example/agent/middle", f"agent:{MAILER}") in edges(
        report, "delegates_to"
    )
    assert report.chains == 5  # lead; lead>middle; lead>mailer; lead>middle>mailer; ...>middle
    shallow = analyse(catalog, root, [root, middle, last], max_depth=1)
    assert shallow.chains == 3
    none = analyse(catalog, root, [root, middle, last], max_depth=0)
    assert none.chains == 1 and edges(none, "delegates_to") == set()
    retired = replace(last, status=AgentStatus.RETIRED)
    assert analyse(catalog, root, [root, retired]).chains == 1


def test_a_delegated_grid_is_decided_as_delegated(catalog: Catalog) -> None:
    root, other = lead(catalog), mailer(catalog)
    no_delegated_acts = """
    @id("no-acts-in-delegated-tasks")
    forbid (principal, action == Action::"act", resource) when { context.delegated };
    """
    report = analyse(catalog, root, [root, other], NO_EMAIL_FOR_LEAD, no_delegated_acts)
    assert (f"agent:{MAILER}", "tool:email/send") not in edges(report, "can_act")
    assert of_kind(report, "delegation-widening") == []


# --------------------------------------------------------------------------- usage


def test_unused_grants_from_usage(catalog: Catalog) -> None:
    root = lead(catalog)
    usage = {
        LEAD: {
            "ticket/read": ToolUsage(calls=4),
            "email/send": ToolUsage(calls=1, destinations=("email:alice@example.com",)),
            "crm/read": ToolUsage(calls=0, denied=3),
        }
    }
    report = analyse(catalog, root, [root], usage=usage, days=30)
    unused = {f.tools[0] for f in of_kind(report, "unused-grant")}
    assert unused == {"crm/read", "crm/export", "notes/write"}
    assert report.days == 30
    (crm,) = [f for f in of_kind(report, "unused-grant") if f.tools == ("crm/read",)]
    assert "last 30 days" in crm.message and crm.reasons == ("permit-within-mandate",)
    calls = {e.target: e.calls for e in report.edges if e.source == f"agent:{LEAD}"}
    assert calls["tool:ticket/read"] == 4 and calls["tool:notes/write"] == 0
    # Without usage, nothing is claimed about it.
    bare = analyse(catalog, root, [root])
    assert of_kind(bare, "unused-grant") == [] and bare.days is None
    assert all(e.calls is None for e in bare.edges)


# --------------------------------------------------------------------------- the document


def test_json_shape_is_stable(catalog: Catalog) -> None:
    root = lead(catalog)
    data = analyse(catalog, root, [root, mailer(catalog)], NO_EMAIL_FOR_LEAD).to_data()
    assert set(data) == {
        "format",
        "agent_id",
        "policy_version",
        "days",
        "summary",
        "nodes",
        "edges",
        "findings",
    }
    assert data["format"] == SCHEMA_ID
    assert set(data["summary"]) == {
        "direct_systems",
        "reachable_systems",
        "findings",
        "chains",
        "truncated",
    }
    assert set(data["summary"]["findings"]) == set(FINDING_KINDS)
    assert {tuple(sorted(n)) for n in data["nodes"]} == {("detail", "id", "kind", "label")}
    assert {tuple(sorted(e)) for e in data["edges"]} == {
        ("calls", "detail", "kind", "reasons", "source", "target")
    }
    assert {tuple(sorted(f)) for f in data["findings"]} == {
        (
            "chain_count",
            "chains",
            "destination_classes",
            "kind",
            "message",
            "path",
            "reasons",
            "severity",
            "steps",
            "systems",
            "taints",
            "tools",
        )
    }
    node_ids = {n["id"] for n in data["nodes"]}
    for edge in data["edges"]:
        assert edge["source"] in node_ids and edge["target"] in node_ids
    for finding in data["findings"]:
        assert set(finding["path"]) <= node_ids
    # Deterministic: the same input gives the same document.
    again = analyse(catalog, root, [root, mailer(catalog)], NO_EMAIL_FOR_LEAD).to_data()
    assert again == data


# --------------------------------------------------------------------------- invariants

TOOLS = ["ticket/read", "crm/read", "crm/export", "notes/write", "email/send", "chat/post"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ceilings=st.lists(
        st.lists(st.sampled_from(TOOLS), min_size=1, max_size=6, unique=True),
        min_size=1,
        max_size=3,
    ),
    shadow=st.lists(st.booleans(), min_size=3, max_size=3),
    forbid_email=st.booleans(),
)
def test_invariants(ceilings: list[list[str]], shadow: list[bool], forbid_email: bool) -> None:
    catalog = catalog_from_data(
        {
            "tools": [
                {"name": "ticket/read", "privilege": "read", "labels": ["internal", "untrusted"]},
                {"name": "crm/read", "privilege": "read", "labels": ["confidential", "pii"]},
                {"name": "crm/export", "privilege": "read", "labels": ["restricted", "pii"]},
                {"name": "notes/write", "privilege": "write", "labels": ["internal"]},
                {"name": "email/send", "privilege": "act", "destinations": {"to": "email"}},
                {"name": "chat/post", "privilege": "act", "destinations": {"c": "channel"}},
            ]
        }
    )
    ids = [LEAD, MAILER, "spiffe://acme.example/agent/third"]
    agents = [
        make_agent(catalog, ids[i], tools, mode=Mode.SHADOW if shadow[i] else Mode.ENFORCE)
        for i, tools in enumerate(ceilings)
    ]
    policies = (NO_EMAIL_FOR_LEAD,) if forbid_email else ()
    report = analyse(catalog, agents[0], agents, *policies)
    nodes = {n.id for n in report.nodes}
    assert set(report.direct_systems) <= set(report.reachable_systems)
    for edge in report.edges:
        assert edge.source in nodes and edge.target in nodes
    for finding in report.findings:
        assert set(finding.path) <= nodes and finding.reasons
    # Every system reached is reached through some agent -> tool edge.
    reached = {e.target for e in report.edges if e.kind == "reaches_system"}
    assert {f"system:{s}" for s in report.reachable_systems} == reached
    # A widening edge from the analysed agent adds what it names to its reach.
    for finding in of_kind(report, "delegation-widening"):
        if len(finding.path) == 2:
            assert set(finding.systems) <= set(report.reachable_systems) - set(
                report.direct_systems
            )
    # The baseline forbids every tainted act to a non-explicit destination: with every
    # agent enforcing, no exfil path can exist, whatever the ceilings and delegation.
    if not any(shadow[: len(agents)]):
        assert of_kind(report, "exfil-path") == []
    # Nothing outside the union of the ceilings is ever reached.
    granted = {t for a in agents for t in a.ceiling.tools}
    assert {e.target.removeprefix("tool:") for e in report.edges if e.kind.startswith("can_")} <= (
        granted
    )


# --------------------------------------------------------------------------- aggregation


def test_reach_is_one_finding_per_system_with_its_chains(catalog: Catalog) -> None:
    root = lead(catalog)
    tools = ["ticket/read", "crm/read", "crm/export", "notes/write", "email/send"]
    peers = [make_agent(catalog, f"spiffe://acme.example/agent/peer{i}", tools) for i in range(9)]
    report = analyse(catalog, root, [root, *peers])
    assert report.chains > 100  # the baseline lets same-domain agents delegate freely
    act = of_kind(report, "act-reach")
    write = of_kind(report, "write-reach")
    assert [f.systems for f in act] == [("email",)]
    assert [f.systems for f in write] == [("notes",)]
    (finding,) = act
    # Every chain hands email/send on and every peer may use it: all of them reach it.
    assert finding.chain_count == report.chains
    assert len(finding.chains) == MAX_LISTED_CHAINS
    assert finding.chains[0] == "lead"  # the shortest path first: the agent itself
    assert finding.chains[1].startswith("lead → delegate → peer")
    assert finding.path == (f"agent:{LEAD}", "tool:email/send", "system:email")
    assert finding.message == (
        f"lead can act in email directly and via {report.chains - 1} delegation paths"
    )
    assert "permit-delegation-same-trust-domain" in finding.reasons
    data = finding.to_data()
    assert data["chain_count"] == report.chains and len(data["chains"]) == MAX_LISTED_CHAINS


def test_reach_only_through_delegation_names_the_chain(catalog: Catalog) -> None:
    root, other = lead(catalog), mailer(catalog)
    report = analyse(catalog, root, [root, other], NO_EMAIL_FOR_LEAD)
    (act,) = [f for f in of_kind(report, "act-reach") if f.systems == ("email",)]
    assert act.chain_count == 1 and act.chains == ("lead → delegate → mailer",)
    assert act.message == "lead can act in email through delegation via 1 path"
    (write,) = of_kind(report, "write-reach")
    assert write.chains == ("lead",) and write.message == "lead can write in notes directly"
