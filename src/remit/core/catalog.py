"""The tool catalog: what Remit knows about each tool, set by an admin.

Nothing here is ever taken from a tool server. A tool that is not in the
catalog is denied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from remit.canonical import JsonLimits, digest
from remit.core.destinations import Destination, DestinationKind, normalize_destination
from remit.core.labels import Labels
from remit.core.leases import CredentialSpec, credential_from_data
from remit.errors import InvalidRequest

# server/tool, ASCII only: confusable unicode never names a tool.
_TOOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_.-]{0,62}$")
_ARG_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,3}$")
_RISK_TAG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_TOOLS = 10_000


class Privilege(StrEnum):
    """read: no side effects; write: changes inside the principal's boundary;
    act: side effects that leave the boundary (send, pay, invite, post, execute)."""

    READ = "read"
    WRITE = "write"
    ACT = "act"


def check_tool_name(name: object) -> str:
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise InvalidRequest(
            "tool name must be 'server/tool' in lowercase ASCII letters, digits, '_', '-', '.'",
            reason="malformed_tool_name",
        )
    return name


@dataclass(frozen=True, slots=True)
class DestinationArg:
    """An argument (dotted path into the call's arguments) that names a destination."""

    path: str
    kind: DestinationKind


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    privilege: Privilege
    destination_args: tuple[DestinationArg, ...]
    output_labels: Labels
    risk: frozenset[str]
    description: str = ""
    shadow: bool = False  # staged rollout: decide and record, but do not block
    credential: CredentialSpec | None = None  # a sealed secret leased and injected per task

    @property
    def server(self) -> str:
        return self.name.split("/", 1)[0]

    def destinations_in(self, arguments: Mapping[str, Any]) -> tuple[Destination, ...]:
        """The destinations a call's arguments name, normalized.

        Raises InvalidRequest when a destination argument is malformed, so an
        address that cannot be read is never waved through.
        """
        found: list[Destination] = []
        for arg in self.destination_args:
            value = _lookup(arguments, arg.path)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            for raw in values:
                found.append(normalize_destination(arg.kind, raw))
        return tuple(dict.fromkeys(found))


def _lookup(arguments: Mapping[str, Any], path: str) -> Any:
    current: Any = arguments
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


@dataclass(frozen=True, slots=True)
class Catalog:
    tools: Mapping[str, ToolSpec]

    def get(self, name: str) -> ToolSpec | None:
        return self.tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)


_TOOL_KEYS = {
    "name",
    "privilege",
    "destinations",
    "labels",
    "risk",
    "description",
    "mode",
    "credential",
}


def catalog_from_data(data: object) -> Catalog:
    """Build a catalog from parsed manifest data (``{"tools": [...]}``), validating all of it.

    Each tool: ``name``, ``privilege`` (read|write|act), ``destinations``
    (mapping of argument path to kind), ``labels`` (output labels), ``risk``
    (tags), ``description``, ``credential`` (``{secret, header, format}``: a sealed
    secret leased per task and injected as a header; or ``{provider, header, format,
    value}`` / ``{provider, env}``, optionally ``per_call`` and ``ttl_seconds``: see
    ``remit.core.leases``). Unknown keys are refused: a typo must not
    silently drop a restriction.
    """
    if not isinstance(data, Mapping) or set(data) - {"tools", "version"}:
        raise InvalidRequest("catalog must be a mapping with a 'tools' list", reason="bad_catalog")
    raw_tools = data.get("tools")
    if not isinstance(raw_tools, list) or not raw_tools:
        raise InvalidRequest("catalog 'tools' must be a non-empty list", reason="bad_catalog")
    if len(raw_tools) > MAX_TOOLS:
        raise InvalidRequest("catalog has too many tools", reason="bad_catalog")
    tools: dict[str, ToolSpec] = {}
    for index, raw in enumerate(raw_tools):
        spec = _tool_from_data(raw, index)
        if spec.name in tools:
            raise InvalidRequest(f"catalog names tool {spec.name} twice", reason="bad_catalog")
        tools[spec.name] = spec
    return Catalog(tools)


