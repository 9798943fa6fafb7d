"""The operator routes: agents, principals, tasks, catalog, policies, audit, keys, tokens.

Every route needs an admin API token whose scopes cover the route's scope in
``ROUTE_SCOPES``, the one table the routes are built from (and the tests
walk). Handlers are plain ``def``, run in FastAPI's thread pool.
"""

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import Response, StreamingResponse
from starlette.convertors import Convertor, register_url_convertor

from remit.canonical import canonical_bytes_unchecked
from remit.core.audit import AuditRecord
from remit.core.catalog import catalog_from_data
from remit.core.policy import PolicySource
from remit.core.policy_cases import evaluate_case, parse_cases
from remit.errors import InvalidRequest, PolicyInvalid
from remit.http.auth import OperatorCredentials, operator
from remit.http.blast_radius_wire import (
    DEFAULT_DAYS,
    BlastRadiusOut,
    DaysParam,
    blast_radius_out,
)
from remit.http.leases import LEASE_ROUTE_SCOPES, add_lease_routes
from remit.http.problems import BODY_ERRORS, documented
from remit.http.reports_wire import REPORT_ROUTE_SCOPES, add_report_routes
from remit.http.wire import (
    AGENT_NAME_PATTERN,
    AdminTokenCreatedOut,
    AdminTokensOut,
    AgentOut,
    AgentsOut,
    AlertsOut,
    ApprovalOut,
    ApprovalsOut,
    AuditPageOut,
    CatalogManifest,
    CatalogOut,
    ClosedOut,
    CreateAdminTokenRequest,
    EffectivePermissionsOut,
    ExplainOut,
    ExplainRequest,
    JoinTokenOut,
    JoinTokenRequest,
    KeysOut,
    KillSwitchOut,
    KillSwitchRequest,
    ModeRequest,
    PinCheckOut,
    PoliciesOut,
    PolicyFilesRequest,
    PrincipalOut,
    PrincipalRequest,
    ReasonRequest,
    RegisterAgentRequest,
    TaskOut,
    ToolPinOut,
    ToolPinRequest,
    ToolPinsOut,
    ValidationOut,
    VerifyOut,
    VersionOut,
    VoteRequest,
    admin_token_out,
    agent_out,
    alert_out,
    approval_out,
    catalog_out,
    explain_out,
    permission_out,
    policy_version_out,
    principal_out,
    record_data,
    record_out,
    task_out,
    verify_out,
)
from remit.ids import SpiffeId
from remit.service import AdminIdentity, Remit
from remit.store.base import AuditQuery
from remit.visibility import agent_blast_radius

