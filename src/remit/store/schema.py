"""Table definitions (SQLAlchemy Core) and forward-only migrations."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

agents = Table(
    "agents",
    metadata,
    Column("agent_id", String(2048), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("owner", String(256), nullable=False),
    Column("description", Text, nullable=False),
    Column("ceiling", Text, nullable=False),  # canonical JSON
    Column("status", String(16), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

principals = Table(
    "principals",
    metadata,
    Column("principal_id", String(256), primary_key=True),
    Column("display_name", String(256), nullable=False),
    Column("identifiers", Text, nullable=False),  # JSON list of "kind:value"
)

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("agent_id", String(2048), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
    Column("used_by", String(128), nullable=True),
)

attestation_nonces = Table(
    "attestation_nonces",
    metadata,
    Column("nonce", String(128), primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)

instances = Table(
    "instances",
    metadata,
    Column("instance_id", String(128), primary_key=True),
    Column("agent_id", String(2048), nullable=False, index=True),
    Column("jkt", String(64), nullable=False, unique=True),
    Column("public_jwk", Text, nullable=False),
    Column("attested_at", Float, nullable=False),
    Column("active", Boolean, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(128), primary_key=True),
    Column("agent_id", String(2048), nullable=False),
    Column("instance_id", String(128), nullable=False),
    Column("principal_id", String(256), nullable=False),
    Column("parent_id", String(128), nullable=True, index=True),
    Column("depth", Integer, nullable=False),
    Column("mandate", Text, nullable=False),
    Column("mandate_digest", String(80), nullable=False),
    Column("call_budget", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("end_reason", String(64), nullable=True),
    Column("calls_used", Integer, nullable=False),
    # Taint as a level and a bit set, joined in SQL (max, bitwise or) so that
    # concurrent calls on one task can never lose each other's taint.
    Column("taint_level", Integer, nullable=False),
    Column("taint_flags", Integer, nullable=False),
    Index("ix_tasks_status_expires", "status", "expires_at"),
)

proof_jtis = Table(
    "proof_jtis",
    metadata,
    Column("jti", String(160), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("data", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("head_hash", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("kid", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("sources", Text, nullable=False),  # JSON {file: text}
    Column("loaded_at", Float, nullable=False),
    Column("active", Boolean, nullable=False),
)

V1_TABLES = [
    agents,
    principals,
    join_tokens,
    attestation_nonces,
    instances,
    tasks,
    proof_jtis,
    audit_events,
    audit_checkpoints,
    policy_versions,
]


admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False),
    Column("scopes", Text, nullable=False),  # JSON list
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)


tool_pins = Table(
    "tool_pins",
    metadata,
    Column("tool", String(128), primary_key=True),
    Column("digest", String(80), nullable=False),
    Column("definition", Text, nullable=False),  # canonical JSON, for review and diffs
    Column("admitted_at", Float, nullable=False),
    Column("admitted_by", String(128), nullable=False),
)


approvals = Table(
    "approvals",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("task_id", String(128), nullable=False, index=True),
    Column("agent_id", String(2048), nullable=False),
    Column("instance_id", String(128), nullable=False),
    Column("principal_id", String(256), nullable=False),
    Column("tool", String(128), nullable=False),
    Column("args_digest", String(80), nullable=False),
    Column("binding", String(80), nullable=False, index=True),
    Column("arguments", Text, nullable=False),  # canonical JSON, shown to approvers only
    Column("reasons", Text, nullable=False),  # JSON list of policy ids
    Column("quorum", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("decided_at", Float, nullable=True),
    Column("consumed_at", Float, nullable=True),
    Index("ix_approvals_status_created", "status", "created_at"),
)

# One row per approver and approval: the primary key makes approvers distinct.
approval_votes = Table(
    "approval_votes",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("approver", String(128), primary_key=True),
    Column("approve", Boolean, nullable=False),
    Column("reason", String(256), nullable=False),
    Column("at", Float, nullable=False),
)


# Sealed secrets (issue 6): one row per name, its current version. Nothing here is plaintext:
# the value is AES-256-GCM under a per-version data key, itself wrapped by a master key that
# lives outside the database (``master_kid`` names it).
secrets = Table(
    "secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("master_kid", String(32), nullable=False, index=True),
    Column("wrapped_key", LargeBinary, nullable=False),  # nonce + wrapped data key
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),  # when this version was put
    Column("rotated_at", Float, nullable=True),  # when its data key was last re-wrapped
)


# Leases (issue 6): a credential handed downstream, bound to a task. Never a value: the
# secret is named, and revealed only when a gateway asks for the lease's header.
leases = Table(
    "leases",
    metadata,
    Column("lease_id", String(64), primary_key=True),
    Column("task_id", String(128), nullable=False),
    Column("secret_name", String(64), nullable=False),
    Column("tool", String(128), nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("revoke_reason", String(256), nullable=True),
    Column("state", String(16), nullable=False),
    Index("ix_leases_task_state", "task_id", "state"),
    Index("ix_leases_state_expires", "state", "expires_at"),
    # v7 (issue 6, providers): nullable so they can be added to an existing table.
    Column("provider", String(64), nullable=True),  # configured provider; NULL: implicit static
    Column("kind", String(32), nullable=True),
    Column("handle", String(256), nullable=True),  # the provider's non-secret revoke handle
    Column("call_id", String(64), nullable=True),  # the decision of a per-call lease
    Column("per_call", Boolean, nullable=True),
    Column("obligation_kind", String(16), nullable=True),
    Column("used_at", Float, nullable=True),
    Column("end_state", String(16), nullable=True),  # revoked/expired, once revocation succeeds
    Column("revoke_attempts", Integer, nullable=True),
    Column("next_attempt_at", Float, nullable=True),
    Column("last_error", String(64), nullable=True),  # a stable error code, never a message
    # The issued values, sealed (remit.core.sealing; AAD names the lease); NULL once ended.
    Column("values_kid", String(32), nullable=True),
    Column("values_wrapped", LargeBinary, nullable=True),
    Column("values_nonce", LargeBinary, nullable=True),
    Column("values_ciphertext", LargeBinary, nullable=True),
)
ix_leases_revoking = Index("ix_leases_state_next", leases.c.state, leases.c.next_attempt_at)
LEASE_V7_COLUMNS = (
    "provider",
    "kind",
    "handle",
    "call_id",
    "per_call",
    "obligation_kind",
    "used_at",
    "end_state",
    "revoke_attempts",
    "next_attempt_at",
    "last_error",
    "values_kid",
    "values_wrapped",
    "values_nonce",
    "values_ciphertext",
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=V1_TABLES)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[admin_tokens])


def _v3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[tool_pins])


def _v4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[approvals, approval_votes])


def _v5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[secrets])


def _v6(conn: Connection) -> None:
    metadata.create_all(conn, tables=[leases])


def _v7(conn: Connection) -> None:
    """Lease providers and revocation retries: ``ALTER TABLE leases ADD COLUMN`` for each
    v7 column an older table lacks (a table created by v6 today has them already)."""
    present = {c["name"] for c in inspect(conn).get_columns("leases")}
    quote = conn.dialect.identifier_preparer.quote
    for name in LEASE_V7_COLUMNS:
        if name in present:
            continue
        column = leases.c[name]
        ddl = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {quote('leases')} ADD COLUMN {quote(name)} {ddl}"))
    ix_leases_revoking.create(conn, checkfirst=True)


# The imported NHI inventory (issue 7): credentials that exist outside Remit, by id only
# (never values). An import replaces the previous one whole: at most one row in
# inventory_imports, and the items of that import.
inventory_imports = Table(
    "inventory_imports",
    metadata,
    Column("import_id", String(64), primary_key=True),
    Column("source_sha256", String(64), nullable=False),
    Column("imported_by", String(256), nullable=False),
    Column("imported_at", Float, nullable=False),
    Column("credentials", Integer, nullable=False),
)

inventory_items = Table(
    "inventory_items",
    metadata,
    Column("import_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),  # the item's order in the import
    Column("item_id", String(1024), nullable=False),
    Column("owner", String(1024), nullable=True),
    Column("systems", Text, nullable=False),  # JSON list
    Column("created", Float, nullable=False),
    Column("last_rotated", Float, nullable=True),
    Column("used_by", Text, nullable=False),  # JSON list
    Column("remit_secret", String(1024), nullable=True),
)


def _v8(conn: Connection) -> None:
    metadata.create_all(conn, tables=[inventory_imports, inventory_items])


# Forward-only: append new steps, never edit an applied one.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
    (5, _v5),
    (6, _v6),
    (7, _v7),
    (8, _v8),
]
