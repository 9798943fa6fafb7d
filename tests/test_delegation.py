"""Delegation (issue 5 items 1-4): narrower in every dimension, act chain, cascade."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.core.delegation import narrow_mandate
from remit.core.destinations import parse_pattern
from remit.core.identity import pattern_within
from remit.core.labels import Sensitivity
from remit.core.mandate import Mandate
from remit.core.policy import PolicySource
from remit.errors import (
    Denied,
    InvalidProof,
    InvalidRequest,
    InvalidToken,
    RemitError,
    TokenRevoked,
)
from remit.service import Remit

from .conftest import CATALOG, CEILING, open_task


def new_agent(remit: Remit, clock: ManualClock, name: str) -> AgentSession:
    agent = remit.register_agent(name, owner="sam@acme.example", ceiling=CEILING)
    return AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)


def hand_off(parent: TaskSession, to: AgentSession, **narrowing: Any) -> TaskSession:
    consent = to.consent_to_delegation(parent.task_id, narrowing)
    return to.adopt(parent.delegate(consent, narrowing))


@pytest.fixture
def parent(agent_session: AgentSession) -> TaskSession:
    return open_task(
        agent_session,
        destinations=["email:*@partner.example"],
        delegation_depth=2,
        call_budget=20,
    )


def test_child_gets_a_narrower_task_with_the_act_chain(
    remit: Remit, clock: ManualClock, parent: TaskSession, agent_session: AgentSession
) -> None:
    researcher = new_agent(remit, clock, "researcher")
    child = hand_off(parent, researcher, tools=["docs/read"], call_budget=5, ttl_seconds=300)
    claims = remit.tokens.verify_task(child.token)
    assert claims.actor is not None
    assert claims.actor["sub"] == agent_session.agent_id
    assert claims.actor["instance"] == agent_session.instance_id
    task = remit.get_task(child.task_id)
    assert task.parent_id == parent.task_id and task.depth == 1
    assert task.agent_id == researcher.agent_id
    # The budget is carved out of the parent's.
    assert remit.get_task(parent.task_id).calls_used == 5
    assert child.authorize("docs/read", {"q": "x"}).allowed
    assert not child.authorize("ticket/read", {"ticket": 1}).allowed  # not in the child's tools


@pytest.mark.parametrize(
    ("narrowing", "reason"),
    [
        ({"tools": ["crm/export"], "call_budget": 1}, "widens_tools"),
        ({"destinations": ["email:*@example.com"], "call_budget": 1}, "widens_destinations"),
        ({"sensitivity": "restricted", "call_budget": 1}, "widens_sensitivity"),
        ({"call_budget": 21}, "widens_budget"),
        ({"call_budget": 1, "ttl_seconds": 601}, "widens_ttl"),
        ({"call_budget": 1, "delegation_depth": 2}, "widens_depth"),
    ],
)
def test_widening_is_refused_with_the_dimension_named(
    remit: Remit, clock: ManualClock, parent: TaskSession, narrowing: dict[str, Any], reason: str
) -> None:
    researcher = new_agent(remit, clock, "researcher")
    with pytest.raises(Denied) as caught:
        hand_off(parent, researcher, **narrowing)
    assert caught.value.reason == reason
    assert remit.get_task(parent.task_id).calls_used == 0  # nothing reserved


def test_depth_limit_and_act_chain_of_three(
    remit: Remit, clock: ManualClock, parent: TaskSession, agent_session: AgentSession
) -> None:
    b = new_agent(remit, clock, "agent-b")
    c = new_agent(remit, clock, "agent-c")
    d = new_agent(remit, clock, "agent-d")
    child = hand_off(parent, b, call_budget=10, delegation_depth=1)
    grandchild = hand_off(child, c, call_budget=5)
    claims = remit.tokens.verify_task(grandchild.token)
    assert claims.actor is not None
    assert claims.actor["sub"] == b.agent_id
    assert claims.actor["act"]["sub"] == agent_session.agent_id
    with pytest.raises(Denied) as caught:
        hand_off(grandchild, d, call_budget=1)  # the grandchild may not delegate
    assert caught.value.reason == "delegation_depth_exceeded"
    with pytest.raises(Denied) as cycle:
        hand_off(child, agent_session, call_budget=1)  # back to A: a cycle
    assert cycle.value.reason == "delegation_cycle"


def test_configured_maximum_depth(tmp_path: Any, clock: ManualClock) -> None:
    from remit.runtime import build_remit, catalog_from_yaml

    from .conftest import CATALOG, PRINCIPAL, make_settings

    service = build_remit(
        make_settings(tmp_path, max_delegation_depth=1),
        clock=clock,
        catalog=catalog_from_yaml(CATALOG),
    )
    try:
        service.register_principal(PRINCIPAL)
        a = new_agent(service, clock, "agent-a")
        root = open_task(a, delegation_depth=3)
        child = hand_off(root, new_agent(service, clock, "agent-b"), call_budget=2)
        with pytest.raises(Denied) as caught:
            hand_off(child, new_agent(service, clock, "agent-c"), call_budget=1)
        assert caught.value.reason == "delegation_depth_exceeded"
    finally:
        service.close()


def test_actor_without_a_valid_proof_is_refused(
    remit: Remit, clock: ManualClock, parent: TaskSession
) -> None:
    b = new_agent(remit, clock, "agent-b")
    narrowing = {"call_budget": 2}
    # A proof over another narrowing does not count as consent to this one.
    wrong = b.consent_to_delegation(parent.task_id, {"call_budget": 3})
    with pytest.raises(InvalidProof):
        parent.delegate(wrong, narrowing)
    # A's proof presented as B's: signed with the wrong key.
    consent = b.consent_to_delegation(parent.task_id, narrowing)
    forged = type(consent)(
        consent.identity_token,
        parent.agent.proof(
            consent.identity_token,
            "remit:delegate",
            {"task": parent.task_id, "narrowing": narrowing},
        ),
    )
    with pytest.raises(InvalidProof):
        parent.delegate(forged, narrowing)
    # A replayed consent is refused too.
    parent.delegate(consent, narrowing)
    with pytest.raises(InvalidProof):
        parent.delegate(consent, narrowing)


def _edit_act(token: str, actor: dict[str, Any]) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["act"] = actor
    edited = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


def test_forged_or_edited_act_chain_is_refused(
    remit: Remit, clock: ManualClock, parent: TaskSession
) -> None:
    child = hand_off(parent, new_agent(remit, clock, "agent-b"), call_budget=2)
    forged = _edit_act(child.token, {"sub": "spiffe://acme.example/agent/boss"})
    with pytest.raises(InvalidToken):
        remit.tokens.verify_task(forged)
    proof = child.agent.proof(forged, "docs/read", {"q": 1})
    with pytest.raises(InvalidToken):
        remit.authorize(task_token=forged, proof=proof, tool="docs/read", arguments={"q": 1})


def test_cascade_across_three_levels_including_a_call_in_flight(
    remit: Remit, clock: ManualClock, parent: TaskSession
) -> None:
    b, c = new_agent(remit, clock, "agent-b"), new_agent(remit, clock, "agent-c")
    child = hand_off(parent, b, call_budget=10, delegation_depth=1)
    grandchild = hand_off(child, c, call_budget=5)
    # A call in flight: its proof is made before the revocation, sent after it.
    proof = grandchild.agent.proof(grandchild.token, "docs/read", {"q": 1})
    closed = parent.end()
    assert set(closed) == {parent.task_id, child.task_id, grandchild.task_id}
    with pytest.raises(TokenRevoked):
        remit.authorize(
            task_token=grandchild.token, proof=proof, tool="docs/read", arguments={"q": 1}
        )
    for session in (child, grandchild):
        with pytest.raises(TokenRevoked):
            session.authorize("docs/read", {"q": 2})


def test_kill_switch_suspending_an_agent_revokes_its_delegates(
    remit: Remit, clock: ManualClock, parent: TaskSession, agent_session: AgentSession
) -> None:
    b = new_agent(remit, clock, "agent-b")
    child = hand_off(parent, b, call_budget=3)
    remit.suspend_agent(agent_session.agent_id)
    assert remit.get_task(parent.task_id).status.value == "revoked"
    assert remit.get_task(child.task_id).status.value == "revoked"
    with pytest.raises(TokenRevoked):
        child.authorize("docs/read", {"q": 1})
    remit.resume_agent(agent_session.agent_id)
    with pytest.raises(TokenRevoked):  # resuming the agent does not bring tasks back
        parent.authorize("docs/read", {"q": 1})


def test_taint_flows_down_at_hand_off_and_back_up_at_the_end(
    remit: Remit, clock: ManualClock, parent: TaskSession
) -> None:
    assert parent.authorize("ticket/read", {"ticket": 1}).allowed  # untrusted, pii
    child = hand_off(parent, new_agent(remit, clock, "agent-b"), call_budget=3)
    assert "untrusted" in remit.get_task(child.task_id).taint.flags
    fresh = open_task(parent.agent, delegation_depth=1, call_budget=10)
    clean_child = hand_off(fresh, new_agent(remit, clock, "agent-c"), call_budget=3)
    assert clean_child.authorize("crm/read", {"id": 1}).allowed  # confidential
    clean_child.end()
    assert remit.get_task(fresh.task_id).taint.sensitivity >= Sensitivity.CONFIDENTIAL


# ---------------------------------------------------------------------- the property

PARENT = Mandate(
    purpose="p",
    tools=frozenset({"docs/read", "ticket/read", "email/send"}),
    destinations=(parse_pattern("email:*@partner.example"), parse_pattern("email:a@b.example")),
    request_derived=(),
    sensitivity_ceiling=Sensitivity.CONFIDENTIAL,
    call_budget=50,
    ttl_seconds=600,
    delegation_depth=2,
)
TOOLS = ["docs/read", "ticket/read", "email/send", "crm/read", "crm/export"]
DESTS = ["email:*@partner.example", "email:x@partner.example", "email:a@b.example",
         "email:*@other.example", "email:c@d.example", "domain:partner.example"]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tools=st.none() | st.lists(st.sampled_from(TOOLS), min_size=1, max_size=5),
    dests=st.none() | st.lists(st.sampled_from(DESTS), max_size=4),
    sensitivity=st.none() | st.sampled_from(["public", "internal", "confidential", "restricted"]),
    budget=st.integers(-2, 80),
    ttl=st.none() | st.integers(-5, 1200),
    depth=st.none() | st.integers(-1, 4),
    parent_depth=st.integers(0, 3),
    budget_left=st.integers(0, 50),
    seconds_left=st.floats(0, 600),
)
def test_no_child_ever_exceeds_its_parent(
    tools: list[str] | None,
    dests: list[str] | None,
    sensitivity: str | None,
    budget: int,
    ttl: int | None,
    depth: int | None,
    parent_depth: int,
    budget_left: int,
    seconds_left: float,
) -> None:
    narrowing: dict[str, Any] = {"call_budget": budget}
    for key, value in (("tools", tools), ("destinations", dests), ("sensitivity", sensitivity),
                       ("ttl_seconds", ttl), ("delegation_depth", depth)):  # fmt: skip
        if value is not None:
            narrowing[key] = value
    try:
        child = narrow_mandate(
            PARENT,
            narrowing,
            parent_depth=parent_depth,
            budget_left=budget_left,
            seconds_left=seconds_left,
            max_depth=3,
        )
    except (Denied, InvalidRequest):
        return
    except RemitError as exc:  # any other refusal is a bug
        raise AssertionError(exc) from exc
    assert child.tools <= PARENT.tools
    assert child.sensitivity_ceiling <= PARENT.sensitivity_ceiling
    assert 1 <= child.call_budget <= budget_left
    assert 1 <= child.ttl_seconds <= seconds_left
    assert child.delegation_depth < PARENT.delegation_depth
    assert parent_depth + 1 + child.delegation_depth <= 3
    assert child.request_derived == ()
    for pattern in child.destinations:
        assert any(pattern_within(pattern, p) for p in PARENT.destinations), pattern


# ------------------------------------------------------------ policy over the delegation edge


def last_record(remit: Remit) -> Any:
    remit.audit.flush()
    head = remit.store.audit_head()
    assert head is not None
    return head


def foreign_agent(remit: Remit, clock: ManualClock, spiffe_id: str, owner: str) -> AgentSession:
    """An agent of another trust domain: Remit names agents in its own domain, so
    the row is written through the store (as a federation import would) and attested."""
    template = remit.register_agent("template-agent", owner=owner, ceiling=CEILING)
    remit.store.insert_agent(
        replace(template, agent_id=spiffe_id, name=spiffe_id.rsplit("/", maxsplit=1)[-1])
    )
    remit.load_catalog(yaml.safe_load(CATALOG))  # any catalog load refreshes the entities
    return AgentSession.attest(remit, remit.create_join_token(spiffe_id), clock=clock)


def test_operator_forbid_over_one_edge_refuses_with_its_id(
    remit: Remit, clock: ManualClock, parent: TaskSession, agent_session: AgentSession
) -> None:
    researcher = new_agent(remit, clock, "researcher")
    writer = new_agent(remit, clock, "writer")
    remit.load_policies(
        [
            PolicySource(
                "edges.cedar",
                '@id("support-never-to-researcher")\n'
                f'forbid (principal == Agent::"{agent_session.agent_id}", '
                'action == Action::"delegate", '
                f'resource == Agent::"{researcher.agent_id}");',
            )
        ]
    )
    with pytest.raises(Denied) as caught:
        hand_off(parent, researcher, tools=["docs/read"], call_budget=2)
    assert caught.value.reason == "delegation_not_permitted"
    assert "support-never-to-researcher" in str(caught.value)
    assert caught.value.details["policies"] == ["support-never-to-researcher"]
    assert remit.get_task(parent.task_id).calls_used == 0  # nothing reserved
    record = last_record(remit)
    assert record.kind == "request.rejected"
    assert record.data["operation"] == "task.delegate"
    assert record.data["reason"] == "delegation_not_permitted"
    # Another edge from the same agent is untouched.
    child = hand_off(parent, writer, tools=["docs/read"], call_budget=2)
    delegated = last_record(remit)
    assert delegated.kind == "task.delegated"
    assert delegated.data["policies"] == ["permit-delegation-same-trust-domain"]
    assert child.authorize("docs/read", {"q": "x"}).allowed


def test_across_trust_domains_refused_by_default_and_permitted_by_an_operator(
    remit: Remit, clock: ManualClock, parent: TaskSession, agent_session: AgentSession
) -> None:
    partner_id = "spiffe://partner.example/agent/helper"
    partner = foreign_agent(remit, clock, partner_id, owner="sam@acme.example")
    assert partner.agent_id == partner_id
    with pytest.raises(Denied) as caught:
        hand_off(parent, partner, tools=["docs/read"], call_budget=2)
    assert caught.value.reason == "delegation_not_permitted"
    assert caught.value.details["policies"] == ["default-deny"]
    assert remit.get_task(parent.task_id).calls_used == 0

    remit.load_policies(
        [
            PolicySource(
                "partners.cedar",
                '@id("support-may-use-partner")\n'
                f'permit (principal == Agent::"{agent_session.agent_id}", '
                'action == Action::"delegate", resource)\n'
                'when { resource.trust_domain == "partner.example" };',
            )
        ]
    )
    child = hand_off(parent, partner, tools=["docs/read"], call_budget=2)
    assert remit.get_task(child.task_id).agent_id == partner_id
    assert child.authorize("docs/read", {"q": "x"}).allowed


def test_restricted_taint_is_not_delegated_to_another_owner(
    remit: Remit, clock: ManualClock, agent_session: AgentSession
) -> None:
    parent = open_task(
        agent_session,
        tools=["crm/export", "docs/read"],
        sensitivity="restricted",
        delegation_depth=1,
        call_budget=20,
    )
    assert parent.authorize("crm/export", {}).allowed  # the task has now read restricted data
    assert remit.get_task(parent.task_id).taint.sensitivity == Sensitivity.RESTRICTED
    other = remit.register_agent("outsider", owner="eve@other.example", ceiling=CEILING)
    outsider = AgentSession.attest(remit, remit.create_join_token(other.agent_id), clock=clock)
    with pytest.raises(Denied) as caught:
        hand_off(parent, outsider, tools=["docs/read"], call_budget=2)
    assert caught.value.reason == "delegation_not_permitted"
    assert caught.value.details["policies"] == ["no-restricted-data-to-other-owners"]
    # The same owner may take it (and inherits the taint).
    colleague = new_agent(remit, clock, "colleague")
    child = hand_off(parent, colleague, tools=["docs/read"], call_budget=2)
    assert remit.get_task(child.task_id).taint.sensitivity == Sensitivity.RESTRICTED
