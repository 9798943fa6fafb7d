"""The SQL store: SQLAlchemy Core over SQLite (embedded default, WAL) or PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Engine,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from remit.canonical import EncodedDict, canonical_bytes_unchecked
from remit.core.approvals import Approval, ApprovalStatus, Vote
from remit.core.audit import AuditRecord, Checkpoint
from remit.core.destinations import Destination, normalize_destination
from remit.core.identity import Agent, AgentStatus, Instance, Mode, Principal, ceiling_from_data
from remit.core.inventory import InventoryImport, InventoryItem
from remit.core.labels import FLAGS, Labels, Sensitivity
from remit.core.leases import INJECT_HEADER, STATIC_KIND, Lease, LeaseState
from remit.core.mandate import Mandate
from remit.core.sealing import SealedSecret
from remit.core.tasks import Task, TaskStatus
from remit.errors import Conflict, StoreUnavailable
from remit.store import schema as t
from remit.store.base import (
    AdminTokenRecord,
    AuditQuery,
    JoinTokenRecord,
    PolicyVersionRecord,
    StoredSecret,
    ToolPin,
)
from remit.store.direct import SqliteDirect, direct_path, transaction_cursor

MAX_TREE = 10_000


@dataclass(frozen=True, slots=True)
class _Compiled:
    text: str
    order: tuple[str, ...] | None  # positional parameter order, for qmark/format dialects
    defaults: dict[str, Any]


def _dumps(value: Any) -> str:
    return canonical_bytes_unchecked(value).decode("utf-8")


class SqlStore:
    """One implementation for SQLite and PostgreSQL. Thread-safe: one connection per operation."""

    def __init__(self, url: str, *, synchronous: str = "NORMAL", echo: bool = False) -> None:
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            # WAL + NORMAL survives a process crash; FULL also survives power loss,
            # at one fsync per group commit.
            if synchronous not in ("NORMAL", "FULL"):
                raise ValueError("synchronous must be NORMAL or FULL")

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={synchronous}")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

        # The two statements every decision runs skip SQLAlchemy's per-call statement
        # machinery: compiled once for this dialect, run on a pooled DB-API connection.
        self._get_task_sql = self._compile(_GET_TASK)
        self._insert_jti_sql = self._compile(_INSERT_JTI)
        self._consume_sql = self._compile(_CONSUME)
        self._insert_audit_sql = self._compile(
            insert(t.audit_events).values(
                {c.key: bindparam(f"b_{c.key}") for c in t.audit_events.c}
            )
        )
        self._task_columns = tuple(c.key for c in t.tasks.c)
        self._mandates: dict[str, Mandate] = {}
        # On a SQLite file those statements run on one connection per thread: no pool
        # checkout per statement (see remit.store.direct).
        path = direct_path(self.engine.url) if self.dialect == "sqlite" else None
        self._direct = SqliteDirect(path, synchronous=synchronous) if path else None

    def _compile(self, stmt: Any) -> _Compiled:
        compiled = stmt.compile(dialect=self.engine.dialect)
        order = compiled.positiontup
        # Literals in the statement (e.g. ``calls_used + 1``) are bound parameters too.
        defaults = {k: v for k, v in compiled.params.items() if v is not None}
        return _Compiled(str(compiled), tuple(order) if order else None, defaults)

    @staticmethod
    def _params(compiled: _Compiled, values: dict[str, Any]) -> Any:
        merged = {**compiled.defaults, **values}
        if compiled.order is not None:
            return tuple(merged[name] for name in compiled.order)
        return merged

    @contextmanager
    def _raw(self) -> Iterator[Any]:
        """A pooled DB-API cursor in one transaction; errors map like ``_tx``."""
        if self._direct is not None:
            with self._direct.cursor() as cursor:
                yield cursor
            return
        integrity = self.engine.dialect.loaded_dbapi.IntegrityError
        try:
            conn = self.engine.raw_connection()
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StoreUnavailable("the store is unavailable", reason=type(exc).__name__) from exc
        try:
            with transaction_cursor(conn) as cursor:
                yield cursor
        except integrity:
            raise
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise StoreUnavailable("the store is unavailable", reason=type(exc).__name__) from exc
        finally:
            conn.close()

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StoreUnavailable("the store is unavailable", reason=type(exc).__name__) from exc

    def migrate(self) -> int:
        with self._tx() as conn:
            t.schema_migrations.create(conn, checkfirst=True)
            applied = {row[0] for row in conn.execute(select(t.schema_migrations.c.version))}
            for version, step in t.MIGRATIONS:
                if version in applied:
                    continue
                step(conn)
                conn.execute(
                    insert(t.schema_migrations).values(version=version, applied_at=time.time())
                )
            return max([v for v, _ in t.MIGRATIONS])

    def schema_version(self) -> int:
        with self._tx() as conn:
            return int(
                conn.execute(select(func.max(t.schema_migrations.c.version))).scalar_one() or 0
            )

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ agents
    def _agent_row(self, agent: Agent) -> dict[str, Any]:
        return {
            "agent_id": agent.agent_id,
            "name": agent.name,
            "owner": agent.owner,
            "description": agent.description,
            "ceiling": _dumps(agent.ceiling.to_data()),
            "status": agent.status.value,
            "mode": agent.mode.value,
            "created_at": agent.created_at,
            "updated_at": agent.updated_at,
        }

    @staticmethod
    def _agent_from(row: Any) -> Agent:
        return Agent(
            agent_id=row.agent_id,
            name=row.name,
            owner=row.owner,
            description=row.description,
            ceiling=ceiling_from_data(json.loads(row.ceiling)),
            status=AgentStatus(row.status),
            mode=Mode(row.mode),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def insert_agent(self, agent: Agent) -> None:
        try:
            with self._tx() as conn:
                conn.execute(insert(t.agents).values(**self._agent_row(agent)))
        except IntegrityError:
            raise Conflict("an agent with this id exists already", reason="agent_exists") from None

    def update_agent(self, agent: Agent) -> None:
        with self._tx() as conn:
            row = self._agent_row(agent)
            conn.execute(
                update(t.agents).where(t.agents.c.agent_id == agent.agent_id).values(**row)
            )

    def get_agent(self, agent_id: str) -> Agent | None:
        with self._tx() as conn:
            row = conn.execute(select(t.agents).where(t.agents.c.agent_id == agent_id)).first()
        return self._agent_from(row) if row else None

    def list_agents(self) -> list[Agent]:
        with self._tx() as conn:
            rows = conn.execute(select(t.agents).order_by(t.agents.c.agent_id)).all()
        return [self._agent_from(r) for r in rows]

    def upsert_principal(self, principal: Principal) -> None:
        values = {
            "principal_id": principal.principal_id,
            "display_name": principal.display_name,
            "identifiers": _dumps([str(d) for d in principal.identifiers]),
        }
        with self._tx() as conn:
            done = conn.execute(
                update(t.principals)
                .where(t.principals.c.principal_id == principal.principal_id)
                .values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(t.principals).values(**values))

    def get_principal(self, principal_id: str) -> Principal | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.principals).where(t.principals.c.principal_id == principal_id)
            ).first()
        if row is None:
            return None
        identifiers = tuple(_destination(s) for s in json.loads(row.identifiers))
        return Principal(row.principal_id, row.display_name, identifiers)

    # ------------------------------------------------------------------ join tokens, nonces
    def insert_join_token(self, record: JoinTokenRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.join_tokens).values(
                    token_hash=record.token_hash,
                    agent_id=record.agent_id,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    used_at=None,
                    used_by=None,
                )
            )

    def get_join_token(self, token_hash: str) -> JoinTokenRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.join_tokens).where(t.join_tokens.c.token_hash == token_hash)
            ).first()
        if row is None:
            return None
        return JoinTokenRecord(
            row.token_hash, row.agent_id, row.created_at, row.expires_at, row.used_at, row.used_by
        )

    def consume_join_token(self, token_hash: str, now: float, used_by: str) -> bool:
        c = t.join_tokens.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.join_tokens)
                .where(c.token_hash == token_hash, c.used_at.is_(None), c.expires_at > now)
                .values(used_at=now, used_by=used_by)
            )
            return done.rowcount == 1

    def insert_nonce(self, nonce: str, expires_at: float) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.attestation_nonces).values(
                    nonce=nonce, expires_at=expires_at, used_at=None
                )
            )

    def consume_nonce(self, nonce: str, now: float) -> bool:
        c = t.attestation_nonces.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.attestation_nonces)
                .where(c.nonce == nonce, c.used_at.is_(None), c.expires_at > now)
                .values(used_at=now)
            )
            conn.execute(delete(t.attestation_nonces).where(c.expires_at < now - 3600))
            return done.rowcount == 1

    # ------------------------------------------------------------------ instances
    def insert_instance(self, instance: Instance) -> None:
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(t.instances).values(
                        instance_id=instance.instance_id,
                        agent_id=instance.agent_id,
                        jkt=instance.jkt,
                        public_jwk=_dumps(dict(instance.public_jwk)),
                        attested_at=instance.attested_at,
                        active=instance.active,
                    )
                )
        except IntegrityError:
            raise Conflict(
                "this key is bound to another instance already", reason="key_in_use"
            ) from None

    def get_instance(self, instance_id: str) -> Instance | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.instances).where(t.instances.c.instance_id == instance_id)
            ).first()
        if row is None:
            return None
        return Instance(
            row.instance_id,
            row.agent_id,
            row.jkt,
            json.loads(row.public_jwk),
            row.attested_at,
            bool(row.active),
        )

    def deactivate_instances(self, agent_id: str) -> int:
        with self._tx() as conn:
            done = conn.execute(
                update(t.instances).where(t.instances.c.agent_id == agent_id).values(active=False)
            )
            return int(done.rowcount)

    # ------------------------------------------------------------------ tasks
    def insert_task(self, task: Task) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.tasks).values(
                    task_id=task.task_id,
                    agent_id=task.agent_id,
                    instance_id=task.instance_id,
                    principal_id=task.principal_id,
                    parent_id=task.parent_id,
                    depth=task.depth,
                    mandate=_dumps(task.mandate.to_data()),
                    mandate_digest=task.mandate_digest,
                    call_budget=task.mandate.call_budget,
                    status=task.status.value,
                    opened_at=task.opened_at,
                    expires_at=task.expires_at,
                    ended_at=task.ended_at,
                    end_reason=task.end_reason,
                    calls_used=task.calls_used,
                    taint_level=int(task.taint.sensitivity),
                    taint_flags=_flag_bits(task.taint),
                )
            )

    def _mandate(self, text: str) -> Mandate:
        # A mandate never changes once issued, so its parsed form is kept (bounded).
        mandate = self._mandates.get(text)
        if mandate is None:
            mandate = Mandate.from_data(json.loads(text))
            if len(self._mandates) > 10_000:
                self._mandates.clear()
            self._mandates[text] = mandate
        return mandate

    def _task_from(self, row: Any) -> Task:
        return Task(
            task_id=row.task_id,
            agent_id=row.agent_id,
            instance_id=row.instance_id,
            principal_id=row.principal_id,
            parent_id=row.parent_id,
            mandate=self._mandate(row.mandate),
            mandate_digest=row.mandate_digest,
            status=TaskStatus(row.status),
            opened_at=row.opened_at,
            expires_at=row.expires_at,
            ended_at=row.ended_at,
            end_reason=row.end_reason,
            calls_used=row.calls_used,
            taint=_labels(row.taint_level, row.taint_flags),
            depth=row.depth,
        )

    def get_task(self, task_id: str) -> Task | None:
        sql = self._get_task_sql
        with self._raw() as cursor:
            cursor.execute(sql.text, self._params(sql, {"task_id": task_id}))
            row = cursor.fetchone()
        if row is None:
            return None
        return self._task_from(SimpleNamespace(**dict(zip(self._task_columns, row, strict=True))))

    def end_task_tree(self, task_id: str, status: TaskStatus, reason: str, now: float) -> list[str]:
        """End a task and revoke every open descendant, in one transaction."""
        c = t.tasks.c
        ended: list[str] = []
        with self._tx() as conn:
            frontier = [task_id]
            seen: set[str] = set()
            while frontier and len(seen) < MAX_TREE:
                current = frontier.pop()
                if current in seen:
                    continue
                seen.add(current)
                new_status = status if current == task_id else TaskStatus.REVOKED
                new_reason = reason if current == task_id else f"ancestor {reason}"
                done = conn.execute(
                    update(t.tasks)
                    .where(c.task_id == current, c.status == TaskStatus.OPEN.value)
                    .values(status=new_status.value, ended_at=now, end_reason=new_reason)
                )
                if done.rowcount:
                    ended.append(current)
                children = (
                    conn.execute(select(c.task_id).where(c.parent_id == current)).scalars().all()
                )
                frontier.extend(children)
        return ended

    def reserve_budget(self, task_id: str, calls: int) -> bool:
        """Carve ``calls`` out of an open task's remaining budget (for a delegated child),
        atomically: False, and nothing changed, if fewer are left."""
        c = t.tasks.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.tasks)
                .where(
                    c.task_id == task_id,
                    c.status == TaskStatus.OPEN.value,
                    c.calls_used + calls <= c.call_budget,
                )
                .values(calls_used=c.calls_used + calls)
            )
            return done.rowcount == 1

    def join_taint(self, task_id: str, taint: Labels) -> None:
        """Join ``taint`` into a task's taint (max level, union of flags), in SQL."""
        c = t.tasks.c
        with self._tx() as conn:
            conn.execute(
                update(t.tasks)
                .where(c.task_id == task_id)
                .values(
                    taint_level=case(
                        (c.taint_level < int(taint.sensitivity), int(taint.sensitivity)),
                        else_=c.taint_level,
                    ),
                    taint_flags=c.taint_flags.bitwise_or(_flag_bits(taint)),
                )
            )

    def open_task_ids(self, agent_id: str) -> list[str]:
        c = t.tasks.c
        with self._tx() as conn:
            rows = conn.execute(
                select(c.task_id).where(c.agent_id == agent_id, c.status == TaskStatus.OPEN.value)
            )
            return [str(r) for r in rows.scalars().all()]

    def expire_tasks(self, now: float) -> list[str]:
        c = t.tasks.c
        with self._tx() as conn:
            ids = (
                conn.execute(
                    select(c.task_id).where(c.status == TaskStatus.OPEN.value, c.expires_at <= now)
                )
                .scalars()
                .all()
            )
        expired: list[str] = []
        for task_id in ids:
            expired.extend(self.end_task_tree(task_id, TaskStatus.EXPIRED, "ttl", now))
        return expired

    def consume_call(self, task_id: str, taint: Labels) -> bool:
        with self._tx() as conn:
            return self._consume(conn, task_id, taint)

    @staticmethod
    def _consume(conn: Connection, task_id: str, taint: Labels) -> bool:
        done = conn.execute(
            _CONSUME,
            {"b_task_id": task_id, "level": int(taint.sensitivity), "bits": _flag_bits(taint)},
        )
        return done.rowcount == 1

    def record_call(
        self, *, task_id: str, jti: str, jti_expires_at: float, consume: bool, taint: Labels
    ) -> tuple[bool, bool]:
        """One transaction per decided call: remember the proof's jti and, for an
        allowed call, take one call from the budget and join the taint.

        Returns (fresh, consumed): ``fresh`` is False for a replayed jti, and
        then nothing else is changed.
        """
        integrity = self.engine.dialect.loaded_dbapi.IntegrityError
        jti_sql, consume_sql = self._insert_jti_sql, self._consume_sql
        try:
            with self._raw() as cursor:
                cursor.execute(
                    jti_sql.text,
                    self._params(jti_sql, {"b_jti": jti, "b_expires_at": jti_expires_at}),
                )
                consumed = False
                if consume:
                    values = {
                        "b_task_id": task_id,
                        "level": int(taint.sensitivity),
                        "bits": _flag_bits(taint),
                    }
                    cursor.execute(consume_sql.text, self._params(consume_sql, values))
                    consumed = cursor.rowcount == 1
        except integrity:
            return False, False
        return True, consumed

    def remember_jti(self, jti: str, expires_at: float, now: float) -> bool:
        c = t.proof_jtis.c
        try:
            with self._tx() as conn:
                conn.execute(insert(t.proof_jtis).values(jti=jti, expires_at=expires_at))
        except IntegrityError:
            with self._tx() as conn:
                # An expired entry may be reused only after it has been swept.
                conn.execute(delete(t.proof_jtis).where(c.expires_at < now))
            return False
        return True

    def sweep_jtis(self, now: float) -> int:
        with self._tx() as conn:
            return int(
                conn.execute(delete(t.proof_jtis).where(t.proof_jtis.c.expires_at < now)).rowcount
            )

    # ------------------------------------------------------------------ audit
    def append_audit(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "b_seq": r.seq,
                "b_event_id": r.event_id,
                "b_ts": r.ts,
                "b_kind": r.kind,
                # The audit log's records carry their canonical text (EncodedDict).
                "b_data": r.data.canonical
                if isinstance(r.data, EncodedDict)
                else _dumps(dict(r.data)),
                "b_prev_hash": r.prev_hash,
                "b_hash": r.hash,
            }
            for r in records
        ]
        sql = self._insert_audit_sql
        integrity = self.engine.dialect.loaded_dbapi.IntegrityError
        try:
            with self._raw() as cursor:
                cursor.executemany(sql.text, [self._params(sql, row) for row in rows])
        except integrity as exc:
            raise StoreUnavailable(
                "audit append conflicts with the stored chain", reason="audit_conflict"
            ) from exc

    @staticmethod
    def _record_from(row: Any) -> AuditRecord:
        return AuditRecord(
            row.seq, row.event_id, row.ts, row.kind, json.loads(row.data), row.prev_hash, row.hash
        )

    def audit_head(self) -> AuditRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.audit_events).order_by(t.audit_events.c.seq.desc()).limit(1)
            ).first()
        return self._record_from(row) if row else None

    def iter_audit(self, after_seq: int = 0) -> Iterator[AuditRecord]:
        page = 1000
        last = after_seq
        while True:
            with self._tx() as conn:
                rows = conn.execute(
                    select(t.audit_events)
                    .where(t.audit_events.c.seq > last)
                    .order_by(t.audit_events.c.seq)
                    .limit(page)
                ).all()
            for row in rows:
                yield self._record_from(row)
            if len(rows) < page:
                return
            last = rows[-1].seq

    def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.audit_checkpoints).values(
                    seq=checkpoint.seq,
                    head_hash=checkpoint.head_hash,
                    ts=checkpoint.ts,
                    kid=checkpoint.kid,
                    signature=checkpoint.signature,
                )
            )

    def list_checkpoints(self) -> list[Checkpoint]:
        with self._tx() as conn:
            rows = conn.execute(
                select(t.audit_checkpoints).order_by(t.audit_checkpoints.c.seq)
            ).all()
        return [Checkpoint(r.seq, r.head_hash, r.ts, r.kid, r.signature) for r in rows]

    def query_audit(self, query: AuditQuery) -> list[AuditRecord]:
        c = t.audit_events.c
        stmt = select(t.audit_events).where(c.seq > query.after_seq).order_by(c.seq)
        if query.kinds:
            stmt = stmt.where(c.kind.in_(query.kinds))
        if query.since is not None:
            stmt = stmt.where(c.ts >= query.since)
        if query.until is not None:
            stmt = stmt.where(c.ts < query.until)
        wanted = {
            "agent": query.agent,
            "task": query.task,
            "principal": query.principal,
            "outcome": query.outcome,
        }
        wanted = {k: v for k, v in wanted.items() if v is not None}
        found: list[AuditRecord] = []
        last = query.after_seq
        # Attribution lives in the record's JSON; filter it here, a page at a time.
        while len(found) < query.limit:
            with self._tx() as conn:
                rows = conn.execute(stmt.where(c.seq > last).limit(1000)).all()
            for row in rows:
                record = self._record_from(row)
                if all(record.data.get(k) == v for k, v in wanted.items()):
                    found.append(record)
                    if len(found) >= query.limit:
                        break
            if len(rows) < 1000:
                break
            last = rows[-1].seq
        return found

    # ------------------------------------------------------------------ admin tokens
    @staticmethod
    def _admin_from(row: Any) -> AdminTokenRecord:
        return AdminTokenRecord(
            row.token_id,
            row.token_hash,
            row.name,
            tuple(json.loads(row.scopes)),
            row.created_at,
            row.expires_at,
            row.revoked_at,
        )

    def insert_admin_token(self, record: AdminTokenRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.admin_tokens).values(
                    token_id=record.token_id,
                    token_hash=record.token_hash,
                    name=record.name,
                    scopes=_dumps(list(record.scopes)),
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    revoked_at=record.revoked_at,
                )
            )

    def get_admin_token_by_hash(self, token_hash: str) -> AdminTokenRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.admin_tokens).where(t.admin_tokens.c.token_hash == token_hash)
            ).first()
        return self._admin_from(row) if row else None

    def list_admin_tokens(self) -> list[AdminTokenRecord]:
        with self._tx() as conn:
            rows = conn.execute(select(t.admin_tokens).order_by(t.admin_tokens.c.created_at)).all()
        return [self._admin_from(r) for r in rows]

    def revoke_admin_token(self, token_id: str, now: float) -> bool:
        c = t.admin_tokens.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.admin_tokens)
                .where(c.token_id == token_id, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return done.rowcount == 1

    # ------------------------------------------------------------------ approvals
    def insert_approval(self, approval: Approval) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.approvals).values(
                    approval_id=approval.approval_id,
                    task_id=approval.task_id,
                    agent_id=approval.agent_id,
                    instance_id=approval.instance_id,
                    principal_id=approval.principal_id,
                    tool=approval.tool,
                    args_digest=approval.args_digest,
                    binding=approval.binding,
                    arguments=_dumps(dict(approval.arguments)),
                    reasons=_dumps(list(approval.reasons)),
                    quorum=approval.quorum,
                    status=approval.status.value,
                    created_at=approval.created_at,
                    expires_at=approval.expires_at,
                    decided_at=approval.decided_at,
                    consumed_at=approval.consumed_at,
                )
            )

    def _approval_from(self, conn: Connection, row: Any) -> Approval:
        v = t.approval_votes.c
        votes = conn.execute(
            select(t.approval_votes).where(v.approval_id == row.approval_id).order_by(v.at)
        ).all()
        return Approval(
            approval_id=row.approval_id,
            task_id=row.task_id,
            agent_id=row.agent_id,
            instance_id=row.instance_id,
            principal_id=row.principal_id,
            tool=row.tool,
            args_digest=row.args_digest,
            binding=row.binding,
            arguments=json.loads(row.arguments),
            reasons=tuple(json.loads(row.reasons)),
            quorum=row.quorum,
            status=ApprovalStatus(row.status),
            created_at=row.created_at,
            expires_at=row.expires_at,
            votes=tuple(Vote(x.approver, bool(x.approve), x.reason, x.at) for x in votes),
            decided_at=row.decided_at,
            consumed_at=row.consumed_at,
        )

    def get_approval(self, approval_id: str) -> Approval | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.approvals).where(t.approvals.c.approval_id == approval_id)
            ).first()
            return self._approval_from(conn, row) if row else None

    def find_open_approval(self, binding: str, now: float) -> Approval | None:
        """A pending, unexpired request for this exact call, to reuse instead of a new one."""
        c = t.approvals.c
        with self._tx() as conn:
            row = conn.execute(
                select(t.approvals)
                .where(
                    c.binding == binding,
                    c.status == ApprovalStatus.PENDING.value,
                    c.expires_at > now,
                )
                .order_by(c.created_at.desc())
                .limit(1)
            ).first()
            return self._approval_from(conn, row) if row else None

    def list_approvals(self, *, status: str | None = None, limit: int = 100) -> list[Approval]:
        c = t.approvals.c
        query = select(t.approvals).order_by(c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(c.status == status)
        with self._tx() as conn:
            return [self._approval_from(conn, r) for r in conn.execute(query).all()]

    def vote_approval(
        self, approval_id: str, vote: Vote, now: float
    ) -> tuple[bool, ApprovalStatus | None]:
        """Record one approver's vote and, atomically, its effect on the status.

        A denial ends a pending request; an approval that brings the distinct
        approvers up to the quorum makes it approved. Returns (recorded, new
        status): ``recorded`` is False if this approver has voted already or the
        request is no longer pending (nothing is changed then).
        """
        try:
            return self._vote(approval_id, vote, now)
        except IntegrityError:  # this approver's vote is there already (or a racing change)
            return False, None

    def _vote(self, approval_id: str, vote: Vote, now: float) -> tuple[bool, ApprovalStatus | None]:
        c, v = t.approvals.c, t.approval_votes.c
        with self._tx() as conn:
            row = conn.execute(
                select(c.quorum, c.status).where(c.approval_id == approval_id)
            ).first()
            if row is None or row.status != ApprovalStatus.PENDING.value:
                return False, None
            conn.execute(
                insert(t.approval_votes).values(
                    approval_id=approval_id,
                    approver=vote.approver,
                    approve=vote.approve,
                    reason=vote.reason,
                    at=vote.at,
                )
            )
            if not vote.approve:
                new = ApprovalStatus.DENIED
            else:
                count = conn.execute(
                    select(func.count())
                    .select_from(t.approval_votes)
                    .where(v.approval_id == approval_id, v.approve.is_(True))
                ).scalar_one()
                if count < row.quorum:
                    return True, ApprovalStatus.PENDING
                new = ApprovalStatus.APPROVED
            done = conn.execute(
                update(t.approvals)
                .where(c.approval_id == approval_id, c.status == ApprovalStatus.PENDING.value)
                .values(status=new.value, decided_at=now)
            )
            if done.rowcount != 1:  # changed under us: roll the vote back too
                raise IntegrityError("approval changed concurrently", None, Exception())
            return True, new

    def consume_approval(self, approval_id: str, binding: str, now: float) -> bool:
        """Use an approved request once: a conditional update, so of any number of
        concurrent uses exactly one succeeds."""
        c = t.approvals.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.approvals)
                .where(
                    c.approval_id == approval_id,
                    c.binding == binding,
                    c.status == ApprovalStatus.APPROVED.value,
                    c.expires_at > now,
                )
                .values(status=ApprovalStatus.CONSUMED.value, consumed_at=now)
            )
            return done.rowcount == 1

    # ------------------------------------------------------------------ tool pins
    def upsert_tool_pin(self, pin: ToolPin) -> None:
        values = {
            "digest": pin.digest,
            "definition": _dumps(pin.definition),
            "admitted_at": pin.admitted_at,
            "admitted_by": pin.admitted_by,
        }
        with self._tx() as conn:
            done = conn.execute(
                update(t.tool_pins).where(t.tool_pins.c.tool == pin.tool).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(insert(t.tool_pins).values(tool=pin.tool, **values))

    @staticmethod
    def _pin_from(row: Any) -> ToolPin:
        return ToolPin(
            row.tool, row.digest, json.loads(row.definition), row.admitted_at, row.admitted_by
        )

    def get_tool_pin(self, tool: str) -> ToolPin | None:
        with self._tx() as conn:
            row = conn.execute(select(t.tool_pins).where(t.tool_pins.c.tool == tool)).first()
        return self._pin_from(row) if row else None

    def list_tool_pins(self) -> list[ToolPin]:
        with self._tx() as conn:
            rows = conn.execute(select(t.tool_pins).order_by(t.tool_pins.c.tool)).all()
        return [self._pin_from(r) for r in rows]

    # ------------------------------------------------------------------ sealed secrets
    def put_secret(self, record: StoredSecret) -> None:
        """Store a new version: version 1 inserts, version n replaces n - 1. Conflict if the
        stored version is not the one before (a concurrent put won)."""
        sealed = record.sealed
        c = t.secrets.c
        values = {
            "version": sealed.version,
            "master_kid": sealed.master_kid,
            "wrapped_key": sealed.wrapped_key,
            "nonce": sealed.nonce,
            "ciphertext": sealed.ciphertext,
            "created_at": record.created_at,
            "rotated_at": record.rotated_at,
        }
        stale = Conflict("the secret changed meanwhile; try again", reason="secret_version")
        try:
            with self._tx() as conn:
                if sealed.version == 1:
                    conn.execute(insert(t.secrets).values(name=sealed.name, **values))
                    return
                done = conn.execute(
                    update(t.secrets)
                    .where(c.name == sealed.name, c.version == sealed.version - 1)
                    .values(**values)
                )
                if done.rowcount != 1:
                    raise stale
        except IntegrityError:
            raise stale from None

    @staticmethod
    def _secret_from(row: Any) -> StoredSecret:
        sealed = SealedSecret(
            row.name,
            row.version,
            row.master_kid,
            bytes(row.wrapped_key),
            bytes(row.nonce),
            bytes(row.ciphertext),
        )
        return StoredSecret(sealed, row.created_at, row.rotated_at)

    def get_secret(self, name: str) -> StoredSecret | None:
        with self._tx() as conn:
            row = conn.execute(select(t.secrets).where(t.secrets.c.name == name)).first()
        return self._secret_from(row) if row else None

    def list_secrets(self) -> list[StoredSecret]:
        with self._tx() as conn:
            rows = conn.execute(select(t.secrets).order_by(t.secrets.c.name)).all()
        return [self._secret_from(r) for r in rows]

    def rewrap_secret(self, sealed: SealedSecret, old_kid: str, now: float) -> bool:
        """Replace the wrapped data key, only if the row is still this version under
        ``old_kid``; the nonce and ciphertext are left as they are."""
        c = t.secrets.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.secrets)
                .where(
                    c.name == sealed.name,
                    c.version == sealed.version,
                    c.master_kid == old_kid,
                )
                .values(
                    master_kid=sealed.master_kid, wrapped_key=sealed.wrapped_key, rotated_at=now
                )
            )
            return done.rowcount == 1

    # ------------------------------------------------------------------ leases
    def insert_lease(self, lease: Lease, values: SealedSecret | None = None) -> None:
        """A new lease, with its issued values sealed (``values``), in one row."""
        row = _lease_row(lease)
        if values is not None:
            row.update(
                values_kid=values.master_kid,
                values_wrapped=values.wrapped_key,
                values_nonce=values.nonce,
                values_ciphertext=values.ciphertext,
            )
        try:
            with self._tx() as conn:
                conn.execute(insert(t.leases).values(**row))
        except IntegrityError:
            raise Conflict("the lease exists already", reason="lease_exists") from None

    def get_lease(self, lease_id: str) -> Lease | None:
        with self._tx() as conn:
            row = conn.execute(select(t.leases).where(t.leases.c.lease_id == lease_id)).first()
        return _lease_from(row) if row else None

    def get_lease_values(self, lease_id: str) -> SealedSecret | None:
        """The sealed issued values of a lease (None once it has ended, or if it has none);
        ``name`` is the sealing name, ``lease:<id>``."""
        c = t.leases.c
        with self._tx() as conn:
            row = conn.execute(
                select(c.values_kid, c.values_wrapped, c.values_nonce, c.values_ciphertext).where(
                    c.lease_id == lease_id, c.values_ciphertext.is_not(None)
                )
            ).first()
        if row is None:
            return None
        return SealedSecret(
            name=lease_values_name(lease_id),
            version=1,
            master_kid=row.values_kid,
            wrapped_key=bytes(row.values_wrapped),
            nonce=bytes(row.values_nonce),
            ciphertext=bytes(row.values_ciphertext),
        )

    def list_lease_values(self) -> list[tuple[str, SealedSecret]]:
        """Every lease still holding sealed values (for master key rotation)."""
        c = t.leases.c
        with self._tx() as conn:
            ids = conn.execute(select(c.lease_id).where(c.values_ciphertext.is_not(None)))
            lease_ids = [str(x) for x in ids.scalars().all()]
        found: list[tuple[str, SealedSecret]] = []
        for lease_id in lease_ids:
            sealed = self.get_lease_values(lease_id)
            if sealed is not None:
                found.append((lease_id, sealed))
        return found

    def rewrap_lease_values(self, lease_id: str, sealed: SealedSecret, old_kid: str) -> bool:
        c = t.leases.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.leases)
                .where(
                    c.lease_id == lease_id,
                    c.values_kid == old_kid,
                    c.values_ciphertext.is_not(None),
                )
                .values(values_kid=sealed.master_kid, values_wrapped=sealed.wrapped_key)
            )
            return done.rowcount == 1

    def list_leases(
        self,
        *,
        task_id: str | None = None,
        state: LeaseState | None = None,
        limit: int = 1000,
    ) -> list[Lease]:
        c = t.leases.c
        stmt = select(t.leases)
        if task_id is not None:
            stmt = stmt.where(c.task_id == task_id)
        if state is not None:
            stmt = stmt.where(c.state == state.value)
        stmt = stmt.order_by(c.issued_at, c.lease_id).limit(limit)
        with self._tx() as conn:
            rows = conn.execute(stmt).all()
        return [_lease_from(r) for r in rows]

    def find_open_lease(self, task_id: str, secret_name: str, tool: str) -> Lease | None:
        """The task's latest open, shareable (not per-call) lease on ``secret_name`` (the
        credential source) for ``tool``, if any."""
        c = t.leases.c
        with self._tx() as conn:
            row = conn.execute(
                select(t.leases)
                .where(
                    c.task_id == task_id,
                    c.secret_name == secret_name,
                    c.tool == tool,
                    c.state == LeaseState.OPEN.value,
                    or_(c.per_call.is_(None), c.per_call.is_(False)),
                )
                .order_by(c.expires_at.desc())
                .limit(1)
            ).first()
        return _lease_from(row) if row else None

    def mark_lease_used(self, lease_id: str, now: float) -> bool:
        """Record a use; for a per-call lease only the first use succeeds (atomic)."""
        c = t.leases.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.leases)
                .where(
                    c.lease_id == lease_id,
                    c.state == LeaseState.OPEN.value,
                    or_(c.per_call.is_(None), c.per_call.is_(False), c.used_at.is_(None)),
                )
                .values(used_at=now)
            )
            return done.rowcount == 1

    def end_lease(
        self,
        lease_id: str,
        state: LeaseState,
        reason: str,
        now: float,
        *,
        end_state: LeaseState | None = None,
    ) -> Lease | None:
        """Move an open lease to ``state`` (revoking, revoked or expired), conditionally: None
        if it was not open (someone else ended it first). Its sealed values are deleted in
        the same update: an ended lease is never usable. ``end_state`` is what a
        ``revoking`` lease becomes once the downstream revocation succeeds."""
        c = t.leases.c
        with self._tx() as conn:
            done = conn.execute(
                update(t.leases)
                .where(c.lease_id == lease_id, c.state == LeaseState.OPEN.value)
                .values(
                    state=state.value,
                    revoked_at=now,
                    revoke_reason=reason,
                    end_state=(end_state or state).value,
                    values_kid=None,
                    values_wrapped=None,
                    values_nonce=None,
                    values_ciphertext=None,
                )
            )
            if done.rowcount != 1:
                return None
            row = conn.execute(select(t.leases).where(c.lease_id == lease_id)).first()
        return _lease_from(row) if row else None

    def settle_revocation(
        self,
        lease_id: str,
        *,
        ok: bool,
        attempts: int,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> Lease | None:
        """A revoking lease's downstream revocation finished: ``ok`` moves it to its end
        state; otherwise the attempt count, next attempt time and error code are kept."""
        c = t.leases.c
        with self._tx() as conn:
            row = conn.execute(
                select(c.end_state).where(
                    c.lease_id == lease_id, c.state == LeaseState.REVOKING.value
                )
            ).first()
            if row is None:
                return None
            values: dict[str, Any] = {"revoke_attempts": attempts}
            if ok:
                values.update(
                    state=row.end_state or LeaseState.REVOKED.value,
                    next_attempt_at=None,
                )
            else:
                values.update(next_attempt_at=next_attempt_at, last_error=error)
            done = conn.execute(
                update(t.leases)
                .where(c.lease_id == lease_id, c.state == LeaseState.REVOKING.value)
                .values(**values)
            )
            if done.rowcount != 1:
                return None
            got = conn.execute(select(t.leases).where(c.lease_id == lease_id)).first()
        return _lease_from(got) if got else None

    def due_revocation_ids(self, now: float, limit: int = 1000) -> list[str]:
        """Revoking leases whose next attempt is due, soonest first."""
        c = t.leases.c
        with self._tx() as conn:
            rows = conn.execute(
                select(c.lease_id)
                .where(
                    c.state == LeaseState.REVOKING.value,
                    or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
                )
                .order_by(c.next_attempt_at, c.lease_id)
                .limit(limit)
            )
            return [str(x) for x in rows.scalars().all()]

    def open_lease_ids(self, task_ids: Sequence[str]) -> list[str]:
        c = t.leases.c
        found: list[str] = []
        with self._tx() as conn:
            for start in range(0, len(task_ids), 500):
                chunk = list(task_ids[start : start + 500])
                found.extend(
                    conn.execute(
                        select(c.lease_id).where(
                            c.task_id.in_(chunk), c.state == LeaseState.OPEN.value
                        )
                    )
                    .scalars()
                    .all()
                )
        return [str(x) for x in found]

    def orphaned_open_lease_ids(self, limit: int = 1000) -> list[str]:
        """Open leases whose task is no longer open: the task's own lease sweep failed
        (e.g. the store was down right after the task ended) or raced the issuance."""
        c, tc = t.leases.c, t.tasks.c
        with self._tx() as conn:
            rows = conn.execute(
                select(c.lease_id)
                .join(t.tasks, tc.task_id == c.task_id)
                .where(c.state == LeaseState.OPEN.value, tc.status != TaskStatus.OPEN.value)
                .limit(limit)
            )
            return [str(x) for x in rows.scalars().all()]

    def expired_open_lease_ids(self, now: float) -> list[str]:
        c = t.leases.c
        with self._tx() as conn:
            rows = conn.execute(
                select(c.lease_id).where(c.state == LeaseState.OPEN.value, c.expires_at <= now)
            )
            return [str(x) for x in rows.scalars().all()]

    # ------------------------------------------------------------------ policy versions
    def save_policy_version(self, record: PolicyVersionRecord) -> None:
        c = t.policy_versions.c
        with self._tx() as conn:
            if record.active:
                conn.execute(update(t.policy_versions).values(active=False))
            done = conn.execute(
                update(t.policy_versions)
                .where(c.version == record.version)
                .values(active=record.active)
            )
            if done.rowcount == 0:
                conn.execute(
                    insert(t.policy_versions).values(
                        version=record.version,
                        sources=_dumps(record.sources),
                        loaded_at=record.loaded_at,
                        active=record.active,
                    )
                )

    @staticmethod
    def _version_from(row: Any) -> PolicyVersionRecord:
        return PolicyVersionRecord(
            row.version, json.loads(row.sources), row.loaded_at, bool(row.active)
        )

    def list_policy_versions(self) -> list[PolicyVersionRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                select(t.policy_versions).order_by(t.policy_versions.c.loaded_at)
            ).all()
        return [self._version_from(r) for r in rows]

    def get_policy_version(self, version: str) -> PolicyVersionRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.policy_versions).where(t.policy_versions.c.version == version)
            ).first()
        return self._version_from(row) if row else None

    def active_policy_version(self) -> PolicyVersionRecord | None:
        c = t.policy_versions.c
        with self._tx() as conn:
            row = conn.execute(select(t.policy_versions).where(c.active.is_(True))).first()
        if row is None:
            return None
        return PolicyVersionRecord(
            row.version, json.loads(row.sources), row.loaded_at, bool(row.active)
        )

    # ------------------------------------------------------------------ NHI inventory
    def replace_inventory(self, record: InventoryImport, items: Sequence[InventoryItem]) -> None:
        """Replace the stored inventory with ``items`` in one transaction."""
        rows = [
            {
                "import_id": record.import_id,
                "position": position,
                "item_id": item.id,
                "owner": item.owner,
                "systems": json.dumps(list(item.systems)),
                "created": item.created,
                "last_rotated": item.last_rotated,
                "used_by": json.dumps(list(item.used_by)),
                "remit_secret": item.remit_secret,
            }
            for position, item in enumerate(items)
        ]
        with self._tx() as conn:
            conn.execute(delete(t.inventory_items))
            conn.execute(delete(t.inventory_imports))
            conn.execute(
                insert(t.inventory_imports).values(
                    import_id=record.import_id,
                    source_sha256=record.source_sha256,
                    imported_by=record.imported_by,
                    imported_at=record.imported_at,
                    credentials=record.credentials,
                )
            )
            for start in range(0, len(rows), 1000):
                conn.execute(insert(t.inventory_items), rows[start : start + 1000])

    def get_inventory(self) -> tuple[InventoryImport, tuple[InventoryItem, ...]] | None:
        c = t.inventory_items.c
        with self._tx() as conn:
            head = conn.execute(select(t.inventory_imports)).first()
            if head is None:
                return None
            rows = conn.execute(
                select(t.inventory_items).where(c.import_id == head.import_id).order_by(c.position)
            ).all()
        record = InventoryImport(
            head.import_id,
            head.source_sha256,
            head.imported_by,
            head.imported_at,
            head.credentials,
        )
        items = tuple(
            InventoryItem(
                id=r.item_id,
                owner=r.owner,
                systems=tuple(json.loads(r.systems)),
                created=r.created,
                last_rotated=r.last_rotated,
                used_by=tuple(json.loads(r.used_by)),
                remit_secret=r.remit_secret,
            )
            for r in rows
        )
        return record, items


