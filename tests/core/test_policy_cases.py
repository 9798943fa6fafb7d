from __future__ import annotations

import pytest

from remit.core.catalog import catalog_from_data
from remit.core.policy import PolicyEngine
from remit.core.policy_cases import build_context, parse_cases, run_cases
from remit.errors import InvalidRequest

CATALOG = catalog_from_data(
    {
        "tools": [
            {"name": "email/send", "privilege": "act", "destinations": {"to": "email"}},
            {"name": "docs/read", "privilege": "read"},
        ]
    }
)


def test_cases_pass_and_fail_on_the_baseline() -> None:
    cases = parse_cases(
        {
            "cases": [
                {
                    "name": "clean read",
                    "tool": "docs/read",
                    "expect": "allow",
                    "reasons": ["permit-within-mandate"],
                },
                {
                    "name": "exfil",
                    "tool": "email/send",
                    "context": {
                        "taint_flags": ["untrusted"],
                        "destinations_by_pattern": ["email:b@p.example"],
                    },
                    "expect": "deny",
                    "reasons": ["exfiltration-after-untrusted-read"],
                },
                {
                    "name": "wrong on purpose",
                    "tool": "docs/read",
                    "context": {"tool_in_mandate": False},
                    "expect": "allow",
                },
                {
                    "name": "wrong reasons",
                    "tool": "docs/read",
                    "context": {"budget_remaining": 0},
                    "expect": "deny",
                    "reasons": ["nope"],
                },
            ]
        },
        CATALOG,
    )
    outcomes = run_cases(PolicyEngine(), cases)
    assert [o.passed for o in outcomes] == [True, True, False, False]
    assert outcomes[2].actual == "deny"


def test_context_defaults_and_union_of_destinations() -> None:
    ctx = build_context(
        {"destinations_outside": ["email:x@y.example"], "task": {"sensitivity_ceiling": 3}}
    )
    assert ctx["destinations"] == ["email:x@y.example"]
    assert ctx["task"]["sensitivity_ceiling"] == 3 and ctx["task"]["purpose"] == "policy test"


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"cases": []},
        {"cases": [{"tool": "docs/read"}]},
        {"cases": [{"tool": "unknown/tool", "expect": "allow"}]},
        {"cases": [{"tool": "docs/read", "expect": "maybe"}]},
        {"cases": [{"tool": "docs/read", "expect": "allow", "context": {"taint": 1}}]},
        {"cases": [{"tool": "docs/read", "expect": "allow", "extra": 1}]},
    ],
)
def test_bad_case_files(data: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_cases(data, CATALOG)
