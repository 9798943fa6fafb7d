"""The audit chain: append-only records, each hashing its predecessor.

A record's hash is SHA-256 over the previous hash and the canonical JSON of
the record's own fields, so an edit, a deletion or a reordering breaks the
chain from that point on. Signed checkpoints (ES256 over seq and head hash)
make truncation of the tail and a wholesale rewrite detectable: an attacker
without the signing key cannot produce a checkpoint for a forged head.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from remit.canonical import canonical_bytes_unchecked

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    event_id: str
    ts: float
    kind: str  # e.g. "decision", "task.opened", "agent.registered"
    data: Mapping[str, Any] = field(hash=False)
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "ts": self.ts,
            "kind": self.kind,
            "data": self.data,
        }


def record_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(b"\n")
    h.update(canonical_bytes_unchecked(body))
    return h.hexdigest()


def chain_record(
    *, prev_hash: str, seq: int, event_id: str, ts: float, kind: str, data: Mapping[str, Any]
) -> AuditRecord:
    body = {"seq": seq, "event_id": event_id, "ts": ts, "kind": kind, "data": data}
    return AuditRecord(seq, event_id, ts, kind, data, prev_hash, record_hash(prev_hash, body))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    head_hash: str
    ts: float
    kid: str
    signature: str  # base64url raw r||s over checkpoint_payload

    def payload(self) -> bytes:
        return checkpoint_payload(self.seq, self.head_hash, self.ts, self.kid)


def checkpoint_payload(seq: int, head_hash: str, ts: float, kid: str) -> bytes:
    return canonical_bytes_unchecked(
        {
            "purpose": "remit-audit-checkpoint-v1",
            "seq": seq,
            "head": head_hash,
            "ts": ts,
            "kid": kid,
        }
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


SignatureCheck = Callable[[str, bytes, bytes], bool]  # (kid, payload, signature) -> valid?


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    checkpoints: int
    problems: tuple[str, ...]

    def summary(self) -> str:
        if self.ok:
            return (
                f"audit chain intact: {self.records} records, {self.checkpoints} signed checkpoints"
            )
        return "audit chain BROKEN: " + "; ".join(self.problems[:5])


def verify_chain(
    records: Iterable[AuditRecord],
    checkpoints: Iterable[Checkpoint],
    check_signature: SignatureCheck,
    *,
    anchor: Checkpoint | None = None,
) -> ChainReport:
    """Recompute the chain from genesis and check it against every checkpoint.

    ``anchor`` is a checkpoint kept outside the database (for example the
    last one exported to a file); it catches a truncation that also deleted
    the checkpoints stored beside the records.
    """
    problems: list[str] = []
    prev = GENESIS_HASH
    expected_seq = 1
    hashes: dict[int, str] = {}
    count = 0
    for rec in records:
        count += 1
        if rec.seq != expected_seq:
            problems.append(
                f"record seq {rec.seq} found where {expected_seq} was expected "
                "(deleted or reordered)"
            )
            expected_seq = rec.seq
        if rec.prev_hash != prev:
            problems.append(f"record {rec.seq} does not link to its predecessor")
        if record_hash(rec.prev_hash, rec.body()) != rec.hash:
            problems.append(f"record {rec.seq} was altered (hash mismatch)")
        prev = rec.hash
        hashes[rec.seq] = rec.hash
        expected_seq += 1
    head_seq = expected_seq - 1
    checked = 0
    all_checkpoints = list(checkpoints)
    if anchor is not None:
        all_checkpoints.append(anchor)
    for cp in all_checkpoints:
        checked += 1
        if not check_signature(cp.kid, cp.payload(), _safe_b64(cp.signature)):
            problems.append(f"checkpoint at seq {cp.seq} has a bad signature")
            continue
        if cp.seq > head_seq:
            problems.append(
                f"checkpoint at seq {cp.seq} is beyond the last record {head_seq} (truncated)"
            )
        elif hashes.get(cp.seq) != cp.head_hash:
            problems.append(f"checkpoint at seq {cp.seq} does not match the chain")
    return ChainReport(not problems, count, head_seq, prev, checked, tuple(problems))


def _safe_b64(text: str) -> bytes:
    try:
        return b64url_decode(text)
    except ValueError:
        return b""
