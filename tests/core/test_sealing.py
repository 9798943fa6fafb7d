"""Envelope encryption: round trips, AAD binding, wrong keys, re-wrapping."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remit.core.sealing import MasterKey, SealedSecret, rewrap, seal, unseal
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, SealError

CANARY = "canary-7f3a9c-DO-NOT-LEAK"
MASTER = MasterKey.generate()


def test_round_trip_and_nothing_plaintext() -> None:
    sealed = seal("db.password", Secret(CANARY), MASTER)
    assert sealed.master_kid == MASTER.kid and sealed.version == 1
    assert CANARY.encode() not in sealed.ciphertext + sealed.wrapped_key + sealed.nonce
    assert unseal(sealed, [MASTER]) == Secret(CANARY)
    assert CANARY not in repr(sealed) and CANARY not in str(sealed)


def test_each_seal_uses_a_fresh_data_key_and_nonce() -> None:
    a = seal("x", Secret(CANARY), MASTER)
    b = seal("x", Secret(CANARY), MASTER)
    assert a.ciphertext != b.ciphertext and a.wrapped_key != b.wrapped_key


def test_master_key_id_is_a_short_digest_and_repr_hides_the_key() -> None:
    key = MasterKey(b"\x01" * 32)
    assert key.kid == MasterKey(b"\x01" * 32).kid != MasterKey(b"\x02" * 32).kid
    assert len(key.kid) == 16
    assert key.to_b64().reveal() not in repr(key)
    assert MasterKey.from_b64(key.to_b64()).kid == key.kid


@pytest.mark.parametrize("text", ["", "not base64!!", "AAAA"])
def test_bad_master_key_text(text: str) -> None:
    with pytest.raises(SealError) as info:
        MasterKey.from_b64(Secret(text))
    assert info.value.code == "sealed"


def test_wrong_master_key_fails_clearly_and_decrypts_nothing() -> None:
    sealed = seal("api", Secret(CANARY), MASTER)
    other = MasterKey.generate()
    with pytest.raises(SealError) as info:
        unseal(sealed, [other])
    assert info.value.reason == "master_key_missing"
    assert MASTER.kid in info.value.message
    assert CANARY not in str(info.value) and CANARY not in repr(info.value)
    # A different key claiming the same id (a forged or corrupted key) fails too.
    forged = replace(sealed, master_kid=other.kid)
    with pytest.raises(SealError) as forged_info:
        unseal(forged, [other])
    assert forged_info.value.reason == "unwrap_failed"


def test_ciphertext_moved_to_another_name_or_version_fails() -> None:
    sealed = seal("prod.key", Secret(CANARY), MASTER)
    for moved in (replace(sealed, name="dev.key"), replace(sealed, version=2)):
        with pytest.raises(SealError):
            unseal(moved, [MASTER])
    # Even with a data key legitimately wrapped for the new name, the value's AAD refuses.
    target = seal("dev.key", Secret("other"), MASTER)
    spliced = replace(target, nonce=sealed.nonce, ciphertext=sealed.ciphertext)
    with pytest.raises(SealError) as info:
        unseal(spliced, [MASTER])
    assert info.value.reason == "decrypt_failed"
    assert CANARY not in info.value.message


def test_tampered_ciphertext_fails() -> None:
    sealed = seal("x", Secret(CANARY), MASTER)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(SealError):
        unseal(replace(sealed, ciphertext=flipped), [MASTER])


def test_rewrap_keeps_the_ciphertext_and_drops_the_old_master() -> None:
    sealed = seal("x", Secret(CANARY), MASTER)
    new = MasterKey.generate()
    moved = rewrap(sealed, [MASTER], new)
    assert (moved.nonce, moved.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert moved.master_kid == new.kid and moved.wrapped_key != sealed.wrapped_key
    assert unseal(moved, [new]) == Secret(CANARY)
    with pytest.raises(SealError):
        unseal(moved, [MASTER])


def test_seal_checks_its_inputs() -> None:
    with pytest.raises(InvalidRequest):
        seal("x", CANARY, MASTER)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        seal("x", Secret("v"), MASTER, version=0)
    with pytest.raises(InvalidRequest):
        seal("x", Secret("v" * (64 * 1024 + 1)), MASTER)


def test_master_keys_are_not_picklable() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(MASTER)


@settings(max_examples=60, deadline=None)
@given(
    name=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True),
    value=st.text(max_size=300),
    version=st.integers(min_value=1, max_value=2**31),
)
def test_seal_unseal_round_trip(name: str, value: str, version: int) -> None:
    sealed = seal(name, Secret(value), MASTER, version=version)
    assert isinstance(sealed, SealedSecret)
    assert unseal(sealed, [MasterKey.generate(), MASTER]).reveal() == value
