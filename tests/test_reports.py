"""The standards report and the inventory report over a real Remit: every evidence number
is checked against what the fixture implies (computed here, not read back from the
implementation), the renderings are safe, and the CLI runs end to end."""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from remit.agent import AgentSession, TaskSession
from remit.cli import EXIT_CODES, app
from remit.clock import ManualClock
from remit.core.compliance import Evidence, compliance_report
from remit.core.leases import Lease
from remit.core.policy import PolicySource
from remit.core.secrets import Secret
from remit.reports import (
    compliance,
    gather_evidence,
    inventory_for,
    read_inventory,
    render,
    render_inventory,
)
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit

from .conftest import PRINCIPAL, make_settings

DAY = 86_400.0
runner = CliRunner()

CATALOG = """
tools:
  - {name: ticket/read, privilege: read, labels: [internal, untrusted]}
  - {name: docs/read, privilege: read, labels: [public]}
  - {name: notes/write, privilege: write, labels: [internal]}
  - {name: email/send, privilege: act, destinations: {to: email}}
  - {name: chat/post, privilege: act, destinations: {channel: channel}}
  - {name: billing/refund, privilege: act, risk: [payment, no-destination]}
  - {name: beta/tool, privilege: read, labels: [public], mode: shadow}
"""
ACT_TOOLS = {"email/send", "chat/post", "billing/refund"}
OPERATOR_POLICY = """
@id("no-chat-after-untrusted")
forbid (principal, action == Action::"act", resource == Tool::"chat/post")
when { context.taint_flags.contains("untrusted") };
"""
# Covered act tools, by the documented definition: the payment tool (baseline approval
# rule) and chat/post (the operator forbid above). email/send has only generic rules.
EXPECTED_COVERED = {"billing/refund", "chat/post"}


def ceiling(*tools: str) -> dict[str, Any]:
    return {
        "tools": list(tools),
        "privileges": ["read", "write", "act"],
        "destinations": ["email:*", "channel:*"],
        "max_sensitivity": "confidential",
    }


CEILINGS = {
    "support-assistant": ceiling("ticket/read", "docs/read", "email/send", "chat/post"),
    "billing-bot": ceiling("docs/read", "billing/refund"),
    "orphan-bot": ceiling("docs/read", "notes/write"),
    "shadow-bot": ceiling("docs/read", "beta/tool"),
}
OWNERS = {
    "support-assistant": "sam@acme.example",  # an identifier of the registered principal
    "billing-bot": PRINCIPAL,  # the principal's own id
    "orphan-bot": "ghost-team",  # nobody Remit knows
    "shadow-bot": "sam@acme.example",
}


@dataclass
class Fixture:
    remit: Remit
    clock: ManualClock
    data_dir: Path
    # what the fixture did inside the window, recorded as it went
    task_ttls: list[int] = field(default_factory=list)
    request_derived: int = 0
    wildcard: int = 0
    allowed: set[tuple[str, str]] = field(default_factory=set)  # (agent name, tool)
    outcomes: dict[str, int] = field(default_factory=dict)
    long_lease: str = ""


def _session(remit: Remit, clock: ManualClock, name: str) -> AgentSession:
    agent_id = f"spiffe://acme.example/agent/{name}"
    return AgentSession.attest(remit, remit.create_join_token(agent_id), clock=clock)


def _open(fx: Fixture, session: AgentSession, tools: list[str], **intent: Any) -> TaskSession:
    body: dict[str, Any] = {"purpose": "fixture work", "tools": tools, "ttl_seconds": 600}
    body.update(intent)
    task = session.open_task(principal=PRINCIPAL, intent=body)
    fx.task_ttls.append(body["ttl_seconds"])
    fx.request_derived += bool(task.grant.mandate.request_derived)
    fx.wildcard += any("*" in d for d in body.get("destinations", []))
    return task


