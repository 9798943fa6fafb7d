"""Prometheus metrics of one app, in its own registry (so apps in one process never clash)."""

from collections.abc import Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from remit.core.pipeline import Decision
from remit.service import Remit

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
_DECISION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_MAX_LABEL: Final = 120
_MAX_CACHED: Final = 4096


class Metrics:
    def __init__(self, remit: Remit) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "remit_decisions",
            "Tool-call decisions by outcome (allow, deny, approval_required, refused) and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "remit_decision_seconds",
            "Time to decide one tool call, as the HTTP adapter sees the service.",
            buckets=_DECISION_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "remit_http_requests",
            "HTTP requests by route template and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.audit_pending = Gauge(
            "remit_audit_pending",
            "Audit records appended and waiting for their group commit.",
            registry=self.registry,
        )
        self.audit_pending.set_function(lambda: float(remit.audit.pending))

        # The labelled children, by what they are computed from (the label sets are bounded
        # as the registry's own are; this skips the label checks and joins per request).
        self._decided: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._requests: dict[tuple[str, int], Any] = {}

    def decided(self, decision: Decision, seconds: float) -> None:
        self.decision_seconds.observe(seconds)
        key = (decision.outcome.value, tuple(decision.reasons))
        child = self._decided.get(key)
        if child is None:
            child = self.decisions.labels(key[0], _reason(key[1]))
            if len(self._decided) < _MAX_CACHED:
                self._decided[key] = child
        child.inc()

    def refused(self, reason: str, seconds: float) -> None:
        """A call refused before any decision (bad token, proof, input, ...)."""
        self.decision_seconds.observe(seconds)
        self.decisions.labels("refused", reason[:_MAX_LABEL]).inc()

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        child = self._requests.get(key)
        if child is None:
            child = self.http_requests.labels(route, str(status))
            if len(self._requests) < _MAX_CACHED:
                self._requests[key] = child
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _reason(reasons: Sequence[str]) -> str:
    """One label value: the deciding policy ids (bounded by the policy set), joined."""
    return ",".join(sorted(reasons))[:_MAX_LABEL] or "none"
