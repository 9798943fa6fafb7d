"""A direct route handler for the agent hot path (``POST /v1/authorize``).

FastAPI's generic request handler resolves a dependency tree, computes cache
keys, scopes and exit stacks on every request, which costs more than the rest
of the HTTP layer together. ``AgentCallRoute`` is for an endpoint of one exact
shape, ``async def endpoint(call: AgentCall (a dependency), body: Model) ->
Response``: it runs the same steps in the same order with FastAPI's own parts
(the security schemes, ``request_body_to_args``, ``RequestValidationError``):

1. the strict body and query checks of ``StrictJsonRoute``;
2. the credentials dependency, fed by its security schemes (a missing token or
   proof is refused before the body is validated, as before);
3. body validation into the model (errors are the same ``RequestValidationError``);
4. the endpoint, whose ``Response`` is returned as is.

The route, its OpenAPI operation and every error stay what FastAPI makes of the
declaration. An endpoint of any other shape gets FastAPI's handler unchanged.
"""

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, get_type_hints

from fastapi._compat import ModelField, Undefined
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_body_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.security.base import SecurityBase
from starlette.requests import Request
from starlette.responses import Response

from remit.http.body import StrictJsonRoute, strict_request


@dataclass(frozen=True, slots=True)
class _Plan:
    endpoint: Callable[..., Coroutine[Any, Any, Response]]
    credentials: Callable[..., Coroutine[Any, Any, Any]]
    credentials_name: str  # the endpoint's parameter that receives the credentials
    request_name: str  # the credentials dependency's Request parameter
    schemes: tuple[tuple[str, SecurityBase], ...]  # its parameters fed by security schemes
    body_fields: list[ModelField]
    body_name: str
    embed_body_fields: bool


class AgentCallRoute(StrictJsonRoute):
    """``StrictJsonRoute`` with the direct handler when the endpoint has the shape above."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        generic = super().get_route_handler()
        plan = _plan(self.dependant, self._embed_body_fields)
        if plan is None:
            return generic
        overrides = self.dependency_overrides_provider
        declared: frozenset[str] = frozenset()  # the shape admits no query parameters

        async def direct_handler(request: Request) -> Response:
            if overrides is not None and getattr(overrides, "dependency_overrides", None):
                return await generic(request)  # a test's override: FastAPI resolves it
            strict = await strict_request(request, declared, takes_body=True)
            arguments = {plan.request_name: strict}
            for name, scheme in plan.schemes:
                arguments[name] = await scheme(strict)  # type: ignore[operator]
            call = await plan.credentials(**arguments)
            body: Any = await strict.json() if await strict.body() else Undefined
            values, errors = await request_body_to_args(
                body_fields=plan.body_fields,
                received_body=body,
                embed_body_fields=plan.embed_body_fields,
            )
            if errors:
                raise RequestValidationError(errors, body=None if body is Undefined else body)
            return await plan.endpoint(
                **{plan.credentials_name: call, plan.body_name: values[plan.body_name]}
            )

        return direct_handler


def _plan(dependant: Dependant, embed_body_fields: bool) -> _Plan | None:
    """The parts of ``dependant`` if it has the one shape the direct handler serves."""
    endpoint = dependant.call
    if (
        endpoint is None
        or not inspect.iscoroutinefunction(endpoint)
        or len(dependant.dependencies) != 1
        or len(dependant.body_params) != 1
        or dependant.request_param_name is not None
        or _has_own_params(dependant)
        or not _returns_response(endpoint)
    ):
        return None
    credentials = dependant.dependencies[0]
    if (
        credentials.call is None
        or credentials.name is None
        or not inspect.iscoroutinefunction(credentials.call)
        or credentials.request_param_name is None
        or credentials.body_params
        or _has_own_params(credentials)
        or credentials.scope == "request"
    ):
        return None
    schemes: list[tuple[str, SecurityBase]] = []
    for sub in credentials.dependencies:
        if (
            sub.name is None
            or not isinstance(sub.call, SecurityBase)
            or sub.dependencies
            or sub.body_params
            or sub.path_params
            or sub.query_params
            or sub.header_params
            or sub.cookie_params
        ):
            return None
        schemes.append((sub.name, sub.call))
    body_field = dependant.body_params[0]
    return _Plan(
        endpoint=endpoint,
        credentials=credentials.call,
        credentials_name=credentials.name,
        request_name=credentials.request_param_name,
        schemes=tuple(schemes),
        body_fields=list(dependant.body_params),
        body_name=body_field.name,
        embed_body_fields=embed_body_fields,
    )


def _has_own_params(dependant: Dependant) -> bool:
    return bool(
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    )


def _returns_response(endpoint: Callable[..., Any]) -> bool:
    try:
        returned = get_type_hints(endpoint).get("return")
    except Exception:  # an unresolvable annotation: not this shape
        return False
    return inspect.isclass(returned) and issubclass(returned, Response)
