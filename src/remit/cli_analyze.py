"""``remit analyze permissions``: what an agent can really do (issue 7, item 1).

A separate typer sub-app, registered at the end of ``remit.cli``. Server-backed:
needs an operator token with the ``readonly`` scope (or wider).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from remit.cli import (
    DEFAULT_URL,
    JsonOption,
    Output,
    TokenOption,
    UrlOption,
    _client,
    render_table,
)

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
