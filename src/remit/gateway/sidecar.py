"""The stdio sidecar: the gateway runs next to one agent and acts as its instance.

It attests with a single-use join token (making the instance key pair, which
never leaves this process), opens one task from the configured intent, and
signs a fresh proof for every call the agent makes. The agent process talks
MCP over stdio and never holds the key, the task token or any upstream
credential. See docs/gateway.md, "Trust model".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from remit.agent import AgentSession, RemitApi, TaskSession
from remit.core.pipeline import Decision
from remit.core.secrets import Secret
from remit.errors import InvalidRequest
from remit.gateway.config import GatewayConfig


class SidecarCaller:
    """The sidecar's one caller: its own task, decided by Remit with a fresh proof per call."""

    def __init__(self, task: TaskSession) -> None:
        self.task = task

    @property
    def task_id(self) -> str:
        return self.task.task_id

    def mandate_tools(self) -> frozenset[str]:
        return self.task.grant.mandate.tools

    def authorize(
        self, tool: str, arguments: Mapping[str, Any], approval: str | None = None
    ) -> Decision:
        return self.task.authorize(tool, arguments, approval=approval)


def open_sidecar_task(
    remit: RemitApi, config: GatewayConfig, join_token: Secret | None
) -> TaskSession:
    """Attest a new instance and open the configured task."""
    if config.task is None:
        raise InvalidRequest(
            "the stdio sidecar needs a [task] in the gateway config", reason="bad_gateway_config"
        )
    if join_token is None:
        raise InvalidRequest(
            "the stdio sidecar needs a join token (task.join_token or REMIT_JOIN_TOKEN)",
            reason="bad_gateway_config",
        )
    agent = AgentSession.attest(remit, join_token)
    return agent.open_task(principal=config.task.principal, intent=config.task.intent)
