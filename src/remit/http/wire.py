"""Wire models: the JSON shapes of HTTP API v1 (docs/http-api.md), and nothing else.

Requests are strict (no coercion) and closed (``extra="forbid"``), with size
limits on every field; grammar and meaning stay in the service, which checks
them again. Responses are built from the core's frozen dataclasses by the
``*_out`` functions at the bottom.
"""

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from remit.core.analysis import Permission
from remit.core.approvals import Approval
from remit.core.audit import AuditRecord, ChainReport
from remit.core.catalog import ToolSpec
from remit.core.identity import Agent, Principal
from remit.core.monitor import Alert
from remit.core.pipeline import Decision
from remit.core.policy import PolicyResult, explain
from remit.core.tasks import Task
from remit.service import Attestation, TaskGrant
from remit.store.base import AdminTokenRecord, PolicyVersionRecord

# Grammars that are also published in the OpenAPI document (they mirror remit.ids and
# remit.core.catalog, which remain the checks that count).
AGENT_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$"
PRINCIPAL_PATTERN = r"^[a-z]{2,16}:[A-Za-z0-9._@+-]{1,200}$"
TOOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_.-]{0,62}$"


def _integral(value: object) -> object:
    """JSON has one number type: ``5.0`` is the integer 5 (strings stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
Short = Annotated[str, StringConstraints(max_length=256)]
Text = Annotated[str, StringConstraints(max_length=4096)]
AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME_PATTERN, max_length=64)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Json = dict[str, Any]
ModeName = Literal["enforce", "shadow"]
DestinationKindName = Literal["email", "url", "domain", "account", "user", "channel", "phone"]
Scope = Literal["admin", "approver", "auditor", "readonly"]


class Request(BaseModel):
    """A request body: closed, strict, limited."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --------------------------------------------------------------------------- errors


class Problem(Response):
    """RFC 9457 problem details, with Remit's stable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str
    reason: str | None = Field(
        default=None, description="a short machine-readable detail, e.g. binding_mismatch"
    )
    problems: list[str] | None = Field(
        default=None, description="every problem found, for a refused policy set"
    )


# --------------------------------------------------------------------------- public


class HealthOut(Response):
    status: str


class JwksOut(Response):
    keys: list[dict[str, str]]


class ChallengeOut(Response):
    nonce: str


class AttestRequest(Request):
    join_token: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    public_jwk: Annotated[dict[Short, Short], Field(max_length=16)]
    nonce: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    signature: Annotated[
        str,
        StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", max_length=256),
        Field(description="base64url (no padding) raw r||s ES256 signature"),
    ]


class AttestationOut(Response):
    instance_id: str
    agent_id: str
    identity_token: str
    issued_at: float
    expires_at: float


# --------------------------------------------------------------------------- agents' calls


class EmptyRequest(Request):
    """``{}``: the operation is named by the route, the subject by the bearer token."""


class OpenTaskRequest(Request):
    principal: Annotated[str, StringConstraints(pattern=PRINCIPAL_PATTERN, max_length=256)]
    intent: Json


class TaskGrantOut(Response):
    task_id: str
    task_token: str
    expires_at: float
    mandate: Json
    notes: list[str]


# Names of token types, not secrets.
TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
TASK_TOKEN_TYPE: Final = "urn:remit:params:oauth:token-type:task"  # noqa: S105
IDENTITY_TOKEN_TYPE: Final = "urn:remit:params:oauth:token-type:identity"  # noqa: S105
Token = Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class TokenExchangeRequest(Request):
    """RFC 8693 token exchange, as JSON: A's task token (subject) and B's identity
    token (actor), with ``remit_mandate``, the narrowing B's sub-task gets."""

    grant_type: Literal["urn:ietf:params:oauth:grant-type:token-exchange"]
    subject_token: Token
    subject_token_type: Literal["urn:remit:params:oauth:token-type:task"]
    actor_token: Token
    actor_token_type: Literal["urn:remit:params:oauth:token-type:identity"]
    remit_mandate: Json


