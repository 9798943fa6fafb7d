"""Secrets, leases and provider keys over HTTP, on a live server built from a config file
with a signed-token provider; and the canary sweep: a secret put over HTTP never appears
in any response (errors included), log line, audit record, or the SQLite file and WAL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from remit.client import RemitClient
from remit.config import load_settings
from remit.core.pipeline import Obligation
from remit.errors import Forbidden, NotFound
from remit.http.server import running_server
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit
from tests.conftest import CATALOG, PRINCIPAL
from tests.http.conftest import HttpAgent

CANARY = "canary-93be-HTTP-NEVER-PRINT"
AUDIENCE = "https://ledger.internal"
TOOLS = """
  - name: billing/charge
    privilege: write
    labels: [internal]
    credential: {secret: billing.key, header: Authorization, format: "Bearer {value}"}
  - name: ledger/post
    privilege: write
    labels: [internal]
    credential: {provider: ledger, header: Authorization, format: "Bearer {value}", value: token}
  - name: vault/read
    privilege: read
    labels: [internal]
    credential: {provider: vault, header: X-Vault-Key}
"""
CONFIG = f"""
trust_domain = "acme.example"
lease_ttl_seconds = 600

[[credential_providers]]
name = "ledger"
kind = "signed-token"
audience = "{AUDIENCE}"
ttl_seconds = 30

