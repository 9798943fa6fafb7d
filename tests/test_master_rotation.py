"""Master key rotation without downtime (issue 6 hardening).

* A secret sealed with the old key by one process while another rotates is never left
  wrapped by a key that is gone from disk: a fresh process holding only the key files
  reads everything (deterministic interleavings, then two real processes racing).
* Environment keys: ``REMIT_MASTER_KEY_PREVIOUS`` unwraps but never seals; ``rewrap``
  moves everything to the active key and says which old keys are still needed.
* Over HTTP (``POST /v1/secrets/rotate-master``, ``/v1/secrets/rewrap``) while a replica
  keeps authorizing credentialed calls and fetching their credentials: zero failures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from remit.agent import AgentSession
from remit.cli import EXIT_CODES, app
from remit.client import RemitClient
from remit.clock import ManualClock
from remit.config import Settings, load_settings
from remit.core.pipeline import Obligation
from remit.core.sealing import MasterKey, parse_master_keys, seal
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, RemitError, SealError
from remit.http.server import running_server
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit
from remit.store.base import StoredSecret

from .conftest import CATALOG, CEILING, PRINCIPAL, make_settings, open_task

CANARY = "canary-0b7e-MASTER-NEVER-PRINT"
runner = CliRunner()

TOOLS = """
  - name: billing/charge
    privilege: write
    labels: [internal]
    credential: {secret: billing.key, header: Authorization, format: "Bearer {value}"}
  - name: billing/once
    privilege: write
    labels: [internal]
    credential: {secret: billing.key, header: X-Once, per_call: true}
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "REMIT_MASTER_KEY",
        "REMIT_MASTER_KEY_PREVIOUS",
        "REMIT_MASTER_KEY_FILE",
        "REMIT_CONFIG",
        "REMIT_URL",
        "REMIT_DATA_DIR",
    ):
        monkeypatch.delenv(name, raising=False)


def _build(settings: Settings, clock: Any = None) -> Remit:
    return build_remit(settings, clock=clock, catalog=catalog_from_yaml(CATALOG + TOOLS))


def _fresh_reads(settings: Settings, expected: dict[str, str]) -> None:
    """A new Remit that holds nothing but what is on disk opens every secret."""
    fresh = _build(settings)
    try:
        for name, value in expected.items():
            assert fresh.reveal_secret(name).reveal() == value, name
        for lease_id, held in fresh.store.list_lease_values():
            assert fresh.masters.durable(held.master_kid), lease_id
            fresh._unseal(held)
    finally:
        fresh.close()


def _kinds(remit: Remit) -> list[str]:
    remit.audit.flush()
    return [r.kind for r in remit.store.iter_audit()]


# ---------------------------------------------------------------------- interleavings


def test_a_secret_committed_after_a_whole_rotation_is_rewrapped_by_its_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    writer, rotator = _build(settings), _build(settings)
    try:
        writer.put_secret("warm", Secret(CANARY + "-warm"))
        old = writer.masters.active()
        real_put = writer.store.put_secret
        done: list[Any] = []

        def late_commit(record: StoredSecret) -> None:
            # Sealed with the old key already; the other process rotates before the commit.
            if not done:
                done.append(rotator.rotate_master_key())
            real_put(record)

        monkeypatch.setattr(writer.store, "put_secret", late_commit)
        info = writer.put_secret("late", Secret(CANARY + "-late"))
        (rotation,) = done
        assert rotation.retired == (old.kid,)  # nothing was under the old key at its scan
        assert not (settings.master_key_path.parent / f"master-{old.kid}.key").exists()
        assert info.master_kid == rotation.new_kid  # the writer re-wrapped its own row
        stored = writer.store.get_secret("late")
        assert stored is not None and stored.sealed.master_kid == rotation.new_kid
        assert "master_key.settled" in _kinds(writer)
    finally:
        writer.close()
        rotator.close()
    _fresh_reads(settings, {"warm": CANARY + "-warm", "late": CANARY + "-late"})


def test_a_secret_committed_between_the_scan_and_the_delete_is_caught_by_the_second_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    writer, rotator = _build(settings), _build(settings)
    try:
        writer.put_secret("warm", Secret(CANARY))
        old = writer.masters.active()
        real_retire = rotator.masters.retire_unused

        def commit_then_retire(in_use: set[str]) -> list[str]:
            assert old.kid not in in_use  # the first scan saw nothing under the old key
            # The writer commits now, and is paused before its own post-commit check.
            sealed = seal("mid", Secret(CANARY + "-mid"), old)
            writer.store.put_secret(StoredSecret(sealed, 0.0, None))
            return real_retire(in_use)

        monkeypatch.setattr(rotator.masters, "retire_unused", commit_then_retire)
        rotation = rotator.rotate_master_key()
        assert rotation.retired == (old.kid,) and rotation.still_needed == ()
        stored = rotator.store.get_secret("mid")
        assert stored is not None and stored.sealed.master_kid == rotation.new_kid
        assert "master_key.settled" in _kinds(rotator)
    finally:
        writer.close()
        rotator.close()
    _fresh_reads(settings, {"warm": CANARY, "mid": CANARY + "-mid"})


