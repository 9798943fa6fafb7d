"""``remit analyze``: what an agent can really do (issue 7, items 1 and 2).

A separate typer sub-app, registered at the end of ``remit.cli``.
``permissions`` and ``blast-radius`` ask the server (an operator token with the
``readonly`` scope or wider); ``blast-radius --catalog FILE --agents FILE
[--policies DIR]`` runs offline on files, for CI, and ``--fail-on KIND`` exits
``EXIT_FINDINGS`` (11) when a finding of that kind exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from remit.cli import (
    DEFAULT_URL,
    EXIT_FINDINGS,
    JsonOption,
    Output,
    TokenOption,
    UrlOption,
    _client,
    _fail,
    _handled,
    _read_yaml,
    render_table,
)
from remit.core.blast_radius import FINDING_KINDS
from remit.errors import InvalidRequest
from remit.graph_render import to_dot, to_svg

analyze_app = typer.Typer(
    help="Analysis: what agents can really do under the active policies.", no_args_is_help=True
)


@analyze_app.command("permissions")
def analyze_permissions(
    agent: Annotated[str, typer.Argument(help="The agent's name or SPIFFE ID.")],
    task: Annotated[
        str | None,
        typer.Option("--task", help="Only what this task's mandate allows.", show_default=False),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Effective permissions: every catalog tool in the agent's ceiling, evaluated by the
    active Cedar policies per destination class and prior taint."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        report = client.effective_permissions(agent, task_id=task)

    def render(console: Console) -> None:
        rows = [
            (
                escape(str(p.get("tool"))),
                escape(str(p.get("privilege"))),
                escape(str(p.get("destination_class"))),
                escape(str(p.get("taint"))),
                "allow" if p.get("allowed") else "deny",
                escape(", ".join(str(r) for r in p.get("reasons", []))),
            )
            for p in report.get("permissions", [])
        ]
        title = f"effective permissions of {report.get('agent_id')}"
        if report.get("task_id"):
            title += f" in task {report.get('task_id')}"
        title += f" (policy version {report.get('policy_version')})"
        console.print(
            render_table(
                escape(title),
                rows,
                ["tool", "privilege", "destination", "taint", "decision", "reasons"],
            )
        )

    output.data(report, render)


# ---------------------------------------------------------------------- blast radius

FAIL_ON_KINDS = (*FINDING_KINDS, "any")
FORMATS = ("table", "json", "dot", "svg")


@analyze_app.command("blast-radius")
def analyze_blast_radius(
    agent: Annotated[str, typer.Argument(help="The agent's name or SPIFFE ID.")],
    days: Annotated[
        int | None,
        typer.Option(
            "--days",
            help="Usage window for unused grants (server mode; default 30).",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="table, json, dot or svg.")
    ] = "table",
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the document here instead of stdout.", show_default=False
        ),
    ] = None,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-on",
            help=(
                "Exit 11 if a finding of this kind exists: exfil-path, delegation-widening, "
                "act-reach, write-reach, unused-grant or any (repeatable)."
            ),
            show_default=False,
        ),
    ] = None,
    policies: Annotated[
        Path | None,
        typer.Option(
            "--policies",
            help="Local: operator policies (*.cedar) on top of the baseline.",
            show_default=False,
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Local: the tool catalog (YAML).", show_default=False),
    ] = None,
    agents: Annotated[
        Path | None,
        typer.Option(
            "--agents", help="Local: the agents file (YAML, see docs).", show_default=False
        ),
    ] = None,
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="Local: the agents' default trust domain.")
    ] = "remit.local",
    max_depth: Annotated[
        int, typer.Option("--max-depth", help="Local: the longest delegation chain.")
    ] = 3,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Blast radius: the tools, systems, destinations and data labels an agent reaches,
    directly and through delegation, and the paths that matter (exfil paths, act and write
    reach per system, widening delegation edges, unused grants). With --catalog and
    --agents it runs offline on files (for CI); otherwise it asks the server."""
    fmt = "json" if json_output else output_format
    output = Output(fmt == "json")
    with _handled(output):
        if fmt not in FORMATS:
            raise InvalidRequest("--format must be table, json, dot or svg", reason="bad_format")
        wanted = set(fail_on or ())
        if wanted - set(FAIL_ON_KINDS):
            raise InvalidRequest(
                f"--fail-on must be one of {', '.join(FAIL_ON_KINDS)}", reason="bad_fail_on"
            )
        local = catalog is not None or agents is not None or policies is not None
        if local and (catalog is None or agents is None):
            raise InvalidRequest(
                "offline analysis needs both --catalog and --agents", reason="bad_local_input"
            )
        if local and days is not None:
            raise InvalidRequest(
                "--days needs a server (usage comes from its audit log)", reason="bad_local_input"
            )
    if catalog is not None and agents is not None:
        with _handled(output):
            report = _local_report(agent, policies, catalog, agents, trust_domain, max_depth)
    else:
        with _client(url, token, output) as client:
            report = client.blast_radius(agent, days=days)

    if fmt in ("dot", "svg"):
        text = to_dot(report) if fmt == "dot" else to_svg(report)
        _emit(text, output_file, output)
    elif output_file is not None:
        _emit(json.dumps(report, indent=2, sort_keys=True) + "\n", output_file, output)
        if fmt == "table":
            output.data(report, lambda console: _render_blast(console, report))
    else:
        output.data(report, lambda console: _render_blast(console, report))

    counts = report.get("summary", {}).get("findings", {})
    hits = [
        kind for kind in FINDING_KINDS if counts.get(kind) and ("any" in wanted or kind in wanted)
    ]
    if hits:
        found = ", ".join(f"{counts[k]} {k}" for k in hits)
        output.note(f"[bold red]fail[/]: {escape(found)} (--fail-on)")
        raise typer.Exit(EXIT_FINDINGS)


