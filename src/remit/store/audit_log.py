"""The audit log: hash and enqueue on the caller's thread, group-commit on one writer.

The decision path pays only for building, hashing and enqueueing a record.
In durable mode (the default) ``append`` then waits until the writer has
committed the group that holds the record, so no allow is returned without
a durable audit record; any failure raises AuditUnavailable.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from remit.clock import Clock
from remit.core.audit import (
    GENESIS_HASH,
    AuditRecord,
    ChainReport,
    Checkpoint,
    SignatureCheck,
    b64url,
    chain_record,
    checkpoint_payload,
    verify_chain,
)
from remit.errors import AuditUnavailable, RemitError
from remit.ids import new_id
from remit.store.sql import SqlStore


class Signer(Protocol):
    kid: str

    def sign(self, payload: bytes) -> bytes: ...


_STOP = object()
MAX_BATCH = 512


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
        wait_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.signer = signer
        self.check_signature = check_signature
        self.durable = durable
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.anchor_path = anchor_path
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
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

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if not self._started:
            self._started = True
            self._writer.start()

    def close(self) -> None:
        if self._started and not self._closed:
            self._closed = True
            done: Future[AuditRecord | None] = Future()
            self._queue.put((_STOP, done))
            self._writer.join(timeout=self.wait_timeout)

    # ------------------------------------------------------------------ appending
    def append(self, kind: str, data: Mapping[str, Any]) -> AuditRecord:
        if self._closed or not self._started:
            raise AuditUnavailable("the audit log is not running", reason="audit_closed")
        future: Future[AuditRecord | None] = Future()
        with self._lock:
            if self._broken:
                self._resync()
            record = chain_record(
                prev_hash=self._head_hash,
                seq=self._head_seq + 1,
                event_id=new_id("evt"),
                ts=self.clock.now(),
                kind=kind,
                data=dict(data),
            )
            self._head_seq, self._head_hash = record.seq, record.hash
            self._queue.put((record, future))
        if self.durable:
            try:
                future.result(timeout=self.wait_timeout)
            except AuditUnavailable:
                raise
            except Exception as exc:  # timeout or anything the writer hit
                raise AuditUnavailable(
                    "the audit record could not be written", reason="audit_write_failed"
                ) from exc
        return record

    def flush(self) -> None:
        """Wait until everything appended so far is committed."""
        done: Future[AuditRecord | None] = Future()
        self._queue.put((None, done))
        done.result(timeout=self.wait_timeout)

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

    # ------------------------------------------------------------------ the writer
    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._maybe_checkpoint(force_time=True)
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r, _ in batch if isinstance(r, AuditRecord)]
            try:
                self.store.append_audit(records)
            except Exception as exc:  # fail everything in this group, and whatever chained onto it
                self._fail(batch, exc)
                continue
            if records:
                self._committed_seq, self._committed_hash = records[-1].seq, records[-1].hash
            for item, fut in batch:
                if item is _STOP:
                    stop = True
                if not fut.done():
                    fut.set_result(item if isinstance(item, AuditRecord) else None)
            self._maybe_checkpoint(force_time=False, force=stop)

    def _fail(self, batch: list[tuple[Any, Future[AuditRecord | None]]], exc: Exception) -> None:
        error = AuditUnavailable(
            "the audit record could not be written", reason="audit_write_failed"
        )
        error.__cause__ = exc
        with self._lock:
            self._broken = True
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        for item, fut in batch:
            if item is _STOP:
                self._closed = True
            if not fut.done():
                fut.set_exception(error)

    def _maybe_checkpoint(self, *, force_time: bool, force: bool = False) -> None:
        pending = self._committed_seq - self._last_checkpoint_seq
        if pending <= 0:
            return
        due_time = time.monotonic() - self._last_checkpoint_at >= self.checkpoint_seconds
        if force or pending >= self.checkpoint_every or (force_time and due_time):
            # A missed checkpoint is retried after the next group.
            with contextlib.suppress(Exception):
                self._write_checkpoint(self._committed_seq, self._committed_hash)

    def _write_checkpoint(self, seq: int, head_hash: str) -> Checkpoint:
        ts = self.clock.now()
        kid = self.signer.kid
        signature = self.signer.sign(checkpoint_payload(seq, head_hash, ts, kid))
        checkpoint = Checkpoint(seq, head_hash, ts, kid, b64url(signature))
        self.store.insert_checkpoint(checkpoint)
        self._last_checkpoint_seq = seq
        self._last_checkpoint_at = time.monotonic()
        if self.anchor_path is not None:
            _write_anchor(self.anchor_path, checkpoint)
        return checkpoint

    def checkpoint(self) -> Checkpoint | None:
        """Flush and write a signed checkpoint of the current head now."""
        self.flush()
        if self._committed_seq in (0, self._last_checkpoint_seq):
            return None
        return self._write_checkpoint(self._committed_seq, self._committed_hash)

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


def _write_anchor(path: Path, checkpoint: Checkpoint) -> None:
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
