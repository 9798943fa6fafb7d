"""The audit chain: any edit, deletion, reordering or truncation is detected."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from remit.core.audit import (
    GENESIS_HASH,
    AuditRecord,
    Checkpoint,
    b64url,
    chain_record,
    checkpoint_payload,
    verify_chain,
)
from remit.core.keys import SigningKey, sign_es256, verify_es256

KEY = SigningKey.generate(0.0)


def check(kid: str, payload: bytes, signature: bytes) -> bool:
    return kid == KEY.kid and verify_es256(KEY.private_key.public_key(), payload, signature)


def build(datas: list[dict[str, Any]]) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    prev = GENESIS_HASH
    for i, data in enumerate(datas, start=1):
        rec = chain_record(
            prev_hash=prev, seq=i, event_id=f"evt_{i:020d}", ts=float(i), kind="decision", data=data
        )
        records.append(rec)
        prev = rec.hash
    return records


def checkpoint(rec: AuditRecord) -> Checkpoint:
    sig = sign_es256(KEY.private_key, checkpoint_payload(rec.seq, rec.hash, rec.ts, KEY.kid))
    return Checkpoint(rec.seq, rec.hash, rec.ts, KEY.kid, b64url(sig))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
datas = st.lists(
    st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4),
    min_size=2,
    max_size=12,
)


@given(datas)
def test_an_untouched_chain_verifies(items: list[dict[str, Any]]) -> None:
    records = build(items)
    report = verify_chain(records, [checkpoint(records[-1])], check)
    assert report.ok and report.records == len(items) and report.head_hash == records[-1].hash


@settings(max_examples=60)
@given(datas, st.data())
def test_any_edit_is_detected(items: list[dict[str, Any]], data: st.DataObject) -> None:
    records = build(items)
    index = data.draw(st.integers(0, len(records) - 1))
    original = records[index]
    new_data = dict(original.data)
    new_data["tampered"] = data.draw(st.text(min_size=1, max_size=5))
    records[index] = replace(original, data=new_data)
    assert not verify_chain(records, [], check).ok


@settings(max_examples=60)
@given(datas, st.data())
def test_any_deletion_is_detected(items: list[dict[str, Any]], data: st.DataObject) -> None:
    records = build(items)
    cp = checkpoint(records[-1])
    del records[data.draw(st.integers(0, len(records) - 1))]
    assert not verify_chain(records, [cp], check).ok


@settings(max_examples=60)
@given(datas, st.data())
def test_any_reordering_is_detected(items: list[dict[str, Any]], data: st.DataObject) -> None:
    records = build(items)
    i = data.draw(st.integers(0, len(records) - 2))
    records[i], records[i + 1] = records[i + 1], records[i]
    assert not verify_chain(records, [], check).ok


def test_rehashed_rewrite_is_caught_by_the_checkpoint() -> None:
    records = build([{"n": i} for i in range(5)])
    cp = checkpoint(records[-1])
    forged = build([{"n": i} for i in range(4)] + [{"n": "forged"}])  # a consistent chain, rehashed
    assert verify_chain(forged, [], check).ok  # the chain alone cannot tell ...
    assert not verify_chain(forged, [cp], check).ok  # ... the signed checkpoint can


def test_truncation_is_caught_by_a_checkpoint_or_the_anchor() -> None:
    records = build([{"n": i} for i in range(6)])
    cp = checkpoint(records[-1])
    report = verify_chain(records[:4], [cp], check)
    assert not report.ok and "truncated" in report.problems[0]
    # Checkpoints deleted along with the records: the outside anchor still catches it.
    assert not verify_chain(records[:4], [], check, anchor=cp).ok


def test_forged_checkpoint_signature_is_detected() -> None:
    records = build([{"n": 1}, {"n": 2}])
    cp = replace(checkpoint(records[-1]), signature=b64url(b"\x00" * 64))
    assert not verify_chain(records, [cp], check).ok