class TokenExchangeOut(TaskGrantOut):
    access_token: str  # the child task token (also ``task_token``)
    issued_token_type: Literal["urn:remit:params:oauth:token-type:task"]
    token_type: Literal["N_A"]  # RFC 8693: not a bearer token; every use needs B's proof
    expires_in: int


class ClosedOut(Response):
    """A task end: the tasks closed now, and (BRK-04) the leases of the task and those
    closed with it whose downstream revocation has not succeeded yet (state ``revoking``,
    retried by the sweeper; empty when everything was revoked)."""

    closed: list[str]
    outstanding_leases: list[str]


class AuthorizeRequest(Request):
    tool: Annotated[str, StringConstraints(pattern=TOOL_PATTERN, max_length=127)]
    arguments: Json
    approval: Text | None = None


class ObligationOut(Response):
    kind: str
    ref: str


class DecisionOut(Response):
    decision_id: str
    outcome: Literal["allow", "deny", "approval_required"]
    allowed: bool
    would_deny: bool
    mode: ModeName
    reasons: list[str]
    policy_version: str
    task_id: str
    agent_id: str
    instance_id: str
    tool: str
    args_digest: str
    obligations: list[ObligationOut]
    shadow_reasons: list[str]
    audit_seq: int
    explanation: str
    approval_id: str | None = None  # the request to approve, or the approval used


# --------------------------------------------------------------------------- operators


class RegisterAgentRequest(Request):
    name: AgentName
    owner: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    ceiling: Json
    mode: ModeName = "enforce"


class AgentOut(Response):
    agent_id: str
    name: str
    owner: str
    description: str
    ceiling: Json
    status: Literal["active", "suspended", "retired"]
    mode: ModeName
    created_at: float
    updated_at: float


class AgentsOut(Response):
    agents: list[AgentOut]


class PermissionOut(Response):
    tool: str
    privilege: Literal["read", "write", "act"]
    destination_class: Literal["none", "explicit", "by_pattern", "outside"]
    taint: Literal["none", "untrusted", "confidential"]
    allowed: bool
    reasons: list[str]


class EffectivePermissionsOut(Response):
    agent_id: str
    task_id: str | None
    policy_version: str
    permissions: list[PermissionOut]


class ReasonRequest(Request):
    reason: Reason = "operator"


class VoteRequest(Request):
    reason: Annotated[str, StringConstraints(max_length=256)] = ""


class VoteOut(Response):
    approver: str
    approve: bool
    reason: str
    at: float


class ApprovalOut(Response):
    """What an approver sees: the exact call, from server data (the arguments included)."""

    approval_id: str
    status: str  # pending, approved, denied, consumed, or expired
    task_id: str
    agent_id: str
    instance_id: str
    principal_id: str
    tool: str
    args_digest: str
    arguments: Json
    reasons: list[str]
    quorum: int
    votes: list[VoteOut]
    created_at: float
    expires_at: float
    decided_at: float | None
    consumed_at: float | None


class ApprovalsOut(Response):
    approvals: list[ApprovalOut]


class ModeRequest(Request):
    mode: ModeName


class JoinTokenRequest(Request):
    ttl_seconds: Annotated[Int, Field(gt=0, le=86400)] | None = None


class JoinTokenOut(Response):
    join_token: str
    expires_at: float


class PrincipalRequest(Request):
    principal_id: Annotated[str, StringConstraints(pattern=PRINCIPAL_PATTERN, max_length=256)]
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""
    identifiers: Annotated[list[Short], Field(max_length=64)] = []


class PrincipalOut(Response):
    principal_id: str
    display_name: str
    identifiers: list[str]


class TaskOut(Response):
    task_id: str
    agent_id: str
    instance_id: str
    principal_id: str
    parent_id: str | None
    status: Literal["open", "ended", "expired", "revoked"]
    opened_at: float
    expires_at: float
    ended_at: float | None
    end_reason: str | None
    calls_used: int
    taint: list[str]
    mandate: Json
    mandate_digest: str


