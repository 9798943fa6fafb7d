"""Leases through providers, end to end through ``Remit.authorize`` and ``credential_for``:
a sealed static secret as a header, a per-call signed token verified with the provider's
published key, environment injection, Cedar issuance policy (an operator forbid stops
issuance), revocation on task end / kill switch / expiry, and a downstream revocation that
fails, is retried with growing backoff, shown as outstanding, then succeeds."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.core.leases import (
    MAX_LEASE_TTL,
    REVOKE_MAX_DELAY,
    CredentialSpec,
    LeaseState,
    lease_ttl,
    new_lease,
    revoke_backoff,
)
from remit.core.pipeline import Decision, Obligation
from remit.core.policy import PolicySource
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, ProviderUnavailable, TokenRevoked
from remit.providers.base import Injection, IssuedCredential, IssueRequest
from remit.providers.registry import ProviderRegistry, build_registry
from remit.service import Remit

from .conftest import CATALOG, CEILING, open_task

CANARY = "canary-5d1e-PROVIDER-NEVER-PRINT"
AUDIENCE = "https://ledger.internal"

TOOLS = """
  - name: billing/charge
    privilege: write
    labels: [internal]
    credential: {secret: billing.key, header: Authorization, format: "Bearer {value}"}
  - name: ledger/post
    privilege: write
    labels: [internal]
    credential: {provider: ledger, header: Authorization, format: "Bearer {value}", value: token}
  - name: flaky/op
    privilege: read
    labels: [internal]
    credential: {provider: flaky, header: X-Flaky, value: token}
  - name: flaky/proc
    privilege: read
    labels: [internal]
    credential: {provider: flaky, env: {DB_DSN: "{dsn}", DB_USER: "u={username}"}, ttl_seconds: 120}
  - name: flaky/once
    privilege: read
    labels: [internal]
    credential: {provider: flaky, header: X-Once, value: token, per_call: true}
"""
TOOL_NAMES = ["billing/charge", "ledger/post", "flaky/op", "flaky/proc", "flaky/once"]


class FlakyProvider:
    """A downstream that really keeps state: issued handles are live until revoked, and
    ``revoke`` fails ``failures`` times before it works."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.failures = 0
        self.revoke_calls = 0
        self.fail_issue = False
        self.count = 0

    @property
    def kind(self) -> str:
        return "flaky"

    def issue(self, request: IssueRequest) -> IssuedCredential:
        if self.fail_issue:
            raise ProviderUnavailable(f"down (not {CANARY})", reason="downstream_down")
        self.count += 1
        handle = f"h{self.count}"
        self.live.add(handle)
        return IssuedCredential(
            handle,
            {
                "token": Secret(f"{CANARY}-{self.count}"),
                "dsn": Secret(f"postgresql://u:{CANARY}@db/x"),
                "username": Secret("user1"),
            },
        )

    def revoke(self, handle: str) -> None:
        self.revoke_calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ProviderUnavailable(f"cannot reach downstream ({CANARY})", reason="unreachable")
        self.live.discard(handle)


@pytest.fixture
def flaky() -> FlakyProvider:
    return FlakyProvider()


@pytest.fixture
def premit(remit: Remit, flaky: FlakyProvider) -> Remit:
    built = build_registry(
        [{"name": "ledger", "kind": "signed-token", "audience": AUDIENCE, "ttl_seconds": 60}],
        key_dir=remit.settings.key_dir,
        issuer=remit.settings.issuer,
        lookup_secret=remit._secret_value,
        reveal_secret=remit.reveal_secret,
    )
    ledger = built.get("ledger")
    assert ledger is not None
    remit.use_providers(ProviderRegistry({"ledger": ledger, "flaky": flaky}))
    remit.load_catalog(yaml.safe_load(CATALOG + TOOLS))
    remit.put_secret("billing.key", Secret(CANARY))
    remit.revoke_jitter = lambda: 1.0  # full delay: the backoff is exact in these tests
    return remit


@pytest.fixture
def psession(premit: Remit, clock: ManualClock) -> AgentSession:
    ceiling = dict(CEILING, tools=[*CEILING["tools"], *TOOL_NAMES])
    agent = premit.register_agent("ledger-bot", owner="sam@acme.example", ceiling=ceiling)
    return AgentSession.attest(premit, premit.create_join_token(agent.agent_id), clock=clock)


