"""Policy replay end to end (issue 7 item 4): a real log recorded through
``Remit.authorize`` (real Cedar, real SQLite, real signatures, approvals, a shadow
agent, refused calls), re-decided under candidate policy sets."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from remit.agent import AgentSession, TaskSession
from remit.cli import EXIT_CHANGES, app
from remit.clock import ManualClock
from remit.config import Settings
from remit.core.pipeline import Decision, Outcome
from remit.core.policy import PolicySource
from remit.errors import InvalidRequest, NotFound, PolicyInvalid, RemitError
from remit.replay import ReplayProgress, replay_policies
from remit.runtime import build_remit
from remit.service import AdminIdentity, Remit

from .conftest import CATALOG, PRINCIPAL, make_settings

REPLAY_CATALOG = (
    CATALOG
    + """
  - name: payments/transfer
    privilege: act
    destinations: {to: account}
    risk: [payment]
"""
)
TOOLS = [
    "ticket/read",
    "crm/read",
    "crm/export",
    "docs/read",
    "notes/write",
    "email/send",
    "shadow/tool",
    "payments/transfer",
]
CEILING: dict[str, Any] = {
    "tools": TOOLS,
    "privileges": ["read", "write", "act"],
    "destinations": ["email:*", "account:*"],
    "max_sensitivity": "restricted",
}
ACCOUNT = "DE89370400440532013000"
PAY = {"to": ACCOUNT, "amount": 100}

NO_NOTES = PolicySource(
    "ops/notes.cedar",
    '@id("no-notes-write")\n'
    'forbid(principal, action == Action::"write", resource == Tool::"notes/write");\n',
)
NO_DOCS = PolicySource(
    "ops/docs.cedar",
    '@id("no-docs-read")\n'
    'forbid(principal, action == Action::"read", resource == Tool::"docs/read");\n',
)
APPROVE_DOCS = PolicySource(
    "ops/docs.cedar",
    '@id("approve-docs-read")\n@approval("required")\n'
    'forbid(principal, action == Action::"read", resource == Tool::"docs/read");\n',
)
NO_PAYMENTS = PolicySource(
    "ops/pay.cedar",
    '@id("no-payments")\n'
    'forbid(principal, action == Action::"act", resource == Tool::"payments/transfer");\n',
)
ACTIVE = [NO_NOTES]


@dataclass
class Log:
    settings: Settings
    clock: ManualClock
    catalog_file: Path
    decisions: list[Decision] = field(default_factory=list)
    refused: int = 0
    unknown_tool: int = 0
    phase2_start: float = 0.0
    phase2: list[Decision] = field(default_factory=list)
    agents: dict[str, str] = field(default_factory=dict)
    end: float = 0.0  # after the recording; later tests may add records

    def call(self, task: TaskSession, tool: str, args: dict[str, Any], **kw: Any) -> Decision:
        decision = task.authorize(tool, args, **kw)
        self.decisions.append(decision)
        if self.phase2_start:
            self.phase2.append(decision)
        if decision.reasons == ("unknown-tool",):
            self.unknown_tool += 1
        return decision

    def refuse(self, task: TaskSession, tool: str, args: dict[str, Any]) -> None:
        with pytest.raises(RemitError):
            task.authorize(tool, args)
        self.refused += 1


def _session(remit: Remit, clock: ManualClock, agent_id: str) -> AgentSession:
    return AgentSession.attest(remit, remit.create_join_token(agent_id), clock=clock)


def _task(session: AgentSession, tools: list[str], **intent: Any) -> TaskSession:
    base: dict[str, Any] = {
        "purpose": "replay fixture",
        "tools": tools,
        "sensitivity": "confidential",
        "call_budget": 50,
        "ttl_seconds": 600,
        "destinations": ["email:*@partner.example"],
    }
    base.update(intent)
    return session.open_task(principal=PRINCIPAL, intent=base)


def _record(remit: Remit, log: Log) -> None:
    clock = log.clock
    remit.load_policies(ACTIVE)
    support = remit.register_agent("support-assistant", owner="sam@acme.example", ceiling=CEILING)
    research = remit.register_agent("researcher", owner="lee@acme.example", ceiling=CEILING)
    shadow = remit.register_agent("shadow-bot", owner="ops", ceiling=CEILING, mode="shadow")
    log.agents = {
        "support": support.agent_id,
        "research": research.agent_id,
        "shadow": shadow.agent_id,
    }

    # Phase 1.
    s = _session(remit, clock, support.agent_id)
    t = _task(s, ["ticket/read", "docs/read", "email/send", "notes/write"])
    log.call(t, "docs/read", {"page": 1})
    log.call(t, "notes/write", {"text": "x"})  # no-notes-write
    log.call(t, "crm/export", {})  # not in the mandate
    log.call(t, "ticket/read", {"ticket": 4711})
    log.call(t, "email/send", {"to": "bob@partner.example"})
    log.call(t, "email/send", {"to": "eve@elsewhere.example"})  # outside the mandate
    log.call(t, "billing/pay", {"amount": 5})  # unknown tool: not re-decidable
    log.refuse(t, "email/send", {"to": "alice@exаmple.com"})  # Cyrillic а: refused

    r = _session(remit, clock, research.agent_id)
    rt = _task(r, ["docs/read", "crm/read"], sensitivity="internal")
    log.call(rt, "docs/read", {"page": 2})
    log.call(rt, "crm/read", {"id": 1})  # above the sensitivity ceiling
    log.call(rt, "notes/write", {"text": "y"})  # not in the mandate, and no-notes-write
    pay = _task(r, ["payments/transfer", "docs/read"], destinations=[f"account:{ACCOUNT}"])
    pending = log.call(pay, "payments/transfer", PAY)
    assert pending.outcome is Outcome.APPROVAL_REQUIRED and pending.approval_id
    refused = log.call(pay, "payments/transfer", PAY, approval=pending.approval_id)
    assert refused.reasons[0] == "approval_pending"
    remit.approve(pending.approval_id, by=AdminIdentity("adm_a", "alice", frozenset({"approver"})))
    approved = log.call(pay, "payments/transfer", PAY, approval=pending.approval_id)
    assert approved.outcome is Outcome.ALLOW and approved.reasons[0] == "human-approval"
    log.call(pay, "payments/transfer", PAY)  # a new call: approval required again

    sh = _session(remit, clock, shadow.agent_id)
    st_ = _task(sh, ["docs/read", "notes/write"])
    log.call(st_, "docs/read", {"page": 3})  # shadow: allow
    log.call(st_, "crm/export", {})  # shadow: would deny, allowed
    log.call(st_, "notes/write", {"text": "z"})  # shadow: would deny by no-notes-write

    # Phase 2, a day later: fresh instances and tasks.
    clock.advance(86_400)
    log.phase2_start = clock.now()
    s2 = _session(remit, clock, support.agent_id)
    t2 = _task(s2, ["docs/read", "notes/write"])
    log.call(t2, "docs/read", {"page": 4})
    log.call(t2, "docs/read", {"page": 5})
    log.call(t2, "notes/write", {"text": "w"})
    log.refuse(t2, "email/send", {"to": "alice@exаmple.com"})
    clock.advance(60)
    log.end = clock.now()


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    tmp = tmp_path_factory.mktemp("replay")
    catalog_file = tmp / "catalog.yaml"
    catalog_file.write_text(REPLAY_CATALOG, encoding="utf-8")
    # Near the real time, so that relative windows (--since 7d) work from the CLI too.
    clock = ManualClock(start=float(int(time.time())) - 2 * 86_400)
    result = Log(make_settings(tmp, catalog_path=catalog_file), clock, catalog_file)
    remit = build_remit(result.settings, clock=clock)
    try:
        remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
        _record(remit, result)
    finally:
        remit.close()
    return result


@pytest.fixture(scope="module")
def remit(log: Log) -> Iterator[Remit]:
    service = build_remit(log.settings, clock=log.clock)
    yield service
    service.close()


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.decision_id: d for d in decisions}


def changes(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Every changed decision (from the examples: call with examples high enough)."""
    found: dict[str, tuple[str, str]] = {}
    for group in report["by_agent"]:
        assert len(group["examples"]) == group["changed"], "raise examples for this test"
        for example in group["examples"]:
            found[example["decision_id"]] = (example["from"], example["to"])
    return found


