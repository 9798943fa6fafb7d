"""Behaviour baselines and anomaly detectors (remit.core.monitor): each detector fires
on a seeded anomalous pattern and stays quiet on the baseline traffic itself."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remit.core.identity import Mode
from remit.core.monitor import (
    DEFAULT_WEIGHTS,
    Alert,
    AnomalyMonitor,
    AnomalyResponse,
    Finding,
    FindingKind,
    MonitorConfig,
    combine,
)
from remit.core.pipeline import Decision, Outcome
from remit.errors import InvalidRequest

AGENT = "spiffe://acme.example/agent/support"
DAY = 1_800_000_000.0 - (1_800_000_000.0 % 86400)  # 00:00 UTC
NINE = DAY + 9 * 3600
_ids = itertools.count()


def record(
    tool: str,
    task: str,
    *,
    destinations: Sequence[str] = (),
    outcome: str = "allow",
    reasons: Sequence[str] = (),
    agent: str = AGENT,
) -> dict[str, Any]:
    return {
        "agent": agent,
        "task": task,
        "tool": tool,
        "destinations": list(destinations),
        "outcome": outcome,
        "allowed": outcome == "allow",
        "reasons": list(reasons),
        "owner": "sam@acme.example",
    }


@dataclass(frozen=True)
class Call:
    at: float
    task: str
    tool: str
    destinations: tuple[str, ...] = ()


def baseline_traffic(days: int = 2, tasks_per_hour: int = 3) -> list[Call]:
    """Office hours (09-17 UTC): each task reads a ticket, looks up the CRM, replies to one of
    three customers. About 9 calls per busy minute."""
    customers = ("email:alice@example.com", "email:bob@example.com", "email:carol@example.com")
    calls: list[Call] = []
    n = 0
    for day in range(days):
        for hour in range(9, 17):
            for k in range(tasks_per_hour):
                start = DAY + day * 86400 + hour * 3600 + k * 600
                task = f"tsk_base{n:05d}"
                customer = customers[n % 3]
                n += 1
                for i, (tool, dest) in enumerate(
                    (("ticket/read", ()), ("crm/read", ()), ("email/send", (customer,)))
                ):
                    # three calls 3 s apart, three tasks in the same minute: 9 per minute
                    for j in range(3):
                        calls.append(
                            Call(start + 3 * (3 * i + j) % 60, f"{task}-{j}", tool, tuple(dest))
                        )
    calls.sort(key=lambda c: c.at)
    return calls


def learned(calls: Iterable[Call], config: MonitorConfig | None = None) -> AnomalyMonitor:
    monitor = AnomalyMonitor(config or MonitorConfig())
    for call in calls:
        monitor.learn(record(call.tool, call.task, destinations=call.destinations), call.at)
    return monitor


def kinds(findings: Iterable[Finding]) -> set[FindingKind]:
    return {f.kind for f in findings}


def replay(monitor: AnomalyMonitor, calls: Sequence[Call], shift: float, tag: str) -> set[Any]:
    """Assess, then learn, each call again (as the pipeline would), ``shift`` seconds later and
    in fresh tasks; returns every finding kind seen."""
    seen: set[Any] = set()
    for call in calls:
        task = f"{call.task}-{tag}"
        seen |= kinds(monitor.assess(AGENT, task, call.tool, call.destinations, call.at + shift))
        monitor.learn(record(call.tool, task, destinations=call.destinations), call.at + shift)
    return seen


BASE = baseline_traffic()
WEEK = 7 * 86400.0


def test_baseline_traffic_replayed_is_quiet() -> None:
    monitor = learned(BASE)
    assert replay(monitor, BASE, WEEK, "again") == set()


# ---------------------------------------------------------------------- new tool


def test_new_tool_fires_after_warmup_and_not_before() -> None:
    monitor = learned(BASE)
    findings = monitor.assess(AGENT, "tsk_new", "crm/export", (), NINE + WEEK)
    assert kinds(findings) == {FindingKind.NEW_TOOL}
    assert findings[0].score == DEFAULT_WEIGHTS[FindingKind.NEW_TOOL]
    assert "crm/export was never used" in findings[0].explanation
    # A fresh agent (under the warm-up) is quiet.
    young = learned(BASE[:10])
    assert young.assess(AGENT, "tsk_new", "crm/export", (), NINE + WEEK) == []
    # Once allowed and learned it is normal.
    monitor.learn(record("crm/export", "tsk_new"), NINE + WEEK)
    after = monitor.assess(AGENT, "tsk_other", "crm/export", (), NINE + WEEK + 1)
    assert FindingKind.NEW_TOOL not in kinds(after)


# ---------------------------------------------------------------------- new destination


def test_new_destination_fires_and_is_learned_only_when_allowed() -> None:
    monitor = learned(BASE)
    prev = "tsk_seq"
    monitor.learn(record("ticket/read", prev), NINE + WEEK)
    monitor.learn(record("crm/read", prev), NINE + WEEK + 1)
    evil = ("email:attacker@evil.example",)
    findings = monitor.assess(AGENT, prev, "email/send", evil, NINE + WEEK + 2)
    assert kinds(findings) == {FindingKind.NEW_DESTINATION}
    assert "attacker@evil.example" in findings[0].explanation
    assert combine(findings) >= 70
    # Known destinations are quiet.
    known = monitor.assess(AGENT, prev, "email/send", ("email:bob@example.com",), NINE + WEEK + 2)
    assert known == []
    # A denied attempt does not make the destination normal.
    monitor.learn(record("email/send", prev, destinations=evil, outcome="deny"), NINE + WEEK + 3)
    assert FindingKind.NEW_DESTINATION in kinds(
        monitor.assess(AGENT, "tsk_x", "email/send", evil, NINE + WEEK + 4)
    )


def test_many_new_destinations_are_summarised() -> None:
    monitor = learned(BASE)
    many = tuple(f"email:u{i}@evil.example" for i in range(7))
    (finding,) = [
        f
        for f in monitor.assess(AGENT, "t", "email/send", many, NINE + WEEK)
        if f.kind is FindingKind.NEW_DESTINATION
    ]
    assert finding.explanation.endswith("and 4 more")


# ---------------------------------------------------------------------- rate spike


def test_rate_spike_fires_far_above_the_busy_rate() -> None:
    monitor = learned(BASE)
    start = NINE + WEEK + 30 * 60  # a minute with no baseline tasks
    seen: set[Any] = set()
    for i in range(60):  # 60 calls in 30 s: far above ~9 per busy minute
        at = start + i * 0.5
        found = monitor.assess(AGENT, f"tsk_r{i}", "ticket/read", (), at)
        if i < 25:
            assert FindingKind.RATE_SPIKE not in kinds(found), i
        seen |= kinds(found)
        monitor.learn(record("ticket/read", f"tsk_r{i}"), at)
    assert FindingKind.RATE_SPIKE in seen


def _burst(monitor: AnomalyMonitor, start: float, tag: str, *, outcome: str = "allow") -> bool:
    """60 calls in 30 s, each assessed then learned as the pipeline would (with its anomaly
    record); True when any was flagged ``rate_spike``."""
    flagged = False
    for i in range(60):
        at, task = start + i * 0.5, f"tsk_{tag}{i}"
        found = monitor.assess(AGENT, task, "ticket/read", (), at)
        spike = FindingKind.RATE_SPIKE in kinds(found)
        flagged = flagged or spike
        rec = record("ticket/read", task, outcome=outcome)
        rec["anomaly"] = {"score": 70, "findings": [f.to_data() for f in found]}
        monitor.learn(rec, at)
    return flagged


def test_a_burst_of_approval_required_calls_does_not_hide_the_next_burst() -> None:
    # A brand-new agent: its first busy minute (rate_spike still warming up) is a burst of
    # calls that all wait for approval. It must not become the learned peak.
    monitor = AnomalyMonitor()
    assert not _burst(monitor, NINE, "ask", outcome="approval_required")
    for m in range(1, 7):  # then quiet, ordinary busy minutes of ~5 allowed calls
        for i in range(5):
            monitor.learn(record("ticket/read", f"tsk_n{m}_{i}"), NINE + m * 60 + i)
    assert _burst(monitor, NINE + 10 * 60, "again", outcome="approval_required")


def test_a_flagged_spike_minute_does_not_raise_the_learned_rate() -> None:
    monitor = learned(BASE)
    busy = monitor.baseline(AGENT)
    assert busy is not None
    before = busy.busy_rate()
    start = NINE + WEEK + 30 * 60
    assert _burst(monitor, start, "one")
    monitor.learn(record("ticket/read", "tsk_after"), start + 120)  # closes the burst minute
    assert busy.busy_rate() == pytest.approx(before, rel=0.01)
    assert _burst(monitor, start + 600, "two")  # an identical burst is flagged again


def test_a_quiet_agents_few_calls_are_not_a_spike() -> None:
    # One call a minute for an hour, then three calls at once: 3x the usual, but tiny.
    calls = [Call(NINE + 60 * i, f"tsk_q{i}", "ticket/read") for i in range(60)]
    monitor = learned(calls)
    at = NINE + 3601
    seen: set[Any] = set()
    for i in range(3):
        seen |= kinds(monitor.assess(AGENT, f"tsk_z{i}", "ticket/read", (), at + i))
        monitor.learn(record("ticket/read", f"tsk_z{i}"), at + i)
    assert FindingKind.RATE_SPIKE not in seen


def test_rate_spike_waits_for_rate_history() -> None:
    monitor = AnomalyMonitor()
    seen: set[Any] = set()
    for i in range(100):  # a brand-new agent that starts busy
        seen |= kinds(monitor.assess(AGENT, f"t{i}", "ticket/read", (), NINE + i * 0.1))
        monitor.learn(record("ticket/read", f"t{i}"), NINE + i * 0.1)
    assert seen == set()


# ---------------------------------------------------------------------- denial burst


def decision(outcome: Outcome, *, mode: Mode = Mode.ENFORCE, task: str = "tsk_d") -> Decision:
    return Decision(
        decision_id=f"dec_{next(_ids)}",
        outcome=outcome,
        allowed=outcome is Outcome.ALLOW or mode is Mode.SHADOW,
        mode=mode,
        reasons=("r",),
        policy_version="v1",
        task_id=task,
        agent_id=AGENT,
        instance_id="ins_1",
        tool="email/send",
        args_digest="d",
    )


def test_denial_burst_fires_on_k_denials_within_the_window() -> None:
    alerts: list[Alert] = []
    monitor = AnomalyMonitor(MonitorConfig(denial_burst=5, denial_window=60), sink=alerts.append)
    for i in range(5):
        assert FindingKind.DENIAL_BURST not in kinds(
            monitor.assess(AGENT, "tsk_d", "email/send", (), NINE + i)
        )
        monitor.observe(
            decision(Outcome.DENY), record("email/send", "tsk_d", outcome="deny"), NINE + i
        )
    # The fifth denial completes the burst: one alert, at once.
    assert [a.kinds for a in alerts] == [("denial_burst",)]
    assert alerts[0].findings[0].explanation == "5 denials within 60 s"
    # The next call sees it in its score.
    burst = monitor.assess(AGENT, "tsk_d", "email/send", (), NINE + 6)
    assert kinds(burst) == {FindingKind.DENIAL_BURST}


@given(gaps=st.lists(st.floats(min_value=16.0, max_value=600.0), min_size=4, max_size=30))
def test_spread_out_denials_are_not_a_burst(gaps: list[float]) -> None:
    # Five denials never fit in 60 s when each is more than 15 s after the previous one.
    monitor = AnomalyMonitor(MonitorConfig(denial_burst=5, denial_window=60))
    at = NINE
    for gap in gaps:
        at += gap
        monitor.learn(record("email/send", "t", outcome="deny"), at)
        assert FindingKind.DENIAL_BURST not in kinds(monitor.assess(AGENT, "t", "x/y", (), at))


# ---------------------------------------------------------------------- approval flood


def asked(task: str, approval: str, *, agent: str = AGENT) -> dict[str, Any]:
    """A decision record of a call sent to approval as request ``approval``."""
    rec = record("payments/refund", task, outcome="approval_required", agent=agent)
    rec["approval"] = approval
    return rec


def test_approval_flood_fires_on_k_requests_within_the_window() -> None:
    alerts: list[Alert] = []
    monitor = AnomalyMonitor(MonitorConfig(approval_flood=5), sink=alerts.append)
    for i in range(5):
        found = monitor.assess(AGENT, f"tsk_f{i}", "payments/refund", (), NINE + i * 10)
        assert FindingKind.APPROVAL_FLOOD not in kinds(found)
        monitor.observe(
            decision(Outcome.APPROVAL_REQUIRED, task=f"tsk_f{i}"),
            asked(f"tsk_f{i}", f"apr_{i}"),
            NINE + i * 10,
        )
    # The fifth request (40 s after the first) completes the flood: one alert, at once,
    # needing no warm-up (a fresh agent).
    assert [a.kinds for a in alerts] == [("approval_flood",)]
    assert alerts[0].score == 70
    assert alerts[0].findings[0].explanation == "5 approval requests within 60 s"
    assert alerts[0].task_id == "tsk_f4"
    # The next call carries it in its score, so the automatic response applies to it.
    assert kinds(monitor.assess(AGENT, "tsk_g", "docs/read", (), NINE + 45)) == {
        FindingKind.APPROVAL_FLOOD
    }
    # More requests in the flood are deduplicated (one alert per kind per dedupe_seconds).
    for i in range(5, 12):
        monitor.observe(
            decision(Outcome.APPROVAL_REQUIRED), asked("tsk_h", f"apr_{i}"), NINE + 46 + i
        )
    assert len(alerts) == 1
    # Another agent is not affected.
    assert monitor.assess("spiffe://acme.example/agent/other", "t", "x/y", (), NINE + 50) == []


def test_the_same_pending_request_presented_again_counts_once() -> None:
    # An agent retrying one call before a human answered re-presents one request: no flood.
    monitor = AnomalyMonitor(MonitorConfig(approval_flood=3))
    for i in range(20):
        monitor.learn(asked("tsk_p", "apr_same"), NINE + i)
    assert FindingKind.APPROVAL_FLOOD not in kinds(
        monitor.assess(AGENT, "tsk_p", "payments/refund", (), NINE + 21)
    )
    monitor.learn(asked("tsk_q", "apr_other"), NINE + 22)
    monitor.learn(asked("tsk_r", "apr_third"), NINE + 23)
    assert FindingKind.APPROVAL_FLOOD in kinds(
        monitor.assess(AGENT, "tsk_s", "payments/refund", (), NINE + 24)
    )


@given(gaps=st.lists(st.floats(min_value=16.0, max_value=600.0), min_size=4, max_size=30))
def test_spread_out_approval_requests_are_not_a_flood(gaps: list[float]) -> None:
    # Five requests never fit in 60 s when each is more than 15 s after the previous one.
    alerts: list[Alert] = []
    monitor = AnomalyMonitor(MonitorConfig(approval_flood=5), sink=alerts.append)
    at = NINE
    for n, gap in enumerate(gaps):
        at += gap
        assert FindingKind.APPROVAL_FLOOD not in kinds(
            monitor.assess(AGENT, f"t{n}", "payments/refund", (), at)
        )
        monitor.observe(decision(Outcome.APPROVAL_REQUIRED), asked(f"t{n}", f"apr_{n}"), at)
    assert alerts == []


def test_baseline_traffic_with_routine_approvals_is_quiet() -> None:
    # The baseline again, but every email/send now first waits for a human (three requests
    # in one minute, every ten minutes), then its approved retry is allowed: quiet.
    alerts: list[Alert] = []
    monitor = learned(BASE)
    monitor.sink = alerts.append
    seen: set[Any] = set()
    for n, call in enumerate(BASE):
        task, at = f"{call.task}-routine", call.at + WEEK
        if call.tool == "email/send":
            seen |= kinds(monitor.assess(AGENT, task, call.tool, call.destinations, at))
            monitor.observe(
                decision(Outcome.APPROVAL_REQUIRED, task=task), asked(task, f"apr_{n}"), at
            )
            at += 0.5
        seen |= kinds(monitor.assess(AGENT, task, call.tool, call.destinations, at))
        rec = record(call.tool, task, destinations=call.destinations)
        monitor.observe(decision(Outcome.ALLOW, task=task), rec, at)
    assert seen == set()
    assert alerts == []
    baseline = monitor.baseline(AGENT)
    assert baseline is not None and len(baseline.approvals) == 5  # it did count them


def test_kill_switch_denials_do_not_count() -> None:
    monitor = AnomalyMonitor(MonitorConfig(denial_burst=3))
    for i in range(10):
        monitor.learn(record("email/send", "t", outcome="deny", reasons=["kill-switch"]), NINE + i)
    assert monitor.assess(AGENT, "t", "email/send", (), NINE + 11) == []


# ---------------------------------------------------------------------- unusual sequence


def test_unusual_sequence_fires_on_a_never_seen_pair() -> None:
    monitor = learned(BASE)
    # A task that opens by sending mail: never the first call before.
    findings = monitor.assess(AGENT, "tsk_fresh", "email/send", (), NINE + WEEK)
    assert kinds(findings) == {FindingKind.UNUSUAL_SEQUENCE}
    assert "as a task's first call" in findings[0].explanation
    # crm/read straight after email/send never happened either.
    monitor.learn(record("ticket/read", "tsk_s"), NINE + WEEK)
    monitor.learn(record("email/send", "tsk_s"), NINE + WEEK + 1)
    odd = monitor.assess(AGENT, "tsk_s", "crm/read", (), NINE + WEEK + 2)
    assert kinds(odd) == {FindingKind.UNUSUAL_SEQUENCE}
    assert "after email/send" in odd[0].explanation
    # The usual order is quiet.
    monitor.learn(record("ticket/read", "tsk_u"), NINE + WEEK)
    assert monitor.assess(AGENT, "tsk_u", "crm/read", (), NINE + WEEK + 1) == []


# ---------------------------------------------------------------------- off hours


def test_off_hours_fires_outside_the_learned_hours() -> None:
    monitor = learned(BASE)
    night = DAY + WEEK + 3 * 3600
    findings = monitor.assess(AGENT, "tsk_n", "ticket/read", (), night)
    assert kinds(findings) == {FindingKind.OFF_HOURS}
    assert "at 03h UTC" in findings[0].explanation
    assert combine(findings) < 70  # on its own, a hint, not a reason to stop
    assert monitor.assess(AGENT, "tsk_n", "ticket/read", (), DAY + WEEK + 10 * 3600) == []


# ---------------------------------------------------------------------- properties

tools = st.sampled_from(["ticket/read", "crm/read", "docs/read", "email/send", "notes/write"])
dests = st.lists(
    st.sampled_from(["email:a@x.example", "email:b@x.example", "domain:y.example"]), max_size=2
)


@st.composite
def traffic(draw: st.DrawFn) -> list[Call]:
    n = draw(st.integers(min_value=60, max_value=200))
    at = NINE
    calls = []
    for i in range(n):
        at += draw(st.floats(min_value=1.0, max_value=30.0))
        task = f"tsk_h{draw(st.integers(min_value=0, max_value=i // 4))}"
        calls.append(Call(at, task, draw(tools), tuple(draw(dests))))
    return calls


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=traffic())
def test_any_learned_traffic_replayed_is_quiet(calls: list[Call]) -> None:
    # Whatever the agent did (at least the warm-up), doing it again is not an anomaly.
    monitor = learned(calls)
    # Replay in the same hours, with the same task structure, in fresh task ids.
    assert replay(monitor, calls, WEEK, "again") == set()


@given(weights=st.lists(st.integers(min_value=0, max_value=100), max_size=6))
def test_score_is_bounded_and_monotone(weights: list[int]) -> None:
    findings = [Finding(FindingKind.NEW_TOOL, w, "x") for w in weights]
    score = combine(findings)
    assert 0 <= score <= 100
    assert score >= max(weights, default=0)
    assert combine([*findings, Finding(FindingKind.OFF_HOURS, 10, "y")]) >= score


def test_memory_is_bounded() -> None:
    config = MonitorConfig(max_destinations=64, max_agents=3, max_open_tasks=10, warmup=0)
    monitor = AnomalyMonitor(config)
    for i in range(1000):
        monitor.learn(record("email/send", f"t{i}", destinations=[f"email:u{i}@x.example"]), NINE)
    baseline = monitor.baseline(AGENT)
    assert baseline is not None and len(baseline.destinations) <= 64
    assert len(monitor._positions) <= 10
    for i in range(10):
        monitor.learn(record("docs/read", "t", agent=f"spiffe://a/agent/a{i}"), NINE)
    assert len(monitor._baselines) <= 3


def test_bad_settings_are_refused() -> None:
    for bad in (
        {"threshold": 101},
        {"warmup": -1},
        {"denial_burst": 0},
        {"approval_flood": 0},
        {"approval_window": 0},
        {"rate_factor": 0.5},
        {"off_hours_share": 1.0},
        {"weights": {FindingKind.NEW_TOOL: 50}},
    ):
        with pytest.raises(InvalidRequest) as err:
            MonitorConfig(**bad)
        assert err.value.reason == "bad_setting"


# ---------------------------------------------------------------------- alerts


def anomalous(monitor: AnomalyMonitor, task: str, at: float) -> dict[str, Any]:
    findings = monitor.assess(AGENT, task, "email/send", ("email:x@evil.example",), at)
    data = record("email/send", task, destinations=["email:x@evil.example"], outcome="deny")
    data["anomaly"] = {
        "score": combine(findings),
        "findings": [f.to_data() for f in findings],
        "response": "suspend",
    }
    return data


def test_alerts_are_deduplicated_per_agent_and_kind() -> None:
    alerts: list[Alert] = []
    config = MonitorConfig(dedupe_seconds=300, response=AnomalyResponse.NONE)
    monitor = learned(BASE, config)
    monitor.sink = alerts.append
    at = NINE + WEEK
    data = anomalous(monitor, "tsk_a", at)
    data["anomaly"]["response"] = "none"
    monitor.observe(decision(Outcome.DENY, task="tsk_a"), data, at)
    monitor.observe(decision(Outcome.DENY, task="tsk_a"), data, at + 10)
    assert len(alerts) == 1
    alert = alerts[0]
    assert set(alert.kinds) == {"new_destination", "unusual_sequence"}
    assert alert.response is AnomalyResponse.NONE and not alert.enforced
    assert "arguments" not in alert.to_data()
    monitor.observe(decision(Outcome.DENY, task="tsk_a"), data, at + 301)
    assert len(alerts) == 2


def test_a_suspension_is_always_reported_but_never_in_shadow_mode() -> None:
    alerts: list[Alert] = []
    monitor = learned(BASE, MonitorConfig(response=AnomalyResponse.SUSPEND))
    monitor.sink = alerts.append
    at = NINE + WEEK
    data = anomalous(monitor, "tsk_a", at)
    monitor.observe(decision(Outcome.DENY, task="tsk_a"), data, at)
    monitor.observe(decision(Outcome.DENY, task="tsk_a"), data, at + 1)  # deduped kinds
    assert [a.enforced for a in alerts] == [True, True]
    monitor.observe(decision(Outcome.DENY, mode=Mode.SHADOW, task="tsk_a"), data, at + 2)
    assert len(alerts) == 2  # shadow: nothing new, nothing enforced


def test_alert_round_trips_through_its_record() -> None:
    finding = Finding(FindingKind.RATE_SPIKE, 70, "90 calls in the last minute")
    alert = Alert(AGENT, "tsk_1", "dec_1", "docs/read", 70, (finding,), AnomalyResponse.NONE,
                  False, "enforce", owner="sam")  # fmt: skip
    back = Alert.from_record(alert.to_data(), at=5.0, event_id="evt_1", seq=9)
    assert back.findings == (finding,) and back.kinds == ("rate_spike",) and back.seq == 9
    with pytest.raises(ValueError):
        Alert.from_record({"agent": AGENT}, at=0.0)


# ---------------------------------------------------------------------- redaction


def test_new_destination_explanation_never_carries_url_secrets() -> None:
    # The monitor sees destinations as the pipeline passes them: ``ToolSpec.destinations_in``,
    # i.e. normalized. A URL keeps scheme://host[:port]/path: the query and fragment are
    # dropped and userinfo is refused, so no token reaches the alert, webhook or audit log.
    from remit.core.catalog import catalog_from_data

    tool = {"name": "hook/post", "privilege": "act", "destinations": {"url": "url"}}
    spec = catalog_from_data({"tools": [tool]}).get("hook/post")
    assert spec is not None
    (dest,) = spec.destinations_in(
        {"url": "https://Hooks.Example.com:8443/v1/in?token=s3cr3t-QUERY#frag-s3cr3t"}
    )
    assert str(dest) == "url:https://hooks.example.com:8443/v1/in"
    with pytest.raises(InvalidRequest) as refused:
        spec.destinations_in({"url": "https://bot:s3cr3t-PASS@hooks.example.com/v1/in"})
    assert "s3cr3t" not in str(refused.value)
    monitor = learned(BASE)
    findings = monitor.assess(AGENT, "tsk_url", "email/send", (str(dest),), NINE + WEEK)
    (finding,) = [f for f in findings if f.kind is FindingKind.NEW_DESTINATION]
    assert finding.explanation == "never-seen destination url:https://hooks.example.com:8443/v1/in"
    assert "s3cr3t" not in finding.explanation and "?" not in finding.explanation