def _task(session: AgentSession, **intent: Any) -> TaskSession:
    return open_task(session, tools=[*TOOL_NAMES, "docs/read"], **intent)


def _one(decision: Decision) -> Obligation:
    assert decision.allowed, decision.explain()
    (obligation,) = decision.obligations
    return obligation


def _audit(remit: Remit) -> list[tuple[str, dict[str, Any]]]:
    remit.audit.flush()
    return [(r.kind, dict(r.data)) for r in remit.store.iter_audit()]


def _audit_text(remit: Remit) -> str:
    return "\n".join(k + json.dumps(d) for k, d in _audit(remit))


# ---------------------------------------------------------------------- static and signed


def test_static_secret_header_end_to_end(premit: Remit, psession: AgentSession) -> None:
    task = _task(psession)
    obligation = _one(task.authorize("billing/charge", {"amount": 1}))
    assert obligation.kind == "inject_header"
    injection = premit.credential_for(obligation)
    assert isinstance(injection, Injection)
    assert injection.headers == {"Authorization": Secret(f"Bearer {CANARY}")}
    lease = premit.get_lease(obligation.ref)
    assert (lease.kind, lease.handle, lease.provider) == ("static", "billing.key@v1", "")
    # The issued value is sealed in the row, never plaintext.
    sealed = premit.store.get_lease_values(lease.lease_id)
    assert sealed is not None and CANARY.encode() not in sealed.ciphertext
    assert CANARY not in repr(injection) + _audit_text(premit)


def test_signed_token_is_minted_per_call_and_verifies(
    premit: Remit, psession: AgentSession, clock: ManualClock
) -> None:
    task = _task(psession)
    decision = task.authorize("ledger/post", {"entry": 1})
    obligation = _one(decision)
    lease = premit.get_lease(obligation.ref)
    assert lease.per_call and lease.call_id == decision.decision_id and lease.kind == "signed-token"
    injection = premit.credential_for(obligation)
    header = injection.headers["Authorization"].reveal()
    assert header.startswith("Bearer ")
    token = header.removeprefix("Bearer ")
    jwks = premit.provider_jwks("ledger")
    (jwk,) = jwks["keys"]
    assert "d" not in jwk and jwk["alg"] == "ES256"
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    key = jwt.PyJWK(jwk).key
    # The manual clock is not wall time: check exp/nbf against it by hand.
    claims = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=premit.settings.issuer,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims["sub"] == psession.agent_id
    assert claims["task"] == task.task_id and claims["tool"] == "ledger/post"
    assert claims["lease"] == lease.lease_id and claims["call"] == decision.decision_id
    assert claims["act"] == {"sub": psession.instance_id}
    assert claims["iat"] == int(clock.now())
    assert claims["exp"] <= lease.expires_at and claims["exp"] - claims["iat"] <= 60
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(
            token,
            key,
            algorithms=["ES256"],
            audience="https://other",
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    # Single use: handed out once, then revoked; the next call mints a new token.
    assert premit.get_lease(lease.lease_id).state is LeaseState.REVOKED
    with pytest.raises(TokenRevoked):
        premit.credential_for(obligation)
    second = _one(task.authorize("ledger/post", {"entry": 2}))
    assert second.ref != obligation.ref
    token2 = premit.credential_for(second).headers["Authorization"].reveal()
    assert token2 != header
    assert (
        jwt.decode(
            token2.removeprefix("Bearer "),
            key,
            algorithms=["ES256"],
            audience=AUDIENCE,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )["jti"]
        != claims["jti"]
    )
    # The provider key is on disk, owner-only.
    path = premit.settings.key_dir / "provider-ledger.pem"
    assert path.stat().st_mode & 0o777 == 0o600


def test_signed_token_expiry_is_cut_to_a_short_lease(premit: Remit, psession: AgentSession) -> None:
    task = _task(psession, ttl_seconds=30)  # the task (so the lease) ends before the 60 s ttl
    obligation = _one(task.authorize("ledger/post", {}))
    lease = premit.get_lease(obligation.ref)
    token = premit.credential_for(obligation).headers["Authorization"].reveal()[7:]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] <= lease.expires_at <= premit.get_task(task.task_id).expires_at
    assert claims["exp"] - claims["iat"] <= 30