# (method, path template) -> the scope an operator token needs.
ROUTE_SCOPES: Final[dict[tuple[str, str], str]] = {
    ("GET", "/v1/agents"): "readonly",
    ("POST", "/v1/agents"): "admin",
    ("GET", "/v1/agents/{name}"): "readonly",
    ("POST", "/v1/agents/{name}/suspend"): "admin",
    ("POST", "/v1/agents/{name}/resume"): "admin",
    ("POST", "/v1/agents/{name}/retire"): "admin",
    ("PUT", "/v1/agents/{name}/mode"): "admin",
    ("GET", "/v1/agents/{name}/effective-permissions"): "readonly",
    ("GET", "/v1/agents/{name}/blast-radius"): "readonly",
    ("POST", "/v1/agents/{name}/join-tokens"): "admin",
    ("POST", "/v1/principals"): "admin",
    ("GET", "/v1/tasks/{task_id}"): "readonly",
    ("POST", "/v1/tasks/{task_id}/revoke"): "admin",
    ("GET", "/v1/catalog"): "readonly",
    ("PUT", "/v1/catalog"): "admin",
    ("POST", "/v1/catalog/validate"): "readonly",
    ("GET", "/v1/catalog/pins"): "readonly",
    ("POST", "/v1/catalog/pins"): "admin",
    ("POST", "/v1/catalog/pins/check"): "readonly",
    ("GET", "/v1/policies"): "readonly",
    ("POST", "/v1/policies"): "admin",
    ("POST", "/v1/policies/validate"): "readonly",
    ("POST", "/v1/policies/{version}/activate"): "admin",
    ("POST", "/v1/policies/explain"): "readonly",
    ("GET", "/v1/audit"): "auditor",
    ("GET", "/v1/alerts"): "readonly",
    ("GET", "/v1/audit/export"): "auditor",
    ("POST", "/v1/audit/verify"): "auditor",
    ("POST", "/v1/keys/rotate"): "admin",
    ("POST", "/v1/kill-switch"): "admin",
    ("GET", "/v1/admin-tokens"): "admin",
    ("POST", "/v1/admin-tokens"): "admin",
    ("DELETE", "/v1/admin-tokens/{token_id}"): "admin",
    ("GET", "/v1/approvals"): "approver",
    ("GET", "/v1/approvals/{approval_id}"): "approver",
    ("POST", "/v1/approvals/{approval_id}/approve"): "approver",
    ("POST", "/v1/approvals/{approval_id}/deny"): "approver",
    **LEASE_ROUTE_SCOPES,
    **REPORT_ROUTE_SCOPES,
}
SCOPE_EXTENSION: Final = "x-remit-scope"
TASK_ID_CONVERTOR: Final = "remit_task_id"


class TaskIdConvertor(Convertor[str]):
    """Task ids in paths: only ``tsk_...`` routes to a task, so ``/v1/tasks/end`` never does."""

    regex = "tsk_[A-Za-z0-9_-]{16,64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor(TASK_ID_CONVERTOR, TaskIdConvertor())
_NAME = re.compile(AGENT_NAME_PATTERN)
_MAX_SEQ: Final = 2**53 - 1
_EXPORT_CHUNK: Final = 256  # records per streamed chunk

AgentNameParam = Annotated[str, Path(pattern=AGENT_NAME_PATTERN, max_length=64)]
IdParam = Annotated[str, Path(min_length=1, max_length=128)]
Filter = Annotated[str | None, Query(max_length=2048)]
Seconds = Annotated[float | None, Query(allow_inf_nan=False, ge=0, le=1e11)]
AfterSeq = Annotated[int, Query(ge=0, le=_MAX_SEQ)]
ReasonBody = Annotated[ReasonRequest | None, Body()]
VoteBody = Annotated[VoteRequest | None, Body()]
ApprovalStatusFilter = Annotated[
    str | None, Query(pattern="^(pending|approved|denied|consumed)$", max_length=16)
]
ApprovalLimit = Annotated[int, Query(ge=1, le=1000)]
AlertKindFilter = Annotated[
    str | None,
    Query(
        pattern="^(new_tool|new_destination|rate_spike|denial_burst|approval_flood"
        "|unusual_sequence|off_hours)$",
        max_length=32,
    ),
]
TaskIdFilter = Annotated[str | None, Query(pattern="^tsk_[A-Za-z0-9_-]{16,64}$", max_length=68)]


