"""Render a blast-radius document (``BlastRadius.to_data()``) as Graphviz DOT or as SVG.

Both work on the JSON document, so the CLI renders a server's answer and a
local analysis alike. No Graphviz needed: DOT is written as text, and the SVG
is a simple layered layout drawn here (columns: agents, tools, systems,
destinations and data labels). Every name is escaped for its format; edges on
an ``exfil-path`` finding are drawn red.
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["dot_string", "svg_escape", "to_dot", "to_svg"]

_COLUMNS: Final[dict[str, int]] = {"agent": 0, "tool": 1, "system": 2, "destination": 3, "label": 3}
_SHAPES: Final[dict[str, str]] = {
    "agent": "box",
    "tool": "ellipse",
    "system": "folder",
    "destination": "cds",
    "label": "note",
}
_FILL: Final[dict[str, str]] = {
    "agent": "#dbe9ff",
    "tool": "#eeeeee",
    "system": "#e3f5e1",
    "destination": "#ffe9d6",
    "label": "#f6e6ff",
}
_STROKE: Final[dict[str, str]] = {
    "can_read": "#4a7ab5",
    "can_write": "#b58a1e",
    "can_act": "#c2410c",
    "delegates_to": "#6d28d9",
    "reaches_system": "#4b8b3b",
    "sends_to": "#c2410c",
    "outputs_label": "#8e44ad",
}
_EXFIL: Final = "#d00000"
_INVALID_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_BOX_W: Final = 220
_BOX_H: Final = 34
_COL_GAP: Final = 110
_ROW_GAP: Final = 16
_MARGIN: Final = 40
_TOP: Final = 70
_MAX_CHARS: Final = 30


def dot_string(text: object) -> str:
    """A DOT double-quoted string: backslashes, quotes and line breaks escaped."""
    value = str(text).replace("\\", "\\\\").replace('"', '\\"')
    value = value.replace("\r", "").replace("\n", "\\n")
    return f'"{value}"'


def svg_escape(text: object) -> str:
    """Text or attribute content for XML: ``& < > " '`` escaped, control characters dropped."""
    return html.escape(_INVALID_XML.sub("\ufffd", str(text)), quote=True)


