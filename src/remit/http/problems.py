"""Errors as RFC 9457 problem details: the one table from stable code to HTTP status.

Every error response of the API is made here, whether it came from the
service (``RemitError``), from request validation, or from routing (unknown
path, wrong method). ``detail`` is the error's message, which the error tree
keeps free of secrets; validation errors name the field and the rule, never
the value.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request

from remit.errors import (
    InvalidRequest,
    InvalidToken,
    NotFound,
    PolicyInvalid,
    RemitError,
    error_for_code,
)
from remit.http.wire import Problem

PROBLEM_TYPE_BASE: Final = "https://remit.dev/problems/"
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"

# The table: stable error code -> HTTP status.
STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "invalid_request": 400,
    "invalid_grant": 400,
    "invalid_token": 401,
    "token_expired": 401,
    "token_revoked": 401,
    "invalid_proof": 401,
    "forbidden": 403,
    "denied": 403,
    "approval_required": 403,
    "not_found": 404,
    "conflict": 409,
    "policy_invalid": 422,
    "audit_unavailable": 503,
    "store_unavailable": 503,
    "provider_unavailable": 503,
    "sealed": 503,
    "internal_error": 500,
}
# Where the transport, not the code, sets the status: an ``invalid_request`` about the
# HTTP request itself rather than its content.
STATUS_BY_REASON: Final[Mapping[str, int]] = {
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "method_not_allowed": 405,
}
TITLES: Final[Mapping[str, str]] = {
    "invalid_request": "Invalid request",
    "invalid_grant": "Invalid grant",
    "invalid_token": "Invalid token",
    "token_expired": "Token expired",
    "token_revoked": "Token revoked",
    "invalid_proof": "Invalid proof of possession",
    "forbidden": "Forbidden",
    "denied": "Denied",
    "approval_required": "Approval required",
    "not_found": "Not found",
    "conflict": "Conflict",
    "policy_invalid": "Policy set invalid",
    "audit_unavailable": "Audit log unavailable",
    "store_unavailable": "Store unavailable",
    "provider_unavailable": "Credential provider unavailable",
    "sealed": "Sealed: a secret could not be opened with the master keys held",
    "internal_error": "Internal error",
}
# The code for an HTTP status raised by the framework itself (e.g. Starlette's 404/405).
_CODE_BY_STATUS: Final[Mapping[int, str]] = {
    400: "invalid_request",
    401: "invalid_token",
    403: "forbidden",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    413: "invalid_request",
    415: "invalid_request",
    422: "invalid_request",
    503: "store_unavailable",
}


def status_for(error: RemitError) -> int:
    if error.code == "invalid_request" and error.reason in STATUS_BY_REASON:
        return STATUS_BY_REASON[error.reason]
    return STATUS_BY_CODE.get(error.code, 500)


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "")) or "req_unknown"


def problem_response(
    error: RemitError, request_id: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The problem+json response for ``error``, with the headers its status calls for."""
    status = status_for(error)
    code = error.code if error.code in STATUS_BY_CODE else "internal_error"
    problem = Problem(
        type=PROBLEM_TYPE_BASE + code,
        title=TITLES[code],
        status=status,
        detail=error.message if code != "internal_error" else "internal error",
        code=code,
        request_id=request_id,
        reason=error.reason if code != "internal_error" else None,
        problems=_problems(error),
    )
    out = {"X-Request-Id": request_id, **(headers or {})}
    if status == 401:
        out["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    elif status == 503:
        out["Retry-After"] = "1"
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        headers=out,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _problems(error: RemitError) -> list[str] | None:
    if not isinstance(error, PolicyInvalid):
        return None
    found = error.details.get("problems")
    if isinstance(found, Sequence) and not isinstance(found, str):
        return [str(p) for p in found]
    return [error.message]


_DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "invalid_request or invalid_grant: the request is malformed or breaks a rule",
    401: "invalid_token, token_expired, token_revoked or invalid_proof",
    403: "forbidden (the token's scope is too narrow) or denied",
    404: "not_found",
    409: "conflict",
    413: "invalid_request: the body is larger than 256 KiB",
    415: "invalid_request: the body is not application/json",
    422: "policy_invalid: the policy set was refused whole",
    503: (
        "audit_unavailable, store_unavailable, provider_unavailable or sealed"
        " (retry after Retry-After)"
    ),
}
BODY_ERRORS: Final = (400, 413, 415)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (media type fixed up by the app)."""
    return {
        status: {"model": Problem, "description": _DESCRIPTIONS[status]}
        for status in sorted(set(statuses))
    }


# --------------------------------------------------------------------------- exception handlers


async def remit_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RemitError)
    return problem_response(exc, request_id_of(request))


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Body, query and path validation errors are ``invalid_request`` (400), not 422."""
    assert isinstance(exc, RequestValidationError)
    error = InvalidRequest(describe_validation(exc.errors()), reason="schema")
    return problem_response(error, request_id_of(request))


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors: an unknown route (404), a wrong method (405), ..."""
    assert isinstance(exc, HTTPException)
    error: RemitError
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        error = NotFound("no such endpoint", reason="no_route")
    elif exc.status_code == 405:
        error = InvalidRequest(
            "this endpoint does not allow the method", reason="method_not_allowed"
        )
        allowed = allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    elif exc.status_code == 401:
        error = InvalidToken("authentication is required", reason="missing_token")
    else:
        code = _CODE_BY_STATUS.get(exc.status_code, "internal_error")
        error = error_for_code(code)(TITLES[code].lower(), reason=f"http_{exc.status_code}")
    return problem_response(error, request_id_of(request), headers=headers)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: answer 500 with no detail (the traceback goes to the server log)."""
    return problem_response(RemitError("internal error"), request_id_of(request))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only one route's)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in request.app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def describe_validation(errors: Iterable[Mapping[str, Any]], limit: int = 5) -> str:
    """``body.name: String should match pattern ...``: where and which rule, never the value."""
    parts: list[str] = []
    items = list(errors)
    for item in items[:limit]:
        where = ".".join(_loc_part(p) for p in item.get("loc", ()))
        message = str(item.get("msg", "invalid"))[:200]
        parts.append(f"{where}: {message}" if where else message)
    if len(items) > limit:
        parts.append(f"and {len(items) - limit} more")
    return "; ".join(parts) or "the request does not match the schema"


def _loc_part(part: object) -> str:
    if isinstance(part, int):
        return str(part)
    text = str(part)
    if len(text) > 64 or not text.isascii() or not text.isprintable():
        return "<key>"
    return text
