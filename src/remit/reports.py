"""Reports over a running Remit: the standards (compliance) report and the NHI inventory.

Read-only: evidence is gathered from the settings, the store and the audit log through
reads (no audit record is written, nothing changes), the audit log is read a page at a
time with a bound (``max_records``; beyond it the report says its counts are a lower
bound). The mapping and the statuses are ``remit.core.compliance``; the inventory rules
are ``remit.core.inventory``. Rendering: Markdown (tables), JSON, or one self-contained
HTML page in which every value is escaped with ``html.escape``.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from remit.core.audit import AuditRecord
from remit.core.compliance import (
    CONTROLS,
    ComplianceReport,
    Evidence,
    Thresholds,
    act_policy_coverage,
    compliance_report,
)
from remit.core.destinations import DestinationKind, parse_pattern
from remit.core.identity import AgentStatus, Mode
from remit.core.inventory import (
    AgentRef,
    InventoryImport,
    InventoryItem,
    InventoryReport,
    inventory_report,
    parse_inventory,
)
from remit.core.leases import DEFAULT_LEASE_TTL
from remit.errors import InvalidRequest
from remit.service import Remit
from remit.store.base import AuditQuery

__all__ = [
    "FORMATS",
    "compliance",
    "gather_evidence",
    "inventory_document",
    "inventory_for",
    "read_inventory",
    "render",
    "render_inventory",
    "render_inventory_data",
    "report_data",
    "stored_inventory_report",
]

FORMATS: Final = ("md", "json", "html")
DAY: Final = 86_400.0
PAGE: Final = 10_000
MAX_RECORDS: Final = 500_000
TASK_KINDS: Final = ("task.opened", "task.delegated")
APPROVAL_KINDS: Final = {
    "approval.requested": "requested",
    "approval.approved": "approved",
    "approval.denied": "denied",
    "approval.consumed": "consumed",
}


@dataclass(frozen=True, slots=True)
class _Page:
    records: list[AuditRecord]
    truncated: bool


def _audit(remit: Remit, kinds: Sequence[str], since: float | None, bound: int) -> _Page:
    """Records of ``kinds`` since ``since``, oldest first, at most ``bound`` of them."""
    found: list[AuditRecord] = []
    after = 0
    while True:
        page = remit.query_audit(
            AuditQuery(kinds=tuple(kinds), since=since, after_seq=after, limit=PAGE)
        )
        room = bound - len(found)
        found.extend(page[:room])
        if len(page) > room:
            return _Page(found, True)
        if len(page) < PAGE:
            return _Page(found, False)
        after = page[-1].seq


def _known_owner(remit: Remit, owner: str, identifiers: set[str]) -> bool:
    """Whether ``owner`` is a registered principal: its id, ``user:``/``team:`` + owner,
    or an identifier (e.g. ``email:owner``) a registered principal declared."""
    for candidate in (owner, f"user:{owner}", f"team:{owner}", f"group:{owner}"):
        if remit.store.get_principal(candidate) is not None:
            return True
    return any(f"{kind.value}:{owner.lower()}" in identifiers for kind in DestinationKind)


def gather_evidence(
    remit: Remit,
    *,
    days: int = 30,
    thresholds: Thresholds | None = None,
    inventory: InventoryReport | None = None,
    max_records: int = MAX_RECORDS,
) -> Evidence:
    """Evidence for the compliance report, read from ``remit`` (nothing is written).

    The window is the last ``days`` days before the service clock's now. Tasks are
    the ``task.opened`` and ``task.delegated`` records in the window (their mandate as
    recorded at issuance); decisions and approvals are counted from the log likewise.
    """
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
        raise InvalidRequest("the window must be from 1 to 3660 days", reason="bad_window")
    if not 1 <= max_records <= 10_000_000:
        raise InvalidRequest("max_records is out of range", reason="bad_limit")
    th = thresholds or Thresholds()
    settings = remit.settings
    remit.audit.flush()
    now = remit.clock.now()
    since = now - days * DAY
    truncated = False

    # ---- tasks in the window
    tasks = _audit(remit, TASK_KINDS, since, max_records)
    truncated |= tasks.truncated
    ttls: list[int] = []
    request_derived = wildcard = delegated = 0
    for record in tasks.records:
        mandate = record.data.get("mandate") or {}
        ttls.append(int(mandate.get("ttl_seconds", 0)))
        if mandate.get("request_derived"):
            request_derived += 1
        if any(parse_pattern(p).is_wildcard() for p in mandate.get("destinations") or []):
            wildcard += 1
        if record.kind == "task.delegated":
            delegated += 1

    # ---- decisions and approvals in the window
    decisions = dict.fromkeys(("allow", "deny", "approval_required", "refused", "would_deny"), 0)
    approvals = dict.fromkeys(APPROVAL_KINDS.values(), 0)
    used: set[tuple[str, str]] = set()
    calls = _audit(remit, ("decision", *APPROVAL_KINDS), since, max_records)
    truncated |= calls.truncated
    for record in calls.records:
        if record.kind != "decision":
            approvals[APPROVAL_KINDS[record.kind]] += 1
            continue
        outcome = str(record.data.get("outcome", ""))
        if outcome in decisions:
            decisions[outcome] += 1
        if record.data.get("would_deny"):
            decisions["would_deny"] += 1
        if record.data.get("allowed") is True:
            used.add((str(record.data.get("agent")), str(record.data.get("tool"))))

    # ---- agents, owners, grants
    agents = remit.store.list_agents()
    principals = _audit(remit, ("principal.registered",), None, max_records)
    truncated |= principals.truncated
    identifiers = {
        str(i).lower() for r in principals.records for i in r.data.get("identifiers") or []
    }
    active = [a for a in agents if a.status is AgentStatus.ACTIVE]
    grants = [(a, tool) for a in active for tool in sorted(a.ceiling.tools)]
    unused = tuple((a.name, t) for a, t in grants if (a.agent_id, t) not in used)
    owners_unknown = tuple(
        (a.name, a.owner)
        for a in sorted(agents, key=lambda a: a.name)
        if a.status is not AgentStatus.RETIRED
        and a.owner.strip()
        and not _known_owner(remit, a.owner, identifiers)
    )

    # ---- credentials
    secrets = remit.store.list_secrets()
    stale = tuple(
        (s.name, int((now - s.created_at) // DAY))
        for s in sorted(secrets, key=lambda s: s.name)
        if now - s.created_at > th.max_secret_age_days * DAY
    )
    leases = remit.store.list_leases(limit=10_000)
    long_leases = tuple(
        (lease.lease_id, lease.expires_at - lease.issued_at)
        for lease in leases
        if lease.expires_at - lease.issued_at > th.max_lease_seconds
    )
    tokens = [
        t
        for t in remit.store.list_admin_tokens()
        if t.revoked_at is None and (t.expires_at is None or t.expires_at > now)
    ]
    no_expiry = tuple(sorted(t.name for t in tokens if t.expires_at is None))
    old_tokens = tuple(
        sorted(
            (t.name, int((now - t.created_at) // DAY))
            for t in tokens
            if now - t.created_at > th.max_admin_token_age_days * DAY
        )
    )

    # ---- policy, catalog, audit
    catalog = remit.catalog
    coverage = act_policy_coverage(remit.policy, catalog, active)
    stored_policy = remit.store.active_policy_version()
    chain = remit.verify_audit()
    checkpoints = remit.store.list_checkpoints()
    last = checkpoints[-1] if checkpoints else None

    inventory_data = inventory.to_data() if inventory is not None else None
    return Evidence(
        generated_at=now,
        window_days=days,
        identity_ttl_seconds=settings.identity_ttl_seconds,
        task_token_max_ttl_seconds=settings.task_token_max_ttl_seconds,
        max_task_ttl_seconds=settings.max_task_ttl_seconds,
        join_token_ttl_seconds=settings.join_token_ttl_seconds,
        approval_ttl_seconds=settings.approval_ttl_seconds,
        lease_ttl_seconds=DEFAULT_LEASE_TTL,
        tasks=len(tasks.records),
        tasks_request_derived=request_derived,
        tasks_wildcard=wildcard,
        tasks_delegated=delegated,
        task_ttls=tuple(ttls),
        agents=len(agents),
        agents_active=len(active),
        # register_agent refuses an empty owner (reason bad_owner): none can be missing,
        # but a stored blank owner (another writer, an old import) is still counted.
        owner_required=True,
        agents_without_owner=tuple(sorted(a.name for a in agents if not a.owner.strip())),
        owners_unknown=owners_unknown,
        agents_shadow=tuple(sorted(a.name for a in active if a.mode is Mode.SHADOW)),
        agents_suspended=tuple(sorted(a.name for a in agents if a.status is AgentStatus.SUSPENDED)),
        kill_switch_all=remit.monitor.killed_all,
        kill_switch_agents=tuple(sorted(remit.monitor.killed_agents)),
        secrets=len(secrets),
        stale_secrets=stale,
        leases=len(leases),
        long_leases=long_leases,
        admin_tokens_active=len(tokens),
        admin_tokens_no_expiry=no_expiry,
        admin_tokens_old=old_tokens,
        grants=len(grants),
        unused_grants=unused,
        policy_version=remit.policy.version,
        operator_policies=len(stored_policy.sources) if stored_policy is not None else 0,
        act_coverage=coverage,
        catalog_tools=len(catalog),
        shadow_tools=tuple(sorted(n for n, s in catalog.tools.items() if s.shadow)),
        pinned_tools=sum(1 for p in remit.store.list_tool_pins() if p.tool in catalog),
        decisions=decisions,
        approvals=approvals,
        audit_ok=chain.ok,
        audit_records=chain.records,
        audit_head_seq=chain.head_seq,
        audit_checkpoints=len(checkpoints),
        audit_last_checkpoint_seq=last.seq if last is not None else None,
        audit_last_checkpoint_ts=last.ts if last is not None else None,
        audit_problems=chain.problems,
        audit_truncated=truncated,
        inventory=inventory_data,
        thresholds=th,
    )


def compliance(
    remit: Remit,
    *,
    days: int = 30,
    thresholds: Thresholds | None = None,
    inventory: InventoryReport | None = None,
    use_stored_inventory: bool = True,
) -> ComplianceReport:
    """The compliance report for ``remit`` now. Without ``inventory``, the stored
    (imported) NHI inventory feeds the NHI items, if there is one."""
    th = thresholds or Thresholds()
    if inventory is None and use_stored_inventory:
        stored = stored_inventory_report(remit, max_age_days=th.max_secret_age_days)
        if stored is not None:
            inventory = stored[0]
    evidence = gather_evidence(remit, days=days, thresholds=th, inventory=inventory)
    return compliance_report(evidence)


# ----------------------------------------------------------------------------- inventory


def read_inventory(path: Path, fmt: str | None = None) -> tuple[tuple[InventoryItem, ...], str]:
    """Parse an inventory file; ``fmt`` defaults from the suffix. Returns the items and
    the SHA-256 of the file (so a report names exactly what it was made from)."""
    chosen = fmt or path.suffix.lower().lstrip(".")
    if chosen not in ("csv", "json"):
        raise InvalidRequest(
            "say --format csv or json (the file name does not tell)", reason="bad_inventory"
        )
    try:
        data = path.read_bytes()
    except OSError:
        raise InvalidRequest(
            f"cannot read the inventory file {path.name}", reason="bad_inventory"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the inventory file is not UTF-8", reason="bad_inventory") from None
    return parse_inventory(text, chosen), hashlib.sha256(data).hexdigest()


def inventory_document(items: Sequence[InventoryItem]) -> dict[str, Any]:
    """The JSON form of parsed items (``{"credentials": [...]}``), as ``PUT /v1/inventory``
    takes it: a CSV file is converted to this by the CLI."""
    return {"credentials": [item.to_data() for item in items]}


def stored_inventory_report(
    remit: Remit, *, max_age_days: int = 90
) -> tuple[InventoryReport, InventoryImport] | None:
    """The inventory report over the stored (imported) inventory, or None if none was
    imported."""
    stored = remit.stored_inventory()
    if stored is None:
        return None
    record, items = stored
    return inventory_for(remit, items, max_age_days=max_age_days), record


def inventory_for(
    remit: Remit, items: Sequence[InventoryItem], *, max_age_days: int = 90
) -> InventoryReport:
    """The inventory report against this Remit's agents and sealed secrets, now."""
    agents = [AgentRef(a.name, a.agent_id) for a in remit.store.list_agents()]
    secrets = [s.name for s in remit.store.list_secrets()]
    # Credential providers (dynamic database roles, signed tokens) broker by name too.
    registry = getattr(remit, "providers", None)
    if registry is not None:
        secrets.extend(str(name) for name in registry.names())
    return inventory_report(
        items,
        agents=agents,
        secrets=secrets,
        now=remit.clock.now(),
        max_age_days=max_age_days,
    )


