"""Effective permissions equal a brute-force enumeration of real decisions (issue 7).

For every grid point that ``Remit.effective_permissions`` reports, a real task is opened,
tainted by a real read when the point says so, and the call is decided by the full
pipeline (token, proof, mandate, monitor, Cedar, audit). The analysis must say exactly
what the pipeline decides, and name the same deciding policies.
"""

from __future__ import annotations

from typing import Any

import pytest

from remit.agent import AgentSession
from remit.clock import ManualClock
from remit.core.pipeline import Outcome
from remit.core.policy import PolicySource
from remit.service import Remit
from tests.conftest import CEILING, PRINCIPAL

# What each destination class of the grid means for a concrete call, given the mandate's
# destinations below: an exact entry, an entry matched by pattern, neither.
MANDATE_DESTINATIONS = ["email:alice@example.com", "email:*@partner.example"]
ADDRESS = {
    "explicit": "alice@example.com",
    "by_pattern": "bob@partner.example",
    "outside": "eve@elsewhere.example",
}
# The real read that leaves the task with each grid taint.
TAINTING_READ = {"untrusted": "ticket/read", "confidential": "crm/read"}

OPERATOR_POLICIES = [
    PolicySource(
        "operator.cedar",
        """
@id("no-notes-after-untrusted")
forbid (principal, action == Action::"write", resource == Tool::"notes/write")
when { context.taint_flags.contains("untrusted") };

@id("no-export-for-research")
forbid (principal, action, resource == Tool::"crm/export")
when { context.task.purpose like "*research*" };
""",
    )
]


def _arguments(remit: Remit, tool: str, destination_class: str) -> dict[str, Any]:
    spec = remit.catalog.get(tool)
    assert spec is not None
    if destination_class == "none" or not spec.destination_args:
        return {}
    return {spec.destination_args[0].path: ADDRESS[destination_class]}


@pytest.mark.parametrize("with_operator_policies", [False, True])
def test_every_grid_point_matches_a_real_decision(
    remit: Remit, agent_session: AgentSession, clock: ManualClock, with_operator_policies: bool
) -> None:
    if with_operator_policies:
        remit.load_policies(OPERATOR_POLICIES)
    permissions = remit.effective_permissions(agent_session.agent_id)
    assert {p.tool for p in permissions} == set(CEILING["tools"])
    checked = 0
    for point in permissions:
        tools = [point.tool]
        read = TAINTING_READ.get(point.taint)
        if read is not None and read != point.tool:
            tools.append(read)
        task = agent_session.open_task(
            principal=PRINCIPAL,
            intent={
                "purpose": "reply to ticket 4711",
                "tools": tools,
                "destinations": MANDATE_DESTINATIONS,
                "sensitivity": CEILING["max_sensitivity"],
                "call_budget": 5,
                "ttl_seconds": 600,
            },
        )
        if read is not None:
            first = task.authorize(read, {})
            assert first.outcome is Outcome.ALLOW, (point, first.reasons)
        decision = task.authorize(
            point.tool, _arguments(remit, point.tool, point.destination_class)
        )
        real = decision.outcome is Outcome.ALLOW
        assert real == point.allowed, (point, decision.outcome, decision.reasons)
        if not real:
            # The analysis names the deciding policies; the pipeline may add mandate and
            # monitor reasons in front of them.
            assert set(point.reasons) <= set(decision.reasons), (point, decision.reasons)
        task.end()
        clock.advance(1.0)
        checked += 1
    assert checked == len(permissions) > 20
