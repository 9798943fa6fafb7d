"""The agent-facing routes: attestation (public), identity renewal, tasks, decisions.

Handlers are plain ``def``: FastAPI runs them in its thread pool, and the
service they call is thread-safe.
"""

import base64
import binascii
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import JSONResponse

from remit.errors import InvalidProof, InvalidRequest, RemitError
from remit.http.auth import PROOF_HEADER, AgentCall, agent, check_public_url, request_url
from remit.http.metrics import Metrics
from remit.http.problems import BODY_ERRORS, documented
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
        return ClosedOut(closed=remit.end_task(call.token, call.proof, binding=call.binding))

    @router.post(
        "/v1/authorize",
        tags=["agents"],
        response_model=DecisionOut,
        responses=documented(*BODY_ERRORS, 401, 503),
        summary="Decide one tool call (a deny is a 200 with allowed=false)",
    )
    async def authorize(
        call: Annotated[AgentCall, Depends(caller)], body: AuthorizeRequest
    ) -> JSONResponse:
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
        # The hot path: serialized once, without FastAPI's second validation pass.
        return JSONResponse(decision_out(decision).model_dump(mode="json"))


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest("signature must be base64url", reason="bad_attestation") from None
