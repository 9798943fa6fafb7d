"""``remit alerts list``: anomaly alerts (issue 7, item 3; docs/alerts.md).

A separate typer sub-app, registered at the end of ``remit.cli``. Server-backed:
needs an operator token with the ``readonly`` scope (or wider).
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape

from remit.cli import (
    DEFAULT_URL,
    JsonOption,
    Output,
    TokenOption,
    UrlOption,
    _client,
    _ts,
)
from remit.clock import parse_time

alerts_app = typer.Typer(help="Anomaly alerts from behaviour baselines.", no_args_is_help=True)


@alerts_app.command("list")
def alerts_list(
    since: Annotated[str, typer.Option("--since", help="How far back: 90s, 30m, 24h, 7d.")] = "24h",
    agent: Annotated[
        str | None,
        typer.Option("--agent", help="One agent (name or SPIFFE ID).", show_default=False),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="new_tool, new_destination, rate_spike, denial_burst, approval_flood, "
            "unusual_sequence, off_hours.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 100,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Anomaly alerts, newest first: what was unusual, the score, and what Remit did."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        alerts = client.list_alerts(
            since=parse_time(since, time.time()), agent=agent, kind=kind, limit=limit
        )

    output.table(
        {"alerts": alerts},
        f"alerts ({len(alerts)})",
        alerts,
        [
            ("at", lambda a: _ts(a.get("at"))),
            ("agent", lambda a: escape(str(a.get("agent", "")).rsplit("/", 1)[-1])),
            ("tool", lambda a: escape(str(a.get("tool")))),
            ("score", lambda a: str(a.get("score"))),
            ("kinds", lambda a: escape(", ".join(str(k) for k in a.get("kinds", [])))),
            (
                "response",
                lambda a: escape(
                    str(a.get("response")) + ("" if a.get("enforced") else " (not enforced)")
                ),
            ),
            ("explanation", lambda a: escape(str(a.get("explanation")))),
        ],
    )