_WRITER = """
import sys
from remit.config import load_settings
from remit.core.secrets import Secret
from remit.runtime import build_remit

remit = build_remit(load_settings())
count = int(sys.argv[1])
try:
    for i in range(count):
        remit.put_secret(f"s{i}", Secret(f"value-{i}"))
        remit.put_secret("hot", Secret(f"hot-{i}"))
finally:
    remit.close()
print("done", flush=True)
"""


def test_two_processes_racing_put_and_rotate_lose_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    rotator = _build(settings)
    rotator.put_secret("seed", Secret("seed"))  # the key file exists before the race
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REMIT_")},
        "REMIT_DATA_DIR": str(settings.data_dir),
        "REMIT_TRUST_DOMAIN": settings.trust_domain,
    }
    count = 60
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(count)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rotations = 0
    try:
        while child.poll() is None:
            rotator.rotate_master_key()
            rotations += 1
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        assert out.strip() == "done"
        assert rotations >= 3, "the race did not happen: the writer finished too soon"
        final = rotator.rotate_master_key()  # and once more with everything committed
        assert final.still_needed == ()
    finally:
        if child.poll() is None:
            child.kill()
        rotator.close()
    expected = {f"s{i}": f"value-{i}" for i in range(count)}
    expected.update(seed="seed", hot=f"hot-{count - 1}")
    _fresh_reads(settings, expected)
    # Only the active key is left on disk once nothing needs the others.
    assert sorted(p.name for p in settings.master_key_path.parent.glob("master*")) == ["master.key"]


# ---------------------------------------------------------------------- environment keys


def _b64(key: MasterKey) -> Secret:
    return key.to_b64()


def _setup_lease(remit: Remit) -> tuple[Obligation, Obligation]:
    """A shared static lease and a per-call one, their values sealed with the active key."""
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    ceiling = dict(CEILING, tools=[*CEILING["tools"], "billing/charge", "billing/once"])
    agent = remit.register_agent("billing-bot", owner="sam@acme.example", ceiling=ceiling)
    session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=remit.clock)
    task = open_task(session, tools=["billing/charge", "billing/once", "docs/read"])
    shared = task.authorize("billing/charge", {"amount": 1})
    once = task.authorize("billing/once", {"amount": 2})
    assert shared.allowed and once.allowed
    return shared.obligations[0], once.obligations[0]


def test_environment_key_replaced_with_previous_then_rewrap(tmp_path: Path) -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    clock = ManualClock()
    base = make_settings(tmp_path)
    names = {f"k{i}": f"{CANARY}-{i}" for i in range(4)}
    names["billing.key"] = CANARY

    first = _build(replace(base, master_key=_b64(a)), clock)
    try:
        for name, value in names.items():
            first.put_secret(name, Secret(value))
        shared, once = _setup_lease(first)
    finally:
        first.close()
    assert not base.master_key_path.exists()  # environment keys write no key file

    # The new replica: B seals, A only unwraps. It reads everything before any rewrap.
    both = _build(replace(base, master_key=_b64(b), master_key_previous=_b64(a)), clock)
    try:
        assert both.masters.active().kid == b.kid and both.masters.previous_kids == (a.kid,)
        for name, value in names.items():
            assert both.reveal_secret(name).reveal() == value
        assert both.credential_for(shared).headers["Authorization"] == Secret(f"Bearer {CANARY}")
        info = both.put_secret("k0", Secret(names["k0"]))  # never sealed with a previous key
        assert info.master_kid == b.kid
        with pytest.raises(InvalidRequest) as refused:
            both.rotate_master_key()
        assert refused.value.reason == "master_key_from_env"
        report = both.rewrap_secrets()
        assert report.active_kid == b.kid
        assert report.rewrapped == len(names) - 1  # k0 was already under B
        assert report.lease_values == 2  # both open leases' values
        assert report.still_needed == () and report.missing == () and report.complete
        assert report.previous == (a.kid,)
        assert json.dumps(report.to_data()).find(a.to_b64().reveal()) == -1
        assert "master_key.rewrapped" in _kinds(both)
    finally:
        both.close()

    # A straggler replica still on A seals once more after the rewrap...
    straggler = _build(replace(base, master_key=_b64(a)), clock)
    try:
        straggler.put_secret("late", Secret(CANARY + "-late"))
    finally:
        straggler.close()
    names["late"] = CANARY + "-late"
    both = _build(replace(base, master_key=_b64(b), master_key_previous=_b64(a)), clock)
    try:
        before = both.rewrap_secrets()
        assert before.rewrapped == 1 and before.complete  # ...and a second rewrap takes it
    finally:
        both.close()

    # Only B now: everything opens, leases included.
    only_b = _build(replace(base, master_key=_b64(b)), clock)
    try:
        for name, value in names.items():
            assert only_b.reveal_secret(name).reveal() == value
        assert only_b.credential_for(once).headers["X-Once"] == Secret(CANARY)
        assert only_b.rewrap_secrets().complete
    finally:
        only_b.close()

    # Only A: nothing opens, with a clear ``sealed`` error naming no key material.
    only_a = _build(replace(base, master_key=_b64(a)), clock)
    try:
        for name in names:
            with pytest.raises(SealError) as info:
                only_a.reveal_secret(name)
            assert info.value.code == "sealed" and info.value.reason == "master_key_missing"
            assert a.to_b64().reveal() not in str(info.value)
            assert b.to_b64().reveal() not in str(info.value)
        with pytest.raises(SealError):
            only_a.credential_for(shared)
        report = only_a.rewrap_secrets()  # reports what it cannot do; moves nothing
        assert report.rewrapped == 0 and report.missing == (b.kid,) and not report.complete
    finally:
        only_a.close()


