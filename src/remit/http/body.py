"""Requests checked before FastAPI sees them: the body, and the query's parameter names.

``StrictJsonRoute`` reads the body of every request that can carry one before
the route's handler runs: a declared ``Content-Length`` over the limit is
refused without reading, and the stream is cut off once it passes the limit
(413). A non-empty body must be JSON (415) and is parsed with
``remit.canonical.parse_json_strict`` (duplicate keys, NaN and excess depth
refused, 400). FastAPI then finds the parsed value cached on the request.

A query parameter the route does not declare is refused (400), as an unknown
body field is: a misspelt audit filter must not silently widen the answer. A
route that takes no body accepts none, or ``{}``.
"""

from collections.abc import Callable, Coroutine, Iterator
from email.message import Message
from functools import lru_cache
from typing import Any, Final

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from remit.canonical import JsonLimits, JsonValue, parse_json_strict
from remit.errors import InvalidRequest

MAX_BODY_BYTES: Final = 256 * 1024
# The outer bound on any body; each service call applies its own, tighter limits again.
BODY_LIMITS: Final = JsonLimits(
    max_depth=16, max_bytes=MAX_BODY_BYTES, max_string=64 * 1024, max_items=4096
)
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def too_large() -> InvalidRequest:
    return InvalidRequest(
        f"the request body is too large (max {MAX_BODY_BYTES} bytes)", reason="body_too_large"
    )


def is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    if len(content_type) > 128:
        return _is_json_media_type.__wrapped__(content_type)
    return _is_json_media_type(content_type)


@lru_cache(maxsize=256)
def _is_json_media_type(content_type: str) -> bool:
    """Parsed as FastAPI does; cached, as clients send a handful of distinct values."""
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class StrictJsonRequest(Request):
    """A request whose body is read at most once, capped, and parsed strictly."""

    _strict_body: bytes
    _strict_json: JsonValue

    async def body(self) -> bytes:
        if not hasattr(self, "_strict_body"):
            declared = self.headers.get("content-length")
            if declared is not None:
                if not (declared.isascii() and declared.isdigit()) or len(declared) > 12:
                    raise InvalidRequest("Content-Length is malformed", reason="bad_content_length")
                if int(declared) > MAX_BODY_BYTES:
                    raise too_large()
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise too_large()
                chunks.append(chunk)
            self._strict_body = b"".join(chunks)
        return self._strict_body

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = parse_json_strict(await self.body(), BODY_LIMITS)
        return self._strict_json

    async def load(self) -> None:
        """Read and check the body now, so that a refusal is a problem, not a parse error."""
        if self.method not in _BODY_METHODS:
            return
        if not await self.body():
            return
        if not is_json_media_type(self.headers.get("content-type")):
            raise InvalidRequest(
                "the request body must be application/json", reason="unsupported_media_type"
            )
        await self.json()


class StrictJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = frozenset(_query_names(self.dependant))
        takes_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            return await handler(await strict_request(request, declared, takes_body=takes_body))

        return strict_handler


async def strict_request(
    request: Request, declared: frozenset[str], *, takes_body: bool
) -> StrictJsonRequest:
    """``request`` with its body read and checked, and its query names checked."""
    strict = StrictJsonRequest(request.scope, request.receive)
    await strict.load()
    if not takes_body and await strict.body() and await strict.json() != {}:
        raise InvalidRequest("this endpoint takes no body (or {})", reason="schema")
    # An empty query string has no names (skips building the parsed query).
    unknown = set(strict.query_params) - declared if strict.scope.get("query_string") else None
    if unknown:
        names = ", ".join(sorted(_printable(n) for n in unknown)[:5])
        raise InvalidRequest(f"unknown query parameters: {names}", reason="unknown_query_parameter")
    return strict


def _query_names(dependant: Dependant) -> Iterator[str]:
    for field in dependant.query_params:
        yield field.alias
    for sub in dependant.dependencies:
        yield from _query_names(sub)


def _printable(name: str) -> str:
    return name if name.isascii() and name.isprintable() and len(name) <= 64 else "<name>"
