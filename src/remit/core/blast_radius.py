"""Blast radius over the tool graph: what an agent can reach, directly and by delegation.

Pure: no I/O, no clock. The input is the agents (with their ceilings), the tool
catalog, a loaded ``PolicyEngine`` and, optionally, usage per agent and tool
(from the audit log, counted by the caller). Every "can" below is a decision of
the real Cedar policy set, never read from role names:

* **direct reach**: the agent's effective permissions (``core.analysis``): every
  tool within its ceiling over the grid (destination class × prior taint);
* **delegation**: an edge A → B exists when the Cedar action ``delegate``
  (principal A, resource B) permits some child mandate that the service could
  issue: tools in A's mandate (so within A's ceiling) and within B's ceiling,
  sensitivity at most both ceilings, depth within ``max_depth``. It is tried
  with a one-tool child mandate per tool and per parent taint (``none``,
  ``untrusted``, ``confidential``, ``restricted``). A child task can only ever
  hold tools of its parent's mandate, but B's calls are decided as B (its own
  policies, its own mode), so an edge can *widen* what A reaches, e.g. when an
  operator forbids A a tool that B may use, or when B runs in ``shadow`` mode.
  B's reach through the edge is the grid over the handed tools, with
  ``delegated`` set and the child's depth;
* **effective**: a grid point is reachable when Cedar allows it, or when the
  call would run in shadow mode (the agent's mode or the tool's catalog mode):
  shadow records a would-deny and lets the call through, so it counts as reach
  (findings say ``shadow-mode`` among their reasons). Delegation is never
  relaxed by shadow mode, as in the service.

Findings, each naming its path (agent → [delegate → agent …] → tool →
destination class) and the deciding policy ids:

* ``exfil-path``: some agent on a chain can read ``confidential`` (or higher)
  or ``untrusted`` data (a tool whose output labels taint the task, allowed on
  a clean task), and the same agent, or one it delegates to with that taint
  (taint flows to delegated sub-tasks), can then ``act`` to a ``by_pattern`` or
  ``outside`` destination under that taint;
* ``act-reach`` / ``write-reach``: the agent can reach a tool of that privilege in
  a system (the tool's server, the part before ``/``), directly or through some
  delegation chains: one finding per (privilege, system), naming the shortest path,
  the number of chains and the first ``MAX_LISTED_CHAINS`` of them;
* ``delegation-widening``: an edge whose target's reachable systems (its own
  and further down) are not a subset of what the delegating agent reaches itself;
* ``unused-grant`` (only with usage): a tool the analysed agent can really
  use that it has not called (no allowed call) in the usage window.

Limits: the grid's limits apply (see ``core.analysis``); a multi-tool child
mandate is assumed allowed when each of its tools is allowed alone; a chain
never revisits an agent (the service refuses cycles); the exploration stops at
``MAX_CHAINS`` chains and says so (``truncated``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from remit.core.analysis import (
    DESTINATION_CLASSES,
    Permission,
    effective_permissions,
    permission_grid,
)
from remit.core.catalog import Catalog, Privilege, ToolSpec
from remit.core.identity import Agent, AgentStatus, Mode
from remit.core.labels import Sensitivity
from remit.core.policy import PolicyEngine, PolicyRequest, trust_domain_of

__all__ = [
    "DELEGATION_TAINTS",
    "FINDING_KINDS",
    "MAX_CHAINS",
    "MAX_LISTED_CHAINS",
    "SCHEMA_ID",
    "SHADOW_REASON",
    "BlastRadius",
    "Edge",
    "Finding",
    "Node",
    "ToolUsage",
    "blast_radius",
]

SCHEMA_ID: Final = "remit.blast-radius/v1"
FINDING_KINDS: Final[tuple[str, ...]] = (
    "exfil-path",
    "delegation-widening",
    "act-reach",
    "write-reach",
    "unused-grant",
)
DELEGATION_TAINTS: Final[tuple[str, ...]] = ("none", "untrusted", "confidential", "restricted")
SHADOW_REASON: Final = "shadow-mode"
MAX_CHAINS: Final = 512
MAX_LISTED_CHAINS: Final = 20  # chains named in one act-reach / write-reach finding
EXFIL_CLASSES: Final[tuple[str, ...]] = ("by_pattern", "outside")
_SEVERITY: Final[dict[str, str]] = {
    "exfil-path": "high",
    "delegation-widening": "medium",
    "act-reach": "medium",
    "write-reach": "low",
    "unused-grant": "low",
}
_DELEGATION_TAINT_FACTS: Final[dict[str, tuple[int, list[str]]]] = {
    "none": (int(Sensitivity.PUBLIC), []),
    "untrusted": (int(Sensitivity.PUBLIC), ["untrusted"]),
    "confidential": (int(Sensitivity.CONFIDENTIAL), []),
    "restricted": (int(Sensitivity.RESTRICTED), []),
}


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class ToolUsage:
    """What the audit log shows of one agent's use of one tool in the window."""

    calls: int = 0  # allowed calls (shadow would-denies included: they ran)
    denied: int = 0  # refused or denied attempts
    destinations: tuple[str, ...] = ()  # "kind:value" seen in its calls, sorted


