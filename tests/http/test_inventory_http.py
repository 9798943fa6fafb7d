"""PUT /v1/inventory and GET /v1/inventory/report over a live server, with the client
and the CLI (``--url``) end to end; the compliance report uses the stored inventory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from remit.cli import EXIT_CODES, app
from remit.client import RemitClient
from tests.http.conftest import Live
from tests.test_inventory_store import recent

runner = CliRunner()
DOMAIN = "spiffe://acme.example/agent"


def rows() -> list[dict[str, object]]:
    r = recent()
    return [
        {"id": "svc-shared", "owner": "ops", "created": r, "used_by": ["inv-a", "inv-b"]},
        {"id": "svc-stale", "owner": "ops", "created": "2020-01-01", "systems": ["erp"]},
        {"id": "svc-ownerless", "created": r},
        {"id": "svc-direct", "owner": "ops", "created": r, "used_by": [f"{DOMAIN}/inv-a"]},
    ]


def test_inventory_over_http_and_the_client(live: Live, tmp_path: Path) -> None:
    live.new_agent("inv-a")
    live.new_agent("inv-b")
    readonly = live.operator("readonly")

    none = live.client.get("/v1/inventory/report", headers=readonly)
    assert none.status_code == 404 and none.json()["code"] == "not_found"
    assert live.client.put("/v1/inventory", json={"credentials": rows()}).status_code == 401
    refused = live.client.put("/v1/inventory", json={"credentials": rows()}, headers=readonly)
    assert refused.status_code == 403

    digest = "f" * 64
    put = live.client.put(
        "/v1/inventory", json={"credentials": rows(), "source_sha256": digest}, headers=live.admin
    )
    assert put.status_code == 200, put.text
    record = put.json()
    assert record["imported_by"] == "root" and record["credentials"] == 4
    assert record["source_sha256"] == digest

    got = live.client.get("/v1/inventory/report", headers=readonly)
    assert got.status_code == 200, got.text
    report = got.json()
    assert report["shared"] == [
        {"id": "svc-shared", "agents": [f"{DOMAIN}/inv-a", f"{DOMAIN}/inv-b"]}
    ]
    assert [s["id"] for s in report["stale"]] == ["svc-stale"]
    assert report["missing_owner"] == ["svc-ownerless"]
    assert report["unbrokered_credentials"] == ["svc-direct", "svc-shared"]
    assert report["import"] == record and report["source_sha256"] == digest

    # The compliance report uses it.
    compliance = live.client.get("/v1/reports/compliance", headers=readonly).json()
    assert compliance["metrics"]["inventory"]["value"]["provided"] is True
    nhi9 = next(i for f in compliance["frameworks"] for i in f["items"] if i["id"] == "NHI9")
    assert nhi9["status"] == "attention"

    # A malformed row: 400 naming the row, nothing stored.
    bad = [*rows(), {"id": "svc-bad", "created": "31/12/2025"}]
    refused = live.client.put("/v1/inventory", json={"credentials": bad}, headers=live.admin)
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_request" and "row 5" in refused.json()["detail"]
    unknown = live.client.put(
        "/v1/inventory",
        json={"credentials": [{"id": "x", "created": recent(), "pwd": "s"}]},
        headers=live.admin,
    )
    assert unknown.status_code == 400
    same = live.client.get("/v1/inventory/report", headers=readonly).json()
    assert same["import"]["import_id"] == record["import_id"]

    # The client; without a digest the server records that of the canonical body.
    token = live.admin["Authorization"][7:]
    with RemitClient(live.base_url, admin_token=token) as client:
        again = client.import_inventory([{"id": "only", "owner": "ops", "created": recent()}])
        assert again["import_id"] != record["import_id"] and again["credentials"] == 1
        assert len(again["source_sha256"]) == 64
        replaced = client.inventory_report(max_age_days=30)
        assert replaced["credentials"] == 1 and replaced["findings"] == 0
        assert replaced["unused"] == ["only"] and replaced["max_age_days"] == 30

    # The CLI against the server: a CSV is converted to the JSON form, its digest kept.
    path = tmp_path / "inventory.csv"
    text = (
        "id,owner,systems,created,last_rotated,used_by,remit_secret\n"
        f"svc-shared,ops,crm,{recent()},,inv-a;inv-b,\n"
        "svc-stale,,erp,2020-01-01,,,\n"
    )
    path.write_text(text, encoding="utf-8")
    remote = ["--url", live.base_url, "--token", token]
    done = runner.invoke(app, ["inventory", "import", str(path), *remote, "--json"])
    assert done.exit_code == 0, done.output
    imported = json.loads(done.stdout)
    assert imported["source_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert imported["imported_by"] == "root" and imported["credentials"] == 2
    shown = runner.invoke(app, ["inventory", "report", *remote, "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert [s["id"] for s in data["shared"]] == ["svc-shared"]
    assert data["missing_owner"] == ["svc-stale"] and data["import"] == imported
    md = runner.invoke(app, ["inventory", "report", *remote, "--fail-on-findings"])
    assert md.exit_code == 1 and imported["import_id"] in md.stdout

    # Audited on the server, with counts only.
    live.remit.audit.flush()
    events = [r for r in live.remit.store.iter_audit() if r.kind == "inventory.imported"]
    assert [e.data["credentials"] for e in events] == [4, 1, 2]
    assert all("svc-" not in json.dumps(e.data) for e in events)


def test_inventory_report_checks_its_input(live: Live) -> None:
    bad = live.client.get(
        "/v1/inventory/report", params={"max_age_days": 0}, headers=live.operator("readonly")
    )
    assert bad.status_code == 400
    empty = live.client.put("/v1/inventory", json={"credentials": []}, headers=live.admin)
    assert empty.status_code == 400
    digest = live.client.put(
        "/v1/inventory",
        json={"credentials": [{"id": "x", "created": recent()}], "source_sha256": "nope"},
        headers=live.admin,
    )
    assert digest.status_code == 400
    assert EXIT_CODES["invalid_request"] != 0
