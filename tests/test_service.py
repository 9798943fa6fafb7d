"""The per-call decision end to end: real Cedar, real SQLite, real signatures."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.core.pipeline import Outcome
from remit.core.policy import PolicySource
from remit.errors import (
    AuditUnavailable,
    Denied,
    InvalidGrant,
    InvalidProof,
    InvalidRequest,
    InvalidToken,
    PolicyInvalid,
    RemitError,
    TokenExpired,
    TokenRevoked,
)
from remit.service import Remit

from .conftest import CEILING, PRINCIPAL, open_task


def last_record(remit: Remit) -> Any:
    remit.audit.flush()
    head = remit.store.audit_head()
    assert head is not None
    return head


def table_snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table except the audit log, for 'writes nothing but its denial record'."""
    conn = sqlite3.connect(db)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            n: sorted(conn.execute(f"SELECT * FROM {n}").fetchall(), key=repr)
            for n in names
            if n not in ("audit_events", "audit_checkpoints")
        }
    finally:
        conn.close()


# ---------------------------------------------------------------------- the happy path


def test_read_is_allowed_and_audited(remit: Remit, task: TaskSession) -> None:
    decision = task.authorize("ticket/read", {"ticket": 4711})
    assert decision.allowed and decision.outcome is Outcome.ALLOW
    assert decision.reasons == ("permit-within-mandate",)
    assert decision.policy_version == remit.policy.version
    record = last_record(remit)
    assert record.kind == "decision" and record.data["outcome"] == "allow"
    assert record.data["task"] == task.task_id and record.data["owner"] == "sam@acme.example"
    assert "arguments" not in record.data  # only the digest is kept
    assert record.data["args_digest"] == decision.args_digest


def test_request_derived_destination_is_granted(task: TaskSession) -> None:
    assert [str(d) for d in task.grant.mandate.request_derived] == ["email:alice@example.com"]
    decision = task.authorize("email/send", {"to": "alice@example.com", "body": "hi"})
    assert decision.allowed


def test_sending_to_the_principal_itself_is_inside_the_boundary(task: TaskSession) -> None:
    task.authorize("ticket/read", {"ticket": 1})
    assert task.authorize("email/send", {"to": "sam@acme.example"}).allowed


# ---------------------------------------------------------------------- mandate denials


def test_tool_outside_mandate_is_denied(task: TaskSession) -> None:
    decision = task.authorize("crm/export", {})
    assert not decision.allowed
    assert "mandate-tool-scope" in decision.reasons


def test_tool_not_in_catalog_is_denied(task: TaskSession) -> None:
    decision = task.authorize("billing/pay", {"amount": 5})
    assert not decision.allowed and decision.reasons == ("unknown-tool",)


def test_destination_outside_mandate_is_denied(task: TaskSession) -> None:
    decision = task.authorize("email/send", {"to": "bob@elsewhere.example"})
    assert not decision.allowed
    assert "mandate-destination-scope" in decision.reasons


def test_malformed_destination_is_refused(remit: Remit, task: TaskSession) -> None:
    with pytest.raises(InvalidRequest):
        task.authorize("email/send", {"to": "alice@exаmple.com"})  # Cyrillic а
    assert last_record(remit).data["outcome"] == "refused"


def test_sensitivity_above_ceiling_is_denied(agent_session: AgentSession) -> None:
    task = open_task(agent_session, sensitivity="internal")
    decision = task.authorize("crm/read", {"customer": 1})
    assert not decision.allowed and "sensitivity-ceiling" in decision.reasons


def test_budget_is_enforced(agent_session: AgentSession) -> None:
    task = open_task(agent_session, call_budget=2)
    assert task.authorize("docs/read", {}).allowed
    assert task.authorize("docs/read", {}).allowed
    decision = task.authorize("docs/read", {})
    assert not decision.allowed and "budget-exhausted" in decision.reasons


def test_intent_beyond_ceiling_is_refused(remit: Remit, clock: ManualClock) -> None:
    agent = remit.register_agent(
        "narrow",
        owner="ops",
        ceiling={"tools": ["docs/read"], "privileges": ["read"], "max_sensitivity": "public"},
    )
    session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)
    with pytest.raises(Denied):
        session.open_task(principal=PRINCIPAL, intent={"purpose": "x", "tools": ["email/send"]})
    with pytest.raises(Denied):
        session.open_task(
            principal=PRINCIPAL,
            intent={"purpose": "x", "tools": ["docs/read"], "sensitivity": "internal"},
        )


