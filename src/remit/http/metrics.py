"""Prometheus metrics of one app, in its own registry (so apps in one process never clash)."""

from collections.abc import Sequence
from typing import Final

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

    def decided(self, decision: Decision, seconds: float) -> None:
        self.decision_seconds.observe(seconds)
        self.decisions.labels(decision.outcome.value, _reason(decision.reasons)).inc()

    def refused(self, reason: str, seconds: float) -> None:
        """A call refused before any decision (bad token, proof, input, ...)."""
        self.decision_seconds.observe(seconds)
        self.decisions.labels("refused", reason[:_MAX_LABEL]).inc()

    def request(self, route: str, status: int) -> None:
        self.http_requests.labels(route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _reason(reasons: Sequence[str]) -> str:
    """One label value: the deciding policy ids (bounded by the policy set), joined."""
    return ",".join(sorted(reasons))[:_MAX_LABEL] or "none"