def _local_report(
    agent: str,
    policies: Path | None,
    catalog: Path,
    agents: Path,
    trust_domain: str,
    max_depth: int,
) -> dict[str, Any]:
    from remit.runtime import read_catalog_file, read_policy_dir  # noqa: PLC0415 - lazy
    from remit.visibility import agents_from_data, local_blast_radius  # noqa: PLC0415

    tool_catalog = read_catalog_file(catalog)
    sources = read_policy_dir(policies) if policies is not None else []
    registered = agents_from_data(
        _read_yaml(agents, "agents file"), tool_catalog, trust_domain=trust_domain
    )
    result = local_blast_radius(sources, tool_catalog, registered, agent, max_depth=max_depth)
    return result.to_data()


def _emit(text: str, path: Path | None, output: Output) -> None:
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError:
        raise _fail(output, InvalidRequest(f"cannot write {path}", reason="unwritable")) from None
    output.note(f"written: {escape(str(path))}")


def _render_blast(console: Console, report: dict[str, Any]) -> None:
    summary = report.get("summary", {})
    console.print(
        f"blast radius of {escape(str(report.get('agent_id')))} "
        f"(policy version {escape(str(report.get('policy_version')))})"
    )
    console.print(
        "direct systems: "
        + escape(", ".join(summary.get("direct_systems", [])) or "-")
        + "; with delegation: "
        + escape(", ".join(summary.get("reachable_systems", [])) or "-")
        + f"; chains: {summary.get('chains')}"
        + (" (truncated)" if summary.get("truncated") else "")
    )
    rows = [
        (
            escape(str(f.get("kind"))),
            escape(str(f.get("severity"))),
            escape(str(f.get("steps"))),
            escape(", ".join(str(r) for r in f.get("reasons", []))),
        )
        for f in report.get("findings", [])
    ]
    console.print(
        render_table(f"findings ({len(rows)})", rows, ["kind", "severity", "path", "reasons"])
    )