def decidable(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.reasons != ("unknown-tool",)]


# ---------------------------------------------------------------------- what changes


def test_candidate_adding_a_forbid_reports_exactly_those_decisions(log: Log, remit: Remit) -> None:
    report = replay_policies(remit, [NO_NOTES, NO_DOCS], since="30d", until=log.end, examples=50)
    expected = {
        d.decision_id for d in log.decisions if d.tool == "docs/read" and d.outcome is Outcome.ALLOW
    }
    assert len(expected) == 5  # four enforce calls and the shadow agent's
    assert changes(report) == {i: ("allow", "deny") for i in expected}
    assert report["changed"] == 5 and report["by_change"] == {"allow->deny": 5}
    assert [g["policy"] for g in report["by_policy"]] == ["no-docs-read"]
    assert report["by_policy"][0]["changed"] == 5
    per_agent = {g["agent"]: g["changed"] for g in report["by_agent"]}
    assert per_agent == {
        log.agents["support"]: 3,
        log.agents["research"]: 1,
        log.agents["shadow"]: 1,
    }
    shadow = [e for g in report["by_agent"] for e in g["examples"] if e["mode"] == "shadow"]
    assert len(shadow) == 1 and shadow[0]["agent"] == log.agents["shadow"]
    example = report["by_policy"][0]["examples"][0]
    assert example["reasons_before"] == ["permit-within-mandate"]
    assert example["reasons_after"] == ["no-docs-read"]
    assert example["tool"] == "docs/read" and example["decision_id"] in expected
    # Nothing else moved: every other decidable record is unchanged.
    assert report["replayed"] == len(decidable(log.decisions))
    assert report["unchanged"] == report["replayed"] - 5


