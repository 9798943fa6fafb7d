"""Signing key rotation with overlap: time-based retirement, persistence, file modes."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.config import Settings
from remit.core.keys import SigningKey
from remit.errors import InvalidRequest, InvalidToken, StoreUnavailable, TokenExpired
from remit.keystore import FileKeyStore, check_key_overlap, check_settings_overlap
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit
from tests.conftest import CATALOG, CEILING, PRINCIPAL, make_settings, open_task


def _kid(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "=="))
    kid = header["kid"]
    assert isinstance(kid, str)
    return kid


def _jwks_kids(remit: Remit) -> set[str]:
    return {key["kid"] for key in remit.jwks()["keys"]}


def _signing_files(key_dir: Path) -> list[str]:
    return sorted(p.name for p in key_dir.glob("signing-*.pem"))


def _new_session(remit: Remit, clock: ManualClock, name: str) -> AgentSession:
    agent = remit.register_agent(name, owner="sam@acme.example", ceiling=CEILING)
    return AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)


# ---------------------------------------------------------------------- rotation with overlap


def test_rotation_overlap_then_retirement(
    remit: Remit, clock: ManualClock, agent_session: AgentSession, task: TaskSession
) -> None:
    overlap = remit.settings.key_overlap_seconds
    old_kid = remit.keys.keyset().active.kid
    assert _kid(task.token) == old_kid

    new_kid = remit.rotate_signing_keys()
    assert new_kid != old_kid
    assert _jwks_kids(remit) == {old_kid, new_kid}
    assert remit.jwks()["keys"][0]["kid"] == new_kid  # newest first

    # Signed by the old key, still inside the overlap: still authorizes.
    assert task.authorize("docs/read", {}).allowed
    fresh = open_task(agent_session)
    assert _kid(fresh.token) == new_kid
    assert fresh.authorize("docs/read", {}).allowed

    # Just before the end of the overlap the old key is still published.
    clock.advance(overlap - 1)
    assert _jwks_kids(remit) == {old_kid, new_kid}

    # After it, the old key is gone from the JWKS, the key set and the disk.
    clock.advance(2)
    assert _jwks_kids(remit) == {new_kid}
    assert remit.keys.keyset().get(old_kid) is None
    assert len(_signing_files(remit.settings.key_dir)) == 1
    with pytest.raises(InvalidToken) as refused:
        task.authorize("docs/read", {})
    assert refused.value.reason == "unknown_kid"

    # The new key goes on signing and verifying.
    later = open_task(_new_session(remit, clock, "second-assistant"))
    assert _kid(later.token) == new_kid
    assert later.authorize("docs/read", {}).allowed


def test_retired_key_is_refused_even_from_the_token_cache(
    remit: Remit, clock: ManualClock, task: TaskSession
) -> None:
    # An overlap shorter than the token's life (a misconfiguration) shows that retirement
    # wins over the verified-token cache: the token is unexpired and cached, yet refused.
    old_kid = _kid(task.token)
    assert task.authorize("docs/read", {}).allowed  # cached now
    remit.keys.rotate(60)
    clock.advance(30)
    assert task.authorize("docs/read", {}).allowed
    clock.advance(31)
    assert remit.keys.keyset().get(old_kid) is None
    with pytest.raises(InvalidToken) as refused:
        task.authorize("docs/read", {})
    assert refused.value.reason == "unknown_kid"
    assert not isinstance(refused.value, TokenExpired)


def test_each_superseded_key_retires_on_its_own_schedule(tmp_path: Path) -> None:
    clock = ManualClock(1_000_000.0)
    store = FileKeyStore(tmp_path / "keys", clock)
    k0 = store.keyset().active.kid
    clock.advance(10)
    k1 = store.rotate(100).active.kid
    clock.advance(50)
    k2 = store.rotate(100).active.kid
    assert [k.kid for k in store.keyset()] == [k0, k1, k2]
    assert store.retire_times() == {k0: 1_000_110.0, k1: 1_000_160.0}
    clock.advance(50)  # t = 110: k0's overlap is over, k1's is not
    assert [k.kid for k in store.keyset()] == [k1, k2]
    clock.advance(50)
    assert [k.kid for k in store.keyset()] == [k2]
    assert store.retire_times() == {}
    assert _signing_files(tmp_path / "keys") == ["signing-1000060.pem"]


def test_rotations_within_one_second_get_distinct_times(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys", ManualClock(500.25))
    kids = {store.keyset().active.kid, store.rotate(10).active.kid, store.rotate(10).active.kid}
    assert len(kids) == 3
    assert [k.created_at for k in store.keyset()] == [500.0, 501.0, 502.0]


# ---------------------------------------------------------------------- overlap validation


def test_overlap_must_cover_the_longest_token() -> None:
    assert check_settings_overlap(Settings()) == 7200.0
    assert check_key_overlap(3605, identity_ttl_seconds=3600, task_token_max_ttl_seconds=900) == (
        3605.0
    )
    with pytest.raises(InvalidRequest) as short:
        check_key_overlap(3600, identity_ttl_seconds=3600, task_token_max_ttl_seconds=900)
    assert short.value.reason == "bad_key_overlap"
    with pytest.raises(InvalidRequest):
        check_key_overlap(1000, identity_ttl_seconds=600, task_token_max_ttl_seconds=1200)
    with pytest.raises(InvalidRequest):
        check_settings_overlap(Settings(key_overlap_seconds=1800))
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(InvalidRequest):
            check_key_overlap(bad, identity_ttl_seconds=1, task_token_max_ttl_seconds=1)


def test_rotate_refuses_a_bad_overlap(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys", ManualClock())
    before = store.keyset()
    with pytest.raises(InvalidRequest):
        store.rotate(-5)
    assert store.keyset() == before
    assert len(_signing_files(tmp_path / "keys")) == 1


# ---------------------------------------------------------------------- restart and files


def test_keys_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    settings = make_settings(tmp_path)
    first = build_remit(settings, clock=clock, catalog=catalog_from_yaml(CATALOG))
    try:
        first.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
        session = _new_session(first, clock, "support-assistant")
        old_task = open_task(session)
        old_kid = _kid(old_task.token)
        new_kid = first.rotate_signing_keys()
        retire = first.keys.retire_times()
    finally:
        first.close()

    clock.advance(60)
    second = build_remit(settings, clock=clock, catalog=catalog_from_yaml(CATALOG))
    try:
        assert second.keys.keyset().active.kid == new_kid
        assert _jwks_kids(second) == {old_kid, new_kid}
        assert second.keys.retire_times() == retire
        # The old token, signed before the restart, still verifies after it.
        assert second.tokens.verify_task(old_task.token).task_id == old_task.task_id
        new_token = open_task(_new_session(second, clock, "other-assistant")).token
        assert _kid(new_token) == new_kid
    finally:
        second.close()

    # Retired while Remit was down: dropped (and deleted) at the next start.
    clock.set(retire[old_kid])
    third = build_remit(settings, clock=clock, catalog=catalog_from_yaml(CATALOG))
    try:
        assert _jwks_kids(third) == {new_kid}
        assert len(_signing_files(settings.key_dir)) == 1
        with pytest.raises(InvalidToken) as refused:
            third.tokens.verify_task(old_task.token)
        assert refused.value.reason == "unknown_kid"
    finally:
        third.close()


def test_key_files_are_private(remit: Remit) -> None:
    remit.rotate_signing_keys()
    key_dir = remit.settings.key_dir
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    files = list(key_dir.iterdir())
    assert {p.name for p in files} >= {"audit.pem"}
    assert len(_signing_files(key_dir)) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_a_superseded_key_without_a_retire_time_gets_the_default_overlap(tmp_path: Path) -> None:
    # As after a crash between writing the new key and renaming the old one.
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    old, new = SigningKey.generate(1000.0), SigningKey.generate(2000.0)
    for key in (old, new):
        (key_dir / f"signing-{int(key.created_at)}.pem").write_text(key.to_pem().reveal())
    clock = ManualClock(2500.0)
    store = FileKeyStore(key_dir, clock, default_overlap_seconds=600)
    assert store.keyset().active.kid == new.kid
    assert store.retire_times() == {old.kid: 2600.0}
    assert _signing_files(key_dir) == ["signing-1000-2600.pem", "signing-2000.pem"]
    clock.set(2600.0)
    assert [k.kid for k in store.keyset()] == [new.kid]
    assert _signing_files(key_dir) == ["signing-2000.pem"]


def test_the_newest_key_stays_active_even_if_marked_retiring(tmp_path: Path) -> None:
    # Its successor's file is gone: never leave Remit without a signing key.
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    key = SigningKey.generate(1000.0)
    (key_dir / "signing-1000-1100.pem").write_text(key.to_pem().reveal())
    store = FileKeyStore(key_dir, ManualClock(5000.0))
    assert store.keyset().active.kid == key.kid
    assert store.retire_times() == {}
    rotated = store.rotate(100)
    assert rotated.keys[0].kid == key.kid and len(rotated) == 2
    assert store.retire_times() == {key.kid: 5100.0}


def test_an_unknown_key_file_name_fails_closed(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    (key_dir / "signing-latest.pem").write_text("not a key")
    with pytest.raises(StoreUnavailable):
        FileKeyStore(key_dir, ManualClock()).keyset()


def test_a_corrupt_key_file_is_refused(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    (key_dir / "signing-1000.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(InvalidRequest) as bad:
        FileKeyStore(key_dir, ManualClock()).keyset()
    assert "AAAA" not in bad.value.message


def test_build_remit_refuses_an_overlap_shorter_than_a_token(tmp_path: Path) -> None:
    from remit.errors import InvalidRequest
    from remit.runtime import build_remit, catalog_from_yaml

    from .conftest import CATALOG, make_settings

    with pytest.raises(InvalidRequest):
        build_remit(
            make_settings(tmp_path, key_overlap_seconds=60), catalog=catalog_from_yaml(CATALOG)
        )
