"""Fixtures for the fault suite: a real Remit on a SQLite file with credentialed and
approval-gated tools, and the static secret those tools lease."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remit.agent import AgentSession
from remit.clock import Clock
from remit.core.secrets import Secret
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import AdminIdentity, Remit

from ..conftest import CATALOG, CEILING, PRINCIPAL, make_settings

SECRET = "canary-fault-suite-NEVER-PRINT"

FAULT_CATALOG = (
    CATALOG
    + """
  - name: billing/charge
    privilege: write
    labels: [internal]
    credential: {secret: billing.key, header: Authorization, format: "Bearer {value}"}
  - name: payments/transfer
    privilege: act
    destinations: {to: account}
    risk: [payment]
"""
)
FAULT_CEILING: dict[str, Any] = {
    **CEILING,
    "tools": [*CEILING["tools"], "billing/charge", "payments/transfer"],
    "destinations": ["email:*", "account:*"],
}
PAY = {"to": "DE89370400440532013000", "amount": 100}
APPROVER = AdminIdentity("adm_alice", "alice@acme.example", frozenset({"approver"}))


def build(data_root: Path, clock: Clock | None = None) -> Remit:
    """A Remit on ``data_root/data``; the same directory reopens the same state."""
    return build_remit(
        make_settings(data_root), clock=clock, catalog=catalog_from_yaml(FAULT_CATALOG)
    )


def setup(remit: Remit, clock: Clock, name: str = "fault-bot") -> AgentSession:
    """Principal, secret and one attested agent instance (faults off)."""
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    remit.put_secret("billing.key", Secret(SECRET))
    agent = remit.register_agent(name, owner="sam@acme.example", ceiling=FAULT_CEILING)
    return AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)


def intent(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "purpose": "fault workload",
        "tools": ["docs/read", "ticket/read", "billing/charge", "payments/transfer"],
        "destinations": ["account:DE89370400440532013000"],
        "sensitivity": "confidential",
        "call_budget": 8,
        "ttl_seconds": 600,
    }
    base.update(overrides)
    return base
