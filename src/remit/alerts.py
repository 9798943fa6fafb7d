"""Anomaly alerts as a use case: the monitor over the audit log, the alert record,
the webhook and the automatic response (issue 7, item 3; docs/alerts.md).

``Alerts`` builds the ``AnomalyMonitor`` from the settings, teaches it the last
``anomaly_history_days`` of decision records once at start (then it learns online,
from each decision), and receives its alerts after the decision has been audited:

1. an ``alert`` audit record (agent, task, decision id, finding kinds, score,
   explanation, response; never arguments);
2. a webhook POST (``alert_webhook``), from one background worker with a bounded
   queue: a full queue drops the notification (audited ``alert.webhook_dropped``),
   a failed POST is audited (``alert.webhook_failed``); neither blocks a decision;
3. with ``anomaly_response = suspend`` and an enforced deny, the agent is suspended
   through the service (``agent.suspended`` with reason ``anomaly``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from remit.config import Settings
from remit.core.audit import AuditRecord
from remit.core.monitor import Alert, AnomalyMonitor, AnomalyResponse, FindingKind, MonitorConfig
from remit.errors import InvalidRequest, RemitError
from remit.store.audit_log import AuditLog
from remit.store.base import AuditQuery
from remit.store.sql import SqlStore
from remit.webhooks import AuditedWebhook, Post

WEBHOOK_TIMEOUT = 5.0
WEBHOOK_QUEUE = 256
HISTORY_PAGE = 1000
MAX_HISTORY_RECORDS = 500_000
MAX_LISTED = 10_000  # alert records scanned for one listing


def monitor_config(settings: Settings) -> MonitorConfig:
    """The detector settings from ``Settings``; InvalidRequest (``bad_setting``) if wrong."""
    try:
        response = AnomalyResponse(settings.anomaly_response)
    except ValueError:
        raise InvalidRequest(
            "REMIT_ANOMALY_RESPONSE must be none, require_approval or suspend",
            reason="bad_setting",
        ) from None
    return MonitorConfig(
        warmup=settings.anomaly_warmup,
        threshold=settings.anomaly_threshold,
        response=response,
        rate_min_calls=settings.anomaly_rate_min_calls,
        denial_burst=settings.anomaly_denial_burst,
        approval_flood=settings.anomaly_approval_flood,
        dedupe_seconds=float(settings.anomaly_dedupe_seconds),
    )


class AlertWebhook(AuditedWebhook):
    """POSTs each alert's JSON to one URL through ``remit.webhooks`` (one background
    worker, bounded queue); failures and drops are audited (``alert.webhook_*``)."""

    def __init__(
        self,
        url: str,
        audit: AuditLog,
        *,
        timeout: float = WEBHOOK_TIMEOUT,
        post: Post | None = None,
        capacity: int = WEBHOOK_QUEUE,
    ) -> None:
        super().__init__(
            url,
            audit,
            prefix="alert",
            field="alert",
            setting="REMIT_ALERT_WEBHOOK",
            timeout=timeout,
            capacity=capacity,
            post=post,
        )

    def notify(self, alert: Alert, event_id: str) -> None:
        self.sender.send(event_id, webhook_payload(alert, event_id))


def webhook_payload(alert: Alert, event_id: str) -> dict[str, Any]:
    return {"type": "anomaly.alert", "id": event_id, **alert.to_data()}


class Alerts:
    """The monitor, its alert sink and the alert listing (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: SqlStore,
        audit: AuditLog,
        suspend: Callable[[str], object],
        post: Post | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self._suspend = suspend
        self.webhook = AlertWebhook(settings.alert_webhook, audit, post=post)
        self.monitor = AnomalyMonitor(
            monitor_config(settings),
            max_calls_per_minute=settings.max_calls_per_minute,
            sink=self.on_alert,
        )

    def warm(self, now: float) -> int:
        """Teach the monitor the recent decision records; returns how many were read."""
        days = self.settings.anomaly_history_days
        if days <= 0:
            return 0
        since, after, read = now - days * 86400.0, 0, 0
        while read < MAX_HISTORY_RECORDS:
            page = self.store.query_audit(
                AuditQuery(kinds=("decision",), since=since, after_seq=after, limit=HISTORY_PAGE)
            )
            for record in page:
                self.monitor.learn(record.data, record.ts)
            read += len(page)
            if len(page) < HISTORY_PAGE:
                break
            after = page[-1].seq
        return read

    def on_alert(self, alert: Alert) -> None:
        """The monitor's sink: record, notify, respond. Never raises into a decision."""
        try:
            record = self.audit.append("alert", alert.to_data())
        except RemitError:
            return  # the decision itself was recorded; an audit outage is already visible
        self.webhook.notify(alert, record.event_id)
        if alert.enforced and alert.response is AnomalyResponse.SUSPEND:
            # A refusal (e.g. an agent retired meanwhile) is audited by the service itself.
            with contextlib.suppress(RemitError):
                self._suspend(alert.agent_id)

    def list(
        self,
        *,
        since: float | None = None,
        agent: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Alerts, newest first: at most ``limit``, of ``agent`` and finding ``kind``."""
        if not 0 < limit <= 1000:
            raise InvalidRequest("limit must be from 1 to 1000", reason="bad_limit")
        if kind is not None and kind not in {k.value for k in FindingKind}:
            raise InvalidRequest(
                f"kind must be one of {', '.join(k.value for k in FindingKind)}",
                reason="bad_kind",
            )
        if since is not None and not 0 <= since <= 1e11:
            raise InvalidRequest("since must be a time in seconds", reason="bad_since")
        self.audit.flush()
        records: deque[AuditRecord] = deque(maxlen=MAX_LISTED)  # the newest ones
        after = 0
        while True:
            page = self.store.query_audit(
                AuditQuery(
                    kinds=("alert",), agent=agent, since=since, after_seq=after, limit=HISTORY_PAGE
                )
            )
            records.extend(page)
            if len(page) < HISTORY_PAGE:
                break
            after = page[-1].seq
        found: list[Alert] = []
        for record in reversed(records):
            try:
                alert = Alert.from_record(
                    record.data, at=record.ts, event_id=record.event_id, seq=record.seq
                )
            except ValueError:
                continue
            if kind is None or kind in alert.kinds:
                found.append(alert)
                if len(found) >= limit:
                    break
        return found

    def close(self) -> None:
        self.webhook.close()
