"""The gateway itself, whatever the transport: list what a caller may use, and put every
call through Remit before it reaches an upstream.

The gateway translates and forwards; Remit decides. For each ``tools/call``:

1. the wire name ``<server>__<tool>`` becomes the catalog name ``<server>/<tool>``;
2. the upstream's current definition of the tool is looked up (listed at connect,
   again at every ``tools/list`` and on ``notifications/tools/list_changed``);
3. Remit decides (the full pipeline: token, proof, mandate, policy, audit, taint);
   if it allows, Remit checks the definition against the admitted pin;
4. if the decision carries credential obligations, Remit hands over what to inject
   (``remit.gateway.leased``) and the call runs on a connection of that lease alone;
5. only then is the call forwarded, unchanged, and the result returned unchanged
   (except that any credential in it, configured or leased, is redacted).

Anything else (deny, approval required, Remit unable to decide, unknown tool,
upstream timeout or crash) is an error result naming a stable code; nothing is
forwarded. Every call is decided, and so audited, before anything else is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import anyio
import anyio.to_thread
from mcp.types import CallToolResult, Tool, ToolAnnotations

from remit.canonical import digest
from remit.core.catalog import Catalog, Privilege, ToolSpec
from remit.core.pipeline import ARGUMENT_LIMITS, Decision, Obligation, Outcome
from remit.errors import Denied, InvalidRequest, NotFound, ProviderUnavailable, RemitError
from remit.gateway.config import GatewayConfig, UpstreamConfig
from remit.gateway.leased import (
    ENDED_CODES,
    LeasedUpstreams,
    credential_obligations,
    fetch_injections,
)
from remit.gateway.names import catalog_name, split_wire_name, wire_name
from remit.gateway.redact import LogFilter, Redactor
from remit.gateway.results import gateway_error, refused_by_decision, refused_by_error
from remit.gateway.upstream import Upstream, tool_definition
from remit.providers.base import Injection
from remit.service import TASK_CATALOG_OP, TASK_PIN_CHECK_OP, task_pin_body

if TYPE_CHECKING:
    from remit.agent import TaskSession
    from remit.client import RemitClient
    from remit.service import Remit

logger = logging.getLogger("remit.gateway")


class Caller(Protocol):
    """Who is calling, as Remit knows them. The methods may block (run in a worker thread)."""

    @property
    def task_id(self) -> str: ...

    def mandate_tools(self) -> frozenset[str]:
        """The catalog tools of the caller's task; raises if the task is not usable."""
        ...

    def authorize(
        self, tool: str, arguments: Mapping[str, Any], approval: str | None = None
    ) -> Decision:
        """Remit's decision on this exact call (the full pipeline), presenting ``approval``
        (the id of an approved request for this exact call) if given."""
        ...


class RemitView(Protocol):
    """What the gateway reads from Remit besides decisions. The methods may block."""

    def tool_spec(self, tool: str) -> ToolSpec | None: ...

    def check_tool_definition(self, tool: str, definition: Mapping[str, Any]) -> None:
        """Raise ``Denied`` (``tool_not_admitted`` / ``tool_definition_changed``) unless the
        upstream's definition is the admitted one."""
        ...

    def credential(self, obligation: Obligation) -> Injection:
        """What to inject for a credential obligation of an allowed call (``credential_for``);
        raises a ``RemitError`` when the lease is no longer usable."""
        ...

    def lease_usable(self, lease_id: str) -> bool:
        """Whether a lease is still open, without using it (the periodic sweep)."""
        ...

    def now(self) -> float:
        """Remit's clock."""
        ...


class LocalRemitView:
    """The in-process service."""

    def __init__(self, remit: Remit) -> None:
        self._remit = remit

    def tool_spec(self, tool: str) -> ToolSpec | None:
        return self._remit.catalog.get(tool)

    def check_tool_definition(self, tool: str, definition: Mapping[str, Any]) -> None:
        self._remit.check_tool_definition(tool, definition)

    def credential(self, obligation: Obligation) -> Injection:
        return self._remit.credential_for(obligation)

    def lease_usable(self, lease_id: str) -> bool:
        try:
            lease = self._remit.get_lease(lease_id)
        except RemitError:
            return False
        return lease.usable(self._remit.clock.now())

    def now(self) -> float:
        return self._remit.clock.now()


