"""Upstream credentials from leases (issue 6, the gateway side), end to end.

Real parts throughout: the SDK's MCP client, the gateway (stdio sidecar subprocess, or the
HTTP gateway with Remit embedded), real upstream MCP servers (``upstream_server.py`` over
stdio and streamable HTTP), Remit deciding with Cedar, leasing from sealed secrets and a
signed-token provider, and writing its audit log.

What is shown: the upstream receives the leased env/header value; a call runs on a
process (env) or session (headers) of its own lease, so another task gets another process
and never the other task's header; a lease header replaces a configured one; ending the
task refuses the next call and stops the lease's process; any failure to get the
credential refuses the call without forwarding it; and no canary value appears in any
MCP result, error, log line, upstream stderr, audit record or data-dir file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, Tool

from remit.agent import AgentSession, TaskSession
from remit.config import Settings
from remit.core.pipeline import Obligation
from remit.core.secrets import Secret
from remit.errors import ProviderUnavailable, TokenRevoked
from remit.gateway.agent_auth import RemitProofAuth
from remit.gateway.config import gateway_config_from_data
from remit.gateway.core import Gateway, LocalRemitView, RemoteRemitView
from remit.gateway.leased import fetch_injections, leased_config
from remit.gateway.redact import REDACTED, LogFilter, Redactor
from remit.gateway.server import running_http_gateway
from remit.gateway.upstream import tool_definition
from remit.providers.base import Injection
from remit.runtime import build_remit

from .conftest import (
    ALL_TOOLS,
    CANARY,
    CATALOG,
    PRINCIPAL,
    UPSTREAM,
    World,
    free_port,
    http_upstream_process,
    sidecar_client,
)
from .test_sidecar import remit_data, text

pytestmark = pytest.mark.anyio

# CANARY (conftest) is the *configured* credential; these are the leased ones.
ENV_CANARY = "env-lease-canary-" + secrets.token_hex(12)
HEADER_CANARY = "hdr-lease-canary-" + secrets.token_hex(12)
CANARIES = (CANARY, ENV_CANARY, HEADER_CANARY)

PROVIDERS: list[dict[str, Any]] = [
    {"name": "desk-env", "secret": "desk.key"},  # static: a sealed secret
    {"name": "web-jwt", "kind": "signed-token", "audience": "https://web.internal"},
]
CREDENTIALED = """
  - name: desk/whoami_env
    privilege: read
    labels: [public]
    credential: {provider: desk-env, env: {UPSTREAM_API_KEY: "{value}"}}
  - name: desk/hang
    privilege: read
    labels: [public]
    credential: {secret: web.key, header: X-Upstream-Key}
  - name: web/whoami_headers
    privilege: read
    labels: [public]
    credential: {secret: web.key, header: X-Upstream-Key}
  - {name: web/whoami_headers_plain, privilege: read, labels: [public]}
  - name: jwt/whoami_headers
    privilege: read
    labels: [public]
    credential: {provider: web-jwt, header: X-Upstream-Key, value: token}
"""
EXTRA_TOOLS = ["web/whoami_headers_plain", "jwt/whoami_headers"]
TOOLS = [
    "desk/echo",
    "desk/whoami_env",
    "desk/hang",
    "web/whoami_headers",
    "web/whoami_headers_plain",
    "jwt/whoami_headers",
]
INTENT: dict[str, Any] = {
    "purpose": "check the upstream credentials",
    "tools": ["desk/echo", "desk/whoami_env", "desk/hang"],
    "sensitivity": "confidential",
    "call_budget": 100,
    "ttl_seconds": 600,
}
SWEEP = 0.2


def _catalog() -> str:
    """The gateway tests' catalog with credentials on some tools."""
    replaced = {"desk/whoami_env", "desk/hang", "web/whoami_headers"}
    kept = [
        line
        for line in CATALOG.splitlines()
        if not any(f"name: {name}," in line for name in replaced)
    ]
    return "\n".join(kept) + CREDENTIALED


