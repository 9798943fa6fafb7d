"""The outer ASGI layer: a request id on every response, the request counter, and the
last resort for a bug (a 500 problem, logged here, so the connection is answered cleanly)."""

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remit.errors import RemitError
from remit.http.metrics import Metrics
from remit.http.problems import problem_response
from remit.ids import new_id

REQUEST_ID_HEADER = b"x-request-id"
logger = logging.getLogger("remit.http")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                if not any(name.lower() == REQUEST_ID_HEADER for name, _ in headers):
                    headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error, request %s", request_id)
            if status:  # the response has begun: nothing can be said any more
                raise
            error = problem_response(RemitError("internal error"), request_id)
            await error(scope, receive, send_with_id)
        finally:
            # The route's template, as in the OpenAPI document (no path convertors).
            route = scope.get("route")
            path = str(getattr(route, "path_format", None) or "unmatched")
            self.metrics.request(path, status or 500)