def test_candidate_identical_to_the_active_set_changes_nothing(log: Log, remit: Remit) -> None:
    report = replay_policies(remit, ACTIVE, since="30d", until=log.end)
    assert report["candidate_version"] == report["active_version"] == remit.policy.version
    assert report["changed"] == 0 and report["by_change"] == {}
    assert report["reasons_changed"] == 0 and report["evaluation_errors"] == 0
    assert report["by_policy"] == [] and report["by_agent"] == []
    assert report["replayed"] == len(decidable(log.decisions))


def test_candidate_removing_a_forbid_reports_exactly_the_deny_to_allow_set(
    log: Log, remit: Remit
) -> None:
    report = replay_policies(remit, [], since="30d", until=log.end, examples=50)
    expected = {
        d.decision_id
        for d in log.decisions
        if d.tool == "notes/write" and d.reasons == ("no-notes-write",)
    }
    # Support's two calls and the shadow agent's; the researcher's also broke its mandate.
    assert len(expected) == 3
    assert changes(report) == {i: ("deny", "allow") for i in expected}
    assert [g["policy"] for g in report["by_policy"]] == ["no-notes-write"]
    assert report["by_change"] == {"deny->allow": 3}
    # The researcher's call keeps its outcome, with fewer reasons.
    assert report["reasons_changed"] == 1


def test_approvals_replay_as_they_went(log: Log, remit: Remit) -> None:
    report = replay_policies(remit, [*ACTIVE, NO_PAYMENTS], since="30d", until=log.end, examples=50)
    pays = [d for d in log.decisions if d.tool == "payments/transfer"]
    approved = [d for d in pays if d.outcome is Outcome.ALLOW]
    pending = [d for d in pays if d.outcome is Outcome.APPROVAL_REQUIRED]
    assert len(approved) == 1 and len(pending) == 2
    expected = {d.decision_id: ("allow", "deny") for d in approved}
    expected |= {d.decision_id: ("approval_required", "deny") for d in pending}
    assert changes(report) == expected
    assert [g["policy"] for g in report["by_policy"]] == ["no-payments"]
    # The refused presentation stays a deny, now also by no-payments.
    assert report["reasons_changed"] == 1


def test_candidate_asking_for_approval(log: Log, remit: Remit) -> None:
    report = replay_policies(
        remit, [*ACTIVE, APPROVE_DOCS], since="30d", until=log.end, examples=50
    )
    expected = {
        d.decision_id: ("allow", "approval_required")
        for d in log.decisions
        if d.tool == "docs/read" and d.outcome is Outcome.ALLOW
    }
    assert changes(report) == expected
    assert [g["policy"] for g in report["by_policy"]] == ["approve-docs-read"]


# ---------------------------------------------------------------------- window and skips


def test_skipped_records_are_counted_with_their_reason(log: Log, remit: Remit) -> None:
    report = replay_policies(remit, ACTIVE, since="30d", until=log.end)
    assert log.refused == 2 and log.unknown_tool == 1
    assert report["skipped"] == {
        "total": 3,
        "by_reason": {"refused": 2, "unknown_tool": 1},
    }
    assert report["records"] == report["replayed"] + 3


def test_since_window_is_respected(log: Log, remit: Remit) -> None:
    report = replay_policies(
        remit, [NO_NOTES, NO_DOCS], since=log.phase2_start, until=log.end, examples=50
    )
    assert report["replayed"] == len(log.phase2) == 3
    assert report["skipped"]["by_reason"] == {"refused": 1}
    expected = {d.decision_id for d in log.phase2 if d.tool == "docs/read"}
    assert changes(report) == {i: ("allow", "deny") for i in expected}
    # And --until closes it: phase 1 only.
    first = replay_policies(
        remit, [NO_NOTES, NO_DOCS], since="30d", until=log.phase2_start, examples=50
    )
    assert first["replayed"] == len(decidable(log.decisions)) - 3
    assert set(changes(first)).isdisjoint(expected)
    assert first["changed"] == 3


