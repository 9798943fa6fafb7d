"""A real PostgreSQL for provider tests: a fresh database, admin role and role prefix per test.

The server comes from ``REMIT_TEST_PG`` (a superuser URL; ``make test`` starts one with
``scripts/test-services.sh``). Without it the tests skip, unless ``REMIT_REQUIRE_PG`` is
set (as ``make test`` does): then a missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from remit.core.secrets import Secret
from remit.errors import NotFound
from remit.providers.postgres import PostgresRoleProvider, postgres_provider_from_config

ADMIN_SECRET = "pg-admin"

SETUP = """
CREATE TABLE public.items (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text);
CREATE TABLE public.payroll (id serial PRIMARY KEY, salary int);
CREATE SCHEMA hr;
CREATE TABLE hr.staff (id serial PRIMARY KEY, name text);
INSERT INTO public.items (name) VALUES ('first'), ('second');
INSERT INTO public.notes (body) VALUES ('hello');
INSERT INTO public.payroll (salary) VALUES (100);
INSERT INTO hr.staff (name) VALUES ('ann');
"""


def require_pg() -> str:
    url = os.environ.get("REMIT_TEST_PG")
    if not url:
        if os.environ.get("REMIT_REQUIRE_PG"):
            pytest.fail("REMIT_REQUIRE_PG is set but REMIT_TEST_PG is not: no PostgreSQL")
        pytest.skip("REMIT_TEST_PG is not set (make test starts a PostgreSQL)")
    return url


def connect(url: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=5, **kwargs)


@dataclass
class PgEnv:
    """One test's slice of the server."""

    server_url: str  # superuser
    host: str
    port: int
    database: str
    admin_role: str
    admin_password: str
    prefix: str
    secrets: dict[str, Secret] = field(default_factory=dict)

    def url(self, user: str, password: str, database: str | None = None) -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database or self.database}"

    @property
    def admin_url(self) -> str:
        return self.url(self.admin_role, self.admin_password)

    def superuser(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection to this test's database."""
        return connect(self.server_url, dbname=self.database)

    def reveal(self, name: str) -> Secret:
        if name not in self.secrets:
            raise NotFound(f"no secret {name!r}")
        return self.secrets[name]

    def raw_config(self, **overrides: object) -> dict[str, object]:
        raw: dict[str, object] = {
            "admin_secret": ADMIN_SECRET,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "read_tables": ["items", "public.notes", "hr.staff"],
            "write_tables": ["items", "notes"],
            "role_prefix": self.prefix,
            "connect_timeout_seconds": 3,
        }
        raw.update(overrides)
        return {k: v for k, v in raw.items() if v is not None}

    def provider(self, **overrides: object) -> PostgresRoleProvider:
        return postgres_provider_from_config("pg-main", self.raw_config(**overrides), self.reveal)

    def role_row(self, role: str) -> dict[str, Any] | None:
        with self.superuser() as conn:
            cur = conn.execute(
                "SELECT rolname, rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb,"
                " rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil,"
                " shobj_description(oid, 'pg_authid') AS comment"
                " FROM pg_roles WHERE rolname = %s",
                (role,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            names = [d.name for d in cur.description or ()]
            return dict(zip(names, row, strict=True))

    def roles_with_prefix(self) -> set[str]:
        with connect(self.server_url) as conn:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (self.prefix,)
            ).fetchall()
        return {r[0] for r in rows}

    def sessions_of(self, role: str) -> int:
        with connect(self.server_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
            ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def pg() -> Iterator[PgEnv]:
    url = require_pg()
    info = conninfo_to_dict(url)
    suffix = secrets.token_hex(4)
    env = PgEnv(
        server_url=url,
        host=str(info.get("host") or "127.0.0.1"),
        port=int(info.get("port") or 5432),
        database=f"rt_{suffix}",
        admin_role=f"rt_adm_{suffix}",
        admin_password=secrets.token_hex(16),
        prefix=f"rt{suffix}_",
    )
    # A least-privileged admin: CREATEROLE, owner of the database and its tables; no superuser.
    with connect(url) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(env.admin_role), sql.Literal(env.admin_password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(env.database), sql.Identifier(env.admin_role)
            )
        )
    with connect(env.admin_url) as conn:
        conn.execute(SETUP)
    env.secrets[ADMIN_SECRET] = Secret(env.admin_url)
    try:
        yield env
    finally:
        _teardown(env)


def _teardown(env: PgEnv) -> None:
    with connect(env.server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(env.database))
        )
        for role in [*sorted(env.roles_with_prefix()), env.admin_role]:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def connect_as() -> Iterator[Callable[[str], psycopg.Connection[tuple[Any, ...]]]]:
    """Open connections with a DSN (a lease's); all closed at teardown."""
    opened: list[psycopg.Connection[tuple[Any, ...]]] = []

    def _connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(dsn, autocommit=True)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()
