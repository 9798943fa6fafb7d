"""The agent-facing routes: attestation (public), identity renewal, tasks, decisions.

Handlers are plain ``def``: FastAPI runs them in its thread pool, and the
service they call is thread-safe.
"""

import base64
import binascii
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse

from remit.errors import InvalidRequest, RemitError
from remit.http.auth import AgentCall, agent
from remit.http.metrics import Metrics
from remit.http.problems import BODY_ERRORS, documented
from remit.http.wire import (
    AttestationOut,
    AttestRequest,
    AuthorizeRequest,
    ChallengeOut,
    ClosedOut,
    DecisionOut,
    EmptyRequest,
    OpenTaskRequest,
    TaskGrantOut,
    attestation_out,
    decision_out,
    grant_out,
)
from remit.service import Remit

EmptyBody = Annotated[EmptyRequest | None, Body()]


def add_agent_routes(router: APIRouter, remit: Remit, metrics: Metrics) -> None:
    """Add the attestation and agent routes to ``router`` (whose route class is strict)."""
    caller = agent(remit)

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
