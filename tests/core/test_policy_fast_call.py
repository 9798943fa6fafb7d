"""The policy engine calls cedarpy's extension directly (``_CEDAR_BATCH``); it must
decide exactly like the public ``cedarpy.is_authorized`` wrapper, schema
validation included: a missing, extra or mistyped attribute denies on both."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import remit.core.policy as policy_module
from remit.core.policy import POLICY_ERROR, PolicyEngine, PolicyRequest
from tests.core.test_policy import AGENT, context

ENGINE = PolicyEngine()
values = (
    st.none()
    | st.booleans()
    | st.integers(-5, 2**70)
    | st.text(max_size=5)
    | st.lists(st.text(max_size=3) | st.integers(0, 3), max_size=3)
    | st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2)
)


def decide_both(request: PolicyRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = ENGINE.evaluate(request)
    with monkeypatch.context() as m:
        m.setattr(policy_module, "_CEDAR_BATCH", None)
        slow = ENGINE.evaluate(request)
    return fast, slow


def test_the_fast_call_is_in_use() -> None:
    assert policy_module._CEDAR_BATCH is not None
    assert ENGINE._state.entities_inner is not None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["drop", "set", "add", "task-drop", "task-set"]),
            st.sampled_from(sorted(context())),
            values,
        ),
        min_size=0,
        max_size=3,
    ),
    st.sampled_from(["read", "write", "act"]),
)
def test_random_contexts_decide_the_same_on_both_paths(
    edits: list[tuple[str, str, Any]], action: str
) -> None:
    ctx: dict[str, Any] = copy.deepcopy(context())
    for op, key, value in edits:
        if op == "drop":
            ctx.pop(key, None)
        elif op == "set":
            ctx[key] = value
        elif op == "add":
            ctx[key + "_extra"] = value
        elif op == "task-drop" and isinstance(ctx.get("task"), dict):
            ctx["task"].pop(sorted(ctx["task"])[hash(key) % len(ctx["task"])], None)
        elif op == "task-set" and isinstance(ctx.get("task"), dict):
            ctx["task"]["id"] = value
    request = PolicyRequest(agent_id=AGENT, action=action, tool="email/search", context=ctx)
    with pytest.MonkeyPatch.context() as mp:
        fast, slow = decide_both(request, mp)
    assert (fast.allowed, fast.reasons, fast.errors) == (slow.allowed, slow.reasons, slow.errors)
    well_formed = ctx == context() or _types_match(ctx)
    if not well_formed:
        assert not fast.allowed and POLICY_ERROR in fast.reasons


def _types_match(ctx: dict[str, Any]) -> bool:
    """Whether ``ctx`` has exactly the schema's attributes with the right JSON types."""
    base: dict[str, Any] = dict(context())
    task = ctx.get("task")
    if set(ctx) != set(base) or not isinstance(task, dict) or set(task) != set(base["task"]):
        return False
    pairs = [(task[k], v) for k, v in base["task"].items()]
    pairs += [(ctx[k], v) for k, v in base.items() if k != "task"]
    for got, want in pairs:
        if isinstance(want, list | tuple | set | frozenset):
            if not isinstance(got, list) or not all(isinstance(x, str) for x in got):
                return False
        elif type(got) is not type(want) or (isinstance(got, int) and abs(got) >= 2**63):
            return False
    return True
