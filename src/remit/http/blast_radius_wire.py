"""Wire models of ``GET /v1/agents/{name}/blast-radius`` (``remit.core.blast_radius``).

The JSON document is ``BlastRadius.to_data()``; these models pin its shape for
the OpenAPI description and the response validation.
"""

from typing import Annotated, Literal

from fastapi import Query

from remit.core.blast_radius import BlastRadius
from remit.http.wire import Response
from remit.visibility import DEFAULT_DAYS, MAX_DAYS

__all__ = ["DEFAULT_DAYS", "BlastRadiusOut", "DaysParam", "blast_radius_out"]

DaysParam = Annotated[
    int, Query(ge=1, le=MAX_DAYS, description="The usage window (days of audit log).")
]
FindingKind = Literal[
    "exfil-path", "delegation-widening", "act-reach", "write-reach", "unused-grant"
]


class BlastNodeOut(Response):
    id: str
    kind: Literal["agent", "tool", "system", "destination", "label"]
    label: str
    detail: list[str]


class BlastEdgeOut(Response):
    source: str
    target: str
    kind: Literal[
        "can_read",
        "can_write",
        "can_act",
        "delegates_to",
        "reaches_system",
        "sends_to",
        "outputs_label",
    ]
    detail: list[str]
    reasons: list[str]
    calls: int | None


class BlastFindingOut(Response):
    kind: FindingKind
    severity: Literal["high", "medium", "low"]
    path: list[str]
    steps: str
    message: str
    reasons: list[str]
    systems: list[str]
    tools: list[str]
    destination_classes: list[str]
    taints: list[str]
    chains: list[str]  # act-reach / write-reach: the chains, at most 20
    chain_count: int


class BlastSummaryOut(Response):
    direct_systems: list[str]
    reachable_systems: list[str]
    findings: dict[FindingKind, int]
    chains: int
    truncated: bool


class BlastRadiusOut(Response):
    format: Literal["remit.blast-radius/v1"]
    agent_id: str
    policy_version: str
    days: int | None
    summary: BlastSummaryOut
    nodes: list[BlastNodeOut]
    edges: list[BlastEdgeOut]
    findings: list[BlastFindingOut]


def blast_radius_out(report: BlastRadius) -> BlastRadiusOut:
    return BlastRadiusOut.model_validate(report.to_data())
