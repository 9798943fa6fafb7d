"""The audit log on a real SQLite file: group commit, checkpoints, tamper detection."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from remit.service import Remit
from remit.store.audit_log import read_anchor


def fill(remit: Remit, n: int = 20) -> None:
    for i in range(n):
        remit.audit.append("test.event", {"i": i})
    remit.audit.checkpoint()


def tamper(remit: Remit, sql: str, *params: object) -> None:
    remit.audit.flush()
    conn = sqlite3.connect(remit.settings.sqlite_path)
    with conn:
        conn.execute(sql, params)
    conn.close()


def test_concurrent_appends_form_one_chain(remit: Remit) -> None:
    def worker(k: int) -> None:
        for i in range(50):
            remit.audit.append("test.event", {"k": k, "i": i})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = remit.verify_audit()
    assert report.ok and report.records >= 200


def test_checkpoint_is_signed_and_anchored(remit: Remit) -> None:
    fill(remit)
    anchor = read_anchor(remit.settings.anchor_path)
    assert anchor is not None and anchor.seq == remit.store.audit_head().seq  # type: ignore[union-attr]
    assert remit.verify_audit().ok


TAMPERS: dict[str, list[str]] = {
    "edit": ["UPDATE audit_events SET data = '{\"i\":999}' WHERE seq = 5"],
    "delete": ["DELETE FROM audit_events WHERE seq = 7"],
    "reorder": [
        "UPDATE audit_events SET seq = -1 WHERE seq = 8",
        "UPDATE audit_events SET seq = 8 WHERE seq = 9",
        "UPDATE audit_events SET seq = 9 WHERE seq = -1",
    ],
    "truncate": ["DELETE FROM audit_events WHERE seq > 10"],
    "truncate-with-checkpoints": [
        "DELETE FROM audit_events WHERE seq > 10",
        "DELETE FROM audit_checkpoints",
    ],
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_tampering_is_detected(remit: Remit, how: str) -> None:
    fill(remit)
    assert remit.verify_audit().ok
    for sql in TAMPERS[how]:
        tamper(remit, sql)
    report = remit.verify_audit()
    assert not report.ok, how
    assert report.problems


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    from remit.clock import ManualClock
    from remit.runtime import build_remit, catalog_from_yaml

    from ..conftest import CATALOG, make_settings

    settings = make_settings(tmp_path)
    first = build_remit(settings, clock=ManualClock(), catalog=catalog_from_yaml(CATALOG))
    fill(first, 5)
    first.close()
    second = build_remit(settings, clock=ManualClock(), catalog=catalog_from_yaml(CATALOG))
    fill(second, 5)
    report = second.verify_audit()
    second.close()
    assert report.ok and report.records == 10


def test_a_second_writer_on_the_same_database_is_rechained(remit: Remit, tmp_path: Path) -> None:
    """A second process (e.g. a local CLI command) appends to the same chain while the
    server runs: the server's next group is re-linked onto the stored head, not lost."""
    from remit.clock import ManualClock
    from remit.runtime import build_remit, catalog_from_yaml

    from ..conftest import CATALOG

    fill(remit, 3)
    other = build_remit(remit.settings, clock=ManualClock(), catalog=catalog_from_yaml(CATALOG))
    fill(other, 2)
    other.close()
    record = remit.audit.append("test.after", {"x": 1})  # our head is stale: re-chained
    assert record.seq == remit.store.audit_head().seq  # type: ignore[union-attr]
    assert remit.verify_audit().ok
