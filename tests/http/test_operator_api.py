"""The operator routes over HTTP: agents, tasks, catalog, policies, audit, keys, kill switch."""

from __future__ import annotations

import itertools
import json

import yaml

from tests.conftest import CATALOG
from tests.http.conftest import Live

NO_DOCS = '@id("no-docs") forbid (principal, action, resource == Tool::"docs/read");'


def test_agent_lifecycle(live: Live) -> None:
    body = {
        "name": "life-bot",
        "owner": "sam@acme.example",
        "description": "lives and retires",
        "ceiling": {"tools": ["docs/read"], "privileges": ["read"]},
    }
    created = live.client.post("/v1/agents", json=body, headers=live.admin)
    assert created.status_code == 201
    agent = created.json()
    assert agent["agent_id"] == "spiffe://acme.example/agent/life-bot"
    assert agent["status"] == "active" and agent["mode"] == "enforce"
    assert agent["ceiling"]["tools"] == ["docs/read"]
    assert live.client.get("/v1/agents/life-bot", headers=live.admin).json() == agent
    names = [a["name"] for a in live.client.get("/v1/agents", headers=live.admin).json()["agents"]]
    assert "life-bot" in names

    post = live.client.post
    suspended = post("/v1/agents/life-bot/suspend", json={"reason": "audit"}, headers=live.admin)
    assert suspended.json()["status"] == "suspended"
    assert post("/v1/agents/life-bot/resume", headers=live.admin).json()["status"] == "active"
    shadow = live.client.put(
        "/v1/agents/life-bot/mode", json={"mode": "shadow"}, headers=live.admin
    )
    assert shadow.json()["mode"] == "shadow"
    join = post("/v1/agents/life-bot/join-tokens", json={"ttl_seconds": 60}, headers=live.admin)
    assert join.status_code == 201 and join.json()["join_token"].startswith("rjt_")
    assert post("/v1/agents/life-bot/retire", headers=live.admin).json()["status"] == "retired"
    again = post("/v1/agents/life-bot/resume", headers=live.admin)
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    bad_ttl = post("/v1/agents/life-bot/join-tokens", json={"ttl_seconds": 0}, headers=live.admin)
    assert bad_ttl.status_code == 400


def test_principals_and_task_revocation(live: Live) -> None:
    principal = live.client.post(
        "/v1/principals",
        json={
            "principal_id": "user:kim@acme.example",
            "display_name": "Kim",
            "identifiers": ["email:kim@acme.example"],
        },
        headers=live.admin,
    )
    assert principal.status_code == 201
    assert principal.json() == {
        "principal_id": "user:kim@acme.example",
        "display_name": "Kim",
        "identifiers": ["email:kim@acme.example"],
    }
    agent = live.new_agent("revoke-bot")
    task = agent.open_task()
    revoked = live.client.post(
        f"/v1/tasks/{task['task_id']}/revoke", json={"reason": "incident"}, headers=live.admin
    )
    assert revoked.json() == {"closed": [task["task_id"]], "outstanding_leases": []}
    seen = live.client.get(f"/v1/tasks/{task['task_id']}", headers=live.admin).json()
    assert seen["status"] == "revoked" and seen["end_reason"] == "incident"
    assert agent.authorize(task["task_token"], "docs/read", {}).status_code == 401


def test_catalog(live: Live) -> None:
    tools = live.client.get("/v1/catalog", headers=live.admin).json()["tools"]
    by_name = {t["name"]: t for t in tools}
    assert by_name["email/send"]["destinations"] == {"cc": "email", "to": "email"}
    assert by_name["shadow/tool"]["mode"] == "shadow"
    manifest = yaml.safe_load(CATALOG)
    manifest["tools"].append({"name": "wiki/read", "privilege": "read", "labels": ["internal"]})
    valid = live.client.post("/v1/catalog/validate", json=manifest, headers=live.admin)
    assert valid.json() == {"valid": True, "problems": []}
    act = {"tools": [{"name": "pay/send", "privilege": "act"}]}
    invalid = live.client.post("/v1/catalog/validate", json=act, headers=live.admin).json()
    assert invalid["valid"] is False and "destination" in invalid["problems"][0]
    refused = live.client.put("/v1/catalog", json=act, headers=live.admin)
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_request"
    put = live.client.put("/v1/catalog", json=manifest, headers=live.admin)
    assert put.status_code == 200
    assert "wiki/read" in {t["name"] for t in put.json()["tools"]}
    assert len(live.client.get("/v1/catalog", headers=live.admin).json()["tools"]) == len(tools) + 1


