"""The gateway's configuration file: upstream MCP servers and, for a sidecar, its task.

TOML (``.toml``) or YAML (``.yaml``/``.yml``), validated whole; an unknown key
is refused, so a typo never drops a setting silently::

    [gateway]
    public_url = ""                 # HTTP: the URL proofs name (default: from the request)
    allowed_hosts = []              # HTTP: extra Host values (DNS-rebinding protection)
    max_leased_upstreams = 32       # upstream processes/sessions started for leases, at most
    lease_sweep_seconds = 10        # how often ended leases' processes/sessions are stopped

    [[upstreams]]
    name = "tickets"                # namespace: tickets__<tool> (wire), tickets/<tool> (Remit)
    command = "python"              # a stdio server ...
    args = ["-m", "tickets_mcp"]
    env = { TICKETS_API_KEY = "${TICKETS_API_KEY}" }   # credentials: Secrets
    public_env = { LOG_LEVEL = "info" }                 # plain settings, not secret
    timeout_seconds = 30

    [[upstreams]]
    name = "web"
    url = "https://mcp.example.com/mcp"                 # ... or a streamable-HTTP server
    headers = { Authorization = "Bearer ${WEB_TOKEN}" } # credentials: Secrets

    [task]                          # the stdio sidecar's task
    principal = "user:sam@acme.example"
    join_token = "${REMIT_JOIN_TOKEN}"                  # or the REMIT_JOIN_TOKEN variable
    [task.intent]
    purpose = "reply to ticket 4711"
    tools = ["tickets/read_ticket", "tickets/send_email"]

Credential values (``env``, ``headers``, ``join_token``) may name environment
variables as ``${NAME}``, resolved once at start; a missing variable is an
error. They are held as ``Secret`` and go only into the upstream connection.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from remit.core.secrets import Secret
from remit.errors import InvalidRequest

MAX_CONFIG_BYTES = 1024 * 1024
MAX_UPSTREAMS = 64
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_RELIST_SECONDS = 60.0
DEFAULT_START_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_LEASED_UPSTREAMS = 32
MAX_LEASED_UPSTREAMS = 1024
DEFAULT_LEASE_SWEEP_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 3600.0
JOIN_TOKEN_ENV = "REMIT_JOIN_TOKEN"  # noqa: S105 - the name of a variable

# The namespace is the server part of a catalog name; "__" separates it from the tool
# on the wire, so it may not appear in a namespace.
_NAMESPACE = re.compile(r"^[a-z0-9](?:[a-z0-9-]|_(?!_)){0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]{0,127})\}")
_FORBIDDEN_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "remit-proof"}
)

_TOP_KEYS = frozenset({"gateway", "upstreams", "task"})
_GATEWAY_KEYS = frozenset(
    {"public_url", "allowed_hosts", "max_leased_upstreams", "lease_sweep_seconds"}
)
_UPSTREAM_KEYS = frozenset(
    {
        "name",
        "command",
        "args",
        "env",
        "public_env",
        "cwd",
        "url",
        "headers",
        "timeout_seconds",
        "start_timeout_seconds",
        "relist_seconds",
        "protocol",
    }
)
_TASK_KEYS = frozenset({"principal", "intent", "join_token"})


def header_name_ok(name: object) -> bool:
    """A header name the gateway may set on an upstream request (config or lease)."""
    return (
        isinstance(name, str)
        and bool(_HEADER_NAME.match(name))
        and name.lower() not in _FORBIDDEN_HEADERS
    )


# Variables that change what code a child runs, not what it authenticates with: a
# credential never sets them.
_FORBIDDEN_ENV = frozenset(
    {
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "DYLD_INSERT_LIBRARIES",
        "DYLD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "NODE_OPTIONS",
    }
)


def env_name_ok(name: object) -> bool:
    """A variable name a leased credential may set in an upstream's environment."""
    return isinstance(name, str) and bool(_ENV_NAME.match(name)) and name not in _FORBIDDEN_ENV


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, reason="bad_gateway_config")