class CredentialManifest(Request):
    """A tool's credential: names only (a sealed secret or a configured provider), never a
    value; validated whole by the core (``remit.core.leases``)."""

    secret: Short | None = None
    provider: Short | None = None
    header: Short | None = None
    format: Short | None = None
    value: Short | None = None
    env: Annotated[dict[Short, Short], Field(max_length=32)] | None = None
    per_call: bool | None = None
    ttl_seconds: Int | float | None = None


class ToolManifest(Request):
    """One tool of a catalog manifest: the JSON form of the YAML catalog entry."""

    name: Annotated[str, StringConstraints(pattern=TOOL_PATTERN, max_length=127)]
    privilege: Literal["read", "write", "act"]
    destinations: Annotated[dict[Short, DestinationKindName], Field(max_length=64)] = {}
    labels: Annotated[list[Short], Field(max_length=16)] = []
    risk: Annotated[list[Short], Field(max_length=32)] = []
    description: Annotated[str, StringConstraints(max_length=1000)] = ""
    mode: ModeName = "enforce"
    credential: CredentialManifest | None = None


class CatalogManifest(Request):
    tools: Annotated[list[ToolManifest], Field(min_length=1, max_length=10_000)]
    version: Int | Short | None = None


class ToolOut(Response):
    name: str
    privilege: Literal["read", "write", "act"]
    destinations: dict[str, str]
    labels: list[str]
    risk: list[str]
    mode: ModeName
    description: str
    credential: Json | None = None  # names and where it is injected; never a value


class CatalogOut(Response):
    tools: list[ToolOut]


class ValidationOut(Response):
    valid: bool
    problems: list[str]