def test_policies(live: Live) -> None:
    before = live.client.get("/v1/policies", headers=live.admin).json()
    broken = {"files": {"bad.cedar": "forbid (principal, action, resource"}}
    check = live.client.post("/v1/policies/validate", json=broken, headers=live.admin).json()
    assert check["valid"] is False and check["problems"]
    refused = live.client.post("/v1/policies", json=broken, headers=live.admin)
    assert refused.status_code == 422 and refused.json()["code"] == "policy_invalid"
    assert refused.json()["problems"]
    good = {"files": {"ops/no-docs.cedar": NO_DOCS}}
    ok = live.client.post("/v1/policies/validate", json=good, headers=live.admin).json()
    assert ok == {"valid": True, "problems": []}
    loaded = live.client.post("/v1/policies", json=good, headers=live.admin)
    assert loaded.status_code == 200
    version = loaded.json()["version"]
    listed = live.client.get("/v1/policies", headers=live.admin).json()
    assert listed["active"] == version
    assert {"version": version, "files": ["ops/no-docs.cedar"], "active": True}.items() <= next(
        v for v in listed["versions"] if v["version"] == version
    ).items()

    explained = live.client.post(
        "/v1/policies/explain", json={"tool": "docs/read"}, headers=live.admin
    ).json()
    assert explained["allowed"] is False and explained["reasons"] == ["no-docs"]
    assert explained["explanation"] == "denied by no-docs" and explained["version"] == version
    crm = live.client.post(
        "/v1/policies/explain",
        json={"tool": "crm/read", "context": {"taint_flags": ["untrusted"]}},
        headers=live.admin,
    ).json()
    assert crm["allowed"] is True
    unknown = live.client.post(
        "/v1/policies/explain", json={"tool": "x/y", "context": {"nope": 1}}, headers=live.admin
    )
    assert unknown.status_code == 400

    # Roll back to the previous set (or to a set without operator policies).
    if before["versions"]:
        back = before["versions"][-1]["version"]
        rolled = live.client.post(f"/v1/policies/{back}/activate", headers=live.admin)
        assert rolled.json() == {"version": back}
    else:
        empty = {"files": {"empty.cedar": "// nothing"}}
        assert live.client.post("/v1/policies", json=empty, headers=live.admin).status_code == 200
    missing = live.client.post("/v1/policies/pv_nothing/activate", headers=live.admin)
    assert missing.status_code == 404


def test_audit_query_export_and_verify(live: Live) -> None:
    agent = live.new_agent("audit-bot")
    task = agent.open_task()
    assert agent.authorize(task["task_token"], "docs/read", {}).json()["allowed"]
    assert not agent.authorize(task["task_token"], "crm/export", {}).json()["allowed"]

    page = live.client.get(
        "/v1/audit", params={"kind": "decision", "task": task["task_id"]}, headers=live.admin
    ).json()
    assert [r["data"]["outcome"] for r in page["records"]] == ["allow", "deny"]
    assert page["next_after_seq"] is None
    by_name = live.client.get(
        "/v1/audit", params={"agent": "audit-bot", "outcome": "deny"}, headers=live.admin
    ).json()
    assert [r["data"]["tool"] for r in by_name["records"]] == ["crm/export"]
    kinds = live.client.get(
        "/v1/audit",
        params=[("kind", "task.opened"), ("kind", "agent.registered"), ("limit", "1")],
        headers=live.admin,
    ).json()
    assert len(kinds["records"]) == 1 and kinds["next_after_seq"] == kinds["records"][0]["seq"]
    nxt = live.client.get(
        "/v1/audit",
        params={"after_seq": kinds["next_after_seq"], "kind": "task.opened", "limit": 1000},
        headers=live.admin,
    ).json()
    assert all(r["seq"] > kinds["next_after_seq"] for r in nxt["records"])

    export = live.client.get("/v1/audit/export", headers=live.admin)
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("application/x-ndjson")
    lines = export.text.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) > 10 and all(
        set(r) == {"seq", "event_id", "ts", "kind", "data", "prev_hash", "hash"} for r in records
    )
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(records))
    tail = live.client.get(
        "/v1/audit/export", params={"after_seq": len(records) - 2}, headers=live.admin
    )
    assert [json.loads(line)["seq"] for line in tail.text.splitlines()][:2] == [
        len(records) - 1,
        len(records),
    ]

    report = live.client.post("/v1/audit/verify", headers=live.admin).json()
    assert report["ok"] is True and report["problems"] == []
    assert report["records"] >= len(records) and report["head_seq"] >= len(records)


def test_key_rotation_and_jwks(live: Live) -> None:
    agent = live.new_agent("keys-bot")
    task = agent.open_task()
    before = live.client.get("/.well-known/jwks.json").json()["keys"]
    rotated = live.client.post("/v1/keys/rotate", headers=live.admin)
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["active_kid"] not in {k["kid"] for k in before}
    assert set(body["kids"]) >= {body["active_kid"], before[-1]["kid"]}
    after = live.client.get("/.well-known/jwks.json").json()["keys"]
    kids = {k["kid"] for k in after}
    assert body["active_kid"] in kids and {k["kid"] for k in before} <= kids
    assert all(k["kty"] == "EC" and "d" not in k for k in after)
    # A token signed with the previous key still verifies during the overlap.
    assert agent.authorize(task["task_token"], "docs/read", {}).json()["allowed"]
    assert agent.open_task()["task_token"]


def test_kill_switch(live: Live) -> None:
    agent = live.new_agent("kill-bot")
    token = agent.open_task()["task_token"]
    post = live.client.post
    engaged = post(
        "/v1/kill-switch", json={"engaged": True, "agent": "kill-bot"}, headers=live.admin
    )
    assert engaged.json() == {"engaged": True, "agent": "kill-bot"}
    stopped = agent.authorize(token, "docs/read", {}).json()
    assert stopped["allowed"] is False and stopped["reasons"] == ["kill-switch"]
    released = post(
        "/v1/kill-switch", json={"engaged": False, "agent": "kill-bot"}, headers=live.admin
    )
    assert released.json() == {"engaged": False, "agent": "kill-bot"}
    assert agent.authorize(token, "docs/read", {}).json()["allowed"] is True
    unknown = post("/v1/kill-switch", json={"engaged": True, "agent": "nobody"}, headers=live.admin)
    assert unknown.status_code == 404
