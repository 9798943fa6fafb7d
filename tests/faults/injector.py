"""A storage error injector for a real ``SqlStore`` on a SQLite file.

Faults are injected below Remit's own error mapping, so the mapping is exercised too:

* SQLAlchemy statements: an engine ``before_cursor_execute`` listener raises
  ``sqlite3.OperationalError`` (SQLAlchemy wraps it as ``OperationalError``, which
  ``SqlStore._tx`` maps to ``StoreUnavailable``).
* The hot path (``remit.store.direct.SqliteDirect``, one sqlite3 connection per thread):
  its connections are opened with a ``sqlite3.Connection`` subclass whose cursors fail
  ``execute``/``executemany`` and whose ``commit`` fails, before anything reaches SQLite.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from typing import Any

from sqlalchemy import event

from remit.store.direct import SqliteDirect
from remit.store.sql import SqlStore


class ErrorInjector:
    """Fails a fraction ``rate`` of storage operations, from a seeded random."""

    def __init__(self, seed: int, rate: float = 0.2) -> None:
        self.rate = rate
        self.enabled = False
        self.operations = 0
        self.injected = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def maybe_fail(self, where: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.operations += 1
            fail = self._random.random() < self.rate
            if fail:
                self.injected += 1
        if fail:
            raise sqlite3.OperationalError(f"disk I/O error (injected at {where})")


def _connection_class(injector: ErrorInjector) -> type[sqlite3.Connection]:
    class FaultyCursor(sqlite3.Cursor):
        def execute(self, sql: str, parameters: Any = (), /) -> FaultyCursor:
            injector.maybe_fail("direct.execute")
            super().execute(sql, parameters)
            return self

        def executemany(self, sql: str, seq: Any, /) -> FaultyCursor:
            injector.maybe_fail("direct.executemany")
            super().executemany(sql, seq)
            return self

    class FaultyConnection(sqlite3.Connection):
        def cursor(self, factory: Any = FaultyCursor) -> Any:
            return super().cursor(factory)

        def commit(self) -> None:
            injector.maybe_fail("direct.commit")
            super().commit()

    return FaultyConnection


def install(store: SqlStore, injector: ErrorInjector) -> None:
    """Wire ``injector`` into ``store`` (both its engine and its per-thread hot path)."""

    def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        injector.maybe_fail("engine")

    event.listen(store.engine, "before_cursor_execute", before)
    direct: SqliteDirect | None = store._direct
    assert direct is not None, "the hot path must be the direct SQLite one on a file"
    factory = _connection_class(injector)

    def faulty_open() -> sqlite3.Connection:
        conn = sqlite3.connect(
            direct.path, timeout=direct.timeout, check_same_thread=False, factory=factory
        )
        for pragma in (
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={direct.synchronous}",
            "PRAGMA busy_timeout=30000",
            "PRAGMA foreign_keys=ON",
        ):
            sqlite3.Connection.execute(conn, pragma).close()
        return conn

    direct.close()  # every thread reopens through the faulty factory
    direct._open = faulty_open  # type: ignore[method-assign]
