"""An agent over HTTP: attest, open a task, decisions, end; proofs bound to method and URL."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from remit.canonical import digest
from remit.config import load_settings
from remit.core.tokens import make_call_proof
from remit.errors import InvalidRequest
from remit.http.app import create_app
from remit.http.server import running_server
from remit.store.base import AuditQuery
from tests.http.conftest import Live, live_remit


def _refused(response: httpx.Response, code: str, reason: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    if reason is not None:
        assert response.json()["reason"] == reason


def test_the_full_agent_flow(live: Live) -> None:
    agent = live.new_agent("flow-bot")
    assert agent.attestation["agent_id"] == "spiffe://acme.example/agent/flow-bot"
    renewed = agent.renew()
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["instance_id"] == agent.attestation["instance_id"]

    task = agent.open_task(destinations=["email:*@partner.example"])
    assert task["task_id"].startswith("tsk_") and task["mandate"]["call_budget"] == 50
    token = task["task_token"]

    allowed = agent.authorize(token, "docs/read", {})
    assert allowed.status_code == 200, allowed.text
    decision = allowed.json()
    assert decision["allowed"] is True and decision["outcome"] == "allow"
    assert decision["task_id"] == task["task_id"] and decision["audit_seq"] > 0
    assert decision["explanation"].startswith("allowed by")

    denied = agent.authorize(token, "crm/export", {})  # restricted, above the task's ceiling
    assert denied.status_code == 200, denied.text
    assert denied.json()["allowed"] is False and denied.json()["outcome"] == "deny"
    assert denied.json()["reasons"]

    ended = agent.end(task)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"closed": [task["task_id"]], "outstanding_leases": []}
    after = agent.authorize(token, "docs/read", {})
    assert after.status_code == 401 and after.json()["code"] in ("token_revoked", "invalid_token")

    seen = live.client.get(f"/v1/tasks/{task['task_id']}", headers=live.admin).json()
    assert seen["status"] == "ended" and seen["end_reason"] == "completed"
    assert seen["calls_used"] == 1  # a deny takes nothing from the budget
    assert seen["taint"] == ["public"]


def test_a_proof_for_another_method_or_url_is_refused(live: Live) -> None:
    agent = live.new_agent("binding-bot")
    token = agent.open_task()["task_token"]
    other_method = agent.authorize(token, "docs/read", {}, method="PUT")
    _refused(other_method, "invalid_proof", "binding_mismatch")
    other_path = agent.authorize(token, "docs/read", {}, url=live.base_url + "/v1/authorize/")
    _refused(other_path, "invalid_proof", "binding_mismatch")
    other_host = agent.authorize(
        token, "docs/read", {}, url="http://remit.example:8750/v1/authorize"
    )
    _refused(other_host, "invalid_proof", "binding_mismatch")
    # An in-process proof names no method or URL: it is not good over HTTP either.
    in_process = make_call_proof(
        agent.key, token=token, tool="docs/read", args_digest=_digest({}), now=_now()
    )
    response = live.client.post(
        "/v1/authorize",
        json={"tool": "docs/read", "arguments": {}},
        headers=agent.headers(token, in_process),
    )
    _refused(response, "invalid_proof", "binding_mismatch")
    # The arguments are bound too.
    proof = agent.proof(token, "docs/read", {"q": 1}, path="/v1/authorize")
    response = live.client.post(
        "/v1/authorize",
        json={"tool": "docs/read", "arguments": {"q": 2}},
        headers=agent.headers(token, proof),
    )
    _refused(response, "invalid_proof", "args_mismatch")
    assert agent.authorize(token, "docs/read", {}).json()["allowed"] is True


def test_a_replayed_proof_is_refused(live: Live) -> None:
    agent = live.new_agent("replay-bot")
    token = agent.open_task()["task_token"]
    proof = agent.proof(token, "docs/read", {}, path="/v1/authorize")
    body = {"tool": "docs/read", "arguments": {}}
    headers = agent.headers(token, proof)
    first = live.client.post("/v1/authorize", json=body, headers=headers)
    assert first.status_code == 200 and first.json()["allowed"] is True
    again = live.client.post("/v1/authorize", json=body, headers=headers)
    _refused(again, "invalid_proof", "replayed")
    # A refused replay is recorded, with its reason, like every refusal.
    live.remit.audit.flush()
    records = live.remit.store.query_audit(AuditQuery(kinds=("decision",), outcome="refused"))
    assert any(r.data.get("reason") == "replayed" for r in records)


def test_attestation_refusals(live: Live) -> None:
    join = live.client.post("/v1/agents/replay-bot/join-tokens", json={}, headers=live.admin)
    nonce = live.client.post("/v1/attest/challenge").json()["nonce"]
    response = live.client.post(
        "/v1/attest",
        json={
            "join_token": join.json()["join_token"],
            "public_jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            "nonce": nonce,
            "signature": "AAAA",
        },
    )
    assert response.status_code == 400 and response.json()["code"] in (
        "invalid_request",
        "invalid_grant",
    )
    reused = live.client.post(
        "/v1/attest",
        json={"join_token": "rjt_" + "x" * 40, "public_jwk": {}, "nonce": nonce, "signature": "!"},
    )
    assert reused.status_code == 400 and reused.json()["code"] == "invalid_request"


def test_metrics_count_decisions(live: Live) -> None:
    agent = live.new_agent("metrics-bot")
    token = agent.open_task()["task_token"]
    assert agent.authorize(token, "docs/read", {}).json()["allowed"]
    agent.authorize(token, "docs/read", {}, method="PUT")  # refused: binding
    text = live.client.get("/metrics").text
    lines = text.splitlines()
    assert any(line.startswith('remit_decisions_total{outcome="allow"') for line in lines)
    assert any(
        line.startswith('remit_decisions_total{outcome="refused",reason="binding_mismatch"}')
        for line in lines
    )
    assert any(line.startswith("remit_decision_seconds_bucket") for line in lines)
    assert 'remit_http_requests_total{route="/v1/authorize",status="200"}' in text
    assert any(line.startswith("remit_audit_pending ") for line in lines)


def test_the_public_url_is_what_proofs_name(tmp_path: Path) -> None:
    remit = live_remit(tmp_path, public_url="https://remit.example.com/")
    _, secret = remit.create_admin_token("root", scopes=["admin"])
    try:
        with running_server(remit) as base_url, httpx.Client(base_url=base_url) as client:
            live = Live(remit, base_url, client, {"Authorization": f"Bearer {secret.reveal()}"})
            agent = live.new_agent("proxied-bot")
            agent.base_url = "https://remit.example.com"
            token = agent.open_task()["task_token"]
            assert agent.authorize(token, "docs/read", {}).json()["allowed"] is True
            direct = agent.authorize(token, "docs/read", {}, url=base_url + "/v1/authorize")
            _refused(direct, "invalid_proof", "binding_mismatch")
    finally:
        remit.close()


def _digest(value: object) -> str:
    return digest(value)


def _now() -> float:
    return time.time()


def test_the_public_url_setting(tmp_path: Path) -> None:
    assert load_settings({"REMIT_PUBLIC_URL": "https://remit.example.com"}).public_url == (
        "https://remit.example.com"
    )
    bad_urls = ("remit.example.com", "ftp://remit.example.com", "https://x.example/?q=1")
    for index, bad in enumerate(bad_urls):
        remit = live_remit(tmp_path / str(index), public_url=bad)
        try:
            with pytest.raises(InvalidRequest):
                create_app(remit)
        finally:
            remit.close()
