"""The shared webhook sender: real HTTP, a bounded queue, failures reported, bounded close."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from remit.errors import InvalidRequest
from remit.webhooks import FailureEvent, WebhookSender


class _Hook(BaseHTTPRequestHandler):
    bodies: ClassVar[list[Any]] = []
    status = 204
    got = threading.Event()

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(
            (self.headers["Content-Type"], json.loads(self.rfile.read(length)))
        )
        self.send_response(type(self).status)
        self.end_headers()
        type(self).got.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.bodies = []
    _Hook.status = 204
    _Hook.got = threading.Event()
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


class Failures:
    def __init__(self) -> None:
        self.seen: list[tuple[FailureEvent, str, str]] = []

    def __call__(self, event: FailureEvent, key: str, error: str) -> None:
        self.seen.append((event, key, error))


def test_posts_json_to_a_real_endpoint(hook: str) -> None:
    failures = Failures()
    sender = WebhookSender(hook, setting="X_WEBHOOK", on_failure=failures)
    try:
        assert sender.send("k1", {"type": "t", "n": 1})
        assert sender.send("k2", {"type": "t", "n": 2})
        assert sender.join(10)
        assert [b for _, b in _Hook.bodies] == [{"n": 1, "type": "t"}, {"n": 2, "type": "t"}]
        assert {ct for ct, _ in _Hook.bodies} == {"application/json"}
        assert failures.seen == []
    finally:
        sender.close()


def test_an_http_error_and_a_refused_connection_are_reported(hook: str) -> None:
    _Hook.status = 500
    failures = Failures()
    sender = WebhookSender(hook, setting="X_WEBHOOK", on_failure=failures)
    sender.send("k1", {"a": 1})
    assert sender.join(10)
    assert failures.seen == [("failed", "k1", "HTTPError")]
    sender.close()

    probe = HTTPServer(("127.0.0.1", 0), _Hook)
    port = probe.server_address[1]
    probe.server_close()  # nobody listens here
    refused = Failures()
    sender = WebhookSender(f"http://127.0.0.1:{port}/", setting="X", on_failure=refused)
    sender.send("k2", {"a": 1})
    assert sender.join(10)
    sender.close()
    assert refused.seen == [("failed", "k2", "URLError")]


def test_a_full_queue_drops_without_blocking() -> None:
    release = threading.Event()
    started = threading.Event()
    posted: list[bytes] = []

    def slow(url: str, body: bytes, timeout: float) -> None:
        started.set()
        release.wait(10)
        posted.append(body)

    failures = Failures()
    sender = WebhookSender(
        "http://hook.invalid/", setting="X", on_failure=failures, capacity=2, post=slow
    )
    assert sender.send("first", {"i": 0})
    assert started.wait(5)  # the worker holds "first"; the queue is empty again
    began = time.monotonic()
    results = [sender.send(f"k{i}", {"i": i}) for i in range(1, 6)]
    assert time.monotonic() - began < 0.5  # never waits for the slow endpoint
    assert results == [True, True, False, False, False]
    assert failures.seen == [("dropped", f"k{i}", "queue_full") for i in (3, 4, 5)]
    release.set()
    assert sender.join(10)
    assert len(posted) == 3
    sender.close()


def test_close_drains_with_a_bound_and_reports_what_is_left() -> None:
    release = threading.Event()
    posted: list[bytes] = []

    def stuck(url: str, body: bytes, timeout: float) -> None:
        release.wait(10)
        posted.append(body)

    failures = Failures()
    sender = WebhookSender("https://hook.invalid/", setting="X", on_failure=failures, post=stuck)
    for i in range(3):
        sender.send(f"k{i}", {"i": i})
    began = time.monotonic()
    sender.close(timeout=0.2)
    release.set()
    assert time.monotonic() - began < 3
    # k0 was in flight; k1 and k2 were still queued when the bound ran out.
    assert failures.seen == [("dropped", "k1", "closed"), ("dropped", "k2", "closed")]
    assert not sender.send("late", {"i": 9})
    assert failures.seen[-1] == ("dropped", "late", "closed")


def test_close_waits_for_a_quick_drain() -> None:
    posted: list[bytes] = []

    def quick(url: str, body: bytes, timeout: float) -> None:
        time.sleep(0.01)
        posted.append(body)

    failures = Failures()
    sender = WebhookSender("http://hook.invalid/", setting="X", on_failure=failures, post=quick)
    for i in range(5):
        sender.send(f"k{i}", {"i": i})
    sender.close(timeout=5)
    assert len(posted) == 5 and failures.seen == []


def test_a_failing_callback_never_escapes() -> None:
    def boom(event: FailureEvent, key: str, error: str) -> None:
        raise RuntimeError("audit closed")

    def fail(url: str, body: bytes, timeout: float) -> None:
        raise TimeoutError

    sender = WebhookSender("http://hook.invalid/", setting="X", on_failure=boom, post=fail)
    assert sender.send("k", {"a": 1})
    assert sender.join(5)
    sender.close()


def test_no_url_sends_nothing_and_starts_no_thread() -> None:
    failures = Failures()
    sender = WebhookSender("", setting="X", on_failure=failures)
    before = threading.active_count()
    assert not sender.send("k", {"a": 1})
    assert threading.active_count() == before and failures.seen == []
    sender.close()


def test_an_unencodable_document_is_reported_not_raised() -> None:
    failures = Failures()
    sender = WebhookSender("http://hook.invalid/", setting="X", on_failure=failures)
    assert not sender.send("k", {"a": object()})
    assert failures.seen == [("dropped", "k", "TypeError")]


@pytest.mark.parametrize("url", ["ftp://x/", "file:///etc/passwd", "http://", "not a url"])
def test_bad_urls_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        WebhookSender(url, setting="REMIT_ALERT_WEBHOOK", on_failure=Failures())
    assert caught.value.reason == "bad_setting"
    assert "REMIT_ALERT_WEBHOOK" in str(caught.value)


def test_audited_webhook_names_its_records() -> None:
    from remit.webhooks import AuditedWebhook

    class Log:
        def __init__(self) -> None:
            self.records: list[tuple[str, dict[str, Any]]] = []

        def append(self, kind: str, data: Any, /) -> object:
            self.records.append((kind, dict(data)))
            return None

    def fail(url: str, body: bytes, timeout: float) -> None:
        raise ConnectionRefusedError

    log = Log()
    hook = AuditedWebhook(
        "http://hook.invalid/", log, prefix="alert", field="alert", setting="X", post=fail
    )
    hook.sender.send("evt1", {"a": 1})
    hook.join(5)
    hook.close()
    hook.sender.send("evt2", {"a": 2})
    assert log.records == [
        ("alert.webhook_failed", {"alert": "evt1", "error": "ConnectionRefusedError"}),
        ("alert.webhook_dropped", {"alert": "evt2", "error": "closed"}),
    ]


class _Redirector(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []
    status = 302

    def _any(self) -> None:
        type(self).paths.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/hook":
            self.send_response(type(self).status)
            self.send_header("Location", "/internal-target")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:  # the redirect target: must never be requested
            self.send_response(204)
            self.end_headers()

    def do_POST(self) -> None:
        self._any()

    def do_GET(self) -> None:
        self._any()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_is_a_failure(status: int) -> None:
    _Redirector.paths = []
    _Redirector.status = status
    server = HTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    failures = Failures()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sender = WebhookSender(url, setting="X", on_failure=failures)
    try:
        assert sender.send("k1", {"a": 1})
        assert sender.join(10)
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
    assert _Redirector.paths == ["POST /hook"]  # the target was never requested
    assert failures.seen == [("failed", "k1", "HTTPError")]


class _Drip(BaseHTTPRequestHandler):
    stop = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        # One byte every 0.1 s, far below any per-read timeout, for ~30 s.
        for byte in b"HTTP/1.1 204 No Content\r\nX-Pad: " + b"x" * 300:
            if type(self).stop.is_set():
                return
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_slow_drip_endpoint_is_cut_off_at_the_total_deadline() -> None:
    _Drip.stop = threading.Event()
    server = HTTPServer(("127.0.0.1", 0), _Drip)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    failures = Failures()
    sender = WebhookSender(
        f"http://127.0.0.1:{server.server_address[1]}/hook",
        setting="X",
        on_failure=failures,
        timeout=1.0,
    )
    try:
        began = time.monotonic()
        assert sender.send("k1", {"a": 1})
        assert sender.join(5)  # gave up at the 1 s deadline, not after the ~30 s drip
        assert time.monotonic() - began < 3.0
        assert failures.seen == [("failed", "k1", "TimeoutError")]
    finally:
        _Drip.stop.set()
        sender.close()
        server.shutdown()
        server.server_close()
