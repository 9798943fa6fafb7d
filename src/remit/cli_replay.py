"""``remit policy replay``: re-decide recorded calls under a candidate policy set.

Registered on the ``policy`` sub-app at the end of ``remit.cli``. Local: works on the
data directory (``--data-dir`` / ``REMIT_DATA_DIR``) and only reads it; see
``remit.replay`` and ``docs/replay.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from remit.cli import (
    EXIT_CHANGES,
    DataDirOption,
    JsonOption,
    Output,
    _handled,
    _local,
    _text,
    _ts,
    render_table,
)
from remit.core.replay import MAX_EXAMPLES

if TYPE_CHECKING:
    from remit.replay import ReplayProgress


@contextmanager
def _progress_bar(output: Output) -> Iterator[Any]:
    """A progress callback drawing a bar on stderr; silent with --json or no TTY."""
    enabled = not output.json and sys.stdout.isatty() and output.err.is_terminal
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("replaying decisions"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[records]} records"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output.err,
        transient=True,
    ) as bar:
        task_id = bar.add_task("replay", total=None, records=0)

        def update(step: ReplayProgress) -> None:
            bar.update(task_id, total=step.total, completed=step.position, records=step.records)

        yield update


def policy_replay(
    candidate: Annotated[
        Path,
        typer.Option(
            "--candidate",
            help="The candidate operator policies (*.cedar), on top of the baseline.",
            show_default=False,
        ),
    ],
    since: Annotated[
        str,
        typer.Option(
            "--since", help="Start of the period: 7d, 24h, 30m, or an ISO time.", show_default=False
        ),
    ],
    until: Annotated[
        str | None,
        typer.Option("--until", help="End of the period (default: now).", show_default=False),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent", help="Only this agent's calls (name or SPIFFE ID).", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", help="Read at most this many decision records.", show_default=False
        ),
    ] = None,
    examples: Annotated[
        int,
        typer.Option("--examples", help=f"Examples per group (0 to {MAX_EXAMPLES})."),
    ] = 3,
    fail_on_change: Annotated[
        bool,
        typer.Option(
            "--fail-on-change",
            help=f"Exit {EXIT_CHANGES} when any decision would change (for CI).",
        ),
    ] = False,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Re-decide every recorded call of a period under a candidate policy set and report
    the decisions that would change, by policy and by agent, with examples (local, read-only)."""
    output = Output(json_output)
    # Imported here, as in remit.cli: the command line starts fast.
    from remit.replay import replay_policies  # noqa: PLC0415
    from remit.runtime import read_policy_dir  # noqa: PLC0415

    with _handled(output):
        sources = read_policy_dir(candidate)
    with _local(data_dir, output) as remit, _progress_bar(output) as progress:
        report = replay_policies(
            remit,
            sources,
            since=since,
            until=until,
            agent=agent,
            limit=limit,
            examples=examples,
            progress=progress,
        )
    output.data(report, lambda console: _render(console, report))
    if fail_on_change and report["changed"]:
        raise typer.Exit(EXIT_CHANGES)


def _example_rows(group: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            _ts(e["time"]),
            _text(e["decision_id"]),
            _text(e["agent"]),
            _text(e["tool"]),
            _text(e["destinations"]),
            f"{e['from']} → {e['to']}" + (" (shadow)" if e["mode"] == "shadow" else ""),
            _text(e["reasons_before"]),
            _text(e["reasons_after"]),
        )
        for e in group["examples"]
    ]


_EXAMPLE_COLUMNS = (
    "time",
    "decision",
    "agent",
    "tool",
    "destinations",
    "change",
    "reasons before",
    "reasons after",
)


def _render(console: Console, report: dict[str, Any]) -> None:
    skipped = report["skipped"]
    console.print(
        f"candidate {escape(report['candidate_version'])} "
        f"(active {escape(report['active_version'])}): "
        f"{report['replayed']} decision(s) replayed, {skipped['total']} skipped, "
        f"[{'bold red' if report['changed'] else 'green'}]{report['changed']} would change[/]"
    )
    if skipped["total"]:
        why = ", ".join(f"{k}: {v}" for k, v in skipped["by_reason"].items())
        console.print(f"skipped (not re-decidable): {escape(why)}")
    if report["reasons_changed"]:
        console.print(
            f"{report['reasons_changed']} decision(s) keep their outcome with other reasons"
        )
    if report["evaluation_errors"]:
        console.print(
            f"[yellow]{report['evaluation_errors']} candidate evaluation(s) reported "
            "Cedar errors (policy-error denies)[/]"
        )
    if report["truncated"]:
        console.print(f"[yellow]stopped after --limit {report['window']['limit']} records[/]")
    if not report["changed"]:
        return
    console.print(
        render_table(
            "changes by kind",
            [(escape(k), str(v)) for k, v in report["by_change"].items()],
            ["change", "decisions"],
        )
    )
    for key, title in (("by_policy", "policy"), ("by_agent", "agent")):
        rows = [
            (
                escape(str(g[title])),
                str(g["changed"]),
                escape(", ".join(f"{k}: {v}" for k, v in g["by_change"].items())),
            )
            for g in report[key]
        ]
        console.print(render_table(f"changes by {title}", rows, [title, "changed", "kinds"]))
    for group in report["by_policy"]:
        if group["examples"]:
            console.print(
                render_table(
                    f"examples: {escape(str(group['policy']))}",
                    _example_rows(group),
                    _EXAMPLE_COLUMNS,
                )
            )
