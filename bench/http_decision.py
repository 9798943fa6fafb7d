"""Benchmark: the HTTP decision (DESIGN §8), beside a bare ASGI endpoint measured in the same run.

    python bench/http_decision.py [--seconds 3] [--rounds 3] [--client auto|wrk|python] [--policies 100]

Two servers, each ONE uvicorn worker (uvloop + httptools when installed, no
access log), each in its own process, on 127.0.0.1:

- ``remit``: the real Remit API (``remit.http``) on a fresh data directory,
  default settings (durable audit group commit, SQLite) except that the
  per-minute rate limit is lifted; ``--policies`` operator policies loaded.
- ``ping``: a bare Starlette app answering ``GET /ping`` with ``{"ok": true}``.

The load generator runs in this process (so client and server do not share a
GIL): ``wrk -t1`` when it is installed, else a minimal keep-alive HTTP/1.1
client on asyncio (uvloop). Every ``POST /v1/authorize`` carries a fresh proof
of possession bound to ``POST`` and the request URL; the proofs are signed
before the timed window, so the client's signing cost is not in the server's
measurement. Each measurement is bounded in time (``--seconds``) and count
(the pre-signed proofs; a task's call budget is 10,000, so several tasks are
used). Rounds interleave the scenarios; the table shows the median over rounds.

The budget: decision throughput at 16 connections ≥ 0.25x the same run's
bare endpoint throughput. Absolute numbers move with the machine (client and
server share its cores); the ratio is what to track.
"""

# ruff: noqa: PLC0415
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

HOST = "127.0.0.1"
TOOL = "docs/read"
ARGS: dict[str, Any] = {"q": "quarterly report"}
PRINCIPAL = "user:bench@x.example"
TASK_BUDGET = 10_000  # MandateLimits.max_call_budget
CATALOG = """
tools:
  - {name: docs/read, privilege: read, labels: [internal]}
  - {name: email/send, privilege: act, destinations: {to: email}}
"""


# ---------------------------------------------------------------------- servers (child processes)


def operator_policies(n: int) -> str:
    """n policies over many tools, as bench/decision.py authors them (sliced away per call)."""
    out = []
    for i in range(n):
        server, tool = f"svc{i % 50}", f"tool{i}"
        if i % 10 == 0:
            out.append(
                f'@id("p{i}") forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource in ToolGroup::"{server}") '
                f"when {{ context.anomaly_score > {50 + i % 50} }};"
            )
        else:
            out.append(
                f'@id("p{i}") permit (principal, action == Action::"read", '
                f'resource == Tool::"{server}/{tool}") when {{ context.tool_in_mandate }};'
            )
    return "\n".join(out)


def _uvicorn_config(app: Any, port: int) -> Any:
    import importlib.util

    import uvicorn

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return uvicorn.Config(
        app,
        host=HOST,
        port=port,
        workers=1,
        loop=loop,
        http=http,
        access_log=False,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )


def serve_ping(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/ping", ping)])
    uvicorn.Server(_uvicorn_config(app, port)).run()


def serve_remit(port: int, data_dir: Path, policies: int, durable: bool) -> None:
    import uvicorn

    from remit.config import Settings
    from remit.core.policy import PolicySource
    from remit.http.app import create_app
    from remit.runtime import build_remit, catalog_from_yaml

    settings = replace(
        Settings(), data_dir=data_dir, max_calls_per_minute=10**9, audit_durable=durable
    )
    remit = build_remit(settings, catalog=catalog_from_yaml(CATALOG))
    try:
        if policies:
            remit.load_policies([PolicySource("bench.cedar", operator_policies(policies))])
        remit.register_principal(PRINCIPAL)
        agent = remit.register_agent(
            "bench",
            owner="ops",
            ceiling={"tools": [TOOL], "privileges": ["read"], "max_sensitivity": "internal"},
        )
        join = remit.create_join_token(agent.agent_id)
        # The one line the parent reads: a single-use join token, on a pipe, on loopback.
        sys.stdout.write(f"JOIN {join.reveal()}\n")
        sys.stdout.flush()
        app = create_app(remit, close_on_shutdown=True)
        uvicorn.Server(_uvicorn_config(app, port)).run()
    finally:
        remit.close()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[str]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start in time")


def start_server(kind: str, extra: Sequence[str] = ()) -> tuple[Server, str | None]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, *extra],
        stdout=subprocess.PIPE if kind == "remit" else subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    server = Server(kind, port, proc)
    join = None
    try:
        if kind == "remit":
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("JOIN "):
                raise RuntimeError("the remit server did not start")
            join = line.split(" ", 1)[1].strip()
        wait_port(port, proc)
    except BaseException:
        server.stop()
        raise
    return server, join


