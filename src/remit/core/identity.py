"""Agents, their ceilings, instances and the attestation that creates them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from remit.canonical import canonical_bytes
from remit.core.catalog import Catalog, Privilege
from remit.core.destinations import (
    Destination,
    DestinationKind,
    DestinationPattern,
    parse_pattern,
)
from remit.core.labels import Sensitivity
from remit.errors import InvalidRequest

MAX_CEILING_ENTRIES = 1024


class AgentStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


class Mode(StrEnum):
    ENFORCE = "enforce"
    SHADOW = "shadow"


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The most an agent may ever be granted. Every mandate must fit inside it.

    ``any_destination_kinds`` lets a ceiling say "any email recipient" (``email:*``)
    so that request-derived destinations can be granted; a *mandate* can never
    hold such an entry.
    """

    tools: frozenset[str]
    privileges: frozenset[Privilege]
    destinations: tuple[DestinationPattern, ...]
    any_destination_kinds: frozenset[DestinationKind]
    max_sensitivity: Sensitivity

    def allows_destination(self, dest: Destination) -> bool:
        return dest.kind in self.any_destination_kinds or any(
            p.matches(dest) for p in self.destinations
        )

    def covers_pattern(self, pattern: DestinationPattern) -> bool:
        if pattern.kind in self.any_destination_kinds:
            return True
        return any(pattern_within(pattern, outer) for outer in self.destinations)

    def to_data(self) -> dict[str, Any]:
        return {
            "tools": sorted(self.tools),
            "privileges": sorted(p.value for p in self.privileges),
            "destinations": sorted(
                [str(p) for p in self.destinations]
                + [f"{k.value}:*" for k in self.any_destination_kinds]
            ),
            "max_sensitivity": self.max_sensitivity.label,
        }


def pattern_within(inner: DestinationPattern, outer: DestinationPattern) -> bool:
    """Conservatively: is every destination ``inner`` matches also matched by ``outer``?"""
    if inner == outer:
        return True
    if not inner.is_wildcard():
        return outer.matches(Destination(inner.kind, inner.value))
    inner_domains = _domain_set(inner)
    outer_domains = _domain_set(outer)
    if inner_domains is None or outer_domains is None:
        if (
            inner.kind is DestinationKind.URL
            and outer.kind is DestinationKind.URL
            and outer.is_wildcard()
        ):
            return inner.value.startswith(outer.value.rstrip("*"))
        return False
    # Kinds must agree, except that a domain pattern covers emails and urls at those domains.
    if outer.kind is not DestinationKind.DOMAIN and outer.kind is not inner.kind:
        return False
    (inner_base, inner_subs), (outer_base, outer_subs) = inner_domains, outer_domains
    if outer_subs:
        return (inner_base == outer_base and inner_subs) or inner_base.endswith("." + outer_base)
    return not inner_subs and inner_base == outer_base


def _domain_set(pattern: DestinationPattern) -> tuple[str, bool] | None:
    """(base domain, strict-subdomains-only?) for domain-shaped patterns, else None."""
    value = pattern.value
    if pattern.kind is DestinationKind.EMAIL and value.startswith("*@"):
        host = value[2:]
    elif pattern.kind is DestinationKind.DOMAIN:
        host = value
    else:
        return None
    if host.startswith("*."):
        return host[2:], True
    return host, False


def ceiling_from_data(data: object, catalog: Catalog | None = None) -> Ceiling:
    if not isinstance(data, Mapping):
        raise InvalidRequest("ceiling must be a mapping", reason="bad_ceiling")
    unknown = set(data) - {"tools", "privileges", "destinations", "max_sensitivity"}
    if unknown:
        raise InvalidRequest(
            f"ceiling has unknown keys: {sorted(map(str, unknown))}", reason="bad_ceiling"
        )
    tools = _str_list(data.get("tools"), "ceiling tools")
    if not tools:
        raise InvalidRequest("ceiling tools must not be empty", reason="bad_ceiling")
    if catalog is not None:
        missing = sorted(t for t in tools if t not in catalog)
        if missing:
            raise InvalidRequest(
                f"ceiling names tools not in the catalog: {missing}", reason="unknown_tool"
            )
    try:
        privileges = frozenset(
            Privilege(p) for p in _str_list(data.get("privileges"), "ceiling privileges")
        )
    except ValueError:
        raise InvalidRequest(
            "ceiling privileges must be read, write or act", reason="bad_ceiling"
        ) from None
    if not privileges:
        raise InvalidRequest("ceiling privileges must not be empty", reason="bad_ceiling")
    patterns: list[DestinationPattern] = []
    any_kinds: set[DestinationKind] = set()
    for text in _str_list(data.get("destinations", []), "ceiling destinations"):
        kind, sep, value = text.partition(":")
        if sep and value == "*":
            try:
                any_kinds.add(DestinationKind(kind))
            except ValueError:
                raise InvalidRequest(
                    "ceiling destination kind is unknown", reason="bad_destination"
                ) from None
        else:
            patterns.append(parse_pattern(text))
    sensitivity = Sensitivity.parse(data.get("max_sensitivity", "internal"))
    return Ceiling(frozenset(tools), privileges, tuple(patterns), frozenset(any_kinds), sensitivity)


def _str_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{what} must be a list of strings", reason="bad_ceiling")
    if len(value) > MAX_CEILING_ENTRIES:
        raise InvalidRequest(f"{what} has too many entries", reason="bad_ceiling")
    return list(dict.fromkeys(value))


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str  # spiffe://<trust-domain>/agent/<name>
    name: str
    owner: str
    description: str
    ceiling: Ceiling
    status: AgentStatus
    mode: Mode
    created_at: float
    updated_at: float

    def with_status(self, status: AgentStatus, now: float) -> Agent:
        return replace(self, status=status, updated_at=now)


@dataclass(frozen=True, slots=True)
class Instance:
    instance_id: str
    agent_id: str
    jkt: str
    public_jwk: Mapping[str, str] = field(hash=False)
    attested_at: float
    active: bool = True


@dataclass(frozen=True, slots=True)
class Principal:
    principal_id: str
    display_name: str
    identifiers: tuple[Destination, ...]  # inside the principal's own boundary


def join_token_hash(token: str) -> str:
    """Join tokens are stored only as a hash: a database read does not yield a usable token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def attestation_payload(nonce: str, jkt: str, agent_hint: str = "") -> bytes:
    """What an instance signs to prove it holds its key: the server nonce and its thumbprint."""
    return canonical_bytes(
        {"purpose": "remit-attestation-v1", "nonce": nonce, "jkt": jkt, "agent": agent_hint}
    )


def agents_owned_by(agents: Iterable[Agent], owner: str) -> list[Agent]:
    return [a for a in agents if a.owner == owner]
