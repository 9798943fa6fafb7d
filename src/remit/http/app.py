"""The HTTP API v1 (docs/http-api.md): a thin adapter over ``remit.service.Remit``.

``create_app`` wires the routes, the error table, the body rules and the
metrics around one service instance. The app authenticates and translates;
every decision is the service's.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from remit import __version__
from remit.errors import RemitError
from remit.http.agents import add_agent_routes
from remit.http.auth import check_public_url
from remit.http.body import StrictJsonRoute
from remit.http.metrics import CONTENT_TYPE, Metrics
from remit.http.middleware import RequestContext
from remit.http.operators import add_operator_routes
from remit.http.problems import (
    PROBLEM_MEDIA_TYPE,
    documented,
    http_error_handler,
    remit_error_handler,
    unhandled_error_handler,
    validation_error_handler,
)
from remit.http.wire import HealthOut, JwksOut
from remit.service import Remit

API_TITLE: Final = "Remit HTTP API"
API_VERSION: Final = "1"


def create_app(remit: Remit, *, close_on_shutdown: bool = False) -> FastAPI:
    """The ASGI app for one ``Remit``; with ``close_on_shutdown`` the app owns and closes it."""
    check_public_url(remit.settings.public_url)
    metrics = Metrics(remit)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_on_shutdown:
                # Flushes the audit writer and writes a final signed checkpoint.
                await anyio.to_thread.run_sync(remit.close)

    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        summary="Attested agent instances, per-task tokens, a decision on every tool call.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below as an ordinary route, so it is counted like the rest
        lifespan=lifespan,
    )
    app.router.route_class = StrictJsonRoute
    app.add_exception_handler(RemitError, remit_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
    app.add_middleware(RequestContext, metrics=metrics)
    # Routes go straight onto the app's router, so routing, metrics and the Allow header
    # all see every route.
    add_public_routes(app.router, remit, metrics)
    add_agent_routes(app.router, remit, metrics)
    add_operator_routes(app.router, remit)
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


def add_public_routes(router: APIRouter, remit: Remit, metrics: Metrics) -> None:
    """Health, readiness, keys and metrics: no authentication."""

    @router.get(
        "/healthz",
        response_model=HealthOut,
        responses=documented(400),
        summary="Liveness",
        tags=["public"],
    )
    def healthz() -> HealthOut:
        return HealthOut(status="ok")

    @router.get(
        "/readyz",
        tags=["public"],
        response_model=HealthOut,
        responses=documented(400, 503),
        summary="Readiness: the store answers and the audit log can be written",
    )
    def readyz() -> HealthOut:
        remit.check_ready()
        return HealthOut(status="ready")

    @router.get(
        "/.well-known/jwks.json",
        tags=["public"],
        response_model=JwksOut,
        responses=documented(400, 503),
        summary="Remit's public signing keys (current and still overlapping)",
    )
    def jwks() -> JwksOut:
        return JwksOut.model_validate(remit.jwks())

    @router.get(
        "/metrics",
        tags=["public"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **documented(400),
        },
        summary="Prometheus metrics",
    )
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document, with problem+json errors and without FastAPI's 422 shape."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=f"Remit {__version__}: see docs/http-api.md.",
                routes=app.routes,
            )
            _fix_document(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def _fix_document(schema: dict[str, Any]) -> None:
    """Errors as ``application/problem+json``; no 422 validation shape; no null queries."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                _drop_null(parameter)
            responses = operation.get("responses", {})
            default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
            if default_422.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]  # validation errors are 400 invalid_request problems
            for status, response in responses.items():
                content = response.get("content", {})
                if int(status) >= 400 and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _drop_null(parameter: dict[str, Any]) -> None:
    """An optional query parameter is absent, never null: ``anyOf [X, null]`` becomes X."""
    schema = parameter.get("schema", {})
    variants = schema.get("anyOf")
    if parameter.get("in") == "query" and isinstance(variants, list):
        kept = [v for v in variants if v != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            parameter["schema"] = {**kept[0], **rest}