@dataclass(frozen=True, slots=True)
class Node:
    """A graph node. ``id`` is ``<kind>:<name>``, e.g. ``tool:email/send``."""

    id: str
    kind: str  # agent | tool | system | destination | label
    label: str
    detail: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "detail": list(self.detail)}


@dataclass(frozen=True, slots=True)
class Edge:
    """A graph edge: ``can_read|can_write|can_act`` (agent → tool), ``delegates_to``
    (agent → agent), ``reaches_system`` (tool → system), ``sends_to`` (tool →
    destination class) and ``outputs_label`` (tool → data label)."""

    source: str
    target: str
    kind: str
    detail: tuple[str, ...] = ()  # e.g. "by_pattern after untrusted", "taint confidential"
    reasons: tuple[str, ...] = ()  # the deciding policy ids
    calls: int | None = None  # agent → tool: allowed calls in the usage window

    def to_data(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "kind": self.kind,
            "detail": list(self.detail),
            "reasons": list(self.reasons),
            "calls": self.calls,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # one of FINDING_KINDS
    severity: str  # high | medium | low
    path: tuple[str, ...]  # node ids, in order: agents (a delegation between each), tools, dest
    steps: str  # the path for people: "lead → delegate → mailer → crm/read → email/send → outside"
    message: str
    reasons: tuple[str, ...]  # the deciding policy ids (and "shadow-mode" where it let a call by)
    systems: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    destination_classes: tuple[str, ...] = ()
    taints: tuple[str, ...] = ()
    # act-reach / write-reach: the chains (agent names, "delegate" between) that reach the
    # system, shortest first, at most MAX_LISTED_CHAINS; chain_count counts them all.
    chains: tuple[str, ...] = ()
    chain_count: int = 0

    def to_data(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "path": list(self.path),
            "steps": self.steps,
            "message": self.message,
            "reasons": list(self.reasons),
            "systems": list(self.systems),
            "tools": list(self.tools),
            "destination_classes": list(self.destination_classes),
            "taints": list(self.taints),
            "chains": list(self.chains),
            "chain_count": self.chain_count,
        }


@dataclass(frozen=True, slots=True)
class BlastRadius:
    agent_id: str
    policy_version: str
    days: int | None  # the usage window, when usage was given
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    findings: tuple[Finding, ...]
    direct_systems: tuple[str, ...]  # systems the agent reaches with its own calls
    reachable_systems: tuple[str, ...]  # ... and through delegation
    chains: int  # delegation chains explored (1: the agent alone)
    truncated: bool  # MAX_CHAINS was reached

    def kinds(self) -> frozenset[str]:
        return frozenset(f.kind for f in self.findings)

    def to_data(self) -> dict[str, Any]:
        counts = {kind: 0 for kind in FINDING_KINDS}
        for finding in self.findings:
            counts[finding.kind] += 1
        return {
            "format": SCHEMA_ID,
            "agent_id": self.agent_id,
            "policy_version": self.policy_version,
            "days": self.days,
            "summary": {
                "direct_systems": list(self.direct_systems),
                "reachable_systems": list(self.reachable_systems),
                "findings": counts,
                "chains": self.chains,
                "truncated": self.truncated,
            },
            "nodes": [n.to_data() for n in self.nodes],
            "edges": [e.to_data() for e in self.edges],
            "findings": [f.to_data() for f in self.findings],
        }


# --------------------------------------------------------------------------- the analysis


@dataclass(frozen=True, slots=True)
class _Point:
    permission: Permission
    effective: bool
    shadow: bool  # reachable only because the call would run in shadow mode

    @property
    def reasons(self) -> tuple[str, ...]:
        return (*self.permission.reasons, SHADOW_REASON) if self.shadow else self.permission.reasons


@dataclass(frozen=True, slots=True)
class _Hop:
    """One delegation edge on a chain: per parent taint, the tools it can hand over."""

    handable: Mapping[str, frozenset[str]]  # delegation taint -> tools
    reasons: tuple[str, ...]  # the permitting policy ids


@dataclass(frozen=True, slots=True)
class _Chain:
    agents: tuple[Agent, ...]  # root first
    hops: tuple[_Hop, ...]  # len(agents) - 1
    tools: frozenset[str]  # what the last agent's mandate may hold
    sensitivity: Sensitivity
    points: tuple[_Point, ...]
    parent: int | None  # index of the parent chain
    children: list[int] = field(default_factory=list)

    @property
    def agent(self) -> Agent:
        return self.agents[-1]

    @property
    def depth(self) -> int:
        return len(self.agents) - 1

    def own_systems(self, catalog: Catalog) -> frozenset[str]:
        return frozenset(
            spec.server
            for p in self.points
            if p.effective and (spec := catalog.get(p.permission.tool)) is not None
        )


def blast_radius(
    engine: PolicyEngine,
    catalog: Catalog,
    agent: Agent,
    agents: Sequence[Agent],
    *,
    max_depth: int = 3,
    usage: Mapping[str, Mapping[str, ToolUsage]] | None = None,
    days: int | None = None,
) -> BlastRadius:
    """The graph and findings for ``agent``; ``agents`` are the possible delegation targets
    (``agent`` itself may be among them). ``usage`` maps agent id → tool → usage."""
    chains = _explore(engine, catalog, agent, agents, max_depth)
    truncated = len(chains) >= MAX_CHAINS
    subtree = _subtree_systems(chains, catalog)
    graph = _Graph(catalog, usage)
    for chain in chains:
        graph.add_chain(chain)
    findings: list[Finding] = []
    findings.extend(_reach_findings(chains, catalog))
    for index, chain in enumerate(chains):
        findings.extend(_exfil_findings(chains, index, catalog))
        if chain.parent is not None:
            parent = chains[chain.parent]
            widened = subtree[index] - parent.own_systems(catalog)
            if widened:
                findings.append(_widening(chain, widened))
    if usage is not None:
        findings.extend(_unused(chains[0], catalog, usage.get(agent.agent_id, {}), days))
    findings.sort(key=lambda f: (FINDING_KINDS.index(f.kind), f.path))
    return BlastRadius(
        agent_id=agent.agent_id,
        policy_version=engine.version,
        days=days if usage is not None else None,
        nodes=graph.sorted_nodes(),
        edges=graph.sorted_edges(),
        findings=tuple(findings),
        direct_systems=tuple(sorted(chains[0].own_systems(catalog))),
        reachable_systems=tuple(sorted(subtree[0])),
        chains=len(chains),
        truncated=truncated,
    )


def _explore(
    engine: PolicyEngine,
    catalog: Catalog,
    root: Agent,
    agents: Sequence[Agent],
    max_depth: int,
) -> list[_Chain]:
    root_tools = _callable_tools(root, catalog)
    root_points = _effective(
        effective_permissions(engine, catalog, root), root, catalog
    )  # the same grid as ``remit analyze permissions``
    chains = [
        _Chain(
            agents=(root,),
            hops=(),
            tools=root_tools,
            sensitivity=root.ceiling.max_sensitivity,
            points=root_points,
            parent=None,
        )
    ]
    targets = sorted(
        (a for a in agents if a.status is not AgentStatus.RETIRED), key=lambda a: a.agent_id
    )
    hops_seen: dict[tuple[str, str, frozenset[str], Sensitivity, int], _Hop | None] = {}
    grids_seen: dict[tuple[str, frozenset[str], Sensitivity, int], tuple[_Point, ...]] = {}
    queue = 0
    while queue < len(chains) and len(chains) < MAX_CHAINS:
        chain = chains[queue]
        queue += 1
        if chain.depth + 1 > max_depth:
            continue
        on_chain = {a.agent_id for a in chain.agents}
        for target in targets:
            if target.agent_id in on_chain or len(chains) >= MAX_CHAINS:
                continue
            # Chains that differ only in who came before share their Cedar evaluations.
            key = (
                chain.agent.agent_id,
                target.agent_id,
                chain.tools,
                chain.sensitivity,
                chain.depth,
            )
            if key not in hops_seen:
                hops_seen[key] = _delegation(engine, catalog, chain, target)
            hop = hops_seen[key]
            if hop is None:
                continue
            tools = frozenset().union(*hop.handable.values())
            sensitivity = min(chain.sensitivity, target.ceiling.max_sensitivity)
            grid_key = (target.agent_id, tools, sensitivity, chain.depth + 1)
            if grid_key not in grids_seen:
                grids_seen[grid_key] = _effective(
                    _grid(engine, catalog, target, tools, sensitivity, depth=chain.depth + 1),
                    target,
                    catalog,
                )
            points = grids_seen[grid_key]
            chain.children.append(len(chains))
            chains.append(
                _Chain(
                    agents=(*chain.agents, target),
                    hops=(*chain.hops, hop),
                    tools=tools,
                    sensitivity=sensitivity,
                    points=points,
                    parent=queue - 1,
                )
            )
    return chains


def _callable_tools(agent: Agent, catalog: Catalog) -> frozenset[str]:
    ceiling = agent.ceiling
    return frozenset(
        name
        for name in ceiling.tools
        if (spec := catalog.get(name)) is not None and spec.privilege in ceiling.privileges
    )


def _effective(found: Sequence[Permission], agent: Agent, catalog: Catalog) -> tuple[_Point, ...]:
    points: list[_Point] = []
    for permission in found:
        spec = catalog.get(permission.tool)
        shadow = agent.mode is Mode.SHADOW or (spec is not None and spec.shadow)
        points.append(
            _Point(
                permission=permission,
                effective=permission.allowed or shadow,
                shadow=shadow and not permission.allowed,
            )
        )
    return tuple(points)


def _grid(
    engine: PolicyEngine,
    catalog: Catalog,
    agent: Agent,
    tools: frozenset[str],
    sensitivity: Sensitivity,
    *,
    depth: int,
) -> list[Permission]:
    """The effective-permissions grid of a delegated task: the handed tools, ``delegated``
    set, the child's depth and sensitivity ceiling."""
    return permission_grid(
        engine,
        catalog,
        agent,
        tools & _callable_tools(agent, catalog),
        sensitivity=sensitivity,
        delegation_depth=depth,
        placeholder="blast-radius.invalid",
    )


def _delegation(
    engine: PolicyEngine, catalog: Catalog, chain: _Chain, target: Agent
) -> _Hop | None:
    """The edge chain.agent → target, if Cedar permits it for some one-tool child mandate."""
    source = chain.agent
    candidates = sorted(chain.tools & _callable_tools(target, catalog))
    if not candidates:
        return None
    child_sensitivity = min(chain.sensitivity, target.ceiling.max_sensitivity)
    handable: dict[str, frozenset[str]] = {}
    reasons: set[str] = set()
    for taint in DELEGATION_TAINTS:
        taint_sensitivity, taint_flags = _DELEGATION_TAINT_FACTS[taint]
        allowed: set[str] = set()
        for tool in candidates:
            context = {
                "mode": source.mode.value,
                "parent_task": {
                    "id": "tsk_blastradiusblastradius",
                    "principal": "user:blast-radius@remit.local",
                    "purpose": "blast radius",
                    "sensitivity_ceiling": int(chain.sensitivity),
                    "delegation_depth": chain.depth,
                },
                "child_tools": [tool],
                "child_sensitivity": int(child_sensitivity),
                "child_budget": 1,
                "depth": chain.depth + 1,
                "same_trust_domain": trust_domain_of(source.agent_id)
                == trust_domain_of(target.agent_id),
                "taint_sensitivity": taint_sensitivity,
                "taint_flags": taint_flags,
            }
            result = engine.evaluate(
                PolicyRequest.delegation(source.agent_id, target.agent_id, context)
            )
            if result.allowed:
                allowed.add(tool)
                reasons.update(result.reasons)
        if allowed:
            handable[taint] = frozenset(allowed)
    if not handable:
        return None
    return _Hop(handable=handable, reasons=tuple(sorted(reasons)))


def _subtree_systems(chains: Sequence[_Chain], catalog: Catalog) -> list[frozenset[str]]:
    found: list[frozenset[str]] = [c.own_systems(catalog) for c in chains]
    for index in range(len(chains) - 1, -1, -1):  # children always come after their parent
        for child in chains[index].children:
            found[index] = found[index] | found[child]
    return found


# --------------------------------------------------------------------------- the graph


def agent_node_id(agent_id: str) -> str:
    return f"agent:{agent_id}"


class _Graph:
    def __init__(
        self, catalog: Catalog, usage: Mapping[str, Mapping[str, ToolUsage]] | None
    ) -> None:
        self.catalog = catalog
        self.usage = usage
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str, str], tuple[set[str], set[str], int | None]] = {}

    def node(self, node: Node) -> str:
        self.nodes.setdefault(node.id, node)
        return node.id

    def edge(
        self,
        source: str,
        target: str,
        kind: str,
        detail: set[str] | None = None,
        reasons: set[str] | None = None,
        calls: int | None = None,
    ) -> None:
        found = self.edges.setdefault((source, target, kind), (set(), set(), calls))
        found[0].update(detail or ())
        found[1].update(reasons or ())

    def add_chain(self, chain: _Chain) -> None:
        agent = chain.agent
        me = self.node(
            Node(
                agent_node_id(agent.agent_id),
                "agent",
                agent.name,
                (
                    f"owner {agent.owner}",
                    f"mode {agent.mode.value}",
                    f"status {agent.status.value}",
                ),
            )
        )
        if chain.depth:
            parent = agent_node_id(chain.agents[-2].agent_id)
            hop = chain.hops[-1]
            detail = {f"taint {t}: {', '.join(sorted(tools))}" for t, tools in hop.handable.items()}
            self.edge(parent, me, "delegates_to", detail, set(hop.reasons))
        by_tool: dict[str, list[_Point]] = {}
        for point in chain.points:
            if point.effective:
                by_tool.setdefault(point.permission.tool, []).append(point)
        for name, points in sorted(by_tool.items()):
            spec = self.catalog.tools[name]
            tool = self.node(
                Node(
                    f"tool:{name}",
                    "tool",
                    name,
                    (spec.privilege.value, *(f"risk {r}" for r in sorted(spec.risk)))
                    + (("mode shadow",) if spec.shadow else ()),
                )
            )
            calls = None
            if self.usage is not None:
                calls = self.usage.get(agent.agent_id, {}).get(name, ToolUsage()).calls
            self.edge(
                me,
                tool,
                f"can_{spec.privilege.value}",
                {_point_text(p) for p in points},
                {r for p in points for r in p.reasons},
                calls,
            )
            system = self.node(Node(f"system:{spec.server}", "system", spec.server))
            self.edge(tool, system, "reaches_system")
            for label in spec.output_labels.as_list():
                if label == "public":
                    continue
                self.edge(tool, self.node(Node(f"label:{label}", "label", label)), "outputs_label")
            kinds = sorted({a.kind.value for a in spec.destination_args})
            for point in points:
                cls = point.permission.destination_class
                if cls == "none":
                    continue
                for kind in kinds:
                    dest = self.node(
                        Node(f"destination:{kind}:{cls}", "destination", f"{kind} ({cls})")
                    )
                    self.edge(tool, dest, "sends_to", {f"after {point.permission.taint}"})

    def sorted_nodes(self) -> tuple[Node, ...]:
        order = {"agent": 0, "tool": 1, "system": 2, "destination": 3, "label": 4}
        return tuple(sorted(self.nodes.values(), key=lambda n: (order[n.kind], n.id)))

    def sorted_edges(self) -> tuple[Edge, ...]:
        return tuple(
            Edge(s, t, k, tuple(sorted(d)), tuple(sorted(r)), c)
            for (s, t, k), (d, r, c) in sorted(self.edges.items())
        )


