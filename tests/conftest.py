"""Shared fixtures: a real Remit on a temporary SQLite database, with a manual clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from remit.agent import AgentSession, TaskSession
from remit.clock import ManualClock
from remit.config import Settings
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit

CATALOG = """
tools:
  - name: ticket/read
    privilege: read
    labels: [internal, pii, untrusted]
  - name: crm/read
    privilege: read
    labels: [confidential, pii]
  - name: crm/export
    privilege: read
    labels: [restricted, pii]
  - name: docs/read
    privilege: read
    labels: [public]
  - name: notes/write
    privilege: write
    labels: [internal]
  - name: email/send
    privilege: act
    destinations: {to: email, cc: email}
  - name: shadow/tool
    privilege: read
    labels: [public]
    mode: shadow
"""

CEILING: dict[str, Any] = {
    "tools": [
        "ticket/read",
        "crm/read",
        "crm/export",
        "docs/read",
        "notes/write",
        "email/send",
        "shadow/tool",
    ],
    "privileges": ["read", "write", "act"],
    "destinations": ["email:*"],
    "max_sensitivity": "restricted",
}

PRINCIPAL = "user:sam@acme.example"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return replace(Settings(), data_dir=tmp_path / "data", trust_domain="acme.example", **overrides)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def remit(tmp_path: Path, clock: ManualClock) -> Iterator[Remit]:
    service = build_remit(make_settings(tmp_path), clock=clock, catalog=catalog_from_yaml(CATALOG))
    service.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    yield service
    service.close()


@pytest.fixture
def agent_session(remit: Remit, clock: ManualClock) -> AgentSession:
    agent = remit.register_agent("support-assistant", owner="sam@acme.example", ceiling=CEILING)
    return AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)


def open_task(session: AgentSession, **intent: Any) -> TaskSession:
    base: dict[str, Any] = {
        "purpose": "reply to ticket 4711",
        "tools": ["ticket/read", "crm/read", "email/send", "docs/read"],
        "sensitivity": "confidential",
        "call_budget": 50,
        "ttl_seconds": 600,
    }
    base.update(intent)
    return session.open_task(principal=PRINCIPAL, intent=base)


@pytest.fixture
def task(agent_session: AgentSession) -> TaskSession:
    return open_task(
        agent_session,
        destinations=["email:*@partner.example"],
        request_text="Please reply to alice@example.com about ticket 4711.",
    )
