"""Delegation over HTTP: RFC 8693 token exchange at POST /oauth/token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from remit.agent import AgentSession
from remit.client import RemitClient
from remit.errors import Denied, InvalidProof, InvalidRequest, RemitError
from remit.http.server import running_server
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit

from ..conftest import CATALOG, CEILING, PRINCIPAL, make_settings


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Remit, str]]:
    remit = build_remit(make_settings(tmp_path), catalog=catalog_from_yaml(CATALOG))
    remit.register_principal(PRINCIPAL)
    try:
        with running_server(remit) as url:
            yield remit, url
    finally:
        remit.close()


def agent(remit: Remit, client: RemitClient, name: str) -> AgentSession:
    registered = remit.register_agent(name, owner="sam@acme.example", ceiling=CEILING)
    return AgentSession.attest(client, remit.create_join_token(registered.agent_id))


def test_token_exchange_over_http(served: tuple[Remit, str]) -> None:
    remit, url = served
    with RemitClient(url) as client:
        lead, researcher = agent(remit, client, "lead"), agent(remit, client, "researcher")
        parent = lead.open_task(
            principal=PRINCIPAL,
            intent={
                "purpose": "research",
                "tools": ["docs/read", "email/send"],
                "call_budget": 10,
                "delegation_depth": 1,
            },
        )
        narrowing: dict[str, Any] = {"tools": ["docs/read"], "call_budget": 3}
        consent = researcher.consent_to_delegation(parent.task_id, narrowing)
        child = researcher.adopt(parent.delegate(consent, narrowing))
        assert remit.tokens.verify_task(child.token).actor["sub"] == lead.agent_id  # type: ignore[index]
        assert child.authorize("docs/read", {"q": 1}).allowed
        assert not child.authorize("email/send", {"to": "x@y.example"}).allowed

        # A widening is refused with the dimension named.
        wide: dict[str, Any] = {"tools": ["crm/export"], "call_budget": 1}
        with pytest.raises((Denied, InvalidRequest)) as info:
            parent.delegate(researcher.consent_to_delegation(parent.task_id, wide), wide)
        assert info.value.reason == "widens_tools"

        # B's consent for another narrowing does not fit this one.
        other: dict[str, Any] = {"tools": ["docs/read"], "call_budget": 1}
        with pytest.raises(InvalidProof):
            parent.delegate(researcher.consent_to_delegation(parent.task_id, narrowing), other)


def test_token_exchange_needs_both_proofs(served: tuple[Remit, str]) -> None:
    _, url = served
    body = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "a.b.c",
        "subject_token_type": "urn:remit:params:oauth:token-type:task",
        "actor_token": "d.e.f",
        "actor_token_type": "urn:remit:params:oauth:token-type:identity",
        "remit_mandate": {"call_budget": 1},
    }
    response = httpx.post(url + "/oauth/token", json=body, headers={"Remit-Proof": "x"})
    assert response.status_code == 401 and response.json()["code"] == "invalid_proof"
    response = httpx.post(url + "/oauth/token", json={**body, "grant_type": "password"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
    assert issubclass(InvalidProof, RemitError)