def _point_text(point: _Point) -> str:
    p = point.permission
    text = p.destination_class if p.destination_class != "none" else "no destination"
    text += f" after {p.taint}"
    return text + " (shadow)" if point.shadow else text


# --------------------------------------------------------------------------- findings


def _chain_path(chain: _Chain) -> list[str]:
    return [agent_node_id(a.agent_id) for a in chain.agents]


def _chain_steps(chain: _Chain) -> list[str]:
    steps: list[str] = []
    for index, agent in enumerate(chain.agents):
        if index:
            steps.append("delegate")
        steps.append(agent.name)
    return steps


def _hop_reasons(chain: _Chain) -> list[str]:
    return [r for hop in chain.hops for r in hop.reasons]


def _reach_findings(chains: Sequence[_Chain], catalog: Catalog) -> list[Finding]:
    """One finding per (privilege, system) over all chains: which agent can write or act
    in a system, via how many paths (chains), listing at most ``MAX_LISTED_CHAINS`` of
    them. The path shown is the shortest chain (the agent itself when it reaches the
    system directly); tools, destination classes, taints and reasons are the union."""
    per_system: dict[tuple[str, str], list[tuple[_Chain, list[_Point]]]] = {}
    for chain in chains:  # breadth first: shorter chains come first
        mine: dict[tuple[str, str], list[_Point]] = {}
        for point in chain.points:
            spec = catalog.get(point.permission.tool)
            if not point.effective or spec is None or spec.privilege is Privilege.READ:
                continue
            mine.setdefault((spec.privilege.value, spec.server), []).append(point)
        for key, points in mine.items():
            per_system.setdefault(key, []).append((chain, points))
    found: list[Finding] = []
    for (privilege, system), reached in sorted(per_system.items()):
        first, first_points = reached[0]
        first_tools = sorted({p.permission.tool for p in first_points})
        tools = sorted({p.permission.tool for _, points in reached for p in points})
        every = [p for _, points in reached for p in points]
        direct = first.depth == 0
        paths = len(reached)
        if direct and paths == 1:
            how = "directly"
        elif direct:
            how = f"directly and via {paths - 1} delegation path{'s' if paths > 2 else ''}"
        else:
            how = f"through delegation via {paths} path{'s' if paths > 1 else ''}"
        kind = f"{privilege}-reach"
        found.append(
            Finding(
                kind=kind,
                severity=_SEVERITY[kind],
                path=(*_chain_path(first), *(f"tool:{t}" for t in first_tools), f"system:{system}"),
                steps=" → ".join([*_chain_steps(first), ", ".join(first_tools), system]),
                message=f"{first.agents[0].name} can {privilege} in {system} {how}",
                reasons=_dedupe(
                    [r for chain, _ in reached for r in _hop_reasons(chain)]
                    + [r for p in every for r in p.reasons]
                ),
                systems=(system,),
                tools=tuple(tools),
                destination_classes=_sorted_classes(p.permission.destination_class for p in every),
                taints=_sorted_taints(p.permission.taint for p in every),
                chains=tuple(
                    " → ".join(_chain_steps(chain)) for chain, _ in reached[:MAX_LISTED_CHAINS]
                ),
                chain_count=paths,
            )
        )
    return found


