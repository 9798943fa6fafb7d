"""The postgres provider inside a real Remit: the admin URL sealed in Remit's secret
store, the provider built by the registry from ``[[credential_providers]]`` tables,
against the real PostgreSQL of conftest.py."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.core.catalog import Privilege
from remit.core.leases import LeaseState
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, ProviderUnavailable
from remit.providers.base import IssueRequest
from remit.providers.registry import ProviderRegistry, build_registry
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit
from tests.conftest import PRINCIPAL, make_settings
from tests.providers.conftest import ADMIN_SECRET, PgEnv


def no_static(name: str) -> tuple[Secret, int]:
    raise AssertionError(f"no static provider expected ({name})")


def registry_for(remit: Remit, tables: list[dict[str, Any]]) -> ProviderRegistry:
    return build_registry(
        tables,
        key_dir=remit.settings.key_dir,
        issuer="https://remit.test",
        lookup_secret=no_static,
        reveal_secret=remit.reveal_secret,
    )


def audit_kinds(remit: Remit) -> list[str]:
    remit.audit.flush()
    return [r.kind for r in remit.audit.records()]


def test_registry_builds_the_provider_and_reveals_the_sealed_admin_url(
    remit: Remit, pg: PgEnv
) -> None:
    remit.put_secret(ADMIN_SECRET, Secret(pg.admin_url))
    raw = pg.raw_config()
    registry = registry_for(remit, [{"name": "orders-db", "kind": "postgres", **raw}])
    provider = registry.get("orders-db")
    assert provider is not None and provider.kind == "postgres"
    assert registry.describe() == [{"name": "orders-db", "kind": "postgres"}]

    now = time.time()
    cred = provider.issue(
        IssueRequest(
            "lse_e2e0000000000000000000",
            "tsk_x",
            "spiffe://acme.example/agent/a",
            "db/query",
            Privilege.READ,
            now,
            now + 300,
        )
    )
    with psycopg.connect(cred.values["dsn"].reveal(), connect_timeout=3) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
    assert "secret.revealed" in audit_kinds(remit)

    provider.revoke(cred.handle)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cred.values["dsn"].reveal(), connect_timeout=3).close()
    assert pg.role_row(cred.handle) is None


def test_registry_refuses_a_bad_postgres_table_whole(remit: Remit, pg: PgEnv) -> None:
    with pytest.raises(InvalidRequest) as caught:
        registry_for(
            remit,
            [{"name": "orders-db", "kind": "postgres", **pg.raw_config(), "password": "x"}],
        )
    assert caught.value.reason == "bad_provider_config"
    assert "password" in str(caught.value)


def test_admin_secret_not_sealed_fails_closed(remit: Remit, pg: PgEnv) -> None:
    registry = registry_for(remit, [{"name": "orders-db", "kind": "postgres", **pg.raw_config()}])
    provider = registry.get("orders-db")
    assert provider is not None
    with pytest.raises(ProviderUnavailable) as caught:
        provider.revoke(pg.prefix + "x")
    assert caught.value.reason == "admin_secret_unavailable"


# -- the whole path: authorize → lease → injected DSN → task end → role gone -----------

DB_CATALOG = """
tools:
  - name: db/query
    privilege: read
    labels: [internal]
    credential: {provider: orders-db, env: {DATABASE_URL: "{dsn}"}}
  - name: db/update
    privilege: write
    labels: [internal]
    credential: {provider: orders-db, env: {DATABASE_URL: "{dsn}"}}
  - name: docs/read
    privilege: read
    labels: [public]
