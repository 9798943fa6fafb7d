"""The agent side: an instance's key, its identity, its proofs.

An ``AgentSession`` holds the instance's private key (which never leaves it),
attests once with a join token, rotates its identity token before half-life,
opens tasks and signs a fresh proof of possession for every call.

It talks to anything that offers ``RemitApi``: the in-process ``Remit``
service today, the HTTP client later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from remit.canonical import digest
from remit.clock import Clock, SystemClock
from remit.core.identity import attestation_payload
from remit.core.keys import generate_instance_key, jwk_thumbprint, public_jwk, sign_es256
from remit.core.pipeline import ARGUMENT_LIMITS, Decision
from remit.core.secrets import Secret
from remit.core.tokens import make_call_proof
from remit.errors import InvalidRequest
from remit.service import (
    DELEGATE_OP,
    END_TASK_OP,
    OPEN_TASK_OP,
    RENEW_IDENTITY_OP,
    Attestation,
    TaskGrant,
    delegation_body,
)


class RemitApi(Protocol):
    """What an agent session needs from Remit: the in-process service or the HTTP client."""

    def proof_binding(self, op: str) -> tuple[str, str] | None:
        """The (method, URL) a proof for operation ``op`` must name, or None in-process."""
        ...

    def attestation_challenge(self) -> str: ...
    def attest(
        self, *, join_token: str, public_jwk: Mapping[str, Any], nonce: str, signature: bytes
    ) -> Attestation: ...
    def renew_identity(self, identity_token: str, proof: str) -> Attestation: ...
    def open_task(
        self, identity_token: str, proof: str, *, principal: str, intent: Mapping[str, Any]
    ) -> TaskGrant: ...
    def end_task(self, task_token: str, proof: str) -> list[str]: ...
    def authorize(
        self,
        *,
        task_token: str,
        proof: str,
        tool: str,
        arguments: Mapping[str, Any],
        approval: str | None = None,
    ) -> Decision: ...


class Delegator(Protocol):
    """What delegation needs of Remit (the in-process service; HTTP: not yet)."""

    def delegate(
        self,
        parent_task_token: str,
        parent_proof: str,
        actor_identity_token: str,
        actor_proof: str,
        *,
        narrowing: Mapping[str, Any],
    ) -> TaskGrant: ...


@dataclass(frozen=True, slots=True)
class ActorConsent:
    """Agent B's consent to take a sub-task: its identity token and a proof signed with
    its own key over (parent task, narrowing). B's key never leaves B."""

    identity_token: str
    proof: str


class AgentSession:
    def __init__(self, remit: RemitApi, attestation: Attestation, key: Any, clock: Clock) -> None:
        self._remit = remit
        self._key = key
        self._clock = clock
        self.attestation = attestation

    @classmethod
    def attest(
        cls, remit: RemitApi, join_token: Secret | str, *, clock: Clock | None = None
    ) -> AgentSession:
        """Make a key pair, prove possession over a fresh server nonce, and join."""
        key = generate_instance_key()
        jwk = public_jwk(key.public_key())
        nonce = remit.attestation_challenge()
        signature = sign_es256(key, attestation_payload(nonce, jwk_thumbprint(key.public_key())))
        token = join_token.reveal() if isinstance(join_token, Secret) else join_token
        attestation = remit.attest(
            join_token=token, public_jwk=jwk, nonce=nonce, signature=signature
        )
        return cls(remit, attestation, key, clock or SystemClock())

    @property
    def agent_id(self) -> str:
        return self.attestation.agent_id

    @property
    def instance_id(self) -> str:
        return self.attestation.instance_id

    def proof(self, token: str, op: str, body: Any, *, endpoint: str = "authorize") -> str:
        """Sign a fresh, single-use proof for operation ``op`` (a tool name, or a Remit
        operation) over ``body``, bound to the endpoint's method and URL over HTTP."""
        return self.sign_proof(token, op, body, binding=self._remit.proof_binding(endpoint))

    def sign_proof(self, token: str, op: str, body: Any, *, binding: tuple[str, str] | None) -> str:
        """A proof bound to an explicit (method, URL), for a transport that is not Remit's
        own (e.g. an MCP gateway). The instance key never leaves this session."""
        return make_call_proof(
            self._key,
            token=token,
            tool=op,
            args_digest=digest(body, ARGUMENT_LIMITS),
            now=self._clock.now(),
            htm=binding[0] if binding else None,
            htu=binding[1] if binding else None,
        )

    def identity_token(self) -> str:
        """The current identity token, renewed once less than half its lifetime is left."""
        att = self.attestation
        half_life = att.issued_at + (att.expires_at - att.issued_at) / 2
        if self._clock.now() >= half_life:
            token = att.identity_token
            self.attestation = self._remit.renew_identity(
                token, self.proof(token, RENEW_IDENTITY_OP, {}, endpoint="renew_identity")
            )
        return self.attestation.identity_token

    def consent_to_delegation(
        self, parent_task_id: str, narrowing: Mapping[str, Any]
    ) -> ActorConsent:
        """B's side of a delegation: sign a proof over exactly this sub-task."""
        token = self.identity_token()
        body = delegation_body(parent_task_id, narrowing)
        return ActorConsent(token, self.proof(token, DELEGATE_OP, body, endpoint="delegate"))

    def adopt(self, grant: TaskGrant) -> TaskSession:
        """B's session for a task delegated to it."""
        return TaskSession(self, grant)

    def open_task(self, *, principal: str, intent: Mapping[str, Any]) -> TaskSession:
        token = self.identity_token()
        body = {"principal": principal, "intent": intent}
        grant = self._remit.open_task(
            token,
            self.proof(token, OPEN_TASK_OP, body, endpoint="open_task"),
            principal=principal,
            intent=intent,
        )
        return TaskSession(self, grant)


class TaskSession:
    def __init__(self, agent: AgentSession, grant: TaskGrant) -> None:
        self.agent = agent
        self.grant = grant

    @property
    def task_id(self) -> str:
        return self.grant.task_id

    @property
    def token(self) -> str:
        return self.grant.task_token

    def authorize(
        self, tool: str, arguments: Mapping[str, Any], *, approval: str | None = None
    ) -> Decision:
        """Ask Remit whether this exact call may go ahead; a fresh proof is signed for it."""
        proof = self.agent.proof(self.token, tool, dict(arguments))
        return self.agent._remit.authorize(
            task_token=self.token, proof=proof, tool=tool, arguments=arguments, approval=approval
        )

    def delegate(self, consent: ActorConsent, narrowing: Mapping[str, Any]) -> TaskGrant:
        """A's side: hand a narrower sub-task to the agent whose consent this is. Returns
        the child's grant, for B (``AgentSession.adopt``); it is bound to B's key."""
        remit = self.agent._remit
        if not hasattr(remit, "delegate"):
            raise InvalidRequest("this Remit connection cannot delegate", reason="unsupported")
        body = delegation_body(self.task_id, narrowing)
        proof = self.agent.proof(self.token, DELEGATE_OP, body, endpoint="delegate")
        delegator: Delegator = remit  # type: ignore[assignment]
        return delegator.delegate(
            self.token, proof, consent.identity_token, consent.proof, narrowing=narrowing
        )

    def end(self) -> list[str]:
        proof = self.agent.proof(
            self.token, END_TASK_OP, {"task": self.task_id}, endpoint="end_task"
        )
        return self.agent._remit.end_task(self.token, proof)
