"""The agent-facing MCP server, over stdio (the sidecar) or streamable HTTP.

Both transports run the same two handlers over ``Gateway``; they differ only in
how the caller is known. On stdio the caller is the sidecar's own task. Over
HTTP, ``RemitMcpAuth`` has authenticated the request and put its caller in the
request state before the SDK dispatches it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams
from starlette.applications import Starlette
from starlette.routing import Route

from remit import __version__
from remit.errors import InvalidToken, RemitError
from remit.gateway.core import Caller, Gateway
from remit.gateway.http_auth import CALLER_KEY, REMIT_REFUSED, HttpCaller, RemitMcpAuth
from remit.gateway.results import refused_by_error
from remit.gateway.stdio import stdio_transport
from remit.service import Remit

logger = logging.getLogger("remit.gateway")

MCP_PATH = "/mcp"
APPROVAL_META = "remit/approval"  # tools/call _meta: the id of an approved request to present
INSTRUCTIONS = (
    "Tools are named <server>__<tool>. Remit decides every call against this task's "
    "mandate and policy; a refusal is an error result that names its code and reasons."
)

CallerResolver = Callable[[ServerRequestContext[Any, Any]], Caller]


def build_server(gateway: Gateway, resolve: CallerResolver) -> Server[Any]:
    """The lowlevel MCP server: ``tools/list`` and ``tools/call``, nothing else."""

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        try:
            tools = await gateway.list_tools(resolve(ctx))
        except RemitError as exc:
            raise MCPError(
                code=REMIT_REFUSED,
                message=f"remit refused ({exc.code}): {exc.message} [{exc.reason}]",
                data={"code": exc.code, "reason": exc.reason},
            ) from None
        # Per caller: never a shared cache entry, never stale.
        return ListToolsResult(tools=tools, ttl_ms=0, cache_scope="private")

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult:
        try:
            caller = resolve(ctx)
        except RemitError as exc:
            return refused_by_error(exc)
        approval = (params.meta or {}).get(APPROVAL_META)
        return await gateway.call_tool(
            caller,
            params.name,
            params.arguments or {},
            approval=approval if isinstance(approval, str) else None,
        )

    return Server(
        "remit-gateway",
        version=__version__,
        instructions=INSTRUCTIONS,
        get_tool_input_schema=gateway.input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


# ---------------------------------------------------------------------- stdio sidecar


async def serve_stdio(gateway: Gateway, caller: Caller) -> None:
    """Serve one agent on stdin/stdout until it closes them."""
    server = build_server(gateway, lambda _ctx: caller)
    async with gateway.running(), stdio_transport() as (read, write):
        await server.run(read, write, server.create_initialization_options())


# ---------------------------------------------------------------------- streamable HTTP


def _http_caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    state = getattr(ctx.request, "state", None)
    caller = getattr(state, CALLER_KEY, None) if state is not None else None
    if not isinstance(caller, HttpCaller):  # never so behind RemitMcpAuth: fail closed anyway
        raise InvalidToken("the request was not authenticated", reason="missing_token")
    return caller


def security_settings(host: str, allowed_hosts: tuple[str, ...]) -> TransportSecuritySettings:
    """DNS-rebinding protection: loopback names, the bound host, and the configured names."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 - compared, not bound
        bracketed = f"[{host}]" if ":" in host else host
        hosts += [bracketed, f"{bracketed}:*"]
    hosts += list(allowed_hosts)
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_http_app(
    gateway: Gateway, remit: Remit, *, host: str = "127.0.0.1", path: str = MCP_PATH
) -> Starlette:
    """The gateway as an ASGI app: ``POST <path>`` (streamable HTTP, JSON responses)."""
    server = build_server(gateway, _http_caller)
    security = security_settings(host, gateway.config.allowed_hosts)
    manager = StreamableHTTPSessionManager(
        app=server, stateless=True, json_response=True, security_settings=security
    )
    public_url = gateway.config.public_url or remit.settings.public_url
    endpoint = RemitMcpAuth(
        StreamableHTTPASGIApp(manager), remit, public_url=public_url, security=security
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with gateway.running(), manager.run():
            yield

    return Starlette(routes=[Route(path, endpoint=endpoint)], lifespan=lifespan)


def serve_http(gateway: Gateway, remit: Remit, *, host: str, port: int) -> None:
    """Serve the HTTP gateway in the foreground until interrupted."""
    config = uvicorn.Config(
        build_http_app(gateway, remit, host=host),
        host=host,
        port=port,
        workers=1,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()


@contextlib.contextmanager
def running_http_gateway(
    gateway: Gateway, remit: Remit, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Serve the HTTP gateway from a daemon thread; yield its MCP URL
    (``http://127.0.0.1:PORT/mcp``). For tests, benchmarks and demos."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = int(sock.getsockname()[1])
    config = uvicorn.Config(
        build_http_app(gateway, remit, host=host),
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="remit-gateway-http", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP gateway did not start")
            time.sleep(0.01)
        netloc = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        yield f"http://{netloc}{MCP_PATH}"
    finally:
        server.should_exit = True
        thread.join(30.0)
        sock.close()