def test_relative_since_is_measured_from_now(log: Log, remit: Remit) -> None:
    # At the end of the recording: a minute after phase 2 began, a day after phase 1.
    later = log.clock.now()
    log.clock.set(log.end)
    try:
        assert replay_policies(remit, ACTIVE, since="2m", until=log.end)["replayed"] == 3
        assert replay_policies(remit, ACTIVE, since="59s", until=log.end)["replayed"] == 0
        every = replay_policies(remit, ACTIVE, since="2d", until=log.end)["replayed"]
        assert every == len(decidable(log.decisions))
    finally:
        log.clock.set(later)


def test_agent_filter_by_name_or_id(log: Log, remit: Remit) -> None:
    by_name = replay_policies(
        remit, [NO_NOTES, NO_DOCS], since="30d", until=log.end, agent="researcher"
    )
    by_id_ = replay_policies(
        remit, [NO_NOTES, NO_DOCS], since="30d", until=log.end, agent=log.agents["research"]
    )
    expected = [d for d in log.decisions if d.agent_id == log.agents["research"]]
    assert by_name["replayed"] == by_id_["replayed"] == len(expected)
    assert by_name["changed"] == 1
    assert [g["agent"] for g in by_name["by_agent"]] == [log.agents["research"]]
    with pytest.raises(NotFound):
        replay_policies(remit, ACTIVE, since="30d", until=log.end, agent="nobody")


def test_limit_truncates_and_says_so(log: Log, remit: Remit) -> None:
    report = replay_policies(remit, ACTIVE, since="30d", until=log.end, limit=4)
    assert report["records"] == 4 and report["truncated"] is True
    assert replay_policies(remit, ACTIVE, since="30d", until=log.end)["truncated"] is False


def test_pages_through_the_log_with_progress(log: Log, remit: Remit) -> None:
    seen: list[ReplayProgress] = []
    paged = replay_policies(
        remit, [NO_NOTES, NO_DOCS], since="30d", until=log.end, page_size=2, progress=seen.append
    )
    whole = replay_policies(remit, [NO_NOTES, NO_DOCS], since="30d", until=log.end)
    assert paged == whole
    assert len(seen) >= len(log.decisions) // 2
    assert [p.records for p in seen] == sorted(p.records for p in seen)
    assert [p.position for p in seen] == sorted(p.position for p in seen)
    assert seen[-1].position == seen[-1].total and seen[-1].records == whole["records"]


def test_a_broken_candidate_is_refused_before_reading(remit: Remit) -> None:
    broken = PolicySource("bad.cedar", "forbid(principal, action, resource) when { nope };")
    with pytest.raises(PolicyInvalid) as caught:
        replay_policies(remit, [broken], since="30d")
    assert caught.value.code == "policy_invalid"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"since": "yesterday"},
        {"since": "7x"},
        {"since": ""},
        {"since": "1d", "until": "2d"},  # until before since
        {"since": "1d", "limit": 0},
        {"since": "1d", "examples": 51},
        {"since": "1d", "examples": -1},
    ],
)
def test_bad_arguments_are_clear_errors(remit: Remit, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        replay_policies(remit, ACTIVE, **kwargs)


def test_replay_writes_nothing(log: Log, remit: Remit) -> None:
    remit.audit.flush()
    head = remit.store.audit_head()
    replay_policies(remit, [NO_NOTES, NO_DOCS], since="30d", until=log.end)
    remit.audit.flush()
    assert remit.store.audit_head() == head
    assert remit.policy.version != replay_policies(remit, [], since="1d")["candidate_version"]
    assert remit.policy.policy_ids()[-1] == "no-notes-write"  # the active set is untouched


# ---------------------------------------------------------------------- the property


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from([*TOOLS, "billing/pay"]),
            st.sampled_from(
                [
                    {},
                    {"to": "bob@partner.example"},
                    {"to": "eve@elsewhere.example"},
                    {"to": "sam@acme.example"},
                    {"to": ACCOUNT, "amount": 3},
                ]
            ),
        ),
        min_size=1,
        max_size=6,
    ),
    mandate=st.sets(st.sampled_from(TOOLS), min_size=1),
    sensitivity=st.sampled_from(["public", "internal", "confidential", "restricted"]),
    agent=st.sampled_from(["support", "research", "shadow"]),
    wait=st.integers(min_value=0, max_value=7200),
)
def test_replaying_the_active_set_never_reports_a_change(
    log: Log,
    remit: Remit,
    calls: list[tuple[str, dict[str, Any]]],
    mandate: set[str],
    sensitivity: str,
    agent: str,
    wait: int,
) -> None:
    log.clock.advance(wait)
    session = _session(remit, log.clock, log.agents[agent])
    task = _task(
        session,
        sorted(mandate),
        sensitivity=sensitivity,
        destinations=["email:*@partner.example", f"account:{ACCOUNT}"],
        call_budget=4,
    )
    since = log.clock.now()
    made = 0
    for tool, args in calls:
        with contextlib.suppress(RemitError):
            task.authorize(tool, args)
        made += 1
    log.clock.advance(1)
    report = replay_policies(remit, ACTIVE, since=since)
    assert report["records"] == made
    assert report["changed"] == 0 and report["reasons_changed"] == 0, report["by_policy"]
    assert report["evaluation_errors"] == 0


