"""``remit inventory report FILE``: the non-human identity sprawl report (issue 7, item 6).

A typer sub-app registered at the end of ``remit.cli``. The inventory is read from the
file each time (nothing is stored); the report names the file's SHA-256 and its time, so
the same file against the same data directory gives the same findings. Local on the data
directory: it needs the registered agents and the sealed secrets' names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from remit.cli import EXIT_TESTS_FAILED, DataDirOption, JsonOption, Output, _local
from remit.cli_report import write_output

inventory_app = typer.Typer(
    help="Non-human identity inventory: credentials outside Remit and their sprawl.",
    no_args_is_help=True,
)


@inventory_app.command("report")
def inventory_report_command(
    file: Annotated[Path, typer.Argument(help="The inventory, CSV or JSON.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="csv or json (default: from the file name).", show_default=False
        ),
    ] = None,
    max_age_days: Annotated[
        int, typer.Option("--max-age-days", help="Not rotated for longer than this: stale.")
    ] = 90,
    output_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the report to this file.", show_default=False),
    ] = None,
    fail_on_findings: Annotated[
        bool,
        typer.Option("--fail-on-findings", help="Exit 1 if anything is found (for CI)."),
    ] = False,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Shared, stale and ownerless credentials, agents using credentials Remit does not
    broker, and users Remit does not know."""
    from remit.reports import inventory_for, read_inventory, render_inventory, report_data  # noqa: PLC0415 - keeps `remit --help` fast

    output = Output(json_output)
    with _local(data_dir, output) as remit:
        items, digest = read_inventory(file, fmt)
        report = inventory_for(remit, items, max_age_days=max_age_days)
        if json_output:
            text = json.dumps(report_data(report, source_digest=digest), indent=2, sort_keys=True)
            text += "\n"
        else:
            text = render_inventory(report, source_digest=digest)
        write_output(text, output_file, output, "inventory report")
    if fail_on_findings and report.finding_count():
        raise typer.Exit(EXIT_TESTS_FAILED)