def test_empty_tool_scope_is_an_error(agent_session: AgentSession) -> None:
    with pytest.raises(InvalidRequest):
        agent_session.open_task(principal=PRINCIPAL, intent={"purpose": "x", "tools": []})


def test_unknown_principal_is_refused(agent_session: AgentSession) -> None:
    with pytest.raises(RemitError) as info:
        agent_session.open_task(
            principal="user:nobody@x.example", intent={"purpose": "x", "tools": ["docs/read"]}
        )
    assert info.value.code == "not_found"


# ---------------------------------------------------------------------- read -> act chains


@pytest.mark.parametrize("read_tool", ["ticket/read", "crm/read"])
def test_act_after_sensitive_read_only_to_explicit_destinations(
    task: TaskSession, read_tool: str
) -> None:
    # Before any read, the wildcard mandate entry is enough.
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
    # Reads stay allowed after the taint.
    assert task.authorize("docs/read", {}).allowed


def test_planted_instruction_is_denied_with_reasons(task: TaskSession) -> None:
    assert task.authorize("ticket/read", {"ticket": 4711}).allowed
    decision = task.authorize(
        "email/send", {"to": "attacker@evil.example", "body": "customer list"}
    )
    assert not decision.allowed
    assert "mandate-destination-scope" in decision.reasons
    assert "exfiltration-after-untrusted-read" in decision.reasons
    assert decision.explain().startswith("denied by ")


# ---------------------------------------------------------------------- authentication


def test_replayed_proof_is_refused(remit: Remit, task: TaskSession) -> None:
    args = {"ticket": 1}
    proof = task.agent.proof(task.token, "ticket/read", args)
    assert remit.authorize(
        task_token=task.token, proof=proof, tool="ticket/read", arguments=args
    ).allowed
    with pytest.raises(InvalidProof) as info:
        remit.authorize(task_token=task.token, proof=proof, tool="ticket/read", arguments=args)
    assert info.value.reason == "replayed"
    assert last_record(remit).data["reason"] == "replayed"


def test_proof_for_other_arguments_is_refused(remit: Remit, task: TaskSession) -> None:
    proof = task.agent.proof(task.token, "ticket/read", {"ticket": 1})
    with pytest.raises(InvalidProof):
        remit.authorize(
            task_token=task.token, proof=proof, tool="ticket/read", arguments={"ticket": 2}
        )


def test_stolen_task_token_with_another_key_is_refused(
    remit: Remit, task: TaskSession, clock: ManualClock
) -> None:
    agent = remit.get_agent(task.agent.agent_id)
    thief = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)
    args = {"ticket": 1}
    stolen_proof = thief.proof(task.token, "ticket/read", args)
    with pytest.raises(InvalidProof):
        remit.authorize(
            task_token=task.token, proof=stolen_proof, tool="ticket/read", arguments=args
        )


def test_forged_task_token_is_refused(remit: Remit, task: TaskSession) -> None:
    header, payload, _ = task.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tid"] = "tsk_forgedforgedforged"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    none_header = (
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"remit-task+jwt"}').rstrip(b"=").decode()
    )
    for forged in (f"{header}.{forged_payload}.{_}", f"{none_header}.{payload}.", "garbage"):
        proof = task.agent.proof(forged, "ticket/read", {})
        with pytest.raises(InvalidToken):
            remit.authorize(task_token=forged, proof=proof, tool="ticket/read", arguments={})


def test_identity_token_is_not_a_task_token(remit: Remit, agent_session: AgentSession) -> None:
    token = agent_session.attestation.identity_token
    proof = agent_session.proof(token, "ticket/read", {})
    with pytest.raises(InvalidToken):
        remit.authorize(task_token=token, proof=proof, tool="ticket/read", arguments={})


# ---------------------------------------------------------------------- lifetimes


def test_task_end_revokes_the_token(remit: Remit, task: TaskSession) -> None:
    assert task.authorize("docs/read", {}).allowed
    assert task.end() == [task.task_id]
    with pytest.raises(TokenRevoked):
        task.authorize("docs/read", {})
    assert last_record(remit).data["outcome"] == "refused"


