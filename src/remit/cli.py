"""The command line (typer + rich). It translates and calls Remit; it never decides.

Most commands talk to a running server through ``RemitClient``
(``--url`` / ``REMIT_URL``, ``--token`` / ``REMIT_ADMIN_TOKEN``). A few work
on local files with no server: ``policy validate|test|schema|baseline``,
``catalog validate``, ``audit verify --local``, ``admin-token`` when no
URL is given (the first admin token cannot come from the API), and
``secrets`` and ``leases`` (local: secret values are not served over HTTP; ``secrets
rotate-master`` and ``secrets rewrap`` also take ``--url``).

Output is a rich table for people, or with ``--json`` one JSON document on
stdout and nothing else. Errors go to stderr; the exit code says which kind
(``EXIT_CODES``). Secrets are never printed, except a join token or admin
token at the one moment it is created.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from remit import __version__
from remit.config import Settings, load_settings
from remit.core.policy import PolicyEngine
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, RemitError

if TYPE_CHECKING:
    from remit.client import RemitClient
    from remit.core.catalog import Catalog
    from remit.core.identity import Agent
    from remit.service import Remit, SecretInfo

app = typer.Typer(help="Remit: narrow, short-lived authority for AI agents.", no_args_is_help=True)


def _group(name: str, help_text: str) -> typer.Typer:
    sub = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


agent_app = _group("agent", "Agents: registered non-human identities.")
principal_app = _group("principal", "Principals: the humans tasks run for.")
join_token_app = _group("join-token", "Single-use join tokens for new agent instances.")
task_app = _group("task", "Tasks (operator side; agents open and end tasks through the SDK).")
catalog_app = _group("catalog", "The tool catalog.")
policy_app = _group("policy", "Cedar policies.")
audit_app = _group("audit", "The tamper-evident audit log.")
keys_app = _group("keys", "Remit's signing keys.")
admin_token_app = _group("admin-token", "Operator API tokens.")
kill_switch_app = _group("kill-switch", "Deny every call (or one agent's calls) at once.")
secrets_app = _group("secrets", "Sealed secrets (local: values are never printed).")
leases_app = _group("leases", "Credential leases bound to tasks (local: values are never printed).")

# Exit codes by error code: scripts can tell a refusal from a fault.
EXIT_CODES = {
    "invalid_request": 2,
    "invalid_grant": 2,
    "policy_invalid": 2,
    "not_found": 3,
    "conflict": 4,
    "denied": 5,
    "invalid_token": 6,
    "token_expired": 6,
    "token_revoked": 6,
    "invalid_proof": 6,
    "audit_unavailable": 7,
    "store_unavailable": 7,
    "provider_unavailable": 7,
    "forbidden": 9,
    "sealed": 10,
}
EXIT_UNREACHABLE = 7  # the server could not be reached: unavailable, like a store outage
EXIT_TESTS_FAILED = 1  # `policy test`: a case did not decide as expected
EXIT_AUDIT_BROKEN = 8  # `audit verify`: the chain does not verify
EXIT_FINDINGS = 11  # `analyze blast-radius --fail-on KIND`: a finding of that kind exists
EXIT_CHANGES = 12  # `policy replay --fail-on-change`: a decision would change
# `task revoke|end`: the task ended, but some of its leases are still being revoked
# downstream (BRK-04: partial completion is not success; the sweeper retries them).
EXIT_REVOCATION_PENDING = 13

DEFAULT_URL = "http://127.0.0.1:8750"
MAX_INPUT_BYTES = 4 * 1024 * 1024

# ---------------------------------------------------------------------- shared options

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="REMIT_URL", help="The Remit server.", show_envvar=True),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="REMIT_ADMIN_TOKEN",
        help="An admin API token (prefer the environment variable).",
        show_envvar=True,
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")
]
LocalUrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="REMIT_URL",
        help="The Remit server; without one, work on the local data directory.",
        show_envvar=True,
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="The data directory (default: REMIT_DATA_DIR).", show_default=False
    ),
]


@dataclass(frozen=True, slots=True)
class Output:
    """Where things go: data to stdout (a table or JSON), messages and errors to stderr."""

    json: bool = False

    @property
    def out(self) -> Console:
        return Console(highlight=False, soft_wrap=False)

    @property
    def err(self) -> Console:
        return Console(stderr=True, highlight=False)

    def data(self, document: object, render: Callable[[Console], None]) -> None:
        if self.json:
            sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
        else:
            render(self.out)

    def table(
        self,
        document: object,
        title: str,
        items: Sequence[Any],
        columns: Sequence[tuple[str, Callable[[Any], str]]],
    ) -> None:
        """A listing: JSON of ``document``, or a table of ``items``, one row each, one cell
        per ``(header, cell)`` column (cells escape what they show)."""

        def render(console: Console) -> None:
            rows = [tuple(cell(item) for _, cell in columns) for item in items]
            console.print(render_table(title, rows, [header for header, _ in columns]))

        self.data(document, render)

    def note(self, text: str) -> None:
        """A message for people (stderr), never part of the data."""
        self.err.print(text)

    def done(self, document: object, text: str) -> None:
        """A change was made: JSON of it, or one line saying what happened."""
        self.data(document, lambda console: console.print(text))


def exit_code_for(exc: RemitError) -> int:
    if exc.reason == "unreachable":
        return EXIT_UNREACHABLE
    return EXIT_CODES.get(exc.code, 1)


def _fail(output: Output, exc: RemitError) -> typer.Exit:
    output.err.print(f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}")
    if exc.code in ("invalid_token", "token_expired", "token_revoked") and exc.reason in (
        "missing_token",
        "bad_admin_token",
        "unknown_admin_token",
        "admin_token_revoked",
        "admin_token_expired",
    ):
        output.err.print("hint: pass an admin token with --token or REMIT_ADMIN_TOKEN")
    if output.json:
        error = {"code": exc.code, "message": exc.message}
        sys.stdout.write(json.dumps({"error": error}, sort_keys=True) + "\n")
    return typer.Exit(exit_code_for(exc))


@contextmanager
def _handled(output: Output) -> Iterator[None]:
    """Turn a RemitError into its message on stderr and its exit code."""
    try:
        yield
    except RemitError as exc:
        raise _fail(output, exc) from None


@contextmanager
def _client(url: str, token: str | None, output: Output) -> Iterator[RemitClient]:
    from remit.client import RemitClient

    with _handled(output), RemitClient(url, admin_token=token) as client:
        yield client


@contextmanager
def _local(data_dir: Path | None, output: Output) -> Iterator[Remit]:
    """The service on the local data directory (for bootstrap and offline checks)."""
    from remit.runtime import build_remit

    with _handled(output):
        # Offline commands decide no calls: skip teaching the anomaly monitor from the log.
        remit = build_remit(replace(_settings(data_dir), anomaly_history_days=0))
        try:
            yield remit
        finally:
            remit.close()


def _settings(data_dir: Path | None, config: Path | None = None) -> Settings:
    settings = load_settings(config_file=config)
    return settings.with_data_dir(data_dir) if data_dir is not None else settings


# ---------------------------------------------------------------------- rendering helpers


def _ts(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items()) or "-"
    return escape(str(value))


def render_table(title: str, rows: Sequence[Sequence[str]], columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _fields(title: str, data: Mapping[str, Any], time_keys: Sequence[str] = ()) -> Table:
    rows = [(escape(k), _ts(v) if k in time_keys else _text(v)) for k, v in data.items()]
    table = render_table(title, rows, ["field", "value"])
    table.show_header = False
    return table


def _agent_data(agent: Agent) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "name": agent.name,
        "owner": agent.owner,
        "description": agent.description,
        "ceiling": agent.ceiling.to_data(),
        "status": agent.status.value,
        "mode": agent.mode.value,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    }


_AGENT_TIMES = ("created_at", "updated_at")


def _read_text(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise InvalidRequest(f"{what} {path} is too large", reason="too_large")
        return path.read_text(encoding="utf-8")
    except OSError:
        raise InvalidRequest(f"cannot read {what} {path}", reason="unreadable") from None


def _read_yaml(path: Path, what: str) -> Any:
    """YAML (or JSON) from a file, with the safe loader only."""
    try:
        return yaml.safe_load(_read_text(path, what))
    except yaml.YAMLError:
        raise InvalidRequest(f"{what} {path} is not valid YAML", reason="bad_yaml") from None


# ---------------------------------------------------------------------- top level


@app.command()
def version() -> None:
    """Print Remit's version."""
    print(__version__)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8750,
    data_dir: DataDirOption = None,
    config: Annotated[
        Path | None, typer.Option(help="A TOML settings file (also REMIT_CONFIG).")
    ] = None,
) -> None:
    """Run the HTTP API. Settings: the config file, then REMIT_* environment variables."""
    from remit.http.server import serve as run_server

    output = Output()
    with _handled(output):
        run_server(_settings(data_dir, config), host=host, port=port)