def test_per_call_lease_refuses_a_second_use(premit: Remit, psession: AgentSession) -> None:
    task = _task(psession)
    first = _one(task.authorize("flaky/once", {}))
    assert premit.credential_for(first).headers["X-Once"] == Secret(f"{CANARY}-1")
    with pytest.raises(TokenRevoked) as info:
        premit.credential_for(first)
    assert info.value.reason in ("lease_used", "lease_revoked")
    assert premit.get_lease(first.ref).used_at is not None
    again = _one(task.authorize("flaky/once", {}))
    assert again.ref != first.ref  # a per-call lease is never shared


def test_env_injection_for_an_upstream_process(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    task = _task(psession)
    obligation = _one(task.authorize("flaky/proc", {}))
    assert obligation.kind == "inject_env"
    injection = premit.credential_for(obligation)
    assert injection.headers == {}
    assert injection.env == {
        "DB_DSN": Secret(f"postgresql://u:{CANARY}@db/x"),
        "DB_USER": Secret("u=user1"),
    }
    lease = premit.get_lease(obligation.ref)
    assert lease.expires_at - lease.issued_at == 120  # the entry's ttl_seconds
    with pytest.raises(InvalidRequest):  # the kind must match the lease
        premit.credential_for(Obligation("inject_header", obligation.ref))


# ---------------------------------------------------------------------- policy controls issuance


def test_operator_forbid_on_issue_credential_stops_issuance(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    premit.load_policies(
        [
            PolicySource(
                "ops/creds.cedar",
                '@id("no-flaky-for-tickets")\n'
                'forbid (principal, action == Action::"issue_credential", '
                'resource == Credential::"flaky")\n'
                'when { context.task.purpose like "*ticket*" && context.privilege == "read" };',
            )
        ]
    )
    task = _task(psession)
    decision = task.authorize("flaky/op", {})
    assert not decision.allowed and decision.obligations == ()
    assert decision.reasons == ("credential-denied", "no-flaky-for-tickets")
    assert flaky.count == 0 and premit.list_leases() == []
    assert any(k == "lease.refused" for k, _ in _audit(premit))
    # Other credentials are untouched by that forbid.
    assert _one(task.authorize("billing/charge", {}))
    # A task whose purpose does not match gets it.
    other = _task(psession, purpose="reconcile the ledger")
    assert _one(other.authorize("flaky/op", {}))


def test_issuance_failure_fails_closed_and_is_audited(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    flaky.fail_issue = True
    task = _task(psession)
    with pytest.raises(ProviderUnavailable) as info:
        task.authorize("flaky/op", {})
    assert (info.value.code, info.value.reason) == ("provider_unavailable", "downstream_down")
    assert CANARY not in str(info.value) + repr(info.value)
    assert premit.list_leases() == []
    kinds = [(k, d) for k, d in _audit(premit)]
    assert any(k == "lease.issue_failed" and d["error"] == "provider_unavailable" for k, d in kinds)
    assert any(
        k == "decision"
        and d.get("outcome") == "refused"
        and d.get("error") == "provider_unavailable"
        for k, d in kinds
    )
    assert CANARY not in _audit_text(premit)


def test_catalog_must_name_configured_providers_and_short_ttls(premit: Remit) -> None:
    bad = (
        CATALOG
        + """
  - name: x/y
    privilege: read
    credential: {provider: nowhere, header: X-K}
"""
    )
    with pytest.raises(InvalidRequest) as info:
        premit.load_catalog(yaml.safe_load(bad))
    assert info.value.reason == "bad_catalog"
    long = (
        CATALOG
        + """
  - name: x/y
    privilege: read
    credential: {provider: flaky, header: X-K, ttl_seconds: 5000}
"""
    )
    with pytest.raises(InvalidRequest):
        premit.load_catalog(yaml.safe_load(long))


# ---------------------------------------------------------------------- revocation


def test_task_end_revokes_downstream(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    task = _task(psession)
    obligation = _one(task.authorize("flaky/op", {}))
    assert flaky.live == {"h1"}
    task.end()
    lease = premit.get_lease(obligation.ref)
    assert lease.state is LeaseState.REVOKED and lease.revoke_attempts == 1
    assert flaky.live == set()
    assert premit.store.get_lease_values(lease.lease_id) is None  # values deleted at the end


def test_expired_lease_is_reaped_and_revoked_downstream(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider, clock: ManualClock
) -> None:
    task = _task(psession, ttl_seconds=3600)
    obligation = _one(task.authorize("flaky/proc", {}))  # 120 s lease
    clock.advance(121)
    premit.sweep()
    lease = premit.get_lease(obligation.ref)
    assert lease.state is LeaseState.EXPIRED and lease.revoke_reason == "ttl"
    assert flaky.live == set()


def test_kill_switch_revokes_downstream(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    task = _task(psession)
    obligation = _one(task.authorize("flaky/op", {}))
    premit.set_kill_switch(True)
    assert premit.get_lease(obligation.ref).state is LeaseState.REVOKED
    assert flaky.live == set()
    with pytest.raises(TokenRevoked):
        premit.credential_for(obligation)


def test_failed_revocation_is_retried_with_backoff_and_shown_outstanding(
    premit: Remit,
    psession: AgentSession,
    flaky: FlakyProvider,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    task = _task(psession)
    obligation = _one(task.authorize("flaky/op", {}))
    flaky.failures = 4
    premit.revoke_lease(obligation.ref, reason="rotated")
    lease = premit.get_lease(obligation.ref)
    assert lease.state is LeaseState.REVOKING and lease.outstanding
    assert lease.revoke_attempts == 1 and lease.last_error == "unreachable"
    assert [x.lease_id for x in premit.list_leases(outstanding=True)] == [lease.lease_id]
    with pytest.raises(TokenRevoked):  # never usable while revoking
        premit.credential_for(obligation)
    delays = [lease.next_attempt_at - clock.now()]  # type: ignore[operator]
    for attempt in (2, 3, 4):
        premit.sweep()  # not due yet: nothing happens
        assert premit.get_lease(lease.lease_id).revoke_attempts == attempt - 1
        clock.advance(delays[-1])
        premit.sweep()
        current = premit.get_lease(lease.lease_id)
        assert current.revoke_attempts == attempt and current.state is LeaseState.REVOKING
        delays.append(current.next_attempt_at - clock.now())  # type: ignore[operator]
    assert delays == [1.0, 2.0, 4.0, 8.0]  # doubling (jitter pinned to the full delay)
    assert "h1" in flaky.live
    clock.advance(delays[-1])
    premit.sweep()
    done = premit.get_lease(lease.lease_id)
    assert done.state is LeaseState.REVOKED and done.revoke_attempts == 5
    assert not done.outstanding and flaky.live == set()
    assert premit.list_leases(outstanding=True) == []
    records = _audit(premit)
    failed = [d for k, d in records if k == "lease.revoke_failed"]
    assert [d["attempts"] for d in failed] == [1, 2, 3, 4]
    assert all(d["error"] == "provider_unavailable" and d["why"] == "unreachable" for d in failed)
    assert any(k == "lease.revoked" and d["attempts"] == 5 for k, d in records)
    assert CANARY not in _audit_text(premit)
    assert "downstream revocation failed (unreachable)" in caplog.text
    assert CANARY not in caplog.text


def test_a_task_end_with_a_failing_downstream_is_never_dropped(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider, clock: ManualClock
) -> None:
    task = _task(psession)
    _one(task.authorize("flaky/op", {}))
    flaky.failures = 1
    task.end()
    (lease,) = premit.list_leases(outstanding=True)
    assert lease.end_state is LeaseState.REVOKED
    clock.advance(5)
    premit.sweep()
    assert premit.get_lease(lease.lease_id).state is LeaseState.REVOKED
    assert flaky.live == set()


def test_backoff_is_capped_and_jittered() -> None:
    assert revoke_backoff(1, 1.0) == 1.0
    assert revoke_backoff(2, 1.0) == 2.0
    assert revoke_backoff(1, 0.0) == 0.5
    assert revoke_backoff(40, 1.0) == REVOKE_MAX_DELAY
    assert REVOKE_MAX_DELAY / 2 <= revoke_backoff(100, 0.3) <= REVOKE_MAX_DELAY
    with pytest.raises(InvalidRequest):
        revoke_backoff(0, 0.5)


def test_master_key_rotation_keeps_open_lease_values(premit: Remit, psession: AgentSession) -> None:
    task = _task(psession)
    obligation = _one(task.authorize("flaky/op", {}))
    before = premit.store.get_lease_values(obligation.ref)
    rotation = premit.rotate_master_key()
    after = premit.store.get_lease_values(obligation.ref)
    assert before is not None and after is not None
    assert after.master_kid == rotation.new_kid != before.master_kid
    assert premit.credential_for(obligation).headers["X-Flaky"] == Secret(f"{CANARY}-1")


# ---------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    now=st.floats(min_value=0, max_value=1e9),
    task_left=st.floats(min_value=0.001, max_value=1e6),
    configured=st.floats(min_value=1, max_value=MAX_LEASE_TTL),
    own=st.none() | st.floats(min_value=1, max_value=MAX_LEASE_TTL),
    per_call=st.booleans(),
)
def test_a_lease_never_outlives_its_task_nor_the_configured_ttl(
    now: float, task_left: float, configured: float, own: float | None, per_call: bool
) -> None:
    task_expires = now + task_left
    if task_expires <= now:
        return
    spec = CredentialSpec(provider="p", header="X-K", per_call=per_call, ttl_seconds=own)
    ttl = lease_ttl(spec, configured)
    assert ttl <= configured and (own is None or ttl <= own)
    lease = new_lease(
        "lse_p",
        task_id="t",
        secret_name="p",
        tool="a/b",
        now=now,
        task_expires_at=task_expires,
        ttl=ttl,
        call_id="dec_1",
        per_call=per_call,
    )
    assert lease.expires_at <= task_expires
    assert lease.expires_at <= now + configured  # (no float subtraction round-off)
    assert not lease.usable(task_expires)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ttl=st.integers(min_value=1, max_value=1200), calls=st.integers(min_value=1, max_value=3))
def test_issued_leases_never_outlive_their_task(
    premit: Remit, psession: AgentSession, ttl: int, calls: int
) -> None:
    task = _task(psession, ttl_seconds=ttl)
    task_expires = premit.get_task(task.task_id).expires_at
    for i in range(calls):
        for tool in ("flaky/op", "flaky/proc", "ledger/post"):
            lease = premit.get_lease(_one(task.authorize(tool, {"i": i})).ref)
            assert lease.expires_at <= task_expires
            assert lease.expires_at - lease.issued_at <= premit.settings.lease_ttl_seconds
    task.end()
    assert premit.list_leases(task_id=task.task_id, state="open") == []


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("REMIT_CONFIG", raising=False)
    yield


# ---------------------------------------------------------------------- security review


def test_a_seal_failure_after_issue_revokes_the_downstream_credential(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider minted a live credential, then sealing its values failed (master key
    unavailable): no lease row exists to revoke it later, so it is revoked at once."""
    from remit.errors import SealError

    def broken(lease_id: str, values: Any) -> Any:
        raise SealError("the master key is not available", reason="master_key_missing")

    monkeypatch.setattr(premit.pipeline.leases, "seal_values", broken)
    task = _task(psession)
    with pytest.raises(ProviderUnavailable):
        task.authorize("flaky/op", {})
    assert flaky.count == 1  # it was issued ...
    assert flaky.live == set()  # ... and taken back
    assert premit.list_leases() == []


def test_a_lease_issued_while_its_task_ends_does_not_survive_the_task(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    """An operator revokes the task while step 7 is minting the credential (after the task
    was loaded as open, before the lease row is written): the task end's lease sweep cannot
    see that lease yet, so issuance itself must notice and revoke it."""
    task = _task(psession)
    real_issue = flaky.issue

    def racing_issue(request: IssueRequest) -> IssuedCredential:
        premit.revoke_task(request.task_id, reason="incident")
        return real_issue(request)

    flaky.issue = racing_issue  # type: ignore[method-assign]
    with pytest.raises(TokenRevoked):
        task.authorize("flaky/op", {})
    assert premit.list_leases(task_id=task.task_id, state="open") == []
    assert flaky.live == set()


@pytest.mark.parametrize("scope", ["all", "agent"])
def test_a_lease_issued_while_the_kill_switch_is_engaged_does_not_survive(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider, scope: str
) -> None:
    """The kill switch (global or for this agent) is engaged while step 7 is minting the
    credential: its lease sweep ran before the lease row was written, so issuance itself
    must notice the stop and revoke what it minted."""
    task = _task(psession)
    real_issue = flaky.issue

    def racing_issue(request: IssueRequest) -> IssuedCredential:
        premit.set_kill_switch(True, agent_id=request.agent_id if scope == "agent" else None)
        return real_issue(request)

    flaky.issue = racing_issue  # type: ignore[method-assign]
    with pytest.raises(TokenRevoked):
        task.authorize("flaky/op", {})
    assert flaky.count == 1  # it was minted ...
    assert flaky.live == set()  # ... and taken back downstream
    assert premit.list_leases(task_id=task.task_id, state="open") == []
    (lease,) = premit.list_leases(task_id=task.task_id)
    assert lease.state is LeaseState.REVOKED and "kill_switch" in (lease.revoke_reason or "")


def test_an_agent_kill_switch_revokes_its_leases_however_many_others_are_open(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    """The emergency stop listed at most 10,000 open leases (oldest first) and filtered
    them by agent: with more open leases than that, the stopped agent's newer leases stayed
    live downstream."""
    from sqlalchemy import insert

    from remit.store import schema
    from remit.store.sql import _lease_row

    rows = [
        _lease_row(
            new_lease(
                f"lse_other{i:06d}",
                task_id="tsk_someoneelsestask0001",
                secret_name="billing.key",
                tool="billing/charge",
                now=1.0,
                task_expires_at=1e12,
                ttl=MAX_LEASE_TTL,
            )
        )
        for i in range(10_000)
    ]
    with premit.store._tx() as conn:
        conn.execute(insert(schema.leases), rows)
    task = _task(psession)
    obligation = _one(task.authorize("flaky/op", {}))
    premit.set_kill_switch(True, agent_id=task.agent.agent_id)
    assert premit.get_lease(obligation.ref).state is LeaseState.REVOKED
    assert flaky.live == set()


def test_a_catalog_change_of_privilege_or_credential_revokes_open_leases(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    """A lease reused across calls must not keep grants the catalog no longer gives: a
    tool downgraded (write -> read), re-pointed at another credential entry, or removed
    has its open leases revoked downstream (``catalog_changed``, audited); a tool left
    unchanged keeps its lease."""
    task = _task(psession)
    op = _one(task.authorize("flaky/op", {}))
    proc = _one(task.authorize("flaky/proc", {}))
    charge = _one(task.authorize("billing/charge", {}))
    assert flaky.live == {"h1", "h2"}
    changed = (
        TOOLS.replace("    privilege: write\n    labels: [internal]\n    credential: {secret",
                      "    privilege: read\n    labels: [internal]\n    credential: {secret")
        .replace('X-Flaky, value: token}', 'X-Flaky-2, value: token}')
    )  # fmt: skip
    assert changed != TOOLS
    premit.load_catalog(yaml.safe_load(CATALOG + changed))
    for ref in (op.ref, charge.ref):
        lease = premit.get_lease(ref)
        assert lease.state is LeaseState.REVOKED and lease.revoke_reason == "catalog_changed"
    assert premit.get_lease(proc.ref).state is LeaseState.OPEN  # unchanged entry
    assert flaky.live == {"h2"}  # h1 revoked downstream
    ended = [d for k, d in _audit(premit) if k == "lease.revoked"]
    assert {d["lease"] for d in ended} >= {op.ref, charge.ref}
    # The next call gets a fresh lease under the new entry.
    fresh = _one(task.authorize("flaky/op", {}))
    assert fresh.ref != op.ref and premit.get_lease(fresh.ref).state is LeaseState.OPEN
    # A tool that disappears from the catalog loses its leases too.
    premit.load_catalog(yaml.safe_load(CATALOG + changed.split("  - name: flaky/proc")[0]))
    assert premit.get_lease(proc.ref).state is LeaseState.REVOKED
    assert premit.get_lease(fresh.ref).state is LeaseState.OPEN
    assert flaky.live == {"h3"}


def test_a_lease_issued_while_the_catalog_changes_its_tool_does_not_survive(
    premit: Remit, psession: AgentSession, flaky: FlakyProvider
) -> None:
    """The catalog replaces the tool's entry while step 7 mints under the old one: the
    reload's lease sweep ran before the row existed, so issuance must take it back."""
    task = _task(psession)
    real_issue = flaky.issue
    changed = TOOLS.replace("X-Flaky, value: token}", "X-Flaky-2, value: token}")

    def racing_issue(request: IssueRequest) -> IssuedCredential:
        premit.load_catalog(yaml.safe_load(CATALOG + changed))
        return real_issue(request)

    flaky.issue = racing_issue  # type: ignore[method-assign]
    with pytest.raises(TokenRevoked):
        task.authorize("flaky/op", {})
    assert flaky.count == 1 and flaky.live == set()
    assert premit.list_leases(task_id=task.task_id, state="open") == []
