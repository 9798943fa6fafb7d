"""The agent-facing routes: attestation (public), identity renewal, tasks, decisions.

Handlers are plain ``def``: FastAPI runs them in its thread pool, and the
service they call is thread-safe.
"""

import base64
import binascii
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import Response

from remit.errors import InvalidProof, InvalidRequest, RemitError
from remit.http.auth import PROOF_HEADER, AgentCall, agent, check_public_url, request_url
from remit.http.fast import AgentCallRoute
from remit.http.metrics import Metrics
from remit.http.problems import BODY_ERRORS, documented
from remit.http.task_catalog_wire import (
    PinCheckOut,
    TaskCatalogOut,
    ToolPinRequest,
    task_catalog_out,
)
from remit.http.wire import (
    TASK_TOKEN_TYPE,
    AttestationOut,
    AttestRequest,
    AuthorizeRequest,
    ChallengeOut,
    ClosedOut,
    DecisionOut,
    EmptyRequest,
    OpenTaskRequest,
    TaskGrantOut,
    TokenExchangeOut,
    TokenExchangeRequest,
    attestation_out,
    decision_out,
    grant_out,
)
from remit.service import Remit

EmptyBody = Annotated[EmptyRequest | None, Body()]
ACTOR_PROOF_HEADER = "Remit-Actor-Proof"
JSON_MEDIA_TYPE = "application/json"