def _call(fx: Fixture, name: str, task: TaskSession, tool: str, args: dict[str, Any]) -> None:
    decision = task.authorize(tool, args)
    fx.outcomes[decision.outcome.value] = fx.outcomes.get(decision.outcome.value, 0) + 1
    if decision.allowed:
        fx.allowed.add((name, tool))


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    clock = ManualClock()
    settings = make_settings(tmp_path)
    remit = build_remit(settings, clock=clock, catalog=catalog_from_yaml(CATALOG))
    fixture = Fixture(remit, clock, settings.data_dir)
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    remit.load_policies([PolicySource("ops.cedar", OPERATOR_POLICY)])
    for name, tools in CEILINGS.items():
        mode = "shadow" if name == "shadow-bot" else "enforce"
        remit.register_agent(name, owner=OWNERS[name], ceiling=tools, mode=mode)

    # --- before the window (100 days ago): an old secret, an everlasting operator token,
    # a task and calls that must not count
    remit.put_secret("old.key", Secret("v1-old"))
    remit.create_admin_token("ops", scopes=["admin"])
    remit.create_admin_token("short", scopes=["readonly"], ttl_seconds=3600)  # expires
    old = _session(remit, clock, "support-assistant")
    before = old.open_task(
        principal=PRINCIPAL,
        intent={
            "purpose": "old",
            "tools": ["docs/read", "email/send"],
            "ttl_seconds": 3000,
            "request_text": "write to old@example.com",
        },
    )
    assert before.authorize("docs/read", {}).allowed
    assert before.authorize("email/send", {"to": "old@example.com"}).allowed
    clock.advance(100 * DAY)

    # --- inside the window
    remit.put_secret("fresh.key", Secret("v1-fresh"))
    remit.create_admin_token("ci", scopes=["readonly"], ttl_seconds=30 * 86_400)
    support = _session(remit, clock, "support-assistant")
    t1 = _open(
        fixture,
        support,
        ["ticket/read", "email/send", "chat/post"],
        request_text="Please reply to alice@example.com about 4711.",
    )
    _call(fixture, "support-assistant", t1, "ticket/read", {})
    _call(fixture, "support-assistant", t1, "email/send", {"to": "alice@example.com"})
    _call(fixture, "support-assistant", t1, "email/send", {"to": "attacker@evil.example"})
    _call(fixture, "support-assistant", t1, "chat/post", {"channel": "general"})
    t2 = _open(
        fixture,
        support,
        ["email/send"],
        destinations=["email:*@partner.example"],
        ttl_seconds=1200,
    )
    _call(fixture, "support-assistant", t2, "email/send", {"to": "bob@partner.example"})
    billing = _session(remit, clock, "billing-bot")
    t3 = _open(fixture, billing, ["billing/refund"], ttl_seconds=300)
    _call(fixture, "billing-bot", t3, "billing/refund", {"order": "A-1"})

    # a lease issued for two hours (legacy configuration), straight into the store
    fixture.long_lease = "lse_" + "L" * 22
    now = clock.now()
    remit.store.insert_lease(
        Lease(fixture.long_lease, t1.task_id, "fresh.key", "email/send", now - 60, now + 7140)
    )
    remit.admit_tool_definition(
        "docs/read", {"name": "read", "description": "read docs", "input_schema": {}}
    )
    remit.set_kill_switch(True, agent_id="spiffe://acme.example/agent/orphan-bot")
    try:
        yield fixture
    finally:
        remit.close()