@dataclass(frozen=True, slots=True)
class StdioTarget:
    """A server the gateway starts as a child process and talks to over stdin/stdout."""

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, Secret] = field(default_factory=dict)
    public_env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """A streamable-HTTP server the gateway reaches at ``url``."""

    url: str
    headers: Mapping[str, Secret] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    target: StdioTarget | HttpTarget
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    protocol: str = "auto"  # "auto" (2026-07-28, falling back) or "legacy" (the handshake)
    # A call re-lists the upstream's tools first when the last listing is older than this
    # (0: before every call), so a changed definition is seen even without a tools/list.
    relist_seconds: float = DEFAULT_RELIST_SECONDS
    # How long starting (spawning or connecting) and the first listing may take.
    start_timeout_seconds: float = DEFAULT_START_TIMEOUT_SECONDS

    def secrets(self) -> tuple[Secret, ...]:
        if isinstance(self.target, StdioTarget):
            return tuple(self.target.env.values())
        return tuple(self.target.headers.values())


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """What the sidecar asks for when it opens its task."""

    principal: str
    intent: Mapping[str, Any]
    join_token: Secret | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    upstreams: tuple[UpstreamConfig, ...]
    task: TaskConfig | None = None
    public_url: str = ""
    allowed_hosts: tuple[str, ...] = ()
    # Upstream connections started for leased credentials (a stdio process per lease, an
    # HTTP session per lease): at most this many at once; ended ones are swept this often.
    max_leased_upstreams: int = DEFAULT_MAX_LEASED_UPSTREAMS
    lease_sweep_seconds: float = DEFAULT_LEASE_SWEEP_SECONDS

    def upstream(self, name: str) -> UpstreamConfig | None:
        return next((u for u in self.upstreams if u.name == name), None)

    def secrets(self) -> tuple[Secret, ...]:
        """Every credential in the configuration: none may reach the agent."""
        found = [s for u in self.upstreams for s in u.secrets()]
        if self.task is not None and self.task.join_token is not None:
            found.append(self.task.join_token)
        return tuple(found)


# ---------------------------------------------------------------------- reading


