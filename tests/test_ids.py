from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remit.errors import InvalidRequest
from remit.ids import SpiffeId, check_name, check_principal_id, check_random_id, new_id


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://acme.example/agent/support",
        "spiffe://td/a/b/c",
        "spiffe://a-b_c.d/x.y-z_1",
    ],
)
def test_valid_spiffe_ids_round_trip(value: str) -> None:
    assert str(SpiffeId.parse(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "http://acme.example/agent/x",
        "spiffe://",
        "spiffe://acme.example",
        "spiffe://acme.example/",
        "spiffe://ACME.example/agent/x",  # trust domains are lowercase
        "spiffe://acme.example/agent/x/",
        "spiffe://acme.example/agent//x",
        "spiffe://acme.example/agent/../x",
        "spiffe://acme.example/agent/./x",
        "spiffe://acme.example/agent/x?q=1",
        "spiffe://acme.example/agent/x#f",
        "spiffe://user@acme.example/agent/x",
        "spiffe://acme.example:8080/agent/x",
        "spiffe://acme.example/agent/sup\u0440ort",  # Cyrillic р
        "spiffe://acme.example/agent/" + "x" * 2100,
        "SPIFFE://acme.example/agent/x",
        None,
        42,
    ],
)
def test_malformed_spiffe_ids_are_refused(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        SpiffeId.parse(value)
    assert info.value.reason == "malformed_spiffe_id"


def test_agent_ids() -> None:
    assert str(SpiffeId.for_agent("acme.example", "support-assistant")) == (
        "spiffe://acme.example/agent/support-assistant"
    )
    for bad in ("Support", "a b", "-x", "x-", "ѕupport", "a" * 65, ""):
        with pytest.raises(InvalidRequest):
            check_name(bad)


def test_principal_ids() -> None:
    assert check_principal_id("user:sam@acme.example") == "user:sam@acme.example"
    for bad in ("sam", "user:", "user:s am", "user:ѕam@x", ":x", "u" * 20 + ":x"):
        with pytest.raises(InvalidRequest):
            check_principal_id(bad)


@given(st.sampled_from(["tsk", "ins", "dec"]))
def test_random_ids(prefix: str) -> None:
    value = new_id(prefix)
    assert check_random_id(value, prefix, "x") == value
    with pytest.raises(InvalidRequest):
        check_random_id(value, "zzz", "x")