[[credential_providers]]
name = "vault"
secret = "vault.key"
"""


@dataclass
class Env:
    remit: Remit
    client: httpx.Client
    admin: dict[str, str]
    readonly: dict[str, str]
    auditor: dict[str, str]
    base_url: str
    data_dir: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("leases-http")
    config = root / "remit.toml"
    # Top-level keys first: after a [[table]] header they would belong to the table.
    config.write_text(f'data_dir = "{(root / "data").as_posix()}"\n' + CONFIG)
    settings = load_settings({"REMIT_CONFIG": str(config)})
    assert settings.lease_ttl_seconds == 600 and len(settings.credential_providers) == 2
    remit = build_remit(settings, catalog=catalog_from_yaml(CATALOG + TOOLS))
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])

    def headers(*scopes: str) -> dict[str, str]:
        _, secret = remit.create_admin_token("t-" + "-".join(scopes), scopes=list(scopes))
        return {"Authorization": f"Bearer {secret.reveal()}"}

    try:
        with (
            running_server(remit) as base_url,
            httpx.Client(base_url=base_url, timeout=10.0) as client,
        ):
            yield Env(
                remit,
                client,
                headers("admin"),
                headers("readonly"),
                headers("auditor"),
                base_url,
                settings.data_dir,
            )
    finally:
        remit.close()


def _agent(env: Env, name: str) -> HttpAgent:
    tools = ["docs/read", "billing/charge", "ledger/post", "vault/read"]
    response = env.client.post(
        "/v1/agents",
        json={
            "name": name,
            "owner": "sam@acme.example",
            "ceiling": {
                "tools": tools,
                "privileges": ["read", "write", "act"],
                "destinations": [],
                "max_sensitivity": "confidential",
            },
        },
        headers=env.admin,
    )
    assert response.status_code == 201, response.text
    join = env.client.post(f"/v1/agents/{name}/join-tokens", json={}, headers=env.admin)
    return HttpAgent.attest(env.client, env.base_url, join.json()["join_token"])


def _open(agent: HttpAgent) -> dict[str, Any]:
    return agent.open_task(tools=["docs/read", "billing/charge", "ledger/post", "vault/read"])


def test_secrets_routes_never_echo_values(env: Env) -> None:
    put = env.client.put("/v1/secrets/billing.key", json={"value": CANARY}, headers=env.admin)
    assert put.status_code == 200, put.text
    assert put.json()["name"] == "billing.key" and put.json()["version"] >= 1
    assert "value" not in put.json()
    listed = env.client.get("/v1/secrets", headers=env.readonly)
    assert listed.status_code == 200
    assert "billing.key" in [s["name"] for s in listed.json()["secrets"]]
    denied = env.client.put("/v1/secrets/other", json={"value": CANARY}, headers=env.readonly)
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("application/problem+json")
    for bad in (
        env.client.put("/v1/secrets/Bad Name", json={"value": CANARY}, headers=env.admin),
        env.client.put("/v1/secrets/x", json={"value": CANARY, "extra": CANARY}, headers=env.admin),
        env.client.put("/v1/secrets/x", json={"value": 7}, headers=env.admin),
        env.client.put("/v1/secrets/x", json={"value": ""}, headers=env.admin),
        env.client.put("/v1/secrets/x", content=CANARY, headers=env.admin),
    ):
        assert bad.status_code in (400, 404, 415, 422), bad.text
        assert CANARY not in bad.text
    for response in (put, listed, denied):
        assert CANARY not in response.text


def test_lease_routes_list_get_revoke(env: Env) -> None:
    env.client.put("/v1/secrets/billing.key", json={"value": CANARY}, headers=env.admin)
    agent = _agent(env, "lease-http-a")
    task = _open(agent)
    decision = agent.authorize(task["task_token"], "billing/charge", {"n": 1})
    assert decision.status_code == 200, decision.text
    (obligation,) = decision.json()["obligations"]
    assert obligation["kind"] == "inject_header"
    lease_id = obligation["ref"]
    listed = env.client.get("/v1/leases", params={"task": task["task_id"]}, headers=env.readonly)
    assert listed.status_code == 200
    assert [x["lease_id"] for x in listed.json()["leases"]] == [lease_id]
    one = env.client.get(f"/v1/leases/{lease_id}", headers=env.readonly)
    assert one.json()["state"] == "open" and one.json()["secret"] == "billing.key"
    assert env.client.get("/v1/leases/lse_nope", headers=env.readonly).status_code == 404
    assert env.client.get(
        "/v1/leases", params={"state": "weird"}, headers=env.readonly
    ).status_code in (400, 422)
    forbidden = env.client.post(f"/v1/leases/{lease_id}/revoke", json={}, headers=env.readonly)
    assert forbidden.status_code == 403
    revoked = env.client.post(
        f"/v1/leases/{lease_id}/revoke", json={"reason": "rotate"}, headers=env.admin
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoke_reason"] == "rotate"
    again = env.client.post(f"/v1/leases/{lease_id}/revoke", json={}, headers=env.admin)
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    outstanding = env.client.get("/v1/leases", params={"outstanding": "true"}, headers=env.readonly)
    assert outstanding.status_code == 200 and outstanding.json()["leases"] == []
    for response in (decision, listed, one, revoked, again):
        assert CANARY not in response.text


def test_signed_token_provider_from_config_and_its_jwks(env: Env) -> None:
    agent = _agent(env, "lease-http-b")
    task = _open(agent)
    decision = agent.authorize(task["task_token"], "ledger/post", {"entry": 1})
    assert decision.status_code == 200, decision.text
    (obligation,) = decision.json()["obligations"]
    injection = env.remit.credential_for(Obligation(obligation["kind"], obligation["ref"]))
    token = injection.headers["Authorization"].reveal().removeprefix("Bearer ")
    jwks = env.client.get("/v1/providers/ledger/jwks")  # public, like the main JWKS
    assert jwks.status_code == 200
    (jwk,) = jwks.json()["keys"]
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=env.remit.settings.issuer,
    )  # the real clock: exp, nbf and iat are checked too
    assert claims["exp"] - claims["iat"] <= 30
    assert env.client.get("/v1/providers/vault/jwks").status_code == 404
    assert env.client.get("/v1/providers/nope/jwks").status_code == 404
    providers = env.client.get("/v1/providers", headers=env.readonly).json()["providers"]
    assert {"name": "ledger", "kind": "signed-token"} in providers


def test_client_methods(env: Env) -> None:
    token = env.admin["Authorization"].removeprefix("Bearer ")
    with RemitClient(env.base_url, admin_token=token) as client:
        from remit.core.secrets import Secret

        info = client.put_secret("vault.key", Secret(CANARY))
        assert info["name"] == "vault.key" and CANARY not in repr(info)
        assert "vault.key" in [s["name"] for s in client.list_secrets()]
        assert isinstance(client.list_leases(outstanding=True), list)
        with pytest.raises(NotFound):
            client.get_lease("lse_missing")
        assert client.provider_jwks("ledger")["keys"]
        assert {"name": "vault", "kind": "static"} in client.list_providers()
    ro = env.readonly["Authorization"].removeprefix("Bearer ")
    with RemitClient(env.base_url, admin_token=ro) as client, pytest.raises(Forbidden):
        client.put_secret("vault.key", Secret(CANARY))


def test_canary_sweep(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    responses: list[httpx.Response] = []
    responses.append(
        env.client.put("/v1/secrets/vault.key", json={"value": CANARY}, headers=env.admin)
    )
    responses.append(
        env.client.put("/v1/secrets/billing.key", json={"value": CANARY}, headers=env.admin)
    )
    agent = _agent(env, "lease-http-c")
    task = _open(agent)
    for tool in ("vault/read", "billing/charge", "ledger/post"):
        response = agent.authorize(task["task_token"], tool, {"x": 1})
        responses.append(response)
        (obligation,) = response.json()["obligations"]
        injection = env.remit.credential_for(Obligation(obligation["kind"], obligation["ref"]))
        assert injection.headers  # the value exists, in-process only
    responses.append(env.client.get("/v1/leases", headers=env.readonly))
    responses.append(env.client.get("/v1/secrets", headers=env.readonly))
    lease_ids = [x["lease_id"] for x in responses[-2].json()["leases"]]
    for lease_id in lease_ids:
        responses.append(env.client.get(f"/v1/leases/{lease_id}", headers=env.readonly))
        responses.append(
            env.client.post(f"/v1/leases/{lease_id}/revoke", json={}, headers=env.admin)
        )
    responses.append(agent.end(task))
    responses.append(env.client.get("/v1/audit", params={"limit": 10000}, headers=env.auditor))
    responses.append(env.client.get("/v1/audit/export", headers=env.auditor))
    # Errors: a refused use after the end, bad inputs, a missing secret's tool.
    try:
        env.remit.credential_for(Obligation("inject_header", lease_ids[0]))
    except Exception as exc:
        errors = str(exc) + repr(exc)
    else:  # pragma: no cover
        pytest.fail("a revoked lease was usable")
    responses.append(
        env.client.put("/v1/secrets/x", json={"value": CANARY, "y": 1}, headers=env.admin)
    )
    responses.append(env.client.put("/v1/secrets/x", json={"value": CANARY}, headers=env.readonly))
    assert all(r.status_code < 500 for r in responses), [r.text for r in responses]
    for response in responses:
        assert CANARY not in response.text, response.request.url
        assert CANARY not in str(response.headers)
    assert CANARY not in errors
    assert caplog.records  # the sweep did see log lines (server, leases, ...)
    assert CANARY not in caplog.text
    env.remit.audit.flush()
    records = list(env.remit.store.iter_audit())
    assert any(r.kind == "lease.used" for r in records)
    assert all(CANARY not in repr(r.data) for r in records)
    blob = b""
    for suffix in ("", "-wal", "-shm"):
        path = env.data_dir / f"remit.db{suffix}"
        if path.exists():
            blob += path.read_bytes()
    assert blob and CANARY.encode() not in blob


def test_catalog_with_credentials_round_trips_over_http(env: Env) -> None:
    """An operator loads credentialed tools over HTTP; the catalog shows names, never values."""
    import yaml

    manifest = yaml.safe_load(CATALOG + TOOLS)
    manifest["tools"].append(
        {
            "name": "ledger/read",
            "privilege": "read",
            "labels": ["internal"],
            "credential": {"provider": "ledger", "env": {"LEDGER_TOKEN": "{token}"}},
        }
    )
    put = env.client.put("/v1/catalog", json=manifest, headers=env.admin)
    assert put.status_code == 200, put.text
    tools = {t["name"]: t for t in env.client.get("/v1/catalog", headers=env.admin).json()["tools"]}
    assert tools["billing/charge"]["credential"] == {
        "per_call": False,
        "secret": "billing.key",
        "header": "Authorization",
        "format": "Bearer {value}",
    }
    assert tools["ledger/read"]["credential"] == {
        "per_call": False,
        "provider": "ledger",
        "env": {"LEDGER_TOKEN": "{token}"},
    }
    assert tools["docs/read"]["credential"] is None
    # The core validates the credential whole: an unknown provider or a forbidden header
    # is refused, and the catalog in force is unchanged.
    for bad in (
        {"provider": "nowhere", "header": "Authorization"},
        {"secret": "billing.key", "header": "Host"},
        {"secret": "billing.key", "header": "X-Key", "surprise": 1},
    ):
        broken = yaml.safe_load(CATALOG)
        broken["tools"].append(
            {"name": "x/read", "privilege": "read", "labels": ["internal"], "credential": bad}
        )
        refused = env.client.put("/v1/catalog", json=broken, headers=env.admin)
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["code"] == "invalid_request"
    after = env.client.get("/v1/catalog", headers=env.admin).json()["tools"]
    assert "ledger/read" in {t["name"] for t in after}
