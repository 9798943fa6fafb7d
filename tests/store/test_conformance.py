"""The store conformance suite. Every store implementation runs it.

Add a backend by adding a parameter to the ``store`` fixture (PostgreSQL
joins when REMIT_TEST_PG is set).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from remit.core.audit import GENESIS_HASH, Checkpoint, chain_record
from remit.core.catalog import catalog_from_data
from remit.core.destinations import normalize_destination
from remit.core.identity import Agent, AgentStatus, Instance, Mode, Principal, ceiling_from_data
from remit.core.labels import Labels, Sensitivity
from remit.core.mandate import Mandate
from remit.core.tasks import Task, TaskStatus
from remit.errors import Conflict, StoreUnavailable
from remit.store.base import JoinTokenRecord, PolicyVersionRecord
from remit.store.sql import SqlStore

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("REMIT_TEST_PG") else [])


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        s = SqlStore(f"sqlite:///{tmp_path / 'store.db'}")
    else:  # pragma: no cover - exercised where PostgreSQL runs
        import uuid

        import sqlalchemy

        base = os.environ["REMIT_TEST_PG"].replace("postgresql://", "postgresql+psycopg://")
        name = "t_" + uuid.uuid4().hex[:12]
        admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        s = SqlStore(base.rsplit("/", 1)[0] + "/" + name)
    s.migrate()
    yield s
    s.close()


CATALOG = catalog_from_data({"tools": [{"name": "docs/read", "privilege": "read"}]})


def make_agent(name: str = "a1") -> Agent:
    ceiling = ceiling_from_data(
        {"tools": ["docs/read"], "privileges": ["read"], "destinations": ["email:*@x.example"]}
    )
    return Agent(
        f"spiffe://t.example/agent/{name}",
        name,
        "ops",
        "d",
        ceiling,
        AgentStatus.ACTIVE,
        Mode.ENFORCE,
        1.0,
        1.0,
    )


def make_task(task_id: str, parent: str | None = None, budget: int = 2) -> Task:
    mandate = Mandate("p", frozenset({"docs/read"}), (), (), Sensitivity.INTERNAL, budget, 60, 1)
    return Task(
        task_id,
        "spiffe://t.example/agent/a1",
        "ins_1",
        "user:u@x.example",
        parent,
        mandate,
        mandate.digest(),
        TaskStatus.OPEN,
        0.0,
        60.0,
        None,
        None,
        0,
        Labels(),
    )


def test_migrate_is_idempotent(store: SqlStore) -> None:
    assert store.migrate() == store.migrate() == store.schema_version()


def test_agents_round_trip(store: SqlStore) -> None:
    agent = make_agent()
    store.insert_agent(agent)
    assert store.get_agent(agent.agent_id) == agent
    with pytest.raises(Conflict):
        store.insert_agent(agent)
    suspended = agent.with_status(AgentStatus.SUSPENDED, 2.0)
    store.update_agent(suspended)
    assert store.get_agent(agent.agent_id) == suspended
    assert store.list_agents() == [suspended]
    assert store.get_agent("spiffe://t.example/agent/none") is None


def test_principals_round_trip(store: SqlStore) -> None:
    p = Principal("user:u@x.example", "U", (normalize_destination("email", "u@x.example"),))
    store.upsert_principal(p)
    assert store.get_principal(p.principal_id) == p
    p2 = Principal("user:u@x.example", "U2", ())
    store.upsert_principal(p2)
    assert store.get_principal(p.principal_id) == p2


def test_join_tokens_are_single_use(store: SqlStore) -> None:
    store.insert_join_token(JoinTokenRecord("h" * 64, "agent", 0.0, 100.0, None, None))
    assert store.consume_join_token("h" * 64, 10.0, "ins_a")
    assert not store.consume_join_token("h" * 64, 11.0, "ins_b")
    record = store.get_join_token("h" * 64)
    assert record is not None and record.used_by == "ins_a"
    store.insert_join_token(JoinTokenRecord("e" * 64, "agent", 0.0, 5.0, None, None))
    assert not store.consume_join_token("e" * 64, 6.0, "ins_c")  # expired


def test_join_token_race_has_one_winner(store: SqlStore) -> None:
    store.insert_join_token(JoinTokenRecord("r" * 64, "agent", 0.0, 100.0, None, None))
    wins: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda i=i: wins.append(store.consume_join_token("r" * 64, 1.0, f"i{i}"))
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_nonces_are_single_use(store: SqlStore) -> None:
    store.insert_nonce("n1", 10.0)
    assert store.consume_nonce("n1", 1.0)
    assert not store.consume_nonce("n1", 2.0)
    store.insert_nonce("n2", 10.0)
    assert not store.consume_nonce("n2", 11.0)


def test_instances_bind_one_key(store: SqlStore) -> None:
    inst = Instance("ins_1", "agent", "jkt1", {"kty": "EC"}, 1.0)
    store.insert_instance(inst)
    assert store.get_instance("ins_1") == inst
    with pytest.raises(Conflict):
        store.insert_instance(Instance("ins_2", "agent", "jkt1", {"kty": "EC"}, 1.0))
    assert store.deactivate_instances("agent") == 1
    assert store.get_instance("ins_1").active is False  # type: ignore[union-attr]


def test_tasks_budget_and_taint(store: SqlStore) -> None:
    store.insert_task(make_task("t1"))
    assert store.get_task("t1") == make_task("t1")
    assert store.consume_call("t1", Labels(Sensitivity.INTERNAL, frozenset({"untrusted"})))
    assert store.consume_call("t1", Labels(Sensitivity.CONFIDENTIAL))
    assert not store.consume_call("t1", Labels())
    task = store.get_task("t1")
    assert task is not None and task.calls_used == 2
    assert task.taint == Labels(Sensitivity.CONFIDENTIAL, frozenset({"untrusted"}))
    assert not store.consume_call("missing", Labels())


def test_ending_a_task_revokes_its_descendants(store: SqlStore) -> None:
    for tid, parent in (
        ("root", None),
        ("child", "root"),
        ("grandchild", "child"),
        ("other", None),
    ):
        store.insert_task(make_task(tid, parent))
    ended = store.end_task_tree("root", TaskStatus.ENDED, "completed", 5.0)
    assert sorted(ended) == ["child", "grandchild", "root"]
    assert store.get_task("grandchild").status is TaskStatus.REVOKED  # type: ignore[union-attr]
    assert store.get_task("other").status is TaskStatus.OPEN  # type: ignore[union-attr]
    assert store.end_task_tree("root", TaskStatus.ENDED, "again", 6.0) == []
    assert not store.consume_call("child", Labels())


def test_expire_tasks(store: SqlStore) -> None:
    store.insert_task(make_task("t1"))
    assert store.expire_tasks(59.0) == []
    assert store.expire_tasks(61.0) == ["t1"]
    assert store.get_task("t1").status is TaskStatus.EXPIRED  # type: ignore[union-attr]


def test_jti_replay_cache(store: SqlStore) -> None:
    assert store.remember_jti("j1", 100.0, 1.0)
    assert not store.remember_jti("j1", 100.0, 2.0)
    assert store.sweep_jtis(101.0) == 1
    assert store.remember_jti("j1", 200.0, 101.0)


def test_audit_append_and_read(store: SqlStore) -> None:
    assert store.audit_head() is None
    prev, records = GENESIS_HASH, []
    for i in range(1, 2501):
        rec = chain_record(
            prev_hash=prev,
            seq=i,
            event_id=f"evt_{i}",
            ts=float(i),
            kind="k",
            data={"i": i, "u": "ü"},
        )
        records.append(rec)
        prev = rec.hash
    store.append_audit(records[:1000])
    store.append_audit(records[1000:])
    assert store.audit_head() == records[-1]
    assert list(store.iter_audit()) == records
    assert list(store.iter_audit(2400)) == records[2400:]
    with pytest.raises(StoreUnavailable):
        store.append_audit(records[:1])  # a seq can never be written twice
    cp = Checkpoint(2500, prev, 1.0, "kid", "sig")
    store.insert_checkpoint(cp)
    assert store.list_checkpoints() == [cp]


def test_policy_versions(store: SqlStore) -> None:
    assert store.active_policy_version() is None
    store.save_policy_version(PolicyVersionRecord("pv_a", {"a.cedar": "x"}, 1.0, True))
    store.save_policy_version(PolicyVersionRecord("pv_b", {"b.cedar": "y"}, 2.0, True))
    active = store.active_policy_version()
    assert active is not None and active.version == "pv_b" and active.sources == {"b.cedar": "y"}
    store.save_policy_version(PolicyVersionRecord("pv_a", {"a.cedar": "x"}, 3.0, True))
    assert store.active_policy_version().version == "pv_a"  # type: ignore[union-attr]


def test_unreachable_store_raises_store_unavailable(tmp_path: Path) -> None:
    s = SqlStore(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(StoreUnavailable):
        s.migrate()


def test_tool_pins(store: SqlStore) -> None:
    from remit.store.base import ToolPin

    assert store.get_tool_pin("email/send") is None
    pin = ToolPin(
        "email/send",
        "sha256:a",
        {"name": "send", "description": "", "input_schema": {}},
        1.0,
        "ops",
    )
    store.upsert_tool_pin(pin)
    assert store.get_tool_pin("email/send") == pin
    newer = ToolPin(
        "email/send",
        "sha256:b",
        {"name": "send", "description": "v2", "input_schema": {}},
        2.0,
        "ops",
    )
    store.upsert_tool_pin(newer)
    assert store.list_tool_pins() == [newer]


def test_sealed_secrets(store: SqlStore) -> None:
    from remit.core.sealing import MasterKey, rewrap, seal, unseal
    from remit.core.secrets import Secret
    from remit.store.base import StoredSecret

    master, new = MasterKey.generate(), MasterKey.generate()
    assert store.get_secret("api") is None and store.list_secrets() == []
    v1 = seal("api", Secret("one"), master)
    store.put_secret(StoredSecret(v1, 10.0, None))
    with pytest.raises(Conflict):  # version 1 again: a concurrent put won
        store.put_secret(StoredSecret(seal("api", Secret("x"), master), 11.0, None))
    with pytest.raises(Conflict):  # skipping a version
        store.put_secret(StoredSecret(seal("api", Secret("x"), master, version=3), 11.0, None))
    v2 = seal("api", Secret("two"), master, version=2)
    store.put_secret(StoredSecret(v2, 12.0, None))
    got = store.get_secret("api")
    assert got is not None and got.sealed == v2 and got.created_at == 12.0
    assert unseal(got.sealed, [master]).reveal() == "two"
    store.put_secret(StoredSecret(seal("b", Secret("bee"), master), 13.0, None))
    assert [r.name for r in store.list_secrets()] == ["api", "b"]

    moved = rewrap(v2, [master], new)
    assert not store.rewrap_secret(moved, new.kid, 20.0)  # not under that kid
    assert store.rewrap_secret(moved, master.kid, 20.0)
    assert not store.rewrap_secret(moved, master.kid, 21.0)  # already done
    after = store.get_secret("api")
    assert after is not None and after.rotated_at == 20.0
    assert after.sealed.master_kid == new.kid and after.sealed.ciphertext == v2.ciphertext
    assert unseal(after.sealed, [new]).reveal() == "two"


def test_inventory_replace_and_read(store: SqlStore) -> None:
    from remit.core.inventory import InventoryImport, InventoryItem

    assert store.schema_version() >= 8
    assert store.get_inventory() is None
    first = (
        InventoryItem("svc-a", "ops", ("crm", "billing"), 100.0, 200.5, ("a1", "a2"), "vault-a"),
        InventoryItem("svc-b", None, (), 50.0, None, (), None),
        InventoryItem("üñí-ç", "", ("x",) * 3, 1.25, None, ("spiffe://d/agent/a1",), None),
    )
    record = InventoryImport("inv_1", "a" * 64, "alice", 1000.0, len(first))
    store.replace_inventory(record, first)
    got = store.get_inventory()
    assert got is not None
    assert got[0] == record
    assert got[1] == first  # in import order, every field as given

    # An import replaces the previous one whole.
    second = tuple(
        InventoryItem(f"k{i:05d}", "team", ("s",), float(i), None, ("a1",), None)
        for i in range(2500)
    )
    newer = InventoryImport("inv_2", "b" * 64, "bob", 2000.0, len(second))
    store.replace_inventory(newer, second)
    again = store.get_inventory()
    assert again is not None and again[0] == newer and again[1] == second
    assert "svc-a" not in {i.id for i in again[1]}


def test_inventory_replace_is_atomic(store: SqlStore) -> None:
    from sqlalchemy.exc import IntegrityError

    from remit.core.inventory import InventoryImport, InventoryItem

    kept = (InventoryItem("keep", "ops", ("s",), 1.0, None, ("a1",), None),)
    record = InventoryImport("inv_k", "c" * 64, "op", 1.0, 1)
    store.replace_inventory(record, kept)
    good = InventoryItem("x", None, (), 1.0, None, (), None)
    broken = InventoryItem("y", None, (), None, None, (), None)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):  # created is NOT NULL: the last row fails
        store.replace_inventory(
            InventoryImport("inv_bad", "d" * 64, "op", 2.0, 3), [good] * 2 + [broken]
        )
    # Nothing of the failed import is visible; the previous one is intact.
    assert store.get_inventory() == (record, kept)
