"""Anomalies on the decision path, end to end through ``Remit.authorize`` with real Cedar:
policy on the anomaly score, automatic responses, alerts in the audit log, the webhook,
and a baseline learned back from the audit log after a restart."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.core.approvals import ApprovalStatus
from remit.core.pipeline import Outcome
from remit.core.policy import PolicySource
from remit.errors import InvalidRequest, TokenRevoked
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import AdminIdentity, Remit

from .conftest import CATALOG, CEILING, PRINCIPAL, make_settings, open_task

ALICE = {"to": "alice@example.com", "body": "about 4711"}
STRANGER = {"to": "mallory@partner.example", "body": "the customer list"}
ANOMALY_POLICY = (
    '@id("anomalous-calls-need-approval") @approval("required")\n'
    'forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource)\n'
    "when { context.anomaly_score >= 70 };\n"
)
WARMUP = 6


def build(tmp_path: Path, clock: ManualClock, **settings: Any) -> Remit:
    service = build_remit(
        make_settings(tmp_path, anomaly_warmup=WARMUP, **settings),
        clock=clock,
        catalog=catalog_from_yaml(CATALOG),
    )
    service.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    return service


def session(remit: Remit, clock: ManualClock, name: str = "mailer") -> AgentSession:
    agent = remit.register_agent(name, owner="sam@acme.example", ceiling=CEILING)
    return AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)


def new_task(agent: AgentSession) -> TaskSession:
    return open_task(
        agent,
        destinations=["email:*@partner.example"],
        request_text="Please reply to alice@example.com about ticket 4711.",
        call_budget=200,
    )


def warm_up(task: TaskSession, clock: ManualClock, rounds: int = WARMUP) -> None:
    """The usual work: look up the docs, reply to alice. All allowed, all learned."""
    for _ in range(rounds):
        assert task.authorize("docs/read", {}).allowed
        assert task.authorize("email/send", ALICE).allowed
        clock.advance(1)


def alerts_of(remit: Remit) -> list[dict[str, Any]]:
    remit.audit.flush()
    return [dict(r.data) for r in remit.store.iter_audit() if r.kind == "alert"]


@pytest.fixture
def remit(tmp_path: Path, clock: ManualClock) -> Iterator[Remit]:
    service = build(tmp_path, clock)
    yield service
    service.close()


def test_policy_on_the_anomaly_score_asks_approval_for_a_new_destination(
    remit: Remit, clock: ManualClock
) -> None:
    remit.load_policies([PolicySource("anomaly.cedar", ANOMALY_POLICY)])
    task = new_task(session(remit, clock))
    warm_up(task, clock)
    assert alerts_of(remit) == []  # the baseline traffic is quiet

    docs = task.authorize("docs/read", {})
    assert docs.allowed
    first = task.authorize("email/send", STRANGER)
    assert first.outcome is Outcome.APPROVAL_REQUIRED and not first.allowed
    assert first.reasons == ("anomalous-calls-need-approval",)
    assert first.approval_id is not None
    (alert,) = alerts_of(remit)
    assert alert["kinds"] == ["new_destination"] and alert["score"] == 70
    assert alert["decision"] == first.decision_id and alert["response"] == "none"
    assert "mallory@partner.example" in alert["explanation"]
    assert "arguments" not in alert and "the customer list" not in json.dumps(alert)

    remit.approve(first.approval_id, by=AdminIdentity("adm_lee", "lee@acme.example",
                                                      frozenset({"approver"})))  # fmt: skip
    approved = task.authorize("email/send", STRANGER, approval=first.approval_id)
    assert approved.allowed and approved.reasons[0] == "human-approval"
    assert remit.get_approval(first.approval_id).status is ApprovalStatus.CONSUMED
    # Approved once, learned: the destination is no longer new.
    task.authorize("docs/read", {})
    again = task.authorize("email/send", STRANGER)
    assert again.allowed and again.outcome is Outcome.ALLOW


def test_require_approval_response_without_any_policy(tmp_path: Path, clock: ManualClock) -> None:
    remit = build(tmp_path, clock, anomaly_response="require_approval")
    try:
        task = new_task(session(remit, clock))
        warm_up(task, clock)
        task.authorize("docs/read", {})
        asked = task.authorize("email/send", STRANGER)
        assert asked.outcome is Outcome.APPROVAL_REQUIRED and asked.reasons == ("anomaly",)
        approval = remit.get_approval(str(asked.approval_id))
        assert approval.reasons == ("anomaly",) and approval.tool == "email/send"
        # The usual call still goes through.
        assert task.authorize("email/send", ALICE).allowed
        (alert,) = alerts_of(remit)
        assert alert["response"] == "require_approval" and alert["enforced"] is True
    finally:
        remit.close()


def test_suspend_response_denies_and_suspends_the_agent(tmp_path: Path, clock: ManualClock) -> None:
    remit = build(tmp_path, clock, anomaly_response="suspend")
    try:
        agent = session(remit, clock)
        task = new_task(agent)
        warm_up(task, clock)
        task.authorize("docs/read", {})
        denied = task.authorize("email/send", STRANGER)
        assert not denied.allowed and denied.outcome is Outcome.DENY
        assert "anomaly" in denied.reasons
        stored = remit.get_agent(agent.agent_id)
        assert stored.status.value == "suspended"
        remit.audit.flush()
        records = list(remit.store.iter_audit())
        (suspended,) = [r for r in records if r.kind == "agent.suspended"]
        assert suspended.data["reason"] == "anomaly"
        (alert,) = [r for r in records if r.kind == "alert"]
        assert alert.seq < suspended.seq and alert.data["enforced"] is True
        # The task was revoked with the suspension: the next call is refused.
        with pytest.raises(TokenRevoked):
            task.authorize("docs/read", {})
    finally:
        remit.close()


def test_shadow_mode_agent_is_recorded_never_blocked(tmp_path: Path, clock: ManualClock) -> None:
    remit = build(tmp_path, clock, anomaly_response="suspend")
    try:
        agent = session(remit, clock)
        remit.set_agent_mode(agent.agent_id, "shadow")
        task = new_task(agent)
        warm_up(task, clock)
        task.authorize("docs/read", {})
        call = task.authorize("email/send", STRANGER)
        assert call.allowed and call.would_deny and "anomaly" in call.reasons
        assert remit.get_agent(agent.agent_id).status.value == "active"
        (alert,) = alerts_of(remit)
        assert alert["enforced"] is False and alert["mode"] == "shadow"
    finally:
        remit.close()


def test_the_baseline_is_learned_back_from_the_audit_log(
    tmp_path: Path, clock: ManualClock
) -> None:
    remit = build(tmp_path, clock)
    agent_name = "returning"
    try:
        agent = session(remit, clock, agent_name)
        warm_up(new_task(agent), clock)
        agent_id = agent.agent_id
    finally:
        remit.close()
    restarted = build_remit(
        make_settings(tmp_path, anomaly_warmup=WARMUP),
        clock=clock,
        catalog=catalog_from_yaml(CATALOG),
    )
    try:
        baseline = restarted.monitor.baseline(agent_id)
        assert baseline is not None and baseline.learned == 2 * WARMUP
        assert "email:alice@example.com" in baseline.destinations
        again = AgentSession.attest(restarted, restarted.create_join_token(agent_id), clock=clock)
        fresh = new_task(again)
        assert fresh.authorize("docs/read", {}).allowed
        fresh.authorize("email/send", STRANGER)
        (alert,) = alerts_of(restarted)
        assert alert["kinds"] == ["new_destination"]
    finally:
        restarted.close()


def test_list_alerts_filters(remit: Remit, clock: ManualClock) -> None:
    task = new_task(session(remit, clock))
    warm_up(task, clock)
    task.authorize("crm/read", {})  # a tool it never used
    clock.advance(1)
    task.authorize("docs/read", {})
    task.authorize("email/send", STRANGER)
    listed = remit.list_alerts()
    # Newest first; docs/read straight after crm/read never happened before either.
    assert [a.kinds for a in listed] == [
        ("new_destination",),
        ("unusual_sequence",),
        ("new_tool",),
    ]
    assert [a.kinds for a in remit.list_alerts(kind="new_tool")] == [("new_tool",)]
    assert remit.list_alerts(agent="spiffe://acme.example/agent/nobody") == []
    assert remit.list_alerts(since=clock.now() + 10) == []
    assert len(remit.list_alerts(limit=1)) == 1
    with pytest.raises(InvalidRequest) as bad:
        remit.list_alerts(kind="everything")
    assert bad.value.reason == "bad_kind"


def test_denial_burst_alerts_once(remit: Remit, clock: ManualClock) -> None:
    task = new_task(session(remit, clock))
    for _ in range(6):  # a fresh agent probing: five denials within a minute
        assert not task.authorize("email/send", {"to": "x@evil.example"}).allowed
    alerts = [a for a in alerts_of(remit) if "denial_burst" in a["kinds"]]
    assert len(alerts) == 1


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_alert_webhook_receives_the_alert(tmp_path: Path, clock: ManualClock) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    remit = build(tmp_path, clock, alert_webhook=url)
    try:
        task = new_task(session(remit, clock))
        warm_up(task, clock)
        task.authorize("docs/read", {})
        task.authorize("email/send", STRANGER)
        remit.alerts.webhook.join()
        (body,) = _Receiver.bodies
        assert body["type"] == "anomaly.alert" and body["kinds"] == ["new_destination"]
        assert body["id"] and body["agent"].endswith("/agent/mailer")
        assert "the customer list" not in json.dumps(body)
    finally:
        remit.close()
        server.shutdown()


def test_a_failing_webhook_is_audited_and_never_blocks(tmp_path: Path, clock: ManualClock) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    port = server.server_address[1]
    server.server_close()  # nobody listens here
    remit = build(tmp_path, clock, alert_webhook=f"http://127.0.0.1:{port}/hook")
    try:
        task = new_task(session(remit, clock))
        warm_up(task, clock)
        task.authorize("docs/read", {})
        assert task.authorize("email/send", STRANGER).allowed  # alerting never blocks
        remit.alerts.webhook.join()
        remit.audit.flush()
        failed = [r for r in remit.store.iter_audit() if r.kind == "alert.webhook_failed"]
        assert len(failed) == 1 and failed[0].data["error"]
    finally:
        remit.close()


def test_bad_settings_are_refused(tmp_path: Path, clock: ManualClock) -> None:
    for bad in ({"anomaly_response": "panic"}, {"alert_webhook": "ftp://x"}):
        with pytest.raises(InvalidRequest) as err:
            build(tmp_path / str(len(bad)), clock, **bad)
        assert err.value.reason == "bad_setting"


EMAIL_NEEDS_APPROVAL = (
    '@id("email-needs-approval") @approval("required")\n'
    'forbid (principal, action == Action::"act", resource == Tool::"email/send");\n'
)


def test_approval_flood_alerts_and_the_response_applies(tmp_path: Path, clock: ManualClock) -> None:
    # RATE-04 / AGT-07: a fresh agent (no warm-up needed) floods the approvers with
    # requests, each for a different call, to tire them and slip a risky one through.
    remit = build(tmp_path, clock, anomaly_response="suspend", anomaly_approval_flood=5)
    try:
        remit.load_policies([PolicySource("approvals.cedar", EMAIL_NEEDS_APPROVAL)])
        agent = session(remit, clock)
        task = new_task(agent)
        # Retrying one call while it waits for a human is one request, not a flood.
        same = {"to": "alice@example.com", "body": "ticket 4711"}
        ids = {task.authorize("email/send", same).approval_id for _ in range(6)}
        assert len(ids) == 1 and None not in ids
        assert alerts_of(remit) == []
        clock.advance(1)
        for n in range(4):  # four more distinct requests: the fifth within a minute
            asked = task.authorize("email/send", {"to": "alice@example.com", "body": f"#{n}"})
            assert asked.outcome is Outcome.APPROVAL_REQUIRED
            clock.advance(5)
        (alert,) = alerts_of(remit)
        assert alert["kinds"] == ["approval_flood"] and alert["score"] == 70
        assert alert["decision"] == asked.decision_id
        assert alert["explanation"] == "5 approval requests within 60 s"
        assert [a.kinds for a in remit.list_alerts(kind="approval_flood")] == [("approval_flood",)]
        # While the flood lasts the next call scores 70: the suspend response applies.
        denied = task.authorize("docs/read", {})
        assert not denied.allowed and "anomaly" in denied.reasons
        assert remit.get_agent(agent.agent_id).status.value == "suspended"
        with pytest.raises(TokenRevoked):
            task.authorize("docs/read", {})
    finally:
        remit.close()


def test_approvals_spread_out_raise_no_flood(remit: Remit, clock: ManualClock) -> None:
    remit.load_policies([PolicySource("approvals.cedar", EMAIL_NEEDS_APPROVAL)])
    task = new_task(session(remit, clock))
    for n in range(12):  # one request every 20 s: never five in a minute
        asked = task.authorize("email/send", {"to": "alice@example.com", "body": f"#{n}"})
        assert asked.outcome is Outcome.APPROVAL_REQUIRED
        assert task.authorize("docs/read", {}).allowed
        clock.advance(20)
    assert [a for a in alerts_of(remit) if "approval_flood" in a["kinds"]] == []
