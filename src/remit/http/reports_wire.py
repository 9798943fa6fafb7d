"""The report routes (docs/compliance.md):

* ``GET /v1/reports/compliance`` (readonly): the standards report as JSON, the
  document ``remit.core.compliance.ComplianceReport.to_data()`` (see ``remit.reports``
  for how the evidence is gathered: read-only, bounded); it uses the stored NHI
  inventory for its NHI items when one was imported;
* ``PUT /v1/inventory`` (admin): import an NHI inventory, replacing the stored one.
  The body is the JSON form, ``{"credentials": [...], "source_sha256": "<hex>"}``
  (``source_sha256``, the file's digest, is optional: without it, the SHA-256 of the
  canonical JSON of the credentials is recorded). Checked whole: one bad row and
  nothing is stored (400, reason ``bad_inventory``, naming the row);
* ``GET /v1/inventory/report`` (readonly): the sprawl report over the stored
  inventory (404, reason ``no_inventory``, when none was imported).

These models pin the documents' outer shape for the OpenAPI description and the
response validation. Markdown and HTML renderings are made by the CLI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query
from pydantic import Field, StringConstraints

from remit.canonical import canonical_bytes_unchecked
from remit.core.compliance import Thresholds
from remit.core.inventory import parse_inventory
from remit.errors import NotFound
from remit.http.auth import operator
from remit.http.wire import Request, Response
from remit.reports import compliance, report_data, stored_inventory_report
from remit.service import AdminIdentity, Remit

__all__ = [
    "REPORT_ROUTE_SCOPES",
    "ComplianceReportOut",
    "InventoryImportOut",
    "InventoryIn",
    "InventoryReportOut",
    "add_report_routes",
]

REPORT_ROUTE_SCOPES: Final[dict[tuple[str, str], str]] = {
    ("GET", "/v1/reports/compliance"): "readonly",
    ("PUT", "/v1/inventory"): "admin",
    ("GET", "/v1/inventory/report"): "readonly",
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


class InventoryIn(Request):
    """The JSON form of an inventory; each row is checked by ``parse_inventory``."""

    credentials: Annotated[list[dict[str, Any]], Field(min_length=1)]
    source_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class InventoryImportOut(Response):
    import_id: str
    source_sha256: str
    imported_by: str
    imported_at: str
    credentials: int


class InventoryReportOut(Response):
    generated_at: str
    max_age_days: int
    credentials: int
    brokered: list[str]
    shared: list[dict[str, Any]]
    stale: list[dict[str, Any]]
    missing_owner: list[str]
    unbrokered_use: list[dict[str, Any]]
    unbrokered_credentials: list[str]
    unknown_users: list[dict[str, Any]]
    unused: list[str]
    future_dated: list[str]
    findings: int
    source_sha256: str
    # The stored import the report was made from.
    import_: Annotated[InventoryImportOut, Field(alias="import")]


RouteFactory = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]


def add_report_routes(router: APIRouter, remit: Remit, route: RouteFactory) -> None:
    """Add the route above; ``route`` is the operator route factory (auth and scopes)."""

    @route("GET", "/v1/reports/compliance", response_model=ComplianceReportOut)
    def compliance_report(days: WindowParam = 30, max_age_days: MaxAgeParam = 90) -> Any:
        report = compliance(
            remit, days=days, thresholds=Thresholds(max_secret_age_days=max_age_days)
        )
        return ComplianceReportOut.model_validate(report.to_data())

    # A default, not an Annotated[...] hint: the hint would be resolved from the module's
    # globals (``from __future__ import annotations``), where ``remit`` is not.
    admin = Depends(operator(remit, "admin"))

    @route("PUT", "/v1/inventory", response_model=InventoryImportOut)
    def import_inventory(body: InventoryIn, who: AdminIdentity = admin) -> InventoryImportOut:
        document = {"credentials": body.credentials}
        digest = (
            body.source_sha256 or hashlib.sha256(canonical_bytes_unchecked(document)).hexdigest()
        )
        items = parse_inventory(json.dumps(document), "json")
        record = remit.import_inventory(items, digest, by=who.name)
        return InventoryImportOut.model_validate(record.to_data())

    @route("GET", "/v1/inventory/report", 404, response_model=InventoryReportOut)
    def inventory_report(max_age_days: MaxAgeParam = 90) -> Any:
        stored = stored_inventory_report(remit, max_age_days=max_age_days)
        if stored is None:
            raise NotFound("no inventory was imported", reason="no_inventory")
        data = report_data(stored[0], stored=stored[1])
        return InventoryReportOut.model_validate(data)