class RemoteRemitView:
    """A Remit server, through the client, as the sidecar's own task: the catalog entries
    of its mandate and the pin checks come from the task-authenticated endpoints
    (``/v1/tasks/catalog``, ``/v1/tasks/pins/check``), each request with the task token
    and a fresh single-use proof. No operator credential is needed or used."""

    def __init__(
        self, client: RemitClient, task: TaskSession | None = None, *, catalog_ttl: float = 30.0
    ) -> None:
        self._client = client
        self._task = task
        self._ttl = catalog_ttl
        self._catalog: tuple[float, Catalog] | None = None

    def _session(self) -> TaskSession:
        if self._task is None:
            raise InvalidRequest(
                "a gateway with --remit-url reads Remit as its task; it has none",
                reason="bad_gateway_config",
            )
        return self._task

    def tool_spec(self, tool: str) -> ToolSpec | None:
        now = time.monotonic()
        if self._catalog is None or self._catalog[0] <= now:
            task = self._session()
            proof = task.agent.proof(task.token, TASK_CATALOG_OP, {}, endpoint="task_catalog")
            self._catalog = (now + self._ttl, self._client.task_catalog(task.token, proof))
        return self._catalog[1].get(tool)

    def check_tool_definition(self, tool: str, definition: Mapping[str, Any]) -> None:
        task = self._session()
        body = task_pin_body(tool, definition)
        proof = task.agent.proof(task.token, TASK_PIN_CHECK_OP, body, endpoint="task_pin_check")
        self._client.check_task_tool_definition(task.token, proof, tool, definition)

    def credential(self, obligation: Obligation) -> Injection:
        # Remit's HTTP API has no agent-authenticated endpoint that hands a lease's value to
        # a gateway, and an operator token must never fetch credential values: a
        # credentialed tool is refused (fail closed) until there is one.
        raise ProviderUnavailable(
            "this tool needs a leased credential, which a gateway with --remit-url cannot "
            "obtain (Remit's HTTP API has no agent-authenticated credential endpoint); "
            "run the gateway with an in-process Remit for credentialed tools",
            reason="remote_credentials_unsupported",
        )

    def lease_usable(self, lease_id: str) -> bool:
        return False

    def now(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class _Verdict:
    decision: Decision
    pin_refusal: RemitError | None = None
    approval_id: str | None = None  # the request this call waits for, if any
    injections: tuple[Injection, ...] = ()  # what the allowed call must carry
    single_use: bool = False  # a lease no longer usable once handed out (per call)
    credential_refusal: RemitError | None = None  # no credential: the call is not forwarded


# An approval that can no longer be used: the next identical call asks for a new one.
_SPENT_APPROVAL = frozenset(
    {
        "approval_consumed",
        "approval_denied",
        "approval_expired",
        "approval_unknown",
        "approval_wrong_task",
        "approval_mismatch",
    }
)
_SPENT_APPROVAL_REASONS = frozenset((reason,) for reason in _SPENT_APPROVAL)
MAX_REMEMBERED_APPROVALS = 10_000


class Gateway:
    """Upstream MCP servers under their namespaces, behind Remit."""

    def __init__(
        self, config: GatewayConfig, view: RemitView, *, stderr: TextIO | None = None
    ) -> None:
        self.config = config
        self.view = view
        self.redactor = Redactor(config.secrets())
        self.upstreams: dict[str, Upstream] = {
            u.name: Upstream(u, self.redactor, stderr=stderr) for u in config.upstreams
        }
        self.leased = LeasedUpstreams(
            view, self.redactor, limit=config.max_leased_upstreams, stderr=stderr
        )
        # (task, tool, argument digest) -> the approval request that call waits for, so that
        # repeating the exact call presents the approval once a human has given it.
        self._approvals: dict[tuple[str, str, str], str] = {}
        self._waiting_tasks: frozenset[str] = frozenset()
        self._approvals_lock = threading.Lock()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Connect every upstream (one that fails is retried on its first call), serve, and
        stop them all on exit."""
        log_filter = LogFilter(self.redactor)
        logger.addFilter(log_filter)
        try:
            async with anyio.create_task_group() as group:
                for upstream in self.upstreams.values():
                    upstream.bind(group)
                self.leased.bind(group)
                group.start_soon(self.leased.run_sweeper, self.config.lease_sweep_seconds)
                async with anyio.create_task_group() as starting:
                    for upstream in self.upstreams.values():
                        starting.start_soon(_connect_quietly, upstream)
                try:
                    yield self
                finally:
                    await self.leased.close_all()
                    for upstream in self.upstreams.values():
                        await upstream.aclose()
                    group.cancel_scope.cancel()
        finally:
            logger.removeFilter(log_filter)

    # ------------------------------------------------------------------ tools/list
    async def list_tools(self, caller: Caller) -> list[Tool]:
        """The tools the caller's mandate allows, admitted and offered by a live upstream,
        named ``<server>__<tool>`` and marked with their privilege class."""
        mandate = await anyio.to_thread.run_sync(caller.mandate_tools)
        offered: list[tuple[str, Tool]] = []
        for namespace, upstream in self.upstreams.items():
            if not any(t.startswith(namespace + "/") for t in mandate):
                continue
            try:
                tools = await upstream.list_tools(refresh=True)
            except RemitError as exc:
                logger.warning("tools/list: upstream %s skipped (%s)", namespace, exc.code)
                continue
            offered.extend(
                (f"{namespace}/{tool.name}", tool)
                for tool in tools.values()
                if f"{namespace}/{tool.name}" in mandate
            )
        admitted = await anyio.to_thread.run_sync(self._admitted, offered)
        return [_present(tool, name, spec) for name, tool, spec in admitted]

    def _admitted(self, offered: list[tuple[str, Tool]]) -> list[tuple[str, Tool, ToolSpec]]:
        out: list[tuple[str, Tool, ToolSpec]] = []
        for name, tool in offered:
            try:
                spec = self.view.tool_spec(name)
                if spec is None:
                    continue
                self.view.check_tool_definition(name, tool_definition(tool))
            except Denied as exc:
                logger.warning("tools/list: %s hidden (%s)", name, exc.reason)
                continue
            except RemitError as exc:
                logger.warning("tools/list: %s hidden (%s)", name, exc.code)
                continue
            out.append((name, tool, spec))
        return out

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """The cached input schema of a wire name (for the SDK's header checks only)."""
        parts = split_wire_name(name)
        upstream = self.upstreams.get(parts[0]) if parts else None
        tool = upstream.cached_tool(parts[1]) if upstream is not None and parts else None
        return dict(tool.input_schema) if tool is not None else None

    # ------------------------------------------------------------------ tools/call
    async def call_tool(
        self,
        caller: Caller,
        name: str,
        arguments: Mapping[str, Any],
        *,
        approval: str | None = None,
    ) -> CallToolResult:
        """Decide, then forward. ``approval`` is an approval id the agent presents itself
        (``_meta["remit/approval"]``); otherwise the one this exact call waits for, if any."""
        tool = catalog_name(name)
        parts = split_wire_name(name)
        upstream = self.upstreams.get(parts[0]) if parts else None
        definition: dict[str, Any] | None = None
        route_error: RemitError | None = None
        if upstream is not None and parts is not None:
            try:
                found = await upstream.tool(parts[1])
            except RemitError as exc:
                route_error = exc
            else:
                definition = tool_definition(found) if found is not None else None
        forwardable = upstream is not None and definition is not None and route_error is None
        target = upstream.config if forwardable and upstream is not None else None
        try:
            verdict = await anyio.to_thread.run_sync(
                self._decide, caller, tool, arguments, definition, approval, target
            )
        except RemitError as exc:
            if exc.code in ENDED_CODES:
                # The caller's task is over: so are the connections of its leases.
                await self.leased.drop_task(caller.task_id, f"task refused ({exc.code})")
            return refused_by_error(exc)
        except Exception as exc:
            # Remit could not decide: fail closed, and say nothing more than that.
            logger.error("call %s: Remit raised %s; refused", tool, type(exc).__name__)
            return refused_by_error(RemitError("Remit could not decide", reason="internal"))
        decision = verdict.decision
        if not decision.allowed:
            return refused_by_decision(decision, waiting_for=verdict.approval_id)
        if verdict.pin_refusal is not None:
            return refused_by_error(verdict.pin_refusal)
        if verdict.credential_refusal is not None:
            refusal = verdict.credential_refusal
            if refusal.code in ENDED_CODES:
                refs = [o.ref for o in decision.obligations]
                await self.leased.drop_leases(refs, f"credential refused ({refusal.code})")
            return refused_by_error(refusal, decision=decision)
        if upstream is None or parts is None:
            return gateway_error(
                NotFound(f"no upstream serves {name}", reason="unknown_upstream"), decision=decision
            )
        if route_error is not None:
            return gateway_error(route_error, decision=decision)
        if definition is None:
            return gateway_error(
                NotFound(f"upstream {upstream.name} has no tool {parts[1]}", reason="unknown_tool"),
                decision=decision,
            )
        try:
            if verdict.injections:
                async with self.leased.use(
                    upstream, caller.task_id, verdict.injections, one_shot=verdict.single_use
                ) as leased:
                    result = await leased.call_tool(parts[1], arguments)
            else:
                result = await upstream.call_tool(parts[1], arguments)
        except RemitError as exc:
            return gateway_error(exc, decision=decision)
        return self.redactor.model(result)

    def _decide(
        self,
        caller: Caller,
        tool: str,
        arguments: Mapping[str, Any],
        definition: Mapping[str, Any] | None,
        approval: str | None,
        target: UpstreamConfig | None = None,
    ) -> _Verdict:
        """In a worker thread: Remit's decision, then (if allowed) the definition pin, then
        (if the call can be forwarded to ``target``) the credentials its obligations name."""
        key: tuple[str, str, str] | None = None
        if approval is None and caller.task_id in self._waiting_tasks:
            try:
                key = (caller.task_id, tool, digest(dict(arguments), ARGUMENT_LIMITS))
            except RemitError:
                key = None  # Remit refuses such arguments itself
            if key is not None:
                with self._approvals_lock:
                    approval = self._approvals.get(key)
        decision = caller.authorize(tool, arguments, approval)
        if key is None and decision.outcome is Outcome.APPROVAL_REQUIRED:
            key = (caller.task_id, tool, decision.args_digest)
        waiting = self._remember(key, decision, approval) if key is not None else None
        if decision.allowed and definition is not None:
            try:
                self.view.check_tool_definition(tool, definition)
            except Denied as exc:
                return _Verdict(decision, exc)
        if decision.allowed and decision.obligations:
            try:
                obligations = credential_obligations(decision.obligations)
                injections = (
                    fetch_injections(self.view, target, obligations, self.redactor)
                    if target is not None and obligations
                    else ()
                )
                # A lease already spent by handing it out serves this one call only.
                single_use = not all(self.view.lease_usable(i.lease_id) for i in injections)
            except RemitError as exc:
                return _Verdict(decision, credential_refusal=exc)
            except Exception as exc:  # fail closed, and say nothing more than that
                logger.error("call %s: credential failed (%s)", tool, type(exc).__name__)
                refusal = ProviderUnavailable(
                    "the credential could not be obtained", reason="internal"
                )
                return _Verdict(decision, credential_refusal=refusal)
            return _Verdict(
                decision, approval_id=waiting, injections=injections, single_use=single_use
            )
        return _Verdict(decision, approval_id=waiting)

    def _remember(
        self, key: tuple[str, str, str], decision: Decision, presented: str | None
    ) -> str | None:
        """Keep the approval request an identical call waits for; forget a spent one."""
        with self._approvals_lock:
            try:
                if decision.outcome is Outcome.APPROVAL_REQUIRED and decision.approval_id:
                    if len(self._approvals) >= MAX_REMEMBERED_APPROVALS:
                        self._approvals.pop(next(iter(self._approvals)))
                    self._approvals[key] = decision.approval_id
                    return decision.approval_id
                if decision.allowed or decision.reasons[:1] in _SPENT_APPROVAL_REASONS:
                    self._approvals.pop(key, None)
                    return None
                if presented is not None and decision.reasons[:1] == ("approval_pending",):
                    return presented
                return None
            finally:
                # Only the tasks with a call waiting for an approval pay for the lookup.
                self._waiting_tasks = frozenset(task for task, _, _ in self._approvals)


async def discover_tools(config: GatewayConfig, *, stderr: TextIO | None = None) -> dict[str, Tool]:
    """Every upstream's tools as the servers describe them, by catalog name (``server/tool``).

    For an operator admitting definitions (``tool_definition(tool)`` is what Remit pins)
    and for proposing catalog entries. An upstream that cannot be reached raises.
    """
    redactor = Redactor(config.secrets())
    found: dict[str, Tool] = {}
    async with anyio.create_task_group() as group:
        for upstream_config in config.upstreams:
            upstream = Upstream(upstream_config, redactor, stderr=stderr)
            upstream.bind(group)
            try:
                tools = await upstream.list_tools()
            finally:
                await upstream.aclose()
            found.update({f"{upstream.name}/{name}": tool for name, tool in tools.items()})
    return found


async def _connect_quietly(upstream: Upstream) -> None:
    try:
        await upstream.client()
    except RemitError as exc:
        logger.warning("upstream %s: not available at start (%s)", upstream.name, exc.reason)


def _present(tool: Tool, name: str, spec: ToolSpec) -> Tool:
    """The upstream's tool under its wire name, with the catalog's privilege class in front
    of its description and in its annotations (the catalog, not the server, is the truth)."""
    namespace, _, upstream_name = name.partition("/")
    description = f"[{spec.privilege.value}] {tool.description or spec.description}".rstrip()
    hints = tool.annotations or ToolAnnotations()
    annotations = hints.model_copy(
        update={
            "read_only_hint": spec.privilege is Privilege.READ,
            "open_world_hint": spec.privilege is Privilege.ACT,
        }
    )
    meta = dict(tool.meta or {})
    meta.update({"remit/tool": name, "remit/privilege": spec.privilege.value})
    return tool.model_copy(
        update={
            "name": wire_name(namespace, upstream_name),
            "description": description,
            "annotations": annotations,
            "meta": meta,
        }
    )