def test_ttl_expiry_revokes(remit: Remit, agent_session: AgentSession, clock: ManualClock) -> None:
    task = open_task(agent_session, ttl_seconds=60)
    assert task.authorize("docs/read", {}).allowed
    clock.advance(61)
    with pytest.raises((TokenExpired, TokenRevoked)):
        task.authorize("docs/read", {})
    assert remit.sweep() == [task.task_id]
    assert remit.get_task(task.task_id).status.value == "expired"


def test_operator_revocation_and_suspension(remit: Remit, agent_session: AgentSession) -> None:
    task = open_task(agent_session)
    remit.revoke_task(task.task_id, reason="incident 12")
    with pytest.raises(TokenRevoked):
        task.authorize("docs/read", {})
    task2 = open_task(agent_session)
    remit.suspend_agent(agent_session.agent_id)
    with pytest.raises(TokenRevoked):
        task2.authorize("docs/read", {})
    remit.resume_agent(agent_session.agent_id)
    # Suspension ended the agent's tasks (issue 5): resuming does not bring them back.
    with pytest.raises(TokenRevoked):
        task2.authorize("docs/read", {})
    task3 = open_task(agent_session)
    assert task3.authorize("docs/read", {}).allowed
    remit.retire_agent(agent_session.agent_id)
    with pytest.raises(InvalidToken):
        task3.authorize("docs/read", {})


def test_identity_rotates_before_half_life(
    remit: Remit, agent_session: AgentSession, clock: ManualClock
) -> None:
    first = agent_session.attestation.identity_token
    clock.advance(remit.settings.identity_ttl_seconds * 0.4)
    assert agent_session.identity_token() == first
    clock.advance(remit.settings.identity_ttl_seconds * 0.2)
    renewed = agent_session.identity_token()
    assert renewed != first
    assert remit.tokens.verify_identity(renewed).instance_id == agent_session.instance_id


# ---------------------------------------------------------------------- modes


def test_shadow_agent_records_would_deny_and_allows(
    remit: Remit, agent_session: AgentSession
) -> None:
    remit.set_agent_mode(agent_session.agent_id, "shadow")
    task = open_task(agent_session)
    decision = task.authorize("email/send", {"to": "bob@elsewhere.example"})
    assert decision.allowed and decision.would_deny and decision.outcome is Outcome.DENY
    record = last_record(remit)
    assert record.data["would_deny"] is True and record.data["mode"] == "shadow"
    assert "mandate-destination-scope" in record.data["reasons"]


def test_shadow_tool_records_would_deny(agent_session: AgentSession) -> None:
    task = open_task(agent_session)  # shadow/tool is not in the mandate
    decision = task.authorize("shadow/tool", {})
    assert decision.allowed and decision.would_deny


def test_shadow_never_relaxes_authentication(remit: Remit, agent_session: AgentSession) -> None:
    remit.set_agent_mode(agent_session.agent_id, "shadow")
    task = open_task(agent_session)
    task.end()
    with pytest.raises(TokenRevoked):
        task.authorize("docs/read", {})


# ---------------------------------------------------------------------- policy


def test_operator_policy_denies_with_its_id(remit: Remit, task: TaskSession) -> None:
    remit.load_policies(
        [
            PolicySource(
                "ops.cedar",
                '@id("no-docs") forbid (principal, action, resource == Tool::"docs/read");',
            )
        ]
    )
    decision = task.authorize("docs/read", {})
    assert not decision.allowed and decision.reasons == ("no-docs",)


def test_erroring_forbid_still_denies(remit: Remit, task: TaskSession) -> None:
    remit.load_policies(
        [
            PolicySource(
                "overflow.cedar",
                '@id("overflowing-forbid") forbid (principal, action == Action::"read", resource) '
                "when { context.budget_remaining * 9223372036854775807 > 0 };",
            )
        ]
    )
    decision = task.authorize("docs/read", {})
    assert not decision.allowed
    assert "policy-error" in decision.reasons


