"""Connections to the upstream MCP servers: started, listed, called, restarted.

Each upstream has one MCP client connection, held open by a runner task in
the gateway's task group (an MCP client must be entered and left in the same
task). A call that outlives ``timeout_seconds`` fails with
``upstream_timeout``; a connection that closes (the stdio server crashed, the
HTTP server went away) fails the call with ``upstream_unavailable`` and is
restarted on the next call, with a growing delay between failed attempts. One
upstream failing never affects the others.

Credentials from the configuration go into the child's environment (stdio)
or the request headers (HTTP) and nowhere else. A stdio server's stderr is
passed on with every credential redacted. A connection started for a leased
credential (``remit.gateway.leased``) is an ``Upstream`` of its own, on a
config with the lease's env or headers merged in.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any, Final, TextIO

import anyio
import httpx2
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, CallToolResult, Tool

from remit.errors import RemitError
from remit.gateway.config import HttpTarget, StdioTarget, UpstreamConfig
from remit.gateway.redact import Redactor

logger = logging.getLogger("remit.gateway")

# Delays before reconnecting after consecutive failures: the first restart is at once.
BACKOFF_SECONDS: Final = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MAX_LIST_PAGES: Final = 100
_LIST_CHANGED: Final = "notifications/tools/list_changed"


class UpstreamTimeout(RemitError):
    code = "upstream_timeout"


class UpstreamUnavailable(RemitError):
    code = "upstream_unavailable"


class UpstreamFailed(RemitError):
    """The upstream answered with a protocol error (not a tool error result)."""

    code = "upstream_error"


def tool_definition(tool: Tool) -> dict[str, Any]:
    """What Remit pins of an upstream tool: its name, description and input schema."""
    return {
        "name": tool.name,
        "description": tool.description or "",
        "input_schema": dict(tool.input_schema or {}),
    }


class _StderrPump:
    """A pipe for a child's stderr, copied line by line to ``sink`` with credentials redacted."""

    def __init__(self, name: str, redactor: Redactor, sink: TextIO) -> None:
        read_fd, write_fd = os.pipe()
        self.writer: TextIO = os.fdopen(write_fd, "w", encoding="utf-8", errors="replace")
        self._reader = os.fdopen(read_fd, "r", encoding="utf-8", errors="replace")
        self._prefix = f"[upstream {name}] "
        self._redactor = redactor
        self._sink = sink
        self._thread = threading.Thread(
            target=self._pump, name=f"remit-gateway-stderr-{name}", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        try:
            for line in self._reader:
                self._sink.write(self._prefix + self._redactor.text(line.rstrip("\n")) + "\n")
                self._sink.flush()
        except (OSError, ValueError):
            pass
        finally:
            self._reader.close()

    def close(self) -> None:
        # The reader ends once every child holding the write end has exited too.
        self.writer.close()


class Upstream:
    """One upstream MCP server, under its namespace."""

    def __init__(
        self,
        config: UpstreamConfig,
        redactor: Redactor,
        *,
        stderr: TextIO | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        label: str | None = None,
        list_on_connect: bool = True,
    ) -> None:
        self.config = config
        self.name = config.name
        self.label = label or config.name  # in stderr prefixes and log lines
        self._list_on_connect = list_on_connect
        self._done: anyio.Event | None = None
        self._stopped = False
        self._redactor = redactor
        self._monotonic = monotonic
        self._stderr = stderr if stderr is not None else sys.stderr
        self._pump: _StderrPump | None = None
        self._task_group: TaskGroup | None = None
        self._client: Client | None = None
        self._stop: anyio.Event | None = None
        self._lock = anyio.Lock()
        self._tools: dict[str, Tool] | None = None
        self._listed_at = 0.0
        self._failures = 0
        self._next_attempt = 0.0
        self.connects = 0

    def __repr__(self) -> str:
        return f"Upstream({self.label!r})"

    @property
    def timeout(self) -> float:
        return self.config.timeout_seconds

    @property
    def connected(self) -> bool:
        return self._client is not None

    # ------------------------------------------------------------------ lifecycle
    def bind(self, task_group: TaskGroup) -> None:
        """The task group the connection runs in (the gateway's, for its whole life)."""
        self._task_group = task_group

    async def aclose(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._client = None
        if self._pump is not None:
            self._pump.close()
            self._pump = None

    async def stop(self, timeout: float = 10.0) -> None:
        """Close the connection and wait (at most ``timeout``) until it is gone: for a
        stdio server, until the process has exited."""
        done = self._done
        await self.aclose()
        self._stopped = True  # never restarted
        if done is not None:
            with anyio.move_on_after(timeout):
                await done.wait()

    def _mark_down(self, why: str) -> None:
        """Drop the connection; the next call reconnects (after the backoff delay)."""
        if self._client is None:
            return
        logger.warning("upstream %s: connection lost (%s)", self.label, why)
        self._client = None
        self._tools = None
        if self._stop is not None:
            self._stop.set()
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        delay = BACKOFF_SECONDS[min(self._failures, len(BACKOFF_SECONDS) - 1)]
        self._failures += 1
        self._next_attempt = self._monotonic() + delay

    async def client(self) -> Client:
        """The live connection, (re)connecting if there is none and the backoff allows."""
        client = self._client
        if client is not None:
            return client
        async with self._lock:
            if self._client is not None:
                return self._client
            if self._stopped:
                raise UpstreamUnavailable(f"upstream {self.name} was stopped", reason="stopped")
            wait = self._next_attempt - self._monotonic()
            if wait > 0:
                raise UpstreamUnavailable(
                    f"upstream {self.name} is unavailable; next restart in {wait:.1f} s",
                    reason="backoff",
                )
            if self._task_group is None:
                raise UpstreamUnavailable(
                    f"upstream {self.name} is not running", reason="not_started"
                )
            try:
                await self._task_group.start(self._run)
            except RemitError:
                self._schedule_retry()
                raise
            if self._client is None:  # lost again at once
                raise UpstreamUnavailable(
                    f"upstream {self.name} is unavailable", reason="connection_lost"
                )
            if self.connects > 1:
                logger.info("upstream %s: reconnected", self.label)
            return self._client

    async def _run(self, *, task_status: TaskStatus[None]) -> None:
        """Hold one connection open until it is stopped or lost.

        A failure before the connection is up is raised to ``client()`` (anyio
        raises it from ``TaskGroup.start``); a failure after that is logged, and
        the next call reconnects after the backoff delay.
        """
        stop = anyio.Event()
        done = self._done = anyio.Event()
        started = False
        try:
            async with AsyncExitStack() as stack:
                # One scope over the connection's whole life, so its deadline bounds the
                # connect and the first listing and can then be lifted.
                start_timeout = self.config.start_timeout_seconds
                scope = stack.enter_context(
                    anyio.CancelScope(deadline=anyio.current_time() + start_timeout)
                )
                transport = await self._transport(stack)
                client = await stack.enter_async_context(
                    Client(
                        transport,
                        mode=self.config.protocol,
                        cache=None,
                        message_handler=self._on_message,
                    )
                )
                if self._list_on_connect:
                    self._set_tools(await _list_all(client))
                scope.deadline = math.inf
                self._client, self._stop = client, stop
                self.connects += 1
                started = True
                task_status.started()
                await stop.wait()
            if not started:
                raise TimeoutError
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            if not started:
                logger.warning("upstream %s: start failed (%s)", self.label, type(exc).__name__)
                raise UpstreamUnavailable(
                    f"upstream {self.name} could not be started"
                    + (" (timed out)" if isinstance(exc, TimeoutError) else ""),
                    reason="start_failed",
                ) from None
            logger.warning("upstream %s: connection ended (%s)", self.label, type(exc).__name__)
            if self._stop is stop and not stop.is_set():
                self._tools = None
                self._schedule_retry()
        finally:
            if self._stop is stop:
                self._client = None
            done.set()

    async def _transport(self, stack: AsyncExitStack) -> Any:
        target = self.config.target
        if isinstance(target, StdioTarget):
            if self._pump is None:
                self._pump = _StderrPump(self.label, self._redactor, self._stderr)
            env = dict(target.public_env)
            env.update({k: v.reveal() for k, v in target.env.items()})
            params = StdioServerParameters(
                command=target.command,
                args=list(target.args),
                env=env,
                cwd=target.cwd,
            )
            return stdio_client(params, errlog=self._pump.writer)
        assert isinstance(target, HttpTarget)
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers={k: v.reveal() for k, v in target.headers.items()},
                timeout=httpx2.Timeout(self.timeout, read=max(self.timeout, 30.0)),
                follow_redirects=False,
            )
        )
        return streamable_http_client(target.url, http_client=http)

    async def _on_message(self, message: IncomingMessage) -> None:
        if getattr(message, "method", None) == _LIST_CHANGED:
            self._tools = None

    # ------------------------------------------------------------------ tools
    def _set_tools(self, tools: dict[str, Tool]) -> None:
        self._tools = tools
        self._listed_at = self._monotonic()

    async def list_tools(self, *, refresh: bool = False) -> dict[str, Tool]:
        """The upstream's tools by upstream name (every page): fresh if ``refresh`` or if
        the last listing is older than ``relist_seconds``."""
        client = await self.client()
        tools = self._tools
        stale = self._monotonic() - self._listed_at >= self.config.relist_seconds
        if tools is not None and not refresh and not stale:
            return tools
        try:
            with anyio.fail_after(self.timeout):
                tools = await _list_all(client)
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream {self.name} did not list its tools within {self.timeout:g} s",
                reason="timeout",
            ) from None
        except MCPError as exc:
            raise self._mcp_error(exc) from None
        except Exception as exc:
            raise self._transport_error(exc) from None
        self._set_tools(tools)
        return tools

    def cached_tool(self, name: str) -> Tool | None:
        return (self._tools or {}).get(name)

    async def tool(self, name: str) -> Tool | None:
        """One tool as the upstream describes it now (listing again if it is not known)."""
        tools = await self.list_tools()
        if name not in tools:
            tools = await self.list_tools(refresh=True)
        return tools.get(name)

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> CallToolResult:
        client = await self.client()
        try:
            with anyio.fail_after(self.timeout):
                result = await client.call_tool(name, dict(arguments))
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream {self.name} did not answer within {self.timeout:g} s",
                reason="timeout",
            ) from None
        except MCPError as exc:
            raise self._mcp_error(exc) from None
        except Exception as exc:
            raise self._transport_error(exc) from None
        if self._failures:
            self._failures = 0
        return result

    def _transport_error(self, exc: Exception) -> RemitError:
        """Anything else the client raised: a broken connection, or an answer it refused
        (e.g. a result that does not match the tool's output schema). Never its text."""
        if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError | OSError):
            self._mark_down(type(exc).__name__)
            return UpstreamUnavailable(
                f"upstream {self.name} is unavailable", reason="connection_lost"
            )
        logger.warning("upstream %s: bad answer (%s)", self.label, type(exc).__name__)
        return UpstreamFailed(
            f"upstream {self.name} sent an answer the gateway could not accept",
            reason="bad_answer",
        )

    def _mcp_error(self, exc: MCPError) -> RemitError:
        if exc.error.code == CONNECTION_CLOSED:
            self._mark_down("connection closed")
            return UpstreamUnavailable(
                f"upstream {self.name} is unavailable (its connection closed); "
                "it is restarted on the next call",
                reason="connection_lost",
            )
        message = self._redactor.text(str(exc.error.message))[:500]
        return UpstreamFailed(
            f"upstream {self.name} refused the request: {message}",
            reason=f"mcp_{exc.error.code}",
        )


async def _list_all(client: Client) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            tools.setdefault(tool.name, tool)
        cursor = page.next_cursor
        if cursor is None or cursor in seen:
            break
        seen.add(cursor)
    return tools