def test_evidence_numbers_match_the_fixture(fx: Fixture) -> None:
    ev = gather_evidence(fx.remit, days=30)
    # tasks in the window (the 100-day-old one is outside)
    assert ev.tasks == len(fx.task_ttls) == 3
    assert ev.task_ttls == tuple(fx.task_ttls)
    assert max(ev.task_ttls) == 1200
    report = compliance_report(ev)
    ttl = report.metrics["task_ttls"].value
    assert ttl["max_seconds"] == 1200
    assert ttl["median_seconds"] == statistics.median([600, 1200, 300]) == 600
    assert ev.tasks_request_derived == fx.request_derived == 1
    assert ev.request_derived_share == pytest.approx(1 / 3)
    assert ev.tasks_wildcard == fx.wildcard == 1
    # settings
    assert ev.identity_ttl_seconds == fx.remit.settings.identity_ttl_seconds
    assert ev.task_token_max_ttl_seconds == fx.remit.settings.task_token_max_ttl_seconds
    # owners: mandatory at registration; one owner is nobody Remit knows
    assert ev.owner_required and ev.agents_without_owner == ()
    assert ev.owners_unknown == (("orphan-bot", "ghost-team"),)
    # long-lived credentials
    assert ev.secrets == 2
    assert ev.stale_secrets == (("old.key", 100),)
    assert ev.long_leases == ((fx.long_lease, 7200.0),)
    assert ev.admin_tokens_active == 2  # ops and ci; "short" has expired
    assert ev.admin_tokens_no_expiry == ("ops",)
    assert ev.admin_tokens_old == (("ops", 100),)
    # unused grants: ceiling tools of active agents never allowed in the window
    expected_unused = {
        (name, tool)
        for name, c in CEILINGS.items()
        for tool in c["tools"]
        if (name, tool) not in fx.allowed
    }
    assert set(ev.unused_grants) == expected_unused
    assert ("support-assistant", "docs/read") in expected_unused  # used only before the window
    assert ev.grants == sum(len(c["tools"]) for c in CEILINGS.values())
    # act-tool coverage under the documented definition
    assert set(ev.act_coverage.tools) == ACT_TOOLS
    assert set(ev.act_coverage.covered) == EXPECTED_COVERED
    assert ev.act_coverage.share == pytest.approx(len(EXPECTED_COVERED) / len(ACT_TOOLS))
    assert ev.operator_policies == 1
    # decisions and approvals in the window
    assert fx.outcomes == {"allow": 3, "deny": 2, "approval_required": 1}
    for outcome, count in fx.outcomes.items():
        assert ev.decisions[outcome] == count
    assert ev.approvals["requested"] == 1
    # enforcement
    assert ev.agents_shadow == ("shadow-bot",)
    assert ev.shadow_tools == ("beta/tool",)
    assert ev.kill_switch_agents == ("spiffe://acme.example/agent/orphan-bot",)
    assert ev.pinned_tools == 1
    # audit chain, counted independently of the verifier
    fx.remit.audit.flush()
    assert ev.audit_ok
    assert ev.audit_records == len(list(fx.remit.store.iter_audit()))
    assert not ev.audit_truncated


def test_bounded_reading_says_so(fx: Fixture) -> None:
    ev = gather_evidence(fx.remit, days=30, max_records=2)
    assert ev.audit_truncated and ev.tasks == 2
    decisions = compliance_report(ev).metrics["decisions"]
    assert decisions.value["truncated"] is True
    assert "lower bound" in decisions.findings[0]


def test_report_is_read_only(fx: Fixture) -> None:
    fx.remit.audit.flush()
    before = len(list(fx.remit.store.iter_audit()))
    compliance(fx.remit, days=30)
    fx.remit.audit.flush()
    assert len(list(fx.remit.store.iter_audit())) == before


def test_statuses_follow_the_evidence(fx: Fixture) -> None:
    report = compliance(fx.remit, days=30)
    status = {i.id: i for _, items in report.frameworks for i in items}
    assert status["NHI7"].status == "attention"  # old.key, the 2 h lease, the ops token
    assert any("old.key" in f for f in status["NHI7"].findings)
    assert status["ASI03"].status == "attention"
    assert any("ghost-team" in f for f in status["ASI03"].findings)
    assert status["ASI02"].status == "attention"  # email/send has no specific policy
    assert status["NHI6"].status == "not-addressed"
    assert status["L1"].status == "not-addressed"
    assert status["ASI04"].status == "partial"  # no finding, partial coverage


def test_window_excludes_old_work(fx: Fixture) -> None:
    wide = gather_evidence(fx.remit, days=365)
    assert wide.tasks == 4 and wide.tasks_request_derived == 2
    assert ("support-assistant", "docs/read") not in set(wide.unused_grants)


