"""Per-thread DB-API connections for the decision's hot path on a SQLite file.

Every decision runs three short transactions (read the task; remember the jti and
take from the budget; append the audit group). Checking a connection out of
SQLAlchemy's pool and returning it costs about 7 µs each time, a sizeable share
of a ~300 µs decision. For a SQLite *file* the hot path therefore keeps one
connection per thread, opened with the same pragmas as the pool's connections.

Nothing about transactions changes: each use is one transaction that commits or
rolls back before the connection is used again, and SQLite serializes writers
across connections exactly as before (WAL, ``busy_timeout``). A connection that
reports an error (other than a constraint violation) is closed and replaced on
next use. In-memory and URI databases are not handled here (a second connection
would see another database): they keep the pool.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy.engine import URL

from remit.errors import StoreUnavailable

__all__ = ["SqliteDirect", "direct_path", "transaction_cursor"]


def direct_path(url: URL) -> str | None:
    """The file a SQLite URL names, or None when the direct path does not apply."""
    if url.get_backend_name() != "sqlite" or url.get_driver_name() not in ("pysqlite", ""):
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query:
        return None
    return database


@contextmanager
def transaction_cursor(conn: Any) -> Iterator[Any]:
    """A DB-API cursor on ``conn`` in one transaction: committed when the block ends,
    rolled back when it raises; the cursor is always closed."""
    cursor = conn.cursor()
    try:
        yield cursor
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        cursor.close()


class SqliteDirect:
    """One sqlite3 connection per thread, for ``SqlStore``'s hot-path statements."""

    def __init__(self, path: str, *, synchronous: str, timeout: float = 30.0) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = path
        self.synchronous = synchronous
        self.timeout = timeout
        self._local = threading.local()
        # For close(): a dead thread's entry goes with its Thread object (and its
        # connection with the thread's local storage).
        self._all: weakref.WeakKeyDictionary[threading.Thread, sqlite3.Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        try:
            for pragma in (
                "PRAGMA journal_mode=WAL",
                f"PRAGMA synchronous={self.synchronous}",
                "PRAGMA busy_timeout=30000",
                "PRAGMA foreign_keys=ON",
            ):
                conn.execute(pragma).close()
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all[threading.current_thread()] = conn
        return conn

    def _drop(self, conn: sqlite3.Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._all.pop(threading.current_thread(), None)
        with suppress(sqlite3.Error):
            conn.close()

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A cursor in one transaction on this thread's connection; commits on success.

        ``sqlite3.IntegrityError`` propagates (the transaction rolled back); any other
        database error is ``StoreUnavailable``."""
        try:
            conn = self._connection()
        except sqlite3.Error as exc:
            raise StoreUnavailable("the store is unavailable", reason=type(exc).__name__) from exc
        try:
            with transaction_cursor(conn) as cursor:
                yield cursor
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            self._drop(conn)
            raise StoreUnavailable("the store is unavailable", reason=type(exc).__name__) from exc

    def close(self) -> None:
        """Close every thread's connection; a later use opens a new one."""
        with self._lock:
            conns = list(self._all.values())
            self._all.clear()
            self._local = threading.local()
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()
