"""GET /v1/agents/{name}/blast-radius over a live server, with usage from real decisions."""

from __future__ import annotations

from typing import Any

from remit.client import RemitClient
from remit.core.blast_radius import FINDING_KINDS, SCHEMA_ID
from tests.http.conftest import Live


def kinds(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["kind"] == kind]


def test_blast_radius_with_usage_from_the_audit_log(live: Live) -> None:
    agent = live.new_agent("blast-bot")
    task = agent.open_task(tools=["ticket/read", "docs/read"], sensitivity="internal")
    assert agent.authorize(task["task_token"], "docs/read", {}).json()["allowed"]
    assert agent.authorize(task["task_token"], "docs/read", {}).json()["allowed"]
    denied = agent.authorize(task["task_token"], "crm/read", {}).json()
    assert not denied["allowed"]

    response = live.client.get(
        "/v1/agents/blast-bot/blast-radius", params={"days": 7}, headers=live.operator("readonly")
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["format"] == SCHEMA_ID
    assert report["agent_id"] == "spiffe://acme.example/agent/blast-bot"
    assert report["policy_version"] == live.remit.policy.version
    assert report["days"] == 7
    assert set(report["summary"]["findings"]) == set(FINDING_KINDS)
    calls = {
        e["target"]: e["calls"]
        for e in report["edges"]
        if e["source"] == "agent:spiffe://acme.example/agent/blast-bot"
        and e["kind"].startswith("can_")
    }
    assert calls["tool:docs/read"] == 2
    assert calls["tool:crm/read"] == 0  # a denied attempt is not a use
    unused = {f["tools"][0] for f in kinds(report, "unused-grant")}
    assert "docs/read" not in unused
    assert {"crm/read", "ticket/read", "email/send", "notes/write"} <= unused
    (act,) = kinds(report, "act-reach")
    assert act["systems"] == ["email"]
    # Other live agents share the trust domain: the baseline permits the edges, and an
    # agent with the same ceiling widens nothing.
    assert kinds(report, "delegation-widening") == []
    assert kinds(report, "exfil-path") == []

    with RemitClient(live.base_url, admin_token=live.admin["Authorization"][7:]) as client:
        assert client.blast_radius("blast-bot", days=7) == report
        assert client.blast_radius("blast-bot")["days"] == 30


def test_blast_radius_errors(live: Live) -> None:
    live.new_agent("blast-other")
    missing = live.client.get("/v1/agents/nobody/blast-radius", headers=live.admin)
    assert missing.status_code == 404
    for days in ("0", "366", "x"):
        bad = live.client.get(
            "/v1/agents/blast-other/blast-radius", params={"days": days}, headers=live.admin
        )
        assert bad.status_code == 400, (days, bad.text)
    unauthenticated = live.client.get("/v1/agents/blast-other/blast-radius")
    assert unauthenticated.status_code == 401
    # Every scope covers readonly; a bad token does not.
    approver = live.client.get(
        "/v1/agents/blast-other/blast-radius", headers=live.operator("approver")
    )
    assert approver.status_code == 200
    bogus = live.client.get(
        "/v1/agents/blast-other/blast-radius", headers={"Authorization": "Bearer rat_bogus"}
    )
    assert bogus.status_code == 401
