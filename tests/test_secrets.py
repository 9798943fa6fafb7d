"""Sealed secrets through the service and the CLI: a canary value never leaks."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from remit.cli import EXIT_CODES, app
from remit.clock import ManualClock
from remit.config import load_settings
from remit.core.sealing import MasterKey
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, NotFound, SealError
from remit.runtime import build_remit
from remit.service import Remit
from tests.conftest import make_settings

CANARY = "canary-5e1d0b-NEVER-PRINT-ME"
runner = CliRunner()


def _disk_bytes(data_dir: Path) -> bytes:
    """Every byte Remit wrote under the data dir except the master key files."""
    out = b""
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("master"):
            out += path.read_bytes()
    return out


def _audit_text(remit: Remit) -> str:
    remit.audit.flush()
    return "\n".join(json.dumps(r.data) + r.kind for r in remit.store.iter_audit())


def test_round_trip_and_versions(remit: Remit) -> None:
    info = remit.put_secret("db.password", Secret(CANARY))
    assert (info.name, info.version) == ("db.password", 1)
    assert remit.reveal_secret("db.password") == Secret(CANARY)
    again = remit.put_secret("db.password", Secret(CANARY + "-2"))
    assert again.version == 2
    assert remit.reveal_secret("db.password").reveal() == CANARY + "-2"
    listed = remit.list_secrets()
    assert [(i.name, i.version) for i in listed] == [("db.password", 2)]


def test_master_key_file_is_created_0600_in_a_0700_dir(remit: Remit) -> None:
    path = remit.settings.master_key_path
    assert not path.exists()  # created on first use only
    remit.put_secret("x", Secret(CANARY))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_canary_never_on_disk_in_audit_listing_or_reprs(remit: Remit) -> None:
    info = remit.put_secret("api.key", Secret(CANARY))
    value = remit.reveal_secret("api.key")
    remit.rotate_master_key()
    remit.audit.flush()
    assert CANARY.encode() not in _disk_bytes(remit.settings.data_dir)
    audit = _audit_text(remit)
    assert CANARY not in audit
    assert "secret.put" in audit and "secret.revealed" in audit
    assert "master_key.rotated" in audit
    listing = remit.list_secrets()
    assert CANARY not in repr(listing) + repr(info) + json.dumps([i.to_data() for i in listing])
    assert CANARY not in repr(value) + str(value)
    stored = remit.store.get_secret("api.key")
    assert stored is not None and CANARY not in repr(stored)
    assert CANARY not in repr(remit.masters.active())


def test_refusals_are_audited_without_values(remit: Remit) -> None:
    with pytest.raises(InvalidRequest):
        remit.put_secret("Bad Name!", Secret(CANARY))
    with pytest.raises(InvalidRequest):
        remit.put_secret("empty", Secret(""))
    with pytest.raises(NotFound):
        remit.reveal_secret("missing")
    audit = _audit_text(remit)
    assert "secret.put" in audit and "secret.reveal" in audit
    assert CANARY not in audit


def test_wrong_master_key_fails_clearly_and_decrypts_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    right = MasterKey.generate()
    settings = make_settings(tmp_path, master_key=right.to_b64())
    first = build_remit(settings, clock=clock)
    try:
        first.put_secret("api.key", Secret(CANARY))
        assert not settings.master_key_path.exists()  # the env key: no key file
    finally:
        first.close()
    wrong = build_remit(replace(settings, master_key=MasterKey.generate().to_b64()), clock=clock)
    try:
        with pytest.raises(SealError) as info:
            wrong.reveal_secret("api.key")
        assert info.value.code == "sealed" and info.value.reason == "master_key_missing"
        assert right.kid in info.value.message and CANARY not in str(info.value)
        assert CANARY not in _audit_text(wrong) and "sealed" in _audit_text(wrong)
        with pytest.raises(InvalidRequest):  # an env key is rotated by the operator, not here
            wrong.rotate_master_key()
    finally:
        wrong.close()


def test_a_row_moved_to_another_name_does_not_open(remit: Remit) -> None:
    remit.put_secret("prod.key", Secret(CANARY))
    remit.put_secret("dev.key", Secret("harmless"))
    from sqlalchemy import update

    from remit.store import schema as t

    prod = remit.store.get_secret("prod.key")
    assert prod is not None
    with remit.store.engine.begin() as conn:
        conn.execute(
            update(t.secrets)
            .where(t.secrets.c.name == "dev.key")
            .values(
                wrapped_key=prod.sealed.wrapped_key,
                nonce=prod.sealed.nonce,
                ciphertext=prod.sealed.ciphertext,
            )
        )
    with pytest.raises(SealError) as info:
        remit.reveal_secret("dev.key")
    assert CANARY not in str(info.value)


def test_rotation_keeps_every_secret_and_retires_the_old_master(remit: Remit) -> None:
    for i in range(5):
        remit.put_secret(f"s{i}", Secret(f"{CANARY}-{i}"))
    before = {r.name: r.sealed for r in remit.store.list_secrets()}
    old_kid = remit.masters.active().kid
    done = remit.rotate_master_key()
    assert done.old_kid == old_kid and done.new_kid != old_kid
    assert done.rewrapped == 5 and done.retired == (old_kid,)
    key_dir = remit.settings.master_key_path.parent
    assert sorted(p.name for p in key_dir.glob("master*")) == ["master.key"]
    for r in remit.store.list_secrets():
        assert r.sealed.master_kid == done.new_kid and r.rotated_at is not None
        assert r.sealed.ciphertext == before[r.name].ciphertext  # values untouched
    # A fresh process with only the new key file reads everything.
    settings = remit.settings
    remit.close()
    again = build_remit(settings, clock=ManualClock())
    try:
        for i in range(5):
            assert again.reveal_secret(f"s{i}").reveal() == f"{CANARY}-{i}"
        assert again.rotate_master_key().rewrapped == 5
    finally:
        again.close()


def test_a_half_done_rotation_keeps_the_old_key_and_finishes_next_time(remit: Remit) -> None:
    remit.put_secret("a", Secret(CANARY))
    old, new = remit.masters.rotate()  # crashed before re-wrapping anything
    assert (remit.settings.master_key_path.parent / f"master-{old.kid}.key").exists()
    assert remit.reveal_secret("a").reveal() == CANARY  # old key retained: still readable
    remit.put_secret("b", Secret(CANARY))  # sealed by the new key
    done = remit.rotate_master_key()
    assert done.rewrapped == 2 and set(done.retired) == {old.kid, new.kid}
    assert remit.reveal_secret("a").reveal() == remit.reveal_secret("b").reveal() == CANARY


def test_master_key_is_environment_only(tmp_path: Path) -> None:
    key = MasterKey.generate().to_b64().reveal()
    settings = load_settings({"REMIT_MASTER_KEY": key})
    assert settings.master_key == Secret(key) and key not in repr(settings)
    config = tmp_path / "remit.toml"
    config.write_text(f'master_key = "{key}"\n')
    with pytest.raises(InvalidRequest) as info:
        load_settings({}, config_file=config)
    assert key not in str(info.value)


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REMIT_MASTER_KEY", "REMIT_CONFIG", "REMIT_URL", "REMIT_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_cli_put_list_rotate_never_print_a_value(tmp_path: Path, cli_env: None) -> None:
    data = str(tmp_path / "data")
    put = runner.invoke(app, ["secrets", "put", "api.key", "--data-dir", data], input=CANARY + "\n")
    assert put.exit_code == 0, put.output
    assert "api.key" in put.output and CANARY not in put.output
    put2 = runner.invoke(
        app, ["secrets", "put", "api.key", "--data-dir", data, "--json"], input=CANARY
    )
    assert put2.exit_code == 0 and json.loads(put2.stdout)["version"] == 2
    listed = runner.invoke(app, ["secrets", "list", "--data-dir", data, "--json"])
    assert listed.exit_code == 0 and CANARY not in listed.output
    rows = json.loads(listed.stdout)["secrets"]
    assert [(r["name"], r["version"]) for r in rows] == [("api.key", 2)]
    table = runner.invoke(app, ["secrets", "list", "--data-dir", data])
    assert table.exit_code == 0 and "api.key" in table.output and CANARY not in table.output
    rotated = runner.invoke(app, ["secrets", "rotate-master", "--data-dir", data, "--json"])
    assert rotated.exit_code == 0 and CANARY not in rotated.output
    assert json.loads(rotated.stdout)["rewrapped"] == 1
    assert CANARY.encode() not in _disk_bytes(tmp_path / "data")
    # The value stored is the piped one, without the trailing newline.
    remit = build_remit(load_settings({}).with_data_dir(tmp_path / "data"))
    try:
        assert remit.reveal_secret("api.key").reveal() == CANARY
    finally:
        remit.close()


def test_cli_value_is_never_an_argument(tmp_path: Path, cli_env: None) -> None:
    result = runner.invoke(
        app, ["secrets", "put", "api.key", CANARY, "--data-dir", str(tmp_path)], input="x"
    )
    assert result.exit_code != 0


def test_cli_wrong_master_key_exit_code(
    tmp_path: Path, cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    put = runner.invoke(app, ["secrets", "put", "k", "--data-dir", str(data)], input=CANARY)
    assert put.exit_code == 0
    # The key file still opens what it sealed even when an env key takes over...
    monkeypatch.setenv("REMIT_MASTER_KEY", MasterKey.generate().to_b64().reveal())
    remit = build_remit(load_settings().with_data_dir(data))
    try:
        assert remit.reveal_secret("k").reveal() == CANARY
        # ...but without it, the wrong master key opens nothing.
        remit.settings.master_key_path.unlink()
        remit.masters = type(remit.masters).from_settings(remit.settings)
        with pytest.raises(SealError):
            remit.reveal_secret("k")
    finally:
        remit.close()
    monkeypatch.setenv("REMIT_MASTER_KEY", "not-a-key")
    broken = runner.invoke(app, ["secrets", "put", "k", "--data-dir", str(data)], input="x")
    assert broken.exit_code == EXIT_CODES["sealed"] == 10
    assert "not-a-key" not in broken.output
