"""One agent test suite, two transports: the in-process service and the HTTP client.

Each test runs against ``inprocess`` (operator and agent both call the ``Remit``
service) and ``http`` (a real server; the operator holds an admin token, the
agent a client with no credentials of its own). The assertions, and the
exception classes, are the same: the client raises what the service raises.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from remit.agent import AgentSession, RemitApi, TaskSession
from remit.client import RemitClient
from remit.core.pipeline import Outcome
from remit.errors import (
    Denied,
    InvalidGrant,
    InvalidProof,
    InvalidToken,
    NotFound,
    TokenRevoked,
)
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit

from .conftest import CATALOG, CEILING, PRINCIPAL, make_settings

Operator = Remit | RemitClient


@dataclass
class Env:
    transport: str
    remit: Remit  # the service behind either transport (for facts the API does not show)
    operator: Operator
    api: RemitApi

    def attest(self, agent_id: str) -> AgentSession:
        return AgentSession.attest(self.api, self.operator.create_join_token(agent_id))

    def last_record(self) -> dict[str, Any]:
        """The newest audit record, read the way this transport's operator reads it."""
        if isinstance(self.operator, Remit):
            self.operator.audit.flush()
            head = self.operator.store.audit_head()
            assert head is not None
            return {"kind": head.kind, "data": head.data}
        report = self.operator.verify_audit()
        page = self.operator.query_audit(after_seq=report["head_seq"] - 1)
        record: dict[str, Any] = page["records"][-1]
        return record


