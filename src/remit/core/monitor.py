"""Behaviour baselines and anomaly findings (DESIGN §2 step 4; issue 7, item 3).

Pure: no I/O, time is passed in. Per agent, a ``Baseline`` is learned from
decision records (the audit log at start, then each new decision):

- tools used, with counts, and the destinations they reached;
- calls per minute: an EWMA of the mean and variance of busy minutes (a minute
  with at least one call), and the current rate over a sliding minute;
- an hour-of-day histogram (UTC);
- tool pairs within one task (``^`` opens a task), with counts;
- recent denials, and recent approval requests.

What is learned as *normal* is only what was allowed (``outcome == allow``):
a denied or approval-pending call never teaches the baseline that its tool or
destination is usual. Every decided call counts towards the *current* rate, but
the learned busy rate (EWMA and peak) folds in only allowed calls, and never a
minute in which a call was flagged ``rate_spike`` (so one burst cannot raise the
baseline and hide the next one). Every deny (except the kill switch's) counts
towards a denial burst, and every ``approval_required`` outcome towards an approval
flood (the same pending request presented again is counted once).

Detectors, each a ``Finding`` with a kind, a score contribution and an
explanation:

==================  ==========================================================
``new_tool``        a tool this agent has never been allowed to use
``new_destination`` a destination this agent has never been allowed to reach
``rate_spike``      calls in the last minute > ``rate_min_calls`` and more than
                    ``rate_factor`` × the busy rate: max(EWMA mean + 2σ, the
                    busiest minute decayed by ``peak_decay`` per busy minute)
``denial_burst``    ≥ ``denial_burst`` denials within ``denial_window`` seconds
``approval_flood``  ≥ ``approval_flood`` approval requests within ``approval_window``
                    seconds (RATE-04, AGT-07: tiring the human to hide a risky call)
``unusual_sequence`` a tool pair in one task seen ≤ ``rare_sequence`` times
``off_hours``       an hour of day holding < ``off_hours_share`` of the history
==================  ==========================================================

Warm-up: until an agent has ``warmup`` learned (allowed) decisions, ``new_tool``,
``new_destination``, ``unusual_sequence`` and ``off_hours`` are suppressed, so a
fresh agent is quiet; ``rate_spike`` waits for ``rate_min_minutes`` busy minutes
of history. ``denial_burst`` and ``approval_flood`` need no history.

The anomaly score (0..100) combines the findings as independent evidence:
``100 × (1 − Π (1 − score_i / 100))``; one finding alone scores its own weight.

Memory is bounded: per agent at most ``max_tools`` tools, ``max_destinations``
destinations and ``max_sequences`` pairs (the least used half is dropped when a
table is full, so an evicted entry may be flagged again); at most ``max_agents``
baselines and ``max_open_tasks`` remembered task positions (oldest dropped).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from remit.core.catalog import ToolSpec
from remit.core.identity import Mode
from remit.core.pipeline import STOP_REASON, BasicMonitor, Decision, MonitorVerdict
from remit.core.tasks import Task
from remit.errors import InvalidRequest

ANOMALY_REASON = "anomaly"
START = "^"  # the position before a task's first tool
MAX_EXPLAINED_DESTINATIONS = 3


class FindingKind(StrEnum):
    NEW_TOOL = "new_tool"
    NEW_DESTINATION = "new_destination"
    RATE_SPIKE = "rate_spike"
    DENIAL_BURST = "denial_burst"
    APPROVAL_FLOOD = "approval_flood"
    UNUSUAL_SEQUENCE = "unusual_sequence"
    OFF_HOURS = "off_hours"


class AnomalyResponse(StrEnum):
    """What Remit does by itself when a call's anomaly score reaches the threshold."""

    NONE = "none"
    REQUIRE_APPROVAL = "require_approval"
    SUSPEND = "suspend"