"""
DB_TOOLS = ["db/query", "db/update", "docs/read"]


@pytest.fixture
def db_remit(tmp_path: Path, pg: PgEnv) -> Iterator[tuple[Remit, ManualClock]]:
    # Postgres checks VALID UNTIL against its own clock: start the manual clock at now.
    clock = ManualClock(time.time())
    settings = make_settings(
        tmp_path,
        credential_providers=({"name": "orders-db", "kind": "postgres", **pg.raw_config()},),
    )
    remit = build_remit(settings, clock=clock, catalog=catalog_from_yaml(DB_CATALOG))
    try:
        remit.put_secret(ADMIN_SECRET, Secret(pg.admin_url))
        remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
        yield remit, clock
    finally:
        remit.close()


def db_task(remit: Remit, clock: ManualClock) -> TaskSession:
    agent = remit.register_agent(
        "reporter",
        owner="sam@acme.example",
        ceiling={
            "tools": DB_TOOLS,
            "privileges": ["read", "write"],
            "destinations": [],
            "max_sensitivity": "internal",
        },
    )
    session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)
    return session.open_task(
        principal=PRINCIPAL,
        intent={
            "purpose": "weekly order report",
            "tools": DB_TOOLS,
            "sensitivity": "internal",
            "call_budget": 20,
            "ttl_seconds": 600,
        },
    )


def injected_dsn(remit: Remit, task: TaskSession, tool: str) -> tuple[str, str]:
    decision = task.authorize(tool, {"sql": "select 1"})
    assert decision.allowed, decision.explain()
    (obligation,) = decision.obligations
    assert obligation.kind == "inject_env"
    injection = remit.credential_for(obligation)
    assert set(injection.env) == {"DATABASE_URL"}
    return obligation.ref, injection.env["DATABASE_URL"].reveal()


def test_task_end_revokes_the_role(db_remit: tuple[Remit, ManualClock], pg: PgEnv) -> None:
    remit, clock = db_remit
    task = db_task(remit, clock)
    lease_id, dsn = injected_dsn(remit, task, "db/query")
    lease = remit.get_lease(lease_id)
    assert lease.provider == "orders-db" and lease.handle.startswith(pg.prefix)
    row = pg.role_row(lease.handle)
    assert row is not None
    assert row["rolvaliduntil"] == datetime.fromtimestamp(lease.expires_at, tz=UTC)

    session = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    try:
        assert session.execute("SELECT count(*) FROM items").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # a read-class lease
            session.execute("INSERT INTO items (name) VALUES ('x')")

        task.end()

        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")  # its open session was terminated
    finally:
        session.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3).close()
    assert pg.role_row(lease.handle) is None
    assert remit.get_lease(lease_id).state is LeaseState.REVOKED
    kinds = audit_kinds(remit)
    assert "lease.issued" in kinds and "lease.revoked" in kinds
    text = audit_text(remit)
    assert dsn not in text and dsn.split(":")[2].split("@")[0] not in text  # nor the password


def test_write_tool_gets_a_write_role(db_remit: tuple[Remit, ManualClock], pg: PgEnv) -> None:
    remit, clock = db_remit
    task = db_task(remit, clock)
    _, dsn = injected_dsn(remit, task, "db/update")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('from the agent')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM items")
    task.end()
    assert pg.roles_with_prefix() == set()


def test_failed_revocation_is_reported_and_retried(
    db_remit: tuple[Remit, ManualClock], pg: PgEnv
) -> None:
    remit, clock = db_remit
    task = db_task(remit, clock)
    lease_id, dsn = injected_dsn(remit, task, "db/query")
    handle = remit.get_lease(lease_id).handle
    # The database server becomes unreachable for Remit (the admin URL points nowhere).
    remit.put_secret(ADMIN_SECRET, Secret(pg.admin_url.replace(f":{pg.port}/", f":{_closed()}/")))

    task.end()

    lease = remit.get_lease(lease_id)
    assert lease.state is LeaseState.REVOKING and lease.revoke_attempts == 1
    assert [x.lease_id for x in remit.list_leases(outstanding=True)] == [lease_id]
    assert "lease.revoke_failed" in audit_kinds(remit)
    assert pg.role_row(handle) is not None  # not yet revoked downstream, and shown so
    assert remit.retry_revocations() == []  # not due yet (backoff)

    remit.put_secret(ADMIN_SECRET, Secret(pg.admin_url))  # the server is back
    clock.advance(5)
    remit.sweep()

    assert remit.get_lease(lease_id).state is LeaseState.REVOKED
    assert remit.list_leases(outstanding=True) == []
    assert pg.role_row(handle) is None
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3).close()
    assert audit_kinds(remit).count("lease.revoked") == 1


def _closed() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def audit_text(remit: Remit) -> str:
    remit.audit.flush()
    return "\n".join(r.kind + json.dumps(r.data) for r in remit.audit.records())


def test_a_per_call_postgres_credential_is_refused_at_load(
    db_remit: tuple[Remit, ManualClock],
) -> None:
    """A per-call lease is revoked when it is handed out: a role would be dropped before
    the call could log in, so the catalog refuses the combination (and keeps the old one)."""
    remit, _ = db_remit
    per_call = DB_CATALOG.replace(
        'credential: {provider: orders-db, env: {DATABASE_URL: "{dsn}"}}',
        'credential: {provider: orders-db, per_call: true, env: {DATABASE_URL: "{dsn}"}}',
        1,
    )
    import yaml

    with pytest.raises(InvalidRequest) as caught:
        remit.load_catalog(yaml.safe_load(per_call))
    assert caught.value.reason == "bad_catalog" and "per_call" in str(caught.value)
    assert remit.catalog.get("db/query") is not None


def test_a_privilege_downgrade_in_the_catalog_drops_the_write_role(
    db_remit: tuple[Remit, ManualClock], pg: PgEnv
) -> None:
    """db/update goes from write to read in the catalog: its open lease (a role that can
    INSERT) is revoked at the reload, the role is gone, and the next call gets a new,
    read-only role."""
    import yaml

    remit, clock = db_remit
    task = db_task(remit, clock)
    old_lease, old_dsn = injected_dsn(remit, task, "db/update")
    old_role = remit.get_lease(old_lease).handle
    assert pg.role_row(old_role) is not None
    downgraded = DB_CATALOG.replace(
        "  - name: db/update\n    privilege: write", "  - name: db/update\n    privilege: read"
    )
    assert downgraded != DB_CATALOG
    remit.load_catalog(yaml.safe_load(downgraded))
    assert pg.role_row(old_role) is None
    lease = remit.get_lease(old_lease)
    assert lease.state is LeaseState.REVOKED and lease.revoke_reason == "catalog_changed"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(old_dsn, connect_timeout=3).close()
    new_lease, new_dsn = injected_dsn(remit, task, "db/update")
    assert new_lease != old_lease
    with psycopg.connect(new_dsn, autocommit=True, connect_timeout=3) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO items (name) VALUES ('after the downgrade')")
    task.end()
    assert pg.roles_with_prefix() == set()
