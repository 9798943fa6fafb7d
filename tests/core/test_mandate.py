from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remit.core.catalog import catalog_from_data
from remit.core.destinations import normalize_destination, parse_pattern
from remit.core.identity import (
    Agent,
    AgentStatus,
    Mode,
    Principal,
    ceiling_from_data,
    pattern_within,
)
from remit.core.labels import Sensitivity
from remit.core.mandate import (
    Mandate,
    MandateLimits,
    build_mandate,
    check_call,
    classify_destinations,
)
from remit.errors import Denied, InvalidRequest

CATALOG = catalog_from_data(
    {
        "tools": [
            {"name": "docs/read", "privilege": "read", "labels": ["internal"]},
            {"name": "crm/read", "privilege": "read", "labels": ["confidential"]},
            {"name": "email/send", "privilege": "act", "destinations": {"to": "email"}},
            {"name": "notes/write", "privilege": "write"},
        ]
    }
)


def agent(**ceiling: Any) -> Agent:
    base: dict[str, Any] = {
        "tools": ["docs/read", "crm/read", "email/send"],
        "privileges": ["read", "act"],
        "destinations": ["email:*@acme.example", "domain:*.partner.example"],
        "max_sensitivity": "confidential",
    }
    base.update(ceiling)
    return Agent(
        "spiffe://t/agent/a",
        "a",
        "o",
        "",
        ceiling_from_data(base, CATALOG),
        AgentStatus.ACTIVE,
        Mode.ENFORCE,
        0,
        0,
    )


LIMITS = MandateLimits()


def build(intent: dict[str, Any], who: Agent | None = None) -> tuple[Mandate, tuple[str, ...]]:
    return build_mandate(intent, agent=who or agent(), catalog=CATALOG, limits=LIMITS)


def test_a_mandate_inside_the_ceiling() -> None:
    mandate, notes = build(
        {
            "purpose": "reply",
            "tools": ["docs/read", "email/send"],
            "destinations": ["email:bob@acme.example", "email:*@x.partner.example"],
            "request_text": "Write to carol@acme.example and to mallory@evil.example",
        }
    )
    assert mandate.tools == {"docs/read", "email/send"}
    assert [str(d) for d in mandate.request_derived] == ["email:carol@acme.example"]
    assert any(
        "outside the agent's ceiling" in n for n in notes
    )  # mallory is left out, not granted
    assert mandate.digest() == Mandate.from_data(mandate.to_data()).digest()
    details = mandate.authorization_details()
    assert (
        details[0]["type"] == "remit_task"
        and "email:carol@acme.example" in details[0]["destinations"]
    )


@pytest.mark.parametrize(
    ("intent", "error"),
    [
        ({"purpose": "x", "tools": ["notes/write"]}, Denied),  # tool outside the ceiling
        (
            {"purpose": "x", "tools": ["docs/read"], "destinations": ["email:*@evil.example"]},
            Denied,
        ),
        (
            {"purpose": "x", "tools": ["docs/read"], "destinations": ["domain:partner.example"]},
            Denied,
        ),  # apex
        ({"purpose": "x", "tools": ["docs/read"], "sensitivity": "restricted"}, Denied),
        ({"purpose": "x", "tools": []}, InvalidRequest),
        ({"purpose": "", "tools": ["docs/read"]}, InvalidRequest),
        ({"purpose": "x", "tools": ["nope/tool"]}, InvalidRequest),
        ({"purpose": "x", "tools": ["docs/read"], "call_budget": 0}, InvalidRequest),
        ({"purpose": "x", "tools": ["docs/read"], "call_budget": True}, InvalidRequest),
        ({"purpose": "x", "tools": ["docs/read"], "ttl_seconds": 10**9}, InvalidRequest),
        ({"purpose": "x", "tools": ["docs/read"], "destinations": ["*"]}, InvalidRequest),
        ({"purpose": "x", "tools": ["docs/read"], "surprise": 1}, InvalidRequest),
        ({"purpose": "x", "tools": ["docs/read"], "request_text": "x" * 9000}, InvalidRequest),
        ("not an object", InvalidRequest),
    ],
)
def test_bad_intents(intent: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        build(intent)


def test_destination_classes() -> None:
    mandate, _ = build(
        {
            "purpose": "x",
            "tools": ["email/send"],
            "destinations": ["email:bob@acme.example", "email:*@x.partner.example"],
            "request_text": "mail carol@acme.example",
        }
    )
    me = Principal(
        "user:sam@acme.example", "Sam", (normalize_destination("email", "sam@acme.example"),)
    )
    dests = [
        normalize_destination("email", a)
        for a in (
            "bob@acme.example",
            "carol@acme.example",
            "sam@acme.example",
            "eve@x.partner.example",
            "eve@evil.example",
        )
    ]
    classes = classify_destinations(mandate, me, dests)
    assert [str(d) for d in classes.explicit] == [
        "email:bob@acme.example",
        "email:carol@acme.example",
        "email:sam@acme.example",
    ]
    assert [str(d) for d in classes.by_pattern] == ["email:eve@x.partner.example"]
    assert [str(d) for d in classes.outside] == ["email:eve@evil.example"]
    check = check_call(
        mandate, spec=CATALOG.tools["crm/read"], classes=classes, calls_used=mandate.call_budget
    )
    assert set(check.violations) == {
        "mandate-tool-scope",
        "mandate-destination-scope",
        "sensitivity-ceiling",
        "budget-exhausted",
    }


def test_pattern_within() -> None:
    p = parse_pattern
    assert pattern_within(p("email:*@a.example"), p("domain:a.example"))
    assert pattern_within(p("email:*@x.a.example"), p("domain:*.a.example"))
    assert pattern_within(p("email:*@*.x.a.example"), p("email:*@*.a.example"))
    assert pattern_within(p("email:bob@x.a.example"), p("email:*@*.a.example"))
    assert not pattern_within(p("email:*@a.example"), p("domain:*.a.example"))
    assert not pattern_within(p("email:*@*.a.example"), p("email:*@a.example"))
    assert not pattern_within(p("domain:*.a.example"), p("email:*@*.a.example"))
    assert not pattern_within(p("email:*@evil-a.example"), p("domain:*.a.example"))
    assert pattern_within(
        p("url:https://api.a.example/v1/x/*"), p("url:https://api.a.example/v1/*")
    )
    assert not pattern_within(
        p("url:https://api.a.example/v10/*"), p("url:https://api.a.example/v1/*")
    )


labels = st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=3)


@given(labels, labels)
def test_within_is_sound_on_samples(inner_labels: list[str], outer_labels: list[str]) -> None:
    """Whenever pattern_within says yes, sample addresses matched by inner are matched by outer."""
    inner = parse_pattern("email:*@*." + ".".join(inner_labels) + ".example")
    outer = parse_pattern("domain:*." + ".".join(outer_labels) + ".example")
    if pattern_within(inner, outer):
        for sub in ("a", "b.c"):
            dest = normalize_destination("email", f"u@{sub}." + ".".join(inner_labels) + ".example")
            assert inner.matches(dest) and outer.matches(dest)


def test_lifetimes_only_shrink() -> None:
    mandate, _ = build({"purpose": "x", "tools": ["docs/read"]})
    assert mandate.ttl_seconds <= LIMITS.max_ttl_seconds
    assert mandate.sensitivity_ceiling <= Sensitivity.CONFIDENTIAL