@app.command()
def gateway(
    config: Annotated[
        Path, typer.Option("--config", help="The gateway config file (TOML or YAML).")
    ],
    stdio: Annotated[
        bool, typer.Option("--stdio", help="Run as the agent's sidecar on stdin/stdout.")
    ] = False,
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP at /mcp.")] = False,
    discover: Annotated[
        bool,
        typer.Option("--discover", help="List the upstreams' tools: definitions, digests, hints."),
    ] = False,
    admit: Annotated[
        list[str] | None,
        typer.Option(
            "--admit",
            help="Pin the upstream's current definition of this catalog tool ('all': every "
            "discovered tool in the catalog). An operator action.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (--http).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (--http).")] = 8760,
    remit_url: Annotated[
        str | None,
        typer.Option(
            "--remit-url",
            help="A Remit server (default: Remit in-process on the data dir).",
            show_default=False,
        ),
    ] = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    settings_file: Annotated[
        Path | None,
        typer.Option("--settings", help="Remit's TOML settings file (also REMIT_CONFIG)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Run the MCP gateway: every tool call of an MCP agent goes through Remit (docs/gateway.md).

    --stdio runs it as one agent's sidecar, --http serves agents that sign each request;
    --discover and --admit are the operator's view of the upstream tools.
    """
    from remit.gateway import run

    output = Output(json_output)
    with _handled(output):
        if sum((stdio, http, discover, bool(admit))) != 1:
            raise InvalidRequest(
                "give exactly one of --stdio, --http, --discover and --admit", reason="bad_option"
            )
        if http and remit_url:
            raise InvalidRequest(
                "the HTTP gateway embeds Remit; --remit-url is for the others", reason="bad_option"
            )
        gateway_config = run.load(config)
        settings = None if remit_url else _settings(data_dir, settings_file)
        if discover:
            found = run.discover(gateway_config)
            rows = [
                (
                    escape(t["tool"]),
                    t["suggested_privilege"],
                    _text([k for k, v in t["hints"].items() if v]),
                    t["digest"][:19],
                    escape(t["definition"]["description"][:60]),
                )
                for t in found
            ]
            columns = ["tool", "suggested", "hints", "digest", "description"]
            output.data(
                {"tools": found},
                lambda console: console.print(render_table("upstream tools", rows, columns)),
            )
            return
        if admit:
            done = run.admit(
                gateway_config, admit, settings=settings, remit_url=remit_url, admin_token=token
            )
            output.done(
                {"admitted": [{"tool": t, "digest": d} for t, d in done]},
                "\n".join(f"admitted {escape(t)} {d}" for t, d in done) or "nothing admitted",
            )
            return
        run.configure_logging()
        if stdio:
            run.run_sidecar(
                gateway_config, settings=settings, remit_url=remit_url, admin_token=token
            )
        else:
            assert settings is not None
            run.run_http(gateway_config, settings, host=host, port=port)


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option(help="Keep the temporary data directory and print its path.")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep a server on the demo's data running (Ctrl-C).")
    ] = False,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="Call the service directly, not over HTTP.")
    ] = False,
) -> None:
    """Run the main scenario on a temporary SQLite database and show every decision."""
    from remit.demo import run_demo

    output = Output()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="remit-demo-") as tmp, _handled(output):
        ok = run_demo(Path(tmp), console, over_http=not in_process, serve=serve)
        if keep:
            kept = Path(tempfile.mkdtemp(prefix="remit-demo-kept-"))
            shutil.copytree(tmp, kept, dirs_exist_ok=True)
            console.print(f"data kept in {kept}")
    if not ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------- agents


def _render_agents(agents: Sequence[Agent]) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        rows = [
            (
                escape(a.name),
                a.status.value,
                a.mode.value,
                escape(a.owner),
                escape(a.agent_id),
                str(len(a.ceiling.tools)),
            )
            for a in agents
        ]
        console.print(
            render_table(
                f"agents ({len(agents)})", rows, ["name", "status", "mode", "owner", "id", "tools"]
            )
        )

    return render


def _render_agent(agent: Agent) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        data = _agent_data(agent)
        ceiling = data.pop("ceiling")
        console.print(_fields(f"agent {agent.name}", data, _AGENT_TIMES))
        console.print(_fields("ceiling", ceiling))

    return render


@agent_app.command("register")
def agent_register(
    name: str,
    owner: Annotated[str, typer.Option(help="The accountable human or team.")],
    tool: Annotated[
        list[str] | None, typer.Option("--tool", "-t", help="A tool the agent may ever use.")
    ] = None,
    privilege: Annotated[
        list[str] | None, typer.Option("--privilege", "-p", help="read, write or act.")
    ] = None,
    destination: Annotated[
        list[str] | None,
        typer.Option(
            "--destination", "-d", help="A destination pattern, e.g. email:*@acme.example"
        ),
    ] = None,
    max_sensitivity: Annotated[
        str, typer.Option(help="public, internal, confidential or restricted.")
    ] = "internal",
    ceiling: Annotated[
        Path | None,
        typer.Option(help="The whole ceiling as a YAML/JSON file (instead of the flags)."),
    ] = None,
    description: Annotated[str, typer.Option(help="What the agent is for.")] = "",
    mode: Annotated[str, typer.Option(help="enforce or shadow.")] = "enforce",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register an agent with its ceiling: the most it may ever be granted."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        if ceiling is not None:
            if tool or privilege or destination:
                raise InvalidRequest("give --ceiling or the --tool/--privilege flags, not both")
            data = _read_yaml(ceiling, "ceiling file")
            if not isinstance(data, dict):
                raise InvalidRequest("the ceiling file must hold a mapping", reason="bad_ceiling")
        else:
            data = {
                "tools": list(tool or []),
                "privileges": list(privilege or []),
                "destinations": list(destination or []),
                "max_sensitivity": max_sensitivity,
            }
        agent = client.register_agent(
            name, owner=owner, ceiling=data, description=description, mode=mode
        )
    output.data(_agent_data(agent), _render_agent(agent))


@agent_app.command("list")
def agent_list(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_output: JsonOption = False
) -> None:
    """List the registered agents."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        agents = client.list_agents()
    output.data({"agents": [_agent_data(a) for a in agents]}, _render_agents(agents))


@agent_app.command("show")
def agent_show(
    name: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one agent (by name or SPIFFE ID) and its ceiling."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        agent = client.get_agent(name)
    output.data(_agent_data(agent), _render_agent(agent))


def _agent_change(
    name: str,
    url: str,
    token: str | None,
    json_output: bool,
    change: Callable[[RemitClient], Agent],
) -> None:
    output = Output(json_output)
    with _client(url, token, output) as client:
        agent = change(client)
    output.done(
        _agent_data(agent),
        f"agent [bold]{escape(agent.name)}[/]: {agent.status.value}, {agent.mode.value}",
    )


@agent_app.command("suspend")
def agent_suspend(
    name: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "operator",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Suspend an agent: its tokens are refused until it is resumed."""
    _agent_change(name, url, token, json_output, lambda c: c.suspend_agent(name, reason=reason))


@agent_app.command("resume")
def agent_resume(
    name: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Resume a suspended agent."""
    _agent_change(name, url, token, json_output, lambda c: c.resume_agent(name))


@agent_app.command("retire")
def agent_retire(
    name: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "operator",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Retire an agent for good: every instance is deactivated."""
    _agent_change(name, url, token, json_output, lambda c: c.retire_agent(name, reason=reason))


@agent_app.command("mode")
def agent_mode(
    name: str,
    mode: Annotated[str, typer.Argument(help="enforce or shadow.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Set an agent's mode: enforce, or shadow (decide and record, but allow)."""
    _agent_change(name, url, token, json_output, lambda c: c.set_agent_mode(name, mode))


# ---------------------------------------------------------------------- principals, join tokens


@principal_app.command("add")
def principal_add(
    principal_id: Annotated[str, typer.Argument(help="e.g. user:sam@acme.example")],
    display_name: Annotated[str, typer.Option(help="A name for people.")] = "",
    identifier: Annotated[
        list[str] | None,
        typer.Option(
            "--identifier", "-i", help="An exact destination inside the principal's boundary."
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register (or update) a principal and its own identifiers."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        principal = client.register_principal(
            principal_id, display_name=display_name, identifiers=list(identifier or [])
        )
    output.data(principal, lambda console: console.print(_fields("principal", principal)))


@join_token_app.command("create")
def join_token_create(
    agent: Annotated[str, typer.Argument(help="The agent's name or SPIFFE ID.")],
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Lifetime in seconds.", show_default=False)
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create a single-use join token for one new instance. It is shown once."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        secret = client.create_join_token(agent, ttl_seconds=ttl)
    if not json_output:
        output.note(
            f"join token for {escape(agent)} (single use; shown once, Remit keeps only a hash):"
        )
    output.data(
        {"agent": agent, "join_token": secret.reveal()},
        lambda console: console.print(secret.reveal(), markup=False, soft_wrap=True),
    )


# ---------------------------------------------------------------------- tasks

_TASK_TIMES = ("opened_at", "expires_at", "ended_at")


@task_app.command("show")
def task_show(
    task_id: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a task: status, mandate, budget used, taint."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        task = client.get_task(task_id)

    def render(console: Console) -> None:
        data = dict(task)
        mandate = data.pop("mandate", None)
        console.print(_fields(f"task {task_id}", data, _TASK_TIMES))
        if isinstance(mandate, dict):
            console.print(_fields("mandate", mandate))

    output.data(task, render)


def _revoke(task_id: str, reason: str, url: str, token: str | None, json_output: bool) -> None:
    output = Output(json_output)
    with _client(url, token, output) as client:
        ended = client.revoke_task_report(task_id, reason=reason)
    closed, outstanding = list(ended.closed), list(ended.outstanding_leases)
    output.done(
        {"closed": closed, "outstanding_leases": outstanding},
        f"revoked {len(closed)} task(s): {_text(closed)}",
    )
    if outstanding:
        output.note(
            f"[bold yellow]warning[/] {len(outstanding)} lease(s) not yet revoked downstream "
            f"(retried by the sweeper; see `remit leases list --outstanding`): "
            f"{escape(', '.join(outstanding))}"
        )
        raise typer.Exit(EXIT_REVOCATION_PENDING)


@task_app.command("revoke")
def task_revoke(
    task_id: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "operator",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke a task and every task delegated from it, now."""
    _revoke(task_id, reason, url, token, json_output)


@task_app.command("end")
def task_end(
    task_id: str,
    reason: Annotated[str, typer.Option(help="Recorded in the audit log.")] = "ended by operator",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """End a task from the operator side (a revocation; agents end their own through the SDK)."""
    _revoke(task_id, reason, url, token, json_output)


# ---------------------------------------------------------------------- catalog


def _render_tools(tools: Sequence[Mapping[str, Any]]) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        rows = [
            (
                _text(t.get("name")),
                _text(t.get("privilege")),
                _text(t.get("destinations") or None),
                _text(t.get("labels")),
                _text(t.get("risk")),
                _text(t.get("mode")),
            )
            for t in tools
        ]
        console.print(
            render_table(
                f"tools ({len(tools)})",
                rows,
                ["name", "privilege", "destinations", "labels", "risk", "mode"],
            )
        )

    return render


def _manifest(path: Path) -> dict[str, Any]:
    data = _read_yaml(path, "catalog file")
    if not isinstance(data, dict):
        raise InvalidRequest("a catalog manifest must be a mapping", reason="bad_catalog")
    return data


@catalog_app.command("show")
def catalog_show(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_output: JsonOption = False
) -> None:
    """Show the tool catalog the server decides with."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        catalog = client.get_catalog()
    output.data(catalog, _render_tools(catalog.get("tools", [])))


@catalog_app.command("validate")
def catalog_validate(file: Path, json_output: JsonOption = False) -> None:
    """Check a YAML catalog manifest locally (no server needed)."""
    from remit.core.catalog import catalog_from_data

    output = Output(json_output)
    try:
        catalog = catalog_from_data(_manifest(file))
    except RemitError as exc:
        if json_output:
            sys.stdout.write(json.dumps({"valid": False, "problems": [exc.message]}) + "\n")
            raise typer.Exit(exit_code_for(exc)) from None
        raise _fail(output, exc) from None
    output.done(
        {"valid": True, "problems": [], "tools": sorted(catalog.tools)},
        f"[green]valid[/]: {len(catalog)} tool(s)",
    )


@catalog_app.command("import")
def catalog_import(
    from_gateway: Annotated[
        Path,
        typer.Option(
            "--from-gateway", help="A gateway config file: propose entries from its upstreams."
        ),
    ],
    output_file: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the proposal here.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Propose catalog entries from the upstream servers' tool lists, for a human to confirm.

    The servers' hints (read-only, destructive, open-world) only suggest a privilege class;
    nothing is loaded. Act tools get no destination arguments: name them before loading
    (the catalog refuses an act tool that does not say where it sends).
    """
    import yaml

    from remit.gateway import run as gateway_run

    output = Output(json_output)
    with _handled(output):
        found = gateway_run.discover(gateway_run.load(from_gateway))
    entries: list[dict[str, Any]] = []
    for item in found:
        definition = item["definition"]
        entry: dict[str, Any] = {
            "name": item["tool"],
            "privilege": item["suggested_privilege"],
            "description": (definition.get("description") or "")[:1000],
            "labels": ["internal"],
            "risk": ["needs-review"],
        }
        entries.append(entry)
    header = (
        "# Proposed by `remit catalog import --from-gateway`: the upstream servers' hints are\n"
        "# suggestions only. Confirm each privilege (read/write/act), name the destination\n"
        "# arguments of act tools and the output labels, then `remit catalog load` this file\n"
        "# and pin the definitions with `remit gateway --admit`.\n"
    )
    text = header + yaml.safe_dump({"tools": entries}, sort_keys=False, allow_unicode=True)
    if output_file is not None:
        output_file.write_text(text, encoding="utf-8")
    if json_output:
        output.done({"tools": entries, "hints": {i["tool"]: i["hints"] for i in found}}, "")
    elif output_file is None:
        sys.stdout.write(text)
    else:
        output.note(f"proposed {len(entries)} catalog entr(y/ies) in {output_file}")


@catalog_app.command("load")
def catalog_load(
    file: Path,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Replace the server's tool catalog with a YAML manifest (validated whole)."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        catalog = client.put_catalog(_manifest(file))
    output.done(catalog, f"catalog loaded: {len(catalog.get('tools', []))} tool(s)")


# ---------------------------------------------------------------------- policies


def _policy_files(directory: Path) -> dict[str, str]:
    from remit.runtime import read_policy_dir

    return {s.name: s.text for s in read_policy_dir(directory)}


def _local_engine(policies: Path | None, catalog: Catalog | None) -> PolicyEngine:
    """A fresh engine: the baseline, plus the operator policies in ``policies``."""
    from remit.core.policy import ToolEntity
    from remit.runtime import read_policy_dir

    engine = PolicyEngine()
    if policies is not None:
        engine.load(read_policy_dir(policies))
    if catalog is not None:
        tools = [ToolEntity(s.name, s.privilege.value, s.risk) for s in catalog.tools.values()]
        engine.set_entities([], tools)
    return engine


@policy_app.command("validate")
def policy_validate(directory: Path, json_output: JsonOption = False) -> None:
    """Validate a directory of Cedar policies against Remit's schema and baseline (locally)."""
    from remit.runtime import read_policy_dir

    output = Output(json_output)
    with _handled(output):
        sources = read_policy_dir(directory)
        PolicyEngine().validate(sources)
    output.done(
        {"valid": True, "files": [s.name for s in sources]},
        f"[green]valid[/]: {len(sources)} file(s)",
    )


@policy_app.command("test")
def policy_test(
    cases_file: Annotated[Path, typer.Argument(metavar="CASES.yaml", help="The case file.")],
    policies: Annotated[
        Path | None,
        typer.Option(
            help="Operator policies (*.cedar) on top of the baseline.", show_default=False
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(help="A tool catalog (actions and tool entities).", show_default=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Run policy cases locally: exit 0 if every case decides as expected, 1 if not."""
    from remit.core.policy_cases import parse_cases, run_cases
    from remit.runtime import read_catalog_file

    output = Output(json_output)
    with _handled(output):
        tool_catalog = read_catalog_file(catalog) if catalog is not None else None
        engine = _local_engine(policies, tool_catalog)
        cases = parse_cases(_read_yaml(cases_file, "case file"), tool_catalog)
        outcomes = run_cases(engine, cases)
    results: list[dict[str, Any]] = []
    for outcome in outcomes:
        expected = outcome.case.reasons
        actual = outcome.result.reasons
        results.append(
            {
                "name": outcome.case.name,
                "tool": outcome.case.tool,
                "action": outcome.case.action,
                "expect": outcome.case.expect,
                "actual": outcome.actual,
                "passed": outcome.passed,
                "reasons": list(actual),
                "expected_reasons": list(expected) if expected is not None else None,
                "missing": sorted(set(expected) - set(actual)) if expected is not None else [],
                "unexpected": sorted(set(actual) - set(expected)) if expected is not None else [],
                "errors": list(outcome.result.errors),
            }
        )
    failed = sum(1 for r in results if not r["passed"])
    report = {
        "version": engine.version,
        "passed": len(results) - failed,
        "failed": failed,
        "cases": results,
    }

    def render(console: Console) -> None:
        rows = [
            (
                "[green]pass[/]" if r["passed"] else "[bold red]FAIL[/]",
                escape(str(r["name"])),
                escape(str(r["tool"])),
                str(r["expect"]),
                str(r["actual"]),
                _text(r["reasons"]),
            )
            for r in results
        ]
        console.print(
            render_table(
                f"policy cases ({engine.version})",
                rows,
                ["", "case", "tool", "expected", "actual", "reasons"],
            )
        )
        for r in results:
            if r["passed"]:
                continue
            why = (
                f"expected {r['expect']}, got {r['actual']}"
                if r["expect"] != r["actual"]
                else f"{r['actual']} as expected, but other policies decided"
            )
            console.print(f"[bold red]FAIL[/] {escape(str(r['name']))}: {why}")
            if r["missing"]:
                console.print(f"  missing reasons:    {_text(r['missing'])}", soft_wrap=True)
            if r["unexpected"]:
                console.print(f"  unexpected reasons: {_text(r['unexpected'])}", soft_wrap=True)
            for error in r["errors"]:
                console.print(f"  error: {escape(str(error))}", soft_wrap=True)
        style = "bold red" if failed else "green"
        console.print(f"[{style}]{report['passed']} passed, {failed} failed[/]")

    output.data(report, render)
    if failed:
        raise typer.Exit(EXIT_TESTS_FAILED)


@policy_app.command("explain")
def policy_explain(
    tool: str,
    action: Annotated[
        str | None, typer.Option(help="read, write or act (default: from the catalog).")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="The agent's SPIFFE ID.")] = None,
    context: Annotated[
        str | None,
        typer.Option(help='Context facts as JSON, e.g. \'{"taint_flags": ["untrusted"]}\'.'),
    ] = None,
    policies: Annotated[
        Path | None,
        typer.Option(help="Explain locally against this policy directory.", show_default=False),
    ] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="A tool catalog, when explaining locally.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Evaluate one policy case and say which policies decided (on the server, or locally)."""
    output = Output(json_output)
    case: dict[str, Any] = {"tool": tool}
    with _handled(output):
        if action is not None:
            case["action"] = action
        if agent is not None:
            case["agent"] = agent
        if context is not None:
            try:
                case["context"] = json.loads(context)
            except ValueError:
                raise InvalidRequest("--context must be a JSON object", reason="bad_case") from None
    if policies is None and catalog is None:
        with _client(url, token, output) as client:
            result = client.explain(case)
    else:
        with _handled(output):
            result = _explain_locally(case, policies, catalog)

    def render(console: Console) -> None:
        style = "green" if result.get("allowed") else "bold red"
        console.print(f"[{style}]{escape(str(result.get('explanation', '')))}[/]")
        console.print(f"policy version {escape(str(result.get('version')))}")
        for error in result.get("errors") or ():
            console.print(f"  error: {escape(str(error))}")

    output.data(result, render)


def _explain_locally(
    case: Mapping[str, Any], policies: Path | None, catalog: Path | None
) -> dict[str, Any]:
    from remit.core.policy import explain
    from remit.core.policy_cases import evaluate_case, parse_cases
    from remit.runtime import read_catalog_file

    tool_catalog = read_catalog_file(catalog) if catalog is not None else None
    engine = _local_engine(policies, tool_catalog)
    (parsed,) = parse_cases({"cases": [{**case, "expect": "allow"}]}, tool_catalog)
    result = evaluate_case(engine, parsed).result
    return {
        "allowed": result.allowed,
        "reasons": list(result.reasons),
        "errors": list(result.errors),
        "shadow_reasons": list(result.shadow_reasons),
        "version": result.version,
        "explanation": explain(result),
    }


@policy_app.command("list")
def policy_list(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_output: JsonOption = False
) -> None:
    """List the stored policy versions; the active one is marked."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        policies = client.list_policies()

    def render(console: Console) -> None:
        rows = [
            (
                "*" if v.get("active") else "",
                _text(v.get("version")),
                _ts(v.get("loaded_at")),
                _text(v.get("files")),
            )
            for v in policies.get("versions", [])
        ]
        title = f"policy versions (active: {_text(policies.get('active'))})"
        console.print(render_table(title, rows, ["", "version", "loaded", "files"]))

    output.data(policies, render)


@policy_app.command("upload")
def policy_upload(
    directory: Path,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Upload a directory of *.cedar files as a new version; valid as a whole, it goes live."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        files = _policy_files(directory)
        new_version = client.upload_policies(files)
    output.done(
        {"version": new_version, "files": sorted(files)},
        f"policy version [bold]{escape(new_version)}[/] active ({len(files)} file(s))",
    )


@policy_app.command("activate")
def policy_activate(
    policy_version: Annotated[str, typer.Argument(metavar="VERSION")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Make a stored policy version active again (a rollback)."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        active = client.activate_policy(policy_version)
    output.done({"version": active}, f"policy version [bold]{escape(active)}[/] active")


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the Cedar schema that policies are validated against."""
    from remit.core.policy_pack import SCHEMA

    print(SCHEMA)


@policy_app.command("baseline")
def policy_baseline() -> None:
    """Print the baseline policy pack that ships with Remit."""
    from remit.core.policy_pack import BASELINE

    print(BASELINE)


# ---------------------------------------------------------------------- audit


@contextmanager
def _spinner(output: Output, text: str) -> Iterator[None]:
    """A spinner on stderr while something slow runs (only on a terminal)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = output.err
    with Progress(
        SpinnerColumn(),
        TextColumn(text),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        progress.add_task(text, total=None)
        yield


@audit_app.command("verify")
def audit_verify(
    local: Annotated[
        bool, typer.Option("--local", help="Verify the local data directory, not a server.")
    ] = False,
    data_dir: DataDirOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Recompute the audit chain and check every signed checkpoint (exit 8 if broken)."""
    output = Output(json_output)
    report: dict[str, Any]
    if local:
        with _local(data_dir, output) as remit, _spinner(output, "verifying the audit chain"):
            chain = remit.verify_audit()
        report = {
            "ok": chain.ok,
            "records": chain.records,
            "head_seq": chain.head_seq,
            "head_hash": chain.head_hash,
            "checkpoints": chain.checkpoints,
            "problems": list(chain.problems),
        }
    else:
        with _client(url, token, output) as client, _spinner(output, "verifying the audit chain"):
            report = client.verify_audit()

    def render(console: Console) -> None:
        problems = [str(p) for p in report.get("problems") or ()]
        if report.get("ok"):
            console.print(
                f"[green]audit chain intact: {report.get('records')} records, "
                f"{report.get('checkpoints')} signed checkpoints[/]"
            )
        else:
            console.print(f"[bold red]audit chain BROKEN: {escape('; '.join(problems[:5]))}[/]")
        for problem in problems:
            console.print(f"  - {escape(problem)}")

    output.data(report, render)
    if not report.get("ok"):
        raise typer.Exit(EXIT_AUDIT_BROKEN)


def audit_head(client: RemitClient) -> int:
    """The newest sequence number, found with O(log n) one-record queries."""

    def after(seq: int) -> bool:
        return bool(client.query_audit(after_seq=seq, limit=1)["records"])

    if not after(0):
        return 0
    low, step = 0, 1024  # invariant: a record exists after ``low``
    while after(low + step):
        low, step = low + step, step * 2
    high = low + step  # no record after ``high``
    while high - low > 1:
        mid = (low + high) // 2
        if after(mid):
            low = mid
        else:
            high = mid
    return high


def _audit_pages(
    client: RemitClient, after_seq: int, filters: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    while True:
        page = client.query_audit(after_seq=after_seq, limit=1000, **filters)
        yield from page["records"]
        nxt = page.get("next_after_seq")
        if not isinstance(nxt, int) or nxt <= after_seq or not page["records"]:
            return
        after_seq = nxt


def _record_line(record: Mapping[str, Any]) -> str:
    data = record.get("data") or {}
    kind = str(record.get("kind"))
    if kind == "decision" and isinstance(data, dict):
        outcome = str(data.get("outcome"))
        style = {"allow": "green", "deny": "bold red"}.get(outcome, "yellow")
        summary = (
            f"[{style}]{escape(outcome)}[/] {escape(str(data.get('tool')))} "
            f"task={escape(str(data.get('task')))} {escape(_text(data.get('reasons')))}"
        )
    else:
        summary = escape(json.dumps(data, sort_keys=True, default=str)[:160])
    return f"{record.get('seq'):>8} {_ts(record.get('ts'))} [bold]{escape(kind)}[/] {summary}"


@audit_app.command("tail")
def audit_tail(
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many records.")] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with -f.")] = 1.0,
    kind: Annotated[list[str] | None, typer.Option(help="Only these kinds.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent (SPIFFE ID).")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    principal: Annotated[str | None, typer.Option(help="Only this principal.")] = None,
    outcome: Annotated[str | None, typer.Option(help="Only decisions with this outcome.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """The newest audit records; with -f, follow new ones (--json -f prints one per line)."""
    output = Output(json_output)
    filters: dict[str, Any] = {
        k: v
        for k, v in {
            "kind": list(kind or []) or None,
            "agent": agent,
            "task": task,
            "principal": principal,
            "outcome": outcome,
        }.items()
        if v is not None
    }
    with _client(url, token, output) as client:
        head = audit_head(client)
        window = max(lines * 4, 256)
        while True:
            start = max(head - window, 0)
            found = [r for r in _audit_pages(client, start, filters) if r["seq"] <= head]
            if len(found) >= lines or start == 0:
                break
            window *= 4
        records = found[-lines:] if lines > 0 else []
        if follow:
            emit = _follow_printer(output)
            for record in records:
                emit(record)
            last = head
            try:
                while True:
                    time.sleep(interval)
                    for record in _audit_pages(client, last, filters):
                        emit(record)
                        last = max(last, int(record["seq"]))
            except KeyboardInterrupt:
                return
        else:

            def render(console: Console) -> None:
                for record in records:
                    console.print(_record_line(record))

            output.data({"records": records}, render)


def _follow_printer(output: Output) -> Callable[[Mapping[str, Any]], None]:
    console = output.out

    def emit(record: Mapping[str, Any]) -> None:
        if output.json:
            sys.stdout.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
        else:
            console.print(_record_line(record))

    return emit


@audit_app.command("export")
def audit_export(
    output_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here (default: stdout).", show_default=False),
    ] = None,
    after_seq: Annotated[int, typer.Option(help="Only records after this sequence.")] = 0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Export audit records as ndjson (one record per line), streamed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    output = Output()
    console = output.err
    count = 0
    with _client(url, token, output) as client:
        total = max(audit_head(client) - after_seq, 0)
        sink = output_file.open("w", encoding="utf-8") if output_file else sys.stdout
        try:
            with Progress(
                TextColumn("exporting"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            ) as progress:
                bar = progress.add_task("export", total=total or None)
                for record in client.export_audit(after_seq):
                    sink.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
                    count += 1
                    progress.advance(bar)
        finally:
            if output_file:
                sink.close()
            else:
                sink.flush()
    if output_file:
        output.note(f"exported {count} record(s) to {escape(str(output_file))}")


# ---------------------------------------------------------------------- keys, kill switch


@keys_app.command("rotate")
def keys_rotate(
    url: UrlOption = DEFAULT_URL, token: TokenOption = None, json_output: JsonOption = False
) -> None:
    """Start signing with a new key; older keys verify until their tokens expire."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        keys = client.rotate_keys()
    output.done(
        keys,
        f"signing with [bold]{_text(keys.get('active_kid'))}[/]; "
        f"verifying {_text(keys.get('kids'))}",
    )


def _kill(engaged: bool, agent: str | None, url: str, token: str | None, as_json: bool) -> None:
    output = Output(as_json)
    with _client(url, token, output) as client:
        state = client.kill_switch(engaged, agent)
    scope = f"agent {escape(agent)}" if agent else "every agent"
    verb = "[bold red]ENGAGED[/]" if engaged else "[green]released[/]"
    output.done(state, f"kill switch {verb} for {scope}")


KillAgentOption = Annotated[
    str | None, typer.Option("--agent", help="One agent (name or SPIFFE ID); default: all.")
]


@kill_switch_app.command("on")
def kill_switch_on(
    agent: KillAgentOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Deny every call (of one agent, or of all) at the monitor step, at once."""
    _kill(True, agent, url, token, json_output)


@kill_switch_app.command("off")
def kill_switch_off(
    agent: KillAgentOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Release the kill switch."""
    _kill(False, agent, url, token, json_output)


# ---------------------------------------------------------------------- admin tokens


def _token_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """What may be shown of a stored operator token (never its hash)."""
    return {
        k: data.get(k)
        for k in ("token_id", "name", "scopes", "created_at", "expires_at", "revoked_at")
    }


@admin_token_app.command("create")
def admin_token_create(
    name: str,
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help="admin, auditor, approver or readonly (repeatable)."),
    ],
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Lifetime in seconds.", show_default=False)
    ] = None,
    url: LocalUrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create an operator token. Without --url it is made on the local data directory
    (the bootstrap: run it while the server is stopped). The token is shown once."""
    output = Output(json_output)
    if url is None:
        with _local(data_dir, output) as remit:
            token_id, secret = remit.create_admin_token(name, scopes=scope, ttl_seconds=ttl)
    else:
        with _client(url, token, output) as client:
            token_id, secret = client.create_admin_token(name, scope, ttl_seconds=ttl)
    if not json_output:
        output.note(
            f"admin token {escape(token_id)} ({escape(', '.join(scope))}); "
            "shown once, Remit keeps only a hash:"
        )
    output.data(
        {"token_id": token_id, "name": name, "scopes": list(scope), "token": secret.reveal()},
        lambda console: console.print(secret.reveal(), markup=False, soft_wrap=True),
    )


@admin_token_app.command("list")
def admin_token_list(
    url: LocalUrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List operator tokens (never their secrets). Without --url, from the local data dir."""
    output = Output(json_output)
    if url is None:
        with _local(data_dir, output) as remit:
            # _token_row keeps only what may be shown (never the hash).
            rows = [
                _token_row({**asdict(r), "scopes": list(r.scopes)})
                for r in remit.list_admin_tokens()
            ]
    else:
        with _client(url, token, output) as client:
            rows = [_token_row(t) for t in client.list_admin_tokens()]

    output.table(
        {"tokens": rows},
        f"admin tokens ({len(rows)})",
        rows,
        [
            ("id", lambda r: _text(r["token_id"])),
            ("name", lambda r: _text(r["name"])),
            ("scopes", lambda r: _text(r["scopes"])),
            ("created", lambda r: _ts(r["created_at"])),
            ("expires", lambda r: _ts(r["expires_at"])),
            ("revoked", lambda r: _ts(r["revoked_at"])),
        ],
    )


@admin_token_app.command("revoke")
def admin_token_revoke(
    token_id: str,
    url: LocalUrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke an operator token. Without --url, on the local data directory."""
    output = Output(json_output)
    if url is None:
        with _local(data_dir, output) as remit:
            remit.revoke_admin_token(token_id)
    else:
        with _client(url, token, output) as client:
            client.revoke_admin_token(token_id)
    output.done({"revoked": token_id}, f"admin token {escape(token_id)} revoked")


# ---------------------------------------------------------------------- sealed secrets


def _read_secret_value() -> Secret:
    """The value from stdin (piped) or a hidden prompt; never from the command line."""
    from remit.core.sealing import MAX_VALUE_BYTES

    if sys.stdin is None or not sys.stdin.isatty():
        text = sys.stdin.read(MAX_VALUE_BYTES + 2) if sys.stdin is not None else ""
        # One trailing newline (from echo or a file) is not part of the value.
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
    else:
        text = typer.prompt("secret value", hide_input=True, confirmation_prompt=True, err=True)
    return Secret(text)


def _secret_row(info: SecretInfo) -> dict[str, Any]:
    return info.to_data()


@secrets_app.command("put")
def secrets_put(
    name: str,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Seal and store a secret (a new version if NAME exists). The value is read from stdin
    or a hidden prompt, never from the command line, and never printed."""
    output = Output(json_output)
    with _handled(output):
        value = _read_secret_value()
    with _local(data_dir, output) as remit:
        info = remit.put_secret(name, value)
    output.done(
        _secret_row(info),
        f"secret {escape(info.name)} stored (version {info.version}, "
        f"master key {escape(info.master_kid)})",
    )


@secrets_app.command("list")
def secrets_list(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """List stored secrets: names, versions, master key ids and dates (never values)."""
    output = Output(json_output)
    with _local(data_dir, output) as remit:
        rows = [_secret_row(i) for i in remit.list_secrets()]

    output.table(
        {"secrets": rows},
        f"secrets ({len(rows)})",
        rows,
        [
            ("name", lambda r: _text(r["name"])),
            ("version", lambda r: str(r["version"])),
            ("master key", lambda r: _text(r["master_kid"])),
            ("created", lambda r: _ts(r["created_at"])),
            ("re-wrapped", lambda r: _ts(r["rotated_at"])),
        ],
    )


# Explicit only (REMIT_URL is not read): these commands worked on the local data directory
# before they could go to a server, and a REMIT_URL set for other commands must not move them.
SecretsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Run it on this Remit server (with --token); without it, on the local data dir.",
        show_default=False,
    ),
]


@secrets_app.command("rotate-master")
def secrets_rotate_master(
    url: SecretsUrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Make a new master key and re-wrap every secret's data key with it; the old key is
    deleted once nothing needs it. Values and ciphertexts are not touched. Without --url on
    the local data directory (safe next to a running server); with --url on the server."""
    output = Output(json_output)
    if url is None:
        with _local(data_dir, output) as remit:
            data = remit.rotate_master_key().to_data()
    else:
        with _client(url, token, output) as client:
            data = client.rotate_master_key()
    output.done(
        data,
        f"master key {escape(str(data.get('new_kid')))} active "
        f"(was {escape(str(data.get('old_kid')))}); {data.get('rewrapped')} secret(s) and "
        f"{data.get('lease_values', 0)} lease value(s) re-wrapped, "
        f"{len(data.get('retired') or [])} old key(s) retired",
    )


@secrets_app.command("rewrap")
def secrets_rewrap(
    url: SecretsUrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Re-wrap every data key not wrapped by the active master key (REMIT_MASTER_KEY or the
    key file), using REMIT_MASTER_KEY_PREVIOUS and retained keys to open them, and report
    which other keys are still needed (none: previous keys may be dropped). Exits non-zero
    while some are. Without --url on the local data directory; with --url on the server."""
    output = Output(json_output)
    if url is None:
        with _local(data_dir, output) as remit:
            data = remit.rewrap_secrets().to_data()
    else:
        with _client(url, token, output) as client:
            data = client.rewrap_secrets()
    needed = [str(k) for k in data.get("still_needed") or []]
    if needed:
        missing = [str(k) for k in data.get("missing") or []]
        message = f"still needed: {escape(', '.join(needed))}"
        if missing:
            message += f" (not held here: {escape(', '.join(missing))})"
    else:
        message = "no previous master key is needed any more"
    output.done(
        data,
        f"{data.get('rewrapped')} secret(s) and {data.get('lease_values', 0)} lease value(s) "
        f"re-wrapped to master key {escape(str(data.get('active_kid')))}; {message}",
    )
    if not data.get("complete", False):
        raise typer.Exit(EXIT_CODES["sealed"])


def main() -> None:
    try:
        app()
    except RemitError as exc:  # pragma: no cover - commands catch their own
        Console(stderr=True).print(f"error [{exc.code}] {exc.message}")
        sys.exit(exit_code_for(exc))


# The approver's commands live in their own module (it imports the helpers above).
from remit.cli_approvals import approvals_app  # noqa: E402

app.add_typer(approvals_app, name="approvals")

# Analysis of what agents can really do, likewise in its own module.
from remit.cli_analyze import analyze_app  # noqa: E402

app.add_typer(analyze_app, name="analyze")

# The standards report and the NHI inventory report (issue 7, items 5 and 6).
from remit.cli_inventory import inventory_app  # noqa: E402
from remit.cli_report import report_app  # noqa: E402

app.add_typer(report_app, name="report")
app.add_typer(inventory_app, name="inventory")

# `policy replay`: re-decide recorded calls under a candidate set (its own module too).
from remit.cli_replay import policy_replay  # noqa: E402

policy_app.command("replay")(policy_replay)


# ---------------------------------------------------------------------- leases


@leases_app.command("list")
def leases_list(
    task: Annotated[
        str | None, typer.Option("--task", help="Only this task's leases.", show_default=False)
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="Only leases in this state (open, revoking, revoked, expired).",
            show_default=False,
        ),
    ] = None,
    outstanding: Annotated[
        bool,
        typer.Option(
            "--outstanding",
            help="Only leases whose downstream revocation has not succeeded yet (retried).",
        ),
    ] = False,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List credential leases: task, credential, tool, state and dates (never values)."""
    output = Output(json_output)
    with _local(data_dir, output) as remit:
        found = remit.list_leases(task_id=task, state=state, outstanding=outstanding)
        rows = [lease.to_data() for lease in found]

    output.table(
        {"leases": rows},
        f"leases ({len(rows)})",
        rows,
        [
            ("lease", lambda r: _text(r["lease_id"])),
            ("task", lambda r: _text(r["task_id"])),
            ("secret", lambda r: _text(r["secret"])),
            ("tool", lambda r: _text(r["tool"])),
            ("state", lambda r: _text(r["state"])),
            ("expires", lambda r: _ts(r["expires_at"])),
            ("reason", lambda r: _text(r["revoke_reason"] or "")),
            (
                "retries",
                lambda r: _text(
                    f"{r['revoke_attempts']} ({r['last_error']})" if r["outstanding"] else ""
                ),
            ),
        ],
    )


@leases_app.command("revoke")
def leases_revoke(
    lease_id: Annotated[str, typer.Argument(help="The lease to revoke.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")] = (
        "operator"
    ),
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Revoke one lease now: its credential is no longer handed to any call."""
    output = Output(json_output)
    with _local(data_dir, output) as remit:
        lease = remit.revoke_lease(lease_id, reason=reason)
    output.done(lease.to_data(), f"lease {escape(lease.lease_id)} revoked")


# Anomaly alerts from behaviour baselines (issue 7, item 3), in their own module.
from remit.cli_alerts import alerts_app  # noqa: E402

app.add_typer(alerts_app, name="alerts")
