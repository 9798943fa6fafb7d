"""``remit inventory import|report``: the non-human identity inventory (issue 7, item 6).

A typer sub-app registered at the end of ``remit.cli``.

* ``import FILE``: parse a CSV or JSON inventory and store it, replacing the previous
  import whole (``Remit.import_inventory``; audited ``inventory.imported``). Without
  ``--url`` on the local data directory; with ``--url`` through ``PUT /v1/inventory``
  (a CSV file is converted to the JSON form here; the file's SHA-256 goes with it).
* ``report [FILE]``: the sprawl report. With FILE, the file is read now (nothing is
  stored; local on the data directory: it needs the registered agents and the sealed
  secrets' names). Without FILE, the stored inventory: locally, or with ``--url`` from
  ``GET /v1/inventory/report``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from remit.cli import (
    EXIT_TESTS_FAILED,
    DataDirOption,
    JsonOption,
    LocalUrlOption,
    Output,
    TokenOption,
    _client,
    _handled,
    _local,
)
from remit.cli_report import write_output
from remit.errors import InvalidRequest, NotFound

inventory_app = typer.Typer(
    help="Non-human identity inventory: credentials outside Remit and their sprawl.",
    no_args_is_help=True,
)

FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="csv or json (default: from the file name).", show_default=False
    ),
]


@inventory_app.command("import")
def inventory_import_command(
    file: Annotated[Path, typer.Argument(help="The inventory, CSV or JSON.")],
    fmt: FormatOption = None,
    url: LocalUrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Store an inventory, replacing the one imported before. The whole file is checked
    first: one bad row and nothing is stored."""
    from remit.reports import inventory_document, read_inventory  # noqa: PLC0415 - keeps `remit --help` fast

    output = Output(json_output)
    with _handled(output):
        items, digest = read_inventory(file, fmt)
    data: dict[str, Any]
    if url is None:
        with _local(data_dir, output) as remit:
            data = remit.import_inventory(items, digest, by="local").to_data()
    else:
        with _client(url, token, output) as client:
            data = client.import_inventory(
                inventory_document(items)["credentials"], source_sha256=digest
            )
    text = (
        f"imported {data['credentials']} credentials as {data['import_id']} "
        f"(sha256 {data['source_sha256']}); the previous inventory is replaced"
    )
    output.data(data, lambda console: console.print(text, markup=False))


@inventory_app.command("report")
def inventory_report_command(
    file: Annotated[
        Path | None,
        typer.Argument(help="An inventory file (CSV or JSON); default: the stored one."),
    ] = None,
    fmt: FormatOption = None,
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
    url: LocalUrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Shared, stale and ownerless credentials, agents using credentials Remit does not
    broker, and users Remit does not know."""
    from remit.reports import (  # noqa: PLC0415 - keeps `remit --help` fast
        inventory_for,
        read_inventory,
        render_inventory_data,
        report_data,
        stored_inventory_report,
    )

    output = Output(json_output)
    with _handled(output):
        if file is not None and url is not None:
            raise InvalidRequest(
                "a report from a file is made locally; import the file to report on the server",
                reason="bad_option",
            )
        if not 1 <= max_age_days <= 36_500:
            raise InvalidRequest("max age must be from 1 to 36500 days", reason="bad_inventory")
    data: dict[str, Any]
    if url is not None:
        with _client(url, token, output) as client:
            data = client.inventory_report(max_age_days=max_age_days)
    else:
        with _local(data_dir, output) as remit:
            if file is not None:
                items, digest = read_inventory(file, fmt)
                report = inventory_for(remit, items, max_age_days=max_age_days)
                data = report_data(report, source_digest=digest)
            else:
                stored = stored_inventory_report(remit, max_age_days=max_age_days)
                if stored is None:
                    raise NotFound(
                        "no inventory was imported; run `remit inventory import FILE`",
                        reason="no_inventory",
                    )
                data = report_data(stored[0], stored=stored[1])
    with _handled(output):
        if json_output:
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        else:
            text = render_inventory_data(data)
        write_output(text, output_file, output, "inventory report")
    if fail_on_findings and data["findings"]:
        raise typer.Exit(EXIT_TESTS_FAILED)
