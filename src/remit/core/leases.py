"""Leases (DESIGN §1 "Lease"): every credential Remit hands downstream is bound to a task.

Pure rules, no I/O. A lease names a sealed secret and the tool it was issued for; it
never holds a value. Its TTL never runs past the task's expiry, and it ends (revoked or
expired) at the latest when the task does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from remit.errors import InvalidRequest
from remit.ids import check_name

DEFAULT_LEASE_TTL = 900.0  # seconds; always cut to the task's expiry
MAX_LEASE_TTL = 86_400.0
# An open lease is reused for another call only while it has at least this long to run
# (or as long as a new one would get, when the task ends sooner).
REUSE_MARGIN = 30.0
INJECT_HEADER = "inject_header"

# An HTTP header field name (RFC 9110 token), and a printable ASCII template without CR/LF.
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_FORMAT = re.compile(r"^[\x20-\x7e]{0,256}$")
_CREDENTIAL_KEYS = {"secret", "header", "format"}
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "cookie"}


class LeaseState(StrEnum):
    OPEN = "open"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class CredentialSpec:
    """A catalog tool's credential: sealed secret ``secret`` sent as header ``header``,
    its value put where ``{value}`` stands in ``format``."""

    secret: str
    header: str
    format: str = "{value}"

    def render(self, value: str) -> str:
        """The header value. A secret that would break out of the header is refused."""
        if not value or not all(" " <= ch <= "~" for ch in value):
            raise InvalidRequest(
                "the secret cannot be sent as a header value", reason="bad_header_secret"
            )
        return self.format.replace("{value}", value)


def credential_from_data(raw: object, where: str) -> CredentialSpec:
    """Validate a catalog ``credential`` mapping; unknown keys are refused."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where}: credential must be a mapping", reason="bad_catalog")
    unknown = set(raw) - _CREDENTIAL_KEYS
    if unknown:
        raise InvalidRequest(
            f"{where}: credential has unknown keys: {sorted(map(str, unknown))}",
            reason="bad_catalog",
        )
    try:
        secret = check_name(raw.get("secret"), "credential secret")
    except InvalidRequest:
        raise InvalidRequest(
            f"{where}: credential secret must name a sealed secret", reason="bad_catalog"
        ) from None
    header = raw.get("header")
    if (
        not isinstance(header, str)
        or not _HEADER.match(header)
        or header.lower() in _FORBIDDEN_HEADERS
    ):
        raise InvalidRequest(f"{where}: credential header is not allowed", reason="bad_catalog")
    fmt = raw.get("format", "{value}")
    if not isinstance(fmt, str) or not _FORMAT.match(fmt) or fmt.count("{value}") != 1:
        raise InvalidRequest(
            f"{where}: credential format must be printable text with one '{{value}}'",
            reason="bad_catalog",
        )
    return CredentialSpec(secret, header, fmt)


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: str
    task_id: str
    secret_name: str
    tool: str
    issued_at: float
    expires_at: float
    revoked_at: float | None = None  # when it was revoked or reaped
    revoke_reason: str | None = None
    state: LeaseState = LeaseState.OPEN

    def effective_state(self, now: float) -> LeaseState:
        """An open lease whose TTL has run out is expired, reaped or not."""
        if self.state is LeaseState.OPEN and now >= self.expires_at:
            return LeaseState.EXPIRED
        return self.state

    def usable(self, now: float) -> bool:
        return self.effective_state(now) is LeaseState.OPEN

    def to_data(self) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id,
            "task_id": self.task_id,
            "secret": self.secret_name,
            "tool": self.tool,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "revoke_reason": self.revoke_reason,
            "state": self.state.value,
        }


def lease_expiry(now: float, task_expires_at: float, ttl: float = DEFAULT_LEASE_TTL) -> float:
    """When a lease issued now ends: ``now + ttl``, never beyond the task's expiry."""
    if not 0 < ttl <= MAX_LEASE_TTL:
        raise InvalidRequest("a lease TTL must be positive and at most a day", reason="bad_ttl")
    if task_expires_at <= now:
        raise InvalidRequest("the task has expired: no lease", reason="task_expired")
    return min(now + ttl, task_expires_at)


def new_lease(
    lease_id: str,
    *,
    task_id: str,
    secret_name: str,
    tool: str,
    now: float,
    task_expires_at: float,
    ttl: float = DEFAULT_LEASE_TTL,
) -> Lease:
    return Lease(
        lease_id=lease_id,
        task_id=task_id,
        secret_name=secret_name,
        tool=tool,
        issued_at=now,
        expires_at=lease_expiry(now, task_expires_at, ttl),
    )


def reusable(lease: Lease, now: float, task_expires_at: float, ttl: float) -> bool:
    """Whether an open lease may serve another call instead of a new one."""
    if not lease.usable(now):
        return False
    fresh = lease_expiry(now, task_expires_at, ttl)
    return lease.expires_at - now >= min(REUSE_MARGIN, fresh - now)