def add_agent_routes(router: APIRouter, remit: Remit, metrics: Metrics) -> None:
    """Add the attestation and agent routes to ``router`` (whose route class is strict)."""
    caller = agent(remit)
    public_url = check_public_url(remit.settings.public_url)

    @router.post(
        "/v1/attest/challenge",
        tags=["agents"],
        response_model=ChallengeOut,
        responses=documented(*BODY_ERRORS, 503),
        summary="A single-use attestation nonce (2 minutes)",
    )
    def attestation_challenge() -> ChallengeOut:
        return ChallengeOut(nonce=remit.attestation_challenge())

    @router.post(
        "/v1/attest",
        tags=["agents"],
        response_model=AttestationOut,
        responses=documented(*BODY_ERRORS, 409, 503),
        summary="Join with a join token and a signature over the nonce",
    )
    def attest(body: AttestRequest) -> AttestationOut:
        att = remit.attest(
            join_token=body.join_token,
            public_jwk=body.public_jwk,
            nonce=body.nonce,
            signature=_b64url_decode(body.signature),
        )
        return attestation_out(att)

    @router.post(
        "/v1/identity/renew",
        tags=["agents"],
        response_model=AttestationOut,
        responses=documented(*BODY_ERRORS, 401, 503),
        summary="A fresh identity token for the calling instance",
    )
    def renew_identity(
        call: Annotated[AgentCall, Depends(caller)], body: EmptyBody = None
    ) -> AttestationOut:
        return attestation_out(remit.renew_identity(call.token, call.proof, binding=call.binding))

    @router.post(
        "/v1/tasks",
        tags=["agents"],
        response_model=TaskGrantOut,
        responses=documented(*BODY_ERRORS, 401, 403, 404, 503),
        summary="Open a task for a principal, with a mandate built from the intent",
    )
    def open_task(
        call: Annotated[AgentCall, Depends(caller)], body: OpenTaskRequest
    ) -> TaskGrantOut:
        grant = remit.open_task(
            call.token,
            call.proof,
            principal=body.principal,
            intent=body.intent,
            binding=call.binding,
        )
        return grant_out(grant)

    @router.post(
        "/oauth/token",
        tags=["agents"],
        response_model=TokenExchangeOut,
        responses=documented(*BODY_ERRORS, 401, 403, 404, 503),
        summary="Delegate a narrower sub-task to another agent (RFC 8693 token exchange)",
    )
    def token_exchange(
        request: Request,
        body: TokenExchangeRequest,
        subject_proof: Annotated[str | None, Header(alias=PROOF_HEADER)] = None,
        actor_proof: Annotated[str | None, Header(alias=ACTOR_PROOF_HEADER)] = None,
    ) -> TokenExchangeOut:
        # A signs with its key over its task token, B with its key over its identity token;
        # both proofs name this request's method and URL.
        if not subject_proof or not actor_proof:
            raise InvalidProof(
                f"{PROOF_HEADER} and {ACTOR_PROOF_HEADER} are both required", reason="missing_proof"
            )
        binding = (request.method, request_url(request, public_url))
        grant = remit.delegate(
            body.subject_token,
            subject_proof,
            body.actor_token,
            actor_proof,
            narrowing=body.remit_mandate,
            binding=binding,
            actor_binding=binding,
        )
        out = grant_out(grant)
        return TokenExchangeOut(
            **out.model_dump(),
            access_token=grant.task_token,
            issued_token_type=TASK_TOKEN_TYPE,
            token_type="N_A",  # noqa: S106 - RFC 8693: not a bearer token
            expires_in=max(0, int(grant.expires_at - time.time())),
        )

    @router.post(
        "/v1/tasks/end",
        tags=["agents"],
        response_model=ClosedOut,
        responses=documented(*BODY_ERRORS, 401, 404, 503),
        summary="End the bearer task token's task (and everything derived from it)",
    )
    def end_task(call: Annotated[AgentCall, Depends(caller)], body: EmptyBody = None) -> ClosedOut:
        ended = remit.end_task_report(call.token, call.proof, binding=call.binding)
        return ClosedOut(
            closed=list(ended.closed), outstanding_leases=list(ended.outstanding_leases)
        )

    async def authorize(
        call: Annotated[AgentCall, Depends(caller)], body: AuthorizeRequest
    ) -> Response:
        # Decided inline on the event loop: a decision is a few hundred microseconds of
        # GIL-bound work, and a thread-pool hop per call costs more than it saves.
        started = time.perf_counter()
        try:
            decision = remit.authorize(
                task_token=call.token,
                proof=call.proof,
                tool=body.tool,
                arguments=body.arguments,
                approval=body.approval,
                binding=call.binding,
            )
        except RemitError as exc:
            metrics.refused(exc.reason, time.perf_counter() - started)
            raise
        metrics.decided(decision, time.perf_counter() - started)
        # The hot path: serialized once, straight to JSON bytes, without FastAPI's second
        # validation pass.
        return Response(decision_out(decision).model_dump_json(), media_type=JSON_MEDIA_TYPE)

    # The direct handler (remit.http.fast): the same checks without FastAPI's generic
    # dependency resolution.
    router.add_api_route(
        "/v1/authorize",
        authorize,
        methods=["POST"],
        tags=["agents"],
        response_model=DecisionOut,
        responses=documented(*BODY_ERRORS, 401, 503),
        summary="Decide one tool call (a deny is a 200 with allowed=false)",
        route_class_override=AgentCallRoute,
    )

    @router.post(
        "/v1/tasks/catalog",
        tags=["agents"],
        response_model=TaskCatalogOut,
        responses=documented(*BODY_ERRORS, 401, 404, 503),
        summary="The catalog entries of the bearer task's mandate (no credential details)",
    )
    def task_catalog(
        call: Annotated[AgentCall, Depends(caller)], body: EmptyBody = None
    ) -> TaskCatalogOut:
        catalog = remit.task_catalog(call.token, call.proof, binding=call.binding)
        return task_catalog_out(catalog.tools)

    @router.post(
        "/v1/tasks/pins/check",
        tags=["agents"],
        response_model=PinCheckOut,
        responses=documented(*BODY_ERRORS, 401, 403, 404, 503),
        summary="Check an upstream definition of a mandate tool against its pin",
    )
    def task_pin_check(
        call: Annotated[AgentCall, Depends(caller)], body: ToolPinRequest
    ) -> PinCheckOut:
        """A denial (403 ``denied``: ``tool_definition_changed`` / ``tool_not_admitted``) when
        the definition is not the admitted one; 403 ``forbidden`` (``not_in_mandate``) for a
        tool outside the task's mandate."""
        remit.check_task_tool_definition(
            call.token, call.proof, body.tool, body.definition.model_dump(), binding=call.binding
        )
        return PinCheckOut(tool=body.tool, admitted=True)


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest("signature must be base64url", reason="bad_attestation") from None
