"""The decision hot path's store shortcuts: per-thread SQLite connections
(``remit.store.direct``) and audit records serialized once (``chain_encoded``)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from remit.canonical import EncodedDict, canonical_bytes_unchecked
from remit.core.audit import chain_record, record_hash
from remit.core.labels import Labels
from remit.errors import StoreUnavailable
from remit.store.audit_log import chain_encoded
from remit.store.direct import SqliteDirect, direct_path
from remit.store.sql import SqlStore

json_scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.dictionaries(st.text(), json_values, max_size=6),
    seq=st.integers(1, 2**40),
    ts=st.floats(0, 4e9, allow_nan=False) | st.integers(0, 2**32),
    kind=st.text(max_size=20),
    event_id=st.text(max_size=30),
)
def test_chain_encoded_hashes_exactly_like_chain_record(
    data: dict[str, Any], seq: int, ts: float, kind: str, event_id: str
) -> None:
    prev = "ab" * 32
    want = chain_record(prev_hash=prev, seq=seq, event_id=event_id, ts=ts, kind=kind, data=data)
    got = chain_encoded(
        prev_hash=prev, seq=seq, event_id=event_id, ts=ts, kind=kind, data=EncodedDict.encode(data)
    )
    assert got.hash == want.hash == record_hash(prev, got.body())
    assert (got.seq, got.event_id, got.ts, got.kind, got.prev_hash) == (
        want.seq,
        want.event_id,
        want.ts,
        want.kind,
        want.prev_hash,
    )
    assert dict(got.data) == data
    assert got.data.canonical == canonical_bytes_unchecked(data).decode("utf-8")  # type: ignore[attr-defined]


def test_direct_applies_only_to_sqlite_files(tmp_path: Path) -> None:
    assert direct_path(make_url(f"sqlite:///{tmp_path}/a.db")) == f"{tmp_path}/a.db"
    for url in (
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:x?mode=memory&uri=true",
        "postgresql+psycopg://u@h/db",
    ):
        assert direct_path(make_url(url)) is None
    assert SqlStore("sqlite://")._direct is None


@pytest.fixture()
def store(tmp_path: Path) -> SqlStore:
    s = SqlStore(f"sqlite:///{tmp_path}/remit.db")
    s.migrate()
    assert s._direct is not None
    return s


def test_one_connection_per_thread_with_the_pragmas(store: SqlStore) -> None:
    assert store._direct is not None
    direct = store._direct
    seen: list[tuple[int, str, int, int]] = []

    def use() -> None:
        with direct.cursor() as cur:
            first = id(direct._connection())
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            sync = cur.execute("PRAGMA synchronous").fetchone()[0]
            fks = cur.execute("PRAGMA foreign_keys").fetchone()[0]
        with direct.cursor():
            assert id(direct._connection()) == first  # reused on this thread
        seen.append((first, mode, sync, fks))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len({s[0] for s in seen}) == 4  # one per thread
    assert {s[1:] for s in seen} == {("wal", 1, 1)}  # WAL, NORMAL, foreign keys on


def test_replayed_jti_rolls_back_and_the_connection_stays_usable(store: SqlStore) -> None:
    assert store.record_call(
        task_id="tsk_none", jti="j" * 20, jti_expires_at=1e12, consume=False, taint=Labels()
    ) == (True, False)
    assert store.record_call(
        task_id="tsk_none", jti="j" * 20, jti_expires_at=1e12, consume=False, taint=Labels()
    ) == (False, False)
    assert store.get_task("tsk_none") is None  # same thread, same connection, still fine


def test_a_failing_connection_is_replaced_and_reported_as_unavailable(store: SqlStore) -> None:
    assert store._direct is not None
    with store._direct.cursor():
        pass
    broken = store._direct._connection()
    broken.close()  # e.g. the database went away under us
    with pytest.raises(StoreUnavailable):
        store.get_task("tsk_x")
    assert store._direct._connection() is not broken
    assert store.get_task("tsk_x") is None


def test_close_closes_every_thread_connection(store: SqlStore) -> None:
    assert store._direct is not None
    store.get_task("tsk_x")
    conn = store._direct._connection()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("select 1")


def test_concurrent_uses_of_one_jti_commit_exactly_once(store: SqlStore) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        fresh, _ = store.record_call(
            task_id="tsk_none", jti="k" * 20, jti_expires_at=1e12, consume=False, taint=Labels()
        )
        results.append(fresh)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [False] * 7 + [True]


def test_unknown_synchronous_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteDirect(str(tmp_path / "x.db"), synchronous="OFF")
