"""MCP gateway latency: a trivial tool called directly on its server, and through
``remit gateway --stdio`` in front of the same server, in one run.

Budget (DESIGN §8): at most 1 ms added at p50. Everything runs on this machine
over stdio (no network); the run is bounded by ``--calls`` and stops by itself.

    .venv/bin/python bench/gateway.py [--calls 1000] [--warmup 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import anyio
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from remit.config import Settings
from remit.gateway.config import gateway_config_from_data
from remit.gateway.core import discover_tools
from remit.gateway.upstream import tool_definition
from remit.runtime import build_remit

BUDGET_MS = 1.0
PRINCIPAL = "user:bench@acme.example"
UPSTREAM = textwrap.dedent(
    '''
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench-upstream")

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    server.run()
    '''
)
CATALOG = "tools:\n  - {name: bench/echo, privilege: read, labels: [public]}\n"


def prepare(root: Path) -> tuple[StdioServerParameters, StdioServerParameters]:
    """A Remit data directory with an agent and the upstream's pin; the two servers to call."""
    upstream = root / "upstream.py"
    upstream.write_text(UPSTREAM, encoding="utf-8")
    (root / "catalog.yaml").write_text(CATALOG, encoding="utf-8")
    settings = replace(
        Settings(),
        data_dir=root / "data",
        trust_domain="bench.example",
        catalog_path=root / "catalog.yaml",
    )
    direct = StdioServerParameters(command=sys.executable, args=[str(upstream)])
    config = {
        "upstreams": [{"name": "bench", "command": sys.executable, "args": [str(upstream)]}],
        "task": {
            "principal": PRINCIPAL,
            "intent": {
                "purpose": "benchmark",
                "tools": ["bench/echo"],
                "call_budget": 10_000,
                "ttl_seconds": 3600,
            },
        },
    }
    (root / "gateway.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    remit = build_remit(settings)
    try:
        remit.register_principal(PRINCIPAL)
        agent = remit.register_agent(
            "bench-agent",
            owner="bench@acme.example",
            ceiling={
                "tools": ["bench/echo"],
                "privileges": ["read"],
                "max_sensitivity": "internal",
            },
        )
        tools = anyio.run(discover_tools, gateway_config_from_data(config, {}))
        remit.admit_tool_definition("bench/echo", tool_definition(tools["bench/echo"]))
        join_token = remit.create_join_token(agent.agent_id)
    finally:
        remit.close()
    gateway = StdioServerParameters(
        command=sys.executable,
        args=[
            *("-c", "from remit.cli import main; main()"),
            *("gateway", "--config", str(root / "gateway.yaml"), "--stdio"),
        ],
        env={
            "REMIT_DATA_DIR": str(settings.data_dir),
            "REMIT_TRUST_DOMAIN": settings.trust_domain,
            "REMIT_CATALOG_PATH": str(settings.catalog_path),
            "REMIT_JOIN_TOKEN": join_token.reveal(),
        },
    )
    return direct, gateway


async def measure(
    direct: StdioServerParameters, gateway: StdioServerParameters, calls: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Alternate blocks of calls on the two paths, so drift in the machine hits both."""
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    with open(os.environ.get("BENCH_ERRLOG", os.devnull), "w") as quiet, anyio.fail_after(600):
        async with (
            Client(stdio_client(direct, errlog=quiet)) as plain,
            Client(stdio_client(gateway, errlog=quiet)) as governed,
        ):
            paths = {"direct": (plain, "echo"), "gateway": (governed, "bench__echo")}
            for label, (client, name) in paths.items():
                result = await client.call_tool(name, {"text": "ping"})
                if result.is_error:
                    raise SystemExit(f"{label}: the call failed: {result.content}")
                for _ in range(warmup):
                    await client.call_tool(name, {"text": "ping"})
            block = 50
            for start in range(0, calls, block):
                for label, (client, name) in paths.items():
                    for _ in range(min(block, calls - start)):
                        began = time.perf_counter()
                        await client.call_tool(name, {"text": "ping"})
                        times[label].append(time.perf_counter() - began)
    return times["direct"], times["gateway"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="remit-bench-gateway-") as tmp:
        direct, gateway = prepare(Path(tmp))
        started = time.perf_counter()
        plain, governed = anyio.run(measure, direct, gateway, args.calls, args.warmup)
        elapsed = time.perf_counter() - started
    p50_d, p99_d = percentile(plain, 0.50), percentile(plain, 0.99)
    p50_g, p99_g = percentile(governed, 0.50), percentile(governed, 0.99)
    added = p50_g - p50_d
    print(f"MCP gateway over stdio: {args.calls} calls per path, {elapsed:.1f} s in all")
    print(
        f"  direct   p50 {p50_d:7.3f} ms  p99 {p99_d:7.3f} ms  mean {statistics.mean(plain) * 1e3:.3f} ms"
    )
    print(
        f"  gateway  p50 {p50_g:7.3f} ms  p99 {p99_g:7.3f} ms  mean {statistics.mean(governed) * 1e3:.3f} ms"
    )
    print(f"  added    p50 {added:7.3f} ms  p99 {p99_g - p99_d:7.3f} ms")
    print(f"  ratio    p50 {p50_g / p50_d:7.2f}x    p99 {p99_g / p99_d:7.2f}x")
    verdict = "within" if added <= BUDGET_MS else "OVER"
    print(f"  budget   <= {BUDGET_MS:.1f} ms added at p50: {verdict} budget")


if __name__ == "__main__":
    main()
