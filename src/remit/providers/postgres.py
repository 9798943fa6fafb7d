"""PostgreSQL dynamic roles (issue 6): one login role per lease, dropped when it ends.

For a lease, ``issue`` creates a role that can log in only until the lease's expiry::

    CREATE ROLE remit_lse_..._<hash> LOGIN NOINHERIT NOCREATEDB NOCREATEROLE NOSUPERUSER
        NOREPLICATION NOBYPASSRLS CONNECTION LIMIT n VALID UNTIL '<lease expiry>'
        PASSWORD 'SCRAM-SHA-256$...'

with grants derived from the tool's privilege class (Remit decided the call before;
the provider only maps the class to the narrowest grants):

    read          CONNECT on the database, USAGE on each schema, SELECT on read_tables
    write, act    the same, plus INSERT, UPDATE on write_tables (and USAGE on the
                  sequences those tables own, so serial columns work)

Never DELETE, TRUNCATE, REFERENCES, TRIGGER or any DDL. A role is still a member of
PUBLIC and keeps PUBLIC's default rights, which this provider cannot take away for one
role: CONNECT on every database of the cluster, and before PostgreSQL 15 CREATE on schema
``public``. Operators should run ``REVOKE CONNECT ON DATABASE <other> FROM PUBLIC`` on the
databases the tools must not reach and, before PostgreSQL 15, ``REVOKE CREATE ON SCHEMA
public FROM PUBLIC`` (docs/credentials.md). The password is 256 random bits
from ``secrets``; it is hashed (SCRAM-SHA-256) on Remit's side, so the plaintext never
reaches the server or its statement log. The role's comment names the lease and the task.

``revoke`` undoes it, idempotently: ``ALTER ROLE ... NOLOGIN`` (no new sessions),
``pg_terminate_backend`` on every session of the role, ``REASSIGN OWNED`` and
``DROP OWNED`` (which also revokes its grants), ``DROP ROLE IF EXISTS``. Only roles
that carry the provider's prefix and hold no elevated attribute are ever touched.

All SQL is composed with ``psycopg.sql.Identifier`` / ``Literal``: names never reach
the server by string formatting. The admin connection URL is a sealed secret, revealed
only to connect; errors name the provider and the failure class, never the URL, the
role's password or the DSN handed to the tool.

Configuration (a ``[[credential_providers]]`` table, ``kind = "postgres"``)::

    admin_secret            name of the sealed secret holding the admin URL (a role with
                            CREATEROLE that may grant on the tables)     required
    host, port, database    where the tool connects (goes into the DSN) host, database
                                                                        required; port 5432
    read_tables             ["schema.table" | "table" (= public.table)] required, non-empty
    write_tables            subset of read_tables; INSERT/UPDATE for write and act
    role_prefix             default "remit_"
    connect_timeout_seconds default 5 (1..60)
    connection_limit        sessions per role, default 5 (1..100)
    sslmode                 put into the tool's DSN when set (disable .. verify-full)
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

import psycopg
from psycopg import sql

from remit.core.catalog import Privilege
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, ProviderUnavailable, RemitError
from remit.ids import check_name
from remit.providers.base import IssuedCredential, IssueRequest

KIND: Final = "postgres"
MAX_IDENTIFIER: Final = 63  # PostgreSQL's NAMEDATALEN - 1
_HASH_CHARS: Final = 12
_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")
_DATABASE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
_SSLMODES: Final = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_KEYS: Final = frozenset(
    {
        "admin_secret",
        "host",
        "port",
        "database",
        "read_tables",
        "write_tables",
        "role_prefix",
        "connect_timeout_seconds",
        "connection_limit",
        "sslmode",
    }
)
MAX_TABLES: Final = 256
# Server-side limits on the admin session, so a revocation never hangs on a lock.
_ADMIN_OPTIONS: Final = "-c statement_timeout=30000 -c lock_timeout=10000"
_TERMINATE_WAIT_MS: Final = 5000
# Remit's role changes on a server are serialized: concurrent GRANT/REVOKE on one table
# (or two revocations of one role) otherwise fail with "tuple concurrently updated".
_LOCK_KEY: Final = "SELECT {}(hashtextextended('remit.providers.postgres', 0))"
_LOCK_XACT: Final = sql.SQL(_LOCK_KEY).format(sql.SQL("pg_advisory_xact_lock"))
_LOCK_SESSION: Final = sql.SQL(_LOCK_KEY).format(sql.SQL("pg_advisory_lock"))


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, reason="bad_provider_config")


@dataclass(frozen=True, slots=True, order=True)
class TableRef:
    """A schema-qualified table name; both parts validated identifiers."""

    schema: str
    table: str

    @classmethod
    def parse(cls, value: object, where: str) -> TableRef:
        if not isinstance(value, str):
            raise _bad(f"{where}: a table must be a string 'schema.table' or 'table'")
        parts = value.split(".")
        if len(parts) == 1:
            parts = ["public", parts[0]]
        if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
            raise _bad(
                f"{where}: {value!r} is not 'schema.table' or 'table' "
                "(ASCII letters, digits, '_', '$'; at most 63 characters each)"
            )
        return cls(parts[0], parts[1])

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """A validated ``postgres`` provider configuration."""

    admin_secret: str
    host: str
    port: int
    database: str
    read_tables: tuple[TableRef, ...]
    write_tables: tuple[TableRef, ...]
    role_prefix: str = "remit_"
    connect_timeout_seconds: int = 5
    connection_limit: int = 5
    sslmode: str | None = None


def _int(raw: Mapping[str, object], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{key} must be an integer from {low} to {high}")
    return value


def _tables(raw: Mapping[str, object], key: str, *, required: bool) -> tuple[TableRef, ...]:
    value = raw.get(key, [])
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise _bad(f"{key} must be a list of table names")
    if required and not value:
        raise _bad(f"{key} must name at least one table")
    if len(value) > MAX_TABLES:
        raise _bad(f"{key} may name at most {MAX_TABLES} tables")
    refs = [TableRef.parse(item, key) for item in value]
    if len(set(refs)) != len(refs):
        raise _bad(f"{key} names a table twice")
    return tuple(refs)


def config_from_data(raw: Mapping[str, object]) -> PostgresConfig:
    """Validate a provider table (without ``name``/``kind``) whole; unknown keys refused."""
    if not isinstance(raw, Mapping):
        raise _bad("a postgres provider configuration must be a table")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise _bad(f"unknown postgres provider settings: {', '.join(unknown)}")
    for key in ("admin_secret", "host", "database"):
        if key not in raw:
            raise _bad(f"a postgres provider needs {key}")
    try:
        admin_secret = check_name(raw["admin_secret"], "admin_secret")
    except InvalidRequest:
        raise _bad("admin_secret must be the name of a sealed secret") from None
    host = raw["host"]
    if not isinstance(host, str) or not _HOST.match(host):
        raise _bad("host must be a host name or IP address")
    database = raw["database"]
    if not isinstance(database, str) or not _DATABASE.match(database):
        raise _bad("database must be a database name (ASCII letters, digits, '_', '$', '-')")
    prefix = raw.get("role_prefix", "remit_")
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise _bad("role_prefix must be 1-16 lowercase ASCII letters, digits or '_'")
    sslmode = raw.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise _bad(f"sslmode must be one of {', '.join(sorted(_SSLMODES))}")
    read_tables = _tables(raw, "read_tables", required=True)
    write_tables = _tables(raw, "write_tables", required=False)
    outside = sorted(str(t) for t in set(write_tables) - set(read_tables))
    if outside:
        raise _bad(f"write_tables must be a subset of read_tables: {', '.join(outside)}")
    return PostgresConfig(
        admin_secret=admin_secret,
        host=host,
        port=_int(raw, "port", 5432, 1, 65535),
        database=database,
        read_tables=read_tables,
        write_tables=write_tables,
        role_prefix=prefix,
        connect_timeout_seconds=_int(raw, "connect_timeout_seconds", 5, 1, 60),
        connection_limit=_int(raw, "connection_limit", 5, 1, 100),
        sslmode=sslmode if isinstance(sslmode, str) else None,
    )


def role_name(prefix: str, lease_id: str) -> str:
    """The role for a lease: the prefix, a readable slug of the lease id, and a hash of
    the exact id (so ids that differ only in case or punctuation never share a role).
    Always a plain lowercase identifier of at most 63 characters."""
    digest = hashlib.sha256(lease_id.encode("utf-8", "surrogatepass")).hexdigest()
    room = MAX_IDENTIFIER - len(prefix) - 1 - _HASH_CHARS
    slug = re.sub(r"[^a-z0-9]+", "_", lease_id.lower()).strip("_")
    return f"{prefix}{slug[:room]}_{digest[:_HASH_CHARS]}"


class PostgresRoleProvider:
    """Mints a PostgreSQL login role per lease; see the module docstring."""

    def __init__(
        self, name: str, config: PostgresConfig, reveal_secret: Callable[[str], Secret]
    ) -> None:
        self._name = check_name(name, "provider name")
        self._config = config
        self._reveal_secret = reveal_secret

    @property
    def kind(self) -> str:
        return KIND

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> PostgresConfig:
        return self._config

    def __repr__(self) -> str:
        c = self._config
        return f"PostgresRoleProvider({self._name!r}, {c.host}:{c.port}/{c.database})"

    # -- issue ---------------------------------------------------------------------

    def role_for(self, lease_id: str) -> str:
        return role_name(self._config.role_prefix, lease_id)

    def issue(self, request: IssueRequest) -> IssuedCredential:
        if not isinstance(request.lease_id, str) or not request.lease_id:
            raise InvalidRequest("a lease id is required", reason="bad_lease")
        if not (
            math.isfinite(request.expires_at)
            and math.isfinite(request.issued_at)
            and request.expires_at > request.issued_at
        ):
            raise InvalidRequest("a lease must expire after it is issued", reason="bad_lease")
        try:
            privilege = Privilege(request.privilege)
        except ValueError:
            raise InvalidRequest("unknown privilege class", reason="bad_lease") from None
        role = self.role_for(request.lease_id)
        password = secrets.token_urlsafe(32)
        valid_until = datetime.fromtimestamp(request.expires_at, tz=UTC).isoformat()
        comment = re.sub(
            r"[^\x20-\x7e]",
            "?",
            f"remit lease {request.lease_id[:80]} task {request.task_id[:80]} "
            f"tool {request.tool[:80]} ({privilege.value})",
        )
        cfg = self._config
        with self._admin("issue") as conn:
            try:
                with conn.transaction():
                    conn.execute(_LOCK_XACT)
                    verifier = conn.pgconn.encrypt_password(
                        password.encode(), role.encode(), b"scram-sha-256"
                    ).decode("ascii")
                    conn.execute(
                        sql.SQL(
                            "CREATE ROLE {role} LOGIN NOINHERIT NOCREATEDB NOCREATEROLE"
                            " NOSUPERUSER NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {limit}"
                            " VALID UNTIL {until} PASSWORD {verifier}"
                        ).format(
                            role=sql.Identifier(role),
                            limit=sql.Literal(cfg.connection_limit),
                            until=sql.Literal(valid_until),
                            verifier=sql.Literal(verifier),
                        )
                    )
                    conn.execute(
                        sql.SQL("COMMENT ON ROLE {} IS {}").format(
                            sql.Identifier(role), sql.Literal(comment)
                        )
                    )
                    self._ensure_membership(conn, role)
                    for statement in self._grants(conn, role, privilege):
                        conn.execute(statement)
            except psycopg.errors.DuplicateObject:
                raise ProviderUnavailable(
                    f"credential provider {self._name!r}: a role for this lease exists already",
                    reason="role_exists",
                    provider=self._name,
                ) from None
            except psycopg.errors.UndefinedTable:
                raise ProviderUnavailable(
                    f"credential provider {self._name!r}: a configured table does not exist",
                    reason="missing_table",
                    provider=self._name,
                ) from None
            except psycopg.Error as exc:
                raise self._unavailable("issue", exc) from None
        values = {
            "username": Secret(role),
            "password": Secret(password),
            "dsn": Secret(self._dsn(role, password)),
        }
        return IssuedCredential(handle=role, values=values)

    def _grants(
        self, conn: psycopg.Connection[tuple[object, ...]], role: str, privilege: Privilege
    ) -> Iterator[sql.Composed]:
        cfg = self._config
        who = sql.Identifier(role)
        yield sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(cfg.database), who
        )
        writes = privilege in (Privilege.WRITE, Privilege.ACT)
        tables = cfg.read_tables + (cfg.write_tables if writes else ())
        for schema in sorted({t.schema for t in tables}):
            yield sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who)
        for table in cfg.read_tables:
            yield sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(table.identifier(), who)
        if not writes:
            return
        for table in cfg.write_tables:
            yield sql.SQL("GRANT INSERT, UPDATE ON TABLE {} TO {}").format(table.identifier(), who)
            for sequence in self._owned_sequences(conn, table):
                yield sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                    sql.Identifier(*sequence), who
                )

    @staticmethod
    def _owned_sequences(
        conn: psycopg.Connection[tuple[object, ...]], table: TableRef
    ) -> list[tuple[str, str]]:
        """The sequences behind the table's serial columns (so INSERT can use defaults)."""
        rows = conn.execute(
            "SELECT sn.nspname, s.relname FROM pg_class s"
            " JOIN pg_namespace sn ON sn.oid = s.relnamespace"
            " JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid"
            "  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')"
            " JOIN pg_class t ON t.oid = d.refobjid"
            " JOIN pg_namespace tn ON tn.oid = t.relnamespace"
            " WHERE s.relkind = 'S' AND tn.nspname = %s AND t.relname = %s"
            " ORDER BY 1, 2",
            (table.schema, table.table),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def _dsn(self, role: str, password: str) -> str:
        cfg = self._config
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        query = f"connect_timeout={cfg.connect_timeout_seconds}"
        if cfg.sslmode:
            query += f"&sslmode={cfg.sslmode}"
        return (
            f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{cfg.port}"
            f"/{quote(cfg.database, safe='')}?{query}"
        )

    # -- revoke --------------------------------------------------------------------

    def check_handle(self, handle: object) -> str:
        """A handle this provider could have issued: a plain identifier with its prefix."""
        if (
            not isinstance(handle, str)
            or not _ROLE.match(handle)
            or not handle.startswith(self._config.role_prefix)
        ):
            raise InvalidRequest(
                f"credential provider {self._name!r}: not a role this provider issues",
                reason="bad_handle",
            )
        return handle

    def revoke(self, handle: str) -> None:
        role = self.check_handle(handle)
        who = sql.Identifier(role)
        with self._admin("revoke") as conn:
            try:
                conn.execute(_LOCK_SESSION)  # released when the connection closes
                row = conn.execute(
                    "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication"
                    " OR rolbypassrls FROM pg_roles WHERE rolname = %s",
                    (role,),
                ).fetchone()
                if row is not None:
                    if row[0]:
                        raise ProviderUnavailable(
                            f"credential provider {self._name!r}: refusing to drop a role with"
                            " elevated attributes",
                            reason="role_not_managed",
                            provider=self._name,
                        )
                    # First no new sessions, then end the open ones, then drop.
                    with conn.transaction():
                        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(who))
                        self._ensure_membership(conn, role)
                self._terminate_sessions(conn, role)
                if row is not None:
                    with conn.transaction():
                        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(who))
                        conn.execute(sql.SQL("DROP OWNED BY {}").format(who))
                        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(who))
            except psycopg.errors.UndefinedObject:
                # Another revocation of the same role won the race: done, if it is gone.
                if self._role_exists(role):
                    raise ProviderUnavailable(
                        f"credential provider {self._name!r}: cannot revoke: the role changed"
                        " during revocation",
                        reason="database_error",
                        provider=self._name,
                    ) from None
            except psycopg.errors.DependentObjectsStillExist:
                raise ProviderUnavailable(
                    f"credential provider {self._name!r}: the role still has grants in another"
                    " database; it can no longer log in, but it was not dropped",
                    reason="revoke_incomplete",
                    provider=self._name,
                ) from None
            except psycopg.Error as exc:
                raise self._unavailable("revoke", exc) from None

    def _role_exists(self, role: str) -> bool:
        with self._admin("revoke") as conn:
            try:
                conn.execute(_LOCK_SESSION)  # released when the connection closes
                row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            except psycopg.Error as exc:
                raise self._unavailable("revoke", exc) from None
        return row is not None

    @staticmethod
    def _ensure_membership(conn: psycopg.Connection[tuple[object, ...]], role: str) -> None:
        """A non-superuser admin (CREATEROLE) may end the role's sessions and drop what it
        owns only with the role's privileges: it makes itself a member of the lease role
        (which holds nothing the admin does not hold already)."""
        row = conn.execute("SELECT pg_has_role(current_user, %s, 'USAGE')", (role,)).fetchone()
        if row is None or not row[0]:
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))

    @staticmethod
    def _terminate_sessions(conn: psycopg.Connection[tuple[object, ...]], role: str) -> None:
        with conn.transaction():
            conn.execute(
                "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity"
                " WHERE usename = %s AND pid <> pg_backend_pid()",
                (_TERMINATE_WAIT_MS, role),
            )

    def sessions(self, handle: str) -> int:
        """How many sessions the role has open now (for operators and tests)."""
        role = self.check_handle(handle)
        with self._admin("inspect") as conn:
            try:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
                ).fetchone()
            except psycopg.Error as exc:
                raise self._unavailable("inspect", exc) from None
        count = row[0] if row else 0
        return count if isinstance(count, int) else 0

    # -- the admin connection --------------------------------------------------------

    @contextmanager
    def _admin(self, what: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        try:
            url = self._reveal_secret(self._config.admin_secret)
        except RemitError as exc:
            raise ProviderUnavailable(
                f"credential provider {self._name!r}: the admin secret cannot be opened"
                f" ({exc.code})",
                reason="admin_secret_unavailable",
                provider=self._name,
            ) from None
        try:
            conn = psycopg.connect(
                url.reveal(),
                dbname=self._config.database,
                connect_timeout=self._config.connect_timeout_seconds,
                application_name=f"remit-{self._name}",
                options=_ADMIN_OPTIONS,
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise self._unavailable(what, exc, connecting=True) from None
        except Exception:  # a malformed URL raises outside psycopg.Error in some versions
            raise ProviderUnavailable(
                f"credential provider {self._name!r}: cannot {what}: the admin connection"
                " URL is malformed",
                reason="bad_admin_url",
                provider=self._name,
            ) from None
        try:
            yield conn
        finally:
            conn.close()

    def _unavailable(
        self, what: str, exc: psycopg.Error, *, connecting: bool = False
    ) -> ProviderUnavailable:
        # Never the server's message: it can quote the connection string or the SQL.
        detail = "cannot reach the database server" if connecting else "the database refused"
        state = getattr(exc, "sqlstate", None)
        code = f", SQLSTATE {state}" if isinstance(state, str) and state.isalnum() else ""
        return ProviderUnavailable(
            f"credential provider {self._name!r}: cannot {what}: {detail}"
            f" ({type(exc).__name__}{code})",
            reason="unreachable" if connecting else "database_error",
            provider=self._name,
        )


def postgres_provider_from_config(
    name: str, raw: Mapping[str, object], reveal_secret: Callable[[str], Secret]
) -> PostgresRoleProvider:
    """Build the provider from its configuration table (``name``/``kind`` removed)."""
    return PostgresRoleProvider(name, config_from_data(raw), reveal_secret)
