"""Effective permissions: what an agent can really do under the active policy set.

Not read from role names: for every catalog tool within the agent's ceiling
(and a task's mandate, when given), the real Cedar policy set is evaluated over
a small grid of context combinations, and each combination is reported allowed
or denied with the deciding policy ids.

The grid:

* destination class of the call: ``none``, and for tools that declare
  destination arguments also ``explicit``, ``by_pattern`` and ``outside``
  (which mandate entry, if any, would cover the destination);
* prior taint of the task: ``none``, ``untrusted`` (read third-party content)
  and ``confidential`` (read confidential data).

Everything else is a clean call of a mandate that could be issued within the
ceiling: ``tool_in_mandate`` is true, the output labels are the tool's catalog
labels, the sensitivity ceiling is the agent's (or the mandate's), budget is
left, no anomaly. A deny that a human approval could lift (an
``@approval("required")`` forbid) is reported as denied, naming that policy.

Limits: the destination classes are not checked against the ceiling's
destination patterns (a ceiling that can never cover a kind still shows
``explicit`` and ``by_pattern`` rows), and context facts outside the grid
(time of day, anomaly score, budget, delegation) are held at their clean values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from remit.core.catalog import Catalog, ToolSpec
from remit.core.identity import Agent
from remit.core.labels import Sensitivity
from remit.core.mandate import Mandate
from remit.core.policy import PolicyEngine, PolicyRequest
from remit.core.policy_cases import build_context

__all__ = [
    "DESTINATION_CLASSES",
    "TAINTS",
    "Permission",
    "effective_permissions",
    "permission_grid",
]

DESTINATION_CLASSES: Final[tuple[str, ...]] = ("none", "explicit", "by_pattern", "outside")
TAINTS: Final[tuple[str, ...]] = ("none", "untrusted", "confidential")

_TAINT_FACTS: Final[dict[str, dict[str, Any]]] = {
    "none": {"taint_sensitivity": int(Sensitivity.PUBLIC), "taint_flags": []},
    "untrusted": {"taint_sensitivity": int(Sensitivity.PUBLIC), "taint_flags": ["untrusted"]},
    "confidential": {"taint_sensitivity": int(Sensitivity.CONFIDENTIAL), "taint_flags": []},
}


@dataclass(frozen=True, slots=True)
class Permission:
    """One grid point: may ``tool`` be called with this destination class after this taint?"""

    tool: str
    privilege: str
    destination_class: str  # one of DESTINATION_CLASSES
    taint: str  # one of TAINTS
    allowed: bool
    reasons: tuple[str, ...]  # the deciding policy ids

    def to_data(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "privilege": self.privilege,
            "destination_class": self.destination_class,
            "taint": self.taint,
            "allowed": self.allowed,
            "reasons": list(self.reasons),
        }


def effective_permissions(
    engine: PolicyEngine,
    catalog: Catalog,
    agent: Agent,
    *,
    mandate: Mandate | None = None,
) -> list[Permission]:
    """Every grid point for every tool the agent (and the mandate) could call, sorted by tool."""
    ceiling = agent.ceiling
    sensitivity = mandate.sensitivity_ceiling if mandate is not None else ceiling.max_sensitivity
    tools = [
        name
        for name, spec in catalog.tools.items()
        if name in ceiling.tools
        and spec.privilege in ceiling.privileges
        and (mandate is None or name in mandate.tools)
    ]
    return permission_grid(engine, catalog, agent, tools, sensitivity=sensitivity)


def permission_grid(
    engine: PolicyEngine,
    catalog: Catalog,
    agent: Agent,
    tools: Iterable[str],
    *,
    sensitivity: Sensitivity,
    delegation_depth: int | None = None,
    placeholder: str = "effective-permissions.invalid",
) -> list[Permission]:
    """The grid (destination class x prior taint) for each of ``tools`` (catalog tools,
    evaluated in name order) with real Cedar: a clean in-mandate call of ``agent`` under
    a task with ``sensitivity`` as its ceiling. With ``delegation_depth`` the task is a
    delegated one at that depth (``delegated`` is set). ``placeholder`` is the host of the
    stand-in destination: policies see only its class."""
    found: list[Permission] = []
    for name in sorted(set(tools)):
        spec = catalog.tools[name]
        task: dict[str, Any] = {"sensitivity_ceiling": int(sensitivity)}
        delegated: dict[str, Any] = {}
        if delegation_depth is not None:
            task["delegation_depth"] = delegation_depth
            delegated["delegated"] = True
        classes = DESTINATION_CLASSES if spec.destination_args else ("none",)
        for destination_class in classes:
            for taint in TAINTS:
                facts: dict[str, Any] = {
                    "mode": agent.mode.value,
                    "task": task,
                    "tool_in_mandate": True,
                    **delegated,
                    "output_sensitivity": int(spec.output_labels.sensitivity),
                    "output_flags": sorted(spec.output_labels.flags),
                    **_TAINT_FACTS[taint],
                    **_destination_facts(spec, destination_class, placeholder),
                }
                result = engine.evaluate(
                    PolicyRequest(
                        agent_id=agent.agent_id,
                        action=spec.privilege.value,
                        tool=name,
                        context=build_context(facts),
                    )
                )
                found.append(
                    Permission(
                        tool=name,
                        privilege=spec.privilege.value,
                        destination_class=destination_class,
                        taint=taint,
                        allowed=result.allowed,
                        reasons=result.reasons,
                    )
                )
    return found


def _destination_facts(
    spec: ToolSpec, destination_class: str, placeholder: str
) -> dict[str, list[str]]:
    if destination_class == "none":
        return {}
    # A stand-in destination of the tool's first declared kind; policies see only its class.
    kind = spec.destination_args[0].kind.value
    return {f"destinations_{destination_class}": [f"{kind}:{placeholder}"]}