def _tool_from_data(raw: object, index: int) -> ToolSpec:
    where = f"catalog tool #{index + 1}"
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where} must be a mapping", reason="bad_catalog")
    unknown = set(raw) - _TOOL_KEYS
    if unknown:
        raise InvalidRequest(
            f"{where} has unknown keys: {sorted(map(str, unknown))}", reason="bad_catalog"
        )
    name = check_tool_name(raw.get("name"))
    where = f"catalog tool {name}"
    try:
        privilege = Privilege(str(raw.get("privilege")))
    except ValueError:
        raise InvalidRequest(
            f"{where}: privilege must be read, write or act", reason="bad_catalog"
        ) from None
    dest_raw = raw.get("destinations") or {}
    if not isinstance(dest_raw, Mapping):
        raise InvalidRequest(
            f"{where}: destinations must map argument to kind", reason="bad_catalog"
        )
    destination_args: list[DestinationArg] = []
    for path, kind in dest_raw.items():
        if not isinstance(path, str) or not _ARG_PATH.match(path):
            raise InvalidRequest(f"{where}: bad destination argument path", reason="bad_catalog")
        try:
            destination_args.append(DestinationArg(path, DestinationKind(kind)))
        except ValueError:
            raise InvalidRequest(
                f"{where}: unknown destination kind", reason="bad_catalog"
            ) from None
    if (
        privilege is Privilege.ACT
        and not destination_args
        and "no-destination" not in (raw.get("risk") or [])
    ):
        # An act tool leaves the boundary; say where, or say explicitly that it has no destination.
        raise InvalidRequest(
            f"{where}: an act tool must declare its destination arguments "
            "(or the risk tag 'no-destination')",
            reason="bad_catalog",
        )
    labels_raw = raw.get("labels") or []
    if not isinstance(labels_raw, list):
        raise InvalidRequest(f"{where}: labels must be a list", reason="bad_catalog")
    labels = Labels.parse(labels_raw)
    risk_raw = raw.get("risk") or []
    if not isinstance(risk_raw, list) or not all(
        isinstance(r, str) and _RISK_TAG.match(r) for r in risk_raw
    ):
        raise InvalidRequest(
            f"{where}: risk must be a list of short lowercase tags", reason="bad_catalog"
        )
    description = raw.get("description") or ""
    if not isinstance(description, str) or len(description) > 1000:
        raise InvalidRequest(f"{where}: description must be a short string", reason="bad_catalog")
    mode = raw.get("mode", "enforce")
    if mode not in ("enforce", "shadow"):
        raise InvalidRequest(f"{where}: mode must be enforce or shadow", reason="bad_catalog")
    credential_raw = raw.get("credential")
    credential = None if credential_raw is None else credential_from_data(credential_raw, where)
    return ToolSpec(
        credential=credential,
        shadow=mode == "shadow",
        name=name,
        privilege=privilege,
        destination_args=tuple(destination_args),
        output_labels=labels,
        risk=frozenset(risk_raw),
        description=description,
    )


DEFINITION_LIMITS = JsonLimits(
    max_depth=24, max_bytes=256 * 1024, max_string=64 * 1024, max_items=4096
)


def tool_definition_digest(definition: Mapping[str, Any]) -> str:
    """The pin of an upstream tool: a digest of its name, description and input schema.

    What a tool server says about a tool is what a model reads and obeys, so a
    change to any of the three (a "rug pull") must be seen and re-admitted.
    """
    if not isinstance(definition, Mapping) or set(definition) - {
        "name",
        "description",
        "input_schema",
    }:
        raise InvalidRequest(
            "a tool definition has name, description and input_schema only", reason="bad_definition"
        )
    name = definition.get("name")
    description = definition.get("description") or ""
    schema = definition.get("input_schema") or {}
    if not isinstance(name, str) or not name or not isinstance(description, str):
        raise InvalidRequest(
            "a tool definition needs a name and a text description", reason="bad_definition"
        )
    if not isinstance(schema, Mapping):
        raise InvalidRequest("a tool's input schema must be an object", reason="bad_definition")
    return digest(
        {"name": name, "description": description, "input_schema": dict(schema)}, DEFINITION_LIMITS
    )


def merge_catalogs(catalogs: Iterable[Catalog]) -> Catalog:
    tools: dict[str, ToolSpec] = {}
    for catalog in catalogs:
        for name, spec in catalog.tools.items():
            if name in tools:
                raise InvalidRequest(f"tool {name} is defined twice", reason="bad_catalog")
            tools[name] = spec
    return Catalog(tools)
