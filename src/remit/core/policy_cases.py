"""Policy cases: expected decisions, checked without a server.

A case names a tool (and so an action), an agent, and the context facts that
differ from a clean, in-mandate call; it expects ``allow`` or ``deny`` and,
optionally, the exact set of deciding policy ids. ``remit policy test`` runs
a YAML file of them in CI; ``/v1/policies/explain`` evaluates one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remit.core.catalog import Catalog
from remit.core.policy import PolicyEngine, PolicyRequest, PolicyResult
from remit.core.policy_pack import ACTIONS, CONTEXT_ATTRIBUTES
from remit.errors import InvalidRequest

DEFAULT_AGENT = "spiffe://remit.local/agent/policy-test"
MAX_CASES = 10_000
_CASE_KEYS = {"name", "agent", "tool", "action", "context", "expect", "reasons"}
_TASK_KEYS = {"id", "principal", "purpose", "sensitivity_ceiling", "delegation_depth"}


def default_context() -> dict[str, Any]:
    """A clean call: in the mandate, no destinations, nothing read yet, budget left."""
    return {
        "mode": "enforce",
        "instance": "ins_policytestpolicytest",
        "task": {
            "id": "tsk_policytestpolicytest",
            "principal": "user:tester@remit.local",
            "purpose": "policy test",
            "sensitivity_ceiling": 1,
            "delegation_depth": 0,
        },
        "tool_in_mandate": True,
        "destinations": [],
        "destinations_explicit": [],
        "destinations_by_pattern": [],
        "destinations_outside": [],
        "output_sensitivity": 0,
        "output_flags": [],
        "taint_sensitivity": 0,
        "taint_flags": [],
        "budget_remaining": 10,
        "approved": False,
        "anomaly_score": 0,
        "delegated": False,
        "hour_utc": 12,
    }


def build_context(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The default context with ``facts`` laid over it (``task`` merges key by key)."""
    unknown = set(facts) - set(CONTEXT_ATTRIBUTES)
    if unknown:
        raise InvalidRequest(f"unknown context facts: {sorted(unknown)}", reason="bad_case")
    context = default_context()
    for key, value in facts.items():
        if key == "task":
            if not isinstance(value, Mapping) or set(value) - _TASK_KEYS:
                raise InvalidRequest("context.task has unknown keys", reason="bad_case")
            context["task"] = {**context["task"], **value}
        else:
            context[key] = value
    if "destinations" not in facts:
        context["destinations"] = sorted(
            set(context["destinations_explicit"])
            | set(context["destinations_by_pattern"])
            | set(context["destinations_outside"])
        )
    return context


@dataclass(frozen=True, slots=True)
class PolicyCase:
    name: str
    tool: str
    action: str
    expect: str  # "allow" | "deny"
    agent: str = DEFAULT_AGENT
    context: Mapping[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] | None = None  # the exact set of deciding ids, if given


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    case: PolicyCase
    result: PolicyResult

    @property
    def actual(self) -> str:
        return "allow" if self.result.allowed else "deny"

    @property
    def passed(self) -> bool:
        if self.actual != self.case.expect:
            return False
        return self.case.reasons is None or set(self.case.reasons) == set(self.result.reasons)


def parse_cases(data: object, catalog: Catalog | None = None) -> list[PolicyCase]:
    """Parse ``{"cases": [...]}``; the action comes from the catalog when not given."""
    if not isinstance(data, Mapping) or not isinstance(data.get("cases"), list):
        raise InvalidRequest("a case file must be a mapping with a 'cases' list", reason="bad_case")
    raw_cases = data["cases"]
    if not raw_cases or len(raw_cases) > MAX_CASES:
        raise InvalidRequest(f"a case file needs 1 to {MAX_CASES} cases", reason="bad_case")
    return [_case(raw, i, catalog) for i, raw in enumerate(raw_cases)]


def _case(raw: object, index: int, catalog: Catalog | None) -> PolicyCase:
    where = f"case #{index + 1}"
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where} must be a mapping", reason="bad_case")
    unknown = set(raw) - _CASE_KEYS
    if unknown:
        raise InvalidRequest(
            f"{where} has unknown keys: {sorted(map(str, unknown))}", reason="bad_case"
        )
    name = raw.get("name") or where
    tool = raw.get("tool")
    if not isinstance(name, str) or not isinstance(tool, str) or not tool:
        raise InvalidRequest(f"{where} needs a tool", reason="bad_case")
    action = raw.get("action")
    if action is None and catalog is not None and (spec := catalog.get(tool)) is not None:
        action = spec.privilege.value
    if action not in ACTIONS:
        raise InvalidRequest(
            f"{where}: action must be read, write or act (or the tool must be in the catalog)",
            reason="bad_case",
        )
    expect = raw.get("expect")
    if expect not in ("allow", "deny"):
        raise InvalidRequest(f"{where}: expect must be allow or deny", reason="bad_case")
    context = raw.get("context") or {}
    if not isinstance(context, Mapping):
        raise InvalidRequest(f"{where}: context must be a mapping", reason="bad_case")
    build_context(context)  # refuse unknown facts now, not at evaluation
    reasons = raw.get("reasons")
    if reasons is not None and (
        not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons)
    ):
        raise InvalidRequest(f"{where}: reasons must be a list of policy ids", reason="bad_case")
    agent = raw.get("agent", DEFAULT_AGENT)
    if not isinstance(agent, str):
        raise InvalidRequest(f"{where}: agent must be a string", reason="bad_case")
    return PolicyCase(
        name=name,
        tool=tool,
        action=str(action),
        expect=str(expect),
        agent=agent,
        context=dict(context),
        reasons=tuple(reasons) if reasons is not None else None,
    )


def evaluate_case(engine: PolicyEngine, case: PolicyCase) -> CaseOutcome:
    request = PolicyRequest(
        agent_id=case.agent, action=case.action, tool=case.tool, context=build_context(case.context)
    )
    return CaseOutcome(case, engine.evaluate(request))


def run_cases(engine: PolicyEngine, cases: Sequence[PolicyCase]) -> list[CaseOutcome]:
    return [evaluate_case(engine, case) for case in cases]
