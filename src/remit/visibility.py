"""Visibility use cases over a running Remit: the blast radius of an agent (issue 7, item 2).

The analysis itself is pure (``remit.core.blast_radius``); this module feeds it
the service's state: the active policy version, the catalog, every registered
agent as a possible delegation target, the delegation depth limit, and usage
counted from the decision records of the audit log in the last ``days`` days.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from remit.core.audit import AuditRecord
from remit.core.blast_radius import BlastRadius, ToolUsage, blast_radius
from remit.core.catalog import Catalog
from remit.core.identity import Agent, AgentStatus, Mode, ceiling_from_data
from remit.core.policy import AgentEntity, PolicyEngine, PolicySource, ToolEntity
from remit.errors import InvalidRequest, NotFound
from remit.ids import SpiffeId, check_name
from remit.service import Remit
from remit.store.base import AuditQuery

__all__ = [
    "DEFAULT_DAYS",
    "MAX_DAYS",
    "MAX_USAGE_RECORDS",
    "agent_blast_radius",
    "agents_from_data",
    "local_blast_radius",
    "usage_from_records",
]

DEFAULT_DAYS: Final = 30
MAX_DAYS: Final = 365
MAX_USAGE_RECORDS: Final = 1_000_000
"""At most this many decision records are read for usage; beyond it the counts stop."""
_PAGE: Final = 10_000
_MAX_DESTINATIONS: Final = 100  # per agent and tool, in the report
MAX_LOCAL_AGENTS: Final = 1000
_AGENT_KEYS: Final = frozenset({"name", "owner", "ceiling", "mode", "status", "trust_domain"})


def check_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidRequest(f"days must be from 1 to {MAX_DAYS}", reason="bad_days")
    return days


def agent_blast_radius(remit: Remit, agent_id: str, *, days: int = DEFAULT_DAYS) -> BlastRadius:
    """The blast radius of ``agent_id`` under the active policies, with usage from the last
    ``days`` days of decisions; raises NotFound for an unknown agent."""
    days = check_days(days)
    agent = remit.get_agent(agent_id)
    since = remit.clock.now() - days * 86_400
    usage = usage_from_records(_decisions_since(remit, since))
    return blast_radius(
        remit.policy,
        remit.catalog,
        agent,
        remit.list_agents(),
        max_depth=remit.settings.max_delegation_depth,
        usage=usage,
        days=days,
    )


def _decisions_since(remit: Remit, since: float) -> Iterable[AuditRecord]:
    after = 0
    read = 0
    while read < MAX_USAGE_RECORDS:
        page = remit.query_audit(
            AuditQuery(kinds=("decision",), since=since, after_seq=after, limit=_PAGE)
        )
        yield from page
        read += len(page)
        if len(page) < _PAGE:
            return
        after = page[-1].seq


def usage_from_records(records: Iterable[AuditRecord]) -> dict[str, dict[str, ToolUsage]]:
    """Agent id → tool → usage, from ``decision`` audit records (others are ignored).

    A call counts as used when it was allowed to run (a shadow would-deny ran too);
    denials and refusals count as ``denied``.
    """
    calls: dict[tuple[str, str], int] = {}
    denied: dict[tuple[str, str], int] = {}
    seen: dict[tuple[str, str], set[str]] = {}
    for record in records:
        data: Mapping[str, object] = record.data
        agent, tool = data.get("agent"), data.get("tool")
        if record.kind != "decision" or not isinstance(agent, str) or not isinstance(tool, str):
            continue
        key = (agent, tool)
        if data.get("allowed") is True:
            calls[key] = calls.get(key, 0) + 1
            destinations = data.get("destinations")
            if isinstance(destinations, list):
                bucket = seen.setdefault(key, set())
                bucket.update(d for d in destinations if isinstance(d, str))
        else:
            denied[key] = denied.get(key, 0) + 1
    usage: dict[str, dict[str, ToolUsage]] = {}
    for key in sorted(set(calls) | set(denied)):
        agent, tool = key
        usage.setdefault(agent, {})[tool] = ToolUsage(
            calls=calls.get(key, 0),
            denied=denied.get(key, 0),
            destinations=tuple(sorted(seen.get(key, set()))[:_MAX_DESTINATIONS]),
        )
    return usage


# --------------------------------------------------------------------------- offline (CI)


def agents_from_data(data: object, catalog: Catalog, *, trust_domain: str) -> list[Agent]:
    """Agents from an agents file (``{"agents": [{name, owner, ceiling, mode?, status?,
    trust_domain?}]}``), checked like a registration: names, ceilings against the catalog."""
    if not isinstance(data, Mapping) or set(data) - {"agents", "trust_domain"}:
        raise InvalidRequest(
            "an agents file is a mapping with an 'agents' list", reason="bad_agents_file"
        )
    default_domain = data.get("trust_domain", trust_domain)
    raw_agents = data.get("agents")
    if not isinstance(raw_agents, list) or not 1 <= len(raw_agents) <= MAX_LOCAL_AGENTS:
        raise InvalidRequest(
            f"an agents file lists 1 to {MAX_LOCAL_AGENTS} agents", reason="bad_agents_file"
        )
    agents: dict[str, Agent] = {}
    for index, raw in enumerate(raw_agents):
        where = f"agent #{index + 1}"
        if not isinstance(raw, Mapping) or set(raw) - _AGENT_KEYS:
            raise InvalidRequest(
                f"{where}: keys are {sorted(_AGENT_KEYS)}", reason="bad_agents_file"
            )
        owner = raw.get("owner")
        if not isinstance(owner, str) or not owner or len(owner) > 256:
            raise InvalidRequest(f"{where}: owner is required", reason="bad_agents_file")
        domain = raw.get("trust_domain", default_domain)
        if not isinstance(domain, str):
            raise InvalidRequest(f"{where}: trust_domain must be text", reason="bad_agents_file")
        name = check_name(raw.get("name"), "agent name")
        agent_id = str(SpiffeId.for_agent(domain, name))
        try:
            mode = Mode(raw.get("mode", "enforce"))
            status = AgentStatus(raw.get("status", "active"))
        except ValueError:
            raise InvalidRequest(
                f"{where}: mode is enforce|shadow, status active|suspended|retired",
                reason="bad_agents_file",
            ) from None
        if agent_id in agents:
            raise InvalidRequest(f"{where}: {agent_id} is listed twice", reason="bad_agents_file")
        agents[agent_id] = Agent(
            agent_id=agent_id,
            name=name,
            owner=owner,
            description="",
            ceiling=ceiling_from_data(raw.get("ceiling"), catalog),
            status=status,
            mode=mode,
            created_at=0.0,
            updated_at=0.0,
        )
    return list(agents.values())


def local_blast_radius(
    sources: list[PolicySource],
    catalog: Catalog,
    agents: list[Agent],
    agent: str,
    *,
    max_depth: int = 3,
) -> BlastRadius:
    """The blast radius of ``agent`` (a name or SPIFFE ID in ``agents``) under the baseline
    plus ``sources``, with no server and no usage: what a CI job checks before deploying."""
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 0 <= max_depth <= 16:
        raise InvalidRequest("max depth must be from 0 to 16", reason="bad_depth")
    engine = PolicyEngine()
    engine.load(sources)
    engine.set_entities(
        [AgentEntity(a.agent_id, a.owner) for a in agents],
        [ToolEntity(s.name, s.privilege.value, s.risk) for s in catalog.tools.values()],
    )
    found = [a for a in agents if agent in (a.agent_id, a.name)]
    if len(found) != 1:
        raise NotFound(
            "no such agent in the agents file" if not found else "the agent name is ambiguous",
            reason="unknown_agent",
        )
    return blast_radius(engine, catalog, found[0], agents, max_depth=max_depth)