def test_rewrap_without_previous_key_reports_it_missing(tmp_path: Path) -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    base = make_settings(tmp_path)
    first = _build(replace(base, master_key=_b64(a)))
    try:
        first.put_secret("x", Secret(CANARY))
    finally:
        first.close()
    only_b = _build(replace(base, master_key=_b64(b)))
    try:
        with pytest.raises(SealError):
            only_b.reveal_secret("x")
        report = only_b.rewrap_secrets()
        assert report.still_needed == (a.kid,) and report.missing == (a.kid,)
        assert not report.complete
    finally:
        only_b.close()


def test_previous_keys_are_environment_only_and_validated(tmp_path: Path) -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    text = f"{a.to_b64().reveal()}, {b.to_b64().reveal()},{a.to_b64().reveal()}"
    settings = load_settings({"REMIT_MASTER_KEY_PREVIOUS": text})
    assert settings.master_key_previous == Secret(text) and text not in repr(settings)
    assert [k.kid for k in parse_master_keys(Secret(text))] == [a.kid, b.kid]
    config = tmp_path / "remit.toml"
    config.write_text(f'master_key_previous = "{a.to_b64().reveal()}"\n')
    with pytest.raises(InvalidRequest) as info:
        load_settings({}, config_file=config)
    assert "REMIT_MASTER_KEY_PREVIOUS" in str(info.value)
    assert a.to_b64().reveal() not in str(info.value)
    for bad in ("", "not-a-key", f"{a.to_b64().reveal()},,", "A" * 43 + ",x"):
        with pytest.raises(SealError) as sealed:
            parse_master_keys(Secret(bad))
        assert sealed.value.reason == "bad_master_key" and a.to_b64().reveal() not in str(
            sealed.value
        )
    with pytest.raises(SealError):
        _build(replace(make_settings(tmp_path), master_key_previous=Secret("nope")))