def _providers_toml() -> str:
    out = []
    for provider in PROVIDERS:
        out.append("[[credential_providers]]")
        out.extend(f"{key} = {json.dumps(value)}" for key, value in provider.items())
    return "\n".join(out) + "\n"


@pytest.fixture
def cworld(tmp_path: Path, definitions: dict[str, Tool]) -> Iterator[World]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(_catalog(), encoding="utf-8")
    (tmp_path / "remit.toml").write_text(_providers_toml(), encoding="utf-8")
    settings = replace(
        Settings(),
        data_dir=tmp_path / "data",
        trust_domain="acme.example",
        catalog_path=catalog,
        credential_providers=tuple(PROVIDERS),
    )
    remit = build_remit(settings)
    try:
        remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
        agent = remit.register_agent(
            "support-assistant",
            owner="sam@acme.example",
            ceiling={
                "tools": [*ALL_TOOLS, *EXTRA_TOOLS],
                "privileges": ["read", "write", "act"],
                "destinations": ["email:*"],
                "max_sensitivity": "restricted",
            },
        )
        remit.put_secret("desk.key", Secret(ENV_CANARY))
        remit.put_secret("web.key", Secret(HEADER_CANARY))
        for name, tool in definitions.items():
            remit.admit_tool_definition(name, tool_definition(tool), by="tests")
        for name in ("web/whoami_headers", "web/whoami_headers_plain", "jwt/whoami_headers"):
            definition = tool_definition(definitions["desk/" + name.partition("/")[2]])
            remit.admit_tool_definition(name, definition, by="tests")
        config_data: dict[str, Any] = {
            "gateway": {"lease_sweep_seconds": SWEEP, "max_leased_upstreams": 8},
            "upstreams": [
                {
                    "name": "desk",
                    "command": sys.executable,
                    "args": [str(UPSTREAM), "stdio"],
                    # The configured value, replaced by the lease's for a credentialed tool.
                    "env": {"UPSTREAM_API_KEY": "${CANARY}"},
                    "timeout_seconds": 5,
                }
            ],
            "task": {"principal": PRINCIPAL, "intent": INTENT},
        }
        yield World(tmp_path, settings, remit, agent.agent_id, tmp_path / "none", config_data)
    finally:
        remit.close()


def with_web(world: World, url: str) -> None:
    world.config_data["upstreams"] += [
        {"name": "web", "url": url, "headers": {"x-upstream-key": "${CANARY}"}},
        {"name": "jwt", "url": url},
    ]


def open_task(world: World, tools: list[str] | None = None) -> TaskSession:
    agent = AgentSession.attest(world.remit, world.join_token())
    intent = {**INTENT, "tools": tools or INTENT["tools"]}
    return agent.open_task(principal=PRINCIPAL, intent=intent)


@contextlib.contextmanager
def http_gateway(world: World) -> Iterator[tuple[Gateway, str, Path]]:
    """The HTTP gateway (Remit embedded); upstream stderr goes to the returned file."""
    errlog = world.dir / "upstream-stderr.log"
    with errlog.open("a", encoding="utf-8") as sink:
        gateway = Gateway(world.config(), LocalRemitView(world.remit), stderr=sink)
        with running_http_gateway(gateway, world.remit) as url:
            yield gateway, url, errlog


