"""Bad requests: too large, not JSON, malformed, unknown routes and methods, all problem+json."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from remit.http.body import MAX_BODY_BYTES
from tests.http.conftest import Live


def _problem(response: httpx.Response, status: int, code: str, reason: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"] == f"https://remit.dev/problems/{code}"
    assert body["request_id"] == response.headers["x-request-id"]
    if reason is not None:
        assert body["reason"] == reason


def _json(live: Live, content: bytes, path: str = "/v1/principals") -> httpx.Response:
    headers = {**live.admin, "Content-Type": "application/json"}
    return live.client.post(path, content=content, headers=headers)


def test_an_oversized_body_is_413(live: Live) -> None:
    big = b'{"principal_id": "' + b"x" * MAX_BODY_BYTES + b'"}'
    _problem(_json(live, big), 413, "invalid_request", "body_too_large")
    # Without a Content-Length the stream is cut off at the limit.

    def chunks() -> Iterator[bytes]:
        yield b'{"principal_id": "'
        for _ in range(40):
            yield b"x" * 8192
        yield b'"}'

    headers = {**live.admin, "Content-Type": "application/json"}
    streamed = live.client.post("/v1/principals", content=chunks(), headers=headers)
    assert "content-length" not in streamed.request.headers
    _problem(streamed, 413, "invalid_request", "body_too_large")
    # Agent routes are capped the same way, before any authentication.
    _problem(_json(live, big, "/v1/authorize"), 413, "invalid_request", "body_too_large")
    # Just under the limit is read (and then refused for what it says: a string too long).
    fits = b'{"principal_id": "' + b"x" * (MAX_BODY_BYTES - 100) + b'"}'
    _problem(_json(live, fits), 400, "invalid_request", "too_large")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"principal_id": "user:a@b.example"', "malformed_json"),
        (b"not json", "malformed_json"),
        (
            b'{"principal_id": "user:a@b.example", "principal_id": "user:c@d.example"}',
            "duplicate_key",
        ),
        (b'{"principal_id": NaN}', "bad_number"),
        (b'{"principal_id": 1e999}', "bad_number"),
        (b"[" * 40 + b"]" * 40, "too_deep"),
        (b'{"principal_id": "\\ud800"}', "bad_unicode"),
    ],
    ids=["truncated", "not-json", "duplicate-key", "nan", "infinity", "deep", "lone-surrogate"],
)
def test_malformed_json_is_400(live: Live, content: bytes, reason: str) -> None:
    _problem(_json(live, content), 400, "invalid_request", reason)


def test_bodies_must_be_json(live: Live) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = dict(live.admin)
        if content_type:
            headers["Content-Type"] = content_type
        response = live.client.post("/v1/principals", content=b"{}", headers=headers)
        _problem(response, 415, "invalid_request", "unsupported_media_type")
    ok = _json(live, b'{"principal_id": "user:json@acme.example"}')
    assert ok.status_code == 201
    vendor = live.client.post(
        "/v1/principals",
        content=b'{"principal_id": "user:json2@acme.example"}',
        headers={**live.admin, "Content-Type": "application/merge-patch+json; charset=utf-8"},
    )
    assert vendor.status_code == 201


def test_schema_violations_are_400_not_422(live: Live) -> None:
    cases = [
        {"principal_id": "user:a@b.example", "extra": 1},  # closed objects
        {"principal_id": 12},  # no coercion
        {"principal_id": "user:a@b.example", "identifiers": "email:a@b.example"},
        {"principal_id": "no-colon"},  # grammar
    ]
    for body in cases:
        response = live.client.post("/v1/principals", json=body, headers=live.admin)
        _problem(response, 400, "invalid_request", "schema")
        assert "body." in response.json()["detail"]
    secret = "rjt_supersecretvalue-" + "s" * 200
    response = live.client.post(
        "/v1/attest",
        json={"join_token": secret, "public_jwk": {}, "nonce": "n", "signature": "AA"},
    )
    _problem(response, 400, "invalid_request", "schema")
    assert "supersecret" not in response.text  # values are never echoed
    query = live.client.get("/v1/audit?limit=5000", headers=live.admin)
    _problem(query, 400, "invalid_request", "schema")
    nan = live.client.get("/v1/audit?since=nan", headers=live.admin)
    _problem(nan, 400, "invalid_request", "schema")
    bad_name = live.client.get("/v1/agents/Not_A_Name", headers=live.admin)
    _problem(bad_name, 400, "invalid_request", "schema")


def test_unknown_routes_and_methods(live: Live) -> None:
    _problem(live.client.get("/v1/nothing"), 404, "not_found", "no_route")
    _problem(live.client.get("/"), 404, "not_found", "no_route")
    wrong = live.client.delete("/v1/agents", headers=live.admin)
    _problem(wrong, 405, "invalid_request", "method_not_allowed")
    assert wrong.headers["allow"] == "GET, POST"
    _problem(live.client.get("/v1/authorize"), 405, "invalid_request", "method_not_allowed")


def test_every_response_has_a_request_id(live: Live) -> None:
    responses = [
        live.client.get("/healthz"),
        live.client.get("/metrics"),
        live.client.get("/openapi.json"),
        live.client.get("/.well-known/jwks.json"),
        live.client.get("/v1/agents", headers=live.admin),
        live.client.get("/v1/audit/export", headers=live.admin),
        live.client.get("/v1/nothing"),
        live.client.post("/v1/authorize", json={}),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)


def test_conflicts_and_not_found(live: Live) -> None:
    ceiling = {"tools": ["docs/read"], "privileges": ["read"]}
    body = {"name": "twice", "owner": "sam@acme.example", "ceiling": ceiling}
    assert live.client.post("/v1/agents", json=body, headers=live.admin).status_code == 201
    _problem(live.client.post("/v1/agents", json=body, headers=live.admin), 409, "conflict")
    _problem(live.client.get("/v1/agents/nobody", headers=live.admin), 404, "not_found")
    _problem(live.client.get("/v1/tasks/tsk_nothing", headers=live.admin), 404, "not_found")
    bad_ceiling = {**body, "name": "bad-ceiling", "ceiling": {**ceiling, "tools": ["no/such-tool"]}}
    _problem(
        live.client.post("/v1/agents", json=bad_ceiling, headers=live.admin), 400, "invalid_request"
    )


def test_routes_without_a_body_take_none_or_an_empty_object(live: Live) -> None:
    for content in (b"", b"{}"):
        headers = {**live.admin, "Content-Type": "application/json"}
        ok = live.client.post("/v1/audit/verify", content=content, headers=headers)
        assert ok.status_code == 200, ok.text
    refused = live.client.post("/v1/audit/verify", json={"deep": True}, headers=live.admin)
    _problem(refused, 400, "invalid_request", "schema")


def test_unknown_query_parameters_are_refused(live: Live) -> None:
    typo = live.client.get("/v1/audit", params={"agnet": "x"}, headers=live.admin)
    _problem(typo, 400, "invalid_request", "unknown_query_parameter")
    assert "agnet" in typo.json()["detail"]
    _problem(live.client.get("/healthz?verbose=1"), 400, "invalid_request")