def _taints_of(spec: ToolSpec) -> list[tuple[str, str]]:
    """(grid taint, delegation taint) pairs that reading ``spec`` puts on a task."""
    found: list[tuple[str, str]] = []
    if spec.output_labels.sensitivity >= Sensitivity.CONFIDENTIAL:
        level = spec.output_labels.sensitivity
        found.append(
            ("confidential", "restricted" if level >= Sensitivity.RESTRICTED else "confidential")
        )
    if "untrusted" in spec.output_labels.flags:
        found.append(("untrusted", "untrusted"))
    return found


def _exfil_findings(chains: Sequence[_Chain], index: int, catalog: Catalog) -> list[Finding]:
    chain = chains[index]
    lineage: list[_Chain] = [chain]
    while lineage[-1].parent is not None:
        lineage.append(chains[lineage[-1].parent])
    lineage.reverse()  # root first; lineage[i] ends at chain.agents[i]
    acts: dict[str, list[_Point]] = {}
    for point in chain.points:
        p = point.permission
        if (
            point.effective
            and p.privilege == Privilege.ACT.value
            and p.destination_class in EXFIL_CLASSES
            and p.taint != "none"
        ):
            acts.setdefault(p.tool, []).append(point)
    found: list[Finding] = []
    for tool, points in sorted(acts.items()):
        for point in points:
            sources = _taint_sources(lineage, catalog, point.permission.taint, tool)
            if not sources:
                continue
            position, read_tool, read_point = sources[0]
            p = point.permission
            reader = lineage[position].agent.name
            path = [
                *_chain_path(chain),
                f"tool:{read_tool}",
                f"tool:{tool}",
                f"destination:{_kind(catalog, tool)}:{p.destination_class}",
            ]
            steps = [
                *_chain_steps(chain),
                f"{read_tool} (read by {reader}, taint {p.taint})",
                tool,
                p.destination_class,
            ]
            found.append(
                Finding(
                    kind="exfil-path",
                    severity=_SEVERITY["exfil-path"],
                    path=tuple(path),
                    steps=" → ".join(steps),
                    message=(
                        f"after {read_tool} ({p.taint}), {chain.agent.name} can {tool} to a "
                        f"{p.destination_class.replace('_', '-')} destination"
                    ),
                    reasons=_dedupe([*read_point.reasons, *_hop_reasons(chain), *point.reasons]),
                    systems=(catalog.tools[tool].server,),
                    tools=(*_dedupe([s[1] for s in sources]), tool),
                    destination_classes=(p.destination_class,),
                    taints=(p.taint,),
                )
            )
    return found


