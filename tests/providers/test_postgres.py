"""The PostgreSQL dynamic-role provider against a real server (see conftest.py).

Each test gets its own database, a least-privileged admin role (CREATEROLE, owner of
the tables, not a superuser) and its own role prefix. PostgreSQL itself refuses what a
lease may not do; nothing here is simulated.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from remit.core.catalog import Privilege
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, ProviderUnavailable
from remit.providers.base import CredentialProvider, IssueRequest
from remit.providers.postgres import (
    KIND,
    MAX_IDENTIFIER,
    PostgresRoleProvider,
    config_from_data,
    postgres_provider_from_config,
    role_name,
)
from tests.providers.conftest import ADMIN_SECRET, PgEnv

Connect = Callable[[str], psycopg.Connection[tuple[Any, ...]]]


def request(
    lease_id: str = "lse_AAAAAAAAAAAAAAAAAAAAAA",
    privilege: Privilege = Privilege.READ,
    *,
    ttl: float = 600.0,
    now: float | None = None,
) -> IssueRequest:
    issued = time.time() if now is None else now
    return IssueRequest(
        lease_id=lease_id,
        task_id="tsk_BBBBBBBBBBBBBBBBBBBBBB",
        agent_id="spiffe://acme.example/agent/reporter",
        tool="db/query",
        privilege=privilege,
        issued_at=issued,
        expires_at=issued + ttl,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused(conn: psycopg.Connection[tuple[Any, ...]], statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


# -- issue: what a lease may and may not do -----------------------------------------


def test_provider_shape(pg: PgEnv) -> None:
    provider = pg.provider()
    assert isinstance(provider, CredentialProvider)
    assert provider.kind == KIND == "postgres"
    assert pg.admin_password not in repr(provider)


def test_read_lease_selects_but_postgres_refuses_writes(pg: PgEnv, connect_as: Connect) -> None:
    cred = pg.provider().issue(request(privilege=Privilege.READ))
    assert set(cred.values) == {"username", "password", "dsn"}
    assert all(isinstance(v, Secret) for v in cred.values.values())
    assert cred.handle == cred.values["username"].reveal()
    assert cred.values["password"].reveal() not in repr(cred)

    conn = connect_as(cred.values["dsn"].reveal())
    user = conn.execute("SELECT current_user").fetchone()
    assert user == (cred.handle,)
    assert conn.execute("SELECT name FROM items ORDER BY id").fetchall() == [
        ("first",),
        ("second",),
    ]
    assert conn.execute("SELECT body FROM notes").fetchall() == [("hello",)]
    assert conn.execute("SELECT name FROM hr.staff").fetchall() == [("ann",)]
    refused(conn, "INSERT INTO items (name) VALUES ('x')")
    refused(conn, "UPDATE items SET name = 'x'")
    refused(conn, "DELETE FROM items")
    refused(conn, "SELECT * FROM payroll")  # not in read_tables
    refused(conn, "CREATE TABLE public.mine (x int)")
    refused(conn, "DROP TABLE items")


@pytest.mark.parametrize("privilege", [Privilege.WRITE, Privilege.ACT])
def test_write_lease_inserts_and_updates_only_on_write_tables(
    pg: PgEnv, connect_as: Connect, privilege: Privilege
) -> None:
    cred = pg.provider().issue(request(privilege=privilege))
    conn = connect_as(cred.values["dsn"].reveal())
    # serial and identity columns both work (the sequences are granted)
    row = conn.execute("INSERT INTO items (name) VALUES ('third') RETURNING id").fetchone()
    assert row == (3,)
    conn.execute("INSERT INTO notes (body) VALUES ('more')")
    conn.execute("UPDATE items SET name = 'renamed' WHERE id = 1")
    assert conn.execute("SELECT name FROM items WHERE id = 1").fetchone() == ("renamed",)
    refused(conn, "DELETE FROM items WHERE id = 1")
    refused(conn, "TRUNCATE items")
    refused(conn, "INSERT INTO hr.staff (name) VALUES ('x')")  # read-only table
    refused(conn, "UPDATE hr.staff SET name = 'x'")
    refused(conn, "INSERT INTO payroll (salary) VALUES (1)")  # outside every list
    refused(conn, "SELECT * FROM payroll")
    refused(conn, "ALTER TABLE items ADD COLUMN y int")
    refused(conn, "CREATE TABLE public.mine (x int)")


def test_role_attributes_and_valid_until_is_the_lease_expiry(pg: PgEnv) -> None:
    req = request(lease_id="lse_ValidUntilCheck0000000", ttl=123.0, now=1_900_000_000.25)
    cred = pg.provider(connection_limit=3).issue(req)
    row = pg.role_row(cred.handle)
    assert row is not None
    assert row["rolvaliduntil"] == datetime.fromtimestamp(req.expires_at, tz=UTC)
    assert row["rolcanlogin"] is True
    assert row["rolinherit"] is False
    for attribute in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication"):
        assert row[attribute] is False, attribute
    assert row["rolbypassrls"] is False
    assert row["rolconnlimit"] == 3
    assert req.lease_id in row["comment"] and req.task_id in row["comment"]
    with pg.superuser() as conn:  # only a SCRAM verifier reached the server
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (cred.handle,)
        ).fetchone()
    assert stored is not None and stored[0].startswith("SCRAM-SHA-256$")
    assert cred.values["password"].reveal() not in stored[0]


def test_postgres_enforces_valid_until(pg: PgEnv) -> None:
    past = time.time() - 60
    cred = pg.provider().issue(request(now=past, ttl=30))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cred.values["dsn"].reveal(), connect_timeout=3).close()


def test_connection_limit(pg: PgEnv, connect_as: Connect) -> None:
    cred = pg.provider(connection_limit=1).issue(request())
    connect_as(cred.values["dsn"].reveal())
    with pytest.raises(psycopg.OperationalError, match="too many connections"):
        connect_as(cred.values["dsn"].reveal())


def test_wrong_password_is_refused(pg: PgEnv) -> None:
    cred = pg.provider().issue(request())
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.url(cred.handle, "not-the-password"), connect_timeout=3).close()


def test_failed_issue_leaves_no_role(pg: PgEnv) -> None:
    provider = pg.provider(read_tables=["items", "no_such_table"], write_tables=[])
    with pytest.raises(ProviderUnavailable) as caught:
        provider.issue(request())
    assert caught.value.reason == "missing_table"
    assert pg.roles_with_prefix() == set()


def test_issue_for_the_same_lease_twice_is_refused(pg: PgEnv) -> None:
    provider = pg.provider()
    provider.issue(request())
    with pytest.raises(ProviderUnavailable) as caught:
        provider.issue(request())
    assert caught.value.reason == "role_exists"


def test_bad_lease_times_refused(pg: PgEnv) -> None:
    with pytest.raises(InvalidRequest):
        pg.provider().issue(request(ttl=0))
    with pytest.raises(InvalidRequest):
        pg.provider().issue(request(ttl=float("nan")))
    assert pg.roles_with_prefix() == set()


def test_superuser_admin_works_too(pg: PgEnv, connect_as: Connect) -> None:
    pg.secrets[ADMIN_SECRET] = Secret(pg.server_url)
    provider = pg.provider()
    cred = provider.issue(request(privilege=Privilege.WRITE))
    connect_as(cred.values["dsn"].reveal()).execute("INSERT INTO items (name) VALUES ('x')")
    provider.revoke(cred.handle)
    assert pg.role_row(cred.handle) is None


# -- revoke -----------------------------------------------------------------------


def test_revoke_ends_sessions_refuses_new_ones_and_drops_the_role(
    pg: PgEnv, connect_as: Connect
) -> None:
    provider = pg.provider()
    cred = provider.issue(request(privilege=Privilege.WRITE))
    dsn = cred.values["dsn"].reveal()
    session = connect_as(dsn)
    other = connect_as(dsn)
    other.execute("BEGIN")
    other.execute("INSERT INTO items (name) VALUES ('uncommitted')")
    assert session.execute("SELECT 1").fetchone() == (1,)
    assert pg.sessions_of(cred.handle) == 2

    provider.revoke(cred.handle)

    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        other.execute("COMMIT")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3).close()
    assert pg.role_row(cred.handle) is None
    assert pg.sessions_of(cred.handle) == 0
    with pg.superuser() as conn:  # the open transaction never committed
        names = conn.execute("SELECT name FROM items").fetchall()
    assert ("uncommitted",) not in names


def test_revoke_is_idempotent(pg: PgEnv) -> None:
    provider = pg.provider()
    cred = provider.issue(request())
    provider.revoke(cred.handle)
    provider.revoke(cred.handle)
    provider.revoke(provider.role_for("lse_never_issued_0000000"))
    assert pg.roles_with_prefix() == set()


def test_concurrent_revocations_of_one_lease_both_succeed(pg: PgEnv) -> None:
    provider = pg.provider()
    handles = [provider.issue(request(lease_id=f"lse_race{i}")).handle for i in range(3)]
    errors: list[BaseException] = []

    def revoke(handle: str) -> None:
        try:
            provider.revoke(handle)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=revoke, args=(h,)) for h in handles for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert pg.roles_with_prefix() == set()


def test_concurrent_issues_on_the_same_tables(pg: PgEnv) -> None:
    provider = pg.provider()
    issued: list[str] = []
    errors: list[BaseException] = []

    def issue(i: int) -> None:
        try:
            privilege = Privilege.WRITE if i % 2 else Privilege.READ
            issued.append(provider.issue(request(f"lse_many{i}", privilege)).handle)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=issue, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert pg.roles_with_prefix() == set(issued) and len(issued) == 6


def test_revoke_only_touches_this_lease(pg: PgEnv, connect_as: Connect) -> None:
    provider = pg.provider()
    first = provider.issue(request(lease_id="lse_first00000000000000000"))
    second = provider.issue(request(lease_id="lse_second0000000000000000"))
    keep = connect_as(second.values["dsn"].reveal())
    provider.revoke(first.handle)
    assert keep.execute("SELECT count(*) FROM items").fetchone() == (2,)
    assert pg.roles_with_prefix() == {second.handle}


def test_unreachable_server_fails_closed_without_secrets(pg: PgEnv) -> None:
    provider = pg.provider()
    cred = provider.issue(request())
    good = pg.secrets[ADMIN_SECRET]
    bad_url = pg.url(pg.admin_role, pg.admin_password).replace(f":{pg.port}/", f":{closed_port()}/")
    pg.secrets[ADMIN_SECRET] = Secret(bad_url)

    with pytest.raises(ProviderUnavailable) as caught:
        provider.revoke(cred.handle)
    error = caught.value
    assert error.code == "provider_unavailable" and error.reason == "unreachable"
    shown = f"{error} {error!r} {error.details}"
    for secret in (pg.admin_password, bad_url, cred.values["password"].reveal()):
        assert secret not in shown
    assert cred.values["dsn"].reveal() not in shown
    assert error.__cause__ is None and error.__suppress_context__

    with pytest.raises(ProviderUnavailable):
        provider.issue(request(lease_id="lse_while_down_000000000000"))

    # The lease is still revocable: the retry succeeds once the server answers again.
    assert pg.role_row(cred.handle) is not None
    pg.secrets[ADMIN_SECRET] = good
    provider.revoke(cred.handle)
    assert pg.role_row(cred.handle) is None


def test_wrong_admin_password_is_unavailable_without_secrets(pg: PgEnv) -> None:
    pg.secrets[ADMIN_SECRET] = Secret(pg.url(pg.admin_role, "wrong-password-123"))
    with pytest.raises(ProviderUnavailable) as caught:
        pg.provider().issue(request())
    assert "wrong-password-123" not in f"{caught.value} {caught.value.details}"


@pytest.mark.parametrize("url", ["not a url = =", "postgresql://u:pw@[::1/x", "host=x port=abc"])
def test_malformed_admin_url_is_unavailable_without_echo(pg: PgEnv, url: str) -> None:
    pg.secrets[ADMIN_SECRET] = Secret(url)
    with pytest.raises(ProviderUnavailable) as caught:
        pg.provider().revoke(pg.prefix + "x")
    assert url not in str(caught.value)


def test_missing_admin_secret_is_unavailable(pg: PgEnv) -> None:
    pg.secrets.clear()
    with pytest.raises(ProviderUnavailable) as caught:
        pg.provider().issue(request())
    assert caught.value.reason == "admin_secret_unavailable"


@pytest.mark.parametrize(
    "handle",
    ["postgres", "remit_x", "", 'rtXX_"; DROP ROLE postgres; --', "RT_UPPER", "a" * 64],
)
def test_revoke_refuses_foreign_or_malformed_handles(pg: PgEnv, handle: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        pg.provider().revoke(handle.replace("rtXX_", pg.prefix))
    assert caught.value.reason == "bad_handle"
    assert pg.role_row("postgres") is not None


def test_revoke_refuses_an_elevated_role_even_with_the_prefix(pg: PgEnv) -> None:
    planted = pg.prefix + "planted"
    with pg.superuser() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} CREATEDB").format(sql.Identifier(planted)))
    with pytest.raises(ProviderUnavailable) as caught:
        pg.provider().revoke(planted)
    assert caught.value.reason == "role_not_managed"
    assert pg.role_row(planted) is not None


# -- configuration ------------------------------------------------------------------

GOOD: dict[str, object] = {
    "admin_secret": "pg-admin",
    "host": "db.internal",
    "database": "app",
    "read_tables": ["items", "hr.staff"],
}


def test_config_defaults() -> None:
    config = config_from_data(GOOD)
    assert config.port == 5432 and config.role_prefix == "remit_"
    assert config.connect_timeout_seconds == 5 and config.connection_limit == 5
    assert [str(t) for t in config.read_tables] == ["public.items", "hr.staff"]
    assert config.write_tables == ()


@pytest.mark.parametrize(
    "change",
    [
        {"surprise": 1},
        {"admin_secret": None},
        {"admin_secret": "Not A Name"},
        {"host": None},
        {"host": "db internal"},
        {"database": None},
        {"database": 'app"; drop'},
        {"port": "5432"},
        {"port": True},
        {"port": 0},
        {"port": 70000},
        {"read_tables": []},
        {"read_tables": "items"},
        {"read_tables": ["a.b.c"]},
        {"read_tables": ["items; DROP TABLE x"]},
        {"read_tables": ['it"ems']},
        {"read_tables": [""]},
        {"read_tables": [3]},
        {"read_tables": ["items", "public.items"]},
        {"read_tables": ["x" * 64]},
        {"write_tables": ["payroll"]},
        {"write_tables": "items"},
        {"role_prefix": ""},
        {"role_prefix": "Remit_"},
        {"role_prefix": "pg-"},
        {"role_prefix": "a" * 17},
        {"connect_timeout_seconds": 0},
        {"connect_timeout_seconds": 5.5},
        {"connection_limit": 0},
        {"sslmode": "sometimes"},
    ],
)
def test_bad_config_refused(change: dict[str, object]) -> None:
    raw = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(InvalidRequest) as caught:
        postgres_provider_from_config("pg-main", raw, lambda name: Secret("x"))
    assert caught.value.reason == "bad_provider_config"


def test_dsn_carries_options() -> None:
    provider = PostgresRoleProvider(
        "pg-main",
        config_from_data({**GOOD, "host": "::1", "port": 6543, "sslmode": "verify-full"}),
        lambda name: Secret("x"),
    )
    dsn = provider._dsn("remit_abc", "p/w@")
    assert dsn == (
        "postgresql://remit_abc:p%2Fw%40@[::1]:6543/app?connect_timeout=5&sslmode=verify-full"
    )


# -- role names are never injectable -----------------------------------------------

_SAFE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@given(
    lease_id=st.text(min_size=1, max_size=300),
    prefix=st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
)
@settings(max_examples=300)
def test_role_names_are_plain_identifiers(lease_id: str, prefix: str) -> None:
    name = role_name(prefix, lease_id)
    assert _SAFE.match(name) and len(name) <= MAX_IDENTIFIER
    assert name.startswith(prefix) and name == role_name(prefix, lease_id)


@given(a=st.text(min_size=1, max_size=80), b=st.text(min_size=1, max_size=80))
@settings(max_examples=300)
def test_distinct_leases_get_distinct_roles(a: str, b: str) -> None:
    if a != b:
        assert role_name("remit_", a) != role_name("remit_", b)


def test_case_only_differences_do_not_collide() -> None:
    assert role_name("remit_", "lse_AbC") != role_name("remit_", "lse_abc")


@given(
    lease_id=st.one_of(
        st.text(min_size=1, max_size=120),
        st.sampled_from(
            ['lse_"; DROP ROLE postgres; --', "lse_' OR 1=1", "ROBERT'); --", "lse_\x00\n\u202e"]
        ),
    )
)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_hostile_lease_ids_on_the_real_server(pg: PgEnv, lease_id: str) -> None:
    provider = pg.provider()
    cred = provider.issue(request(lease_id=lease_id))
    assert pg.roles_with_prefix() == {cred.handle}
    assert pg.role_row("postgres") is not None
    provider.revoke(cred.handle)
    assert pg.roles_with_prefix() == set()
