"""Every operator route refuses a missing, unknown, revoked or too-narrow token; nothing
that changes state answers an anonymous request."""

from __future__ import annotations

import httpx
import pytest

from remit.http.operators import ROUTE_SCOPES, SCOPE_EXTENSION
from tests.conftest import PRINCIPAL
from tests.http.conftest import Live

# Stand-ins for path parameters: well-formed, naming nothing.
_PARAMS = {
    "{name}": "nobody",
    "{task_id}": "tsk_AAAAAAAAAAAAAAAAAAAAAA",
    "{version}": "pv_nothing",
    "{token_id}": "adm_AAAAAAAAAAAAAAAAAAAAAA",
    "{approval_id}": "apr_AAAAAAAAAAAAAAAAAAAAAA",
}
ROUTES = sorted(ROUTE_SCOPES.items())
# Scopes that do not cover the route's scope.
_NARROWER = {
    "admin": ("readonly", "auditor", "approver"),
    "auditor": ("readonly", "approver"),
    "approver": ("readonly", "auditor"),
    "readonly": (),
}
NARROW_CASES = [
    ((method, path), scope, narrow)
    for (method, path), scope in ROUTES
    for narrow in _NARROWER[scope]
]
# Attestation carries a join token, and token exchange its tokens and proofs, in the body.
PUBLIC_POSTS = {("POST", "/v1/attest/challenge"), ("POST", "/v1/attest"), ("POST", "/oauth/token")}


def _url(path: str) -> str:
    for param, value in _PARAMS.items():
        path = path.replace(param, value)
    return path


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def _ids(route: tuple[tuple[str, str], str]) -> str:
    (method, path), _ = route
    return f"{method} {path}"


def test_the_route_table_is_the_api(live: Live) -> None:
    """Every operation that declares an operator token is in ROUTE_SCOPES with its scope."""
    document = live.client.get("/openapi.json").json()
    declared = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if {"OperatorToken": []} in operation.get("security", []):
                declared[(method.upper(), path)] = operation[SCOPE_EXTENSION]
    assert declared == ROUTE_SCOPES


@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_missing_token_is_refused(live: Live, route: tuple[tuple[str, str], str]) -> None:
    (method, path), _ = route
    _problem(live.client.request(method, _url(path)), 401, "invalid_token")
    basic = {"Authorization": "Basic cm9vdDpyb290"}
    _problem(live.client.request(method, _url(path), headers=basic), 401, "invalid_token")
    unknown = {"Authorization": "Bearer rat_" + "x" * 43}
    _problem(live.client.request(method, _url(path), headers=unknown), 401, "invalid_token")


@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_revoked_token_is_refused(live: Live, route: tuple[tuple[str, str], str]) -> None:
    (method, path), scope = route
    headers = live.operator(scope)
    token_id = live.remit.list_admin_tokens()[-1].token_id
    live.remit.revoke_admin_token(token_id)
    _problem(live.client.request(method, _url(path), headers=headers), 401, "token_revoked")


@pytest.mark.parametrize(
    ("route", "scope", "narrow"),
    NARROW_CASES,
    ids=[f"{r[0]} {r[1]} as {n}" for r, _, n in NARROW_CASES],
)
def test_too_narrow_scope_is_forbidden(
    live: Live, route: tuple[str, str], scope: str, narrow: str
) -> None:
    method, path = route
    response = live.client.request(method, _url(path), headers=live.operator(narrow))
    _problem(response, 403, "forbidden")
    assert scope in response.json()["detail"]


@pytest.mark.parametrize("route", [r for r in ROUTES if r[1] in ("readonly", "auditor")], ids=_ids)
def test_covering_scopes_get_through(live: Live, route: tuple[tuple[str, str], str]) -> None:
    """readonly routes accept every scope; auditor routes accept auditor and admin."""
    (method, path), scope = route
    scopes = ("readonly", "approver", "auditor", "admin") if scope == "readonly" else ("auditor",)
    for granted in scopes:
        response = live.client.request(method, _url(path), headers=live.operator(granted))
        assert response.status_code not in (401, 403), (granted, response.text)


def test_nothing_changes_state_without_authentication(live: Live) -> None:
    document = live.client.get("/openapi.json").json()
    checked = 0
    for path, operations in document["paths"].items():
        for method in operations:
            if method == "get" or (method.upper(), path) in PUBLIC_POSTS:
                continue
            bodies: tuple[dict[str, object] | None, ...] = (None, {})
            for body in bodies:
                response = live.client.request(method.upper(), _url(path), json=body)
                _problem(response, 401, "invalid_token")
            checked += 1
    assert checked >= 20


def test_agent_routes_need_a_proof_and_an_agent_token(live: Live) -> None:
    no_proof = {"Authorization": "Bearer abc"}
    bodies = {
        "/v1/identity/renew": {},
        "/v1/tasks": {"principal": PRINCIPAL, "intent": {}},
        "/v1/tasks/end": {},
        "/v1/authorize": {"tool": "docs/read", "arguments": {}},
    }
    for path, body in bodies.items():
        _problem(live.client.post(path, json=body, headers=no_proof), 401, "invalid_proof")
        # An operator token is not an agent's token.
        headers = {**live.admin, "Remit-Proof": "x.y.z"}
        _problem(live.client.post(path, json=body, headers=headers), 401, "invalid_token")


def test_operator_tokens_over_http(live: Live) -> None:
    created = live.client.post(
        "/v1/admin-tokens", json={"name": "ci", "scopes": ["auditor"]}, headers=live.admin
    )
    assert created.status_code == 201
    token_id, token = created.json()["token_id"], created.json()["token"]
    auditor = {"Authorization": f"Bearer {token}"}
    assert live.client.get("/v1/audit", headers=auditor).status_code == 200
    assert live.client.get("/v1/agents", headers=auditor).status_code == 200
    listed = live.client.get("/v1/admin-tokens", headers=live.admin).json()["tokens"]
    mine = [t for t in listed if t["token_id"] == token_id]
    assert mine and mine[0]["scopes"] == ["auditor"] and mine[0]["revoked_at"] is None
    assert all("token" not in t and "token_hash" not in t for t in listed)
    deleted = live.client.delete(f"/v1/admin-tokens/{token_id}", headers=live.admin)
    assert deleted.status_code == 204 and deleted.content == b""
    _problem(live.client.get("/v1/audit", headers=auditor), 401, "token_revoked")
    again = live.client.delete(f"/v1/admin-tokens/{token_id}", headers=live.admin)
    _problem(again, 404, "not_found")
    bad = live.client.post(
        "/v1/admin-tokens", json={"name": "x", "scopes": ["root"]}, headers=live.admin
    )
    _problem(bad, 400, "invalid_request")
