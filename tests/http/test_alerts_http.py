"""GET /v1/alerts, the client and ``remit alerts list`` over a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from remit.cli import app
from remit.client import RemitClient
from remit.http.server import running_server
from tests.http.conftest import Live, live_remit

ALICE = {"to": "alice@example.com", "body": "about 4711"}
STRANGER = {"to": "mallory@partner.example", "body": "the customer list"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    remit = live_remit(tmp_path_factory.mktemp("alerts"), anomaly_warmup=4)
    _, secret = remit.create_admin_token("root", scopes=["admin"])
    try:
        with (
            running_server(remit) as base_url,
            httpx.Client(base_url=base_url, timeout=10.0) as client,
        ):
            yield Live(remit, base_url, client, {"Authorization": f"Bearer {secret.reveal()}"})
    finally:
        remit.close()


@pytest.fixture(scope="module")
def alerted(live: Live) -> str:
    """An agent with a baseline that then mails a stranger: one new_destination alert."""
    agent = live.new_agent("http-mailer")
    task = agent.open_task(
        destinations=["email:*@partner.example"],
        request_text="Please reply to alice@example.com about ticket 4711.",
    )
    token = task["task_token"]
    for _ in range(4):
        assert agent.authorize(token, "docs/read", {}).json()["allowed"]
        assert agent.authorize(token, "email/send", ALICE).json()["allowed"]
    assert agent.authorize(token, "docs/read", {}).json()["allowed"]
    response = agent.authorize(token, "email/send", STRANGER)
    assert response.status_code == 200, response.text
    return str(response.json()["decision_id"])


def test_get_alerts(live: Live, alerted: str) -> None:
    response = live.client.get(
        "/v1/alerts", params={"agent": "http-mailer"}, headers=live.operator("readonly")
    )
    assert response.status_code == 200, response.text
    (alert,) = response.json()["alerts"]
    assert alert["decision"] == alerted
    assert alert["agent"] == "spiffe://acme.example/agent/http-mailer"
    assert alert["kinds"] == ["new_destination"] and alert["score"] == 70
    assert alert["findings"][0]["kind"] == "new_destination"
    assert alert["response"] == "none" and alert["enforced"] is False
    assert "the customer list" not in response.text
    # Filters.
    none = live.client.get("/v1/alerts", params={"kind": "rate_spike"}, headers=live.admin)
    assert none.status_code == 200 and none.json()["alerts"] == []
    bad = live.client.get("/v1/alerts", params={"kind": "everything"}, headers=live.admin)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
    # An operator token is needed.
    assert live.client.get("/v1/alerts").status_code == 401


def test_client_and_cli_list_alerts(live: Live, alerted: str, tmp_path: Path) -> None:
    _, secret = live.remit.create_admin_token("reader", scopes=["readonly"])
    with RemitClient(live.base_url, admin_token=secret.reveal()) as client:
        (alert,) = client.list_alerts(agent="http-mailer", since=0)
        assert alert["decision"] == alerted

    env = {"REMIT_URL": live.base_url, "REMIT_ADMIN_TOKEN": secret.reveal()}
    runner = CliRunner()
    result = runner.invoke(
        app, ["alerts", "list", "--since", "24h", "--agent", "http-mailer", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    (listed,) = json.loads(result.stdout)["alerts"]
    assert listed["decision"] == alerted and listed["kinds"] == ["new_destination"]
    table = runner.invoke(app, ["alerts", "list"], env={**env, "COLUMNS": "250"})
    assert table.exit_code == 0 and "new_destination" in table.output
    bad = runner.invoke(app, ["alerts", "list", "--since", "yesterday", "--json"], env=env)
    assert bad.exit_code == 2 and json.loads(bad.stdout)["error"]["code"] == "invalid_request"