def add_operator_routes(router: APIRouter, remit: Remit) -> None:
    """Add the operator routes to ``router`` (whose route class is strict)."""

    def route(
        method: str, path: str, *errors: int, status_code: int = 200, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        scope = ROUTE_SCOPES[(method, path)]
        responses = {**documented(400, 401, 403, 503, *errors), **kwargs.pop("responses", {})}
        return router.api_route(
            path.replace("{task_id}", "{task_id:" + TASK_ID_CONVERTOR + "}"),
            methods=[method],
            status_code=status_code,
            dependencies=[Depends(operator(remit, scope))],
            responses=responses,
            openapi_extra={SCOPE_EXTENSION: scope},
            tags=["operators"],
            **kwargs,
        )

    def agent_id(name: str) -> str:
        return str(SpiffeId.for_agent(remit.settings.trust_domain, name))

    # ------------------------------------------------------------------ agents
    @route("GET", "/v1/agents", response_model=AgentsOut)
    def list_agents() -> AgentsOut:
        return AgentsOut(agents=[agent_out(a) for a in remit.list_agents()])

    @route("POST", "/v1/agents", *BODY_ERRORS, 409, status_code=201, response_model=AgentOut)
    def register_agent(body: RegisterAgentRequest) -> AgentOut:
        agent = remit.register_agent(
            body.name,
            owner=body.owner,
            ceiling=body.ceiling,
            description=body.description,
            mode=body.mode,
        )
        return agent_out(agent)

    @route("GET", "/v1/agents/{name}", 400, 404, response_model=AgentOut)
    def get_agent(name: AgentNameParam) -> AgentOut:
        return agent_out(remit.get_agent(agent_id(name)))

    @route("POST", "/v1/agents/{name}/suspend", *BODY_ERRORS, 404, 409, response_model=AgentOut)
    def suspend_agent(name: AgentNameParam, body: ReasonBody = None) -> AgentOut:
        reason = body.reason if body else "operator"
        return agent_out(remit.suspend_agent(agent_id(name), reason=reason))

    @route("POST", "/v1/agents/{name}/resume", *BODY_ERRORS, 404, 409, response_model=AgentOut)
    def resume_agent(name: AgentNameParam, body: ReasonBody = None) -> AgentOut:
        return agent_out(remit.resume_agent(agent_id(name)))

    @route("POST", "/v1/agents/{name}/retire", *BODY_ERRORS, 404, 409, response_model=AgentOut)
    def retire_agent(name: AgentNameParam, body: ReasonBody = None) -> AgentOut:
        reason = body.reason if body else "operator"
        return agent_out(remit.retire_agent(agent_id(name), reason=reason))

    @route("PUT", "/v1/agents/{name}/mode", *BODY_ERRORS, 404, response_model=AgentOut)
    def set_agent_mode(name: AgentNameParam, body: ModeRequest) -> AgentOut:
        return agent_out(remit.set_agent_mode(agent_id(name), body.mode))

    @route(
        "GET",
        "/v1/agents/{name}/effective-permissions",
        400,
        404,
        response_model=EffectivePermissionsOut,
    )
    def effective_permissions(
        name: AgentNameParam, task_id: TaskIdFilter = None
    ) -> EffectivePermissionsOut:
        version = remit.policy.version
        found = remit.effective_permissions(agent_id(name), task_id)
        return EffectivePermissionsOut(
            agent_id=agent_id(name),
            task_id=task_id,
            policy_version=version,
            permissions=[permission_out(p) for p in found],
        )

    @route("GET", "/v1/agents/{name}/blast-radius", 400, 404, response_model=BlastRadiusOut)
    def blast_radius(name: AgentNameParam, days: DaysParam = DEFAULT_DAYS) -> BlastRadiusOut:
        return blast_radius_out(agent_blast_radius(remit, agent_id(name), days=days))

    @route(
        "POST",
        "/v1/agents/{name}/join-tokens",
        *BODY_ERRORS,
        404,
        409,
        status_code=201,
        response_model=JoinTokenOut,
    )
    def create_join_token(
        name: AgentNameParam, body: Annotated[JoinTokenRequest | None, Body()] = None
    ) -> JoinTokenOut:
        ttl = body.ttl_seconds if body else None
        # Taken before the token is made: the token expires at this time or a moment later.
        expires_at = remit.clock.now() + (ttl or remit.settings.join_token_ttl_seconds)
        secret = remit.create_join_token(agent_id(name), ttl_seconds=ttl)
        return JoinTokenOut(join_token=secret.reveal(), expires_at=expires_at)

    # ------------------------------------------------------------------ principals and tasks
    @route("POST", "/v1/principals", *BODY_ERRORS, status_code=201, response_model=PrincipalOut)
    def register_principal(body: PrincipalRequest) -> PrincipalOut:
        principal = remit.register_principal(
            body.principal_id, display_name=body.display_name, identifiers=body.identifiers
        )
        return principal_out(principal)

    @route("GET", "/v1/tasks/{task_id}", 400, 404, response_model=TaskOut)
    def get_task(task_id: IdParam) -> TaskOut:
        return task_out(remit.get_task(task_id), remit.clock.now())

    @route("POST", "/v1/tasks/{task_id}/revoke", *BODY_ERRORS, 404, response_model=ClosedOut)
    def revoke_task(task_id: IdParam, body: ReasonBody = None) -> ClosedOut:
        reason = body.reason if body else "operator"
        ended = remit.revoke_task_report(task_id, reason=reason)
        return ClosedOut(
            closed=list(ended.closed), outstanding_leases=list(ended.outstanding_leases)
        )

    # ------------------------------------------------------------------ approvals
    def approver_identity(credentials: OperatorCredentials) -> AdminIdentity:
        # The route dependency has checked the scope already; this names who votes.
        return remit.authenticate_admin(credentials.credentials if credentials else None)

    @route("GET", "/v1/approvals", response_model=ApprovalsOut)
    def list_approvals(
        status: ApprovalStatusFilter = None, limit: ApprovalLimit = 100
    ) -> ApprovalsOut:
        now = remit.clock.now()
        found = remit.list_approvals(status=status, limit=limit)
        return ApprovalsOut(approvals=[approval_out(a, now) for a in found])

    @route("GET", "/v1/approvals/{approval_id}", 404, response_model=ApprovalOut)
    def get_approval(approval_id: IdParam) -> ApprovalOut:
        return approval_out(remit.get_approval(approval_id), remit.clock.now())

    @route(
        "POST",
        "/v1/approvals/{approval_id}/approve",
        *BODY_ERRORS,
        404,
        409,
        response_model=ApprovalOut,
    )
    def approve(
        approval_id: IdParam,
        who: Annotated[AdminIdentity, Depends(approver_identity)],
        body: VoteBody = None,
    ) -> ApprovalOut:
        done = remit.approve(approval_id, by=who, reason=body.reason if body else "")
        return approval_out(done, remit.clock.now())

    @route(
        "POST",
        "/v1/approvals/{approval_id}/deny",
        *BODY_ERRORS,
        404,
        409,
        response_model=ApprovalOut,
    )
    def deny(
        approval_id: IdParam,
        who: Annotated[AdminIdentity, Depends(approver_identity)],
        body: VoteBody = None,
    ) -> ApprovalOut:
        done = remit.deny(approval_id, by=who, reason=body.reason if body else "")
        return approval_out(done, remit.clock.now())

    # ------------------------------------------------------------------ catalog
    @route("GET", "/v1/catalog", response_model=CatalogOut)
    def get_catalog() -> CatalogOut:
        return catalog_out(remit.catalog.tools)

    @route("PUT", "/v1/catalog", *BODY_ERRORS, response_model=CatalogOut)
    def put_catalog(body: CatalogManifest) -> CatalogOut:
        return catalog_out(remit.load_catalog(body.model_dump(exclude_unset=True)).tools)

    @route("POST", "/v1/catalog/validate", *BODY_ERRORS, response_model=ValidationOut)
    def validate_catalog(body: CatalogManifest) -> ValidationOut:
        try:
            catalog_from_data(body.model_dump(exclude_unset=True))
        except InvalidRequest as exc:
            return ValidationOut(valid=False, problems=[exc.message])
        return ValidationOut(valid=True, problems=[])

    # ------------------------------------------------------------------ tool definition pins
    @route("GET", "/v1/catalog/pins", response_model=ToolPinsOut)
    def list_pins() -> ToolPinsOut:
        return ToolPinsOut(
            pins=[
                ToolPinOut(
                    tool=p.tool,
                    digest=p.digest,
                    definition=p.definition,
                    admitted_at=p.admitted_at,
                    admitted_by=p.admitted_by,
                )
                for p in remit.list_tool_pins()
            ]
        )

    @route("POST", "/v1/catalog/pins", *BODY_ERRORS, response_model=ToolPinOut)
    def admit_pin(
        body: ToolPinRequest, who: Annotated[AdminIdentity, Depends(operator(remit, "admin"))]
    ) -> ToolPinOut:
        definition = body.definition.model_dump()
        digest_value = remit.admit_tool_definition(body.tool, definition, by=who.name)
        pin = next(p for p in remit.list_tool_pins() if p.tool == body.tool)
        return ToolPinOut(
            tool=pin.tool,
            digest=digest_value,
            definition=pin.definition,
            admitted_at=pin.admitted_at,
            admitted_by=pin.admitted_by,
        )

    @route("POST", "/v1/catalog/pins/check", *BODY_ERRORS, response_model=PinCheckOut)
    def check_pin(body: ToolPinRequest) -> PinCheckOut:
        """A denial (403 ``denied``, reason ``tool_definition_changed`` or ``tool_not_admitted``)
        when the definition is not the admitted one."""
        remit.check_tool_definition(body.tool, body.definition.model_dump())
        return PinCheckOut(tool=body.tool, admitted=True)

    # ------------------------------------------------------------------ policies
    @route("GET", "/v1/policies", response_model=PoliciesOut)
    def list_policies() -> PoliciesOut:
        versions = [policy_version_out(v) for v in remit.list_policy_versions()]
        return PoliciesOut(active=remit.policy.version, versions=versions)

    @route("POST", "/v1/policies", *BODY_ERRORS, 422, response_model=VersionOut)
    def load_policies(body: PolicyFilesRequest) -> VersionOut:
        return VersionOut(version=remit.load_policies(_sources(body.files.items())))

    @route("POST", "/v1/policies/validate", *BODY_ERRORS, response_model=ValidationOut)
    def validate_policies(body: PolicyFilesRequest) -> ValidationOut:
        try:
            remit.policy.validate(_sources(body.files.items()))
        except PolicyInvalid as exc:
            found = exc.details.get("problems")
            problems = [str(p) for p in found] if isinstance(found, tuple) else [exc.message]
            return ValidationOut(valid=False, problems=problems)
        return ValidationOut(valid=True, problems=[])

    @route(
        "POST",
        "/v1/policies/{version}/activate",
        *BODY_ERRORS,
        404,
        422,
        response_model=VersionOut,
    )
    def activate_policies(version: IdParam) -> VersionOut:
        return VersionOut(version=remit.activate_policy_version(version))

    @route("POST", "/v1/policies/explain", *BODY_ERRORS, response_model=ExplainOut)
    def explain_policy(body: ExplainRequest) -> ExplainOut:
        case: dict[str, Any] = {"tool": body.tool, "expect": "allow", "context": body.context}
        if body.action is not None:
            case["action"] = body.action
        if body.agent is not None:
            case["agent"] = body.agent
        parsed = parse_cases({"cases": [case]}, remit.catalog)[0]
        return explain_out(evaluate_case(remit.policy, parsed).result)

    # ------------------------------------------------------------------ audit
    @route("GET", "/v1/audit", 400, response_model=AuditPageOut)
    def query_audit(
        kind: Annotated[list[str] | None, Query(max_length=32)] = None,
        agent: Filter = None,
        task: Filter = None,
        principal: Filter = None,
        outcome: Filter = None,
        since: Seconds = None,
        until: Seconds = None,
        after_seq: AfterSeq = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AuditPageOut:
        if agent is not None and _NAME.match(agent):
            agent = agent_id(agent)  # a name is short for the agent's SPIFFE ID
        query = AuditQuery(
            kinds=tuple(kind or ()),
            agent=agent,
            task=task,
            principal=principal,
            outcome=outcome,
            since=since,
            until=until,
            after_seq=after_seq,
            limit=limit,
        )
        records = remit.query_audit(query)
        next_after = records[-1].seq if len(records) == limit else None
        return AuditPageOut(records=[record_out(r) for r in records], next_after_seq=next_after)

    @route(
        "GET",
        "/v1/audit/export",
        400,
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "every record after `after_seq`, one JSON object per line",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            }
        },
    )
    def export_audit(after_seq: AfterSeq = 0) -> StreamingResponse:
        remit.audit.flush()  # everything appended so far is in the export
        return StreamingResponse(
            _ndjson(remit.audit.records(after_seq)), media_type="application/x-ndjson"
        )

    # ------------------------------------------------------------------ anomaly alerts
    @route("GET", "/v1/alerts", 400, response_model=AlertsOut)
    def list_alerts(
        since: Seconds = None,
        agent: Filter = None,
        kind: AlertKindFilter = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AlertsOut:
        if agent is not None and _NAME.match(agent):
            agent = agent_id(agent)  # a name is short for the agent's SPIFFE ID
        found = remit.list_alerts(since=since, agent=agent, kind=kind, limit=limit)
        return AlertsOut(alerts=[alert_out(a) for a in found])

    @route("POST", "/v1/audit/verify", *BODY_ERRORS, response_model=VerifyOut)
    def verify_audit() -> VerifyOut:
        return verify_out(remit.verify_audit())

    # ------------------------------------------------------------------ keys and emergency stops
    @route("POST", "/v1/keys/rotate", *BODY_ERRORS, response_model=KeysOut)
    def rotate_keys() -> KeysOut:
        active = remit.rotate_signing_keys()
        return KeysOut(active_kid=active, kids=[k.kid for k in remit.keys.keyset()])

    @route("POST", "/v1/kill-switch", *BODY_ERRORS, 404, response_model=KillSwitchOut)
    def kill_switch(body: KillSwitchRequest) -> KillSwitchOut:
        target = agent_id(body.agent) if body.agent is not None else None
        remit.set_kill_switch(body.engaged, agent_id=target)
        return KillSwitchOut(engaged=body.engaged, agent=body.agent)

    # ------------------------------------------------------------------ operator tokens
    @route("GET", "/v1/admin-tokens", response_model=AdminTokensOut)
    def list_admin_tokens() -> AdminTokensOut:
        return AdminTokensOut(tokens=[admin_token_out(t) for t in remit.list_admin_tokens()])

    @route(
        "POST",
        "/v1/admin-tokens",
        *BODY_ERRORS,
        status_code=201,
        response_model=AdminTokenCreatedOut,
    )
    def create_admin_token(body: CreateAdminTokenRequest) -> AdminTokenCreatedOut:
        token_id, secret = remit.create_admin_token(
            body.name, scopes=body.scopes, ttl_seconds=body.ttl_seconds
        )
        return AdminTokenCreatedOut(token_id=token_id, token=secret.reveal())

    @route(
        "DELETE",
        "/v1/admin-tokens/{token_id}",
        *BODY_ERRORS,
        404,
        status_code=204,
        response_class=Response,
    )
    def revoke_admin_token(token_id: IdParam) -> Response:
        remit.revoke_admin_token(token_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ secrets and leases
    add_lease_routes(router, remit, route)

    # ------------------------------------------------------------------ reports
    add_report_routes(router, remit, route)


def _sources(files: Iterable[tuple[str, str]]) -> list[PolicySource]:
    return [PolicySource(name, text) for name, text in sorted(files)]


def _ndjson(records: Iterator[AuditRecord]) -> Iterator[bytes]:
    chunk: list[bytes] = []
    for record in records:
        chunk.append(canonical_bytes_unchecked(record_data(record)) + b"\n")
        if len(chunk) >= _EXPORT_CHUNK:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
