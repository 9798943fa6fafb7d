"""Running the gateway: what ``remit gateway --stdio`` and ``--http`` do."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from remit.client import RemitClient
from remit.config import Settings
from remit.core.catalog import catalog_from_data, tool_definition_digest
from remit.errors import InvalidRequest, RemitError
from remit.gateway.config import GatewayConfig, join_token_from, read_gateway_config
from remit.gateway.core import (
    Gateway,
    LocalRemitView,
    RemitView,
    RemoteRemitView,
    discover_tools,
)
from remit.gateway.server import serve_http, serve_stdio
from remit.gateway.sidecar import SidecarCaller, open_sidecar_task
from remit.gateway.upstream import tool_definition
from remit.runtime import build_remit
from remit.service import Remit

logger = logging.getLogger("remit.gateway")


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines go to stderr only: in the sidecar, stdout is the MCP channel."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("remit-gateway %(levelname)s %(message)s"))
    root = logging.getLogger("remit.gateway")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def load(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    return read_gateway_config(path, os.environ if env is None else env)


def run_sidecar(
    config: GatewayConfig,
    *,
    settings: Settings | None = None,
    remit_url: str | None = None,
    admin_token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Attest, open the configured task, serve the agent on stdio, end the task on exit.

    Remit is in-process (built from ``settings``, the same data as ``remit serve``)
    unless ``remit_url`` names a server; then the sidecar reads its mandate's catalog
    entries and checks tool pins as its own task (task token and proof), with no
    operator credential. ``admin_token`` is accepted for compatibility and not used.
    """
    env = os.environ if env is None else env
    join_token = join_token_from(config, env)
    with contextlib.ExitStack() as stack:
        view: RemitView
        if remit_url:
            if admin_token:
                logger.warning(
                    "the sidecar needs no operator token with --remit-url; it is not used"
                )
            client = stack.enter_context(RemitClient(remit_url))
            task = open_sidecar_task(client, config, join_token)
            view = RemoteRemitView(client, task)
        else:
            remit = build_remit(settings or Settings())
            stack.callback(remit.close)
            task = open_sidecar_task(remit, config, join_token)
            view = LocalRemitView(remit)
        logger.info(
            "task %s opened for %s", task.task_id, config.task.principal if config.task else "?"
        )
        try:
            anyio.run(serve_stdio, Gateway(config, view), SidecarCaller(task))
        finally:
            try:
                task.end()
            except RemitError as exc:
                logger.warning("task %s not ended (%s)", task.task_id, exc.code)


def run_http(config: GatewayConfig, settings: Settings, *, host: str, port: int) -> None:
    """Serve the HTTP gateway with an embedded Remit on ``settings``' data."""
    remit = build_remit(settings)
    try:
        serve_http(Gateway(config, LocalRemitView(remit)), remit, host=host, port=port)
    finally:
        remit.close()


# ---------------------------------------------------------------------- operator helpers


def discover(config: GatewayConfig) -> list[dict[str, Any]]:
    """What each upstream says its tools are: the definition Remit would pin, its digest,
    and the server's hints with the privilege class they suggest (a suggestion only: the
    catalog, written by a human, decides)."""
    tools = anyio.run(discover_tools, config)
    found = []
    for name, tool in sorted(tools.items()):
        definition = tool_definition(tool)
        hints = tool.annotations
        read_only = bool(hints and hints.read_only_hint)
        destructive = bool(hints and hints.destructive_hint)
        open_world = bool(hints and hints.open_world_hint)
        suggested = "read" if read_only else "act" if (open_world or destructive) else "write"
        found.append(
            {
                "tool": name,
                "definition": definition,
                "digest": tool_definition_digest(definition),
                "hints": {
                    "read_only": read_only,
                    "destructive": destructive,
                    "open_world": open_world,
                },
                "suggested_privilege": suggested,
            }
        )
    return found


def admit(
    config: GatewayConfig,
    tools: list[str],
    *,
    settings: Settings | None = None,
    remit_url: str | None = None,
    admin_token: str | None = None,
    by: str = "remit gateway --admit",
) -> list[tuple[str, str]]:
    """Pin the upstreams' current definitions of ``tools`` (``all``: every discovered tool
    that is in the catalog). Returns (tool, digest) for each one admitted."""
    found = {item["tool"]: item["definition"] for item in discover(config)}
    with contextlib.ExitStack() as stack:
        operator: Remit | RemitClient
        if remit_url:
            operator = stack.enter_context(RemitClient(remit_url, admin_token=admin_token))
            catalog = catalog_from_data(operator.get_catalog())
        else:
            operator = build_remit(settings or Settings())
            stack.callback(operator.close)
            catalog = operator.catalog
        wanted = [t for t in found if t in catalog] if tools == ["all"] else tools
        admitted = []
        for tool in wanted:
            if tool not in found:
                raise InvalidRequest(
                    f"no upstream offers {tool} (see --discover)", reason="unknown_tool"
                )
            admitted.append((tool, operator.admit_tool_definition(tool, found[tool], by=by)))
        return admitted
