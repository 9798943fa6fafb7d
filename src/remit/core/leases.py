"""Leases (DESIGN §1 "Lease"): every credential Remit hands downstream is bound to a task.

Pure rules, no I/O. A lease names the credential source it was issued from (a sealed
secret, or a configured provider such as ``signed-token`` or ``postgres``) and the tool
it was issued for; it never holds a value in the clear (issued values are sealed with the
master key by the service, AAD bound to the lease id). Its TTL never runs past the task's
expiry, and it ends at the latest when the task does.

Lifecycle::

    open ──(task end, revocation, kill switch, operator, per-call use)──▶ revoking ──▶ revoked
      └──(TTL: the reaper)──────────────────────────────────────────────▶ revoking ──▶ expired

``revoking`` means the downstream revocation has not succeeded yet: the lease is never
usable again, is shown as outstanding, and is retried with capped exponential backoff and
jitter (``revoke_backoff``) until the provider confirms it. A revocation is never dropped.

Catalog credential entries (``credential_from_data``), unknown keys refused:

* ``{secret: NAME, header: H, format: "Bearer {value}"}``: a sealed static secret
  injected as a header (the implicit static provider named after the secret);
* ``{provider: NAME, header: H, format: "Bearer {value}", value: "token"}``: the issued
  value ``value`` of provider ``NAME`` injected as a header;
* ``{provider: NAME, env: {VAR: "{dsn}"}}``: environment injection for an upstream
  process, each value a template over the issued value names;
* optional ``per_call: true`` (bound to the one decision: single use, then revoked) and
  ``ttl_seconds`` (at most the global ``lease_ttl_seconds``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from remit.core.secrets import Secret
from remit.errors import InvalidRequest
from remit.ids import check_name

DEFAULT_LEASE_TTL: Final = 900.0  # seconds; always cut to the task's expiry
MAX_LEASE_TTL: Final = 86_400.0
# An open lease is reused for another call only while it has at least this long to run
# (or as long as a new one would get, when the task ends sooner).
REUSE_MARGIN: Final = 30.0
INJECT_HEADER: Final = "inject_header"
INJECT_ENV: Final = "inject_env"
OBLIGATION_KINDS: Final = frozenset({INJECT_HEADER, INJECT_ENV})
STATIC_KIND: Final = "static"
# Revocation retries: 1 s doubling to 5 minutes, with jitter (half to full delay).
REVOKE_BASE_DELAY: Final = 1.0
REVOKE_MAX_DELAY: Final = 300.0

# An HTTP header field name (RFC 9110 token), and a printable ASCII template without CR/LF.
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_FORMAT = re.compile(r"^[\x20-\x7e]{0,256}$")
_VALUE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
_CREDENTIAL_KEYS = {
    "secret",
    "provider",
    "header",
    "format",
    "value",
    "env",
    "per_call",
    "ttl_seconds",
}
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "cookie"}
# Variables that change how the upstream process itself runs are never injected.
_FORBIDDEN_ENV = {"PATH", "HOME", "SHELL", "IFS", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}
_FORBIDDEN_ENV_PREFIXES = ("LD_", "DYLD_")
MAX_ENV_VARS: Final = 16


class LeaseState(StrEnum):
    OPEN = "open"
    REVOKING = "revoking"  # ended, downstream revocation outstanding
    REVOKED = "revoked"
    EXPIRED = "expired"


def _placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def _fill(template: str, values: Mapping[str, Secret]) -> str:
    """Replace each ``{name}`` once, left to right; no format-string evaluation, and a
    value that itself contains ``{x}`` is never expanded again."""
    out: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        out.append(template[pos : match.start()])
        value = values.get(match.group(1))
        if value is None:
            raise InvalidRequest(
                f"the credential has no issued value {match.group(1)!r}",
                reason="missing_credential_value",
            )
        out.append(value.reveal())
        pos = match.end()
    out.append(template[pos:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CredentialSpec:
    """A catalog tool's credential (see the module docstring).

    The static form names ``secret`` (sent as header ``header``, its value where
    ``{value}`` stands in ``format``); the provider form names ``provider`` and injects
    its issued value ``value`` as a header, or the ``env`` templates into the upstream
    process environment."""

    secret: str | None = None
    header: str | None = None
    format: str = "{value}"
    provider: str | None = None
    value: str = "value"
    env: tuple[tuple[str, str], ...] = ()
    per_call: bool = False
    ttl_seconds: float | None = None

    @property
    def source(self) -> str:
        """The name issuance is decided on (``Credential::"<source>"``) and leases name."""
        return self.provider or self.secret or ""

    @property
    def obligation_kind(self) -> str:
        return INJECT_HEADER if self.header is not None else INJECT_ENV

    def render(self, value: str) -> str:
        """The header value for a single issued value. A value that would break out of the
        header is refused."""
        return self.render_header({self.value: Secret(value)}).reveal()

    def render_header(self, values: Mapping[str, Secret]) -> Secret:
        value = values.get(self.value)
        raw = value.reveal() if value is not None else ""
        if not raw or not all(" " <= ch <= "~" for ch in raw):
            raise InvalidRequest(
                "the secret cannot be sent as a header value", reason="bad_header_secret"
            )
        return Secret(self.format.replace("{value}", raw))

    def render_env(self, values: Mapping[str, Secret]) -> dict[str, Secret]:
        env: dict[str, Secret] = {}
        for name, template in self.env:
            text = _fill(template, values)
            if "\x00" in text:
                raise InvalidRequest(
                    "an issued value cannot be put in the environment", reason="bad_env_secret"
                )
            env[name] = Secret(text)
        return env

    def to_data(self) -> dict[str, Any]:
        """The entry without any value (for listings)."""
        data: dict[str, Any] = {"source": self.source, "per_call": self.per_call}
        if self.header is not None:
            data["header"] = self.header
        if self.env:
            data["env"] = sorted(name for name, _ in self.env)
        return data


def _bad(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: credential {message}", reason="bad_catalog")


def _check_header(raw: Mapping[Any, Any], where: str) -> tuple[str, str]:
    header = raw.get("header")
    if (
        not isinstance(header, str)
        or not _HEADER.match(header)
        or header.lower() in _FORBIDDEN_HEADERS
    ):
        raise _bad(where, "header is not allowed")
    fmt = raw.get("format", "{value}")
    if not isinstance(fmt, str) or not _FORMAT.match(fmt) or fmt.count("{value}") != 1:
        raise _bad(where, "format must be printable text with one '{value}'")
    return header, fmt


def _check_env(raw: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping) or not 0 < len(raw) <= MAX_ENV_VARS:
        raise _bad(where, f"env must map 1 to {MAX_ENV_VARS} variable names to templates")
    pairs: list[tuple[str, str]] = []
    for name, template in raw.items():
        if (
            not isinstance(name, str)
            or not _ENV_NAME.match(name)
            or name in _FORBIDDEN_ENV
            or name.startswith(_FORBIDDEN_ENV_PREFIXES)
        ):
            raise _bad(where, f"env variable {str(name)[:64]!r} is not allowed")
        if not isinstance(template, str) or not _FORMAT.match(template):
            raise _bad(where, f"env {name} must be a printable template")
        names = _placeholders(template)
        if not names or not all(_VALUE_NAME.match(n) for n in names):
            raise _bad(where, f"env {name} must use issued values such as '{{dsn}}'")
        pairs.append((name, template))
    return tuple(sorted(pairs))


def credential_from_data(
    raw: object, where: str, *, max_ttl: float = MAX_LEASE_TTL
) -> CredentialSpec:
    """Validate a catalog ``credential`` mapping; unknown keys are refused."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where}: credential must be a mapping", reason="bad_catalog")
    unknown = set(raw) - _CREDENTIAL_KEYS
    if unknown:
        raise _bad(where, f"has unknown keys: {sorted(map(str, unknown))}")
    per_call = raw.get("per_call", False)
    if not isinstance(per_call, bool):
        raise _bad(where, "per_call must be true or false")
    ttl_raw = raw.get("ttl_seconds")
    ttl: float | None = None
    if ttl_raw is not None:
        if (
            isinstance(ttl_raw, bool)
            or not isinstance(ttl_raw, int | float)
            or not 0 < ttl_raw <= max_ttl
        ):
            raise _bad(where, f"ttl_seconds must be from 1 to {int(max_ttl)}")
        ttl = float(ttl_raw)
    if ("secret" in raw) == ("provider" in raw):
        raise _bad(where, "must name exactly one of a sealed secret or a provider")
    if "secret" in raw:
        if set(raw) & {"value", "env"}:
            raise _bad(where, "with a secret takes header and format only")
        try:
            secret = check_name(raw.get("secret"), "credential secret")
        except InvalidRequest:
            raise _bad(where, "secret must name a sealed secret") from None
        header, fmt = _check_header(raw, where)
        return CredentialSpec(secret, header, fmt, per_call=per_call, ttl_seconds=ttl)
    try:
        provider = check_name(raw.get("provider"), "credential provider")
    except InvalidRequest:
        raise _bad(where, "provider must name a configured provider") from None
    if ("header" in raw) == ("env" in raw):
        raise _bad(where, "must inject either a header or env, not both or neither")
    if "env" in raw:
        if set(raw) & {"format", "value"}:
            raise _bad(where, "with env takes no format or value")
        env = _check_env(raw["env"], where)
        return CredentialSpec(provider=provider, env=env, per_call=per_call, ttl_seconds=ttl)
    header, fmt = _check_header(raw, where)
    value = raw.get("value", "value")
    if not isinstance(value, str) or not _VALUE_NAME.match(value):
        raise _bad(where, "value must name an issued value, e.g. 'token'")
    return CredentialSpec(
        header=header,
        format=fmt,
        provider=provider,
        value=value,
        per_call=per_call,
        ttl_seconds=ttl,
    )


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: str
    task_id: str
    secret_name: str  # the credential source: a sealed secret or a provider name
    tool: str
    issued_at: float
    expires_at: float
    revoked_at: float | None = None  # when it was ended (revoked or reaped)
    revoke_reason: str | None = None
    state: LeaseState = LeaseState.OPEN
    provider: str = ""  # the configured provider's name; "" for the implicit static one
    kind: str = STATIC_KIND
    handle: str = ""  # the provider's non-secret reference, used to revoke
    call_id: str | None = None  # the decision id of a per-call lease
    per_call: bool = False
    obligation_kind: str = INJECT_HEADER
    used_at: float | None = None
    end_state: LeaseState | None = None  # what a revoking lease becomes once revoked
    revoke_attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None  # a stable error code, never a message or a value

    def effective_state(self, now: float) -> LeaseState:
        """An open lease whose TTL has run out is expired, reaped or not."""
        if self.state is LeaseState.OPEN and now >= self.expires_at:
            return LeaseState.EXPIRED
        return self.state

    def usable(self, now: float) -> bool:
        return self.effective_state(now) is LeaseState.OPEN and not (
            self.per_call and self.used_at is not None
        )

    @property
    def outstanding(self) -> bool:
        """Ended, but the downstream revocation has not succeeded yet."""
        return self.state is LeaseState.REVOKING

    def to_data(self) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id,
            "task_id": self.task_id,
            "secret": self.secret_name,
            "provider": self.provider or None,
            "kind": self.kind,
            "tool": self.tool,
            "obligation": self.obligation_kind,
            "per_call": self.per_call,
            "call_id": self.call_id,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "used_at": self.used_at,
            "revoked_at": self.revoked_at,
            "revoke_reason": self.revoke_reason,
            "state": self.state.value,
            "outstanding": self.outstanding,
            "revoke_attempts": self.revoke_attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
        }


