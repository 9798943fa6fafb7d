"""The stored NHI inventory: import (service and CLI), replace-on-import, reports from the
store, malformed rows refused whole, and the compliance report using the stored one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from remit.cli import EXIT_CODES, app
from remit.core.inventory import InventoryItem, parse_inventory
from remit.core.secrets import Secret
from remit.errors import InvalidRequest
from remit.reports import compliance, stored_inventory_report
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit

from . import test_reports
from .conftest import PRINCIPAL, make_settings
from .test_reports import CATALOG, CEILINGS

runner = CliRunner()
data_dir = test_reports.data_dir  # the fixture: a data directory as the CLI finds it
SUPPORT = "spiffe://acme.example/agent/support-assistant"
ORPHAN = "spiffe://acme.example/agent/orphan-bot"


def recent(days: int = 10) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d")


def seeded_csv() -> str:
    """One credential per finding: shared, stale, ownerless, unbrokered; one brokered."""
    r = recent()
    return (
        "id,owner,systems,created,last_rotated,used_by,remit_secret\n"
        f"svc-shared,ops,crm;billing,{r},{r},support-assistant;orphan-bot,\n"
        "svc-stale,ops,erp,2020-01-01,,,\n"
        f"svc-nobody-owns,,ftp,{r},,,\n"
        f"svc-direct,ops,mail,{r},,{SUPPORT},\n"
        f"fresh.key,ops,mail,{r},,support-assistant,\n"
    )


def check_seeded(data: dict[str, object]) -> None:
    assert data["credentials"] == 5
    assert data["shared"] == [{"id": "svc-shared", "agents": [ORPHAN, SUPPORT]}]
    assert [s["id"] for s in data["stale"]] == ["svc-stale"]  # type: ignore[attr-defined]
    assert data["missing_owner"] == ["svc-nobody-owns"]
    assert data["unbrokered_credentials"] == ["svc-direct", "svc-shared"]
    assert data["brokered"] == ["fresh.key"]
    assert data["unused"] == ["svc-nobody-owns", "svc-stale"]
    assert data["findings"] == 5  # 1 shared + 1 stale + 1 ownerless + 2 unbrokered


@pytest.fixture
def remit(tmp_path: Path) -> Iterator[Remit]:
    service = build_remit(make_settings(tmp_path), catalog=catalog_from_yaml(CATALOG))
    service.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    service.register_agent(
        "support-assistant", owner="sam@acme.example", ceiling=CEILINGS["support-assistant"]
    )
    service.register_agent("orphan-bot", owner="ghost-team", ceiling=CEILINGS["orphan-bot"])
    service.put_secret("fresh.key", Secret("value"))
    try:
        yield service
    finally:
        service.close()


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- the service


def test_import_then_report_finds_the_seeded_sprawl(remit: Remit) -> None:
    assert stored_inventory_report(remit) is None
    text = seeded_csv()
    items = parse_inventory(text, "csv")
    record = remit.import_inventory(items, digest_of(text), by="alice")
    assert record.credentials == 5 and record.imported_by == "alice"
    assert record.import_id.startswith("inv_")
    stored = remit.stored_inventory()
    assert stored is not None and stored == (record, items)
    found = stored_inventory_report(remit)
    assert found is not None
    report, provenance = found
    assert provenance == record
    check_seeded(report.to_data())

    # Audited, with counts only: no credential id, owner or user reaches the log.
    remit.audit.flush()
    (event,) = [r for r in remit.store.iter_audit() if r.kind == "inventory.imported"]
    assert event.data == {
        "import": record.import_id,
        "source_sha256": digest_of(text),
        "by": "alice",
        "credentials": 5,
        "without_owner": 1,
        "used_by": 4,
    }
    dumped = json.dumps(event.data)
    assert "svc-" not in dumped and "support-assistant" not in dumped

    # The compliance report uses the stored inventory for its NHI items.
    doc = compliance(remit, days=30).to_data()
    assert doc["metrics"]["inventory"]["value"]["provided"] is True
    status = {i["id"]: i for f in doc["frameworks"] for i in f["items"]}
    assert status["NHI9"]["status"] == "attention"
    assert any("svc-shared" in f for f in status["NHI9"]["findings"])
    # ... unless told not to (a file given instead replaces it; none means none).
    bare = compliance(remit, days=30, use_stored_inventory=False).to_data()
    assert bare["metrics"]["inventory"]["value"]["provided"] is False


def test_reimport_replaces_the_whole_inventory(remit: Remit) -> None:
    text = seeded_csv()
    first = remit.import_inventory(parse_inventory(text, "csv"), digest_of(text))
    other = f'[{{"id": "only-one", "owner": "ops", "created": "{recent()}"}}]'
    second = remit.import_inventory(parse_inventory(other, "json"), digest_of(other))
    assert second.import_id != first.import_id
    stored = remit.stored_inventory()
    assert stored is not None
    assert stored[0] == second and [i.id for i in stored[1]] == ["only-one"]
    found = stored_inventory_report(remit)
    assert found is not None and found[0].finding_count() == 0


@pytest.mark.parametrize(
    ("items", "digest", "says"),
    [
        ([], "a" * 64, "no rows"),
        ("svc", "a" * 64, "list of items"),
        ([InventoryItem("x", None, (), 0.0, None, ())] * 2, "a" * 64, "already given"),
        ([{"id": "x"}], "a" * 64, "row 1: not an inventory item"),
        ([InventoryItem("x", None, (), 0.0, None, ())], "A" * 64, "SHA-256"),
        ([InventoryItem("x", None, (), 0.0, None, ())], "abc", "SHA-256"),
    ],
)
def test_bad_imports_are_refused_and_nothing_is_stored(
    remit: Remit, items: object, digest: str, says: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        remit.import_inventory(items, digest)  # type: ignore[arg-type]
    assert caught.value.reason == "bad_inventory" and says in caught.value.message
    assert remit.stored_inventory() is None


# ----------------------------------------------------------------------------- the CLI


def test_cli_import_report_reimport(data_dir: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    directory, env = data_dir
    local = ["--data-dir", str(directory)]

    nothing = runner.invoke(app, ["inventory", "report", *local, "--json"], env=env)
    assert nothing.exit_code == EXIT_CODES["not_found"], nothing.output
    assert json.loads(nothing.stdout)["error"]["code"] == "not_found"

    path = tmp_path / "inventory.csv"
    text = seeded_csv()
    path.write_text(text, encoding="utf-8")
    imported = runner.invoke(app, ["inventory", "import", str(path), *local, "--json"], env=env)
    assert imported.exit_code == 0, imported.output
    record = json.loads(imported.stdout)
    assert record["credentials"] == 5 and record["imported_by"] == "local"
    assert record["source_sha256"] == digest_of(text)

    report = runner.invoke(app, ["inventory", "report", *local, "--json"], env=env)
    assert report.exit_code == 0, report.output
    data = json.loads(report.stdout)
    check_seeded(data)
    assert data["import"]["import_id"] == record["import_id"]
    assert data["source_sha256"] == digest_of(text)

    md = runner.invoke(app, ["inventory", "report", *local, "--fail-on-findings"], env=env)
    assert md.exit_code == 1
    assert "# NHI inventory report" in md.stdout and record["import_id"] in md.stdout
    assert "| svc-shared |" in md.stdout

    # The compliance report picks up the stored inventory without --inventory.
    doc = runner.invoke(app, ["report", "compliance", *local, "--json"], env=env)
    assert doc.exit_code == 0, doc.output
    assert json.loads(doc.stdout)["metrics"]["inventory"]["value"]["provided"] is True

    # A malformed row: refused whole, naming the row; the stored inventory is unchanged.
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,owner,created\nok,ops,{recent()}\nbroken,ops,31/12/2025\n", "utf-8")
    refused = runner.invoke(app, ["inventory", "import", str(bad), *local, "--json"], env=env)
    assert refused.exit_code == EXIT_CODES["invalid_request"]
    assert "row 2 (line 3)" in json.loads(refused.stdout)["error"]["message"]
    still = json.loads(
        runner.invoke(app, ["inventory", "report", *local, "--json"], env=env).stdout
    )
    assert still["import"]["import_id"] == record["import_id"]

    # Re-import replaces.
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"credentials": [{"id": "k", "created": recent()}]}), "utf-8")
    again = runner.invoke(app, ["inventory", "import", str(small), *local, "--json"], env=env)
    assert again.exit_code == 0, again.output
    after = json.loads(
        runner.invoke(app, ["inventory", "report", *local, "--json"], env=env).stdout
    )
    assert after["credentials"] == 1 and after["missing_owner"] == ["k"]
    assert after["import"]["import_id"] == json.loads(again.stdout)["import_id"]

    # A file report still works beside the stored one, and never stores anything.
    file_report = runner.invoke(app, ["inventory", "report", str(path), *local, "--json"], env=env)
    assert file_report.exit_code == 0 and json.loads(file_report.stdout)["import"] is None
    both = runner.invoke(
        app, ["inventory", "report", str(path), "--url", "http://127.0.0.1:9"], env=env
    )
    assert both.exit_code == EXIT_CODES["invalid_request"]
