"""Approvals (issue 5 item 5): one human consent for one exact call, used once."""

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
from remit.core.approvals import ApprovalStatus, Vote
from remit.core.pipeline import Outcome
from remit.core.policy import PolicySource
from remit.errors import Denied, Forbidden
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import AdminIdentity, Remit

from .conftest import CATALOG, CEILING, PRINCIPAL, make_settings, open_task

PAY_CATALOG = (
    CATALOG
    + """
  - name: payments/transfer
    privilege: act
    destinations: {to: account}
    risk: [payment]
"""
)
PAY_CEILING: dict[str, Any] = {
    **CEILING,
    "tools": [*CEILING["tools"], "payments/transfer"],
    "destinations": ["email:*", "account:*"],
}
PAY = {"to": "DE89370400440532013000", "amount": 100}


def approver(name: str = "alice@acme.example", *scopes: str) -> AdminIdentity:
    return AdminIdentity("adm_" + name, name, frozenset(scopes or ("approver",)))


def build(tmp_path: Path, clock: ManualClock, **settings: Any) -> Remit:
    service = build_remit(
        make_settings(tmp_path, **settings), clock=clock, catalog=catalog_from_yaml(PAY_CATALOG)
    )
    service.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    return service


@pytest.fixture
def remit(tmp_path: Path, clock: ManualClock) -> Iterator[Remit]:
    service = build(tmp_path, clock)
    yield service
    service.close()


def pay_task(remit: Remit, clock: ManualClock, name: str = "payer") -> TaskSession:
    agent = remit.register_agent(name, owner="sam@acme.example", ceiling=PAY_CEILING)
    session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)
    return open_task(
        session,
        tools=["payments/transfer", "docs/read"],
        destinations=["account:DE89370400440532013000"],
        call_budget=200,
        ttl_seconds=1800,
    )


def kinds(remit: Remit) -> list[str]:
    remit.audit.flush()
    return [r.kind for r in remit.store.iter_audit()]


def test_payment_waits_for_approval_then_goes_through_once(
    remit: Remit, clock: ManualClock
) -> None:
    task = pay_task(remit, clock)
    first = task.authorize("payments/transfer", PAY)
    assert first.outcome is Outcome.APPROVAL_REQUIRED and not first.allowed
    assert first.reasons == ("approval-high-risk-act",)
    assert first.approval_id is not None and first.approval_id.startswith("apr_")
    # Asking again for the same call names the same pending request.
    assert task.authorize("payments/transfer", PAY).approval_id == first.approval_id
    # Not approved yet: presenting it is refused.
    pending = task.authorize("payments/transfer", PAY, approval=first.approval_id)
    assert not pending.allowed and pending.reasons[0] == "approval_pending"

    approval = remit.approve(first.approval_id, by=approver(), reason="invoice 17 checked")
    assert approval.status is ApprovalStatus.APPROVED
    assert approval.approvers == ("alice@acme.example",)
    # Same call, keys in another order: canonical arguments, so it matches.
    allowed = task.authorize(
        "payments/transfer", dict(reversed(PAY.items())), approval=first.approval_id
    )
    assert allowed.allowed and allowed.outcome is Outcome.ALLOW
    assert allowed.reasons == ("human-approval", "approval-high-risk-act")
    replay = task.authorize("payments/transfer", PAY, approval=first.approval_id)
    assert not replay.allowed and replay.reasons[0] == "approval_consumed"
    # The approval says nothing about the next call: it needs a new one.
    again = task.authorize("payments/transfer", PAY)
    assert again.outcome is Outcome.APPROVAL_REQUIRED and again.approval_id != first.approval_id
    assert remit.get_approval(first.approval_id).status is ApprovalStatus.CONSUMED
    seen = kinds(remit)
    for kind in (
        "approval.requested",
        "approval.approved",
        "approval.consumed",
        "approval.refused",
    ):
        assert kind in seen


def test_changed_arguments_need_a_new_approval(remit: Remit, clock: ManualClock) -> None:
    task = pay_task(remit, clock)
    approval_id = task.authorize("payments/transfer", PAY).approval_id
    assert approval_id is not None
    remit.approve(approval_id, by=approver())
    for changed in ({**PAY, "amount": 101}, {**PAY, "memo": "x"}):
        refused = task.authorize("payments/transfer", changed, approval=approval_id)
        assert not refused.allowed and refused.outcome is Outcome.DENY
        assert refused.reasons[0] == "approval_mismatch"
    # The mismatches did not use it up.
    assert task.authorize("payments/transfer", PAY, approval=approval_id).allowed


def test_expired_and_denied_approvals_are_refused(remit: Remit, clock: ManualClock) -> None:
    task = pay_task(remit, clock)
    approval_id = task.authorize("payments/transfer", PAY).approval_id
    assert approval_id is not None
    remit.approve(approval_id, by=approver())
    clock.advance(601)
    expired = task.authorize("payments/transfer", PAY, approval=approval_id)
    assert not expired.allowed and expired.reasons[0] == "approval_expired"

    other = task.authorize("payments/transfer", {**PAY, "amount": 5}).approval_id
    assert other is not None
    remit.deny(other, by=approver(), reason="not ours")
    denied = task.authorize("payments/transfer", {**PAY, "amount": 5}, approval=other)
    assert not denied.allowed and denied.reasons[0] == "approval_denied"
    with pytest.raises(Denied) as caught:
        remit.approve(other, by=approver("bob@acme.example"))
    assert caught.value.reason == "approval_denied"


