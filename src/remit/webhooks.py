"""One webhook sender for every notification Remit POSTs (alerts, approval requests).

``WebhookSender`` POSTs JSON documents to one operator-configured http(s) URL from a
single background worker fed by a bounded queue:

* ``send`` never blocks and never raises: it encodes the document, enqueues it and
  returns; a full queue (or a closed sender) drops the notification and reports it;
* each POST has a total deadline (``timeout`` seconds for the whole delivery, not per
  socket read: a slow-drip endpoint is cut off, see ``post_json``) and never follows a
  redirect (a 3xx is a failure: no blind request to wherever it points); any failure
  (connection refused, deadline, HTTP error, redirect) is reported, never raised, and
  the worker carries on with the next one;
* failures and drops go to ``on_failure(event, key, error)`` with ``event`` one of
  ``"failed"`` / ``"dropped"``, the caller's ``key`` (an audit event id, an approval
  id) and the exception's *type name* or ``queue_full`` / ``closed``: never a message,
  a URL or a body, so nothing secret reaches the audit log. Callers audit it;
* ``close`` drains what is queued for at most ``timeout`` seconds, then stops the
  worker; what is still queued then is dropped (a slow endpoint cannot hold shutdown).

The worker thread is started on the first ``send``, so a sender without a URL (the
default) costs nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from remit.errors import InvalidRequest

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_TIMEOUT",
    "AuditedWebhook",
    "FailureEvent",
    "OnFailure",
    "Post",
    "WebhookSender",
    "post_json",
]

DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_CAPACITY: Final = 256
CLOSE_TIMEOUT: Final = 6.0

FailureEvent = Literal["failed", "dropped"]
Post = Callable[[str, bytes, float], None]
OnFailure = Callable[[FailureEvent, str, str], None]

_STOP: Final = object()


class _Deadline:
    """Shuts down every socket of one delivery when its total time is up, so no read
    (status line, headers, body, TLS handshake) can outlast it however slowly it drips."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._shut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed, or detached by the TLS wrap
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _DeadlineMixin(http.client.HTTPConnection):
    _deadline: _Deadline

    def _arm(self, deadline: _Deadline) -> None:
        self._deadline = deadline
        self._create_connection = lambda *a, **kw: deadline.track(
            socket.create_connection(*a, **kw)
        )

    def connect(self) -> None:
        super().connect()
        self._deadline.track(self.sock)  # the TLS socket, for https


class _HTTPConnection(_DeadlineMixin):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arm(deadline)


