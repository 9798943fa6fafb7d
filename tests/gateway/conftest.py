"""The gateway's test world: a Remit data directory, two upstream MCP servers, a sidecar.

Upstreams: ``desk`` is our own test server (``upstream_server.py``, over stdio,
started with a credential in its environment); ``time`` is the reference time
server from PyPI (``mcp-server-time``), which nobody on this project wrote.

Every credential is a per-session canary; tests check it reaches the upstream
and appears nowhere the agent can read.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import Tool

from remit.config import Settings
from remit.core.secrets import Secret
from remit.gateway.config import GatewayConfig, gateway_config_from_data
from remit.gateway.core import discover_tools
from remit.gateway.upstream import tool_definition
from remit.runtime import build_remit
from remit.service import Remit

UPSTREAM = Path(__file__).with_name("upstream_server.py")
CANARY = "canary-" + secrets.token_hex(12)
PRINCIPAL = "user:sam@acme.example"
STEP_TIMEOUT = 30.0  # every awaited step of a test is bounded

CATALOG = """
tools:
  - {name: desk/read_ticket, privilege: read, labels: [internal, pii, untrusted]}
  - {name: desk/send_email, privilege: act, destinations: {to: email}}
  - {name: desk/wire_money, privilege: act, destinations: {to: email}, risk: [approval]}
  - {name: desk/echo, privilege: read, labels: [public]}
  - {name: desk/hang, privilege: read, labels: [public]}
  - {name: desk/crash, privilege: read, labels: [public]}
  - {name: desk/whoami_env, privilege: read, labels: [public]}
  - {name: desk/whoami_headers, privilege: read, labels: [public]}
  - {name: desk/whoami_headers_plain, privilege: read, labels: [public]}
  - {name: time/get_current_time, privilege: read, labels: [public]}
  - {name: time/convert_time, privilege: read, labels: [public]}
  - {name: web/whoami_headers, privilege: read, labels: [public]}
"""
ALL_TOOLS = [
    "desk/read_ticket",
    "desk/send_email",
    "desk/wire_money",
    "desk/echo",
    "desk/hang",
    "desk/crash",
    "desk/whoami_env",
    "desk/whoami_headers",
    "desk/whoami_headers_plain",
    "time/get_current_time",
    "time/convert_time",
    "web/whoami_headers",
]
# The task's mandate: not whoami_headers, not convert_time.
MANDATE_TOOLS = [
    "desk/read_ticket",
    "desk/send_email",
    "desk/wire_money",
    "desk/echo",
    "desk/hang",
    "desk/crash",
    "desk/whoami_env",
    "time/get_current_time",
]
INTENT: dict[str, Any] = {
    "purpose": "reply to ticket 4711",
    "tools": MANDATE_TOOLS,
    "request_text": "Please reply to alice@example.com about ticket 4711.",
    "sensitivity": "confidential",
    "call_budget": 500,
    "ttl_seconds": 600,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def desk_upstream(description_file: Path, *, timeout: float = 2.0) -> dict[str, Any]:
    return {
        "name": "desk",
        "command": sys.executable,
        "args": [str(UPSTREAM), "stdio"],
        "env": {"UPSTREAM_API_KEY": "${CANARY}"},
        "public_env": {"ECHO_DESCRIPTION_FILE": str(description_file)},
        "timeout_seconds": timeout,
    }


def time_upstream() -> dict[str, Any]:
    return {
        "name": "time",
        "command": sys.executable,
        "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        "timeout_seconds": 15,
    }


@pytest.fixture(scope="session")
def definitions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tool]:
    """What the upstreams say their tools are, listed once (the definitions to admit)."""
    missing = tmp_path_factory.mktemp("defs") / "no-such-description"
    config = gateway_config_from_data(
        {"upstreams": [desk_upstream(missing), time_upstream()]}, {"CANARY": CANARY}
    )
    return anyio.run(discover_tools, config)


@dataclass
class World:
    dir: Path
    settings: Settings
    remit: Remit
    agent_id: str
    description_file: Path
    config_data: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"CANARY": CANARY}

    def config(self) -> GatewayConfig:
        return gateway_config_from_data(self.config_data, self.env)

    def join_token(self) -> Secret:
        return self.remit.create_join_token(self.agent_id)

    def write_config(self) -> Path:
        path = self.dir / "gateway.yaml"
        path.write_text(yaml.safe_dump(self.config_data), encoding="utf-8")
        return path

    def sidecar(self, *args: str, **env_vars: str) -> StdioServerParameters:
        """``remit gateway --stdio`` as the agent's MCP client starts it."""
        env = {
            "REMIT_DATA_DIR": str(self.settings.data_dir),
            "REMIT_TRUST_DOMAIN": self.settings.trust_domain,
            "REMIT_CATALOG_PATH": str(self.settings.catalog_path),
            "REMIT_JOIN_TOKEN": self.join_token().reveal(),
            **self.env,
            **env_vars,
        }
        return StdioServerParameters(
            command=sys.executable,
            args=[
                *("-c", "from remit.cli import main; main()"),
                *("gateway", "--config", str(self.write_config()), "--stdio", *args),
            ],
            env=env,
        )

    def audit_text(self) -> str:
        """Every audit record, as text (to look for things that must not be there)."""
        self.remit.audit.flush()
        from remit.store.base import AuditQuery

        records = self.remit.store.query_audit(AuditQuery(limit=10_000))
        return "\n".join(f"{r.kind} {r.data}" for r in records)

    def decisions(self) -> list[dict[str, Any]]:
        self.remit.audit.flush()
        from remit.store.base import AuditQuery

        return [
            dict(r.data)
            for r in self.remit.store.query_audit(AuditQuery(limit=10_000))
            if r.kind == "decision"
        ]


