"""``remit report compliance``: the standards report (issue 7, item 5).

A typer sub-app registered at the end of ``remit.cli``. Local, like the other offline
commands: it opens the data directory (``--data-dir`` or ``REMIT_DATA_DIR``) read-only
in intent (no audit record is written) and prints or writes the report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from remit.cli import DataDirOption, JsonOption, Output, _handled, _local
from remit.core.compliance import Thresholds
from remit.errors import InvalidRequest

report_app = typer.Typer(
    help="Reports: Remit's controls against public standards, with live evidence.",
    no_args_is_help=True,
)

InventoryOption = Annotated[
    Path | None,
    typer.Option(
        "--inventory",
        help="An NHI inventory (CSV or JSON) whose findings feed the NHI items "
        "(default: the stored one, if an inventory was imported).",
        show_default=False,
    ),
]


def write_output(text: str, output_file: Path | None, output: Output, what: str) -> None:
    """Write ``text`` to ``output_file`` (and say so on stderr), or to stdout."""
    if output_file is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        output_file.write_text(text, encoding="utf-8")
    except OSError:
        raise InvalidRequest(f"cannot write {output_file.name}", reason="bad_output") from None
    output.note(f"{what} written to {output_file}")


@report_app.command("compliance")
def report_compliance(
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="md, json or html.", show_default=True)
    ] = "md",
    days: Annotated[
        int, typer.Option("--days", help="The window for tasks, decisions and grant use.")
    ] = 30,
    output_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the report to this file.", show_default=False),
    ] = None,
    inventory: InventoryOption = None,
    inventory_format: Annotated[
        str | None,
        typer.Option(
            "--inventory-format",
            help="csv or json (default: from the file name).",
            show_default=False,
        ),
    ] = None,
    max_age_days: Annotated[
        int,
        typer.Option("--max-age-days", help="Secrets and credentials older than this are stale."),
    ] = 90,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Map Remit's controls to OWASP ASI (2026), OWASP NHI (2025), NIST AI RMF and CSA
    MAESTRO, with evidence from the live configuration and audit log."""
    from remit.reports import FORMATS, compliance, inventory_for, read_inventory, render  # noqa: PLC0415 - keeps `remit --help` fast

    chosen = "json" if json_output else fmt
    output = Output(json_output)
    with _handled(output):
        if chosen not in FORMATS:
            raise InvalidRequest("format must be md, json or html", reason="bad_format")
        if not 1 <= max_age_days <= 36_500:
            raise InvalidRequest("max age must be from 1 to 36500 days", reason="bad_window")
    with _local(data_dir, output) as remit:
        inv = None
        if inventory is not None:
            items, _ = read_inventory(inventory, inventory_format)
            inv = inventory_for(remit, items, max_age_days=max_age_days)
        report = compliance(
            remit,
            days=days,
            thresholds=Thresholds(max_secret_age_days=max_age_days),
            inventory=inv,
        )
        text = render(report, chosen)
        write_output(text, output_file, output, "compliance report")