# ----------------------------------------------------------------------------- rendering

_STATUS_MARK: Final = {
    "met": "met",
    "partial": "partial",
    "attention": "ATTENTION",
    "not-addressed": "not addressed",
}


def render(report: ComplianceReport, fmt: str) -> str:
    """The report as ``md``, ``json`` or ``html`` text."""
    if fmt == "json":
        return json.dumps(report.to_data(), indent=2, sort_keys=True, default=str) + "\n"
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    raise InvalidRequest("format must be md, json or html", reason="bad_format")


def _md(text: object) -> str:
    """A Markdown table cell: no pipes or newlines can break the table; HTML is escaped."""
    value = html.escape(str(text), quote=False)
    return value.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in rows)
    return lines


def render_markdown(report: ComplianceReport) -> str:
    data = report.to_data()
    counts = data["summary"]
    out = [
        "# Remit standards report",
        "",
        f"Generated {data['generated_at']}, window: last {report.window_days} days. "
        f"{counts['met']} met, {counts['partial']} partial, {counts['attention']} need "
        f"attention, {counts['not-addressed']} not addressed.",
        "",
        "Status: **met** = Remit's controls for the item are in place and the evidence shows "
        "no gap; **partial** = Remit covers part of the risk; **attention** = the evidence "
        "shows a gap; **not addressed** = outside what Remit does. Not a certification.",
        "",
        "## Evidence",
        "",
    ]
    out += _md_table(
        ["metric", "evidence", "findings"],
        [(m.title, m.summary, "; ".join(m.findings) or "-") for m in report.metrics.values()],
    )
    for framework, items in report.frameworks:
        out += ["", f"## {_md(framework.title)}", ""]
        out += _md_table(
            ["item", "status", "how Remit addresses it", "controls", "evidence", "findings"],
            [
                (
                    f"{i.id} {i.title}",
                    _STATUS_MARK[i.status],
                    i.how,
                    ", ".join(i.controls) or "-",
                    ", ".join(i.metrics) or "-",
                    "; ".join(i.findings) or "-",
                )
                for i in items
            ],
        )
    out += ["", "## Remit controls", ""]
    out += _md_table(["control", "what it is"], sorted(CONTROLS.items()))
    return "\n".join(out) + "\n"