def test_approval_of_another_task_is_refused(remit: Remit, clock: ManualClock) -> None:
    task = pay_task(remit, clock)
    other = pay_task(remit, clock, name="payer-two")
    approval_id = task.authorize("payments/transfer", PAY).approval_id
    assert approval_id is not None
    remit.approve(approval_id, by=approver())
    wrong = other.authorize("payments/transfer", PAY, approval=approval_id)
    assert not wrong.allowed and wrong.reasons[0] == "approval_wrong_task"
    assert not other.authorize("payments/transfer", PAY, approval="apr_guessed").allowed


def test_self_approval_is_refused(remit: Remit, clock: ManualClock) -> None:
    task = pay_task(remit, clock)
    approval_id = task.authorize("payments/transfer", PAY).approval_id
    assert approval_id is not None
    with pytest.raises(Denied) as caught:
        remit.approve(approval_id, by=approver(PRINCIPAL))
    assert caught.value.reason == "self_approval"
    with pytest.raises(Forbidden):
        remit.approve(approval_id, by=approver("reader", "readonly"))
    assert remit.get_approval(approval_id).status is ApprovalStatus.PENDING


def test_self_approval_when_allowed_by_setting(tmp_path: Path, clock: ManualClock) -> None:
    service = build(tmp_path, clock, allow_self_approval=True)
    try:
        task = pay_task(service, clock)
        approval_id = task.authorize("payments/transfer", PAY).approval_id
        assert approval_id is not None
        assert (
            service.approve(approval_id, by=approver(PRINCIPAL)).status is ApprovalStatus.APPROVED
        )
    finally:
        service.close()


def test_quorum_of_two_needs_two_distinct_approvers(remit: Remit, clock: ManualClock) -> None:
    remit.load_policies(
        [
            PolicySource(
                "quorum.cedar",
                '@id("two-approvers-for-payments") @approval("required") @quorum("2")\n'
                'forbid (principal, action == Action::"act", resource == Tool::"payments/transfer");',
            )
        ]
    )
    task = pay_task(remit, clock)
    first = task.authorize("payments/transfer", PAY)
    assert first.reasons == ("approval-high-risk-act", "two-approvers-for-payments")
    approval_id = first.approval_id
    assert approval_id is not None
    assert remit.approve(approval_id, by=approver("alice")).status is ApprovalStatus.PENDING
    with pytest.raises(Denied) as caught:
        remit.approve(approval_id, by=approver("alice"))
    assert caught.value.reason == "already_voted"
    still = task.authorize("payments/transfer", PAY, approval=approval_id)
    assert still.reasons[0] == "approval_pending"
    assert remit.approve(approval_id, by=approver("bob")).status is ApprovalStatus.APPROVED
    assert task.authorize("payments/transfer", PAY, approval=approval_id).allowed


def test_fifty_concurrent_retries_are_allowed_exactly_once(
    remit: Remit, clock: ManualClock
) -> None:
    task = pay_task(remit, clock)
    approval_id = task.authorize("payments/transfer", PAY).approval_id
    assert approval_id is not None
    remit.approve(approval_id, by=approver())
    barrier = threading.Barrier(50, timeout=30)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def retry() -> None:
        try:
            barrier.wait()
            decision = task.authorize("payments/transfer", PAY, approval=approval_id)
            with lock:
                results.append(decision.allowed)
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 50 and results.count(True) == 1
    remit.audit.flush()
    consumed = [r for r in remit.store.iter_audit() if r.kind == "approval.consumed"]
    assert len(consumed) == 1


def test_votes_are_distinct_per_approver_in_the_store(remit: Remit, clock: ManualClock) -> None:
    task = pay_task(remit, clock)
    approval_id = task.authorize("payments/transfer", PAY).approval_id
    assert approval_id is not None
    assert remit.store.vote_approval(
        approval_id, Vote("carol", True, "", clock.now()), clock.now()
    )[0]
    # Carol's vote is already there: a second identical vote changes nothing.
    assert remit.store.vote_approval(
        approval_id, Vote("carol", True, "", clock.now()), clock.now()
    ) == (
        False,
        None,
    )
    with pytest.raises(Denied) as caught:
        remit.deny(approval_id, by=approver("dave"))
    assert caught.value.reason == "approval_approved"


# ---------------------------------------------------------------------- the webhook


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    event: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()
        type(self).event.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_webhook_is_notified_without_the_arguments(tmp_path: Path, clock: ManualClock) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received, _Hook.event = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    service = build(tmp_path, clock, approval_webhook=url)
    try:
        task = pay_task(service, clock)
        decision = task.authorize("payments/transfer", PAY)
        assert _Hook.event.wait(10)
        (body,) = _Hook.received
        assert body["id"] == decision.approval_id
        assert body["task"] == task.task_id and body["tool"] == "payments/transfer"
        assert body["args_digest"] == decision.args_digest
        assert body["reasons"] == ["approval-high-risk-act"]
        assert "DE89370400440532013000" not in json.dumps(body)
    finally:
        service.close()
        server.shutdown()
        server.server_close()


def test_webhook_failure_is_audited_and_does_not_block(tmp_path: Path, clock: ManualClock) -> None:
    # A port nobody listens on: the connection is refused at once.
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    port = server.server_address[1]
    server.server_close()
    service = build(tmp_path, clock, approval_webhook=f"http://127.0.0.1:{port}/hook")
    try:
        task = pay_task(service, clock)
        decision = task.authorize("payments/transfer", PAY)
        assert decision.outcome is Outcome.APPROVAL_REQUIRED
        service.approval_notifier.join()
        assert "approval.webhook_failed" in kinds(service)
    finally:
        service.close()
