"""``remit policy replay``: what a candidate policy set would have decided differently.

Streams the ``decision`` records of a period from the store, a page at a time (memory
is bounded by the page size and the report's groups, not by the log), re-decides each
with a candidate engine (``remit.core.replay``) and reports the decisions that would
change. The candidate is validated first; a broken set is a ``policy_invalid`` error
and nothing is read.

The candidate engine gets its ``Agent`` and ``Tool`` entity attributes from the agents
and the tool catalog as they are *now*, not as they were when a call was decided.

Replay only reads: it writes no audit record and changes no state. The records read
are a snapshot: those appended after the replay started are not part of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from remit.clock import parse_time
from remit.core.policy import AgentEntity, PolicyEngine, PolicySource, ToolEntity, trust_domain_of
from remit.core.replay import RecordedDecision, ReplayAggregate, SkipReason, redecide
from remit.errors import InvalidRequest, NotFound
from remit.store.base import AuditQuery

if TYPE_CHECKING:
    from remit.service import Remit

__all__ = ["PAGE_SIZE", "ReplayProgress", "candidate_engine", "replay_policies"]

PAGE_SIZE: Final = 1000
MAX_LIMIT: Final = 100_000_000
SPIFFE_PREFIX: Final = "spiffe://"


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """How far a replay is: ``records`` read so far; ``position`` of ``total`` in audit
    sequence numbers of the period (a cheap, monotone estimate: no count query)."""

    records: int
    position: int
    total: int


def candidate_engine(remit: Remit, sources: Sequence[PolicySource]) -> PolicyEngine:
    """A fresh engine with the baseline plus ``sources`` (raises ``PolicyInvalid``) and the
    current agents and tool catalog as entities."""
    engine = PolicyEngine()
    engine.load(sources)  # validates the whole set first; refuses it whole
    agents = [
        AgentEntity(a.agent_id, a.owner, trust_domain_of(a.agent_id))
        for a in remit.store.list_agents()
    ]
    tools = [ToolEntity(s.name, s.privilege.value, s.risk) for s in remit.catalog.tools.values()]
    engine.set_entities(agents, tools)
    return engine


def resolve_agent(remit: Remit, agent: str) -> str:
    """An agent's SPIFFE ID from its name or ID (an unknown SPIFFE ID is kept: the agent
    may be gone while its records remain)."""
    if agent.startswith(SPIFFE_PREFIX):
        return agent
    for known in remit.store.list_agents():
        if known.name == agent:
            return known.agent_id
    raise NotFound("no such agent", reason="unknown_agent")


def _when(remit: Remit, value: str | float | None, what: str) -> float | None:
    if value is None or isinstance(value, float | int):
        return None if value is None else float(value)
    return parse_time(value, remit.clock.now(), what=what)


def replay_policies(
    remit: Remit,
    sources: Sequence[PolicySource],
    *,
    since: str | float,
    until: str | float | None = None,
    agent: str | None = None,
    limit: int | None = None,
    examples: int = 3,
    progress: Callable[[ReplayProgress], None] | None = None,
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    """Re-decide every recorded call of the period under baseline + ``sources``.

    ``since``/``until`` are times or texts (``7d``, ``24h``, ``30m``, ISO); ``limit`` caps
    the decision records read. Returns the report (see ``docs/replay.md``).
    """
    start = _when(remit, since, "--since")
    end = _when(remit, until, "--until")
    if start is None:
        raise InvalidRequest("--since is required", reason="bad_time")
    if end is not None and end <= start:
        raise InvalidRequest("--until must be after --since", reason="bad_time")
    if limit is not None and not 0 < limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be from 1 to {MAX_LIMIT}", reason="bad_limit")
    if not 0 < page_size <= 10_000:
        raise InvalidRequest("page size must be from 1 to 10000", reason="bad_limit")
    aggregate = ReplayAggregate(examples=examples)  # checks ``examples``
    agent_id = resolve_agent(remit, agent) if agent is not None else None
    engine = candidate_engine(remit, sources)  # refuses a broken candidate before reading

    remit.audit.flush()  # in-process callers: decisions still queued count too
    head = remit.store.audit_head()
    head_seq = head.seq if head is not None else 0
    query = AuditQuery(kinds=("decision",), agent=agent_id, since=start, until=end, limit=1)
    first = remit.query_audit(query)
    first_seq = first[0].seq if first else head_seq + 1
    total = max(0, head_seq - first_seq + 1)
    if progress is not None:
        progress(ReplayProgress(0, 0, total))

    truncated = False
    last = first_seq - 1
    done = False
    while not done:
        page = remit.query_audit(
            AuditQuery(
                kinds=("decision",),
                agent=agent_id,
                since=start,
                until=end,
                after_seq=last,
                limit=page_size,
            )
        )
        for record in page:
            if record.seq > head_seq:
                done = True
                break
            if limit is not None and aggregate.read >= limit:
                truncated = done = True
                break
            last = record.seq
            parsed = RecordedDecision.parse(record.seq, record.ts, record.data)
            if isinstance(parsed, SkipReason):
                aggregate.skip(parsed)
            else:
                aggregate.add(parsed, redecide(parsed, engine))
        if progress is not None:
            position = total if done or len(page) < page_size else last - first_seq + 1
            progress(ReplayProgress(aggregate.read, min(position, total), total))
        if len(page) < page_size:
            done = True

    return {
        "candidate_version": engine.version,
        "active_version": remit.policy.version,
        "candidate_files": [s.name for s in sources],
        "window": {"since": start, "until": end, "agent": agent_id, "limit": limit},
        "truncated": truncated,
        "entities": "current agents and tool catalog",
        **aggregate.to_data(),
    }