@contextlib.asynccontextmanager
async def signed_client(task: TaskSession, url: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(auth=RemitProofAuth(task)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def field(result: CallToolResult, name: str) -> str:
    match = re.search(rf"\b{name}=(\S*)", text(result))
    assert match, text(result)
    return match.group(1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def gone(pid: int, timeout: float = 15.0) -> bool:
    with anyio.move_on_after(timeout):
        while alive(pid):
            await anyio.sleep(0.05)
        return True
    return False


async def until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    with anyio.move_on_after(timeout):
        while not check():
            await anyio.sleep(0.05)
        return True
    return False


async def refused_at_the_transport(agent: Client, tool: str, seen: Seen) -> None:
    """An ended task's call over HTTP: refused before the MCP layer (401, token_revoked)."""
    with pytest.raises(MCPError) as caught:
        await agent.call_tool(tool, {})
    seen.add(caught.value)
    assert isinstance(caught.value.error.data, dict)
    assert caught.value.error.data["code"] == "token_revoked"


class Seen:
    """Everything an agent, an operator or a log reader could see, to grep for canaries."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, item: Any) -> Any:
        if isinstance(item, CallToolResult):
            self.parts.append(item.model_dump_json())
        else:
            self.parts.append(str(item))
        return item

    def assert_clean(self, world: World, *logs: str) -> None:
        world.remit.audit.flush()
        audit = world.audit_text()
        assert audit  # there are records to look at
        texts = [*self.parts, *logs, audit]
        for canary in CANARIES:
            for seen in texts:
                assert canary not in seen
        data = world.settings.data_dir
        files = [p for p in data.rglob("*") if p.is_file()]
        assert files
        for path in files:
            content = path.read_bytes()
            for canary in CANARIES:
                assert canary.encode() not in content, path.name


# ---------------------------------------------------------------------- env (stdio)


async def test_sidecar_runs_an_env_credentialed_call_on_a_process_of_its_lease(
    cworld: World,
) -> None:
    seen = Seen()
    async with sidecar_client(cworld, REMIT_CONFIG=str(cworld.dir / "remit.toml")) as agent:
        first = seen.add(await agent.call_tool("desk__whoami_env", {}))
        assert not first.is_error, text(first)
        # The upstream got the leased value (not the configured one), and it is redacted.
        assert f"UPSTREAM_API_KEY={REDACTED}" in text(first)
        assert field(first, "sha256") == sha(ENV_CANARY)
        leased_pid = int(field(first, "pid"))
        # The same lease: the same process.
        again = seen.add(await agent.call_tool("desk__whoami_env", {}))
        assert int(field(again, "pid")) == leased_pid
        # An uncredentialed tool runs on the shared process.
        echoed = seen.add(await agent.call_tool("desk__echo", {"text": "hello"}))
        assert text(echoed) == "hello"
        assert alive(leased_pid)
    # The agent closed stdio: the task ended and the lease's process was stopped.
    assert await gone(leased_pid)
    (lease,) = cworld.remit.list_leases()
    assert lease.state.value != "open"
    stderr = (cworld.dir / "sidecar.log").read_text(encoding="utf-8")
    assert f"whoami_env: UPSTREAM_API_KEY={REDACTED}" in stderr  # the upstream's own stderr
    assert "lease" in stderr
    seen.assert_clean(cworld, stderr)


async def test_tasks_never_share_a_credentialed_process_and_an_ended_task_loses_it(
    cworld: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="remit.gateway")
    seen = Seen()
    one, two = open_task(cworld), open_task(cworld)
    with http_gateway(cworld) as (gateway, url, errlog), anyio.fail_after(90):
        async with signed_client(one, url) as agent_one, signed_client(two, url) as agent_two:
            a = seen.add(await agent_one.call_tool("desk__whoami_env", {}))
            b = seen.add(await agent_two.call_tool("desk__whoami_env", {}))
            assert field(a, "sha256") == field(b, "sha256") == sha(ENV_CANARY)
            pid_a, pid_b = int(field(a, "pid")), int(field(b, "pid"))
            assert pid_a != pid_b  # one process per lease, so per task
            assert {(i.task_id, i.upstream) for i in gateway.leased.live()} == {
                (one.task_id, "desk"),
                (two.task_id, "desk"),
            }
            again = seen.add(await agent_one.call_tool("desk__whoami_env", {}))
            assert int(field(again, "pid")) == pid_a

            # Task one ends: its next call is refused, and its process is stopped.
            one.end()
            await refused_at_the_transport(agent_one, "desk__whoami_env", seen)
            assert await gone(pid_a)
            assert alive(pid_b)
            still = seen.add(await agent_two.call_tool("desk__whoami_env", {}))
            assert int(field(still, "pid")) == pid_b

            # Task two is revoked by an operator and makes no call: the sweep stops its
            # process (within a few sweep intervals).
            cworld.remit.revoke_task(two.task_id, reason="operator")
            assert await gone(pid_b)
            assert gateway.leased.live() == []
    logs = caplog.text
    assert "connection for lease" in logs
    seen.assert_clean(cworld, logs, errlog.read_text(encoding="utf-8"))


async def test_the_number_of_leased_processes_is_bounded(cworld: World) -> None:
    cworld.config_data["gateway"]["max_leased_upstreams"] = 1
    one, two = open_task(cworld), open_task(cworld)
    with http_gateway(cworld) as (gateway, url, _), anyio.fail_after(90):
        async with signed_client(one, url) as agent_one, signed_client(two, url) as agent_two:
            a = await agent_one.call_tool("desk__whoami_env", {})
            assert not a.is_error, text(a)
            full = await agent_two.call_tool("desk__whoami_env", {})
            data = remit_data(full)
            assert (data["code"], data["reason"]) == (
                "upstream_unavailable",
                "too_many_leased_upstreams",
            )
            assert "gateway.max_leased_upstreams" in text(full)
            assert data["decision"]["allowed"] is True  # Remit allowed; the gateway is full
            one.end()
            assert await gone(int(field(a, "pid")))
            b = await agent_two.call_tool("desk__whoami_env", {})
            assert not b.is_error and field(b, "sha256") == sha(ENV_CANARY)
            assert len(gateway.leased) == 1


# ---------------------------------------------------------------------- headers (HTTP)


async def test_a_lease_header_goes_on_that_leases_session_only(
    cworld: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="remit.gateway")
    seen = Seen()
    with http_upstream_process(free_port()) as upstream_url:
        with_web(cworld, upstream_url)
        tools = ["web/whoami_headers", "web/whoami_headers_plain", "jwt/whoami_headers"]
        one, two = open_task(cworld, tools), open_task(cworld, tools)
        with http_gateway(cworld) as (gateway, url, errlog), anyio.fail_after(90):
            async with (
                signed_client(one, url) as agent_one,
                signed_client(two, url) as agent_two,
            ):
                seen.add(await agent_one.list_tools())
                # Static sealed secret: the lease header replaces the configured one.
                leased = seen.add(await agent_one.call_tool("web__whoami_headers", {}))
                assert not leased.is_error, text(leased)
                assert field(leased, "sha256") == sha(HEADER_CANARY)
                assert f"X-Upstream-Key={REDACTED}" in text(leased)
                assert "remit-proof=False" in text(leased)
                # The shared session (an uncredentialed tool) never carries it.
                plain = seen.add(await agent_one.call_tool("web__whoami_headers_plain", {}))
                assert field(plain, "sha256") == sha(CANARY)
                plain_two = seen.add(await agent_two.call_tool("web__whoami_headers_plain", {}))
                assert field(plain_two, "sha256") == sha(CANARY)

                # A signed token per lease: each task's call carries its own.
                jwt_one = seen.add(await agent_one.call_tool("jwt__whoami_headers", {}))
                jwt_two = seen.add(await agent_two.call_tool("jwt__whoami_headers", {}))
                claims_one = json.loads(text(jwt_one).partition(" claims=")[2])
                claims_two = json.loads(text(jwt_two).partition(" claims=")[2])
                assert claims_one["task"] == one.task_id and claims_two["task"] == two.task_id
                assert claims_one["lease"] != claims_two["lease"]
                assert field(jwt_one, "sha256") != field(jwt_two, "sha256")
                assert f"X-Upstream-Key={REDACTED}" in text(jwt_two)  # the token is redacted
                # A signed token is single use: its session served that one call and is
                # gone; the static secret's lease keeps its session for the task.
                live = {(i.upstream, i.task_id) for i in gateway.leased.live()}
                assert live == {("web", one.task_id)}
                assert gateway.leased.started == 3
                again = seen.add(await agent_one.call_tool("web__whoami_headers", {}))
                assert field(again, "sha256") == sha(HEADER_CANARY)
                assert gateway.leased.started == 3  # the same session
                one.end()
                await refused_at_the_transport(agent_one, "web__whoami_headers", seen)
                assert await until(lambda: len(gateway.leased) == 0)  # swept
    logs = caplog.text
    seen.assert_clean(cworld, logs, errlog.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------- fail closed


class RevokingCaller:
    """A real HTTP-less caller whose lease an operator revokes right after Remit allows
    the call (the race between the decision and the injection, made to happen)."""

    def __init__(self, task: TaskSession, world: World) -> None:
        self.task = task
        self.world = world

    @property
    def task_id(self) -> str:
        return self.task.task_id

    def mandate_tools(self) -> frozenset[str]:
        return self.task.grant.mandate.tools

    def authorize(self, tool: str, arguments: Any, approval: str | None = None) -> Any:
        decision = self.task.authorize(tool, arguments, approval=approval)
        for obligation in decision.obligations:
            self.world.remit.revoke_lease(obligation.ref, reason="race")
        return decision


async def test_a_credential_that_cannot_be_had_is_never_forwarded(cworld: World) -> None:
    gateway = Gateway(cworld.config(), LocalRemitView(cworld.remit))
    task = open_task(cworld)
    with anyio.fail_after(60):
        async with gateway.running():
            # The lease ends between the decision and the injection: refused, not forwarded.
            refused = await gateway.call_tool(RevokingCaller(task, cworld), "desk__whoami_env", {})
            data = remit_data(refused)
            assert data["code"] == "token_revoked" and data["forwarded"] is False
            assert data["decision"]["allowed"] is True
            assert text(refused).startswith("remit refused (token_revoked): ")
            assert gateway.leased.started == 0  # no process was started for it

            # The catalog asks for a header on a stdio server: refused before any lease is
            # used (desk/hang would otherwise hang for a minute).
            mismatch = await gateway.call_tool(task_caller(task), "desk__hang", {})
            data = remit_data(mismatch)
            assert (data["code"], data["reason"]) == (
                "provider_unavailable",
                "obligation_transport_mismatch",
            )
            assert gateway.leased.started == 0
            # The sidecar's ordinary path still works afterwards.
            ok = await gateway.call_tool(task_caller(task), "desk__whoami_env", {})
            assert field(ok, "sha256") == sha(ENV_CANARY)
    for result in (refused, mismatch, ok):
        for canary in CANARIES:
            assert canary not in result.model_dump_json()


def task_caller(task: TaskSession) -> Any:
    from remit.gateway.sidecar import SidecarCaller

    return SidecarCaller(task)


def test_a_remote_gateway_refuses_credentialed_tools() -> None:
    view = RemoteRemitView(client=None)  # type: ignore[arg-type]
    with pytest.raises(ProviderUnavailable) as caught:
        view.credential(Obligation("inject_env", "lse_x"))
    assert caught.value.reason == "remote_credentials_unsupported"
    assert not view.lease_usable("lse_x")


def test_fetch_injections_checks_lease_and_values(cworld: World) -> None:
    redactor = Redactor([])
    view = LocalRemitView(cworld.remit)
    config = cworld.config().upstream("desk")
    assert config is not None
    task = open_task(cworld)
    decision = task.authorize("desk/whoami_env", {})
    (obligation,) = decision.obligations
    assert obligation.kind == "inject_env"
    (injection,) = fetch_injections(view, config, [obligation], redactor)
    assert injection.env["UPSTREAM_API_KEY"].reveal() == ENV_CANARY
    assert redactor.text(f"x{ENV_CANARY}y") == f"x{REDACTED}y"
    assert view.lease_usable(obligation.ref)
    cworld.remit.revoke_lease(obligation.ref)
    assert not view.lease_usable(obligation.ref)
    with pytest.raises(TokenRevoked):
        fetch_injections(view, config, [obligation], redactor)
    with pytest.raises(ProviderUnavailable) as caught:
        fetch_injections(view, config, [Obligation("inject_header", obligation.ref)], redactor)
    assert caught.value.reason == "obligation_transport_mismatch"


# ---------------------------------------------------------------------- pure parts


def test_leased_config_merges_and_overrides() -> None:
    config = gateway_config_from_data(
        {
            "upstreams": [
                {
                    "name": "web",
                    "url": "http://127.0.0.1:1/mcp",
                    "headers": {"authorization": "Bearer configured-0000", "X-Other": "o"},
                },
                {
                    "name": "desk",
                    "command": "x",
                    "env": {"KEY": "configured"},
                    "public_env": {"TOKEN": "public", "LEVEL": "info"},
                },
            ]
        },
        {},
    )
    web, desk = config.upstreams
    lease = Injection("lse_1", 1e12, headers={"Authorization": Secret("Bearer leased")}, env={})
    merged = leased_config(web, [lease])
    headers = {k: v.reveal() for k, v in merged.target.headers.items()}  # type: ignore[union-attr]
    assert headers == {"Authorization": "Bearer leased", "X-Other": "o"}
    env_lease = Injection("lse_2", 1e12, env={"TOKEN": Secret("leased")})
    target = leased_config(desk, [env_lease]).target
    assert {k: v.reveal() for k, v in target.env.items()} == {  # type: ignore[union-attr]
        "KEY": "configured",
        "TOKEN": "leased",
    }
    assert target.public_env == {"LEVEL": "info"}  # type: ignore[union-attr]
    # The original config is untouched (frozen).
    assert web.target.headers["authorization"].reveal() == "Bearer configured-0000"  # type: ignore[union-attr]


def test_redactor_learns_leased_values_and_filters_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redactor = Redactor([Secret("Bearer configured-token-1")])
    # The credential part of an auth-scheme value is redacted on its own too.
    assert redactor.text("configured-token-1") == REDACTED
    redactor.add([Secret("leased-value-123")])
    assert redactor.text("a leased-value-123 b") == f"a {REDACTED} b"
    log = logging.getLogger("remit.gateway")
    log_filter = LogFilter(redactor)
    log.addFilter(log_filter)
    try:
        with caplog.at_level(logging.INFO, logger="remit.gateway"):
            log.info("oops %s", "leased-value-123")
    finally:
        log.removeFilter(log_filter)
    assert "leased-value-123" not in caplog.text and REDACTED in caplog.text


def test_gateway_lease_settings_are_validated() -> None:
    base: dict[str, Any] = {"upstreams": [{"name": "a", "command": "x"}]}
    config = gateway_config_from_data(base, {})
    assert (config.max_leased_upstreams, config.lease_sweep_seconds) == (32, 10.0)
    for bad in (
        {"max_leased_upstreams": -1},
        {"max_leased_upstreams": True},
        {"lease_sweep_seconds": 0},
        {"lease_sweep_seconds": "1"},
    ):
        with pytest.raises(Exception, match="gateway"):
            gateway_config_from_data({**base, "gateway": bad}, {})


def test_an_issued_value_is_redacted_on_its_own_not_only_as_rendered(cworld: World) -> None:
    """A template renders the issued value into a larger string (``apikey={value}``, a DSN
    around a password): an upstream that echoes only the issued value (an error quoting
    the password, a parsed config dump) must still have it redacted."""
    import yaml

    catalog = _catalog().replace(
        'env: {UPSTREAM_API_KEY: "{value}"}', 'env: {UPSTREAM_API_KEY: "apikey={value};v=1"}'
    )
    assert "apikey={value}" in catalog
    cworld.remit.load_catalog(yaml.safe_load(catalog))
    redactor = Redactor([])
    view = LocalRemitView(cworld.remit)
    config = cworld.config().upstream("desk")
    assert config is not None
    task = open_task(cworld)
    (obligation,) = task.authorize("desk/whoami_env", {}).obligations
    (injection,) = fetch_injections(view, config, [obligation], redactor)
    assert injection.env["UPSTREAM_API_KEY"].reveal() == f"apikey={ENV_CANARY};v=1"
    assert redactor.text(f"apikey={ENV_CANARY};v=1") == REDACTED
    assert redactor.text(f"bad key {ENV_CANARY}!") == f"bad key {REDACTED}!"
    assert ENV_CANARY not in repr(injection)
