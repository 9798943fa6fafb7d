"""Mandates: a task's declared intent, made enforceable.

An intent is what an instance asks for when it opens a task; ``build_mandate``
checks it against the agent's ceiling and the catalog and turns it into a
frozen ``Mandate``. ``check_call`` is pipeline step 3: tool, destinations,
budget and sensitivity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from remit.canonical import JsonLimits, check_json, digest
from remit.core.catalog import Catalog, ToolSpec, check_tool_name
from remit.core.destinations import (
    Destination,
    DestinationPattern,
    extract_destinations,
    parse_pattern,
)
from remit.core.identity import Agent, Principal
from remit.core.labels import Labels, Sensitivity
from remit.errors import Denied, InvalidRequest

INTENT_LIMITS = JsonLimits(max_depth=4, max_bytes=32 * 1024, max_string=8192, max_items=256)
MAX_PURPOSE = 1000
MAX_REQUEST_TEXT = 8192
_INTENT_KEYS = {
    "purpose",
    "tools",
    "destinations",
    "sensitivity",
    "call_budget",
    "ttl_seconds",
    "delegation_depth",
    "request_text",
}


@dataclass(frozen=True, slots=True)
class MandateLimits:
    max_ttl_seconds: int = 3600
    default_ttl_seconds: int = 900
    max_call_budget: int = 10_000
    default_call_budget: int = 100
    max_delegation_depth: int = 3


@dataclass(frozen=True, slots=True)
class Mandate:
    purpose: str
    tools: frozenset[str]
    destinations: tuple[DestinationPattern, ...]  # declared in the intent
    request_derived: tuple[Destination, ...]  # extracted from the principal's request
    sensitivity_ceiling: Sensitivity
    call_budget: int
    ttl_seconds: int
    delegation_depth: int

    def to_data(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "tools": sorted(self.tools),
            "destinations": [str(p) for p in self.destinations],
            "request_derived": [str(d) for d in self.request_derived],
            "sensitivity": self.sensitivity_ceiling.label,
            "call_budget": self.call_budget,
            "ttl_seconds": self.ttl_seconds,
            "delegation_depth": self.delegation_depth,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Mandate:
        return cls(
            purpose=data["purpose"],
            tools=frozenset(data["tools"]),
            destinations=tuple(parse_pattern(p) for p in data["destinations"]),
            request_derived=tuple(_destination_from_str(d) for d in data["request_derived"]),
            sensitivity_ceiling=Sensitivity.parse(data["sensitivity"]),
            call_budget=int(data["call_budget"]),
            ttl_seconds=int(data["ttl_seconds"]),
            delegation_depth=int(data["delegation_depth"]),
        )

    def digest(self) -> str:
        return digest(self.to_data())

    def authorization_details(self) -> list[dict[str, Any]]:
        """RFC 9396 ``authorization_details``: one entry of Remit's own type."""
        return [
            {
                "type": "remit_task",
                "actions": sorted({"call"}),
                "tools": sorted(self.tools),
                "destinations": [str(p) for p in self.destinations]
                + [str(d) for d in self.request_derived],
                "sensitivity": self.sensitivity_ceiling.label,
                "call_budget": self.call_budget,
            }
        ]


def _destination_from_str(text: str) -> Destination:
    pattern = parse_pattern(text)
    return Destination(pattern.kind, pattern.value)