def read_gateway_config(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a gateway config file; ``${NAME}`` resolves from ``env``."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise _bad(f"gateway config {path.name} is too large")
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise _bad(f"cannot read the gateway config {path.name}") from None
    if path.suffix.lower() == ".toml":
        try:
            data: object = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            raise _bad(f"gateway config {path.name} is not valid TOML") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            raise _bad(f"gateway config {path.name} is not valid YAML") from None
    return gateway_config_from_data(data, os.environ if env is None else env)


def gateway_config_from_data(data: object, env: Mapping[str, str]) -> GatewayConfig:
    top = _mapping(data, "the gateway config", _TOP_KEYS)
    raw_upstreams = top.get("upstreams")
    if not isinstance(raw_upstreams, list) or not raw_upstreams:
        raise _bad("the gateway config needs a non-empty 'upstreams' list")
    if len(raw_upstreams) > MAX_UPSTREAMS:
        raise _bad(f"at most {MAX_UPSTREAMS} upstreams")
    upstreams = tuple(_upstream(raw, i, env) for i, raw in enumerate(raw_upstreams))
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        raise _bad("two upstreams have the same name")
    gateway = _mapping(top.get("gateway") or {}, "[gateway]", _GATEWAY_KEYS)
    public_url = _string(gateway.get("public_url", ""), "gateway.public_url", allow_empty=True)
    if public_url:
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise _bad("gateway.public_url must be an http(s) URL without a query")
    hosts = gateway.get("allowed_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise _bad("gateway.allowed_hosts must be a list of host[:port] patterns")
    task = _task(top["task"], env) if top.get("task") is not None else None
    leased = gateway.get("max_leased_upstreams", DEFAULT_MAX_LEASED_UPSTREAMS)
    if (
        isinstance(leased, bool)
        or not isinstance(leased, int)
        or not 0 <= leased <= MAX_LEASED_UPSTREAMS
    ):
        raise _bad(
            f"gateway.max_leased_upstreams must be an integer from 0 to {MAX_LEASED_UPSTREAMS}"
        )
    sweep = _seconds(gateway, "lease_sweep_seconds", DEFAULT_LEASE_SWEEP_SECONDS, "[gateway]")
    return GatewayConfig(
        upstreams=upstreams,
        task=task,
        public_url=public_url.rstrip("/"),
        allowed_hosts=tuple(hosts),
        max_leased_upstreams=leased,
        lease_sweep_seconds=sweep,
    )


def _upstream(raw: object, index: int, env: Mapping[str, str]) -> UpstreamConfig:
    item = _mapping(raw, f"upstream #{index + 1}", _UPSTREAM_KEYS)
    name = item.get("name")
    if not isinstance(name, str) or not _NAMESPACE.match(name):
        raise _bad(
            f"upstream #{index + 1}: name must be 1-63 lowercase ASCII letters, digits, "
            "'-' or single '_' (it is the namespace of the upstream's tools)"
        )
    where = f"upstream {name}"
    has_command, has_url = "command" in item, "url" in item
    if has_command == has_url:
        raise _bad(f"{where}: give either 'command' (stdio) or 'url' (HTTP)")
    target: StdioTarget | HttpTarget
    if has_command:
        if "headers" in item:
            raise _bad(f"{where}: 'headers' is for HTTP upstreams; use 'env'")
        command = _string(item["command"], f"{where}: command")
        args = item.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise _bad(f"{where}: args must be a list of strings")
        cwd = item.get("cwd")
        target = StdioTarget(
            command=command,
            args=tuple(args),
            env=_secrets(item.get("env", {}), f"{where}: env", _ENV_NAME, env),
            public_env=_plain_env(item.get("public_env", {}), f"{where}: public_env"),
            cwd=Path(_string(cwd, f"{where}: cwd")) if cwd is not None else None,
        )
    else:
        for key in ("args", "env", "public_env", "cwd"):
            if key in item:
                raise _bad(f"{where}: '{key}' is for stdio upstreams")
        url = _string(item["url"], f"{where}: url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad(f"{where}: url must be http(s)://host[:port]/path")
        if parts.username or parts.password:
            raise _bad(f"{where}: put credentials in 'headers', not in the url")
        headers = _secrets(item.get("headers", {}), f"{where}: headers", _HEADER_NAME, env)
        if any(h.lower() in _FORBIDDEN_HEADERS for h in headers):
            raise _bad(f"{where}: headers may not set {sorted(_FORBIDDEN_HEADERS)}")
        target = HttpTarget(url=url, headers=headers)
    timeout = _seconds(item, "timeout_seconds", DEFAULT_TIMEOUT_SECONDS, where)
    start_timeout = _seconds(item, "start_timeout_seconds", DEFAULT_START_TIMEOUT_SECONDS, where)
    protocol = item.get("protocol", "auto")
    if protocol not in ("auto", "legacy"):
        raise _bad(f"{where}: protocol must be 'auto' or 'legacy'")
    relist = item.get("relist_seconds", DEFAULT_RELIST_SECONDS)
    if isinstance(relist, bool) or not isinstance(relist, int | float) or not 0 <= relist <= 86400:
        raise _bad(f"{where}: relist_seconds must be a number from 0 to 86400")
    return UpstreamConfig(name, target, timeout, protocol, float(relist), start_timeout)


def _seconds(item: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = item.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_TIMEOUT_SECONDS
    ):
        raise _bad(f"{where}: {key} must be a number in (0, {int(MAX_TIMEOUT_SECONDS)}]")
    return float(value)


def _task(raw: object, env: Mapping[str, str]) -> TaskConfig:
    item = _mapping(raw, "[task]", _TASK_KEYS)
    principal = _string(item.get("principal"), "task.principal")
    intent = item.get("intent")
    if not isinstance(intent, Mapping) or not intent:
        raise _bad("task.intent must be a table (purpose, tools, destinations, ...)")
    token = item.get("join_token")
    join_token = _secret(token, "task.join_token", env) if token is not None else None
    return TaskConfig(principal, dict(intent), join_token)


# ---------------------------------------------------------------------- small validators


def _mapping(raw: object, what: str, keys: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise _bad(f"{what} must be a table")
    unknown = sorted(str(k) for k in raw if k not in keys)
    if unknown:
        raise _bad(f"{what} has unknown keys: {unknown}")
    return raw


def _string(raw: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(raw, str) or (not raw and not allow_empty) or len(raw) > 4096:
        raise _bad(f"{what} must be a non-empty string")
    return raw


def _plain_env(raw: object, what: str) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise _bad(f"{what} must be a table of NAME = value")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key) or not isinstance(value, str):
            raise _bad(f"{what} must map variable names to strings")
        out[key] = value
    return out


def _secrets(
    raw: object, what: str, key_pattern: re.Pattern[str], env: Mapping[str, str]
) -> dict[str, Secret]:
    if not isinstance(raw, Mapping):
        raise _bad(f"{what} must be a table of name = value")
    out: dict[str, Secret] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key_pattern.match(key):
            raise _bad(f"{what}: a name is malformed")
        out[key] = _secret(value, f"{what}.{key}", env)
    return out


def _secret(raw: object, what: str, env: Mapping[str, str]) -> Secret:
    """A credential value, with ``${NAME}`` references resolved. Errors never show values."""
    if not isinstance(raw, str) or not raw:
        raise _bad(f"{what} must be a non-empty string")
    missing: list[str] = []

    def resolve(match: re.Match[str]) -> str:
        value = env.get(match.group(1))
        if value is None:
            missing.append(match.group(1))
            return ""
        return value

    value = _REFERENCE.sub(resolve, raw)
    if missing:
        raise _bad(f"{what} names unset environment variables: {sorted(set(missing))}")
    if not value or any(c in value for c in "\r\n\0"):
        raise _bad(f"{what} resolves to an empty or multi-line value")
    return Secret(value)


def join_token_from(config: GatewayConfig, env: Mapping[str, str]) -> Secret | None:
    """The sidecar's join token: the config's, else ``REMIT_JOIN_TOKEN``."""
    if config.task is not None and config.task.join_token is not None:
        return config.task.join_token
    value = env.get(JOIN_TOKEN_ENV)
    return Secret(value) if value else None