_CSS: Final = (
    "body{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem;color:#222}"
    "table{border-collapse:collapse;width:100%;margin:1rem 0}"
    "th,td{border:1px solid #ccc;padding:.35rem .5rem;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}.met{color:#176f2c}.partial{color:#8a6100}"
    ".attention{color:#b00020;font-weight:bold}.not-addressed{color:#666}"
)


def render_html(report: ComplianceReport) -> str:
    """One self-contained page: no scripts, no external resources; every value escaped."""
    e: Callable[[object], str] = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    data = report.to_data()
    counts = data["summary"]

    def table(columns: Sequence[str], rows: Iterator[Sequence[str]]) -> str:
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(rows_) + "</tr>" for rows_ in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def cell(text: object, css: str = "") -> str:
        cls = f' class="{e(css)}"' if css else ""
        return f"<td{cls}>{e(text)}</td>"

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        "<title>Remit standards report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Remit standards report</h1>",
        f"<p>Generated {e(data['generated_at'])}, window: last {e(report.window_days)} days. "
        f"{e(counts['met'])} met, {e(counts['partial'])} partial, "
        f"{e(counts['attention'])} need attention, {e(counts['not-addressed'])} not "
        "addressed. Not a certification.</p>",
        "<h2>Evidence</h2>",
        table(
            ["metric", "evidence", "findings"],
            (
                [cell(m.title), cell(m.summary), cell("; ".join(m.findings) or "-")]
                for m in report.metrics.values()
            ),
        ),
    ]
    for framework, items in report.frameworks:
        parts.append(f"<h2>{e(framework.title)}</h2>")
        parts.append(
            table(
                ["item", "status", "how Remit addresses it", "controls", "evidence", "findings"],
                (
                    [
                        cell(f"{i.id} {i.title}"),
                        cell(_STATUS_MARK[i.status], i.status),
                        cell(i.how),
                        cell(", ".join(i.controls) or "-"),
                        cell(", ".join(i.metrics) or "-"),
                        cell("; ".join(i.findings) or "-"),
                    ]
                    for i in items
                ),
            )
        )
    parts.append("<h2>Remit controls</h2>")
    parts.append(
        table(["control", "what it is"], ([cell(k), cell(v)] for k, v in sorted(CONTROLS.items())))
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_inventory(
    report: InventoryReport, *, source_digest: str = "", stored: InventoryImport | None = None
) -> str:
    """The inventory report as Markdown."""
    return render_inventory_data(report_data(report, source_digest=source_digest, stored=stored))


def render_inventory_data(data: Mapping[str, Any]) -> str:
    """The inventory report as Markdown, from its JSON form (``report_data``, or what
    ``GET /v1/inventory/report`` returns)."""
    imported = data.get("import")
    digest = data.get("source_sha256") or ""
    if isinstance(imported, Mapping):
        source = (
            f" (stored import {_md(imported.get('import_id'))} of "
            f"{_md(imported.get('imported_at'))} by {_md(imported.get('imported_by'))}, "
            f"file sha256 {_md(digest)})"
        )
    else:
        source = f" (file sha256 {_md(digest)})" if digest else ""
    out = [
        "# NHI inventory report",
        "",
        f"Generated {_md(data['generated_at'])}; {_md(data['credentials'])} credentials"
        + source
        + f"; stale means not rotated for more than {_md(data['max_age_days'])} days.",
        "",
    ]
    sections: list[tuple[str, list[str], list[Sequence[object]]]] = [
        (
            "Shared by several agents",
            ["credential", "used by"],
            [(s["id"], ", ".join(s["agents"])) for s in data["shared"]],
        ),
        (
            "Stale",
            ["credential", "age (days)", "since"],
            [(s["id"], s["age_days"], s["basis"]) for s in data["stale"]],
        ),
        ("Without an owner", ["credential"], [(i,) for i in data["missing_owner"]]),
        (
            "Used by Remit agents outside Remit (not brokered)",
            ["credential", "agent"],
            [(u["id"], u["agent"]) for u in data["unbrokered_use"]],
        ),
        (
            "Used by identities Remit does not know",
            ["credential", "user"],
            [(u["id"], u["user"]) for u in data["unknown_users"]],
        ),
        (
            "Not used by anyone (offboarding candidates)",
            ["credential"],
            [(i,) for i in data["unused"]],
        ),
    ]
    for title, columns, rows in sections:
        out += [f"## {title} ({len(rows)})", ""]
        out += _md_table(columns, rows) if rows else ["none"]
        out.append("")
    return "\n".join(out)


def report_data(
    report: InventoryReport,
    *,
    source_digest: str = "",
    stored: InventoryImport | None = None,
) -> dict[str, Any]:
    """The report's JSON form: ``source_sha256`` names the file it was made from, and
    ``import`` the stored import (None when the report was made from a file)."""
    digest = stored.source_sha256 if stored is not None else source_digest
    return {
        **report.to_data(),
        "source_sha256": digest,
        "import": stored.to_data() if stored is not None else None,
    }
