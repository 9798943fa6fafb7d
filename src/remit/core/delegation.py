"""Delegation: a child mandate that is a subset of its parent's in every dimension.

``narrow_mandate`` is pure. It takes the parent task's mandate, what is left of
it (budget, time, depth) and the narrowing the delegating agent asks for, and
returns the child's mandate, or raises ``Denied`` naming the dimension that
would widen (reasons ``widens_tools``, ``widens_destinations``,
``widens_sensitivity``, ``widens_budget``, ``widens_ttl``, ``widens_depth``,
``delegation_depth_exceeded``). The child's ceiling check against agent B's own
ceiling is ``check_within_ceiling``.

Narrowing keys: ``purpose`` (default: the parent's), ``tools`` (default: the
parent's), ``destinations`` (default: the parent's declared and request-derived
ones, as exact entries), ``sensitivity`` (default: the parent's ceiling),
``call_budget`` (required: carved out of the parent's remaining budget),
``ttl_seconds`` (default: the parent's remaining time), ``delegation_depth``
(default 0: the child may not delegate further).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from remit.canonical import check_json
from remit.core.catalog import Catalog, check_tool_name
from remit.core.destinations import DestinationPattern, parse_pattern
from remit.core.identity import Agent, pattern_within
from remit.core.labels import Sensitivity
from remit.core.mandate import INTENT_LIMITS, MAX_PURPOSE, Mandate
from remit.errors import Denied, InvalidRequest

NARROWING_KEYS = frozenset(
    {"purpose", "tools", "destinations", "sensitivity", "call_budget", "ttl_seconds",
     "delegation_depth"}
)  # fmt: skip


def _widens(dimension: str, message: str) -> Denied:
    return Denied(
        f"the delegation would widen the mandate: {message}", reason=f"widens_{dimension}"
    )


def _parent_patterns(parent: Mandate) -> tuple[DestinationPattern, ...]:
    derived = tuple(parse_pattern(str(d)) for d in parent.request_derived)
    return parent.destinations + derived


def narrow_mandate(
    parent: Mandate,
    narrowing: object,
    *,
    parent_depth: int,
    budget_left: int,
    seconds_left: float,
    max_depth: int,
) -> Mandate:
    """The child's mandate; see the module docstring. Never wider than ``parent``."""
    check_json(narrowing, INTENT_LIMITS, "narrowing")
    if not isinstance(narrowing, Mapping):
        raise InvalidRequest("the narrowing must be an object", reason="bad_narrowing")
    unknown = set(narrowing) - NARROWING_KEYS
    if unknown:
        raise InvalidRequest(
            f"the narrowing has unknown keys: {sorted(unknown)}", reason="bad_narrowing"
        )
    if parent.delegation_depth < 1 or parent_depth + 1 > max_depth:
        raise Denied("this task may not delegate any further", reason="delegation_depth_exceeded")

    purpose = narrowing.get("purpose", parent.purpose)
    if not isinstance(purpose, str) or not purpose.strip() or len(purpose) > MAX_PURPOSE:
        raise InvalidRequest(f"purpose must be 1-{MAX_PURPOSE} characters", reason="bad_narrowing")

    raw_tools = narrowing.get("tools", sorted(parent.tools))
    if not isinstance(raw_tools, list) or not raw_tools:
        raise InvalidRequest("tools must be a non-empty list", reason="bad_narrowing")
    tools = frozenset(check_tool_name(t) for t in raw_tools)
    if not tools <= parent.tools:
        raise _widens("tools", f"{sorted(tools - parent.tools)} not in the parent's mandate")

    outer = _parent_patterns(parent)
    raw_destinations = narrowing.get("destinations", [str(p) for p in outer])
    if not isinstance(raw_destinations, list):
        raise InvalidRequest("destinations must be a list", reason="bad_narrowing")
    destinations = tuple(dict.fromkeys(parse_pattern(d) for d in raw_destinations))
    for pattern in destinations:
        if not any(pattern_within(pattern, o) for o in outer):
            raise _widens("destinations", f"{pattern} is not covered by the parent's mandate")

    sensitivity = Sensitivity.parse(narrowing.get("sensitivity", parent.sensitivity_ceiling.label))
    if sensitivity > parent.sensitivity_ceiling:
        raise _widens("sensitivity", "above the parent's sensitivity ceiling")

    budget = narrowing.get("call_budget")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InvalidRequest("call_budget must be a positive integer", reason="bad_narrowing")
    if budget > budget_left:
        raise _widens("budget", f"{budget} calls asked, {max(budget_left, 0)} left to the parent")

    remaining = max(0, math.floor(seconds_left))
    ttl = narrowing.get("ttl_seconds", remaining)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        if remaining < 1:
            raise _widens("ttl", "the parent has no time left")
        raise InvalidRequest("ttl_seconds must be a positive integer", reason="bad_narrowing")
    if ttl > remaining:
        raise _widens("ttl", "longer than the parent's remaining time")

    depth = narrowing.get("delegation_depth", 0)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise InvalidRequest(
            "delegation_depth must be a non-negative integer", reason="bad_narrowing"
        )
    if depth > parent.delegation_depth - 1 or parent_depth + 1 + depth > max_depth:
        raise _widens("depth", "deeper than the parent's delegation allowance")

    return Mandate(
        purpose=purpose.strip(),
        tools=tools,
        destinations=destinations,
        request_derived=(),
        sensitivity_ceiling=sensitivity,
        call_budget=budget,
        ttl_seconds=ttl,
        delegation_depth=depth,
    )


def check_within_ceiling(mandate: Mandate, agent: Agent, catalog: Catalog) -> None:
    """Raise Denied (``outside_ceiling``) unless agent B's ceiling covers the child mandate."""
    for name in sorted(mandate.tools):
        spec = catalog.get(name)
        if (
            spec is None
            or name not in agent.ceiling.tools
            or spec.privilege not in agent.ceiling.privileges
        ):
            raise Denied(f"tool {name} is outside the actor's ceiling", reason="outside_ceiling")
    for pattern in mandate.destinations:
        if not agent.ceiling.covers_pattern(pattern):
            raise Denied(
                f"destination {pattern} is outside the actor's ceiling", reason="outside_ceiling"
            )
    if mandate.sensitivity_ceiling > agent.ceiling.max_sensitivity:
        raise Denied("sensitivity is above the actor's ceiling", reason="outside_ceiling")