def test_a_tampered_audit_log_is_reported(fx: Fixture) -> None:
    fx.remit.audit.flush()
    with sqlite3.connect(fx.data_dir / "remit.db") as db:
        db.execute("UPDATE audit_events SET data = ? WHERE seq = 3", ('{"forged":true}',))
    report = compliance(fx.remit, days=30)
    chain = report.metrics["audit_chain"]
    assert chain.value["ok"] is False
    status = {i.id: i.status for _, items in report.frameworks for i in items}
    assert status["ASI10"] == "attention" and status["L5"] == "attention"


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_renderings_escape_hostile_values(fx: Fixture) -> None:
    hostile = '<script>alert("x")</script>|<img src=x onerror=1>'
    fx.remit.register_agent("mallory", owner=hostile, ceiling=ceiling("docs/read"))
    report = compliance(fx.remit, days=30)
    page = render(report, "html")
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags
    assert set(parser.tags) <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "p",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
    }
    assert any(hostile in t for t in parser.text)  # shown, as text
    markdown = render(report, "md")
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown
    for line in markdown.splitlines():
        if line.startswith("| Agents and accountable owners"):
            assert line.count(" | ") == 2  # the pipe in the owner did not add a column
    data = json.loads(render(report, "json"))
    owners = data["metrics"]["owners"]["value"]["owner_not_a_principal"]
    assert {"agent": "mallory", "owner": hostile} in owners


def test_inventory_against_the_live_remit(fx: Fixture, tmp_path: Path) -> None:
    path = tmp_path / "inventory.csv"
    path.write_text(
        "id,owner,systems,created,last_rotated,used_by,remit_secret\n"
        "svc-shared,ops,crm,2027-03-01,,support-assistant;billing-bot,\n"
        "fresh.key,ops,mail,2027-03-01,,support-assistant,\n"
        "svc-old,,erp,2025-01-01,,spiffe://acme.example/agent/billing-bot,\n"
        "svc-ghost,ops,ftp,2027-03-01,,ghost-agent,\n",
        encoding="utf-8",
    )
    items, digest = read_inventory(path)
    assert len(digest) == 64
    report = inventory_for(fx.remit, items, max_age_days=90)
    support = "spiffe://acme.example/agent/support-assistant"
    bill = "spiffe://acme.example/agent/billing-bot"
    assert [(s.id, s.agents) for s in report.shared] == [("svc-shared", (bill, support))]
    assert [s.id for s in report.stale] == [
        "svc-old"
    ]  # 2025-01-01 vs 2027-04-25 (the fixture clock)
    assert report.missing_owner == ("svc-old",)
    assert report.brokered == ("fresh.key",)  # a sealed secret of this Remit
    assert report.unbrokered_credentials == ("svc-old", "svc-shared")
    assert [(u.id, u.user) for u in report.unknown_users] == [("svc-ghost", "ghost-agent")]
    text = render_inventory(report, source_digest=digest)
    assert "svc-shared" in text and digest in text
    # its findings feed the compliance report's NHI items
    with_inv = compliance(fx.remit, days=30, inventory=report)
    status = {i.id: i for _, items in with_inv.frameworks for i in items}
    assert status["NHI9"].status == "attention"
    assert any("svc-shared" in f for f in status["NHI9"].findings)
    assert status["NHI2"].status == "attention"


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A data directory written by one Remit and closed, as the CLI finds it."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG, encoding="utf-8")
    env = {"REMIT_CATALOG_PATH": str(catalog), "REMIT_TRUST_DOMAIN": "acme.example"}
    settings = make_settings(tmp_path, catalog_path=catalog)
    remit = build_remit(settings)
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    remit.register_agent(
        "support-assistant", owner="sam@acme.example", ceiling=CEILINGS["support-assistant"]
    )
    remit.register_agent("orphan-bot", owner="ghost-team", ceiling=CEILINGS["orphan-bot"])
    remit.put_secret("fresh.key", Secret("value"))
    remit.close()
    yield settings.data_dir, env


