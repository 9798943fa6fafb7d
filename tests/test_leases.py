"""Leases on a sealed static secret: issued per task for a credentialed tool, injected as
a header through ``credential_for``, revoked when the task ends, reaped on expiry. A
canary value never appears in the audit log, a decision, a listing or CLI output."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from remit.agent import AgentSession, TaskSession
from remit.cli import EXIT_CODES, app
from remit.clock import ManualClock
from remit.config import load_settings
from remit.core.catalog import catalog_from_data
from remit.core.leases import (
    CredentialSpec,
    Lease,
    LeaseState,
    lease_expiry,
    new_lease,
    reusable,
)
from remit.core.pipeline import Obligation
from remit.core.secrets import Secret
from remit.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    RemitError,
    TokenExpired,
    TokenRevoked,
)
from remit.runtime import build_remit
from remit.service import Remit

from .conftest import CATALOG, CEILING, PRINCIPAL, open_task

CANARY = "canary-7f3a91-LEASE-NEVER-PRINT"
runner = CliRunner()

CREDENTIALED = """
  - name: billing/charge
    privilege: write
    labels: [internal]
    credential: {secret: billing.key, header: Authorization, format: "Bearer {value}"}
  - name: billing/lookup
    privilege: read
    labels: [internal]
    credential: {secret: billing.key, header: X-Api-Key}
