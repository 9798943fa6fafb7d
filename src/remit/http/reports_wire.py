"""``GET /v1/reports/compliance`` (readonly): the standards report as JSON.

The document is ``remit.core.compliance.ComplianceReport.to_data()`` (see
``remit.reports`` for how the evidence is gathered: read-only, bounded); these models
pin its outer shape for the OpenAPI description and the response validation. The
Markdown and HTML renderings are made locally by ``remit report compliance``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query

from remit.core.compliance import Thresholds
from remit.http.wire import Response
from remit.reports import compliance
from remit.service import Remit

__all__ = ["REPORT_ROUTE_SCOPES", "ComplianceReportOut", "add_report_routes"]

REPORT_ROUTE_SCOPES: Final[dict[tuple[str, str], str]] = {
    ("GET", "/v1/reports/compliance"): "readonly",
}

WindowParam = Annotated[
    int, Query(ge=1, le=3660, description="The window for tasks, decisions and grant use.")
]
MaxAgeParam = Annotated[
    int, Query(ge=1, le=36_500, description="Sealed secrets older than this many days are stale.")
]


class ReportItemOut(Response):
    id: str
    title: str
    coverage: str
    status: str
    how: str
    controls: list[str]
    metrics: list[str]
    findings: list[str]


class ReportFrameworkOut(Response):
    id: str
    title: str
    items: list[ReportItemOut]


class ReportMetricOut(Response):
    title: str
    summary: str
    value: dict[str, Any]
    findings: list[str]


class ComplianceReportOut(Response):
    report: str
    version: int
    generated_at: str | None
    window_days: int
    summary: dict[str, int]
    controls: dict[str, str]
    metrics: dict[str, ReportMetricOut]
    frameworks: list[ReportFrameworkOut]


RouteFactory = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]


def add_report_routes(router: APIRouter, remit: Remit, route: RouteFactory) -> None:
    """Add the route above; ``route`` is the operator route factory (auth and scopes)."""

    @route("GET", "/v1/reports/compliance", response_model=ComplianceReportOut)
    def compliance_report(days: WindowParam = 30, max_age_days: MaxAgeParam = 90) -> Any:
        report = compliance(
            remit, days=days, thresholds=Thresholds(max_secret_age_days=max_age_days)
        )
        return ComplianceReportOut.model_validate(report.to_data())
