"""The audit log: hash on the caller's thread, group-commit the pending records.

Group commit is leader-based. Each ``append`` chains its record under a short
lock and puts it on the pending list. In durable mode (the default) the
caller then takes the commit lock: if an earlier leader already wrote its
record it returns at once, otherwise it becomes the leader and writes every
pending record in one transaction. Concurrent callers therefore share one
commit, and a lone caller pays no thread hand-off. No allow is returned
without a committed audit record; any failure raises AuditUnavailable.

In non-durable mode a background writer commits the pending records shortly
after they are appended. The same thread writes periodic signed checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from remit.canonical import EncodedDict, canonical_bytes_unchecked
from remit.clock import Clock
from remit.core.audit import (
    GENESIS_HASH,
    AuditRecord,
    ChainReport,
    Checkpoint,
    SignatureCheck,
    b64url,
    checkpoint_payload,
    verify_chain,
)
from remit.errors import AuditUnavailable, RemitError, StoreUnavailable
from remit.ids import new_id
from remit.store.sql import SqlStore

MAX_BATCH = 1000
MAX_RECHAINS = 3


class Signer(Protocol):
    kid: str

    def sign(self, payload: bytes) -> bytes: ...


class _Pending:
    """One appended record waiting for its group commit."""

    __slots__ = ("done", "error", "record")

    def __init__(self, record: AuditRecord) -> None:
        self.record = record
        self.done = False
        self.error: BaseException | None = None


class AuditLog:
    def __init__(
        self,
        store: SqlStore,
        clock: Clock,
        *,
        signer: Signer,
        check_signature: SignatureCheck,
        durable: bool = True,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        anchor_path: Path | None = None,
        flush_interval: float = 0.005,
    ) -> None:
        self.store = store
        self.clock = clock
        self.signer = signer
        self.check_signature = check_signature
        self.durable = durable
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.anchor_path = anchor_path
        self.flush_interval = flush_interval
        self._lock = threading.Lock()  # the chain head and the pending list
        self._commit_lock = threading.Lock()  # one group commit at a time
        self._pending: list[_Pending] = []
        self._wake = threading.Event()
        self._broken = True  # forces a read of the stored head before the first append
        self._head_seq = 0
        self._head_hash = GENESIS_HASH
        self._committed_seq = 0
        self._committed_hash = GENESIS_HASH
        self._last_checkpoint_seq = 0
        self._last_checkpoint_at = time.monotonic()
        self._writer = threading.Thread(target=self._run, name="remit-audit-writer", daemon=True)
        self._started = False
        self._closed = False
        self._write_failed = False  # the last group commit failed, and none has succeeded since

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if not self._started:
            self._started = True
            self._writer.start()

    def close(self) -> None:
        if self._started and not self._closed:
            self._closed = True
            self._wake.set()
            self._writer.join(timeout=10.0)
            with contextlib.suppress(RemitError):
                self.flush()
            with contextlib.suppress(Exception):
                self._maybe_checkpoint(force=True)

    # ------------------------------------------------------------------ appending
    def append(self, kind: str, data: Mapping[str, Any]) -> AuditRecord:
        if self._closed or not self._started:
            raise AuditUnavailable("the audit log is not running", reason="audit_closed")
        # Serialized once, outside the lock: the hash covers this text and the store
        # writes the same text (no second serialization on the commit path).
        encoded = EncodedDict.encode(data)
        with self._lock:
            if self._broken:
                self._resync()
            record = chain_encoded(
                prev_hash=self._head_hash,
                seq=self._head_seq + 1,
                event_id=new_id("evt"),
                ts=self.clock.now(),
                kind=kind,
                data=encoded,
            )
            self._head_seq, self._head_hash = record.seq, record.hash
            pending = _Pending(record)
            self._pending.append(pending)
        if not self.durable:
            self._wake.set()
            return record
        with self._commit_lock:
            if not pending.done:
                self._commit_pending()
        if pending.error is not None:
            raise AuditUnavailable(
                "the audit record could not be written", reason="audit_write_failed"
            ) from pending.error
        return pending.record  # re-chained if another writer got in first

    @property
    def pending(self) -> int:
        """How many appended records wait for their group commit."""
        return len(self._pending)

    @property
    def write_failed(self) -> bool:
        """Whether the last group commit failed (and none has succeeded since)."""
        return self._write_failed

    def flush(self) -> None:
        """Commit everything appended so far; raise AuditUnavailable if that fails."""
        with self._commit_lock:
            failed = self._commit_pending()
        if failed is not None:
            raise AuditUnavailable(
                "the audit log could not be written", reason="audit_write_failed"
            )

    def _commit_pending(self) -> BaseException | None:
        """Write every pending record as one group. Call with the commit lock held."""
        failure: BaseException | None = None
        rechains = 0
        while True:
            with self._lock:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if not batch:
                return failure
            try:
                self.store.append_audit([p.record for p in batch])
            except StoreUnavailable as exc:
                if exc.reason == "audit_conflict" and rechains < MAX_RECHAINS:
                    # Another writer (a second process on the same database) appended first.
                    # Nothing of ours was stored, so chain it again onto the stored head.
                    rechains += 1
                    self._rechain(batch)
                    continue
                failure = self._fail(batch, exc)
                return failure
            except Exception as exc:
                failure = self._fail(batch, exc)
                return failure
            self._write_failed = False
            self._committed_seq, self._committed_hash = batch[-1].record.seq, batch[-1].record.hash
            for p in batch:
                p.done = True
            if self._committed_seq - self._last_checkpoint_seq >= self.checkpoint_every:
                with contextlib.suppress(Exception):  # retried after the next group
                    self._checkpoint_now()

    def _fail(self, batch: list[_Pending], exc: BaseException) -> BaseException:
        # Everything pending is chained onto the failed group: fail it all and
        # let the next append restart from the head that was really stored.
        with self._lock:
            batch.extend(self._pending)
            self._pending = []
            self._broken = True
        for p in batch:
            p.error, p.done = exc, True
        self._write_failed = True
        return exc

    def _rechain(self, batch: list[_Pending]) -> None:
        """Re-link ``batch`` and everything pending after it onto the stored head."""
        with self._lock:
            waiting = batch + self._pending
            self._resync()
            for p in waiting:
                old = p.record
                p.record = chain_encoded(
                    prev_hash=self._head_hash,
                    seq=self._head_seq + 1,
                    event_id=old.event_id,
                    ts=old.ts,
                    kind=old.kind,
                    data=_encoded(old.data),
                )
                self._head_seq, self._head_hash = p.record.seq, p.record.hash
            self._pending = waiting

    def _resync(self) -> None:
        try:
            head = self.store.audit_head()
        except RemitError as exc:
            raise AuditUnavailable(
                "the audit store is unavailable", reason="audit_store_down"
            ) from exc
        if head is None:
            self._head_seq, self._head_hash = 0, GENESIS_HASH
        else:
            self._head_seq, self._head_hash = head.seq, head.hash
        self._committed_seq, self._committed_hash = self._head_seq, self._head_hash
        self._broken = False

    # ------------------------------------------------------------------ the background writer
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if not self.durable:
                time.sleep(self.flush_interval)  # let a group gather
                with self._commit_lock:
                    self._commit_pending()
            with contextlib.suppress(Exception):
                self._maybe_checkpoint()

    # ------------------------------------------------------------------ checkpoints
    def _maybe_checkpoint(self, *, force: bool = False) -> None:
        with self._commit_lock:
            pending = self._committed_seq - self._last_checkpoint_seq
            if pending <= 0:
                return
            due = time.monotonic() - self._last_checkpoint_at >= self.checkpoint_seconds
            if force or due or pending >= self.checkpoint_every:
                self._checkpoint_now()

    def _checkpoint_now(self) -> Checkpoint:
        """Sign the committed head. Call with the commit lock held."""
        seq, head_hash, ts, kid = (
            self._committed_seq,
            self._committed_hash,
            self.clock.now(),
            self.signer.kid,
        )
        signature = self.signer.sign(checkpoint_payload(seq, head_hash, ts, kid))
        checkpoint = Checkpoint(seq, head_hash, ts, kid, b64url(signature))
        self.store.insert_checkpoint(checkpoint)
        self._last_checkpoint_seq = seq
        self._last_checkpoint_at = time.monotonic()
        if self.anchor_path is not None:
            _write_anchor(self.anchor_path, checkpoint)
        return checkpoint

    def checkpoint(self) -> Checkpoint | None:
        """Commit what is pending and write a signed checkpoint of the head now."""
        self.flush()
        with self._commit_lock:
            if self._committed_seq in (0, self._last_checkpoint_seq):
                return None
            return self._checkpoint_now()

    # ------------------------------------------------------------------ reading
    def records(self, after_seq: int = 0) -> Iterator[AuditRecord]:
        return self.store.iter_audit(after_seq)

    def verify(self) -> ChainReport:
        anchor = read_anchor(self.anchor_path) if self.anchor_path else None
        return verify_chain(
            self.store.iter_audit(),
            self.store.list_checkpoints(),
            self.check_signature,
            anchor=anchor,
        )


def _encoded(data: Mapping[str, Any]) -> EncodedDict:
    return data if isinstance(data, EncodedDict) else EncodedDict.encode(data)


def chain_encoded(
    *, prev_hash: str, seq: int, event_id: str, ts: float, kind: str, data: EncodedDict
) -> AuditRecord:
    """``remit.core.audit.chain_record``, reusing ``data``'s canonical text.

    The canonical body is ``{"data":<data>,"event_id":..,"kind":..,"seq":..,"ts":..}``
    (keys sorted), so it is spliced from the data's text and the canonical text of the
    other four fields; the hash is the same bytes ``record_hash`` would compute (tested).
    """
    rest = canonical_bytes_unchecked({"event_id": event_id, "kind": kind, "seq": seq, "ts": ts})
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(b'\n{"data":')
    h.update(data.canonical.encode("utf-8"))
    h.update(b",")
    h.update(rest[1:])
    return AuditRecord(seq, event_id, ts, kind, data, prev_hash, h.hexdigest())


def _write_anchor(path: Path, checkpoint: Checkpoint) -> None:
    """The latest checkpoint, outside the database: it catches a truncation there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    data = {
        "seq": checkpoint.seq,
        "head_hash": checkpoint.head_hash,
        "ts": checkpoint.ts,
        "kid": checkpoint.kid,
        "signature": checkpoint.signature,
    }
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def read_anchor(path: Path | None) -> Checkpoint | None:
    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text())
    return Checkpoint(
        int(data["seq"]),
        str(data["head_hash"]),
        float(data["ts"]),
        str(data["kid"]),
        str(data["signature"]),
    )