@pytest.fixture
def world(tmp_path: Path, definitions: dict[str, Tool]) -> Iterator[World]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG, encoding="utf-8")
    settings = replace(
        Settings(),
        data_dir=tmp_path / "data",
        trust_domain="acme.example",
        catalog_path=catalog,
    )
    remit = build_remit(settings)
    try:
        remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
        agent = remit.register_agent(
            "support-assistant",
            owner="sam@acme.example",
            ceiling={
                "tools": ALL_TOOLS,
                "privileges": ["read", "write", "act"],
                "destinations": ["email:*"],
                "max_sensitivity": "restricted",
            },
        )
        for name, tool in definitions.items():
            remit.admit_tool_definition(name, tool_definition(tool), by="tests")
        # The same server over HTTP (test_http), under another namespace.
        web = tool_definition(definitions["desk/whoami_headers"])
        remit.admit_tool_definition("web/whoami_headers", web, by="tests")
        description_file = tmp_path / "echo-description.txt"
        config_data = {
            "upstreams": [desk_upstream(description_file), time_upstream()],
            "task": {"principal": PRINCIPAL, "intent": INTENT},
        }
        yield World(tmp_path, settings, remit, agent.agent_id, description_file, config_data)
    finally:
        remit.close()


@contextlib.asynccontextmanager
async def sidecar_client(
    world: World, *args: str, timeout: float = 60.0, **env: str
) -> AsyncIterator[Client]:
    """An MCP client (the SDK's) connected to ``remit gateway --stdio``, for at most
    ``timeout`` seconds in all; the sidecar's stderr is kept in ``world.dir/sidecar.log``."""
    with (
        (world.dir / "sidecar.log").open("a", encoding="utf-8") as errlog,
        anyio.fail_after(timeout),
    ):
        async with Client(stdio_client(world.sidecar(*args, **env), errlog=errlog)) as client:
            yield client


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def http_upstream_process(port: int) -> Iterator[str]:
    """Our test upstream served over streamable HTTP, as a child process; its URL."""
    process = subprocess.Popen(
        [sys.executable, str(UPSTREAM), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            with contextlib.closing(socket.socket()) as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the HTTP upstream did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
