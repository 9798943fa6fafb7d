"""Who is calling the HTTP gateway: the task token and a per-request proof, checked at the
transport, before the MCP layer sees the request.

Every POST to the MCP endpoint carries ``Authorization: Bearer <task token>`` and
``Remit-Proof: <proof>``, a fresh proof signed by the instance key and bound to
``POST`` and the endpoint's URL (``htm``/``htu``):

* ``tools/call``: over the catalog tool (``<server>/<tool>``) and the digest of
  the call's arguments. Its signature is checked here, so a missing or forged
  proof is refused with 401; the pipeline then checks it again, consumes it
  (single use) and decides.
* any other request (``tools/list``, ``server/discover``, ``initialize``, ...):
  over ``remit:mcp/<method>`` and the digest of ``{}``, checked and consumed here.

A refusal is HTTP 401 (``WWW-Authenticate: Bearer error="invalid_token"``) with
a JSON-RPC error naming the stable code, and one audit record. Only POST is
served (405 otherwise): the gateway never pushes messages to the agent.

The checks are the service's own (``Remit.check_task_request``, pipeline steps
1 and 2); this module is the transport part.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio.to_thread
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remit.canonical import check_json
from remit.core.pipeline import ARGUMENT_LIMITS, Decision
from remit.core.tokens import TaskClaims
from remit.errors import (
    InvalidProof,
    InvalidRequest,
    InvalidToken,
    RemitError,
)
from remit.gateway.names import PROOF_HEADER, catalog_name, mcp_op
from remit.service import Remit

logger = logging.getLogger("remit.gateway")

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
REMIT_REFUSED: Final = -32030  # JSON-RPC error code (implementation-defined band)
CALLER_KEY: Final = "remit_caller"
_AUTH_ERRORS = (InvalidToken, InvalidProof)


@dataclass(frozen=True, slots=True)
class HttpCaller:
    """One authenticated HTTP request's caller; the pipeline still decides each call."""

    remit: Remit
    claims: TaskClaims
    token: str
    proof: str
    binding: tuple[str, str]

    @property
    def task_id(self) -> str:
        return self.claims.task_id

    def mandate_tools(self) -> frozenset[str]:
        return self.remit.get_task(self.claims.task_id).mandate.tools

    def authorize(
        self, tool: str, arguments: Mapping[str, Any], approval: str | None = None
    ) -> Decision:
        return self.remit.authorize(
            task_token=self.token,
            proof=self.proof,
            tool=tool,
            arguments=arguments,
            approval=approval,
            binding=self.binding,
        )


class Authenticator:
    """Checks a task token and proof through the service (pipeline steps 1 and 2)."""

    def __init__(self, remit: Remit) -> None:
        self.remit = remit

    def verify_request(
        self, token: str, proof: str, method: str, binding: tuple[str, str]
    ) -> TaskClaims:
        """A non-call request: token, open task, and a single-use proof over
        ``remit:mcp/<method>`` and ``{}``."""
        return self.remit.check_task_request(
            task_token=token, proof=proof, op=mcp_op(method), body={}, binding=binding
        )

    def precheck_call(
        self,
        token: str,
        proof: str,
        tool: str,
        arguments: object,
        binding: tuple[str, str],
    ) -> TaskClaims:
        """A ``tools/call``: the token, the open task and the proof's signature, binding,
        tool and argument digest. Not consumed here: ``authorize`` checks it again and
        takes it."""
        if not isinstance(arguments, Mapping):
            raise InvalidRequest("arguments must be an object", reason="bad_arguments")
        check_json(arguments, ARGUMENT_LIMITS, "arguments")
        return self.remit.check_task_request(
            task_token=token, proof=proof, op=tool, body=arguments, binding=binding, consume=False
        )

    def rejected(self, method: str, exc: RemitError) -> None:
        """The one audit record of a refused request."""
        self.remit.audit.append(
            "request.rejected",
            {
                "operation": "gateway.mcp",
                "method": method[:100],
                "error": exc.code,
                "reason": exc.reason,
            },
        )


