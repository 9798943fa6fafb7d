"""Liveness, readiness (503 when the audit log cannot be written), keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from remit.errors import StoreUnavailable
from remit.http.server import running_server
from tests.http.conftest import Live, live_remit


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Live]:
    """A server of its own, for tests that break its store."""
    remit = live_remit(tmp_path)
    _, secret = remit.create_admin_token("root", scopes=["admin"])
    try:
        with running_server(remit) as base_url, httpx.Client(base_url=base_url) as client:
            yield Live(remit, base_url, client, {"Authorization": f"Bearer {secret.reveal()}"})
    finally:
        remit.close()


def test_health_and_keys(live: Live) -> None:
    assert live.client.get("/healthz").json() == {"status": "ok"}
    assert live.client.get("/readyz").json() == {"status": "ready"}
    keys = live.client.get("/.well-known/jwks.json").json()["keys"]
    assert keys and all({"kty", "crv", "x", "y", "kid"} <= set(k) for k in keys)


def test_not_ready_while_the_audit_log_cannot_be_written(
    own: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(records: Any) -> None:
        raise StoreUnavailable("disk full", reason="test")

    monkeypatch.setattr(own.remit.store, "append_audit", broken)
    # A write fails closed: 503 audit_unavailable, with Retry-After.
    refused = own.client.post(
        "/v1/principals", json={"principal_id": "user:x@acme.example"}, headers=own.admin
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "audit_unavailable"
    assert refused.headers["retry-after"] == "1"
    # Readiness says so, and keeps saying so: it probes with a real write.
    for _ in range(2):
        ready = own.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"
        assert ready.json()["code"] == "audit_unavailable"
    assert own.client.get("/healthz").status_code == 200  # alive, just not ready
    monkeypatch.undo()
    assert own.client.get("/readyz").status_code == 200
    assert own.client.post("/v1/audit/verify", headers=own.admin).json()["ok"] is True
    kinds = [r["kind"] for r in own.client.get("/v1/audit", headers=own.admin).json()["records"]]
    assert kinds[-1] == "audit.resumed"


def test_not_ready_when_the_store_does_not_answer(
    own: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down() -> None:
        raise StoreUnavailable("the store is unavailable", reason="test")

    monkeypatch.setattr(own.remit.store, "audit_head", down)
    ready = own.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["code"] == "store_unavailable"


def test_a_bug_is_a_500_problem_that_tells_nothing(
    own: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug() -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(own.remit, "list_agents", bug)
    response = own.client.get("/v1/agents", headers=own.admin)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "internal_error" and body["detail"] == "internal error"
    assert "secret" not in response.text and "reason" not in body
    assert body["request_id"] == response.headers["x-request-id"]
    metrics = own.client.get("/metrics").text
    assert 'remit_http_requests_total{route="/v1/agents",status="500"} 1.0' in metrics
