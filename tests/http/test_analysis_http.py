"""GET /v1/agents/{name}/effective-permissions over a live server."""

from __future__ import annotations

from typing import Any

from remit.client import RemitClient
from tests.http.conftest import Live


def by_point(report: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(p["tool"], p["destination_class"], p["taint"]): p for p in report["permissions"]}


def test_effective_permissions(live: Live) -> None:
    agent = live.new_agent("perm-bot")
    response = live.client.get(
        "/v1/agents/perm-bot/effective-permissions", headers=live.operator("readonly")
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["agent_id"] == "spiffe://acme.example/agent/perm-bot"
    assert report["task_id"] is None
    assert report["policy_version"] == live.remit.policy.version
    points = by_point(report)
    assert points[("docs/read", "none", "untrusted")]["allowed"]
    assert not points[("email/send", "outside", "none")]["allowed"]
    exfil = points[("email/send", "by_pattern", "untrusted")]
    assert not exfil["allowed"] and exfil["reasons"] == ["exfiltration-after-untrusted-read"]

    task = agent.open_task(tools=["docs/read"], sensitivity="public")
    narrowed = live.client.get(
        "/v1/agents/perm-bot/effective-permissions",
        params={"task_id": task["task_id"]},
        headers=live.admin,
    ).json()
    assert narrowed["task_id"] == task["task_id"]
    assert {p["tool"] for p in narrowed["permissions"]} == {"docs/read"}

    with RemitClient(live.base_url, admin_token=live.admin["Authorization"][7:]) as client:
        assert client.effective_permissions("perm-bot") == report


def test_effective_permissions_unknown(live: Live) -> None:
    missing = live.client.get("/v1/agents/nobody/effective-permissions", headers=live.admin)
    assert missing.status_code == 404
    live.new_agent("perm-other")
    other = live.new_agent("perm-owner")
    task = other.open_task()
    foreign = live.client.get(
        "/v1/agents/perm-other/effective-permissions",
        params={"task_id": task["task_id"]},
        headers=live.admin,
    )
    assert foreign.status_code == 404
