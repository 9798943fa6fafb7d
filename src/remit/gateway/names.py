"""Names on the MCP wire and in Remit's catalog, and what a proof names.

An upstream's ``name`` is the namespace of its tools: ``<name>__<tool>`` on the
wire (MCP tool names allow no ``/``), ``<name>/<tool>`` in the catalog. A
namespace never contains ``__``, so the first ``__`` splits a wire name.

Over HTTP every MCP request carries a proof. A ``tools/call`` proof names the
catalog tool and the digest of the call's arguments; any other request names
``remit:mcp/<method>`` (e.g. ``remit:mcp/tools/list``) over the digest of ``{}``.
"""

from __future__ import annotations

from typing import Final

SEPARATOR: Final = "__"
MCP_OP_PREFIX: Final = "remit:mcp/"
PROOF_HEADER: Final = "Remit-Proof"


def wire_name(namespace: str, tool: str) -> str:
    return f"{namespace}{SEPARATOR}{tool}"


def split_wire_name(name: str) -> tuple[str, str] | None:
    """``(namespace, upstream tool)`` of a wire name, or None if it has no namespace."""
    namespace, sep, tool = name.partition(SEPARATOR)
    if not sep or not namespace or not tool:
        return None
    return namespace, tool


def catalog_name(name: str) -> str:
    """The catalog name of a wire name (``a__b`` -> ``a/b``); other names are kept as they
    are, so Remit refuses them as malformed rather than the gateway guessing."""
    parts = split_wire_name(name)
    return f"{parts[0]}/{parts[1]}" if parts else name


def mcp_op(method: str) -> str:
    """What the proof of a non-call MCP request names."""
    return MCP_OP_PREFIX + method
