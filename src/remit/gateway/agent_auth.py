"""The agent side of the HTTP gateway: sign every MCP request with the instance key.

Use it as the ``auth`` of the ``httpx2.AsyncClient`` an MCP client runs on::

    http = httpx2.AsyncClient(auth=RemitProofAuth(task))
    async with Client(streamable_http_client(url, http_client=http)) as mcp:
        await mcp.call_tool("tickets__read_ticket", {"ticket_id": "4711"})

Each request gets ``Authorization: Bearer <task token>`` and a fresh
``Remit-Proof`` bound to its method and URL: for ``tools/call`` over the catalog
tool (``tickets/read_ticket``) and the canonical digest of the arguments; for
any other MCP request over ``remit:mcp/<method>`` and the digest of ``{}``.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import httpx2

from remit.agent import TaskSession
from remit.gateway.names import PROOF_HEADER, catalog_name, mcp_op


def what_to_sign(body: bytes, http_method: str) -> tuple[str, Any]:
    """The operation and the value whose digest a request's proof covers."""
    try:
        message = json.loads(body) if body else None
    except (ValueError, RecursionError):
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return mcp_op(http_method), {}
    method: str = message["method"]
    params = message.get("params")
    if method == "tools/call" and isinstance(params, dict):
        name = params.get("name")
        return catalog_name(name if isinstance(name, str) else ""), params.get("arguments") or {}
    return mcp_op(method), {}


class RemitProofAuth(httpx2.Auth):
    """Adds the task token and a per-request proof to every request of an MCP client."""

    requires_request_body = True

    def __init__(self, task: TaskSession) -> None:
        self._task = task

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        op, value = what_to_sign(request.content, request.method)
        url = request.url.copy_with(query=None, fragment=None)
        token = self._task.token
        proof = self._task.agent.sign_proof(token, op, value, binding=(request.method, str(url)))
        request.headers["Authorization"] = f"Bearer {token}"
        request.headers[PROOF_HEADER] = proof
        yield request