"""


def _catalog_data(extra: str = CREDENTIALED) -> Any:
    return yaml.safe_load(CATALOG + extra)


def _audit_text(remit: Remit) -> str:
    remit.audit.flush()
    return "\n".join(r.kind + json.dumps(r.data) for r in remit.store.iter_audit())


@pytest.fixture
def lease_remit(remit: Remit) -> Remit:
    remit.load_catalog(_catalog_data())
    remit.put_secret("billing.key", Secret(CANARY))
    return remit


@pytest.fixture
def session(lease_remit: Remit, clock: ManualClock) -> AgentSession:
    ceiling = dict(CEILING, tools=[*CEILING["tools"], "billing/charge", "billing/lookup"])
    agent = lease_remit.register_agent("billing-bot", owner="sam@acme.example", ceiling=ceiling)
    return AgentSession.attest(
        lease_remit, lease_remit.create_join_token(agent.agent_id), clock=clock
    )


def _task(session: AgentSession, **intent: Any) -> TaskSession:
    tools = ["billing/charge", "billing/lookup", "docs/read", "ticket/read"]
    return open_task(session, tools=tools, **intent)


def _header(remit: Remit, obligation: Obligation) -> tuple[str, Secret]:
    """The one header an inject_header obligation stands for."""
    injection = remit.credential_for(obligation)
    assert injection.lease_id == obligation.ref and injection.env == {}
    ((name, value),) = injection.headers.items()
    return name, value


def _obligation(decision: Any) -> Obligation:
    assert decision.allowed, decision.explain()
    assert len(decision.obligations) == 1
    (obligation,) = decision.obligations
    assert obligation.kind == "inject_header"
    return obligation  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- pure rules


def test_lease_ttl_never_passes_the_task() -> None:
    assert lease_expiry(100.0, 10_000.0, ttl=60.0) == 160.0
    assert lease_expiry(100.0, 130.0, ttl=60.0) == 130.0
    with pytest.raises(InvalidRequest):
        lease_expiry(100.0, 100.0)
    with pytest.raises(InvalidRequest):
        lease_expiry(100.0, 200.0, ttl=0)
    lease = new_lease(
        "lse_1", task_id="t", secret_name="s", tool="a/b", now=0.0, task_expires_at=50.0, ttl=900
    )
    assert lease.expires_at == 50.0 and lease.state is LeaseState.OPEN
    assert lease.usable(49.9) and lease.effective_state(50.0) is LeaseState.EXPIRED
    assert reusable(lease, 10.0, 50.0, 900) and not reusable(lease, 50.0, 50.0, 900)
    long = replace(lease, expires_at=1000.0)
    assert reusable(long, 10.0, 5000.0, 900) and not reusable(long, 980.0, 5000.0, 900)
    assert not reusable(replace(lease, state=LeaseState.REVOKED), 1.0, 50.0, 900)


def test_credential_render_refuses_header_injection() -> None:
    spec = CredentialSpec("k", "Authorization", "Bearer {value}")
    assert spec.render("abc") == "Bearer abc"
    assert spec.render("{value}") == "Bearer {value}"  # no format-string evaluation
    for bad in ("", "a\r\nX-Evil: 1", "tab\there", "ünï"):
        with pytest.raises(InvalidRequest):
            spec.render(bad)


@pytest.mark.parametrize(
    "credential",
    [
        "nope",
        {"secret": "k", "header": "Authorization", "typo": 1},
        {"secret": "Bad Name", "header": "X-Key"},
        {"secret": "k"},
        {"secret": "k", "header": "Bad Header"},
        {"secret": "k", "header": "Host"},
        {"secret": "k", "header": "X-Key", "format": "Bearer"},
        {"secret": "k", "header": "X-Key", "format": "{value}{value}"},
        {"secret": "k", "header": "X-Key", "format": "a\r\n{value}"},
    ],
)
def test_catalog_credential_is_validated(credential: object) -> None:
    data = {"tools": [{"name": "api/call", "privilege": "read", "credential": credential}]}
    with pytest.raises(InvalidRequest) as info:
        catalog_from_data(data)
    assert info.value.reason == "bad_catalog"


def test_catalog_credential_parses() -> None:
    spec = catalog_from_data(_catalog_data()).get("billing/lookup")
    assert spec is not None
    assert spec.credential == CredentialSpec("billing.key", "X-Api-Key", "{value}")
    plain = catalog_from_data(_catalog_data()).get("docs/read")
    assert plain is not None and plain.credential is None


# ---------------------------------------------------------------------- the service


def test_allowed_call_gets_an_inject_header_obligation(
    lease_remit: Remit, session: AgentSession
) -> None:
    task = _task(session)
    decision = task.authorize("billing/charge", {"amount": 5})
    obligation = _obligation(decision)
    header, value = _header(lease_remit, obligation)
    assert header == "Authorization" and value == Secret(f"Bearer {CANARY}")
    assert CANARY not in repr(decision) + repr(obligation) + repr(value)
    # Another call on the same tool reuses the task's open lease; another tool gets its own.
    again = _obligation(task.authorize("billing/charge", {"amount": 6}))
    assert again.ref == obligation.ref
    other = _obligation(task.authorize("billing/lookup", {}))
    assert other.ref != obligation.ref
    assert _header(lease_remit, other) == ("X-Api-Key", Secret(CANARY))
    leases = lease_remit.list_leases(task_id=task.task_id)
    assert sorted((x.tool, x.state) for x in leases) == [
        ("billing/charge", LeaseState.OPEN),
        ("billing/lookup", LeaseState.OPEN),
    ]
    assert all(x.expires_at <= lease_remit.get_task(task.task_id).expires_at for x in leases)
    # A tool with no credential gets no obligation.
    assert task.authorize("docs/read", {}).obligations == ()


def test_lease_is_cut_to_the_task_expiry(lease_remit: Remit, session: AgentSession) -> None:
    task = _task(session, ttl_seconds=120)
    obligation = _obligation(task.authorize("billing/charge", {}))
    lease = lease_remit.get_lease(obligation.ref)
    assert lease.expires_at == lease_remit.get_task(task.task_id).expires_at


def test_denied_call_gets_no_obligation_and_no_lease(
    lease_remit: Remit, session: AgentSession
) -> None:
    task = open_task(session, tools=["docs/read"])  # billing/charge is outside the mandate
    decision = task.authorize("billing/charge", {})
    assert not decision.allowed and decision.obligations == ()
    assert lease_remit.list_leases() == []


def test_missing_secret_fails_closed(lease_remit: Remit, session: AgentSession) -> None:
    lease_remit.load_catalog(_catalog_data(CREDENTIALED.replace("billing.key", "not.stored")))
    task = _task(session)
    with pytest.raises(ProviderUnavailable) as info:
        task.authorize("billing/charge", {})
    assert (info.value.code, info.value.reason) == ("provider_unavailable", "unknown_secret")
    assert lease_remit.list_leases() == []


@pytest.mark.parametrize("how", ["end", "revoke", "suspend"])
def test_lease_is_revoked_when_the_task_ends(
    lease_remit: Remit, session: AgentSession, how: str
) -> None:
    task = _task(session)
    obligation = _obligation(task.authorize("billing/charge", {}))
    if how == "end":
        task.end()
    elif how == "revoke":
        lease_remit.revoke_task(task.task_id, reason="done here")
    elif how == "suspend":
        lease_remit.suspend_agent(session.agent_id)
    lease = lease_remit.get_lease(obligation.ref)
    assert lease.state is LeaseState.REVOKED and lease.revoked_at is not None
    with pytest.raises(TokenRevoked) as info:
        lease_remit.credential_for(obligation)
    assert (info.value.code, info.value.reason) == ("token_revoked", "lease_revoked")
    assert CANARY not in str(info.value) + repr(info.value)
    assert lease_remit.list_leases(task_id=task.task_id, state="open") == []


def test_operator_revokes_one_lease(lease_remit: Remit, session: AgentSession) -> None:
    task = _task(session)
    obligation = _obligation(task.authorize("billing/charge", {}))
    revoked = lease_remit.revoke_lease(obligation.ref, reason="rotated upstream")
    assert revoked.state is LeaseState.REVOKED and revoked.revoke_reason == "rotated upstream"
    with pytest.raises(TokenRevoked):
        lease_remit.credential_for(obligation)
    with pytest.raises(Conflict):
        lease_remit.revoke_lease(obligation.ref)
    with pytest.raises(NotFound):
        lease_remit.revoke_lease("lse_nope")
    # The next allowed call on the still-open task gets a fresh lease.
    fresh = _obligation(task.authorize("billing/charge", {}))
    assert fresh.ref != obligation.ref
    assert _header(lease_remit, fresh)[1] == Secret(f"Bearer {CANARY}")


def test_expired_lease_is_refused_and_reaped_by_sweep(
    lease_remit: Remit, session: AgentSession, clock: ManualClock
) -> None:
    task = _task(session, ttl_seconds=3600)
    obligation = _obligation(task.authorize("billing/charge", {}))
    lease = lease_remit.get_lease(obligation.ref)
    assert lease.expires_at < lease_remit.get_task(task.task_id).expires_at
    clock.set(lease.expires_at + 1)
    with pytest.raises(TokenExpired) as info:
        lease_remit.credential_for(obligation)
    assert (info.value.code, info.value.reason) == ("token_expired", "lease_expired")
    assert lease_remit.sweep() == []  # the task itself is still open
    reaped = lease_remit.get_lease(obligation.ref)
    assert reaped.state is LeaseState.EXPIRED and reaped.revoke_reason == "ttl"
    assert lease_remit.reap_leases() == []  # once only
    # The task goes on: its next call gets a new lease.
    fresh = _obligation(task.authorize("billing/charge", {}))
    assert fresh.ref != obligation.ref and _header(lease_remit, fresh)[0] == "Authorization"


def test_sweep_revokes_leases_of_expired_task_trees(
    lease_remit: Remit, session: AgentSession, clock: ManualClock
) -> None:
    task = _task(session, ttl_seconds=120)
    obligation = _obligation(task.authorize("billing/charge", {}))
    clock.advance(121)
    with pytest.raises(TokenExpired):
        lease_remit.credential_for(obligation)
    assert task.task_id in lease_remit.sweep()
    assert lease_remit.get_lease(obligation.ref).effective_state(clock.now()) is not LeaseState.OPEN
    assert lease_remit.list_leases(state="open") == []


def test_credential_for_refuses_a_stopped_agent_and_a_withdrawn_credential(
    lease_remit: Remit, session: AgentSession
) -> None:
    task = _task(session)
    obligation = _obligation(task.authorize("billing/charge", {}))
    lease_remit.set_kill_switch(True, agent_id=session.agent_id)
    # The emergency stop revoked the lease itself, not just its use.
    assert lease_remit.get_lease(obligation.ref).state is LeaseState.REVOKED
    with pytest.raises(TokenRevoked) as info:
        lease_remit.credential_for(obligation)
    assert info.value.reason == "lease_revoked"
    lease_remit.set_kill_switch(False, agent_id=session.agent_id)
    obligation = _obligation(task.authorize("billing/charge", {"after": "stop lifted"}))
    assert _header(lease_remit, obligation)[0] == "Authorization"
    lease_remit.load_catalog(_catalog_data(""))  # the tool is gone from the catalog
    with pytest.raises(TokenRevoked) as info:
        lease_remit.credential_for(obligation)
    # The reload itself revoked the tool's open lease (security review: catalog changes).
    assert info.value.reason == "lease_revoked"
    assert lease_remit.get_lease(obligation.ref).revoke_reason == "catalog_changed"
    with pytest.raises(InvalidRequest):
        lease_remit.credential_for(Obligation("something_else", obligation.ref))
    with pytest.raises(NotFound):
        lease_remit.credential_for(Obligation("inject_header", "lse_unknown"))


def test_canary_never_in_audit_decision_listing_or_errors(
    lease_remit: Remit, session: AgentSession, clock: ManualClock
) -> None:
    task = _task(session)
    decision = task.authorize("billing/charge", {})
    obligation = _obligation(decision)
    lease_remit.credential_for(obligation)
    task.end()
    errors: list[RemitError] = []
    try:
        lease_remit.credential_for(obligation)
    except RemitError as exc:
        errors.append(exc)
    other = _task(session, ttl_seconds=3600)
    expiring = _obligation(other.authorize("billing/lookup", {}))
    clock.advance(3000)
    lease_remit.sweep()
    assert lease_remit.get_lease(expiring.ref).state is LeaseState.EXPIRED
    audit = _audit_text(lease_remit)
    for kind in ("lease.issued", "lease.used", "lease.revoked", "lease.expired"):
        assert kind in audit
    assert CANARY not in audit
    listing = [x.to_data() for x in lease_remit.list_leases()]
    assert CANARY not in json.dumps(listing) + repr(lease_remit.list_leases())
    assert CANARY not in repr(decision) + decision.explain()
    assert errors and CANARY not in "".join(str(e) + repr(e) for e in errors)


def test_migration_adds_the_leases_table(lease_remit: Remit) -> None:
    assert lease_remit.store.schema_version() >= 7
    lease = Lease("lse_x", "task_x", "billing.key", "billing/charge", 1.0, 2.0)
    lease_remit.store.insert_lease(lease)
    with pytest.raises(Conflict):
        lease_remit.store.insert_lease(lease)
    assert lease_remit.store.get_lease("lse_x") == lease
    assert lease_remit.store.expired_open_lease_ids(2.0) == ["lse_x"]
    ended = lease_remit.store.end_lease("lse_x", LeaseState.EXPIRED, "ttl", 3.0)
    assert ended is not None and ended.state is LeaseState.EXPIRED
    assert lease_remit.store.end_lease("lse_x", LeaseState.REVOKED, "again", 4.0) is None


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REMIT_MASTER_KEY", "REMIT_CONFIG", "REMIT_URL", "REMIT_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_cli_list_and_revoke(tmp_path: Path, cli_env: None) -> None:
    data = tmp_path / "data"
    clock = ManualClock()
    remit = build_remit(
        replace(load_settings({}).with_data_dir(data), trust_domain="acme.example"), clock=clock
    )
    try:
        remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
        remit.load_catalog(_catalog_data())
        remit.put_secret("billing.key", Secret(CANARY))
        ceiling = dict(CEILING, tools=[*CEILING["tools"], "billing/charge", "billing/lookup"])
        agent = remit.register_agent("billing-bot", owner="sam@acme.example", ceiling=ceiling)
        session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)
        task = _task(session)
        lease_id = _obligation(task.authorize("billing/charge", {})).ref
        remit.credential_for(Obligation("inject_header", lease_id))
    finally:
        remit.close()
    listed = runner.invoke(app, ["leases", "list", "--data-dir", str(data), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["leases"]
    assert [(r["lease_id"], r["state"], r["secret"]) for r in rows] == [
        (lease_id, "open", "billing.key")
    ]
    table = runner.invoke(app, ["leases", "list", "--data-dir", str(data), "--task", task.task_id])
    assert table.exit_code == 0 and "leases (1)" in table.output
    none = runner.invoke(
        app, ["leases", "list", "--data-dir", str(data), "--task", "nope", "--json"]
    )
    assert json.loads(none.stdout)["leases"] == []
    outstanding = runner.invoke(
        app, ["leases", "list", "--data-dir", str(data), "--outstanding", "--json"]
    )
    assert outstanding.exit_code == 0 and json.loads(outstanding.stdout)["leases"] == []
    revoked = runner.invoke(app, ["leases", "revoke", lease_id, "--data-dir", str(data), "--json"])
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.stdout)["state"] == "revoked"
    again = runner.invoke(app, ["leases", "revoke", lease_id, "--data-dir", str(data)])
    assert again.exit_code == EXIT_CODES["conflict"]
    missing = runner.invoke(app, ["leases", "revoke", "lse_nope", "--data-dir", str(data)])
    assert missing.exit_code == EXIT_CODES["not_found"]
    bad = runner.invoke(app, ["leases", "list", "--data-dir", str(data), "--state", "weird"])
    assert bad.exit_code == EXIT_CODES["invalid_request"]
    for result in (listed, table, none, revoked, again, missing, bad):
        assert CANARY not in result.output


# ---------------------------------------------------------------------- migration v7

_V6_LEASES = (
    "CREATE TABLE leases (lease_id VARCHAR(64) PRIMARY KEY, task_id VARCHAR(128) NOT NULL, "
    "secret_name VARCHAR(64) NOT NULL, tool VARCHAR(128) NOT NULL, issued_at FLOAT NOT NULL, "
    "expires_at FLOAT NOT NULL, revoked_at FLOAT, revoke_reason VARCHAR(256), "
    "state VARCHAR(16) NOT NULL)"
)


def _store_urls(tmp_path: Path) -> list[str]:
    import os
    import uuid

    import sqlalchemy

    urls = [f"sqlite:///{tmp_path / 'v6.db'}"]
    base = os.environ.get("REMIT_TEST_PG")
    if base:  # pragma: no cover - where PostgreSQL runs
        base = base.replace("postgresql://", "postgresql+psycopg://")
        name = "t_" + uuid.uuid4().hex[:12]
        admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        urls.append(base.rsplit("/", 1)[0] + "/" + name)
    return urls


def test_migration_v7_adds_columns_to_a_v6_leases_table(tmp_path: Path) -> None:
    import sqlalchemy

    from remit.store.sql import SqlStore

    for url in _store_urls(tmp_path):
        store = SqlStore(url)
        store.migrate()
        # Put the table back as v6 made it, with a row, and forget v7 (and anything later).
        with store.engine.begin() as conn:
            conn.execute(sqlalchemy.text("DROP TABLE leases"))
            conn.execute(sqlalchemy.text(_V6_LEASES))
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO leases VALUES ('lse_old', 'tsk_old', 'billing.key', 'a/b', "
                    "1.0, 99.0, NULL, NULL, 'open')"
                )
            )
            conn.execute(sqlalchemy.text("DELETE FROM schema_migrations WHERE version >= 7"))
        store.migrate()
        assert store.schema_version() >= 7
        old = store.get_lease("lse_old")
        assert old is not None and old.state is LeaseState.OPEN
        assert (old.kind, old.handle, old.per_call, old.revoke_attempts) == ("static", "", False, 0)
        ended = store.end_lease(
            "lse_old", LeaseState.REVOKING, "t", 5.0, end_state=LeaseState.EXPIRED
        )
        assert ended is not None and ended.state is LeaseState.REVOKING
        failed = store.settle_revocation(
            "lse_old", ok=False, attempts=1, next_attempt_at=6.0, error="unreachable"
        )
        assert failed is not None and failed.last_error == "unreachable"
        assert store.due_revocation_ids(5.5) == [] and store.due_revocation_ids(6.0) == ["lse_old"]
        done = store.settle_revocation("lse_old", ok=True, attempts=2)
        assert done is not None and done.state is LeaseState.EXPIRED
        store.migrate()  # idempotent
        store.close()