# ---------------------------------------------------------------------- requests


def raw_request(method: str, path: str, port: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


@dataclass
class Authorizer:
    """The agent side: an attested instance and its tasks, over the real HTTP API."""

    base_url: str
    port: int
    join_token: str
    session: Any = None
    client: Any = None
    body: bytes = field(default=b"")

    def start(self) -> None:
        from remit.agent import AgentSession
        from remit.client import RemitClient

        self.client = RemitClient(self.base_url)
        self.session = AgentSession.attest(self.client, self.join_token)
        self.body = json.dumps({"tool": TOOL, "arguments": ARGS}).encode()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def open_task(self) -> str:
        task = self.session.open_task(
            principal=PRINCIPAL,
            intent={
                "purpose": "bench",
                "tools": [TOOL],
                "call_budget": TASK_BUDGET,
                "ttl_seconds": 3600,
            },
        )
        decision = task.authorize(TOOL, ARGS)  # warm: token cache, policy slice
        assert decision.allowed, decision.reasons
        token: str = task.token
        return token

    def signed(self, count: int) -> list[tuple[str, str]]:
        """``count`` (task token, fresh proof) pairs, over as many tasks as the budget needs."""
        pairs: list[tuple[str, str]] = []
        while len(pairs) < count:
            token = self.open_task()
            for _ in range(min(TASK_BUDGET - 1, count - len(pairs))):
                pairs.append((token, self.session.proof(token, TOOL, dict(ARGS))))
        return pairs

    def requests(self, count: int) -> list[bytes]:
        return [
            raw_request(
                "POST",
                "/v1/authorize",
                self.port,
                {
                    "Authorization": f"Bearer {token}",
                    "Remit-Proof": proof,
                    "Content-Type": "application/json",
                },
                self.body,
            )
            for token, proof in self.signed(count)
        ]


# ---------------------------------------------------------------------- load generators


@dataclass
class Result:
    completed: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int
    client: str

    @property
    def rps(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)


class _Source:
    def __init__(self, requests: Sequence[bytes], limit: int, seconds: float) -> None:
        self.requests = requests
        self.limit = limit
        self.seconds = seconds
        self.deadline = 0.0
        self.sent = 0

    def next(self) -> bytes | None:
        if self.sent >= self.limit or time.perf_counter() >= self.deadline:
            return None
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return request


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send, read one whole response (Content-Length), repeat."""

    def __init__(self, source: _Source, latencies: list[int], statuses: dict[int, int]) -> None:
        self.source = source
        self.latencies = latencies
        self.statuses = statuses
        self.buffer = bytearray()
        self.need: int | None = None
        self.status = 0
        self.started = 0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def go(self) -> None:
        assert self.transport is not None
        request = self.source.next()
        if request is None:
            self.transport.close()
            return
        self.started = time.perf_counter_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # never hang the run on a bad response
            if not self.closed.done():
                self.closed.set_exception(exc)
            assert self.transport is not None
            self.transport.close()

    def _received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end])
                match = _CONTENT_LENGTH.search(head)
                if match is None:
                    raise RuntimeError("response without Content-Length")
                self.status = int(head[9:12])
                self.need = end + 4 + int(match.group(1))
            if len(self.buffer) < self.need:
                return
            self.latencies.append(time.perf_counter_ns() - self.started)
            self.statuses[self.status] = self.statuses.get(self.status, 0) + 1
            head_end = self.buffer.find(b"\r\n\r\n") + 4
            self.last_body = bytes(self.buffer[head_end : self.need])
            del self.buffer[: self.need]
            self.need = None
            self.go()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _python_load(
    port: int, requests: Sequence[bytes], limit: int, connections: int, seconds: float
) -> tuple[Result, bytes]:
    loop = asyncio.get_running_loop()
    source = _Source(requests, limit, seconds)
    latencies: list[int] = []
    statuses: dict[int, int] = {}
    conns: list[_Connection] = []
    for _ in range(connections):
        _, proto = await loop.create_connection(
            lambda: _Connection(source, latencies, statuses), HOST, port
        )
        conns.append(proto)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        source.deadline = start + seconds
        for conn in conns:
            conn.go()
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in conns)), seconds + 30)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    latencies.sort()
    errors = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    n = len(latencies)
    result = Result(
        completed=n,
        seconds=elapsed,
        p50_us=latencies[n // 2] / 1000 if n else 0.0,
        p99_us=latencies[min(n - 1, int(n * 0.99))] / 1000 if n else 0.0,
        errors=errors,
        client="python",
    )
    return result, conns[0].last_body


def python_load(
    port: int, requests: Sequence[bytes], limit: int, connections: int, seconds: float
) -> tuple[Result, bytes]:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_python_load(port, requests, limit, connections, seconds))


def _lua_string(data: bytes) -> str:
    return "'" + "".join(f"\\{b:03d}" if chr(b) in "'\\\r\n" else chr(b) for b in data) + "'"


def _wrk_script(requests: Sequence[bytes], limit: int, connections: int, tmp: Path) -> Path:
    """A wrk script that sends each pre-built request once, stopping before they run out."""
    path = tmp / f"load-{len(requests)}-{connections}.lua"
    with path.open("w", encoding="ascii") as out:
        out.write("local reqs = {\n")
        for request in requests:
            out.write(_lua_string(request) + ",\n")
        out.write("}\n")
        if len(requests) == 1:
            out.write("request = function() return reqs[1] end\n")
        else:
            # Stop with a margin of one request per connection, so none is sent twice.
            out.write(
                f"local n = 0\nlocal stop_at = {max(1, min(limit, len(requests)) - connections)}\n"
                "request = function()\n  n = n + 1\n"
                "  if n == stop_at then wrk.thread:stop() end\n"
                "  if n > #reqs then n = #reqs end\n  return reqs[n]\nend\n"
            )
    return path


def _to_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[match.group(2)]


def wrk_load(
    wrk: str,
    port: int,
    path: str,
    requests: Sequence[bytes],
    limit: int,
    connections: int,
    seconds: float,
    tmp: Path,
) -> Result:
    script = _wrk_script(requests, limit, connections, tmp)
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    cmd += ["--timeout", "5s", "-s", str(script), f"http://{HOST}:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    text = out.stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    assert total and p50 and p99, text
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    return Result(
        completed=int(total.group(1)),
        seconds=_to_us(total.group(2) + total.group(3)) / 1e6,
        p50_us=_to_us(p50.group(1)),
        p99_us=_to_us(p99.group(1)),
        errors=errors,
        client="wrk",
    )


# ---------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (max 30)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (max 5)")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--policies", type=int, default=100, help="operator policies loaded")
    parser.add_argument(
        "--audit",
        choices=["durable", "enqueue"],
        default="durable",
        help="durable (the default setting): a decision returns after its audit group commit",
    )
    parser.add_argument("--max-requests", type=int, default=30_000, help="per measurement")
    parser.add_argument("--serve", choices=["remit", "ping"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve == "ping":
        serve_ping(args.port)
        return
    if args.serve == "remit":
        serve_remit(args.port, args.data, args.policies, args.audit == "durable")
        return

    seconds = min(max(args.seconds, 0.5), 30.0)
    rounds = min(max(args.rounds, 1), 5)
    limit = min(max(args.max_requests, 100), 200_000)
    wrk = shutil.which("wrk") if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --client python")
    client = "wrk -t1" if wrk else "python asyncio (uvloop) keep-alive client"

    with tempfile.TemporaryDirectory(prefix="remit-bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        servers: list[Server] = []
        agent: Authorizer | None = None
        try:
            ping, _ = start_server("ping")
            servers.append(ping)
            data_dir = tmp / "data"
            remit, join = start_server(
                "remit",
                ["--data", str(data_dir), "--policies", str(args.policies), "--audit", args.audit],
            )
            servers.append(remit)
            assert join is not None
            agent = Authorizer(remit.base_url, remit.port, join)
            agent.start()
            ping_request = [raw_request("GET", "/ping", ping.port, {}, b"")]

            seen_rps: dict[int, float] = {}

            def measure(server: Server, connections: int) -> Result:
                if server is ping:
                    requests, path, cap = ping_request, "/ping", 10**7
                else:
                    assert agent is not None
                    # Enough proofs for the time bound (going by the last round), at most limit;
                    # signed before the timed window.
                    last = seen_rps.get(connections)
                    wanted = limit if last is None else int(last * seconds * 2) + 1000
                    requests = agent.requests(min(limit, wanted))
                    path, cap = "/v1/authorize", len(requests)
                if wrk:
                    return wrk_load(
                        wrk, server.port, path, requests, cap, connections, seconds, tmp
                    )
                result, body = python_load(server.port, requests, cap, connections, seconds)
                if server is remit:
                    assert json.loads(body)["allowed"] is True, body[:200]
                return result

            # Warm both servers (and check the decision path answers "allowed").
            measure(ping, 16)
            warm = python_load(remit.port, agent.requests(200), 200, 4, 5.0)
            assert warm[0].errors == 0 and json.loads(warm[1])["allowed"] is True

            scenarios = [(ping, 1), (ping, 16), (remit, 1), (remit, 16)]
            results: dict[tuple[str, int], list[Result]] = {}
            print(f"Remit HTTP decision benchmark: {rounds} rounds x {seconds:g}s, client {client}")
            print(
                f"{'round':>5} {'endpoint':24} {'conns':>5} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'n':>7} {'errors':>6}"
            )
            for round_no in range(1, rounds + 1):
                for server, connections in scenarios:
                    result = measure(server, connections)
                    if server is remit:
                        seen_rps[connections] = result.rps
                    results.setdefault((server.name, connections), []).append(result)
                    label = "GET /ping (bare ASGI)" if server is ping else "POST /v1/authorize"
                    print(
                        f"{round_no:>5} {label:24} {connections:>5} {result.rps:>9.0f} "
                        f"{result.p50_us:>8.0f} {result.p99_us:>8.0f} {result.completed:>7} "
                        f"{result.errors:>6}",
                        flush=True,
                    )
        finally:
            if agent is not None:
                agent.close()
            for server in servers:
                server.stop()

    def med(key: tuple[str, int], attr: str) -> float:
        return float(statistics.median(float(getattr(r, attr)) for r in results[key]))

    print()
    print(
        f"== median of {rounds} rounds (1 uvicorn worker each; {args.policies} operator "
        f"policies; audit {args.audit})"
    )
    print(f"{'endpoint':24} {'conns':>5} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8}")
    for name, label in (("ping", "GET /ping (bare ASGI)"), ("remit", "POST /v1/authorize")):
        for connections in (1, 16):
            key = (name, connections)
            print(
                f"{label:24} {connections:>5} {med(key, 'rps'):>9.0f} "
                f"{med(key, 'p50_us'):>8.0f} {med(key, 'p99_us'):>8.0f}"
            )
    ratio16 = med(("remit", 16), "rps") / med(("ping", 16), "rps")
    ratio1 = med(("remit", 1), "rps") / med(("ping", 1), "rps")
    verdict = "within" if ratio16 >= 0.25 else "OVER"
    print(
        f"throughput ratio authorize / bare at 16 connections: {ratio16:.3f}x "
        f"(budget >= 0.25x: {verdict} budget); at 1 connection: {ratio1:.3f}x"
    )
    added = med(("remit", 1), "p50_us") - med(("ping", 1), "p50_us")
    print(f"added p50 latency at 1 connection: {added:.0f} µs over the bare endpoint")
    errors = sum(r.errors for rs in results.values() for r in rs)
    if errors:
        print(f"WARNING: {errors} non-2xx responses or socket errors")


if __name__ == "__main__":
    main()