def test_cli_rewrap_local(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    put = runner.invoke(app, ["secrets", "put", "api.key", "--data-dir", data], input=CANARY)
    assert put.exit_code == 0, put.output
    rotated = runner.invoke(app, ["secrets", "rotate-master", "--data-dir", data, "--json"])
    assert rotated.exit_code == 0, rotated.output
    body = json.loads(rotated.stdout)
    assert body["rewrapped"] == 1 and body["still_needed"] == []
    rewrap = runner.invoke(app, ["secrets", "rewrap", "--data-dir", data, "--json"])
    assert rewrap.exit_code == 0, rewrap.output
    report = json.loads(rewrap.stdout)
    assert report["complete"] and report["active_kid"] == body["new_kid"]
    assert CANARY not in rotated.output + rewrap.output


def test_cli_rewrap_exits_non_zero_while_a_key_is_still_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(tmp_path / "data")
    monkeypatch.setenv("REMIT_MASTER_KEY", MasterKey.generate().to_b64().reveal())
    assert runner.invoke(app, ["secrets", "put", "k", "--data-dir", data], input="v").exit_code == 0
    monkeypatch.setenv("REMIT_MASTER_KEY", MasterKey.generate().to_b64().reveal())
    result = runner.invoke(app, ["secrets", "rewrap", "--data-dir", data])
    assert result.exit_code == EXIT_CODES["sealed"]
    assert "still needed" in result.output


# ---------------------------------------------------------------------- over HTTP, live


def test_rotation_over_http_while_a_replica_keeps_serving_credentials(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    server = _build(settings)
    replica = _build(settings)  # another replica on the same data: the agents' side
    server.put_secret("billing.key", Secret(CANARY))
    obligation_kinds: set[str] = set()
    failures: list[str] = []
    calls = 0
    stop = threading.Event()
    try:
        shared, _ = _setup_lease(replica)
        ceiling = dict(CEILING, tools=[*CEILING["tools"], "billing/charge", "billing/once"])
        agent = replica.register_agent("loop-bot", owner="sam@acme.example", ceiling=ceiling)
        session = AgentSession.attest(replica, replica.create_join_token(agent.agent_id))
        task = open_task(
            session, tools=["billing/charge", "billing/once", "docs/read"], call_budget=10_000
        )

        def keep_calling() -> None:
            nonlocal calls
            while not stop.is_set():
                for tool, header, value in (
                    ("billing/charge", "Authorization", f"Bearer {CANARY}"),
                    ("billing/once", "X-Once", CANARY),
                ):
                    try:
                        decision = task.authorize(tool, {"n": calls})
                        if not decision.allowed:
                            failures.append(f"{tool}: {decision.explain()}")
                            continue
                        (obligation,) = decision.obligations
                        obligation_kinds.add(obligation.kind)
                        got = replica.credential_for(obligation).headers[header]
                        if got != Secret(value):
                            failures.append(f"{tool}: wrong value")
                    except RemitError as exc:
                        failures.append(f"{tool}: {exc.code}/{exc.reason}")
                    calls += 1

        _, admin = server.create_admin_token("ops", scopes=["admin"])
        _, reader = server.create_admin_token("viewer", scopes=["readonly"])
        with running_server(server) as url, RemitClient(url, admin_token=admin) as client:
            with RemitClient(url, admin_token=reader) as weak, pytest.raises(RemitError) as no:
                weak.rotate_master_key()
            assert no.value.code == "forbidden"
            # The action paths are not secret names: a PUT there stores nothing.
            put = httpx.put(
                f"{url}/v1/secrets/rewrap",
                json={"value": CANARY},
                headers={"Authorization": f"Bearer {admin.reveal()}"},
            )
            assert put.status_code == 405 and put.headers["Allow"] == "POST"
            worker = threading.Thread(target=keep_calling, daemon=True)
            worker.start()
            rotations = []
            for _ in range(4):
                time.sleep(0.15)
                rotations.append(client.rotate_master_key())
            cli = runner.invoke(
                app,
                ["secrets", "rotate-master", "--url", url, "--token", admin.reveal(), "--json"],
            )
            assert cli.exit_code == 0, cli.output
            rotations.append(json.loads(cli.stdout))
            time.sleep(0.15)
            report = client.rewrap_secrets()
            stop.set()
            worker.join(timeout=60)
        assert not worker.is_alive()
        assert failures == []
        assert calls >= 10, calls
        kids = [r["new_kid"] for r in rotations]
        assert len(set(kids)) == 5
        for r in rotations:  # key ids and counts only
            assert set(r) == {
                "old_kid",
                "new_kid",
                "rewrapped",
                "lease_values",
                "retired",
                "still_needed",
            }
        assert report["active_kid"] == kids[-1] and report["complete"]
        assert CANARY not in json.dumps(rotations) + json.dumps(report)
        # The shared lease issued before every rotation still opens in the replica.
        assert replica.credential_for(shared).headers["Authorization"] == Secret(f"Bearer {CANARY}")
    finally:
        stop.set()
        replica.close()
        server.close()
    _fresh_reads(settings, {"billing.key": CANARY})


def test_retire_unused_never_deletes_a_key_file_it_could_not_read(tmp_path: Path) -> None:
    from remit.keystore import MasterKeyStore

    path = tmp_path / "keys" / "master.key"
    first = MasterKeyStore(path)
    old, _new = first.rotate()
    retained = path.parent / f"master-{old.kid}.key"
    assert retained.exists()
    # A fresh process that cannot read the retained file (damaged here) must keep it:
    # deleting it would lose the only copy of a key this process never held.
    retained.write_text("not a key", encoding="ascii")
    fresh = MasterKeyStore(path)
    assert fresh.retire_unused(set()) == []
    assert retained.exists()
    # Readable again: retired as usual (the key is held in memory first).
    retained.write_text(old.to_b64().reveal(), encoding="ascii")
    assert fresh.retire_unused(set()) == [old.kid]
    assert not retained.exists() and fresh.find(old.kid) is not None