_FLAG_BITS = {flag: 1 << i for i, flag in enumerate(sorted(FLAGS))}


def lease_values_name(lease_id: str) -> str:
    """The name a lease's issued values are sealed under: the AAD binds them to the lease."""
    return f"lease:{lease_id}"


def _lease_row(lease: Lease) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id,
        "task_id": lease.task_id,
        "secret_name": lease.secret_name,
        "tool": lease.tool,
        "issued_at": lease.issued_at,
        "expires_at": lease.expires_at,
        "revoked_at": lease.revoked_at,
        "revoke_reason": lease.revoke_reason,
        "state": lease.state.value,
        "provider": lease.provider or None,
        "kind": lease.kind,
        "handle": lease.handle,
        "call_id": lease.call_id,
        "per_call": lease.per_call,
        "obligation_kind": lease.obligation_kind,
        "used_at": lease.used_at,
        "end_state": lease.end_state.value if lease.end_state else None,
        "revoke_attempts": lease.revoke_attempts,
        "next_attempt_at": lease.next_attempt_at,
        "last_error": lease.last_error,
    }


def _lease_from(row: Any) -> Lease:
    return Lease(
        lease_id=row.lease_id,
        task_id=row.task_id,
        secret_name=row.secret_name,
        tool=row.tool,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoke_reason=row.revoke_reason,
        state=LeaseState(row.state),
        provider=row.provider or "",
        kind=row.kind or STATIC_KIND,
        handle=row.handle or "",
        call_id=row.call_id,
        per_call=bool(row.per_call),
        obligation_kind=row.obligation_kind or INJECT_HEADER,
        used_at=row.used_at,
        end_state=LeaseState(row.end_state) if row.end_state else None,
        revoke_attempts=int(row.revoke_attempts or 0),
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
    )