class ToolDefinition(Request):
    """What an upstream tool server says a tool is; its digest is the pin."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    description: Annotated[str, StringConstraints(max_length=65536)] = ""
    input_schema: Json = {}


class ToolPinRequest(Request):
    tool: Annotated[
        str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_.-]{0,62}$")
    ]
    definition: ToolDefinition


class ToolPinOut(Response):
    tool: str
    digest: str
    definition: Json
    admitted_at: float
    admitted_by: str


class ToolPinsOut(Response):
    pins: list[ToolPinOut]


class PinCheckOut(Response):
    tool: str
    admitted: bool


class PolicyFilesRequest(Request):
    files: Annotated[
        dict[Annotated[str, StringConstraints(min_length=1, max_length=256)], str],
        Field(min_length=1, max_length=1000),
    ]


class PolicyVersionOut(Response):
    version: str
    files: list[str]
    loaded_at: float
    active: bool


class PoliciesOut(Response):
    active: str
    versions: list[PolicyVersionOut]


class VersionOut(Response):
    version: str


class ExplainRequest(Request):
    """A policy case (see ``remit.core.policy_cases``) without an expectation."""

    tool: Annotated[str, StringConstraints(min_length=1, max_length=127)]
    action: Literal["read", "write", "act"] | None = None
    agent: Short | None = None
    context: Json = {}


class ExplainOut(Response):
    allowed: bool
    reasons: list[str]
    errors: list[str]
    shadow_reasons: list[str]
    version: str
    explanation: str


class RecordOut(Response):
    seq: int
    event_id: str
    ts: float
    kind: str
    data: Json
    prev_hash: str
    hash: str


class AuditPageOut(Response):
    records: list[RecordOut]
    next_after_seq: int | None


class FindingOut(Response):
    kind: Literal[
        "new_tool",
        "new_destination",
        "rate_spike",
        "denial_burst",
        "approval_flood",
        "unusual_sequence",
        "off_hours",
    ]
    score: int
    explanation: str


class AlertOut(Response):
    """An anomaly alert (docs/alerts.md); ``id`` is its audit event id."""

    id: str
    seq: int
    at: float
    agent: str
    owner: str
    task: str
    decision: str
    tool: str
    score: int
    kinds: list[str]
    findings: list[FindingOut]
    explanation: str
    response: Literal["none", "require_approval", "suspend"]
    enforced: bool
    mode: str


class AlertsOut(Response):
    alerts: list[AlertOut]


class VerifyOut(Response):
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    checkpoints: int
    problems: list[str]


class KeysOut(Response):
    active_kid: str
    kids: list[str]


class KillSwitchRequest(Request):
    engaged: bool
    agent: AgentName | None = None


class KillSwitchOut(Response):
    engaged: bool
    agent: str | None


class AdminTokenOut(Response):
    token_id: str
    name: str
    scopes: list[str]
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class AdminTokensOut(Response):
    tokens: list[AdminTokenOut]


class CreateAdminTokenRequest(Request):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=4)]
    ttl_seconds: Annotated[Int, Field(gt=0, le=366 * 86400)] | None = None


class AdminTokenCreatedOut(Response):
    token_id: str
    token: str


# --------------------------------------------------------------------------- core -> wire


def attestation_out(att: Attestation) -> AttestationOut:
    return AttestationOut(
        instance_id=att.instance_id,
        agent_id=att.agent_id,
        identity_token=att.identity_token,
        issued_at=att.issued_at,
        expires_at=att.expires_at,
    )


def grant_out(grant: TaskGrant) -> TaskGrantOut:
    return TaskGrantOut(
        task_id=grant.task_id,
        task_token=grant.task_token,
        expires_at=grant.expires_at,
        mandate=grant.mandate.to_data(),
        notes=list(grant.notes),
    )


def decision_out(decision: Decision) -> DecisionOut:
    return DecisionOut(
        decision_id=decision.decision_id,
        outcome=decision.outcome.value,
        allowed=decision.allowed,
        would_deny=decision.would_deny,
        mode=decision.mode.value,
        reasons=list(decision.reasons),
        policy_version=decision.policy_version,
        task_id=decision.task_id,
        agent_id=decision.agent_id,
        instance_id=decision.instance_id,
        tool=decision.tool,
        args_digest=decision.args_digest,
        obligations=[ObligationOut(kind=o.kind, ref=o.ref) for o in decision.obligations],
        shadow_reasons=list(decision.shadow_reasons),
        audit_seq=decision.audit_seq,
        explanation=decision.explain(),
        approval_id=decision.approval_id,
    )


def agent_out(agent: Agent) -> AgentOut:
    return AgentOut(
        agent_id=agent.agent_id,
        name=agent.name,
        owner=agent.owner,
        description=agent.description,
        ceiling=agent.ceiling.to_data(),
        status=agent.status.value,
        mode=agent.mode.value,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
    )


def principal_out(principal: Principal) -> PrincipalOut:
    return PrincipalOut(
        principal_id=principal.principal_id,
        display_name=principal.display_name,
        identifiers=[str(d) for d in principal.identifiers],
    )


def task_out(task: Task, now: float) -> TaskOut:
    return TaskOut(
        task_id=task.task_id,
        agent_id=task.agent_id,
        instance_id=task.instance_id,
        principal_id=task.principal_id,
        parent_id=task.parent_id,
        status=task.effective_status(now).value,
        opened_at=task.opened_at,
        expires_at=task.expires_at,
        ended_at=task.ended_at,
        end_reason=task.end_reason,
        calls_used=task.calls_used,
        taint=task.taint.as_list(),
        mandate=task.mandate.to_data(),
        mandate_digest=task.mandate_digest,
    )


def tool_out(spec: ToolSpec) -> ToolOut:
    return ToolOut(
        name=spec.name,
        privilege=spec.privilege.value,
        destinations={arg.path: arg.kind.value for arg in spec.destination_args},
        labels=spec.output_labels.as_list(),
        risk=sorted(spec.risk),
        mode="shadow" if spec.shadow else "enforce",
        description=spec.description,
        credential=_credential_out(spec),
    )


def _credential_out(spec: ToolSpec) -> Json | None:
    credential = spec.credential
    if credential is None:
        return None
    out: Json = {"per_call": credential.per_call}
    if credential.secret is not None:
        out["secret"] = credential.secret
    if credential.provider is not None:
        out["provider"] = credential.provider
    if credential.header is not None:
        out.update(header=credential.header, format=credential.format)
        if credential.provider is not None:
            out["value"] = credential.value
    if credential.env:
        out["env"] = dict(credential.env)
    if credential.ttl_seconds is not None:
        out["ttl_seconds"] = credential.ttl_seconds
    return out


def catalog_out(tools: Mapping[str, ToolSpec]) -> CatalogOut:
    return CatalogOut(tools=[tool_out(tools[name]) for name in sorted(tools)])


def policy_version_out(record: PolicyVersionRecord) -> PolicyVersionOut:
    return PolicyVersionOut(
        version=record.version,
        files=sorted(record.sources),
        loaded_at=record.loaded_at,
        active=record.active,
    )


def permission_out(permission: Permission) -> PermissionOut:
    return PermissionOut.model_validate(permission.to_data())


def explain_out(result: PolicyResult) -> ExplainOut:
    return ExplainOut(
        allowed=result.allowed,
        reasons=list(result.reasons),
        errors=list(result.errors),
        shadow_reasons=list(result.shadow_reasons),
        version=result.version,
        explanation=explain(result),
    )


def record_out(record: AuditRecord) -> RecordOut:
    return RecordOut(
        seq=record.seq,
        event_id=record.event_id,
        ts=record.ts,
        kind=record.kind,
        data=dict(record.data),
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


def alert_out(alert: Alert) -> AlertOut:
    data = alert.to_data()
    return AlertOut(
        id=alert.event_id,
        seq=alert.seq,
        at=alert.at,
        agent=alert.agent_id,
        owner=alert.owner,
        task=alert.task_id,
        decision=alert.decision_id,
        tool=alert.tool,
        score=alert.score,
        kinds=data["kinds"],
        findings=[FindingOut(**f) for f in data["findings"]],
        explanation=data["explanation"],
        response=alert.response.value,
        enforced=alert.enforced,
        mode=alert.mode,
    )


def record_data(record: AuditRecord) -> dict[str, Any]:
    """A record as plain JSON data (for the NDJSON export, which skips model validation)."""
    return {
        "seq": record.seq,
        "event_id": record.event_id,
        "ts": record.ts,
        "kind": record.kind,
        "data": dict(record.data),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def verify_out(report: ChainReport) -> VerifyOut:
    return VerifyOut(
        ok=report.ok,
        records=report.records,
        head_seq=report.head_seq,
        head_hash=report.head_hash,
        checkpoints=report.checkpoints,
        problems=list(report.problems),
    )


def admin_token_out(record: AdminTokenRecord) -> AdminTokenOut:
    return AdminTokenOut(
        token_id=record.token_id,
        name=record.name,
        scopes=list(record.scopes),
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
    )


def approval_out(approval: Approval, now: float) -> ApprovalOut:
    return ApprovalOut(
        approval_id=approval.approval_id,
        status=approval.effective_status(now),
        task_id=approval.task_id,
        agent_id=approval.agent_id,
        instance_id=approval.instance_id,
        principal_id=approval.principal_id,
        tool=approval.tool,
        args_digest=approval.args_digest,
        arguments=dict(approval.arguments),
        reasons=list(approval.reasons),
        quorum=approval.quorum,
        votes=[
            VoteOut(approver=v.approver, approve=v.approve, reason=v.reason, at=v.at)
            for v in approval.votes
        ],
        created_at=approval.created_at,
        expires_at=approval.expires_at,
        decided_at=approval.decided_at,
        consumed_at=approval.consumed_at,
    )
