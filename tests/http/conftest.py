"""A live Remit HTTP server (real uvicorn, real clock) and an agent that speaks HTTP."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from remit.canonical import digest
from remit.core.identity import attestation_payload
from remit.core.keys import generate_instance_key, jwk_thumbprint, public_jwk, sign_es256
from remit.core.pipeline import ARGUMENT_LIMITS
from remit.core.tokens import make_call_proof
from remit.http.server import running_server
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import END_TASK_OP, OPEN_TASK_OP, RENEW_IDENTITY_OP, Remit
from tests.conftest import CATALOG, CEILING, PRINCIPAL, make_settings


@dataclass
class Live:
    remit: Remit
    base_url: str
    client: httpx.Client
    admin: dict[str, str]  # headers with an admin-scoped operator token

    def operator(self, *scopes: str) -> dict[str, str]:
        """Headers with a fresh operator token of these scopes."""
        _, secret = self.remit.create_admin_token("test", scopes=list(scopes))
        return {"Authorization": f"Bearer {secret.reveal()}"}

    def new_agent(self, name: str, **ceiling: Any) -> HttpAgent:
        response = self.client.post(
            "/v1/agents",
            json={"name": name, "owner": "sam@acme.example", "ceiling": {**CEILING, **ceiling}},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        join = self.client.post(f"/v1/agents/{name}/join-tokens", json={}, headers=self.admin)
        assert join.status_code == 201, join.text
        return HttpAgent.attest(self.client, self.base_url, join.json()["join_token"])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class HttpAgent:
    """What a client SDK does: attest, then sign a proof bound to each request."""

    def __init__(self, client: httpx.Client, base_url: str, key: Any, attestation: Any) -> None:
        self.client = client
        self.base_url = base_url
        self.key = key
        self.attestation = attestation

    @classmethod
    def attest(cls, client: httpx.Client, base_url: str, join_token: str) -> HttpAgent:
        key = generate_instance_key()
        nonce = client.post("/v1/attest/challenge").json()["nonce"]
        signature = sign_es256(key, attestation_payload(nonce, jwk_thumbprint(key.public_key())))
        response = client.post(
            "/v1/attest",
            json={
                "join_token": join_token,
                "public_jwk": public_jwk(key.public_key()),
                "nonce": nonce,
                "signature": b64url(signature),
            },
        )
        assert response.status_code == 200, response.text
        return cls(client, base_url, key, response.json())

    @property
    def identity(self) -> str:
        return str(self.attestation["identity_token"])

    def proof(
        self,
        token: str,
        op: str,
        args: Any,
        *,
        path: str,
        method: str = "POST",
        url: str | None = None,
    ) -> str:
        return make_call_proof(
            self.key,
            token=token,
            tool=op,
            args_digest=digest(args, ARGUMENT_LIMITS),
            now=time.time(),
            htm=method,
            htu=url if url is not None else self.base_url + path,
        )

    def headers(self, token: str, proof: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Remit-Proof": proof}

    def open_task(self, **intent: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "purpose": "reply to ticket 4711",
            "tools": ["ticket/read", "crm/read", "email/send", "docs/read"],
            "sensitivity": "confidential",
            "call_budget": 50,
            "ttl_seconds": 600,
        }
        body = {"principal": PRINCIPAL, "intent": {**base, **intent}}
        proof = self.proof(self.identity, OPEN_TASK_OP, body, path="/v1/tasks")
        response = self.client.post(
            "/v1/tasks", json=body, headers=self.headers(self.identity, proof)
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def authorize(
        self, task_token: str, tool: str, arguments: dict[str, Any], **proof_kw: Any
    ) -> httpx.Response:
        proof = self.proof(task_token, tool, arguments, path="/v1/authorize", **proof_kw)
        return self.client.post(
            "/v1/authorize",
            json={"tool": tool, "arguments": arguments},
            headers=self.headers(task_token, proof),
        )

    def end(self, task: dict[str, Any]) -> httpx.Response:
        token = task["task_token"]
        proof = self.proof(token, END_TASK_OP, {"task": task["task_id"]}, path="/v1/tasks/end")
        return self.client.post("/v1/tasks/end", json={}, headers=self.headers(token, proof))

    def renew(self) -> httpx.Response:
        token = self.identity
        proof = self.proof(token, RENEW_IDENTITY_OP, {}, path="/v1/identity/renew")
        return self.client.post("/v1/identity/renew", json={}, headers=self.headers(token, proof))


def live_remit(data_dir: Path, **settings: Any) -> Remit:
    """A Remit on a real clock, with the test catalog and principal."""
    remit = build_remit(make_settings(data_dir, **settings), catalog=catalog_from_yaml(CATALOG))
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    return remit


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    remit = live_remit(tmp_path_factory.mktemp("live"))
    _, secret = remit.create_admin_token("root", scopes=["admin"])
    try:
        with (
            running_server(remit) as base_url,
            httpx.Client(base_url=base_url, timeout=10.0) as client,
        ):
            yield Live(remit, base_url, client, {"Authorization": f"Bearer {secret.reveal()}"})
    finally:
        remit.close()