def _taint_sources(
    lineage: Sequence[_Chain], catalog: Catalog, taint: str, act_tool: str
) -> list[tuple[int, str, _Point]]:
    """Every (position, tool, clean-read point) on the lineage that taints a task with
    ``taint`` and whose taint every later hop carries while handing ``act_tool`` on: the
    acting agent's own reads first, then up the chain; the least sensitive first."""
    last = len(lineage) - 1
    found: list[tuple[int, str, _Point]] = []
    for position in range(last, -1, -1):
        here: list[tuple[int, str, _Point]] = []
        for point in lineage[position].points:
            p = point.permission
            if not point.effective or p.taint != "none" or p.destination_class != "none":
                continue
            spec = catalog.get(p.tool)
            if spec is None:
                continue
            for grid_taint, delegation_taint in _taints_of(spec):
                if grid_taint != taint:
                    continue
                hops = lineage[last].hops[position:]
                if all(act_tool in hop.handable.get(delegation_taint, ()) for hop in hops):
                    here.append((position, p.tool, point))
        here.sort(key=lambda s: (catalog.tools[s[1]].output_labels.sensitivity, s[1]))
        found.extend(here)
    return found


def _widening(chain: _Chain, widened: frozenset[str]) -> Finding:
    source, target = chain.agents[-2], chain.agent
    hop = chain.hops[-1]
    return Finding(
        kind="delegation-widening",
        severity=_SEVERITY["delegation-widening"],
        path=tuple(_chain_path(chain)),
        steps=" → ".join(_chain_steps(chain)),
        message=(
            f"{source.name} reaches {', '.join(sorted(widened))} only by delegating to "
            f"{target.name}"
        ),
        reasons=_dedupe([*_hop_reasons(chain)]) or hop.reasons,
        systems=tuple(sorted(widened)),
        tools=tuple(sorted(frozenset().union(*hop.handable.values()))),
        taints=_sorted_taints(hop.handable),
    )


