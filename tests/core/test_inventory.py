"""NHI inventory: strict parsing with row numbers, and the sprawl report over seeded data."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remit.core.inventory import (
    AgentRef,
    InventoryImport,
    InventoryItem,
    check_import,
    inventory_report,
    parse_inventory,
)
from remit.errors import InvalidRequest

NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()
DAY = 86_400.0
AGENTS = [
    AgentRef("support-assistant", "spiffe://acme.example/agent/support-assistant"),
    AgentRef("billing-bot", "spiffe://acme.example/agent/billing-bot"),
]
SUPPORT = AGENTS[0].agent_id
BILLING = AGENTS[1].agent_id

SEEDED = """\
id,owner,systems,created,last_rotated,used_by,remit_secret
svc-crm,alice@acme.example,crm;billing,2024-01-01,2026-12-20,support-assistant;spiffe://acme.example/agent/billing-bot,
svc-mail,,mail,2026-12-01,,support-assistant,
billing-api,team-billing,billing,2025-06-01,,billing-bot,billing.key
legacy-ftp,bob,ftp,2020-01-01T10:00:00Z,,,
svc-erp,carol,erp,2025-01-01,2025-06-01,unknown-bot;billing-bot,
"""


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_parse_csv_fields() -> None:
    items = {i.id: i for i in parse_inventory(SEEDED, "csv")}
    assert list(items) == ["svc-crm", "svc-mail", "billing-api", "legacy-ftp", "svc-erp"]
    crm = items["svc-crm"]
    assert crm.owner == "alice@acme.example"
    assert crm.systems == ("crm", "billing")
    assert crm.created == _ts("2024-01-01T00:00:00")
    assert crm.last_rotated == _ts("2026-12-20T00:00:00")
    assert crm.used_by == ("support-assistant", BILLING)
    assert items["svc-mail"].owner is None
    assert items["svc-mail"].last_rotated is None
    assert items["billing-api"].remit_secret == "billing.key"
    assert items["legacy-ftp"].created == _ts("2020-01-01T10:00:00")
    assert items["legacy-ftp"].used_by == ()


def test_seeded_report_finds_shared_stale_ownerless_unbrokered_and_unknown() -> None:
    items = parse_inventory(SEEDED, "csv")
    report = inventory_report(
        items, agents=AGENTS, secrets=["billing.key", "other"], now=NOW, max_age_days=90
    )
    # Shared: svc-crm (support by name + billing by SPIFFE ID), svc-erp (unknown + billing).
    assert {s.id: s.agents for s in report.shared} == {
        "svc-crm": tuple(sorted([SUPPORT, BILLING])),
        "svc-erp": tuple(sorted([BILLING, "unknown-bot"])),
    }
    # Stale: age of last rotation (or creation) beyond 90 days, computed here by hand.
    expected_stale = {}
    for ident, basis_date, basis in (
        ("svc-crm", "2026-12-20T00:00:00", "last_rotated"),
        ("svc-mail", "2026-12-01T00:00:00", "created"),
        ("billing-api", "2025-06-01T00:00:00", "created"),
        ("legacy-ftp", "2020-01-01T10:00:00", "created"),
        ("svc-erp", "2025-06-01T00:00:00", "last_rotated"),
    ):
        age = (NOW - _ts(basis_date)) / DAY
        if age > 90:
            expected_stale[ident] = (int(age), basis)
    assert {s.id: (s.age_days, s.basis) for s in report.stale} == expected_stale
    assert set(expected_stale) == {"billing-api", "legacy-ftp", "svc-erp"}
    assert report.missing_owner == ("svc-mail",)
    # Unbrokered: Remit agents using credentials that are not sealed secrets.
    assert {(u.id, u.agent_id) for u in report.unbrokered_use} == {
        ("svc-crm", SUPPORT),
        ("svc-crm", BILLING),
        ("svc-mail", SUPPORT),
        ("svc-erp", BILLING),
    }
    assert report.unbrokered_credentials == ("svc-crm", "svc-erp", "svc-mail")
    assert report.brokered == ("billing-api",)
    assert [(u.id, u.user) for u in report.unknown_users] == [("svc-erp", "unknown-bot")]
    assert report.unused == ("legacy-ftp",)
    data = report.to_data()
    assert data["credentials"] == 5
    assert data["findings"] == 2 + 3 + 1 + 3 + 1


def test_brokered_by_id_and_threshold() -> None:
    items = parse_inventory(SEEDED, "csv")
    report = inventory_report(
        items, agents=AGENTS, secrets=["svc-mail"], now=NOW, max_age_days=2000
    )
    assert "svc-mail" in report.brokered
    assert ("svc-mail", SUPPORT) not in {(u.id, u.agent_id) for u in report.unbrokered_use}
    assert [s.id for s in report.stale] == ["legacy-ftp"]  # only the 7-year-old one


def test_json_equals_csv() -> None:
    items = parse_inventory(SEEDED, "csv")
    as_json = json.dumps([i.to_data() for i in items])
    assert parse_inventory(as_json, "json") == items
    wrapped = json.dumps({"credentials": [i.to_data() for i in items]})
    assert parse_inventory(wrapped, "json") == items


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            SEEDED.replace("2026-12-01,,mail", "2026-12-01,,mail").replace(
                "svc-mail,,mail,2026-12-01", "svc-mail,,mail,yesterday"
            ),
            "row 2 (line 3): created",
        ),
        (SEEDED + "svc-crm,x,y,2025-01-01,,,\n", "row 6 (line 7): id 'svc-crm' was already"),
        (SEEDED + "lonely,x\n", "row 6 (line 7): 2 cells"),
        (SEEDED + ",x,y,2025-01-01,,,\n", "row 6 (line 7): id is required"),
        (SEEDED + "n1,x,y,,,,\n", "row 6 (line 7): created is required"),
        (SEEDED + "n2,x,y,2025-01-02,2025-01-01,,\n", "row 6 (line 7): last_rotated is before"),
        ("id,owner,created,colour\n", "unknown columns ['colour']"),
        ("id,owner\n", "lacks the columns ['created']"),
        ("", "empty"),
        ("id,created\n", "no rows"),
    ],
)
def test_malformed_csv_names_the_row(text: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_inventory(text, "csv")
    assert info.value.reason == "bad_inventory"
    assert info.value.code == "invalid_request"
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("{", "not valid JSON"),
        ('{"a": 1}', "list of objects"),
        ('[{"id": "a", "created": "2025-01-01"}, 7]', "row 2: must be an object"),
        ('[{"id": "a", "created": 20250101}]', "row 1: created must be a string"),
        ('[{"id": "a", "created": "2025-01-01", "used_by": {"x": 1}}]', "row 1: used_by must"),
        ('[{"id": "a", "created": "2025-01-01", "ownr": "x"}]', "unknown columns ['ownr']"),
        ('[{"id": "a\\u0000", "created": "2025-01-01"}]', "row 1: id must be printable"),
    ],
)
def test_malformed_json_names_the_row(doc: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_inventory(doc, "json")
    assert info.value.reason == "bad_inventory"
    assert fragment in info.value.message


def test_bad_format_and_threshold() -> None:
    with pytest.raises(InvalidRequest):
        parse_inventory(SEEDED, "xml")
    items = parse_inventory(SEEDED, "csv")
    with pytest.raises(InvalidRequest):
        inventory_report(items, agents=AGENTS, secrets=[], now=NOW, max_age_days=0)


def test_future_dates_are_flagged() -> None:
    items = parse_inventory("id,created\nnext,2030-01-01\n", "csv")
    report = inventory_report(items, agents=[], secrets=[], now=NOW)
    assert report.future_dated == ("next",)
    assert report.stale == ()


_names = st.sampled_from(
    ["support-assistant", "billing-bot", SUPPORT, BILLING, "ghost", "other-bot"]
)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(_names, max_size=4),
            st.integers(min_value=0, max_value=2000),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    max_age=st.integers(min_value=1, max_value=1000),
)
def test_report_invariants(rows: list[tuple[list[str], int, bool]], max_age: int) -> None:
    """Through a CSV round trip: shared iff >= 2 distinct resolved users; stale iff older
    than the threshold; every use is exactly one of brokered, unbrokered or unknown."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "owner", "created", "used_by"])
    for n, (users, age, owned) in enumerate(rows):
        created = datetime.fromtimestamp(NOW - age * DAY - 1, UTC).isoformat()
        writer.writerow([f"c{n}", "o" if owned else "", created, ";".join(users)])
    items = parse_inventory(out.getvalue(), "csv")
    brokered = {"c0", "c3"}
    report = inventory_report(items, agents=AGENTS, secrets=brokered, now=NOW, max_age_days=max_age)
    resolve = {a.name: a.agent_id for a in AGENTS} | {a.agent_id: a.agent_id for a in AGENTS}
    for n, (users, age, owned) in enumerate(rows):
        ident = f"c{n}"
        distinct = {resolve.get(u, u) for u in users}
        assert (ident in {s.id for s in report.shared}) == (len(distinct) >= 2)
        assert (ident in {s.id for s in report.stale}) == (age >= max_age)
        assert (ident in report.missing_owner) == (not owned)
        assert (ident in report.unused) == (not users)
        unknown = {u.user for u in report.unknown_users if u.id == ident}
        unbrokered = {u.agent_id for u in report.unbrokered_use if u.id == ident}
        assert unknown == {u for u in users if u not in resolve}
        known = {resolve[u] for u in users if u in resolve}
        assert unbrokered == (set() if ident in brokered else known)