# ---------------------------------------------------------------------- the CLI


runner = CliRunner()


def _cli(log: Log, candidate: Path, *args: str) -> Any:
    env = {
        "REMIT_DATA_DIR": str(log.settings.data_dir),
        "REMIT_CATALOG_PATH": str(log.catalog_file),
        "REMIT_TRUST_DOMAIN": "acme.example",
        "COLUMNS": "300",
    }
    return runner.invoke(app, ["policy", "replay", "--candidate", str(candidate), *args], env=env)


def _write(directory: Path, sources: list[PolicySource]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for source in sources:
        path = directory / source.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source.text, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def closed_log(log: Log, remit: Remit) -> Iterator[Log]:
    """The CLI opens the data directory itself: run it after the module's service is done
    with what it records (it stays open, read-only)."""
    remit.audit.flush()
    yield log


def test_cli_json_report_and_fail_on_change(closed_log: Log, tmp_path: Path) -> None:
    log = closed_log
    candidate = _write(tmp_path / "cand", [NO_NOTES, NO_DOCS])
    result = _cli(log, candidate, "--since", "7d", "--json", "--examples", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {
        "candidate_version",
        "active_version",
        "candidate_files",
        "window",
        "truncated",
        "records",
        "replayed",
        "unchanged",
        "changed",
        "reasons_changed",
        "evaluation_errors",
        "skipped",
        "by_change",
        "by_policy",
        "by_agent",
        "recorded_policy_versions",
    }
    assert report["by_change"]["allow->deny"] >= 5
    assert report["candidate_files"] == ["ops/docs.cedar", "ops/notes.cedar"]
    group = next(g for g in report["by_policy"] if g["policy"] == "no-docs-read")
    assert len(group["examples"]) == 2
    assert set(group["examples"][0]) == {
        "seq",
        "decision_id",
        "time",
        "agent",
        "task",
        "tool",
        "destinations",
        "mode",
        "from",
        "to",
        "reasons_before",
        "reasons_after",
        "policies",
        "policy_version_before",
    }
    failed = _cli(log, candidate, "--since", "7d", "--json", "--fail-on-change")
    assert failed.exit_code == EXIT_CHANGES == 12
    assert json.loads(failed.stdout)["changed"] == report["changed"]


def test_cli_no_change_exits_zero_and_prints_tables(closed_log: Log, tmp_path: Path) -> None:
    same = _write(tmp_path / "same", ACTIVE)
    result = _cli(closed_log, same, "--since", "7d", "--fail-on-change")
    assert result.exit_code == 0, result.output
    assert "0 would change" in result.stdout
    changed = _write(tmp_path / "changed", [NO_NOTES, NO_DOCS])
    table = _cli(closed_log, changed, "--since", "7d", "--agent", "support-assistant")
    assert table.exit_code == 0, table.output
    for text in ("changes by policy", "changes by agent", "no-docs-read", "allow → deny"):
        assert text in table.stdout


def test_cli_broken_candidate_is_policy_invalid(closed_log: Log, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.cedar").write_text("permit(principal, action, resource);", encoding="utf-8")
    result = _cli(closed_log, bad, "--since", "7d", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "policy_invalid"
    missing = _cli(closed_log, tmp_path / "nope", "--since", "7d")
    assert missing.exit_code == 2
    wrong = _cli(closed_log, _write(tmp_path / "ok", ACTIVE), "--since", "soon")
    assert wrong.exit_code == 2 and "--since" in wrong.stderr
