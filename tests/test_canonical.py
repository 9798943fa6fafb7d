"""Canonical JSON and argument digests: the same value always gives the same digest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remit.canonical import JsonLimits, canonical_bytes, check_json, digest, parse_json_strict
from remit.errors import InvalidRequest

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


def shuffled(value: Any, rnd: Any) -> Any:
    """The same JSON value with every object's keys in another insertion order."""
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


@given(values, st.randoms())
def test_digest_ignores_key_order(value: Any, rnd: Any) -> None:
    assert digest(value) == digest(shuffled(value, rnd))


@given(values)
def test_digest_survives_a_json_round_trip(value: Any) -> None:
    assert digest(json.loads(json.dumps(value))) == digest(value)
    assert parse_json_strict(canonical_bytes(value)) == value


@given(values, values)
def test_different_values_have_different_digests(a: Any, b: Any) -> None:
    if canonical_bytes(a) != canonical_bytes(b):
        assert digest(a) != digest(b)


def test_canonical_form_is_compact_and_sorted() -> None:
    assert canonical_bytes({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    assert digest({}) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        float("inf"),
        2**53,
        {1: "non-string key"},
        {"s": {1, 2}},
        "\ud800",  # a lone surrogate
        b"bytes",
    ],
)
def test_non_json_values_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidRequest):
        check_json(bad)


def test_limits() -> None:
    limits = JsonLimits(max_depth=3, max_bytes=100, max_string=10, max_items=3)
    check_json({"a": {"b": 1}}, limits)
    for bad in (
        {"a": {"b": {"c": 1}}},
        "x" * 11,
        [1, 2, 3, 4],
        {"k": "y" * 9, "l": "z" * 9, "m": "w" * 9, "n": 1},
    ):
        with pytest.raises(InvalidRequest):
            check_json(bad, limits)
    deep: Any = 1
    for _ in range(100_000):  # iterative check: no RecursionError
        deep = [deep]
    with pytest.raises(InvalidRequest):
        check_json(deep)


@pytest.mark.parametrize(
    "text",
    ['{"a":1,"a":2}', '{"a":NaN}', '{"a":Infinity}', "[1,", "[" * 100_000 + "]" * 100_000, "\x00"],
)
def test_strict_parser_refuses(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_json_strict(text)
