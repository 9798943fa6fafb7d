"""Running the HTTP API: ``serve`` for ``remit serve``, ``running_server`` for tests and demos."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Final

import uvicorn

from remit.config import Settings
from remit.http.app import create_app
from remit.runtime import build_remit
from remit.service import Remit

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8750
_START_TIMEOUT: Final = 15.0
_STOP_TIMEOUT: Final = 15.0


def serve(settings: Settings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Build Remit from ``settings`` and serve the API with one worker until interrupted.

    On shutdown (SIGINT/SIGTERM) uvicorn drains requests, then the app's
    lifespan closes Remit: the audit writer flushes and a final signed
    checkpoint is written.
    """
    remit = build_remit(settings)
    try:
        app = create_app(remit, close_on_shutdown=True)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            workers=1,
            lifespan="on",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
        uvicorn.Server(config).run()
    finally:
        remit.close()  # a no-op after the lifespan closed it; needed if startup failed


def find_free_port(host: str = DEFAULT_HOST) -> int:
    """A port that is free on ``host`` right now (another process may take it later)."""
    with closing(socket.socket(_family(host), socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(remit: Remit, *, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
    """Serve ``remit`` from a daemon thread; yield the base URL, e.g. ``http://127.0.0.1:41234``.

    The listening socket is bound before the thread starts (port 0: any free
    port), so the URL is good as soon as it is yielded. The caller keeps
    ownership of ``remit``; the server is stopped on exit.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        create_app(remit),
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="remit-http", daemon=True
    )
    thread.start()
    try:
        _wait_started(server, thread)
        yield _base_url(host, bound_port)
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