DEFAULT_WEIGHTS: Mapping[FindingKind, int] = {
    FindingKind.NEW_TOOL: 60,
    FindingKind.NEW_DESTINATION: 70,
    FindingKind.RATE_SPIKE: 70,
    FindingKind.DENIAL_BURST: 70,
    FindingKind.APPROVAL_FLOOD: 70,
    FindingKind.UNUSUAL_SEQUENCE: 40,
    FindingKind.OFF_HOURS: 25,
}


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Detector settings. ``threshold`` and ``response`` drive the automatic response."""

    warmup: int = 50
    rate_min_calls: int = 30
    rate_factor: float = 3.0
    rate_min_minutes: int = 5
    rate_alpha: float = 0.1
    peak_decay: float = 0.9995  # per busy minute: a peak halves in ~1,400 busy minutes
    denial_burst: int = 5
    denial_window: float = 60.0
    approval_flood: int = 5
    approval_window: float = 60.0
    rare_sequence: int = 0
    off_hours_share: float = 0.02
    dedupe_seconds: float = 300.0
    threshold: int = 70
    response: AnomalyResponse = AnomalyResponse.NONE
    weights: Mapping[FindingKind, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    max_tools: int = 1024
    max_destinations: int = 4096
    max_sequences: int = 4096
    max_agents: int = 10_000
    max_open_tasks: int = 100_000

    def __post_init__(self) -> None:
        def bad(what: str) -> InvalidRequest:
            return InvalidRequest(f"anomaly monitor: {what}", reason="bad_setting")

        for name in ("warmup", "rare_sequence"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must not be negative")
        for name in (
            "rate_min_calls",
            "rate_min_minutes",
            "denial_burst",
            "approval_flood",
            "max_tools",
            "max_destinations",
            "max_sequences",
            "max_agents",
            "max_open_tasks",
        ):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be at least 1")
        if not 0 <= self.threshold <= 100:
            raise bad("threshold must be from 0 to 100")
        if not (self.rate_factor >= 1.0 and 0.0 < self.rate_alpha <= 1.0):
            raise bad("rate_factor must be ≥ 1 and rate_alpha in (0, 1]")
        if not 0.0 <= self.peak_decay <= 1.0:
            raise bad("peak_decay must be from 0 to 1")
        if not (self.denial_window > 0 and self.dedupe_seconds >= 0):
            raise bad("denial_window must be positive and dedupe_seconds not negative")
        if not self.approval_window > 0:
            raise bad("approval_window must be positive")
        if not 0.0 <= self.off_hours_share < 1.0:
            raise bad("off_hours_share must be from 0 to 1")
        if not isinstance(self.response, AnomalyResponse):
            raise bad("response must be none, require_approval or suspend")
        if set(self.weights) != set(FindingKind) or any(
            not 0 <= w <= 100 for w in self.weights.values()
        ):
            raise bad("weights must give every finding kind a score from 0 to 100")


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    score: int
    explanation: str

    def to_data(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "score": self.score, "explanation": self.explanation}

    @classmethod
    def from_data(cls, data: object) -> Finding:
        if not isinstance(data, Mapping):
            raise ValueError("a finding must be an object")
        kind, score, text = data.get("kind"), data.get("score"), data.get("explanation")
        if not isinstance(score, int) or not isinstance(text, str):
            raise ValueError("a finding needs an integer score and an explanation")
        return cls(FindingKind(str(kind)), score, text)


def combine(findings: Sequence[Finding]) -> int:
    """The anomaly score, 0..100: independent evidence, ``1 − Π(1 − s/100)``."""
    quiet = 1.0
    for finding in findings:
        quiet *= 1.0 - min(100, max(0, finding.score)) / 100.0
    return min(100, max(0, round(100.0 * (1.0 - quiet))))


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomaly alert: what was found on one decision, and what was done about it.

    ``enforced`` is false in shadow mode (recorded, never blocked) and when the
    response is ``none``. It never carries the call's arguments."""

    agent_id: str
    task_id: str
    decision_id: str
    tool: str
    score: int
    findings: tuple[Finding, ...]
    response: AnomalyResponse
    enforced: bool
    mode: str
    owner: str = ""
    at: float = 0.0
    event_id: str = ""
    seq: int = 0

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(f.kind.value for f in self.findings)

    def explain(self) -> str:
        return "; ".join(f.explanation for f in self.findings)

    def to_data(self) -> dict[str, Any]:
        """The audit record's data (kind ``alert``)."""
        return {
            "agent": self.agent_id,
            "task": self.task_id,
            "decision": self.decision_id,
            "tool": self.tool,
            "owner": self.owner,
            "score": self.score,
            "kinds": list(self.kinds),
            "findings": [f.to_data() for f in self.findings],
            "explanation": self.explain(),
            "response": self.response.value,
            "enforced": self.enforced,
            "mode": self.mode,
        }

    @classmethod
    def from_record(
        cls, data: Mapping[str, Any], *, at: float, event_id: str = "", seq: int = 0
    ) -> Alert:
        """Read an ``alert`` audit record's data back; ValueError if it is not one."""
        try:
            findings = tuple(Finding.from_data(f) for f in data.get("findings") or ())
            score = data["score"]
            if not isinstance(score, int):
                raise ValueError("score")
            return cls(
                agent_id=str(data["agent"]),
                task_id=str(data.get("task") or ""),
                decision_id=str(data.get("decision") or ""),
                tool=str(data.get("tool") or ""),
                score=score,
                findings=findings,
                response=AnomalyResponse(data.get("response", "none")),
                enforced=bool(data.get("enforced", False)),
                mode=str(data.get("mode") or "enforce"),
                owner=str(data.get("owner") or ""),
                at=at,
                event_id=event_id,
                seq=seq,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an alert record: {exc}") from None


# --------------------------------------------------------------------------- the baseline


def _bump(table: dict[Any, int], key: Any, cap: int) -> None:
    """Count ``key``; when the table is full, drop its least-used half first."""
    if key not in table and len(table) >= cap:
        keep = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[: cap // 2]
        table.clear()
        table.update(keep)
    table[key] = table.get(key, 0) + 1


class Baseline:
    """One agent's learned behaviour (see the module docstring). Not thread-safe:
    ``AnomalyMonitor`` serialises access."""

    __slots__ = (
        "_minute",
        "_minute_allowed",
        "_minute_count",
        "_minute_spiked",
        "_prev_count",
        "approvals",
        "config",
        "denials",
        "destinations",
        "hours",
        "learned",
        "rate_mean",
        "rate_minutes",
        "rate_peak",
        "rate_var",
        "sequences",
        "tools",
    )

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.learned = 0  # allowed decisions learned as normal
        self.tools: dict[str, int] = {}
        self.destinations: dict[str, int] = {}
        self.sequences: dict[tuple[str, str], int] = {}
        self.hours = [0] * 24
        self.rate_mean = 0.0
        self.rate_var = 0.0
        self.rate_minutes = 0  # closed busy minutes folded into the EWMA
        self.rate_peak = 0.0  # the busiest minute, decaying slowly
        self._minute = -1
        self._minute_count = 0
        self._minute_allowed = 0  # allowed calls in the current minute: what the rate learns
        self._minute_spiked = False  # a call in the current minute was flagged rate_spike
        self._prev_count = 0
        self.denials: deque[float] = deque(maxlen=config.denial_burst)
        # (time, approval id or "") of the latest approval requests
        self.approvals: deque[tuple[float, str]] = deque(maxlen=config.approval_flood)

    # ------------------------------------------------------------------ learning
    def count_call(self, now: float, *, allowed: bool = True, spiked: bool = False) -> None:
        """Count a decided call in its minute. Only ``allowed`` calls are learned as the
        busy rate, and a minute with a ``spiked`` call is not learned at all."""
        bucket = int(now // 60.0)
        if bucket > self._minute:
            if self._minute_allowed > 0 and not self._minute_spiked:
                self._close_minute(self._minute_allowed)
            self._prev_count = self._minute_count if bucket == self._minute + 1 else 0
            self._minute, self._minute_count = bucket, 0
            self._minute_allowed, self._minute_spiked = 0, False
        self._minute_count += 1  # a record older than the current minute counts in it
        self._minute_allowed += 1 if allowed else 0
        self._minute_spiked = self._minute_spiked or spiked

    def _close_minute(self, count: int) -> None:
        if self.rate_minutes == 0:
            self.rate_mean, self.rate_var = float(count), 0.0
        else:
            alpha = self.config.rate_alpha
            diff = count - self.rate_mean
            self.rate_mean += alpha * diff
            self.rate_var = (1.0 - alpha) * (self.rate_var + alpha * diff * diff)
        self.rate_peak = max(float(count), self.rate_peak * self.config.peak_decay)
        self.rate_minutes += 1

    def count_denial(self, now: float) -> bool:
        """Remember a denial; True when it completes a burst."""
        was = self.burst(now)
        self.denials.append(now)
        return not was and self.burst(now)

    def count_approval(self, now: float, approval_id: str = "") -> bool:
        """Remember an approval request; True when it completes a flood. A pending request
        presented again (same ``approval_id``) is not a new request: not counted."""
        if approval_id and any(seen == approval_id for _, seen in self.approvals):
            return False
        was = self.flood(now)
        self.approvals.append((now, approval_id))
        return not was and self.flood(now)

    def learn_allowed(
        self, tool: str, destinations: Sequence[str], previous: str, now: float
    ) -> None:
        cfg = self.config
        self.learned += 1
        _bump(self.tools, tool, cfg.max_tools)
        for destination in destinations:
            _bump(self.destinations, destination, cfg.max_destinations)
        _bump(self.sequences, (previous, tool), cfg.max_sequences)
        self.hours[_hour(now)] += 1

    # ------------------------------------------------------------------ reading
    def current_rate(self, now: float) -> float:
        """Calls over the sliding last minute (the previous minute weighted by overlap)."""
        bucket = int(now // 60.0)
        overlap = 1.0 - (now % 60.0) / 60.0
        if bucket == self._minute:
            return self._minute_count + self._prev_count * overlap
        if bucket == self._minute + 1:
            return self._minute_count * overlap
        return 0.0

    def busy_rate(self) -> float:
        """The usual high rate of a busy minute: EWMA mean + 2σ, or the decaying peak."""
        return max(self.rate_mean + 2.0 * math.sqrt(max(0.0, self.rate_var)), self.rate_peak)

    def burst(self, now: float) -> bool:
        window = self.denials
        return (
            len(window) >= self.config.denial_burst and now - window[0] <= self.config.denial_window
        )

    def flood(self, now: float) -> bool:
        window = self.approvals
        return (
            len(window) >= self.config.approval_flood
            and now - window[0][0] <= self.config.approval_window
        )

    def detect(
        self, *, tool: str, destinations: Sequence[str], previous: str, now: float
    ) -> list[Finding]:
        """The findings for a call about to be decided; changes nothing."""
        cfg, weights = self.config, self.config.weights
        found: list[Finding] = []
        warm = self.learned >= cfg.warmup
        new_tool = tool not in self.tools
        if warm and new_tool:
            found.append(
                Finding(
                    FindingKind.NEW_TOOL,
                    weights[FindingKind.NEW_TOOL],
                    f"{tool} was never used by this agent ({self.learned} calls learned)",
                )
            )
        if warm:
            unseen = [d for d in destinations if d not in self.destinations]
            if unseen:
                shown = ", ".join(unseen[:MAX_EXPLAINED_DESTINATIONS])
                more = len(unseen) - MAX_EXPLAINED_DESTINATIONS
                shown += f" and {more} more" if more > 0 else ""
                found.append(
                    Finding(
                        FindingKind.NEW_DESTINATION,
                        weights[FindingKind.NEW_DESTINATION],
                        f"never-seen destination {shown}",
                    )
                )
            seen = self.sequences.get((previous, tool), 0)
            if not new_tool and seen <= cfg.rare_sequence:
                after = "as a task's first call" if previous == START else f"after {previous}"
                found.append(
                    Finding(
                        FindingKind.UNUSUAL_SEQUENCE,
                        weights[FindingKind.UNUSUAL_SEQUENCE],
                        f"{tool} {after} seen {seen} times in {self.learned} calls",
                    )
                )
            hour = _hour(now)
            if self.hours[hour] < cfg.off_hours_share * self.learned:
                found.append(
                    Finding(
                        FindingKind.OFF_HOURS,
                        weights[FindingKind.OFF_HOURS],
                        f"{self.hours[hour]} of {self.learned} calls were at {hour:02d}h UTC",
                    )
                )
        if self.rate_minutes >= cfg.rate_min_minutes:
            rate = self.current_rate(now) + 1.0  # this call included
            limit = max(float(cfg.rate_min_calls), cfg.rate_factor * self.busy_rate())
            if rate > limit:
                found.append(
                    Finding(
                        FindingKind.RATE_SPIKE,
                        weights[FindingKind.RATE_SPIKE],
                        f"{rate:.0f} calls in the last minute; usually up to "
                        f"{self.busy_rate():.1f} per busy minute",
                    )
                )
        if self.burst(now):
            found.append(self._burst_finding())
        if self.flood(now):
            found.append(self._flood_finding())
        return found

    def _burst_finding(self) -> Finding:
        cfg = self.config
        return Finding(
            FindingKind.DENIAL_BURST,
            cfg.weights[FindingKind.DENIAL_BURST],
            f"{cfg.denial_burst} denials within {cfg.denial_window:.0f} s",
        )

    def _flood_finding(self) -> Finding:
        cfg = self.config
        return Finding(
            FindingKind.APPROVAL_FLOOD,
            cfg.weights[FindingKind.APPROVAL_FLOOD],
            f"{cfg.approval_flood} approval requests within {cfg.approval_window:.0f} s",
        )


def _hour(now: float) -> int:
    return int(now // 3600.0) % 24


def _spiked(record: Mapping[str, Any]) -> bool:
    """Whether a decision record's anomaly findings include a rate spike."""
    anomaly = record.get("anomaly")
    if not isinstance(anomaly, Mapping):
        return False
    return any(
        isinstance(f, Mapping) and f.get("kind") == FindingKind.RATE_SPIKE.value
        for f in anomaly.get("findings") or ()
    )


# --------------------------------------------------------------------------- the monitor

AlertSink = Callable[[Alert], None]


class AnomalyMonitor(BasicMonitor):
    """Step 4 with baselines: the kill switch and per-task rate limit of
    ``BasicMonitor``, plus the findings above as the anomaly score, the automatic
    response at ``config.threshold``, and alerts (deduplicated: one alert per agent
    and finding kind per ``dedupe_seconds``, except that a suspension is always
    reported) handed to ``sink`` after the decision has been audited."""

    def __init__(
        self,
        config: MonitorConfig | None = None,
        *,
        max_calls_per_minute: int = 600,
        sink: AlertSink | None = None,
    ) -> None:
        super().__init__(max_calls_per_minute=max_calls_per_minute)
        self.config = config or MonitorConfig()
        self.sink = sink
        self._baselines: dict[str, Baseline] = {}
        self._positions: dict[str, str] = {}  # task id -> the last tool allowed in it
        self._alerted: dict[tuple[str, str], float] = {}
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ step 4
    def check(
        self, task: Task, spec: ToolSpec, now: float, destinations: Sequence[str] = ()
    ) -> MonitorVerdict:
        basic = super().check(task, spec, now, destinations)
        if STOP_REASON in basic.reasons:
            return basic
        findings = self.assess(task.agent_id, task.task_id, spec.name, destinations, now)
        if not findings:
            return basic
        cfg = self.config
        score = combine(findings)
        response = cfg.response if score >= cfg.threshold else AnomalyResponse.NONE
        deny = (ANOMALY_REASON,) if response is AnomalyResponse.SUSPEND else ()
        ask = (ANOMALY_REASON,) if response is AnomalyResponse.REQUIRE_APPROVAL else ()
        return MonitorVerdict(
            reasons=basic.reasons + deny,
            score=max(basic.score, score),
            approval_reasons=ask,
            record={
                "score": score,
                "findings": [f.to_data() for f in findings],
                "response": response.value,
            },
        )

    def assess(
        self, agent_id: str, task_id: str, tool: str, destinations: Sequence[str], now: float
    ) -> list[Finding]:
        """The findings for a call about to be decided (none for an unknown agent)."""
        with self._guard:
            baseline = self._baselines.get(agent_id)
            if baseline is None:
                return []
            previous = self._positions.get(task_id, START)
            return baseline.detect(tool=tool, destinations=destinations, previous=previous, now=now)

    # ------------------------------------------------------------------ after the decision
    def observe(self, decision: Decision, record: Mapping[str, Any], now: float) -> None:
        """Learn from the decision just audited and report what was found."""
        with self._guard:
            completed = self._learn(record, now)
            alert = self._alert(decision, record, completed, now)
        if alert is not None and self.sink is not None:
            self.sink(alert)

    def learn(self, record: Mapping[str, Any], ts: float) -> None:
        """Learn from one stored decision record (the audit log, at start)."""
        with self._guard:
            self._learn(record, ts)

    def baseline(self, agent_id: str) -> Baseline | None:
        return self._baselines.get(agent_id)

    def _learn(self, record: Mapping[str, Any], ts: float) -> FindingKind | None:
        """Fold one decision record in; the burst kind (``denial_burst`` or
        ``approval_flood``) it completed, if any."""
        agent, outcome = record.get("agent"), record.get("outcome")
        if not isinstance(agent, str) or outcome not in ("allow", "deny", "approval_required"):
            return None  # refusals are not decided calls
        baseline = self._baselines.get(agent)
        if baseline is None:
            if len(self._baselines) >= self.config.max_agents:
                self._baselines.pop(next(iter(self._baselines)))
            baseline = self._baselines[agent] = Baseline(self.config)
        baseline.count_call(ts, allowed=outcome == "allow", spiked=_spiked(record))
        reasons = record.get("reasons") or ()
        if outcome == "deny":
            burst = STOP_REASON not in reasons and baseline.count_denial(ts)
            return FindingKind.DENIAL_BURST if burst else None
        if outcome == "approval_required":
            approval = record.get("approval")
            flood = baseline.count_approval(ts, approval if isinstance(approval, str) else "")
            return FindingKind.APPROVAL_FLOOD if flood else None
        tool, task = record.get("tool"), record.get("task")
        if outcome == "allow" and isinstance(tool, str) and isinstance(task, str):
            destinations = [d for d in record.get("destinations") or () if isinstance(d, str)]
            previous = self._positions.pop(task, START)
            baseline.learn_allowed(tool, destinations, previous, ts)
            if len(self._positions) >= self.config.max_open_tasks:
                self._positions.pop(next(iter(self._positions)))
            self._positions[task] = tool
        return None

    def _alert(
        self,
        decision: Decision,
        record: Mapping[str, Any],
        completed: FindingKind | None,
        now: float,
    ) -> Alert | None:
        anomaly = record.get("anomaly")
        findings: list[Finding] = []
        response = AnomalyResponse.NONE
        if isinstance(anomaly, Mapping):
            findings = [Finding.from_data(f) for f in anomaly.get("findings", ())]
            response = AnomalyResponse(anomaly.get("response", "none"))
        if completed is not None and all(f.kind is not completed for f in findings):
            baseline = self._baselines[decision.agent_id]
            findings.append(
                baseline._burst_finding()
                if completed is FindingKind.DENIAL_BURST
                else baseline._flood_finding()
            )
        if not findings:
            return None
        agent = decision.agent_id
        fresh = [
            f
            for f in findings
            if now - self._alerted.get((agent, f.kind.value), -math.inf)
            >= self.config.dedupe_seconds
        ]
        enforced = response is not AnomalyResponse.NONE and decision.mode is Mode.ENFORCE
        if not fresh and not (enforced and response is AnomalyResponse.SUSPEND):
            return None
        if len(self._alerted) >= 8 * self.config.max_agents:
            self._alerted.clear()
        for f in fresh:
            self._alerted[(agent, f.kind.value)] = now
        return Alert(
            agent_id=agent,
            task_id=decision.task_id,
            decision_id=decision.decision_id,
            tool=decision.tool,
            score=combine(findings),
            findings=tuple(findings),
            response=response,
            enforced=enforced,
            mode=decision.mode.value,
            owner=str(record.get("owner") or ""),
            at=now,
        )