def _flag_bits(labels: Labels) -> int:
    return sum(_FLAG_BITS[f] for f in labels.flags)


def _labels(level: int, bits: int) -> Labels:
    return Labels(Sensitivity(level), frozenset(f for f, b in _FLAG_BITS.items() if bits & b))


# Hot-path statements, built once: SQLAlchemy then reuses their compiled form.
_GET_TASK = select(t.tasks).where(t.tasks.c.task_id == bindparam("task_id"))
_INSERT_JTI = insert(t.proof_jtis).values(
    jti=bindparam("b_jti"), expires_at=bindparam("b_expires_at")
)
_CONSUME = (
    update(t.tasks)
    .where(
        t.tasks.c.task_id == bindparam("b_task_id"),
        t.tasks.c.calls_used < t.tasks.c.call_budget,
        t.tasks.c.status == TaskStatus.OPEN.value,
    )
    .values(
        calls_used=t.tasks.c.calls_used + 1,
        taint_level=case(
            (t.tasks.c.taint_level < bindparam("level"), bindparam("level")),
            else_=t.tasks.c.taint_level,
        ),
        taint_flags=t.tasks.c.taint_flags.bitwise_or(bindparam("bits")),
    )
)


def _destination(text: str) -> Destination:
    kind, _, value = text.partition(":")
    return normalize_destination(kind, value)