def _exfil_edges(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(source, target) pairs along every exfil-path finding's path."""
    nodes = {n["id"]: n["kind"] for n in document.get("nodes", [])}
    found: set[tuple[str, str]] = set()
    for finding in document.get("findings", []):
        if finding.get("kind") != "exfil-path":
            continue
        path: Sequence[str] = finding.get("path", [])
        agents = [p for p in path if nodes.get(p) == "agent"]
        tools = [p for p in path if nodes.get(p) == "tool"]
        found.update(itertools.pairwise(agents))
        if agents and tools:
            found.add((agents[-1], tools[-1]))
            if len(tools) > 1:
                found.update((a, tools[0]) for a in agents)
        found.update((t, p) for t in tools[-1:] for p in path if nodes.get(p) == "destination")
    return found


def to_dot(document: Mapping[str, Any]) -> str:
    """A ``digraph`` of the document: one node per graph node, one edge per graph edge."""
    red = _exfil_edges(document)
    lines = [
        f"digraph {dot_string('blast radius of ' + str(document.get('agent_id', '')))} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=10, style=filled];',
        '  edge [fontname="Helvetica", fontsize=8];',
    ]
    for node in document.get("nodes", []):
        kind = str(node.get("kind", ""))
        label = str(node.get("label", ""))
        lines.append(
            f"  {dot_string(node['id'])} [label={dot_string(label)}, "
            f"shape={_SHAPES.get(kind, 'box')}, "
            f"fillcolor={dot_string(_FILL.get(kind, '#ffffff'))}];"
        )
    for edge in document.get("edges", []):
        kind = str(edge.get("kind", ""))
        pair = (edge["source"], edge["target"])
        color = _EXFIL if pair in red else _STROKE.get(kind, "#555555")
        attrs = [f"label={dot_string(kind)}", f"color={dot_string(color)}"]
        if pair in red:
            attrs.append("penwidth=2")
        if kind == "delegates_to":
            attrs.append("style=dashed")
        lines.append(f"  {dot_string(pair[0])} -> {dot_string(pair[1])} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "…"


def to_svg(document: Mapping[str, Any]) -> str:
    """A standalone SVG: columns of boxes (agents, tools, systems, destinations and labels)
    joined by curves coloured by edge kind; exfil-path edges in red."""
    nodes = list(document.get("nodes", []))
    columns: dict[int, list[Mapping[str, Any]]] = {c: [] for c in range(4)}
    for node in nodes:
        columns[_COLUMNS.get(str(node.get("kind")), 3)].append(node)
    position: dict[str, tuple[float, float]] = {}
    for column, members in columns.items():
        left = float(_MARGIN + column * (_BOX_W + _COL_GAP))
        for row, node in enumerate(members):
            position[str(node["id"])] = (left, _TOP + row * (_BOX_H + _ROW_GAP))
    rows = max((len(m) for m in columns.values()), default=0)
    width = 2 * _MARGIN + 4 * _BOX_W + 3 * _COL_GAP
    height = _TOP + max(rows, 1) * (_BOX_H + _ROW_GAP) + _MARGIN
    red = _exfil_edges(document)
    summary = document.get("summary", {})
    counts = summary.get("findings", {}) if isinstance(summary, Mapping) else {}
    title = f"blast radius of {document.get('agent_id', '')}"
    subtitle = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "no findings"

    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f"<title>{svg_escape(title)}</title>",
        '<rect x="0" y="0" width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{_MARGIN}" y="28" font-size="16" font-weight="bold">{svg_escape(title)}</text>',
        f'<text x="{_MARGIN}" y="48" font-size="11" fill="#555555">{svg_escape(subtitle)}</text>',
        '<g class="edges" fill="none">',
    ]
    for edge in document.get("edges", []):
        source, target = str(edge.get("source")), str(edge.get("target"))
        if source not in position or target not in position:
            continue
        kind = str(edge.get("kind", ""))
        sx, sy = position[source]
        tx, ty = position[target]
        sy, ty = sy + _BOX_H / 2, ty + _BOX_H / 2
        if sx == tx:  # same column (delegation): a loop on the left side
            bend = sx - 60
            d = f"M{sx:.0f},{sy:.0f} C{bend:.0f},{sy:.0f} {bend:.0f},{ty:.0f} {tx:.0f},{ty:.0f}"
        else:
            sx += _BOX_W
            mid = (sx + tx) / 2
            d = f"M{sx:.0f},{sy:.0f} C{mid:.0f},{sy:.0f} {mid:.0f},{ty:.0f} {tx:.0f},{ty:.0f}"
        exfil = (source, target) in red
        color = _EXFIL if exfil else _STROKE.get(kind, "#555555")
        dash = ' stroke-dasharray="5,3"' if kind == "delegates_to" else ""
        tip = f"{kind}: {', '.join(str(r) for r in edge.get('reasons', []))}".rstrip(": ")
        out.append(
            f'<path d="{d}" stroke="{color}" stroke-width="{2.5 if exfil else 1.2}"{dash}>'
            f"<title>{svg_escape(tip)}</title></path>"
        )
    out.append("</g>")
    out.append('<g class="nodes" font-size="11">')
    for node in nodes:
        x, y = position[str(node["id"])]
        kind = str(node.get("kind", ""))
        label = str(node.get("label", ""))
        detail = "; ".join(str(d) for d in node.get("detail", []))
        tip = f"{node['id']}" + (f" ({detail})" if detail else "")
        out.append(
            f'<g class="node {svg_escape(kind)}"><title>{svg_escape(tip)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="6" '
            f'fill="{_FILL.get(kind, "#ffffff")}" stroke="#777777"/>'
            f'<text x="{x + 10:.0f}" y="{y + _BOX_H / 2 + 4:.0f}">'
            f"{svg_escape(kind)}: {svg_escape(_short(label))}</text></g>"
        )
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