def build_mandate(
    intent: object,
    *,
    agent: Agent,
    catalog: Catalog,
    limits: MandateLimits,
) -> tuple[Mandate, tuple[str, ...]]:
    """Validate an intent against the agent's ceiling; return the mandate and notes.

    Bad shape raises InvalidRequest; asking for more than the ceiling raises
    Denied (reason ``outside_ceiling``). Request-derived destinations outside
    the ceiling are left out and named in the notes, never granted.
    """
    check_json(intent, INTENT_LIMITS, "intent")
    if not isinstance(intent, Mapping):
        raise InvalidRequest("intent must be an object", reason="bad_intent")
    unknown = set(intent) - _INTENT_KEYS
    if unknown:
        raise InvalidRequest(f"intent has unknown keys: {sorted(unknown)}", reason="bad_intent")

    purpose = intent.get("purpose")
    if not isinstance(purpose, str) or not purpose.strip() or len(purpose) > MAX_PURPOSE:
        raise InvalidRequest(f"purpose must be 1-{MAX_PURPOSE} characters", reason="bad_intent")

    raw_tools = intent.get("tools")
    if not isinstance(raw_tools, list) or not raw_tools:
        raise InvalidRequest(
            "tools must be a non-empty list: an empty scope is not a wildcard", reason="bad_intent"
        )
    tools = frozenset(check_tool_name(t) for t in raw_tools)
    for name in sorted(tools):
        spec = catalog.get(name)
        if spec is None:
            raise InvalidRequest(f"tool {name} is not in the catalog", reason="unknown_tool")
        if name not in agent.ceiling.tools or spec.privilege not in agent.ceiling.privileges:
            raise Denied(f"tool {name} is outside the agent's ceiling", reason="outside_ceiling")

    raw_destinations = intent.get("destinations", [])
    if not isinstance(raw_destinations, list):
        raise InvalidRequest("destinations must be a list", reason="bad_intent")
    destinations = tuple(dict.fromkeys(parse_pattern(d) for d in raw_destinations))
    for pattern in destinations:
        if not agent.ceiling.covers_pattern(pattern):
            raise Denied(
                f"destination {pattern} is outside the agent's ceiling", reason="outside_ceiling"
            )

    notes: list[str] = []
    request_derived: list[Destination] = []
    request_text = intent.get("request_text")
    if request_text is not None:
        if not isinstance(request_text, str) or len(request_text) > MAX_REQUEST_TEXT:
            raise InvalidRequest(
                f"request_text must be at most {MAX_REQUEST_TEXT} characters", reason="bad_intent"
            )
        extraction = extract_destinations(request_text)
        for dest in extraction.destinations:
            if agent.ceiling.allows_destination(dest):
                request_derived.append(dest)
            else:
                notes.append(f"request destination {dest} left out: outside the agent's ceiling")
        for rejected in extraction.rejected:
            notes.append(f"request text candidate not used ({rejected.reason})")

    sensitivity = Sensitivity.parse(intent.get("sensitivity", "internal"))
    if sensitivity > agent.ceiling.max_sensitivity:
        raise Denied("sensitivity is above the agent's ceiling", reason="outside_ceiling")

    budget = _bounded_int(
        intent, "call_budget", limits.default_call_budget, 1, limits.max_call_budget
    )
    ttl = _bounded_int(intent, "ttl_seconds", limits.default_ttl_seconds, 1, limits.max_ttl_seconds)
    depth = _bounded_int(intent, "delegation_depth", 0, 0, limits.max_delegation_depth)

    mandate = Mandate(
        purpose=purpose.strip(),
        tools=tools,
        destinations=destinations,
        request_derived=tuple(request_derived),
        sensitivity_ceiling=sensitivity,
        call_budget=budget,
        ttl_seconds=ttl,
        delegation_depth=depth,
    )
    return mandate, tuple(notes)


def _bounded_int(intent: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = intent.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{key} must be an integer from {low} to {high}", reason="bad_intent")
    return value


@dataclass(frozen=True, slots=True)
class DestinationClasses:
    explicit: tuple[
        Destination, ...
    ]  # exact mandate entry, request-derived, or the principal's own
    by_pattern: tuple[Destination, ...]  # matched only a wildcard entry
    outside: tuple[Destination, ...]  # matched nothing


def classify_destinations(
    mandate: Mandate, principal: Principal | None, destinations: Sequence[Destination]
) -> DestinationClasses:
    explicit: list[Destination] = []
    by_pattern: list[Destination] = []
    outside: list[Destination] = []
    exact = set(mandate.request_derived)
    if principal is not None:
        exact.update(principal.identifiers)
    exact.update(Destination(p.kind, p.value) for p in mandate.destinations if not p.is_wildcard())
    wildcards = [p for p in mandate.destinations if p.is_wildcard()]
    for dest in destinations:
        if dest in exact or any(
            not p.is_wildcard() and p.matches(dest) for p in mandate.destinations
        ):
            explicit.append(dest)
        elif any(p.matches(dest) for p in wildcards):
            by_pattern.append(dest)
        else:
            outside.append(dest)
    return DestinationClasses(tuple(explicit), tuple(by_pattern), tuple(outside))


@dataclass(frozen=True, slots=True)
class MandateCheck:
    violations: tuple[str, ...]  # stable reason ids, e.g. "mandate-tool-scope"
    classes: DestinationClasses
    budget_remaining: int


def check_call(
    mandate: Mandate,
    *,
    spec: ToolSpec,
    classes: DestinationClasses,
    calls_used: int,
) -> MandateCheck:
    """Pipeline step 3. The reason ids match the baseline policies' ``@id``s."""
    violations: list[str] = []
    if spec.name not in mandate.tools:
        violations.append("mandate-tool-scope")
    if classes.outside:
        violations.append("mandate-destination-scope")
    if spec.output_labels.sensitivity > mandate.sensitivity_ceiling:
        violations.append("sensitivity-ceiling")
    remaining = mandate.call_budget - calls_used
    if remaining <= 0:
        violations.append("budget-exhausted")
    return MandateCheck(tuple(violations), classes, remaining)


def taint_after(current: Labels, spec: ToolSpec) -> Labels:
    return current.join(spec.output_labels)
