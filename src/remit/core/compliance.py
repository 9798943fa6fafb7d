"""The standards report: Remit's controls mapped to public frameworks, with live evidence.

Pure: the control catalog is data; ``compliance_report`` turns an ``Evidence`` value
(gathered read-only by ``remit.reports`` from the configuration and the audit log) into
a ``ComplianceReport``. ``act_policy_coverage`` evaluates the active Cedar policy set
(no I/O).

Frameworks (names as published; checked against public copies of the lists):

* OWASP Top 10 for Agentic Applications (2026), ASI01-ASI10;
* OWASP Non-Human Identities Top 10 (2025), NHI1-NHI10;
* NIST AI Risk Management Framework 1.0, the four functions GOVERN, MAP, MEASURE, MANAGE;
* CSA MAESTRO (agentic AI threat modelling), layers L1-L7.

Each framework item has a static **coverage**, an honest statement of what Remit can do
about it at all: ``addressed`` (Remit's controls are aimed at it), ``partial`` (Remit
bounds the consequences or covers part of it; the rest needs other controls) or
``not_addressed``. Its **status** in a report combines that with the evidence:

* ``not-addressed``: coverage ``not_addressed`` (whatever the evidence says);
* ``attention``: a metric it rests on has a finding (e.g. a stale secret, an agent
  whose owner is no known principal, a broken audit chain);
* ``partial``: coverage ``partial`` and no finding;
* ``met``: coverage ``addressed`` and no finding.

"met" means that Remit's controls for the item are in place and the live evidence
shows no gap; it is not a certification.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from remit.core.catalog import Catalog, Privilege
from remit.core.identity import Agent
from remit.core.policy import PolicyEngine, PolicyRequest
from remit.core.policy_cases import build_context

__all__ = [
    "CONTROLS",
    "FRAMEWORKS",
    "ComplianceReport",
    "Coverage",
    "Evidence",
    "Thresholds",
    "act_policy_coverage",
    "compliance_report",
    "median",
]

DAY: Final = 86_400.0

# ----------------------------------------------------------------------------- Remit's controls

CONTROLS: Final[Mapping[str, str]] = {
    "RC-IDENTITY": "Attested instance identity: single-use join tokens, a key pair per "
    "instance, SPIFFE IDs, short-lived ES256 identity tokens bound to the key (cnf.jkt).",
    "RC-POP": "Proof of possession on every call: a fresh signature by the instance key "
    "over the token hash, tool and argument digest, with a jti replay cache.",
    "RC-MANDATE": "Per-task mandates inside the agent's ceiling: tools, destinations "
    "(including request-derived ones), sensitivity, call budget, TTL; ending the task "
    "revokes everything derived from it.",
    "RC-POLICY": "Every tool call decided by Cedar (deny by default, fail closed) over a "
    "baseline pack operators cannot remove; policy versions kept and named in decisions.",
    "RC-CATALOG": "An admin-set tool catalog (read/write/act privilege classes, destination "
    "arguments, data labels); unknown tools are denied; upstream tool definitions pinned.",
    "RC-TAINT": "Taint tracking: after reading untrusted or confidential data an act may go "
    "only to destinations the mandate names explicitly.",
    "RC-APPROVAL": "Human approval of one exact call (digest-bound, single use, expiring, "
    "quorum, no self-approval) for high-risk acts.",
    "RC-DELEGATION": "Delegation by token exchange: child mandates are subsets of the "
    "parent's, the act chain names every hop, delegation is decided by policy, revoking a "
    "task revokes its descendants.",
    "RC-SECRETS": "Sealed secrets (envelope encryption, master-key rotation) leased per task "
    "and injected downstream by the gateway; agents never see them.",
    "RC-AUDIT": "Hash-chained audit of every issuance, decision, approval and admin change, "
    "with signed checkpoints; writes fail closed.",
    "RC-KILL": "Kill switch (all agents or one), suspend and retire, rate limits and "
    "budgets: stopping an agent ends its tasks and revokes its leases.",
    "RC-OWNERS": "Every agent has an accountable owner and a ceiling; operator tokens are "
    "scoped (admin, approver, auditor, readonly), hashed at rest, revocable.",
    "RC-SHADOW": "Shadow mode per agent, tool or policy: decisions recorded as would_deny "
    "for staged rollout.",
    "RC-ANALYSIS": "Effective-permission analysis, policy tests and replay, this report and "
    "the NHI inventory report.",
}

# ----------------------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Where evidence turns into a finding. Defaults are conservative, documented values."""

    max_secret_age_days: int = 90  # a sealed secret's value older than this is stale
    max_lease_seconds: float = 3600.0  # a lease issued for longer than this is long-lived
    max_admin_token_age_days: int = 90  # an operator token older than this should be rotated
    max_token_ttl_seconds: int = 3600  # identity and task tokens longer than this are long-lived
    max_task_ttl_seconds: int = 86_400  # a mandate TTL setting above this is long-lived
    min_act_policy_coverage: float = 1.0  # share of act tools with a tool-specific control


