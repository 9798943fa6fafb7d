"""The per-call pipeline (DESIGN §2): one function decides every tool call.

Order: authenticate, load state, mandate, monitor, policy, approval, leases,
budget and taint, audit. Every step fails closed. Checks that fail raise (and
leave a denial record); a decision that says no is a value with reasons.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from remit.canonical import JsonLimits, digest
from remit.clock import Clock
from remit.core.audit import AuditRecord
from remit.core.catalog import Catalog, ToolSpec, check_tool_name
from remit.core.identity import Agent, AgentStatus, Instance, Mode, Principal
from remit.core.keys import load_public_jwk
from remit.core.labels import Labels
from remit.core.mandate import MandateCheck, check_call, classify_destinations
from remit.core.policy import PolicyEngine, PolicyRequest, PolicyResult
from remit.core.tasks import Task, TaskStatus
from remit.core.tokens import ProofClaims, TaskClaims, TokenService, verify_call_proof
from remit.errors import (
    InvalidProof,
    InvalidRequest,
    InvalidToken,
    RemitError,
    TokenExpired,
    TokenRevoked,
)
from remit.ids import new_id

STOP_REASON = "kill-switch"
ARGUMENT_LIMITS = JsonLimits(
    max_depth=12, max_bytes=256 * 1024, max_string=64 * 1024, max_items=2048
)
MAX_PROOF_BYTES = 4096


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL_REQUIRED = "approval_required"


@dataclass(frozen=True, slots=True)
class Obligation:
    """Something the gateway must do for an allowed call, e.g. inject credential ``ref``."""

    kind: str
    ref: str


@dataclass(frozen=True, slots=True)
class CallRequest:
    task_token: str
    proof: str
    tool: str
    arguments: Mapping[str, Any] = field(hash=False)
    approval: str | None = None  # the id of an approved request for this exact call
    binding: tuple[str, str] | None = None  # (method, URL) the proof must name, over HTTP


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    outcome: Outcome  # what the rules said
    allowed: bool  # whether the call may go ahead (True for a shadow would-deny)
    mode: Mode
    reasons: tuple[str, ...]
    policy_version: str
    task_id: str
    agent_id: str
    instance_id: str
    tool: str
    args_digest: str
    obligations: tuple[Obligation, ...] = ()
    shadow_reasons: tuple[str, ...] = ()
    audit_seq: int = 0
    approval_id: str | None = None  # the request to approve, or the approval that was used

    @property
    def would_deny(self) -> bool:
        return self.allowed and self.outcome is not Outcome.ALLOW

    def explain(self) -> str:
        why = ", ".join(self.reasons) or "no reason recorded"
        if self.outcome is Outcome.ALLOW:
            return f"allowed by {why}"
        if self.would_deny:
            return f"would be denied by {why} (shadow mode: allowed)"
        if self.outcome is Outcome.APPROVAL_REQUIRED:
            return f"approval required by {why}"
        return f"denied by {why}"


class PipelineState(Protocol):
    """What the pipeline reads and changes; the service implements it over the store."""

    def get_task(self, task_id: str) -> Task | None: ...
    def get_agent(self, agent_id: str) -> Agent | None: ...
    def get_instance(self, instance_id: str) -> Instance | None: ...
    def get_principal(self, principal_id: str) -> Principal | None: ...
    def ancestors_open(self, task: Task, now: float) -> bool: ...
    def record_call(
        self, *, task_id: str, jti: str, jti_expires_at: float, consume: bool, taint: Labels
    ) -> tuple[bool, bool]:
        """Atomically remember the proof's jti and, if ``consume``, take one call from the
        budget and join ``taint``. Returns (jti was fresh, call was consumed)."""
        ...

    def deciding(self, task_id: str) -> AbstractContextManager[None]:
        """Marks an allowed decision from its budget to its audit record (ending the
        task waits for it)."""
        ...


class AuditSink(Protocol):
    def append(self, kind: str, data: Mapping[str, Any]) -> AuditRecord: ...


@dataclass(frozen=True, slots=True)
class MonitorVerdict:
    """What step 4 found: deny reasons, the anomaly score (0..100) policy sees, reasons
    that make an otherwise allowed call need approval, and what to record with the
    decision (``anomaly`` in its audit record; JSON data, no arguments)."""

    reasons: tuple[str, ...] = ()
    score: int = 0
    approval_reasons: tuple[str, ...] = ()
    record: Mapping[str, Any] | None = field(default=None, hash=False)


class Monitor(Protocol):
    """Step 4: kill switch, rate limits, anomaly signals (``remit.core.monitor``)."""

    def check(
        self, task: Task, spec: ToolSpec, now: float, destinations: Sequence[str] = ()
    ) -> MonitorVerdict: ...

    def observe(self, decision: Decision, record: Mapping[str, Any], now: float) -> None:
        """After step 8: learn from the decision and its audit record data."""
        ...


@dataclass(frozen=True, slots=True)
class ApprovalStep:
    """What step 6 decided. ``approval_id`` names the request to approve, or the
    approval that was used."""

    outcome: Outcome
    reasons: tuple[str, ...]
    approved: bool = False
    approval_id: str | None = None


class ApprovalGate(Protocol):
    """Step 6: approval_required becomes a request to approve, or an allow when an
    approved request for this exact call is presented (and consumed)."""

    def resolve(
        self,
        outcome: Outcome,
        reasons: tuple[str, ...],
        call: CallRequest,
        task: Task,
        *,
        args_digest: str,
        quorum: int,
        mode: Mode,
    ) -> ApprovalStep: ...


@dataclass(frozen=True, slots=True)
class LeaseStep:
    """What step 7 decided: the obligations, or (``denied``) the reasons issuance policy
    refused the credential, which turn the call into a deny."""

    obligations: tuple[Obligation, ...] = ()
    denied: tuple[str, ...] = ()
    issued: tuple[str, ...] = ()  # leases newly issued for this call (not reused ones)


class LeaseResolver(Protocol):
    """Step 7: obligations (credentials to inject) for an allowed call. ``call_id`` is the
    decision id (per-call leases are bound to it). Raises (fails closed) when a credential
    cannot be issued.

    ``release`` ends the leases ``step`` newly issued (``LeaseStep.issued``, never a reused
    one) when the call is refused after step 7 (a replayed proof, an exhausted budget, any
    failure up to and including the audit write): a credential never handed out must not
    stay open. It must not raise."""

    def obligations(self, task: Task, spec: ToolSpec, *, call_id: str, mode: Mode) -> LeaseStep: ...

    def release(self, step: LeaseStep, reason: str) -> None: ...


class NoApprovals:
    def resolve(
        self,
        outcome: Outcome,
        reasons: tuple[str, ...],
        call: CallRequest,
        task: Task,
        *,
        args_digest: str,
        quorum: int,
        mode: Mode,
    ) -> ApprovalStep:
        # With no approval service every approval_required stays unapproved: fail closed.
        return ApprovalStep(outcome, reasons)


_NO_LEASE = LeaseStep()


class NoLeases:
    def obligations(self, task: Task, spec: ToolSpec, *, call_id: str, mode: Mode) -> LeaseStep:
        return LeaseStep()

    def release(self, step: LeaseStep, reason: str) -> None:
        return None


class BasicMonitor:
    """A kill switch (global and per agent) and a per-task sliding rate limit."""

    def __init__(self, *, max_calls_per_minute: int = 600) -> None:
        self.killed_all = False
        self.killed_agents: set[str] = set()
        self.max_calls_per_minute = max_calls_per_minute
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(
        self, task: Task, spec: ToolSpec, now: float, destinations: Sequence[str] = ()
    ) -> MonitorVerdict:
        if self.killed_all or task.agent_id in self.killed_agents:
            return MonitorVerdict((STOP_REASON,), 100)
        with self._lock:
            if len(self._recent) > 100_000:
                self._recent.clear()
            window = self._recent.setdefault(task.task_id, deque())
            while window and window[0] <= now - 60.0:
                window.popleft()
            window.append(now)
            # Only the tail matters once the limit is passed: keep memory bounded.
            while len(window) > self.max_calls_per_minute + 1:
                window.popleft()
            calls = len(window)
        if calls > self.max_calls_per_minute:
            return MonitorVerdict(("rate-limit",), 80)
        return _QUIET

    def observe(self, decision: Decision, record: Mapping[str, Any], now: float) -> None:
        return None


_QUIET = MonitorVerdict()


class Pipeline:
    def __init__(
        self,
        *,
        tokens: TokenService,
        policy: PolicyEngine,
        catalog: Callable[[], Catalog],
        state: PipelineState,
        audit: AuditSink,
        clock: Clock,
        monitor: Monitor | None = None,
        approvals: ApprovalGate | None = None,
        leases: LeaseResolver | None = None,
        proof_max_age: float = 60.0,
        proof_leeway: float = 5.0,
    ) -> None:
        self.tokens = tokens
        self.policy = policy
        self.catalog = catalog
        self.state = state
        self.audit = audit
        self.clock = clock
        self.monitor: Monitor = monitor or BasicMonitor()
        self.approvals: ApprovalGate = approvals or NoApprovals()
        self.leases: LeaseResolver = leases or NoLeases()
        self.proof_max_age = proof_max_age
        self.proof_leeway = proof_leeway
        self._keys: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ entry point
    def authorize(self, call: CallRequest) -> Decision:
        decision_id = new_id("dec")
        context: dict[str, Any] = {"decision_id": decision_id, "tool": _printable(call.tool)}
        try:
            decision = self._authorize(call, decision_id, context)
        except RemitError as exc:
            if exc.code == "audit_unavailable":
                raise
            self._refusal_record(context, exc)
            raise
        self.monitor.observe(decision, context, self.clock.now())
        return decision

    def _refusal_record(self, context: dict[str, Any], exc: RemitError) -> None:
        data = {k: v for k, v in context.items() if not k.startswith("_")}
        data.update({"outcome": "refused", "error": exc.code, "reason": exc.reason})
        self.audit.append("decision", data)  # AuditUnavailable propagates: fail closed

    # ------------------------------------------------------------------ the steps
    def _authorize(self, call: CallRequest, decision_id: str, ctx: dict[str, Any]) -> Decision:
        now = self.clock.now()
        # 1. Authenticate: input limits, task token, proof of possession, replay.
        tool = check_tool_name(call.tool)
        if not isinstance(call.arguments, Mapping):
            raise InvalidRequest("arguments must be an object", reason="bad_arguments")
        args_digest = digest(call.arguments, ARGUMENT_LIMITS, "arguments")  # checks limits
        ctx["args_digest"] = args_digest
        claims = self.tokens.verify_task(call.task_token)
        ctx.update(task=claims.task_id, agent=claims.agent_id, instance=claims.instance_id)
        instance, proof = self._verify_proof(
            claims, call.task_token, call.proof, tool, args_digest, call.binding, now
        )
        # The jti is remembered in the same transaction that records the call (see _finish):
        # of two concurrent uses of one proof, exactly one commits.
        ctx["_jti"] = (proof.jti, proof.issued_at + self.proof_max_age + 2 * self.proof_leeway)

        # 2. Load state: task open and matching the token, agent active, no revoked ancestor.
        task, agent = self._open_task_state(claims, now)
        ctx["principal"] = task.principal_id

        # 3. Mandate. A tool missing from the catalog is denied, never guessed.
        spec = self.catalog().get(tool)
        if spec is None:
            return self._finish(
                ctx=ctx,
                decision_id=decision_id,
                task=task,
                agent=agent,
                spec=None,
                outcome=Outcome.DENY,
                reasons=("unknown-tool",),
                mode=Mode.ENFORCE,
                policy_version=self.policy.version,
                call=call,
            )
        ctx["privilege"] = spec.privilege.value
        destinations = spec.destinations_in(call.arguments)
        principal = self.state.get_principal(task.principal_id)
        classes = classify_destinations(task.mandate, principal, destinations)
        check = check_call(task.mandate, spec=spec, classes=classes, calls_used=task.calls_used)
        ctx["destinations"] = [str(d) for d in destinations]
        mode = Mode.SHADOW if agent.mode is Mode.SHADOW or spec.shadow else Mode.ENFORCE

        # 4. Monitor. An emergency stop is never relaxed, not even in shadow mode.
        verdict = self.monitor.check(task, spec, now, ctx["destinations"])
        monitor_reasons, anomaly = verdict.reasons, verdict.score
        if verdict.record:
            ctx["anomaly"] = verdict.record
        if STOP_REASON in monitor_reasons:
            mode = Mode.ENFORCE

        # 5. Policy: always evaluated, so an explanation names every rule that fired.
        request = self._policy_request(
            task=task,
            instance=instance,
            spec=spec,
            check=check,
            mode=mode,
            anomaly=anomaly,
            now=now,
        )
        result = self.policy.evaluate(request)
        # What the policies saw, and what decided beside them: enough for ``remit policy
        # replay`` to re-decide this call under a candidate policy set.
        ctx["policy_input"] = {
            "action": request.action,
            "tool": request.tool,
            "context": request.context,
        }
        ctx["mandate_violations"] = list(check.violations)
        ctx["monitor_reasons"] = list(monitor_reasons)
        outcome, reasons = combine_outcome(
            result, check.violations, monitor_reasons, verdict.approval_reasons
        )
        ctx["shadow_policies"] = list(result.shadow_reasons)

        # 6. Approval.
        step = self.approvals.resolve(
            outcome,
            reasons,
            call,
            task,
            args_digest=args_digest,
            quorum=result.approval_quorum,
            mode=mode,
        )
        outcome, reasons = step.outcome, step.reasons
        ctx["approved"] = step.approved
        if step.approval_id is not None:
            ctx["approval"] = step.approval_id
        return self._finish(
            ctx=ctx,
            decision_id=decision_id,
            task=task,
            agent=agent,
            spec=spec,
            outcome=outcome,
            reasons=reasons,
            mode=mode,
            policy_version=result.version,
            call=call,
            result=result,
            approval_id=step.approval_id,
        )

    def _finish(
        self,
        *,
        ctx: dict[str, Any],
        decision_id: str,
        task: Task,
        agent: Agent,
        spec: ToolSpec | None,
        outcome: Outcome,
        reasons: tuple[str, ...],
        mode: Mode,
        policy_version: str,
        call: CallRequest,
        result: PolicyResult | None = None,
        approval_id: str | None = None,
    ) -> Decision:
        # An unknown tool is denied even in shadow mode: there is nothing to decide it by.
        allowed = spec is not None and (outcome is Outcome.ALLOW or mode is Mode.SHADOW)
        obligations: tuple[Obligation, ...] = ()
        leased = _NO_LEASE
        # 7. Leases; then the jti, budget and taint in one transaction (DESIGN §2 step 9,
        # applied before the result exists, so no later report is needed).
        if allowed and spec is not None:
            leased = self.leases.obligations(task, spec, call_id=decision_id, mode=mode)
            obligations = leased.obligations
            if leased.denied:  # issuance policy said no: never a call without its credential
                allowed, outcome, reasons = False, Outcome.DENY, leased.denied
        # From here on, a lease issued for this call is released on every path that does
        # not hand it out in an allowed decision (replayed, budget spent, audit down, ...).
        # An allowed call is in flight from its budget to its audit record: ending the task
        # waits for it, so it is never chained after the task's end (REV-02).
        in_flight = self.state.deciding(task.task_id) if allowed else nullcontext()
        try:
            with in_flight:
                jti, jti_expires_at = ctx.pop("_jti")
                fresh, consumed = self.state.record_call(
                    task_id=task.task_id,
                    jti=jti,
                    jti_expires_at=jti_expires_at,
                    consume=allowed,
                    taint=spec.output_labels if spec is not None else Labels(),
                )
                if not fresh:
                    raise InvalidProof("this proof was used before", reason="replayed")
                if allowed and not consumed and mode is Mode.ENFORCE:
                    allowed, outcome, reasons, obligations = (
                        False,
                        Outcome.DENY,
                        ("budget-exhausted",),
                        (),
                    )
                # 8. Audit: the decision is chained and written before the call may go ahead.
                ctx.update(
                    outcome=outcome.value,
                    allowed=allowed,
                    would_deny=allowed and outcome is not Outcome.ALLOW,
                    mode=mode.value,
                    reasons=list(reasons),
                    policy_version=policy_version,
                    owner=agent.owner,
                )
                record = self.audit.append("decision", ctx)
        except BaseException as exc:
            if leased.issued:
                why = (exc.reason or exc.code) if isinstance(exc, RemitError) else "internal"
                self.leases.release(leased, f"call_refused:{why}")
            raise
        if leased.issued and not allowed:
            self.leases.release(leased, f"call_refused:{','.join(reasons)}")
        return Decision(
            decision_id=decision_id,
            outcome=outcome,
            allowed=allowed,
            mode=mode,
            reasons=reasons,
            policy_version=policy_version,
            task_id=task.task_id,
            agent_id=task.agent_id,
            instance_id=task.instance_id,
            tool=call.tool,
            args_digest=str(ctx.get("args_digest", "")),
            obligations=obligations,
            shadow_reasons=result.shadow_reasons if result else (),
            audit_seq=record.seq,
            approval_id=approval_id,
        )

    # ------------------------------------------------------------------ steps 1 and 2, reusable
    def check_task_request(
        self,
        *,
        task_token: str,
        proof: str,
        op: str,
        body: Any,
        binding: tuple[str, str] | None,
        consume: bool = True,
    ) -> TaskClaims:
        """Steps 1 and 2 for a request that is not itself a tool call (e.g. an MCP
        ``tools/list`` through a gateway): the task token, a proof over ``op`` and
        ``body``, and an open task. With ``consume`` the proof is used up; a gateway's
        pre-check of a tool call leaves it for ``authorize``. Raises on any failure."""
        now = self.clock.now()
        claims = self.tokens.verify_task(task_token)
        body_digest = digest(body, ARGUMENT_LIMITS)
        _, checked = self._verify_proof(claims, task_token, proof, op, body_digest, binding, now)
        task, _ = self._open_task_state(claims, now)
        if consume:
            fresh, _ = self.state.record_call(
                task_id=task.task_id,
                jti=checked.jti,
                jti_expires_at=checked.issued_at + self.proof_max_age + 2 * self.proof_leeway,
                consume=False,
                taint=Labels(),
            )
            if not fresh:
                raise InvalidProof("this proof was used before", reason="replayed")
        return claims

    def _verify_proof(
        self,
        claims: TaskClaims,
        token: str,
        proof: object,
        op: str,
        args_digest: str,
        binding: tuple[str, str] | None,
        now: float,
    ) -> tuple[Instance, ProofClaims]:
        instance = self._instance_for(claims)
        if not isinstance(proof, str) or len(proof) > MAX_PROOF_BYTES:
            raise InvalidProof("the call proof is malformed", reason="malformed")
        checked = verify_call_proof(
            proof,
            public_key=self._public_key(instance),
            token=token,
            tool=op,
            args_digest=args_digest,
            now=now,
            max_age=self.proof_max_age,
            leeway=self.proof_leeway,
            htm=binding[0] if binding else None,
            htu=binding[1] if binding else None,
        )
        return instance, checked

    def _open_task_state(self, claims: TaskClaims, now: float) -> tuple[Task, Agent]:
        task = self.state.get_task(claims.task_id)
        if (
            task is None
            or task.agent_id != claims.agent_id
            or task.instance_id != claims.instance_id
        ):
            raise InvalidToken("the token names no such task", reason="unknown_task")
        status = task.effective_status(now)
        if status is TaskStatus.EXPIRED:
            raise TokenExpired("the task has expired", reason="task_expired")
        if status is not TaskStatus.OPEN:
            raise TokenRevoked("the task has ended", reason=f"task_{status.value}")
        if task.mandate_digest != claims.mandate_digest:
            raise InvalidToken(
                "the token does not match the task's mandate", reason="mandate_mismatch"
            )
        agent = self.state.get_agent(task.agent_id)
        if agent is None or agent.status is not AgentStatus.ACTIVE:
            raise TokenRevoked("the agent is not active", reason="agent_inactive")
        if not self.state.ancestors_open(task, now):
            raise TokenRevoked("a parent task has ended", reason="ancestor_ended")
        return task, agent

    # ------------------------------------------------------------------ helpers
    def _instance_for(self, claims: TaskClaims) -> Instance:
        instance = self.state.get_instance(claims.instance_id)
        if instance is None or not instance.active or instance.agent_id != claims.agent_id:
            raise InvalidToken("the instance is not active", reason="instance_inactive")
        if instance.jkt != claims.jkt:
            raise InvalidToken("the token is bound to another key", reason="key_mismatch")
        return instance

    def _public_key(self, instance: Instance) -> Any:
        cache_key = (instance.instance_id, instance.jkt)
        key = self._keys.get(cache_key)
        if key is None:
            key = load_public_jwk(dict(instance.public_jwk))
            if len(self._keys) > 50_000:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def _policy_request(
        self,
        *,
        task: Task,
        instance: Instance,
        spec: ToolSpec,
        check: MandateCheck,
        mode: Mode,
        anomaly: int,
        now: float,
    ) -> PolicyRequest:
        classes = check.classes
        context = {
            "mode": mode.value,
            "instance": instance.instance_id,
            "task": task.policy_info(),
            "tool_in_mandate": spec.name in task.mandate.tools,
            "destinations": [
                str(d) for d in classes.explicit + classes.by_pattern + classes.outside
            ],
            "destinations_explicit": [str(d) for d in classes.explicit],
            "destinations_by_pattern": [str(d) for d in classes.by_pattern],
            "destinations_outside": [str(d) for d in classes.outside],
            "output_sensitivity": int(spec.output_labels.sensitivity),
            "output_flags": sorted(spec.output_labels.flags),
            "taint_sensitivity": int(task.taint.sensitivity),
            "taint_flags": sorted(task.taint.flags),
            "budget_remaining": check.budget_remaining,
            "approved": False,
            "anomaly_score": anomaly,
            "delegated": task.parent_id is not None,
            "hour_utc": time.gmtime(now).tm_hour,
        }
        return PolicyRequest(
            agent_id=task.agent_id, action=spec.privilege.value, tool=spec.name, context=context
        )


def combine_outcome(
    result: PolicyResult,
    mandate_violations: tuple[str, ...],
    monitor_reasons: tuple[str, ...],
    monitor_approval: tuple[str, ...] = (),
) -> tuple[Outcome, tuple[str, ...]]:
    """Steps 3-5 combined into one outcome, before approvals (step 6). Also used by
    ``remit.core.replay`` to re-decide recorded calls: one rule, one place.
    ``monitor_approval``: the monitor's reasons to make a call that is not denied wait
    for a human (``MonitorVerdict.approval_reasons``)."""
    if not mandate_violations and not monitor_reasons and result.approval_reasons:
        # Only approval policies said no: a human may consent to this one call.
        outcome, reasons = Outcome.APPROVAL_REQUIRED, result.approval_reasons
    elif mandate_violations or monitor_reasons or not result.allowed:
        # A deny names what denied: mandate checks, monitor, then the forbidding policies.
        policy_reasons = () if result.allowed else result.reasons
        reasons = tuple(dict.fromkeys(mandate_violations + monitor_reasons + policy_reasons))
        return Outcome.DENY, reasons
    else:
        outcome, reasons = Outcome.ALLOW, result.reasons
    if monitor_approval:
        # The monitor's automatic response: an anomalous call waits for a human.
        kept = reasons if outcome is Outcome.APPROVAL_REQUIRED else ()
        return Outcome.APPROVAL_REQUIRED, tuple(dict.fromkeys(kept + monitor_approval))
    return outcome, reasons


def _printable(tool: object) -> str:
    if isinstance(tool, str) and tool.isascii() and tool.isprintable() and len(tool) <= 200:
        return tool
    return "<malformed>"
