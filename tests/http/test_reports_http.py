"""GET /v1/reports/compliance over a live server: readonly scope, JSON shape, evidence."""

from __future__ import annotations

from tests.conftest import CEILING
from tests.http.conftest import Live


def test_compliance_report_over_http(live: Live) -> None:
    live.new_agent("report-bot")
    response = live.client.get(
        "/v1/reports/compliance", params={"days": 7}, headers=live.operator("readonly")
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["report"] == "remit-compliance" and report["window_days"] == 7
    assert [f["id"] for f in report["frameworks"]] == [
        "owasp-asi-2026",
        "owasp-nhi-2025",
        "nist-ai-rmf-1.0",
        "csa-maestro",
    ]
    owners = report["metrics"]["owners"]["value"]
    assert owners["agents"] == 1
    # sam@acme.example is an identifier of the registered principal
    assert owners["owner_not_a_principal"] == []
    grants = report["metrics"]["unused_grants"]["value"]
    assert grants["grants"] == len(CEILING["tools"]) == grants["unused"]  # nothing called yet
    assert report["metrics"]["audit_chain"]["value"]["ok"] is True
    assert sum(report["summary"].values()) == 31


def test_compliance_report_needs_a_token_and_checks_input(live: Live) -> None:
    assert live.client.get("/v1/reports/compliance").status_code == 401
    bad = live.client.get(
        "/v1/reports/compliance", params={"days": 0}, headers=live.operator("readonly")
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_request"
