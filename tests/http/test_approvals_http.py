"""Approvals over HTTP: the agent waits, an approver approves, the exact call goes once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from remit.agent import AgentSession
from remit.cli import app
from remit.client import RemitClient
from remit.core.pipeline import Outcome
from remit.errors import Denied, Forbidden
from remit.http.server import running_server
from remit.runtime import build_remit, catalog_from_yaml
from tests.conftest import PRINCIPAL, make_settings
from tests.test_approvals import PAY, PAY_CATALOG, PAY_CEILING


def test_approval_flow_over_http(tmp_path: Path) -> None:
    remit = build_remit(make_settings(tmp_path), catalog=catalog_from_yaml(PAY_CATALOG))
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    agent = remit.register_agent("payer", owner="sam@acme.example", ceiling=PAY_CEILING)
    _, alice = remit.create_admin_token("alice@acme.example", scopes=["approver"])
    _, bob = remit.create_admin_token("bob@acme.example", scopes=["auditor"])
    _, sam = remit.create_admin_token(PRINCIPAL, scopes=["admin"])
    try:
        with (
            running_server(remit) as base_url,
            RemitClient(base_url) as api,
            RemitClient(base_url, admin_token=alice) as approver,
            RemitClient(base_url, admin_token=bob) as auditor,
            RemitClient(base_url, admin_token=sam) as principal,
        ):
            session = AgentSession.attest(api, remit.create_join_token(agent.agent_id))
            task = session.open_task(
                principal=PRINCIPAL,
                intent={
                    "purpose": "pay invoice 17",
                    "tools": ["payments/transfer"],
                    "destinations": ["account:DE89370400440532013000"],
                },
            )
            waiting = task.authorize("payments/transfer", PAY)
            assert waiting.outcome is Outcome.APPROVAL_REQUIRED
            approval_id = waiting.approval_id
            assert approval_id is not None

            listed = approver.list_approvals(status="pending")
            assert [a["approval_id"] for a in listed] == [approval_id]
            shown = approver.get_approval(approval_id)
            assert shown["arguments"] == PAY and shown["status"] == "pending"
            with pytest.raises(Forbidden):
                auditor.approve(approval_id)
            with pytest.raises(Denied) as caught:
                principal.approve(approval_id)  # admin scope, but the task's own principal
            assert caught.value.reason == "self_approval"

            done = approver.approve(approval_id, reason="invoice checked")
            assert done["status"] == "approved"
            assert done["votes"][0]["approver"] == "alice@acme.example"
            allowed = task.authorize("payments/transfer", PAY, approval=approval_id)
            assert allowed.allowed and allowed.approval_id == approval_id
            replay = task.authorize("payments/transfer", PAY, approval=approval_id)
            assert not replay.allowed and replay.reasons[0] == "approval_consumed"
            assert approver.get_approval(approval_id)["status"] == "consumed"
    finally:
        remit.close()


def test_approvals_cli(tmp_path: Path) -> None:
    remit = build_remit(make_settings(tmp_path), catalog=catalog_from_yaml(PAY_CATALOG))
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    agent = remit.register_agent("payer", owner="sam@acme.example", ceiling=PAY_CEILING)
    _, alice = remit.create_admin_token("alice@acme.example", scopes=["approver"])
    runner = CliRunner()
    try:
        session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id))
        task = session.open_task(
            principal=PRINCIPAL,
            intent={
                "purpose": "pay",
                "tools": ["payments/transfer"],
                "destinations": ["account:DE89370400440532013000"],
            },
        )
        first = task.authorize("payments/transfer", PAY).approval_id
        second = task.authorize("payments/transfer", {**PAY, "amount": 7}).approval_id
        assert first and second
        with running_server(remit) as url:
            env = {"REMIT_URL": url, "REMIT_ADMIN_TOKEN": alice.reveal()}

            def cli(*args: str) -> tuple[int, str]:
                result = runner.invoke(app, ["approvals", *args], env=env)
                return result.exit_code, result.stdout

            code, out = cli("list", "--json")
            assert code == 0
            assert {a["approval_id"] for a in json.loads(out)["approvals"]} == {first, second}
            code, out = cli("show", first)
            assert code == 0 and "DE89370400440532013000" in out
            code, out = cli("approve", first, "--reason", "ok", "--json")
            assert code == 0 and json.loads(out)["status"] == "approved"
            code, out = cli("deny", second, "--reason", "no")
            assert code == 0 and "denied" in out
            code, _ = cli("approve", second)
            assert code == 5  # denied: the request was denied already
    finally:
        remit.close()