@dataclass(frozen=True, slots=True)
class ActCoverage:
    """Which catalog act tools have a tool-specific policy control (see
    ``act_policy_coverage``)."""

    tools: tuple[str, ...]
    covered: Mapping[str, tuple[str, ...]]  # tool -> the policy ids that give the control
    policy_version: str

    @property
    def uncovered(self) -> tuple[str, ...]:
        return tuple(t for t in self.tools if t not in self.covered)

    @property
    def share(self) -> float | None:
        return len(self.covered) / len(self.tools) if self.tools else None


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything the report rests on, as plain values (times: seconds since the epoch)."""

    generated_at: float
    window_days: int
    # settings
    identity_ttl_seconds: int
    task_token_max_ttl_seconds: int
    max_task_ttl_seconds: int
    join_token_ttl_seconds: int
    approval_ttl_seconds: int
    lease_ttl_seconds: float
    # tasks opened or delegated in the window (from the audit log)
    tasks: int
    tasks_request_derived: int  # whose mandate has request-derived destinations
    tasks_wildcard: int  # whose mandate has a wildcard destination pattern
    tasks_delegated: int
    task_ttls: tuple[int, ...]  # each task's mandate TTL, seconds
    # agents and owners
    agents: int
    agents_active: int
    owner_required: bool  # registration refuses an agent without an owner
    agents_without_owner: tuple[str, ...]
    owners_unknown: tuple[tuple[str, str], ...]  # (agent name, owner) not a known principal
    agents_shadow: tuple[str, ...]
    agents_suspended: tuple[str, ...]
    kill_switch_all: bool
    kill_switch_agents: tuple[str, ...]
    # credentials
    secrets: int
    stale_secrets: tuple[tuple[str, int], ...]  # (name, age in days)
    leases: int
    long_leases: tuple[tuple[str, float], ...]  # (lease id, lifetime seconds)
    admin_tokens_active: int
    admin_tokens_no_expiry: tuple[str, ...]  # names
    admin_tokens_old: tuple[tuple[str, int], ...]  # (name, age in days)
    # grants
    grants: int  # (agent, tool) pairs in the ceilings of active agents
    unused_grants: tuple[tuple[str, str], ...]  # (agent name, tool) never allowed in window
    # policy
    policy_version: str
    operator_policies: int
    act_coverage: ActCoverage
    catalog_tools: int
    shadow_tools: tuple[str, ...]
    pinned_tools: int
    # decisions and approvals in the window
    decisions: Mapping[str, int]  # allow, deny, approval_required, refused, would_deny
    approvals: Mapping[str, int]  # requested, approved, denied, consumed
    # audit
    audit_ok: bool
    audit_records: int
    audit_head_seq: int
    audit_checkpoints: int
    audit_last_checkpoint_seq: int | None
    audit_last_checkpoint_ts: float | None
    audit_problems: tuple[str, ...]
    # bounded reading: True if the window had more records than were read
    audit_truncated: bool = False
    # an optional NHI inventory (remit.core.inventory.InventoryReport.to_data())
    inventory: Mapping[str, Any] | None = field(default=None, hash=False)
    thresholds: Thresholds = Thresholds()

    @property
    def request_derived_share(self) -> float | None:
        return self.tasks_request_derived / self.tasks if self.tasks else None


def median(values: Sequence[int]) -> float | None:
    return float(statistics.median(values)) if values else None


# ----------------------------------------------------------------------------- policy coverage

GENERIC_POLICIES: Final[frozenset[str]] = frozenset(
    {
        "permit-within-mandate",
        "mandate-tool-scope",
        "mandate-destination-scope",
        "sensitivity-ceiling",
        "budget-exhausted",
        "exfiltration-after-untrusted-read",
        "exfiltration-after-confidential-read",
    }
)
"""Baseline policies that apply the same way to every act tool (the mandate's own
conditions and the taint rules). They protect every act tool, so they are not counted
as a tool-specific control."""

_COVERAGE_DESTINATIONS: Final[tuple[str, ...]] = ("none", "explicit", "by_pattern")
_COVERAGE_TAINTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "none": {"taint_sensitivity": 0, "taint_flags": []},
    "untrusted": {"taint_sensitivity": 0, "taint_flags": ["untrusted"]},
    "confidential": {"taint_sensitivity": 2, "taint_flags": []},
}
_COVERAGE_HOURS: Final[tuple[int, ...]] = (3, 12, 21)
PROBE_AGENT: Final = "spiffe://remit.invalid/agent/coverage-probe"


def act_policy_coverage(
    engine: PolicyEngine, catalog: Catalog, agents: Sequence[Agent]
) -> ActCoverage:
    """Which catalog act tools have a tool-specific policy control.

    Definition. An act tool T is *covered* when the active policy set (baseline plus
    operator policies) holds a policy, other than the generic baseline rules in
    ``GENERIC_POLICIES``, that takes part in denying a call to T or in holding it for
    approval, for every agent that could call T. Concretely, for each agent whose
    ceiling includes T (or, if none does, an unregistered probe agent), the engine
    evaluates clean, in-mandate calls to T over a grid: destination class (none,
    explicit, by pattern; only ``none`` for tools without destination arguments) x
    prior taint (none, untrusted, confidential) x hour of day (03, 12, 21 UTC); the
    rest of the context is a clean call (tool in mandate, budget left, no anomaly,
    sensitivity ceiling = the tool's output sensitivity). T is covered for that agent
    when at least one grid point is denied with a reason outside ``GENERIC_POLICIES``
    and ``policy-error`` (an ``@approval`` forbid such as ``approval-high-risk-act``
    counts: it is a deny until a human approves). Shadow policies never decide, so they
    do not count. T is covered when it is covered for every such agent.

    So with the baseline alone, exactly the act tools tagged ``payment`` or
    ``approval`` are covered; an operator forbid naming T (or its server, or act tools
    under some condition the grid reaches) covers it too. A forbid whose condition
    the grid never reaches (e.g. an anomaly score threshold) is not seen.
    """
    act_tools = tuple(sorted(n for n, s in catalog.tools.items() if s.privilege is Privilege.ACT))
    covered: dict[str, tuple[str, ...]] = {}
    for name in act_tools:
        spec = catalog.tools[name]
        callers = [
            a.agent_id
            for a in agents
            if name in a.ceiling.tools and Privilege.ACT in a.ceiling.privileges
        ] or [PROBE_AGENT]
        classes = _COVERAGE_DESTINATIONS if spec.destination_args else ("none",)
        ids_for_all: set[str] | None = None
        for agent_id in callers:
            ids: set[str] = set()
            for destination_class in classes:
                for taint in _COVERAGE_TAINTS.values():
                    for hour in _COVERAGE_HOURS:
                        facts: dict[str, Any] = {
                            "mode": "enforce",
                            "task": {"sensitivity_ceiling": int(spec.output_labels.sensitivity)},
                            "tool_in_mandate": True,
                            "output_sensitivity": int(spec.output_labels.sensitivity),
                            "output_flags": sorted(spec.output_labels.flags),
                            "hour_utc": hour,
                            **taint,
                        }
                        if destination_class != "none":
                            kind = spec.destination_args[0].kind.value
                            facts[f"destinations_{destination_class}"] = [
                                f"{kind}:coverage-probe.invalid"
                            ]
                        result = engine.evaluate(
                            PolicyRequest(
                                agent_id=agent_id,
                                action="act",
                                tool=name,
                                context=build_context(facts),
                            )
                        )
                        if not result.allowed:
                            ids.update(
                                r
                                for r in result.reasons
                                if r not in GENERIC_POLICIES
                                and r not in ("policy-error", "default-deny")
                            )
            if not ids:
                ids_for_all = None
                break
            ids_for_all = ids if ids_for_all is None else ids_for_all | ids
        if ids_for_all:
            covered[name] = tuple(sorted(ids_for_all))
    return ActCoverage(act_tools, covered, engine.version)


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    title: str
    value: Mapping[str, Any] = field(hash=False)
    summary: str  # one line for people
    findings: tuple[str, ...] = ()


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f}%"


def _names(values: Iterable[str], limit: int = 10) -> str:
    items = list(values)
    text = ", ".join(items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_metrics(ev: Evidence) -> dict[str, Metric]:
    """Every evidence metric, by key, with its findings under ``ev.thresholds``."""
    th = ev.thresholds
    m: dict[str, Metric] = {}

    ttl_findings = []
    for label, value in (
        ("identity token TTL", ev.identity_ttl_seconds),
        ("task token max TTL", ev.task_token_max_ttl_seconds),
    ):
        if value > th.max_token_ttl_seconds:
            ttl_findings.append(
                f"{label} is {value} s, above {th.max_token_ttl_seconds} s: long-lived tokens"
            )
    if ev.max_task_ttl_seconds > th.max_task_ttl_seconds:
        ttl_findings.append(
            f"max task TTL is {ev.max_task_ttl_seconds} s, above {th.max_task_ttl_seconds} s"
        )
    m["token_ttls"] = Metric(
        "token_ttls",
        "Token and task lifetimes (settings)",
        {
            "identity_ttl_seconds": ev.identity_ttl_seconds,
            "task_token_max_ttl_seconds": ev.task_token_max_ttl_seconds,
            "max_task_ttl_seconds": ev.max_task_ttl_seconds,
            "join_token_ttl_seconds": ev.join_token_ttl_seconds,
            "approval_ttl_seconds": ev.approval_ttl_seconds,
            "lease_ttl_seconds": ev.lease_ttl_seconds,
        },
        f"identity {ev.identity_ttl_seconds} s, "
        f"task token up to {ev.task_token_max_ttl_seconds} s, "
        f"task up to {ev.max_task_ttl_seconds} s, join token {ev.join_token_ttl_seconds} s, "
        f"lease {ev.lease_ttl_seconds:g} s",
        tuple(ttl_findings),
    )

    med = median(ev.task_ttls)
    longest = max(ev.task_ttls) if ev.task_ttls else None
    m["task_ttls"] = Metric(
        "task_ttls",
        "Task TTLs in the window",
        {
            "tasks": ev.tasks,
            "max_seconds": longest,
            "median_seconds": med,
        },
        f"{ev.tasks} tasks; max TTL {'n/a' if longest is None else longest} s, "
        f"median {'n/a' if med is None else f'{med:g}'} s",
    )

    m["request_derived"] = Metric(
        "request_derived",
        "Tasks with request-derived destinations",
        {
            "tasks": ev.tasks,
            "request_derived": ev.tasks_request_derived,
            "share": ev.request_derived_share,
            "wildcard": ev.tasks_wildcard,
            "delegated": ev.tasks_delegated,
        },
        f"{ev.tasks_request_derived} of {ev.tasks} tasks ({_pct(ev.request_derived_share)}) "
        f"have destinations taken from the principal's request; {ev.tasks_wildcard} have a "
        "wildcard destination",
    )

    owner_findings: list[str] = []
    if ev.agents_without_owner:
        owner_findings.append(
            f"{len(ev.agents_without_owner)} agents have no owner: "
            f"{_names(ev.agents_without_owner)}"
        )
    if ev.owners_unknown:
        owner_findings.append(
            f"{len(ev.owners_unknown)} agents have an owner that is no registered principal: "
            + _names(f"{a} (owner {o})" for a, o in ev.owners_unknown)
        )
    m["owners"] = Metric(
        "owners",
        "Agents and accountable owners",
        {
            "agents": ev.agents,
            "active": ev.agents_active,
            "owner_required": ev.owner_required,
            "without_owner": list(ev.agents_without_owner),
            "owner_not_a_principal": [{"agent": a, "owner": o} for a, o in ev.owners_unknown],
        },
        f"{ev.agents} agents ({ev.agents_active} active); {len(ev.agents_without_owner)} "
        "without owner"
        + (" (registration requires an owner)" if ev.owner_required else "")
        + f"; {len(ev.owners_unknown)} with an owner that is no registered principal",
        tuple(owner_findings),
    )

    cred_findings: list[str] = []
    if ev.stale_secrets:
        cred_findings.append(
            f"{len(ev.stale_secrets)} sealed secrets not rotated for more than "
            f"{th.max_secret_age_days} days: " + _names(f"{n} ({d} d)" for n, d in ev.stale_secrets)
        )
    if ev.long_leases:
        cred_findings.append(
            f"{len(ev.long_leases)} leases issued for longer than {th.max_lease_seconds:g} s: "
            + _names(f"{i} ({s:g} s)" for i, s in ev.long_leases)
        )
    if ev.admin_tokens_no_expiry:
        cred_findings.append(
            f"{len(ev.admin_tokens_no_expiry)} active operator tokens never expire: "
            f"{_names(ev.admin_tokens_no_expiry)}"
        )
    if ev.admin_tokens_old:
        cred_findings.append(
            f"{len(ev.admin_tokens_old)} active operator tokens are older than "
            f"{th.max_admin_token_age_days} days: "
            + _names(f"{n} ({d} d)" for n, d in ev.admin_tokens_old)
        )
    m["long_lived_credentials"] = Metric(
        "long_lived_credentials",
        "Long-lived credentials",
        {
            "secrets": ev.secrets,
            "stale_secrets": [{"name": n, "age_days": d} for n, d in ev.stale_secrets],
            "leases": ev.leases,
            "long_leases": [{"lease": i, "seconds": s} for i, s in ev.long_leases],
            "admin_tokens_active": ev.admin_tokens_active,
            "admin_tokens_no_expiry": list(ev.admin_tokens_no_expiry),
            "admin_tokens_old": [{"name": n, "age_days": d} for n, d in ev.admin_tokens_old],
        },
        f"{len(ev.stale_secrets)} of {ev.secrets} sealed secrets older than "
        f"{th.max_secret_age_days} d; {len(ev.long_leases)} of {ev.leases} leases longer than "
        f"{th.max_lease_seconds:g} s; {len(ev.admin_tokens_no_expiry)} operator tokens without "
        f"expiry, {len(ev.admin_tokens_old)} older than {th.max_admin_token_age_days} d",
        tuple(cred_findings),
    )

    m["unused_grants"] = Metric(
        "unused_grants",
        "Unused grants (ceiling tools never allowed in the window)",
        {
            "grants": ev.grants,
            "unused": len(ev.unused_grants),
            "items": [{"agent": a, "tool": t} for a, t in ev.unused_grants],
        },
        f"{len(ev.unused_grants)} of {ev.grants} ceiling grants of active agents were not "
        f"used in the last {ev.window_days} days",
        (
            (
                f"{len(ev.unused_grants)} grants unused for {ev.window_days} days "
                "(narrow the ceilings): " + _names(f"{a}: {t}" for a, t in ev.unused_grants)
            ),
        )
        if ev.unused_grants
        else (),
    )

    cov = ev.act_coverage
    cov_findings: tuple[str, ...] = ()
    if cov.share is not None and cov.share < th.min_act_policy_coverage:
        cov_findings = (
            f"{len(cov.uncovered)} of {len(cov.tools)} act tools have no tool-specific policy "
            f"(only the generic mandate and taint rules): {_names(cov.uncovered)}",
        )
    m["act_policy_coverage"] = Metric(
        "act_policy_coverage",
        "Policy coverage of act-class tools",
        {
            "act_tools": len(cov.tools),
            "covered": len(cov.covered),
            "share": cov.share,
            "uncovered": list(cov.uncovered),
            "covered_by": {t: list(ids) for t, ids in sorted(cov.covered.items())},
            "policy_version": cov.policy_version,
            "operator_policies": ev.operator_policies,
        },
        f"{len(cov.covered)} of {len(cov.tools)} act tools ({_pct(cov.share)}) have a "
        f"tool-specific deny or approval rule (policy version {ev.policy_version}, "
        f"{ev.operator_policies} operator policies)",
        cov_findings,
    )

    audit_findings: list[str] = []
    if not ev.audit_ok:
        audit_findings.append(
            "the audit chain does NOT verify: " + "; ".join(ev.audit_problems[:3])
        )
    m["audit_chain"] = Metric(
        "audit_chain",
        "Audit chain",
        {
            "ok": ev.audit_ok,
            "records": ev.audit_records,
            "head_seq": ev.audit_head_seq,
            "checkpoints": ev.audit_checkpoints,
            "last_checkpoint_seq": ev.audit_last_checkpoint_seq,
            "last_checkpoint_at": _iso(ev.audit_last_checkpoint_ts),
            "problems": list(ev.audit_problems[:10]),
        },
        ("intact" if ev.audit_ok else "BROKEN")
        + f": {ev.audit_records} records, {ev.audit_checkpoints} signed checkpoints"
        + (
            f", last at seq {ev.audit_last_checkpoint_seq}"
            if ev.audit_last_checkpoint_seq is not None
            else ", none yet"
        ),
        tuple(audit_findings),
    )

    stop_findings: list[str] = []
    if ev.agents_shadow:
        stop_findings.append(
            f"{len(ev.agents_shadow)} agents run in shadow mode (denials are not enforced): "
            f"{_names(ev.agents_shadow)}"
        )
    if ev.shadow_tools:
        stop_findings.append(
            f"{len(ev.shadow_tools)} catalog tools run in shadow mode: {_names(ev.shadow_tools)}"
        )
    m["enforcement"] = Metric(
        "enforcement",
        "Enforcement, shadow mode and kill switch",
        {
            "kill_switch_all": ev.kill_switch_all,
            "kill_switch_agents": list(ev.kill_switch_agents),
            "agents_shadow": list(ev.agents_shadow),
            "agents_suspended": list(ev.agents_suspended),
            "shadow_tools": list(ev.shadow_tools),
        },
        f"kill switch {'ENGAGED for all' if ev.kill_switch_all else 'off'}"
        + (f", engaged for {len(ev.kill_switch_agents)} agents" if ev.kill_switch_agents else "")
        + f"; {len(ev.agents_shadow)} agents and {len(ev.shadow_tools)} tools in shadow mode; "
        f"{len(ev.agents_suspended)} agents suspended",
        tuple(stop_findings),
    )

    d = ev.decisions
    trunc = (
        (" (audit reading was truncated: counts are a lower bound)",) if ev.audit_truncated else ()
    )
    m["decisions"] = Metric(
        "decisions",
        "Decisions and approvals in the window",
        {
            **{f"decisions_{k}": v for k, v in sorted(d.items())},
            **{f"approvals_{k}": v for k, v in sorted(ev.approvals.items())},
            "truncated": ev.audit_truncated,
        },
        f"{sum(d.get(k, 0) for k in ('allow', 'deny', 'approval_required', 'refused'))} "
        f"decisions: {d.get('allow', 0)} allowed, {d.get('deny', 0)} denied, "
        f"{d.get('approval_required', 0)} held for approval, {d.get('refused', 0)} refused, "
        f"{d.get('would_deny', 0)} shadow would-deny; approvals "
        f"{ev.approvals.get('approved', 0)} approved, {ev.approvals.get('denied', 0)} denied"
        + (trunc[0] if trunc else ""),
        trunc,
    )

    m["tool_pins"] = Metric(
        "tool_pins",
        "Admitted (pinned) upstream tool definitions",
        {"catalog_tools": ev.catalog_tools, "pinned": ev.pinned_tools},
        f"{ev.pinned_tools} of {ev.catalog_tools} catalog tools have an admitted, pinned "
        "upstream definition (a changed definition is refused at the gateway)",
    )

    m["delegation"] = Metric(
        "delegation",
        "Delegated tasks in the window",
        {"delegated": ev.tasks_delegated, "tasks": ev.tasks},
        f"{ev.tasks_delegated} of {ev.tasks} tasks were delegated sub-tasks (subset mandates, "
        "act chain)",
    )

    inv = ev.inventory
    if inv is None:
        m["inventory"] = Metric(
            "inventory",
            "NHI inventory",
            {"provided": False},
            "no NHI inventory supplied (remit report compliance --inventory FILE)",
        )
    else:
        inv_findings: list[str] = []
        for key, text in (
            ("shared", "credentials shared by several agents"),
            ("stale", f"credentials not rotated for more than {inv.get('max_age_days')} days"),
            ("missing_owner", "credentials without an owner"),
            ("unbrokered_credentials", "credentials used by Remit agents outside Remit"),
        ):
            entries = inv.get(key) or []
            if entries:
                ids = [e["id"] if isinstance(e, Mapping) else str(e) for e in entries]
                inv_findings.append(f"{len(ids)} {text}: {_names(ids)}")
        unknown = sorted({str(u["id"]) for u in inv.get("unknown_users") or []})
        if unknown:
            inv_findings.append(
                f"{len(unknown)} credentials used by identities Remit does not know: "
                f"{_names(unknown)}"
            )
        m["inventory"] = Metric(
            "inventory",
            "NHI inventory",
            {"provided": True, **{k: v for k, v in inv.items()}},
            f"{inv.get('credentials')} credentials; {len(inv.get('shared') or [])} shared, "
            f"{len(inv.get('stale') or [])} stale, {len(inv.get('missing_owner') or [])} "
            f"without owner, {len(inv.get('unbrokered_credentials') or [])} used outside Remit, "
            f"{len(unknown)} with unknown users",
            tuple(inv_findings),
        )
    return m


# ----------------------------------------------------------------------------- frameworks

Coverage = str  # "addressed" | "partial" | "not_addressed"
COVERAGES: Final = ("addressed", "partial", "not_addressed")
STATUSES: Final = ("met", "partial", "attention", "not-addressed")


@dataclass(frozen=True, slots=True)
class ControlItem:
    id: str
    title: str
    coverage: Coverage
    how: str  # how Remit addresses it, and what it leaves to other controls
    controls: tuple[str, ...]  # keys of CONTROLS
    metrics: tuple[str, ...]  # keys of build_metrics


@dataclass(frozen=True, slots=True)
class Framework:
    id: str
    title: str
    items: tuple[ControlItem, ...]


def _item(
    id: str, title: str, coverage: Coverage, how: str, controls: str, metrics: str
) -> ControlItem:
    return ControlItem(id, title, coverage, how, tuple(controls.split()), tuple(metrics.split()))


FRAMEWORKS: Final[tuple[Framework, ...]] = (
    Framework(
        "owasp-asi-2026",
        "OWASP Top 10 for Agentic Applications (2026)",
        (
            _item(
                "ASI01",
                "Agent Goal Hijack",
                "partial",
                "Remit cannot stop a model from being steered, but bounds what a hijacked "
                "agent can do: the mandate fixes tools and destinations to the declared intent "
                "(destinations written in the principal's request are extracted into it), "
                "taint rules stop read-then-act chains to destinations not named explicitly, "
                "and high-risk acts wait for a human approval of the exact call.",
                "RC-MANDATE RC-TAINT RC-POLICY RC-APPROVAL",
                "request_derived act_policy_coverage decisions",
            ),
            _item(
                "ASI02",
                "Tool Misuse and Exploitation",
                "addressed",
                "Every tool call is decided at runtime: the admin-set catalog classes tools as "
                "read, write or act, the mandate scopes tools, destinations, sensitivity and "
                "budget, Cedar policy decides each call and unknown tools are denied.",
                "RC-CATALOG RC-MANDATE RC-POLICY RC-APPROVAL RC-KILL",
                "act_policy_coverage unused_grants decisions",
            ),
            _item(
                "ASI03",
                "Identity and Privilege Abuse",
                "addressed",
                "Each instance is attested and holds its own key; identity and task tokens are "
                "short-lived and bound to that key (proof of possession per call); authority is "
                "per task inside a ceiling; delegation only narrows and names every hop; "
                "downstream credentials are leased, never handed to the agent.",
                "RC-IDENTITY RC-POP RC-MANDATE RC-DELEGATION RC-SECRETS RC-OWNERS",
                "token_ttls task_ttls owners unused_grants long_lived_credentials",
            ),
            _item(
                "ASI04",
                "Agentic Supply Chain Vulnerabilities",
                "partial",
                "Tool metadata is never taken from a tool server: the catalog is admin-set and "
                "upstream tool definitions (name, description, schema) are pinned, so a changed "
                "definition is refused until re-admitted. Models, packages and MCP server code "
                "are not vetted by Remit.",
                "RC-CATALOG RC-POLICY",
                "tool_pins",
            ),
            _item(
                "ASI05",
                "Unexpected Code Execution",
                "partial",
                "Tools that execute code can be classed act and held to explicit policy and "
                "approval, within a task budget. Remit does not sandbox or inspect code the "
                "agent or a tool runs.",
                "RC-CATALOG RC-POLICY RC-APPROVAL",
                "act_policy_coverage",
            ),
            _item(
                "ASI06",
                "Memory and Context Poisoning",
                "partial",
                "Reads of content a third party can write taint the task, and a tainted task "
                "may act only towards destinations named explicitly; taint flows to delegated "
                "sub-tasks. Remit does not inspect or clean the agent's memory or context.",
                "RC-TAINT RC-POLICY",
                "request_derived decisions",
            ),
            _item(
                "ASI07",
                "Insecure Inter-Agent Communication",
                "partial",
                "Hand-offs between agents go through token exchange: both sides prove their "
                "keys, the child mandate is a subset of the parent's, the act chain names every "
                "hop and policy decides each edge (cross trust domain is default-deny). Other "
                "agent-to-agent messaging is not mediated.",
                "RC-DELEGATION RC-IDENTITY RC-POLICY",
                "delegation",
            ),
            _item(
                "ASI08",
                "Cascading Failures",
                "partial",
                "Budgets, rate limits and TTLs bound runaway work; revoking a task revokes its "
                "descendants and their leases; the kill switch stops all agents or one; every "
                "step fails closed. Failures inside downstream systems are out of scope.",
                "RC-KILL RC-MANDATE RC-DELEGATION",
                "enforcement task_ttls",
            ),
            _item(
                "ASI09",
                "Human-Agent Trust Exploitation",
                "partial",
                "An approval covers one exact call (bound to its digest), is single use, "
                "expires, can require a quorum and excludes self-approval. What the agent tells "
                "the human to obtain consent is not controlled by Remit.",
                "RC-APPROVAL RC-AUDIT",
                "decisions",
            ),
            _item(
                "ASI10",
                "Rogue Agents",
                "partial",
                "Every action is attributable to one instance, task and owner in a "
                "tamper-evident log; agents can be stopped at once (kill switch, suspend, "
                "retire) with their tasks and leases revoked. Behavioural detection is limited "
                "to rate limits and policy denials.",
                "RC-AUDIT RC-KILL RC-OWNERS RC-SHADOW",
                "audit_chain enforcement owners",
            ),
        ),
    ),
    Framework(
        "owasp-nhi-2025",
        "OWASP Non-Human Identities Top 10 (2025)",
        (
            _item(
                "NHI1",
                "Improper Offboarding",
                "partial",
                "Retiring an agent deactivates its instances and revokes its tasks and leases; "
                "every agent has an owner; the inventory report lists unused and ownerless "
                "credentials outside Remit. Remit cannot deprovision credentials it does not "
                "broker.",
                "RC-KILL RC-OWNERS RC-ANALYSIS",
                "owners unused_grants inventory",
            ),
            _item(
                "NHI2",
                "Secret Leakage",
                "partial",
                "Downstream secrets are sealed at rest and injected by the gateway, so the agent "
                "never holds them; secrets are a redacted type and never written to the audit "
                "log or errors. Secrets that are not brokered by Remit (see the inventory) and "
                "secrets in code or CI are not scanned.",
                "RC-SECRETS RC-AUDIT",
                "long_lived_credentials inventory",
            ),
            _item(
                "NHI3",
                "Vulnerable Third-Party NHI",
                "partial",
                "Third-party API credentials brokered as sealed secrets are leased per task and "
                "revocable at once. Remit does not assess third-party integrations, IDE "
                "extensions or SaaS apps.",
                "RC-SECRETS RC-CATALOG",
                "inventory",
            ),
            _item(
                "NHI4",
                "Insecure Authentication",
                "addressed",
                "Instances authenticate with single-use join tokens or pre-registered keys and "
                "then with ES256 tokens bound to their key, with a fresh proof of possession per "
                "call; algorithms are allow-listed. Operator tokens are hashed at rest, scoped "
                "and revocable.",
                "RC-IDENTITY RC-POP RC-OWNERS",
                "token_ttls long_lived_credentials",
            ),
            _item(
                "NHI5",
                "Overprivileged NHI",
                "addressed",
                "Authority is a per-task mandate inside a ceiling, act is a separate privilege, "
                "and effective permissions are computed from the real policy set; unused "
                "ceiling grants are reported here.",
                "RC-MANDATE RC-POLICY RC-ANALYSIS",
                "unused_grants act_policy_coverage",
            ),
            _item(
                "NHI6",
                "Insecure Cloud Deployment Configurations",
                "not_addressed",
                "Remit does not assess CI/CD or cloud identity configuration (for example OIDC "
                "trust conditions).",
                "",
                "",
            ),
            _item(
                "NHI7",
                "Long-Lived Secrets",
                "addressed",
                "Identity and task tokens live minutes; leases end with their task; sealed "
                "static secrets, leases and operator tokens are checked for age here, and the "
                "inventory report flags stale credentials outside Remit.",
                "RC-IDENTITY RC-SECRETS RC-MANDATE",
                "token_ttls long_lived_credentials inventory",
            ),
            _item(
                "NHI8",
                "Environment Isolation",
                "partial",
                "SPIFFE trust domains separate deployments and cross-domain delegation is "
                "refused unless permitted; each deployment has its own keys and store. Remit "
                "does not enforce separation between environments it does not run in.",
                "RC-IDENTITY RC-DELEGATION",
                "delegation",
            ),
            _item(
                "NHI9",
                "NHI Reuse",
                "addressed",
                "One identity per agent, one key per instance, one token per task: nothing is "
                "shared between agents, and the inventory report finds credentials shared by "
                "several agents outside Remit.",
                "RC-IDENTITY RC-POP RC-ANALYSIS",
                "inventory",
            ),
            _item(
                "NHI10",
                "Human Use of NHI",
                "partial",
                "Agent tokens are useless without the instance key (proof of possession), and "
                "operators act through their own scoped tokens, every action audited. Remit "
                "cannot tell a person driving an attested instance from the agent.",
                "RC-POP RC-OWNERS RC-AUDIT",
                "long_lived_credentials audit_chain",
            ),
        ),
    ),
    Framework(
        "nist-ai-rmf-1.0",
        "NIST AI Risk Management Framework 1.0 (functions)",
        (
            _item(
                "GOVERN",
                "Govern",
                "partial",
                "Accountability is explicit: every agent has an owner and a ceiling, operators "
                "have scoped tokens, policies are versioned and their changes audited. "
                "Organisational policies, roles and training are outside Remit.",
                "RC-OWNERS RC-POLICY RC-AUDIT",
                "owners long_lived_credentials act_policy_coverage",
            ),
            _item(
                "MAP",
                "Map",
                "partial",
                "The catalog records what each tool can do (privilege class, destinations, "
                "data labels); effective permissions and the NHI inventory map what agents can "
                "reach. Context, purpose and impact assessment of the AI system are outside "
                "Remit.",
                "RC-CATALOG RC-ANALYSIS",
                "act_policy_coverage unused_grants inventory",
            ),
            _item(
                "MEASURE",
                "Measure",
                "partial",
                "Decisions, denials, approvals and shadow would-denies are recorded in a "
                "verifiable log and counted here. Model accuracy, bias and robustness are not "
                "measured by Remit.",
                "RC-AUDIT RC-SHADOW RC-ANALYSIS",
                "decisions audit_chain",
            ),
            _item(
                "MANAGE",
                "Manage",
                "partial",
                "Risks are treated at runtime: per-call enforcement, approvals, revocation, "
                "kill switch, short-lived credentials. Incident response and decommissioning "
                "processes beyond the agent's access are outside Remit.",
                "RC-POLICY RC-APPROVAL RC-KILL RC-SECRETS",
                "enforcement long_lived_credentials decisions",
            ),
        ),
    ),
    Framework(
        "csa-maestro",
        "CSA MAESTRO layers",
        (
            _item(
                "L1",
                "Foundation Models",
                "not_addressed",
                "Remit does not protect or evaluate the model itself.",
                "",
                "",
            ),
            _item(
                "L2",
                "Data Operations",
                "partial",
                "Data labels and taint limit what may happen after sensitive or untrusted data "
                "is read; the sensitivity ceiling limits what a task may read. Data stores, "
                "vector stores and RAG pipelines are not protected by Remit.",
                "RC-TAINT RC-CATALOG",
                "decisions",
            ),
            _item(
                "L3",
                "Agent Frameworks",
                "partial",
                "Whatever the framework, every tool call goes through the same pipeline (SDK, "
                "HTTP or MCP gateway), with pinned tool definitions. The framework's own code "
                "is not checked.",
                "RC-POLICY RC-CATALOG RC-MANDATE",
                "act_policy_coverage tool_pins",
            ),
            _item(
                "L4",
                "Deployment and Infrastructure",
                "partial",
                "Instances are attested and hold their own keys; downstream credentials are "
                "leased per task. Hosts, containers and networks are not hardened by Remit.",
                "RC-IDENTITY RC-SECRETS",
                "token_ttls long_lived_credentials",
            ),
            _item(
                "L5",
                "Evaluation and Observability",
                "addressed",
                "Every issuance, decision, approval and admin change is in a hash-chained log "
                "with signed checkpoints; shadow mode shows what a policy would deny.",
                "RC-AUDIT RC-SHADOW RC-ANALYSIS",
                "audit_chain decisions enforcement",
            ),
            _item(
                "L6",
                "Security and Compliance",
                "addressed",
                "Runtime policy with a non-removable baseline, owners and ceilings, approvals, "
                "and this report with evidence from the live configuration and log.",
                "RC-POLICY RC-OWNERS RC-APPROVAL RC-ANALYSIS",
                "act_policy_coverage owners unused_grants long_lived_credentials",
            ),
            _item(
                "L7",
                "Agent Ecosystem",
                "partial",
                "Agents are registered identities in SPIFFE trust domains; delegation between "
                "them is narrowed and policy-decided; the inventory report finds identities "
                "Remit does not know. Agent marketplaces and discovery are out of scope.",
                "RC-DELEGATION RC-IDENTITY",
                "delegation inventory",
            ),
        ),
    ),
)


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class ItemResult:
    framework: str
    id: str
    title: str
    coverage: Coverage
    status: str  # one of STATUSES
    how: str
    controls: tuple[str, ...]
    metrics: tuple[str, ...]
    findings: tuple[str, ...]

    def to_data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "coverage": self.coverage,
            "status": self.status,
            "how": self.how,
            "controls": list(self.controls),
            "metrics": list(self.metrics),
            "findings": list(self.findings),
        }


@dataclass(frozen=True, slots=True)
class ComplianceReport:
    generated_at: float
    window_days: int
    metrics: Mapping[str, Metric] = field(hash=False)
    frameworks: tuple[tuple[Framework, tuple[ItemResult, ...]], ...]

    def counts(self) -> dict[str, int]:
        found = dict.fromkeys(STATUSES, 0)
        for _, items in self.frameworks:
            for item in items:
                found[item.status] += 1
        return found

    def to_data(self) -> dict[str, Any]:
        return {
            "report": "remit-compliance",
            "version": 1,
            "generated_at": _iso(self.generated_at),
            "window_days": self.window_days,
            "summary": self.counts(),
            "controls": dict(CONTROLS),
            "metrics": {
                k: {
                    "title": m.title,
                    "summary": m.summary,
                    "value": dict(m.value),
                    "findings": list(m.findings),
                }
                for k, m in self.metrics.items()
            },
            "frameworks": [
                {"id": f.id, "title": f.title, "items": [i.to_data() for i in items]}
                for f, items in self.frameworks
            ],
        }


def item_status(coverage: Coverage, findings: Sequence[str]) -> str:
    if coverage == "not_addressed":
        return "not-addressed"
    if findings:
        return "attention"
    return "partial" if coverage == "partial" else "met"


def compliance_report(evidence: Evidence) -> ComplianceReport:
    """Every framework item with its status, controls, evidence metrics and findings."""
    metrics = build_metrics(evidence)
    frameworks: list[tuple[Framework, tuple[ItemResult, ...]]] = []
    for framework in FRAMEWORKS:
        results: list[ItemResult] = []
        for item in framework.items:
            findings = tuple(
                dict.fromkeys(f for key in item.metrics for f in metrics[key].findings)
            )
            results.append(
                ItemResult(
                    framework=framework.id,
                    id=item.id,
                    title=item.title,
                    coverage=item.coverage,
                    status=item_status(item.coverage, findings),
                    how=item.how,
                    controls=item.controls,
                    metrics=item.metrics,
                    findings=findings,
                )
            )
        frameworks.append((framework, tuple(results)))
    return ComplianceReport(evidence.generated_at, evidence.window_days, metrics, tuple(frameworks))