class RemitMcpAuth:
    """ASGI middleware in front of the SDK's streamable-HTTP endpoint."""

    def __init__(
        self,
        app: ASGIApp,
        remit: Remit,
        *,
        public_url: str = "",
        security: TransportSecuritySettings | None = None,
    ) -> None:
        self.app = app
        self.auth = Authenticator(remit)
        self.public_url = public_url.rstrip("/")
        self.security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.method != "POST":
            await _plain(send, 405, b"", [(b"allow", b"POST")])
            return
        # Host and Origin first (DNS rebinding): the URL a proof must name comes from Host.
        rejection = await self.security.validate_request(request, is_post=True)
        if rejection is not None:
            await rejection(scope, receive, send)
            return
        token = _bearer(request.headers.get("authorization"))
        proof = request.headers.get(PROOF_HEADER.lower())
        # Credentials first: an anonymous request is refused before its body is read.
        if token is None:
            await self._refuse(
                send,
                None,
                "",
                InvalidToken("a bearer task token is required", reason="missing_token"),
            )
            return
        if not proof:
            await self._refuse(
                send,
                None,
                "",
                InvalidProof(f"a {PROOF_HEADER} header is required", reason="missing_proof"),
            )
            return
        body = await _read_body(receive, MAX_BODY_BYTES)
        if body is None:
            await _plain(send, 413, b"request body too large", [])
            return
        message = _json_rpc(body)
        if message is None:
            await _jsonrpc_error(
                send, 400, None, -32700, "Parse error: one JSON-RPC message expected"
            )
            return
        method = message["method"]
        request_id = message.get("id")
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        binding = ("POST", self._url(request))
        try:
            if method == "tools/call":
                name = params.get("name")
                claims = await anyio.to_thread.run_sync(
                    self.auth.precheck_call,
                    token,
                    proof,
                    catalog_name(name) if isinstance(name, str) else "",
                    params.get("arguments") or {},
                    binding,
                )
            else:
                claims = await anyio.to_thread.run_sync(
                    self.auth.verify_request, token, proof, method, binding
                )
        except RemitError as exc:
            await self._refuse(send, request_id, method, exc)
            return
        state = scope.setdefault("state", {})
        state[CALLER_KEY] = HttpCaller(self.auth.remit, claims, token, proof, binding)
        await self.app(scope, _replay(body, receive), send)

    def _url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url + request.url.path
        url = request.url
        return f"{url.scheme}://{url.netloc}{url.path}"

    async def _refuse(self, send: Send, request_id: Any, method: str, exc: RemitError) -> None:
        if exc.code not in ("audit_unavailable", "store_unavailable"):
            with contextlib.suppress(RemitError):  # the refusal stands either way
                await anyio.to_thread.run_sync(self.auth.rejected, method, exc)
        if isinstance(exc, _AUTH_ERRORS):
            status, headers = 401, [(b"www-authenticate", b'Bearer error="invalid_token"')]
        elif exc.code in ("audit_unavailable", "store_unavailable"):
            status, headers = 503, [(b"retry-after", b"1")]
        else:
            status, headers = 400, []
        text = f"remit refused ({exc.code}): {exc.message} [{exc.reason}]"
        await _jsonrpc_error(
            send,
            status,
            request_id,
            REMIT_REFUSED,
            text,
            {"code": exc.code, "reason": exc.reason},
            headers,
        )


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _json_rpc(body: bytes) -> dict[str, Any] | None:
    """One JSON-RPC request or notification (batches are not part of MCP)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return None
    if len(message["method"]) > 200:
        return None
    return message


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _plain(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _jsonrpc_error(
    send: Send,
    status: int,
    request_id: Any,
    code: int,
    message: str,
    data: Mapping[str, Any] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = dict(data)
    if not isinstance(request_id, str | int) or isinstance(request_id, bool):
        request_id = None
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