def test_cli_compliance_json_md_html(data_dir: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    directory, env = data_dir
    result = runner.invoke(
        app, ["report", "compliance", "--data-dir", str(directory), "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    owners = data["metrics"]["owners"]["value"]
    assert owners["agents"] == 2
    assert owners["owner_not_a_principal"] == [{"agent": "orphan-bot", "owner": "ghost-team"}]
    coverage = data["metrics"]["act_policy_coverage"]["value"]
    assert coverage["act_tools"] == 3 and coverage["uncovered"] == ["chat/post", "email/send"]
    assert data["metrics"]["long_lived_credentials"]["value"]["secrets"] == 1
    assert data["metrics"]["audit_chain"]["value"]["ok"] is True

    out = tmp_path / "report.html"
    result = runner.invoke(
        app,
        ["report", "compliance", "--data-dir", str(directory), "-f", "html", "-o", str(out)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "ASI01 Agent Goal Hijack" in page
    result = runner.invoke(
        app, ["report", "compliance", "--data-dir", str(directory), "--days", "7"], env=env
    )
    assert result.exit_code == 0
    assert "| NHI6 Insecure Cloud Deployment Configurations | not addressed |" in result.stdout

    bad = runner.invoke(
        app, ["report", "compliance", "--data-dir", str(directory), "-f", "pdf"], env=env
    )
    assert bad.exit_code == EXIT_CODES["invalid_request"]


def test_cli_inventory_report(data_dir: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    directory, env = data_dir
    good = tmp_path / "inv.json"
    good.write_text(
        json.dumps(
            [
                {
                    "id": "svc-a",
                    "owner": "ops",
                    "created": "2020-01-01",
                    "used_by": ["support-assistant", "orphan-bot"],
                },
                {
                    "id": "fresh.key",
                    "owner": "ops",
                    "created": "2099-01-01",
                    "used_by": ["support-assistant"],
                },
            ]
        ),
        encoding="utf-8",
    )
    result = runner.invoke(
        app, ["inventory", "report", str(good), "--data-dir", str(directory), "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["id"] for s in data["shared"]] == ["svc-a"]
    assert [s["id"] for s in data["stale"]] == ["svc-a"]
    assert data["unbrokered_credentials"] == ["svc-a"]
    assert data["future_dated"] == ["fresh.key"]
    assert len(data["source_sha256"]) == 64

    failing = runner.invoke(
        app,
        ["inventory", "report", str(good), "--data-dir", str(directory), "--fail-on-findings"],
        env=env,
    )
    assert failing.exit_code == 1
    assert "svc-a" in failing.stdout

    bad = tmp_path / "inv.csv"
    bad.write_text("id,owner,created\nok,ops,2025-01-01\nbroken,ops,31/12/2025\n", "utf-8")
    result = runner.invoke(
        app, ["inventory", "report", str(bad), "--data-dir", str(directory), "--json"], env=env
    )
    assert result.exit_code == EXIT_CODES["invalid_request"]
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid_request"
    assert "row 2 (line 3)" in error["message"]

    report_with_inventory = runner.invoke(
        app,
        ["report", "compliance", "--data-dir", str(directory), "--json", "--inventory", str(good)],
        env=env,
    )
    assert report_with_inventory.exit_code == 0, report_with_inventory.output
    doc = json.loads(report_with_inventory.stdout)
    assert doc["metrics"]["inventory"]["value"]["provided"] is True
    nhi9 = next(i for f in doc["frameworks"] for i in f["items"] if i["id"] == "NHI9")
    assert nhi9["status"] == "attention"


def test_evidence_is_frozen(fx: Fixture) -> None:
    ev = gather_evidence(fx.remit, days=30)
    assert isinstance(ev, Evidence)
    with pytest.raises(AttributeError):
        ev.tasks = 0  # type: ignore[misc]
    loaded = yaml.safe_load(render(compliance_report(ev), "json"))
    assert loaded["window_days"] == 30