def lease_expiry(now: float, task_expires_at: float, ttl: float = DEFAULT_LEASE_TTL) -> float:
    """When a lease issued now ends: ``now + ttl``, never beyond the task's expiry."""
    if not 0 < ttl <= MAX_LEASE_TTL:
        raise InvalidRequest("a lease TTL must be positive and at most a day", reason="bad_ttl")
    if task_expires_at <= now:
        raise InvalidRequest("the task has expired: no lease", reason="task_expired")
    return min(now + ttl, task_expires_at)


def lease_ttl(spec: CredentialSpec, configured: float) -> float:
    """A credential's TTL: its own ``ttl_seconds`` when shorter, never the configured one's
    more."""
    if spec.ttl_seconds is None:
        return configured
    return min(spec.ttl_seconds, configured)


def new_lease(
    lease_id: str,
    *,
    task_id: str,
    secret_name: str,
    tool: str,
    now: float,
    task_expires_at: float,
    ttl: float = DEFAULT_LEASE_TTL,
    provider: str = "",
    kind: str = STATIC_KIND,
    call_id: str | None = None,
    per_call: bool = False,
    obligation_kind: str = INJECT_HEADER,
) -> Lease:
    if per_call and not call_id:
        raise InvalidRequest("a per-call lease names its call", reason="bad_lease")
    return Lease(
        lease_id=lease_id,
        task_id=task_id,
        secret_name=secret_name,
        tool=tool,
        issued_at=now,
        expires_at=lease_expiry(now, task_expires_at, ttl),
        provider=provider,
        kind=kind,
        call_id=call_id if per_call else None,
        per_call=per_call,
        obligation_kind=obligation_kind,
    )


def reusable(lease: Lease, now: float, task_expires_at: float, ttl: float) -> bool:
    """Whether an open lease may serve another call instead of a new one. A per-call
    lease never does."""
    if lease.per_call or not lease.usable(now):
        return False
    fresh = lease_expiry(now, task_expires_at, ttl)
    return lease.expires_at - now >= min(REUSE_MARGIN, fresh - now)


def revoke_backoff(attempts: int, jitter: float) -> float:
    """Seconds before revocation attempt ``attempts + 1``, after ``attempts`` failures:
    1 s doubling, capped at 5 minutes, scaled by ``0.5 + jitter / 2`` (``jitter`` in
    [0, 1], drawn by the caller) so many failed leases do not retry in lockstep."""
    if attempts < 1:
        raise InvalidRequest("backoff is for a failed attempt", reason="bad_attempts")
    jitter = min(max(jitter, 0.0), 1.0)
    delay = min(REVOKE_BASE_DELAY * 2.0 ** min(attempts - 1, 30), REVOKE_MAX_DELAY)
    return delay * (0.5 + jitter / 2.0)