def _unused(
    root: _Chain, catalog: Catalog, usage: Mapping[str, ToolUsage], days: int | None
) -> list[Finding]:
    found: list[Finding] = []
    window = f"in the last {days} days" if days is not None else "in the usage window"
    usable: dict[str, list[_Point]] = {}
    for point in root.points:
        if point.effective:
            usable.setdefault(point.permission.tool, []).append(point)
    for tool, points in sorted(usable.items()):
        if usage.get(tool, ToolUsage()).calls > 0:
            continue
        spec = catalog.tools[tool]
        found.append(
            Finding(
                kind="unused-grant",
                severity=_SEVERITY["unused-grant"],
                path=(agent_node_id(root.agent.agent_id), f"tool:{tool}"),
                steps=f"{root.agent.name} → {tool}",
                message=f"{root.agent.name} may call {tool} but has not {window}",
                reasons=_dedupe([r for p in points for r in p.reasons]),
                systems=(spec.server,),
                tools=(tool,),
            )
        )
    return found


def _kind(catalog: Catalog, tool: str) -> str:
    spec = catalog.tools[tool]
    return spec.destination_args[0].kind.value if spec.destination_args else "none"


def _dedupe(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _sorted_classes(items: Any) -> tuple[str, ...]:
    found = set(items)
    return tuple(c for c in DESTINATION_CLASSES if c in found)


def _sorted_taints(items: Any) -> tuple[str, ...]:
    found = set(items)
    return tuple(t for t in DELEGATION_TAINTS if t in found)