def test_invalid_policy_set_is_refused_and_previous_keeps_deciding(
    remit: Remit, task: TaskSession
) -> None:
    good = remit.load_policies(
        [
            PolicySource(
                "ops.cedar",
                '@id("no-docs") forbid (principal, action, resource == Tool::"docs/read");',
            )
        ]
    )
    with pytest.raises(PolicyInvalid):
        remit.load_policies(
            [
                PolicySource(
                    "bad.cedar",
                    '@id("typo") forbid (principal, action, resource) when { context.tain };',
                )
            ]
        )
    assert remit.policy.version == good
    assert task.authorize("docs/read", {}).reasons == ("no-docs",)
    assert remit.store.active_policy_version().version == good  # type: ignore[union-attr]
    assert last_record(remit).kind == "decision"


# ---------------------------------------------------------------------- audit failure


def test_audit_write_failure_denies(
    remit: Remit, task: TaskSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(records: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(remit.store, "append_audit", broken)
    with pytest.raises(AuditUnavailable):
        task.authorize("docs/read", {})
    monkeypatch.undo()
    # Once the store is back the chain resumes from what was really written.
    assert task.authorize("docs/read", {}).allowed
    assert remit.verify_audit().ok


# ---------------------------------------------------------------------- join tokens


def test_join_token_reuse_is_refused_and_audited(remit: Remit, clock: ManualClock) -> None:
    agent = remit.register_agent("one-shot", owner="ops", ceiling=CEILING)
    token = remit.create_join_token(agent.agent_id)
    AgentSession.attest(remit, token, clock=clock)
    with pytest.raises(InvalidGrant) as info:
        AgentSession.attest(remit, token, clock=clock)
    assert info.value.reason == "join_token_reused"
    record = last_record(remit)
    assert record.kind == "request.rejected" and record.data["reason"] == "join_token_reused"
    assert "rjt_" not in json.dumps(record.data)  # the token itself is never logged


def test_expired_join_token_is_refused(remit: Remit, clock: ManualClock) -> None:
    agent = remit.register_agent("late", owner="ops", ceiling=CEILING)
    token = remit.create_join_token(agent.agent_id)
    clock.advance(remit.settings.join_token_ttl_seconds + 1)
    with pytest.raises(InvalidGrant):
        AgentSession.attest(remit, token, clock=clock)


def test_attestation_needs_the_key_holder(remit: Remit) -> None:
    from remit.core.keys import generate_instance_key, public_jwk, sign_es256

    agent = remit.register_agent("keyed", owner="ops", ceiling=CEILING)
    token = remit.create_join_token(agent.agent_id).reveal()
    key, other = generate_instance_key(), generate_instance_key()
    nonce = remit.attestation_challenge()
    with pytest.raises(InvalidGrant):
        remit.attest(
            join_token=token,
            public_jwk=public_jwk(key.public_key()),
            nonce=nonce,
            signature=sign_es256(other, b"x"),
        )
    # The failed attempt did not burn the join token.
    AgentSession.attest(remit, token)


# ---------------------------------------------------------------------- bad input


def _assert_only_denial_record(remit: Remit, db: Path, action: Any) -> RemitError:
    remit.audit.flush()
    before = table_snapshot(db)
    head = remit.store.audit_head()
    with pytest.raises(InvalidRequest) as info:
        action()
    remit.audit.flush()
    assert table_snapshot(db) == before
    new = list(remit.store.iter_audit(head.seq if head else 0))
    assert len(new) == 1 and new[0].data.get("error") == "invalid_request"
    return info.value


def test_bad_input_writes_only_its_denial_record(
    remit: Remit, task: TaskSession, agent_session: AgentSession
) -> None:
    db = remit.settings.sqlite_path
    # Oversized intent.
    _assert_only_denial_record(
        remit,
        db,
        lambda: agent_session.open_task(
            principal=PRINCIPAL, intent={"purpose": "x" * 5000, "tools": ["docs/read"]}
        ),
    )
    # Malformed SPIFFE-ID material: agent names that would make a bad ID.
    for name in ("Bad Name", "../etc", "a/b", "", "x" * 80):
        _assert_only_denial_record(
            remit, db, lambda n=name: remit.register_agent(n, owner="ops", ceiling=CEILING)
        )
    # Confusable unicode in a tool name (Cyrillic е in "email").
    _assert_only_denial_record(
        remit, db, lambda: task.authorize("\u0435mail/send", {"to": "alice@example.com"})
    )
    # Deeply nested arguments.
    deep: Any = "x"
    for _ in range(50):
        deep = {"a": deep}
    # (The agent library refuses these itself, so send them to the service directly.)
    for bad_args in ({"q": deep}, {"q": float("nan")}, {"q": "x" * 300_000}, {"q": 2**60}):
        _assert_only_denial_record(
            remit,
            db,
            lambda a=bad_args: remit.authorize(
                task_token=task.token, proof="p", tool="docs/read", arguments=a
            ),
        )


def test_audit_chain_verifies_after_a_session(remit: Remit, task: TaskSession) -> None:
    for i in range(5):
        task.authorize("docs/read", {"i": i})
    remit.audit.checkpoint()
    report = remit.verify_audit()
    assert report.ok, report.problems
    assert report.checkpoints >= 1


# ---------------------------------------------------------------------- keys, monitor, restart


def test_signing_key_rotation_keeps_live_tokens_valid(
    remit: Remit, task: TaskSession, agent_session: AgentSession
) -> None:
    old_kid = remit.tokens.jwks()["keys"][0]["kid"]
    new_kid = remit.rotate_signing_keys()
    assert new_kid != old_kid
    assert {k["kid"] for k in remit.jwks()["keys"]} == {old_kid, new_kid}
    assert task.authorize(
        "docs/read", {}
    ).allowed  # signed by the old key, still inside the overlap
    fresh = open_task(agent_session)
    header = json.loads(base64.urlsafe_b64decode(fresh.token.split(".")[0] + "=="))
    assert header["kid"] == new_kid and fresh.authorize("docs/read", {}).allowed


def test_kill_switch_denies_at_once(remit: Remit, task: TaskSession) -> None:
    remit.set_kill_switch(True, agent_id=task.agent.agent_id)
    decision = task.authorize("docs/read", {})
    assert not decision.allowed and "kill-switch" in decision.reasons
    remit.set_kill_switch(False, agent_id=task.agent.agent_id)
    assert task.authorize("docs/read", {}).allowed
    remit.set_kill_switch(True)
    assert not task.authorize("docs/read", {}).allowed


def test_rate_limit(remit: Remit, task: TaskSession) -> None:
    remit.monitor.max_calls_per_minute = 3
    results = [task.authorize("docs/read", {"i": i}).allowed for i in range(5)]
    assert results == [True, True, True, False, False]


def test_shadow_policy_is_reported_but_does_not_decide(remit: Remit, task: TaskSession) -> None:
    remit.load_policies(
        [
            PolicySource(
                "trial.cedar",
                '@id("trial-no-docs") @mode("shadow") forbid (principal, action, resource == Tool::"docs/read");',
            )
        ]
    )
    decision = task.authorize("docs/read", {})
    assert decision.allowed and decision.shadow_reasons == ("trial-no-docs",)
    assert last_record(remit).data["shadow_policies"] == ["trial-no-docs"]


def test_policies_from_a_directory_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    from remit.runtime import build_remit, catalog_from_yaml

    from .conftest import CATALOG, make_settings

    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "ops.cedar").write_text(
        '@id("no-export") forbid (principal, action, resource == Tool::"crm/export");'
    )
    first = build_remit(
        make_settings(tmp_path, policy_dir=policy_dir),
        clock=clock,
        catalog=catalog_from_yaml(CATALOG),
    )
    version = first.policy.version
    assert "no-export" in first.policy.policy_ids()
    first.close()
    second = build_remit(make_settings(tmp_path), clock=clock, catalog=catalog_from_yaml(CATALOG))
    assert second.policy.version == version and "no-export" in second.policy.policy_ids()
    (policy_dir / "broken.cedar").write_text("this is not cedar")
    with pytest.raises(PolicyInvalid):
        build_remit(
            make_settings(tmp_path, policy_dir=policy_dir),
            clock=clock,
            catalog=catalog_from_yaml(CATALOG),
        )
    second.close()


def test_kill_switch_is_not_relaxed_by_shadow_mode(
    remit: Remit, agent_session: AgentSession
) -> None:
    remit.set_agent_mode(agent_session.agent_id, "shadow")
    task = open_task(agent_session)
    remit.set_kill_switch(True, agent_id=agent_session.agent_id)
    decision = task.authorize("docs/read", {})
    assert (
        not decision.allowed
        and decision.mode.value == "enforce"
        and "kill-switch" in decision.reasons
    )