class _HTTPSConnection(_DeadlineMixin, http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arm(deadline)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, /, **kwargs: Any) -> http.client.HTTPConnection:
            return _HTTPConnection(host, deadline=self._deadline, **kwargs)

        return self.do_open(connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, /, **kwargs: Any) -> http.client.HTTPConnection:
            return _HTTPSConnection(host, deadline=self._deadline, **kwargs)

        return self.do_open(connection, req)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the 3xx is raised as an HTTPError (a failed delivery)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_json(url: str, body: bytes, timeout: float) -> None:
    """POST ``body`` as JSON; raises on any failure (HTTP errors included).

    A redirect is never followed (HTTPError with the 3xx status). ``timeout`` bounds the
    whole delivery: past it every socket of the request is shut down and TimeoutError is
    raised, however slowly the endpoint drips bytes."""
    # The URL is the operator's setting, checked to be http(s) when the sender is built.
    request = urllib.request.Request(  # noqa: S310
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(
        _NoRedirect(), _HTTPHandler(deadline), _HTTPSHandler(deadline)
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(1024)
    except Exception as exc:
        if deadline.expired:
            raise TimeoutError("the webhook delivery passed its deadline") from exc
        raise
    finally:
        deadline.cancel()


class WebhookSender:
    """POSTs JSON documents to ``url`` from one background worker (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        setting: str,
        on_failure: OnFailure,
        timeout: float = DEFAULT_TIMEOUT,
        capacity: int = DEFAULT_CAPACITY,
        post: Post | None = None,
        name: str = "remit-webhook",
    ) -> None:
        """``setting`` names the configuration the URL came from, for the error raised
        (``invalid_request``, reason ``bad_setting``) when it is not an http(s) URL."""
        if url:
            try:
                parts = urlsplit(url)
            except ValueError:
                parts = None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidRequest(f"{setting} must be an http(s) URL", reason="bad_setting")
        if not 0 < timeout <= 300:
            raise InvalidRequest("a webhook timeout must be 0..300 seconds", reason="bad_setting")
        if not 0 < capacity <= 100_000:
            raise InvalidRequest("a webhook queue holds 1..100000 items", reason="bad_setting")
        self.url = url
        self.timeout = timeout
        self._on_failure = on_failure
        self._post = post or post_json
        self._name = name
        self._queue: queue.Queue[tuple[str, bytes] | object] = queue.Queue(capacity)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def send(self, key: str, document: Mapping[str, Any]) -> bool:
        """Queue ``document`` for POSTing; False (and reported) if it was dropped.
        Never blocks, never raises."""
        if not self.url:
            return False
        try:
            body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")
        except (TypeError, ValueError) as exc:
            self._report("dropped", key, type(exc).__name__)
            return False
        with self._lock:
            if self._closed:
                dropped = "closed"
            else:
                self._start_locked()
                try:
                    self._queue.put_nowait((key, body))
                    return True
                except queue.Full:
                    dropped = "queue_full"
        self._report("dropped", key, dropped)
        return False

    def _start_locked(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, daemon=True, name=self._name)
            self._worker.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if not isinstance(item, tuple):
                    return  # the stop marker
                key, body = item
                try:
                    self._post(self.url, body, self.timeout)
                except Exception as exc:  # any failure is reported, never raised
                    self._report("failed", key, type(exc).__name__)
            finally:
                self._queue.task_done()

    def _report(self, event: FailureEvent, key: str, error: str) -> None:
        with contextlib.suppress(Exception):  # e.g. the audit log is closed by now
            self._on_failure(event, key, error)

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is sent or failed, at most ``timeout`` seconds;
        True if the queue is drained."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop accepting, drain for at most ``timeout`` seconds, stop the worker.
        Whatever is still queued after that is reported as dropped (``closed``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
        if worker is None:
            return
        self.join(timeout)
        left: list[str] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                left.append(str(item[0]))
            self._queue.task_done()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        for key in left:
            self._report("dropped", key, "closed")
        worker.join(timeout=1.0)


class AuditLike(Protocol):
    def append(self, kind: str, data: Mapping[str, Any], /) -> object: ...


class AuditedWebhook:
    """A ``WebhookSender`` whose failures and drops are audited as
    ``<prefix>.webhook_failed`` / ``<prefix>.webhook_dropped`` with
    ``{<field>: key, "error": <type name or queue_full/closed>}``."""

    def __init__(
        self,
        url: str,
        audit: AuditLike,
        *,
        prefix: str,
        field: str,
        setting: str,
        timeout: float = DEFAULT_TIMEOUT,
        capacity: int = DEFAULT_CAPACITY,
        post: Post | None = None,
    ) -> None:
        self.url = url
        self.audit = audit
        self._prefix = prefix
        self._field = field
        self.sender = WebhookSender(
            url,
            setting=setting,
            on_failure=self._record,
            timeout=timeout,
            capacity=capacity,
            post=post,
            name=f"remit-{prefix}-webhook",
        )

    def _record(self, event: FailureEvent, key: str, error: str) -> None:
        self.audit.append(f"{self._prefix}.webhook_{event}", {self._field: key, "error": error})

    def join(self, timeout: float = 10.0) -> None:
        """Wait until the queued notifications are sent or failed (tests, shutdown)."""
        self.sender.join(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        self.sender.close(timeout)