def test_item_is_frozen() -> None:
    item = InventoryItem("a", None, (), 0.0, None, ())
    with pytest.raises(AttributeError):
        item.id = "b"  # type: ignore[misc]


_cell = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs"), exclude_characters=";"),
    min_size=1,
    max_size=12,
).filter(lambda t: t.strip() == t and t.isprintable())


@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), _cell),
            st.lists(_cell, max_size=3),
            st.integers(0, 3_000_000_000),
            st.one_of(st.none(), st.integers(0, 100_000_000)),
            st.lists(_cell, max_size=3),
            st.one_of(st.none(), _cell),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_json_form_round_trips(
    rows: list[tuple[str | None, list[str], int, int | None, list[str], str | None]],
) -> None:
    """``to_data`` is what the CLI sends for a CSV file: parsing it gives the same items."""
    items = tuple(
        InventoryItem(
            id=f"c{n}",
            owner=owner,
            systems=tuple(dict.fromkeys(systems)),
            created=float(created),
            last_rotated=float(created + rotated) if rotated is not None else None,
            used_by=tuple(dict.fromkeys(users)),
            remit_secret=secret,
        )
        for n, (owner, systems, created, rotated, users, secret) in enumerate(rows)
    )
    text = json.dumps({"credentials": [i.to_data() for i in items]})
    assert parse_inventory(text, "json") == items


def test_check_import() -> None:
    item = InventoryItem("a", None, (), 0.0, None, ())
    assert check_import([item], "0" * 64) == (item,)
    for items, digest in (
        ([item, item], "0" * 64),
        ([], "0" * 64),
        ([item], "0" * 63),
        ("a", "0" * 64),
    ):
        with pytest.raises(InvalidRequest) as caught:
            check_import(items, digest)
        assert caught.value.reason == "bad_inventory"
    record = InventoryImport("inv_1", "0" * 64, "op", 0.0, 1)
    assert record.to_data()["imported_at"] == "1970-01-01T00:00:00Z"
