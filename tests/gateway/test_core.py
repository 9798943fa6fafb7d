"""The gateway in-process (no agent-facing transport): fail closed when Remit cannot decide."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from remit.agent import AgentSession
from remit.errors import AuditUnavailable, StoreUnavailable
from remit.gateway.config import gateway_config_from_data
from remit.gateway.core import Gateway, LocalRemitView
from remit.gateway.redact import Redactor
from remit.gateway.sidecar import SidecarCaller
from remit.gateway.upstream import Upstream, UpstreamUnavailable
from remit.service import AdminIdentity

from .conftest import INTENT, PRINCIPAL, World, free_port, http_upstream_process
from .test_sidecar import remit_data, text

pytestmark = pytest.mark.anyio


def caller(world: World) -> SidecarCaller:
    agent = AgentSession.attest(world.remit, world.join_token())
    return SidecarCaller(agent.open_task(principal=PRINCIPAL, intent=INTENT))


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("audit", AuditUnavailable("the audit log cannot be written", reason="write_failed")),
        ("store", StoreUnavailable("the database is unavailable", reason="down")),
    ],
)
async def test_nothing_is_forwarded_when_remit_cannot_decide(
    world: World, monkeypatch: pytest.MonkeyPatch, target: str, error: Exception
) -> None:
    me = caller(world)
    gateway = Gateway(world.config(), LocalRemitView(world.remit))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    with anyio.fail_after(60):
        async with gateway.running():
            desk = gateway.upstreams["desk"]
            with monkeypatch.context() as patch:
                if target == "audit":
                    patch.setattr(world.remit.audit, "append", broken)
                else:
                    patch.setattr(world.remit.state, "record_call", broken)
                # Were it forwarded, the upstream would crash and the connection drop.
                refused = await gateway.call_tool(me, "desk__crash", {})
            code = "audit_unavailable" if target == "audit" else "store_unavailable"
            assert remit_data(refused) == {
                "code": code,
                "reason": getattr(error, "reason", ""),
                "forwarded": False,
            }
            assert text(refused).startswith(f"remit refused ({code}): ")
            assert desk.connected and desk.connects == 1
            # Once Remit can decide again, calls go through.
            again = await gateway.call_tool(me, "desk__echo", {"text": "back"})
            assert text(again) == "back"


async def test_an_upstream_that_cannot_start_leaves_the_others_serving(world: World) -> None:
    world.config_data["upstreams"][0]["command"] = str(world.dir / "no-such-server")
    me = caller(world)
    gateway = Gateway(world.config(), LocalRemitView(world.remit))
    with anyio.fail_after(60):
        async with gateway.running():
            down = await gateway.call_tool(me, "desk__echo", {"text": "x"})
            data = remit_data(down)
            assert data["code"] == "upstream_unavailable"
            assert data["decision"]["outcome"] == "allow"
            now = await gateway.call_tool(me, "time__get_current_time", {"timezone": "UTC"})
            assert not now.is_error
            # Retried with a growing delay, not on every call.
            again = remit_data(await gateway.call_tool(me, "desk__echo", {"text": "x"}))
            assert again["code"] == "upstream_unavailable"
            assert again["reason"] in ("backoff", "start_failed")
            names = {t.name for t in await gateway.list_tools(me)}
            assert "time__get_current_time" in names and "desk__echo" not in names


async def test_an_approval_then_the_same_call_goes_through_once(world: World) -> None:
    me = caller(world)
    gateway = Gateway(world.config(), LocalRemitView(world.remit))
    pay = {"to": "alice@example.com", "amount": 5}
    with anyio.fail_after(60):
        async with gateway.running():
            first = remit_data(await gateway.call_tool(me, "desk__wire_money", pay))
            assert first["code"] == "approval_required"
            approval_id = first["approval_id"]
            assert approval_id.startswith("apr_")
            waiting = await gateway.call_tool(me, "desk__wire_money", pay)
            assert remit_data(waiting)["approval_id"] == approval_id
            assert f"remit approvals approve {approval_id}" in text(waiting)

            who = AdminIdentity("adm_alice", "alice@acme.example", frozenset({"approver"}))
            world.remit.approve(approval_id, by=who, reason="checked")
            paid = await gateway.call_tool(me, "desk__wire_money", dict(reversed(pay.items())))
            assert not paid.is_error and text(paid) == "wired 5 to alice@example.com"

            # The approval was for that one call: the next needs a new one.
            again = remit_data(await gateway.call_tool(me, "desk__wire_money", pay))
            assert again["code"] == "approval_required" and again["approval_id"] != approval_id


async def test_an_http_upstream_that_goes_away_fails_fast_and_is_reconnected() -> None:
    port = free_port()
    config = gateway_config_from_data(
        {"upstreams": [{"name": "web", "url": f"http://127.0.0.1:{port}/mcp"}]}, {}
    )
    upstream = Upstream(config.upstreams[0], Redactor([]))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            upstream.bind(group)
            with http_upstream_process(port):
                assert text(await upstream.call_tool("echo", {"text": "a"})) == "a"
            started = time.monotonic()
            with pytest.raises(UpstreamUnavailable):
                await upstream.call_tool("echo", {"text": "b"})
            assert time.monotonic() - started < 5  # not the 30 s call timeout
            with http_upstream_process(port):
                deadline = time.monotonic() + 20
                while True:  # after the backoff delay, the next call reconnects
                    try:
                        back = await upstream.call_tool("echo", {"text": "c"})
                        break
                    except UpstreamUnavailable:
                        if time.monotonic() > deadline:
                            raise
                        await anyio.sleep(0.25)
                assert text(back) == "c"
            await upstream.aclose()
            group.cancel_scope.cancel()
