"""A typed HTTP client for Remit's API v1 (docs/http-api.md). It translates; it never decides.

``RemitClient`` implements ``remit.agent.RemitApi``, so an ``AgentSession``
works over HTTP exactly as it does in-process, and offers the operator use
cases under the names ``remit.service.Remit`` gives them. Refusals arrive as
the same exception classes the service raises (``error_for_code`` on the
problem's stable code); a server that cannot be reached raises ``RemitError``
with reason ``unreachable``.

Credentials are kept apart: agent operations send only the agent's own token
and proof; the operator's admin token goes only with operator operations.
Neither ever appears in an error message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx

from remit import __version__
from remit.core.audit import b64url
from remit.core.catalog import Catalog, catalog_from_data
from remit.core.identity import Agent, AgentStatus, Mode, ceiling_from_data
from remit.core.mandate import Mandate
from remit.core.pipeline import Decision, Obligation, Outcome
from remit.core.secrets import Secret
from remit.core.task_end import TaskEnd
from remit.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    InvalidToken,
    NotFound,
    RemitError,
    StoreUnavailable,
    error_for_code,
)
from remit.service import Attestation, TaskGrant

T = TypeVar("T")

PROOF_HEADER = "Remit-Proof"
DEFAULT_URL = "http://127.0.0.1:8750"
MAX_ERROR_DETAIL = 4096  # a policy refusal lists its problems; still bounded

# Agent operations and the endpoint each proof must name (``htm``/``htu``).
AGENT_ENDPOINTS: Mapping[str, str] = {
    "renew_identity": "/v1/identity/renew",
    "open_task": "/v1/tasks",
    "end_task": "/v1/tasks/end",
    "authorize": "/v1/authorize",
    "delegate": "/oauth/token",
    "task_catalog": "/v1/tasks/catalog",
    "task_pin_check": "/v1/tasks/pins/check",
}
ACTOR_PROOF_HEADER = "Remit-Actor-Proof"

# When a failure carries no problem document (a proxy, an unknown route), its status says enough.
_BY_STATUS: Mapping[int, type[RemitError]] = {
    400: InvalidRequest,
    401: InvalidToken,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    503: StoreUnavailable,
}

Auth = Literal["admin", "none"] | Secret


class RemitClient:
    """Remit over HTTP. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        base_url: str,
        *,
        admin_token: str | Secret | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidRequest("the Remit URL must be http(s)://host[:port]", reason="bad_url")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise InvalidRequest(
                "the Remit URL must not carry credentials, a query or a fragment", reason="bad_url"
            )
        # Normalized once (lower-case scheme and host, no default port): the proofs name it.
        self.base_url = str(httpx.URL(parts._replace(scheme=parts.scheme.lower()).geturl()))
        self.base_url = self.base_url.rstrip("/")
        if isinstance(admin_token, str):
            admin_token = Secret(admin_token)
        self._admin_token = admin_token
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": f"remit-client/{__version__}", "Accept": "application/json"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemitClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemitClient({self.base_url!r})"

    # ------------------------------------------------------------------ plumbing
    def _headers(
        self, auth: Auth, proof: str | None, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        headers: dict[str, str] = dict(extra or {})
        if isinstance(auth, Secret):
            headers["Authorization"] = f"Bearer {auth.reveal()}"
        elif auth == "admin" and self._admin_token is not None:
            headers["Authorization"] = f"Bearer {self._admin_token.reveal()}"
        if proof is not None:
            headers[PROOF_HEADER] = proof
        return headers

    def _send(
        self,
        method: str,
        path: str,
        *,
        auth: Auth = "admin",
        proof: str | None = None,
        body: object = None,
        params: Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method,
                path,
                headers=self._headers(auth, proof, headers),
                json=body,
                params=list(params) if params else None,
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None
        if response.is_error:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError:
            raise _malformed() from None
        if not isinstance(data, dict):
            raise _malformed()
        return data

    def _agent(self, method: str, path: str, **kwargs: Any) -> Agent:
        return _parse(_agent_from, self._json(method, path, **kwargs))

    # ------------------------------------------------------------------ the agent side (RemitApi)
    def proof_binding(self, op: str) -> tuple[str, str]:
        """The (method, URL) a proof for agent operation ``op`` must name."""
        try:
            path = AGENT_ENDPOINTS[op]
        except KeyError:
            raise InvalidRequest("unknown agent operation", reason="bad_operation") from None
        # The server reads it back from the request line and Host header: same normalization.
        return "POST", self.base_url + path

    def attestation_challenge(self) -> str:
        data = self._json("POST", "/v1/attest/challenge", auth="none", body={})
        return _parse(lambda d: _str(d["nonce"]), data)

    def attest(
        self, *, join_token: str, public_jwk: Mapping[str, Any], nonce: str, signature: bytes
    ) -> Attestation:
        body = {
            "join_token": join_token,
            "public_jwk": dict(public_jwk),
            "nonce": nonce,
            "signature": b64url(signature),
        }
        return _parse(_attestation_from, self._json("POST", "/v1/attest", auth="none", body=body))

    def renew_identity(self, identity_token: str, proof: str) -> Attestation:
        data = self._json(
            "POST",
            AGENT_ENDPOINTS["renew_identity"],
            auth=Secret(identity_token),
            proof=proof,
            body={},
        )
        return _parse(_attestation_from, data)

    def open_task(
        self, identity_token: str, proof: str, *, principal: str, intent: Mapping[str, Any]
    ) -> TaskGrant:
        data = self._json(
            "POST",
            AGENT_ENDPOINTS["open_task"],
            auth=Secret(identity_token),
            proof=proof,
            body={"principal": principal, "intent": dict(intent)},
        )
        return _parse(_grant_from, data)

    def delegate(
        self,
        parent_task_token: str,
        parent_proof: str,
        actor_identity_token: str,
        actor_proof: str,
        *,
        narrowing: Mapping[str, Any],
    ) -> TaskGrant:
        """RFC 8693 token exchange: a narrower child task for the actor (agent B)."""
        body = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": parent_task_token,
            "subject_token_type": "urn:remit:params:oauth:token-type:task",
            "actor_token": actor_identity_token,
            "actor_token_type": "urn:remit:params:oauth:token-type:identity",
            "remit_mandate": dict(narrowing),
        }
        data = self._json(
            "POST",
            AGENT_ENDPOINTS["delegate"],
            auth="none",
            proof=parent_proof,
            headers={ACTOR_PROOF_HEADER: actor_proof},
            body=body,
        )
        return _parse(_grant_from, data)

    def end_task(self, task_token: str, proof: str) -> list[str]:
        return list(self.end_task_report(task_token, proof).closed)

    def end_task_report(self, task_token: str, proof: str) -> TaskEnd:
        """``end_task``, also naming the leases still outstanding downstream (BRK-04)."""
        data = self._json(
            "POST", AGENT_ENDPOINTS["end_task"], auth=Secret(task_token), proof=proof, body={}
        )
        return _parse(_task_end, data)

    def authorize(
        self,
        *,
        task_token: str,
        proof: str,
        tool: str,
        arguments: Mapping[str, Any],
        approval: str | None = None,
    ) -> Decision:
        body: dict[str, Any] = {"tool": tool, "arguments": dict(arguments)}
        if approval is not None:
            body["approval"] = approval
        data = self._json(
            "POST", AGENT_ENDPOINTS["authorize"], auth=Secret(task_token), proof=proof, body=body
        )
        return _parse(_decision_from, data)

    def task_catalog(self, task_token: str, proof: str) -> Catalog:
        """The catalog entries of the task's mandate (proof over ``TASK_CATALOG_OP``, ``{}``)."""
        data = self._json(
            "POST", AGENT_ENDPOINTS["task_catalog"], auth=Secret(task_token), proof=proof, body={}
        )
        return _parse(_task_catalog_from, data)

    def check_task_tool_definition(
        self, task_token: str, proof: str, tool: str, definition: Mapping[str, Any]
    ) -> None:
        """Raise Denied (``tool_definition_changed`` / ``tool_not_admitted``) unless admitted,
        Forbidden (``not_in_mandate``) for a tool outside the task's mandate. The proof is
        over ``TASK_PIN_CHECK_OP`` and ``task_pin_body(tool, definition)``."""
        self._json(
            "POST",
            AGENT_ENDPOINTS["task_pin_check"],
            auth=Secret(task_token),
            proof=proof,
            body=_pin_body(tool, definition),
        )

    # ------------------------------------------------------------------ agents and principals
    def register_agent(
        self,
        name: str,
        *,
        owner: str,
        ceiling: Mapping[str, Any],
        description: str = "",
        mode: str = "enforce",
    ) -> Agent:
        body = {
            "name": name,
            "owner": owner,
            "description": description,
            "ceiling": dict(ceiling),
            "mode": mode,
        }
        return self._agent("POST", "/v1/agents", body=body)

    def list_agents(self) -> list[Agent]:
        data = self._json("GET", "/v1/agents")
        return _parse(lambda d: [_agent_from(a) for a in _list(d["agents"])], data)

    def get_agent(self, name: str) -> Agent:
        """``name`` is the agent's name or its SPIFFE ID."""
        return self._agent("GET", _agent_path(name))

    def effective_permissions(self, name: str, *, task_id: str | None = None) -> dict[str, Any]:
        """What the agent (or one of its tasks) can really do: ``{agent_id, task_id,
        policy_version, permissions: [{tool, privilege, destination_class, taint, allowed,
        reasons}]}``."""
        params = [("task_id", task_id)] if task_id is not None else None
        return self._json("GET", _agent_path(name, "effective-permissions"), params=params)

    def blast_radius(self, name: str, *, days: int | None = None) -> dict[str, Any]:
        """The agent's blast radius (``remit.core.blast_radius``): ``{format, agent_id,
        policy_version, days, summary, nodes, edges, findings}``; usage from the last
        ``days`` days of the audit log (server default 30)."""
        params = [("days", str(days))] if days is not None else None
        return self._json("GET", _agent_path(name, "blast-radius"), params=params)

    def import_inventory(
        self, credentials: Sequence[Mapping[str, Any]], *, source_sha256: str | None = None
    ) -> dict[str, Any]:
        """Store an NHI inventory (its JSON form's rows), replacing the stored one:
        ``{import_id, source_sha256, imported_by, imported_at, credentials}``."""
        body: dict[str, Any] = {"credentials": [dict(row) for row in credentials]}
        if source_sha256 is not None:
            body["source_sha256"] = source_sha256
        return self._json("PUT", "/v1/inventory", body=body)

    def inventory_report(self, *, max_age_days: int | None = None) -> dict[str, Any]:
        """The sprawl report over the stored NHI inventory (``remit.reports.report_data``)."""
        params = [("max_age_days", str(max_age_days))] if max_age_days is not None else None
        return self._json("GET", "/v1/inventory/report", params=params)

    def suspend_agent(self, name: str, *, reason: str = "operator") -> Agent:
        return self._agent("POST", _agent_path(name, "suspend"), body={"reason": reason})

    def resume_agent(self, name: str) -> Agent:
        return self._agent("POST", _agent_path(name, "resume"), body={})

    def retire_agent(self, name: str, *, reason: str = "operator") -> Agent:
        return self._agent("POST", _agent_path(name, "retire"), body={"reason": reason})

    def set_agent_mode(self, name: str, mode: str) -> Agent:
        return self._agent("PUT", _agent_path(name, "mode"), body={"mode": mode})

    def create_join_token(self, name: str, *, ttl_seconds: int | None = None) -> Secret:
        """A single-use join token for one new instance; shown once, never logged."""
        body = {} if ttl_seconds is None else {"ttl_seconds": ttl_seconds}
        data = self._json("POST", _agent_path(name, "join-tokens"), body=body)
        return _parse(lambda d: Secret(_str(d["join_token"])), data)

    def register_principal(
        self, principal_id: str, *, display_name: str = "", identifiers: Sequence[str] = ()
    ) -> dict[str, Any]:
        body = {
            "principal_id": principal_id,
            "display_name": display_name,
            "identifiers": list(identifiers),
        }
        return self._json("POST", "/v1/principals", body=body)

    # ------------------------------------------------------------------ tasks
    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/tasks/{_segment(task_id)}")

    def revoke_task(self, task_id: str, *, reason: str = "operator") -> list[str]:
        return list(self.revoke_task_report(task_id, reason=reason).closed)

    def revoke_task_report(self, task_id: str, *, reason: str = "operator") -> TaskEnd:
        """``revoke_task``, also naming the leases still outstanding downstream (BRK-04)."""
        data = self._json("POST", f"/v1/tasks/{_segment(task_id)}/revoke", body={"reason": reason})
        return _parse(_task_end, data)

    # ------------------------------------------------------------------ approvals (approver scope)
    def list_approvals(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params = [("limit", str(limit))]
        if status is not None:
            params.append(("status", status))
        data = self._json("GET", "/v1/approvals", params=params)
        return [_dict(a) for a in _list(data.get("approvals"))]

    def get_approval(self, approval_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/approvals/{_segment(approval_id)}")

    def approve(self, approval_id: str, *, reason: str = "") -> dict[str, Any]:
        path = f"/v1/approvals/{_segment(approval_id)}/approve"
        return self._json("POST", path, body={"reason": reason})

    def deny(self, approval_id: str, *, reason: str = "") -> dict[str, Any]:
        path = f"/v1/approvals/{_segment(approval_id)}/deny"
        return self._json("POST", path, body={"reason": reason})

    # ------------------------------------------------------------------ catalog and policies
    def get_catalog(self) -> dict[str, Any]:
        return self._json("GET", "/v1/catalog")

    def put_catalog(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("PUT", "/v1/catalog", body=dict(manifest))

    def validate_catalog(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/catalog/validate", body=dict(manifest))

    # Tool-definition pins: the same names as the service, so a gateway can use either.
    def list_tool_pins(self) -> list[dict[str, Any]]:
        data = self._json("GET", "/v1/catalog/pins")
        return _parse(lambda d: [dict(p) for p in d["pins"]], data)

    def admit_tool_definition(
        self, tool: str, definition: Mapping[str, Any], *, by: str = "operator"
    ) -> str:
        """Pin ``definition`` for ``tool`` (``by`` is taken from the admin token's name)."""
        data = self._json("POST", "/v1/catalog/pins", body=_pin_body(tool, definition))
        return _parse(lambda d: _str(d["digest"]), data)

    def check_tool_definition(self, tool: str, definition: Mapping[str, Any]) -> None:
        """Raise Denied (``tool_definition_changed`` / ``tool_not_admitted``) unless admitted."""
        self._json("POST", "/v1/catalog/pins/check", body=_pin_body(tool, definition))

    def list_policies(self) -> dict[str, Any]:
        return self._json("GET", "/v1/policies")

    def upload_policies(self, files: Mapping[str, str]) -> str:
        """Validate ``{file name: Cedar text}`` as a whole and make it the active version."""
        data = self._json("POST", "/v1/policies", body={"files": dict(files)})
        return _parse(lambda d: _str(d["version"]), data)

    def validate_policies(self, files: Mapping[str, str]) -> dict[str, Any]:
        return self._json("POST", "/v1/policies/validate", body={"files": dict(files)})

    def activate_policy(self, version: str) -> str:
        data = self._json("POST", f"/v1/policies/{_segment(version)}/activate", body={})
        return _parse(lambda d: _str(d["version"]), data)

    def explain(self, case: Mapping[str, Any]) -> dict[str, Any]:
        """Evaluate one policy case (``{"tool", "action"?, "agent"?, "context"?}``)."""
        return self._json("POST", "/v1/policies/explain", body=dict(case))

    # ------------------------------------------------------------------ anomaly alerts
    def list_alerts(
        self,
        *,
        since: float | None = None,
        agent: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Anomaly alerts, newest first: ``[{id, at, agent, task, decision, tool, score,
        kinds, findings, explanation, response, enforced, mode}]`` (docs/alerts.md)."""
        params = [("limit", str(limit))]
        for key, value in (("since", since), ("agent", agent), ("kind", kind)):
            if value is not None:
                params.append((key, str(value)))
        data = self._json("GET", "/v1/alerts", params=params)
        return [_dict(a) for a in _list(data.get("alerts"))]

    # ------------------------------------------------------------------ audit
    def query_audit(
        self,
        *,
        kind: str | Sequence[str] | None = None,
        agent: str | None = None,
        task: str | None = None,
        principal: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``{"records": [...], "next_after_seq": int | None}``; every given filter must match."""
        params: list[tuple[str, str]] = []
        kinds = [kind] if isinstance(kind, str) else list(kind or ())
        params.extend(("kind", k) for k in kinds)
        for key, value in (
            ("agent", agent),
            ("task", task),
            ("principal", principal),
            ("outcome", outcome),
            ("since", since),
            ("until", until),
            ("after_seq", after_seq),
            ("limit", limit),
        ):
            if value is not None:
                params.append((key, str(value)))
        return self._json("GET", "/v1/audit", params=params)

    def export_audit(self, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Every record after ``after_seq``, streamed (ndjson), in chain order."""
        request = self._http.build_request(
            "GET",
            "/v1/audit/export",
            params={"after_seq": str(after_seq)},
            headers={**self._headers("admin", None), "Accept": "application/x-ndjson"},
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None
        try:
            if response.is_error:
                response.read()
                raise _error_from(response)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise _malformed() from None
                if not isinstance(record, dict):
                    raise _malformed()
                yield record
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None
        finally:
            response.close()

    def verify_audit(self) -> dict[str, Any]:
        return self._json("POST", "/v1/audit/verify", body={})

    # ------------------------------------------------------------------ keys, emergency stops
    def rotate_keys(self) -> dict[str, Any]:
        return self._json("POST", "/v1/keys/rotate", body={})

    def kill_switch(self, engaged: bool, agent: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"engaged": engaged}
        if agent is not None:
            body["agent"] = _agent_name(agent)
        return self._json("POST", "/v1/kill-switch", body=body)

    # ------------------------------------------------------------------ operator tokens
    def list_admin_tokens(self) -> list[dict[str, Any]]:
        data = self._json("GET", "/v1/admin-tokens")
        return _parse(lambda d: [_dict(t) for t in _list(d["tokens"])], data)

    def create_admin_token(
        self, name: str, scopes: Sequence[str], ttl_seconds: int | None = None
    ) -> tuple[str, Secret]:
        """A new operator token; the secret is shown once and stored only as a hash."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        data = self._json("POST", "/v1/admin-tokens", body=body)
        return _parse(lambda d: (_str(d["token_id"]), Secret(_str(d["token"]))), data)

    def revoke_admin_token(self, token_id: str) -> None:
        self._send("DELETE", f"/v1/admin-tokens/{_segment(token_id)}")

    # ------------------------------------------------------------------ secrets and leases
    def list_secrets(self) -> list[dict[str, Any]]:
        """Names, versions and dates of the sealed secrets (never values)."""
        return [_dict(x) for x in _list(self._json("GET", "/v1/secrets").get("secrets"))]

    def put_secret(self, name: str, value: Secret) -> dict[str, Any]:
        """Seal ``value`` as the next version of ``name`` (admin); it is never echoed."""
        body = {"value": value.reveal()}
        return self._json("PUT", f"/v1/secrets/{_segment(name)}", body=body)

    def rotate_master_key(self) -> dict[str, Any]:
        """A new master key on the server, every data key re-wrapped (admin): key ids and
        counts (``old_kid``, ``new_kid``, ``rewrapped``, ``retired``, ...)."""
        return self._json("POST", "/v1/secrets/rotate-master", body={})

    def rewrap_secrets(self) -> dict[str, Any]:
        """Re-wrap everything not wrapped by the active master key (admin); which other
        keys are still needed (``still_needed``, empty after a complete rewrap)."""
        return self._json("POST", "/v1/secrets/rewrap", body={})

    def list_leases(
        self,
        *,
        task_id: str | None = None,
        state: str | None = None,
        outstanding: bool = False,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        params = [("limit", str(limit))]
        if task_id is not None:
            params.append(("task", task_id))
        if state is not None:
            params.append(("state", state))
        if outstanding:
            params.append(("outstanding", "true"))
        data = self._json("GET", "/v1/leases", params=params)
        return [_dict(x) for x in _list(data.get("leases"))]

    def get_lease(self, lease_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/leases/{_segment(lease_id)}")

    def revoke_lease(self, lease_id: str, *, reason: str = "operator") -> dict[str, Any]:
        path = f"/v1/leases/{_segment(lease_id)}/revoke"
        return self._json("POST", path, body={"reason": reason})

    def list_providers(self) -> list[dict[str, Any]]:
        return [_dict(x) for x in _list(self._json("GET", "/v1/providers").get("providers"))]

    def provider_jwks(self, name: str) -> dict[str, Any]:
        """A signed-token provider's public keys (no authentication)."""
        return self._json("GET", f"/v1/providers/{_segment(name)}/jwks", auth="none")

    # ------------------------------------------------------------------ public
    def jwks(self) -> dict[str, Any]:
        return self._json("GET", "/.well-known/jwks.json", auth="none")

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz", auth="none")

    def ready(self) -> dict[str, Any]:
        """Readiness; a server that is not ready raises (``store_unavailable`` or the like)."""
        return self._json("GET", "/readyz", auth="none")


# ---------------------------------------------------------------------- errors


def _unreachable(base_url: str, exc: httpx.TransportError) -> RemitError:
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return RemitError(
        f"cannot reach Remit at {base_url}: the connection {what} ({type(exc).__name__})",
        reason="unreachable",
    )


def _malformed() -> RemitError:
    return RemitError("Remit sent a response this client cannot read", reason="bad_response")


def _error_from(response: httpx.Response) -> RemitError:
    """The service's own exception for a problem document; a status-based one otherwise."""
    problem: object = None
    if response.headers.get("content-type", "").startswith(
        ("application/problem+json", "application/json")
    ):
        try:
            problem = response.json()
        except ValueError:
            problem = None
    if isinstance(problem, dict) and isinstance(problem.get("code"), str):
        cls = error_for_code(problem["code"])
        detail = problem.get("detail")
        message = detail if isinstance(detail, str) and detail else str(problem.get("title", ""))
        reason = problem.get("reason")
        details: dict[str, Any] = {"status": response.status_code}
        if isinstance(problem.get("request_id"), str):
            details["request_id"] = problem["request_id"]
        listed = problem.get("problems")
        if isinstance(listed, list):
            details["problems"] = tuple(str(p)[:MAX_ERROR_DETAIL] for p in listed[:1000])
        return cls(
            message[:MAX_ERROR_DETAIL] or f"HTTP {response.status_code}",
            reason=reason if isinstance(reason, str) else None,
            **details,
        )
    cls = _BY_STATUS.get(response.status_code, RemitError)
    return cls(
        f"Remit answered HTTP {response.status_code} without a problem document",
        reason=f"http_{response.status_code}",
        status=response.status_code,
    )


# ---------------------------------------------------------------------- wire -> domain


def _parse(build: Callable[[dict[str, Any]], T], data: dict[str, Any]) -> T:
    """Run ``build(data)``; a response of the wrong shape is a client-visible error."""
    try:
        return build(data)
    except (KeyError, TypeError, ValueError, RemitError):
        raise _malformed() from None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return float(value)


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return value


def _strs(value: object) -> tuple[str, ...]:
    return tuple(_str(v) for v in _list(value))


def _task_end(data: dict[str, Any]) -> TaskEnd:
    # A server from before BRK-04 does not send ``outstanding_leases``.
    return TaskEnd(_strs(data["closed"]), _strs(data.get("outstanding_leases", [])))


def _task_catalog_from(data: dict[str, Any]) -> Catalog:
    tools = [_dict(t) for t in _list(data["tools"])]
    return catalog_from_data({"tools": tools}) if tools else Catalog({})


def _attestation_from(data: dict[str, Any]) -> Attestation:
    return Attestation(
        instance_id=_str(data["instance_id"]),
        agent_id=_str(data["agent_id"]),
        identity_token=_str(data["identity_token"]),
        expires_at=_float(data["expires_at"]),
        issued_at=_float(data["issued_at"]),
    )


def _grant_from(data: dict[str, Any]) -> TaskGrant:
    return TaskGrant(
        task_id=_str(data["task_id"]),
        task_token=_str(data["task_token"]),
        expires_at=_float(data["expires_at"]),
        mandate=Mandate.from_data(_dict(data["mandate"])),
        notes=_strs(data.get("notes", [])),
    )


def _decision_from(data: dict[str, Any]) -> Decision:
    obligations = tuple(
        Obligation(_str(o["kind"]), _str(o["ref"])) for o in _list(data.get("obligations", []))
    )
    return Decision(
        decision_id=_str(data["decision_id"]),
        outcome=Outcome(data["outcome"]),
        allowed=bool(data["allowed"]),
        mode=Mode(data["mode"]),
        reasons=_strs(data["reasons"]),
        policy_version=_str(data["policy_version"]),
        task_id=_str(data["task_id"]),
        agent_id=_str(data["agent_id"]),
        instance_id=_str(data["instance_id"]),
        tool=_str(data["tool"]),
        args_digest=_str(data["args_digest"]),
        obligations=obligations,
        shadow_reasons=_strs(data.get("shadow_reasons", [])),
        audit_seq=int(data.get("audit_seq") or 0),
        approval_id=_str(data["approval_id"]) if data.get("approval_id") else None,
    )


def _agent_from(data: object) -> Agent:
    raw = _dict(data)
    return Agent(
        agent_id=_str(raw["agent_id"]),
        name=_str(raw["name"]),
        owner=_str(raw["owner"]),
        description=_str(raw.get("description", "")),
        ceiling=ceiling_from_data(raw["ceiling"]),
        status=AgentStatus(raw["status"]),
        mode=Mode(raw["mode"]),
        created_at=_float(raw["created_at"]),
        updated_at=_float(raw["updated_at"]),
    )


# ---------------------------------------------------------------------- paths


def _agent_name(name_or_id: str) -> str:
    """An agent is addressed by name; a SPIFFE ID (``spiffe://td/agent/<name>``) is accepted."""
    if name_or_id.startswith("spiffe://"):
        _, _, name = name_or_id.partition("/agent/")
        if name:
            return name
    return name_or_id


def _agent_path(name_or_id: str, action: str | None = None) -> str:
    path = f"/v1/agents/{_segment(_agent_name(name_or_id))}"
    return f"{path}/{action}" if action else path


def _segment(value: str) -> str:
    """One path segment, refused rather than escaped if it could change the route."""
    if (
        not value
        or value in (".", "..")
        or any(c in value for c in "/?#%\\ ")
        or not value.isprintable()
    ):
        raise InvalidRequest("the name or id is not a valid path segment", reason="bad_path")
    return value


if TYPE_CHECKING:
    from remit.agent import RemitApi

    def _is_a_remit_api(client: RemitClient) -> RemitApi:
        """Checked by mypy: an AgentSession works over this client unchanged."""
        return client


def _pin_body(tool: str, definition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "tool": tool,
        "definition": {
            "name": definition.get("name"),
            "description": definition.get("description") or "",
            "input_schema": dict(definition.get("input_schema") or {}),
        },
    }
