from __future__ import annotations

from typing import Any

import pytest

from remit.core.catalog import Privilege, catalog_from_data, check_tool_name, merge_catalogs
from remit.core.labels import Labels, Sensitivity
from remit.errors import InvalidRequest
from remit.runtime import catalog_from_yaml

GOOD = """
tools:
  - name: email/send
    privilege: act
    destinations: {to: email, "message.cc": email}
    labels: [public]
    risk: [external]
  - name: crm/read
    privilege: read
    labels: [confidential, pii]
"""


def test_yaml_manifest_is_validated_and_loaded() -> None:
    catalog = catalog_from_yaml(GOOD)
    send = catalog.get("email/send")
    assert send is not None and send.privilege is Privilege.ACT and send.server == "email"
    assert catalog.get("crm/read").output_labels == Labels(
        Sensitivity.CONFIDENTIAL, frozenset({"pii"})
    )  # type: ignore[union-attr]
    dests = send.destinations_in(
        {"to": ["A@Example.com", "b@example.com"], "message": {"cc": "c@example.com"}}
    )
    assert [str(d) for d in dests] == [
        "email:a@example.com",
        "email:b@example.com",
        "email:c@example.com",
    ]
    assert "nope/tool" not in catalog


def test_malformed_destination_argument_is_an_error() -> None:
    send = catalog_from_yaml(GOOD).get("email/send")
    assert send is not None
    for bad in ("not an address", 5, {"x": 1}, "alice@ex\u0430mple.com"):
        with pytest.raises(InvalidRequest):
            send.destinations_in({"to": bad})


def tool(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "s/t", "privilege": "read"}
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"tools": []},
        {"tools": "x"},
        {"tools": [tool()], "extra": 1},
        {"tools": [tool(name="\u0435mail/send")]},  # Cyrillic е
        {"tools": [tool(name="Email/Send")]},
        {"tools": [tool(name="noslash")]},
        {"tools": [tool(privilege="admin")]},
        {"tools": [tool(privilege="act")]},  # act without destinations
        {"tools": [tool(destinations={"to": "fax"})]},
        {"tools": [tool(destinations={"bad path!": "email"})]},
        {"tools": [tool(labels=["secret"])]},
        {"tools": [tool(labels=["public", "restricted"])]},
        {"tools": [tool(risk=["Not A Tag"])]},
        {"tools": [tool(mode="maybe")]},
        {"tools": [tool(unknown=True)]},
        {"tools": [tool(), tool()]},
    ],
)
def test_invalid_manifests_are_refused(data: Any) -> None:
    with pytest.raises(InvalidRequest):
        catalog_from_data(data)


def test_invalid_yaml_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        catalog_from_yaml("tools: [\n")
    with pytest.raises(InvalidRequest):
        catalog_from_yaml("!!python/object:os.system {}")


def test_tool_names_are_strict_ascii() -> None:
    assert check_tool_name("email/send") == "email/send"
    for bad in (
        "email/send ",
        "email//send",
        "/send",
        "email/",
        "emai\u217c/send",
        "e" * 70 + "/x",
    ):
        with pytest.raises(InvalidRequest):
            check_tool_name(bad)


def test_merge_refuses_duplicates() -> None:
    a = catalog_from_data({"tools": [tool()]})
    with pytest.raises(InvalidRequest):
        merge_catalogs([a, a])
