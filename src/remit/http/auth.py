"""Who is calling: operators by admin token and scope, agents by token and proof.

Operators send ``Authorization: Bearer rat_...``; the service authenticates
the token and says whether its scopes cover the route's (403 ``forbidden``
otherwise). Agents send their identity or task token with a ``Remit-Proof``;
this module checks that both are there and collects them, with the (method,
URL) the proof must name, and the service verifies them (and records each
refusal).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import URL
from starlette.requests import Request

from remit.errors import Forbidden, InvalidProof, InvalidRequest, InvalidToken
from remit.service import AdminIdentity, Remit

PROOF_HEADER = "Remit-Proof"

OPERATOR_TOKEN = HTTPBearer(
    scheme_name="OperatorToken",
    description="An operator API token (`rat_...`, from `remit admin-token create`).",
    auto_error=False,
)
AGENT_TOKEN = HTTPBearer(
    scheme_name="AgentToken",
    description="The instance's identity token, or its task token for task calls.",
    auto_error=False,
)
AGENT_PROOF = APIKeyHeader(
    name=PROOF_HEADER,
    scheme_name="RemitProof",
    description=(
        "A fresh single-use ES256 proof signed by the instance key "
        "(`remit.core.tokens.make_call_proof`), naming this request's method and URL."
    ),
    auto_error=False,
)

OperatorCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(OPERATOR_TOKEN)]
AgentBearer = Annotated[HTTPAuthorizationCredentials | None, Security(AGENT_TOKEN)]
AgentProof = Annotated[str | None, Security(AGENT_PROOF)]


def operator(remit: Remit, scope: str) -> Callable[..., AdminIdentity]:
    """A dependency: the calling operator, whose token must cover ``scope``."""

    def authenticate(credentials: OperatorCredentials) -> AdminIdentity:
        who = remit.authenticate_admin(credentials.credentials if credentials else None)
        if not who.has(scope):
            raise Forbidden(f"this operation needs the {scope} scope", reason="insufficient_scope")
        return who

    return authenticate


@dataclass(frozen=True, slots=True)
class AgentCall:
    """An agent's credentials as sent; the service verifies them."""

    token: str
    proof: str
    binding: tuple[str, str]  # (method, URL) the proof must name


def check_public_url(url: str) -> str:
    """``REMIT_PUBLIC_URL``: an absolute http(s) URL without query or fragment."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InvalidRequest(
            "REMIT_PUBLIC_URL must be an http(s) URL without query or fragment",
            reason="bad_setting",
        )
    return url.rstrip("/")


def request_url(request: Request, public_url: str) -> str:
    """The URL a proof names: ``scheme://host[:port]/path`` as the client addressed it.

    With a public URL set, that is its base plus the path; otherwise the scheme
    and the ``Host`` header of the request (so a default port is not written).
    """
    scope = request.scope
    host: bytes | None = None
    for key, value in scope["headers"]:
        if key == b"host":
            host = value
            break
    server = scope.get("server")
    return _request_url(
        scope.get("scheme", "http"),
        None if server is None else tuple(server),
        scope["path"],
        host,
        public_url,
    )


@lru_cache(maxsize=512)
def _request_url(
    scheme: str,
    server: tuple[str, int] | None,
    path: str,
    host: bytes | None,
    public_url: str,
) -> str:
    """Starlette's ``request.url`` for these parts (the query never changes the path or
    host), cached: a client sends the same few, and building the URL costs a parse."""
    url = URL(
        scope={
            "scheme": scheme,
            "server": server,
            "path": path,
            "query_string": b"",
            "headers": [] if host is None else [(b"host", host)],
        }
    )
    if public_url:
        return public_url + url.path
    return f"{url.scheme}://{url.netloc}{url.path}"


def agent(remit: Remit) -> Callable[..., Awaitable[AgentCall]]:
    """A dependency: the bearer token and proof of an agent call, and its binding."""
    public_url = check_public_url(remit.settings.public_url)

    async def credentials(request: Request, bearer: AgentBearer, proof: AgentProof) -> AgentCall:
        # Only their presence is checked here, so an anonymous request is refused before
        # its body is looked at; the service verifies the rest and records what it refuses.
        if bearer is None:
            raise InvalidToken("a bearer token is required", reason="missing_token")
        if not proof:
            raise InvalidProof(f"a {PROOF_HEADER} header is required", reason="missing_proof")
        return AgentCall(
            bearer.credentials, proof, (request.method, request_url(request, public_url))
        )

    return credentials
