"""BRK-04: a task end whose downstream lease revocation fails reports partial completion,
not success: in process, over HTTP (agent and operator routes), through the client and
the CLI (a warning and exit 13), and in the task end's audit record; the lease is never
dropped, and once the sweeper's retry succeeds nothing is outstanding."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from remit.agent import AgentSession, TaskSession
from remit.cli import EXIT_REVOCATION_PENDING, app
from remit.client import RemitClient
from remit.clock import ManualClock
from remit.core.leases import LeaseState
from remit.core.secrets import Secret
from remit.core.task_end import TaskEnd
from remit.http.server import running_server
from remit.providers.registry import ProviderRegistry
from remit.service import Remit

from .conftest import CATALOG, CEILING, open_task
from .test_providers import FlakyProvider

runner = CliRunner()
TOOLS = """
  - name: flaky/op
    privilege: read
    labels: [internal]
    credential: {provider: flaky, header: X-Flaky, value: token}
"""


@pytest.fixture
def flaky() -> FlakyProvider:
    return FlakyProvider()


@pytest.fixture
def fremit(remit: Remit, flaky: FlakyProvider) -> Remit:
    remit.use_providers(ProviderRegistry({"flaky": flaky}))
    remit.load_catalog(yaml.safe_load(CATALOG + TOOLS))
    remit.revoke_jitter = lambda: 1.0
    return remit


def leased_task(remit: Remit, clock: ManualClock) -> tuple[TaskSession, str]:
    """A task holding one lease of the flaky provider; returns it and the lease id."""
    ceiling = dict(CEILING, tools=[*CEILING["tools"], "flaky/op"])
    agent = remit.register_agent("flaky-bot", owner="sam@acme.example", ceiling=ceiling)
    session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)
    task = open_task(session, tools=["flaky/op", "docs/read"])
    (obligation,) = task.authorize("flaky/op", {}).obligations
    return task, obligation.ref


def outstanding_ids(remit: Remit) -> list[str]:
    """``remit leases list --outstanding`` on the data directory."""
    args = ["leases", "list", "--outstanding", "--json", "--data-dir", str(remit.settings.data_dir)]
    listed = runner.invoke(app, args)
    assert listed.exit_code == 0, listed.output
    return [lease["lease_id"] for lease in json.loads(listed.stdout)["leases"]]


def task_end_record(remit: Remit, kind: str) -> dict[str, Any]:
    remit.audit.flush()
    (record,) = [r for r in remit.store.iter_audit() if r.kind == kind]
    return dict(record.data)


def test_agent_end_reports_the_outstanding_lease_in_process(
    fremit: Remit, flaky: FlakyProvider, clock: ManualClock
) -> None:
    task, lease_id = leased_task(fremit, clock)
    flaky.failures = 1
    proof = task.agent.proof(task.token, "remit:end_task", {"task": task.task_id},
                             endpoint="end_task")  # fmt: skip
    ended = fremit.end_task_report(task.token, proof)
    assert ended == TaskEnd((task.task_id,), (lease_id,)) and not ended.complete
    assert fremit.get_lease(lease_id).state is LeaseState.REVOKING  # never dropped
    record = task_end_record(fremit, "task.ended")
    assert record["outstanding_leases"] == 1 and record["closed"] == [task.task_id]
    # The retry succeeds: nothing is outstanding any more.
    clock.advance(2)
    fremit.sweep()
    assert fremit.list_leases(outstanding=True) == [] and flaky.live == set()


def test_a_clean_task_end_reports_nothing_outstanding(
    fremit: Remit, flaky: FlakyProvider, clock: ManualClock
) -> None:
    task, lease_id = leased_task(fremit, clock)
    ended = fremit.revoke_task_report(task.task_id, reason="done")
    assert ended == TaskEnd((task.task_id,), ()) and ended.complete
    assert fremit.get_lease(lease_id).state is LeaseState.REVOKED
    assert task_end_record(fremit, "task.revoked")["outstanding_leases"] == 0
    # The list-returning method is unchanged.
    assert fremit.revoke_task(task.task_id) == []


def test_operator_revoke_over_http_client_and_cli(
    fremit: Remit, flaky: FlakyProvider, clock: ManualClock
) -> None:
    _, admin = fremit.create_admin_token("ops", scopes=["admin"])
    first, first_lease = leased_task(fremit, clock)
    flaky.failures = 1
    with running_server(fremit) as url:
        headers = {"Authorization": f"Bearer {admin.reveal()}"}
        raw = httpx.post(f"{url}/v1/tasks/{first.task_id}/revoke", json={}, headers=headers)
        assert raw.status_code == 200
        assert raw.json() == {"closed": [first.task_id], "outstanding_leases": [first_lease]}
        # Asked again: nothing closed now, but the lease is still outstanding.
        with RemitClient(url, admin_token=Secret(admin.reveal())) as client:
            again = client.revoke_task_report(first.task_id)
            assert again == TaskEnd((), (first_lease,))
            assert client.revoke_task(first.task_id) == []
        env = {"REMIT_URL": url, "REMIT_ADMIN_TOKEN": admin.reveal()}
        result = runner.invoke(app, ["task", "revoke", first.task_id, "--json"], env=env)
        assert result.exit_code == EXIT_REVOCATION_PENDING, result.output
        assert json.loads(result.stdout) == {"closed": [], "outstanding_leases": [first_lease]}
        assert "not yet revoked downstream" in result.stderr and first_lease in result.stderr
        assert outstanding_ids(fremit) == [first_lease]
        # After the retry succeeds, the CLI exits 0 and the local listing is empty.
        clock.advance(2)
        fremit.sweep()
        ok = runner.invoke(app, ["task", "end", first.task_id], env=env)
        assert ok.exit_code == 0, ok.output
        assert "warning" not in ok.stderr
    assert outstanding_ids(fremit) == []


def test_agent_end_over_http(fremit: Remit, flaky: FlakyProvider, clock: ManualClock) -> None:
    task, lease_id = leased_task(fremit, clock)
    flaky.failures = 1
    with running_server(fremit) as url, RemitClient(url) as client:
        proof = task.agent.sign_proof(task.token, "remit:end_task", {"task": task.task_id},
                                      binding=client.proof_binding("end_task"))  # fmt: skip
        assert client.end_task_report(task.token, proof) == TaskEnd((task.task_id,), (lease_id,))
    assert fremit.get_lease(lease_id).state is LeaseState.REVOKING
