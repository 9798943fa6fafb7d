"""Typed identifiers: SPIFFE IDs and Remit's own random ids.

Identifiers are ASCII with a small grammar, so confusable unicode never
reaches a lookup or a policy.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import NewType

from remit.errors import InvalidRequest

AgentId = NewType("AgentId", str)  # a SPIFFE ID string
InstanceId = NewType("InstanceId", str)
TaskId = NewType("TaskId", str)
PrincipalId = NewType("PrincipalId", str)

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
_RANDOM_ID = re.compile(r"^[a-z]{2,4}_[A-Za-z0-9_-]{16,64}$")
_PRINCIPAL = re.compile(r"^[a-z]{2,16}:[A-Za-z0-9._@+-]{1,200}$")
MAX_SPIFFE_ID_BYTES = 2048


def new_id(prefix: str) -> str:
    """A random, URL-safe id such as ``tsk_Q2x...``; 128 bits of entropy."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def check_random_id(value: object, prefix: str, what: str) -> str:
    if (
        not isinstance(value, str)
        or not _RANDOM_ID.match(value)
        or not value.startswith(prefix + "_")
    ):
        raise InvalidRequest(f"malformed {what} id", reason="malformed_id")
    return value


def check_name(value: object, what: str = "name") -> str:
    """A lowercase ASCII name: letters, digits, '.', '_' and '-', at most 64 characters."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidRequest(
            f"{what} must be 1-64 lowercase ASCII letters, digits, '.', '_' or '-'",
            reason="malformed_name",
        )
    return value


def check_principal_id(value: object) -> PrincipalId:
    """``kind:identifier`` in ASCII, e.g. ``user:sam@acme.example`` or ``team:support``."""
    if not isinstance(value, str) or not _PRINCIPAL.match(value):
        raise InvalidRequest(
            "principal id must look like 'user:name@example.com' (ASCII)",
            reason="malformed_principal",
        )
    return PrincipalId(value)


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed ``spiffe://trust-domain/path`` ID, validated per the SPIFFE ID spec."""

    trust_domain: str
    path: str  # begins with '/', never ends with '/'

    @classmethod
    def parse(cls, value: object) -> SpiffeId:
        if not isinstance(value, str):
            raise InvalidRequest("SPIFFE ID must be a string", reason="malformed_spiffe_id")
        if len(value.encode("utf-8")) > MAX_SPIFFE_ID_BYTES:
            raise InvalidRequest("SPIFFE ID is too long", reason="malformed_spiffe_id")
        if not value.isascii() or not value.startswith("spiffe://"):
            raise InvalidRequest(
                "SPIFFE ID must start with 'spiffe://' (ASCII)", reason="malformed_spiffe_id"
            )
        rest = value[len("spiffe://") :]
        trust_domain, slash, path = rest.partition("/")
        if not _TRUST_DOMAIN.match(trust_domain):
            raise InvalidRequest("SPIFFE trust domain is malformed", reason="malformed_spiffe_id")
        if not slash or not path:
            raise InvalidRequest("SPIFFE ID needs a path", reason="malformed_spiffe_id")
        for segment in path.split("/"):
            if segment in ("", ".", "..") or not _PATH_SEGMENT.match(segment):
                raise InvalidRequest(
                    "SPIFFE ID path segment is malformed", reason="malformed_spiffe_id"
                )
        return cls(trust_domain, "/" + path)

    @classmethod
    def for_agent(cls, trust_domain: str, name: str) -> SpiffeId:
        check_name(name, "agent name")
        return cls.parse(f"spiffe://{trust_domain}/agent/{name}")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"