@pytest.fixture(params=["inprocess", "http"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    remit = build_remit(make_settings(tmp_path), catalog=catalog_from_yaml(CATALOG))
    try:
        remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
        if request.param == "inprocess":
            yield Env("inprocess", remit, remit, remit)
            return
        from remit.http.server import running_server

        _, admin = remit.create_admin_token("tests", scopes=["admin"])
        with (
            running_server(remit) as base_url,
            RemitClient(base_url, admin_token=admin) as operator,
            RemitClient(base_url) as api,
        ):
            yield Env("http", remit, operator, api)
    finally:
        remit.close()


@pytest.fixture
def session(env: Env) -> AgentSession:
    agent = env.operator.register_agent(
        "support-assistant", owner="sam@acme.example", ceiling=CEILING
    )
    return env.attest(agent.agent_id)


def open_task(session: AgentSession, **intent: Any) -> TaskSession:
    base: dict[str, Any] = {
        "purpose": "reply to ticket 4711",
        "tools": ["ticket/read", "crm/read", "email/send", "docs/read"],
        "sensitivity": "confidential",
        "call_budget": 50,
        "ttl_seconds": 600,
    }
    base.update(intent)
    return session.open_task(principal=PRINCIPAL, intent=base)


@pytest.fixture
def task(session: AgentSession) -> TaskSession:
    return open_task(
        session,
        destinations=["email:*@partner.example"],
        request_text="Please reply to alice@example.com about ticket 4711.",
    )


# ---------------------------------------------------------------------- allowed calls


def test_read_is_allowed(env: Env, task: TaskSession) -> None:
    decision = task.authorize("ticket/read", {"ticket": 4711})
    assert decision.allowed and decision.outcome is Outcome.ALLOW
    assert decision.reasons == ("permit-within-mandate",)
    assert decision.policy_version == env.remit.policy.version
    assert decision.task_id == task.task_id and decision.instance_id == task.agent.instance_id
    record = env.last_record()
    assert record["kind"] == "decision" and record["data"]["outcome"] == "allow"
    assert record["data"]["args_digest"] == decision.args_digest


def test_request_derived_destination_is_granted(task: TaskSession) -> None:
    assert [str(d) for d in task.grant.mandate.request_derived] == ["email:alice@example.com"]
    assert task.authorize("email/send", {"to": "alice@example.com", "body": "hi"}).allowed


# ---------------------------------------------------------------------- denials with reasons


def test_tool_outside_mandate_is_denied(task: TaskSession) -> None:
    decision = task.authorize("crm/export", {})
    assert not decision.allowed and decision.outcome is Outcome.DENY
    assert "mandate-tool-scope" in decision.reasons


def test_destination_outside_mandate_is_denied(task: TaskSession) -> None:
    decision = task.authorize("email/send", {"to": "bob@elsewhere.example"})
    assert not decision.allowed
    assert "mandate-destination-scope" in decision.reasons
    assert decision.explain().startswith("denied by ")


@pytest.mark.parametrize("read_tool", ["ticket/read", "crm/read"])
def test_act_after_sensitive_read_only_to_explicit_destinations(
    task: TaskSession, read_tool: str
) -> None:
    assert task.authorize("email/send", {"to": "carol@partner.example"}).allowed
    assert task.authorize(read_tool, {"id": 1}).allowed
    denied = task.authorize("email/send", {"to": "carol@partner.example"})
    assert not denied.allowed
    expected = (
        "exfiltration-after-untrusted-read"
        if read_tool == "ticket/read"
        else "exfiltration-after-confidential-read"
    )
    assert expected in denied.reasons
    assert task.authorize("email/send", {"to": "alice@example.com"}).allowed
    assert task.authorize("docs/read", {}).allowed


def test_intent_beyond_ceiling_is_refused(env: Env) -> None:
    agent = env.operator.register_agent(
        "narrow",
        owner="ops",
        ceiling={"tools": ["docs/read"], "privileges": ["read"], "max_sensitivity": "public"},
    )
    session = env.attest(agent.agent_id)
    with pytest.raises(Denied):
        session.open_task(principal=PRINCIPAL, intent={"purpose": "x", "tools": ["email/send"]})


def test_unknown_principal_is_refused(session: AgentSession) -> None:
    with pytest.raises(NotFound):
        session.open_task(
            principal="user:nobody@x.example", intent={"purpose": "x", "tools": ["docs/read"]}
        )


# ---------------------------------------------------------------------- authentication


def test_replayed_proof_is_refused(env: Env, task: TaskSession) -> None:
    args = {"ticket": 1}
    proof = task.agent.proof(task.token, "ticket/read", args)
    assert env.api.authorize(
        task_token=task.token, proof=proof, tool="ticket/read", arguments=args
    ).allowed
    with pytest.raises(InvalidProof) as info:
        env.api.authorize(task_token=task.token, proof=proof, tool="ticket/read", arguments=args)
    assert info.value.reason == "replayed"
    assert env.last_record()["data"]["reason"] == "replayed"


def test_proof_for_other_arguments_is_refused(env: Env, task: TaskSession) -> None:
    proof = task.agent.proof(task.token, "ticket/read", {"ticket": 1})
    with pytest.raises(InvalidProof):
        env.api.authorize(
            task_token=task.token, proof=proof, tool="ticket/read", arguments={"ticket": 2}
        )


def test_stolen_task_token_with_another_key_is_refused(env: Env, task: TaskSession) -> None:
    thief = env.attest(task.agent.agent_id)
    args = {"ticket": 1}
    stolen_proof = thief.proof(task.token, "ticket/read", args)
    with pytest.raises(InvalidProof):
        env.api.authorize(
            task_token=task.token, proof=stolen_proof, tool="ticket/read", arguments=args
        )


def test_identity_token_is_not_a_task_token(env: Env, session: AgentSession) -> None:
    token = session.attestation.identity_token
    proof = session.proof(token, "ticket/read", {})
    with pytest.raises(InvalidToken):
        env.api.authorize(task_token=token, proof=proof, tool="ticket/read", arguments={})


# ---------------------------------------------------------------------- lifetimes


def test_task_end_revokes_the_token(env: Env, task: TaskSession) -> None:
    assert task.authorize("docs/read", {}).allowed
    assert task.end() == [task.task_id]
    with pytest.raises(TokenRevoked):
        task.authorize("docs/read", {})
    assert env.last_record()["data"]["outcome"] == "refused"


def test_operator_revocation_and_suspension(env: Env, session: AgentSession) -> None:
    first = open_task(session)
    assert env.operator.revoke_task(first.task_id, reason="incident 12") == [first.task_id]
    with pytest.raises(TokenRevoked):
        first.authorize("docs/read", {})
    second = open_task(session)
    env.operator.suspend_agent(session.agent_id)
    with pytest.raises(TokenRevoked):
        second.authorize("docs/read", {})
    env.operator.resume_agent(session.agent_id)
    # Suspension ended the agent's tasks (issue 5): resuming does not bring them back.
    with pytest.raises(TokenRevoked):
        second.authorize("docs/read", {})
    third = open_task(session)
    assert third.authorize("docs/read", {}).allowed
    env.operator.retire_agent(session.agent_id)
    with pytest.raises(InvalidToken):
        third.authorize("docs/read", {})


def test_identity_renewal(env: Env, session: AgentSession) -> None:
    first = session.attestation.identity_token
    assert session.identity_token() == first  # fresh: no renewal
    # Move the agent's view of its token past half-life (the server keeps real time).
    att = session.attestation
    lifetime = att.expires_at - att.issued_at
    session.attestation = replace(
        att, issued_at=att.issued_at - 0.6 * lifetime, expires_at=att.expires_at - 0.6 * lifetime
    )
    renewed = session.identity_token()
    assert renewed != first
    assert session.attestation.instance_id == session.instance_id
    assert session.attestation.expires_at > att.expires_at - 0.6 * lifetime
    # The renewed token opens tasks for the same instance.
    task = open_task(session)
    assert env.remit.get_task(task.task_id).instance_id == session.instance_id
    assert task.authorize("docs/read", {}).allowed


def test_join_token_reuse_is_refused(env: Env) -> None:
    agent = env.operator.register_agent("one-shot", owner="ops", ceiling=CEILING)
    token = env.operator.create_join_token(agent.agent_id)
    AgentSession.attest(env.api, token)
    with pytest.raises(InvalidGrant) as info:
        AgentSession.attest(env.api, token)
    assert info.value.reason == "join_token_reused"
    record = env.last_record()
    assert record["kind"] == "request.rejected"
    assert record["data"]["reason"] == "join_token_reused"
    assert "rjt_" not in json.dumps(record)


def test_kill_switch_denies_at_once(env: Env, task: TaskSession) -> None:
    if isinstance(env.operator, Remit):
        env.operator.set_kill_switch(True, agent_id=task.agent.agent_id)
    else:
        env.operator.kill_switch(True, agent=task.agent.agent_id)
    decision = task.authorize("docs/read", {})
    assert not decision.allowed and "kill-switch" in decision.reasons
