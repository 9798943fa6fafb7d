"""The command line (typer + rich). It translates and calls the service; it never decides."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from remit import __version__
from remit.config import load_settings
from remit.core.policy import PolicyEngine
from remit.errors import RemitError

app = typer.Typer(help="Remit: narrow, short-lived authority for AI agents.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
policy_app = typer.Typer(help="Cedar policies.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")

# Exit codes by error code: scripts can tell a refusal from a fault.
EXIT_CODES = {
    "invalid_request": 2,
    "invalid_grant": 2,
    "policy_invalid": 2,
    "not_found": 3,
    "conflict": 4,
    "denied": 5,
    "invalid_token": 6,
    "token_expired": 6,
    "token_revoked": 6,
    "invalid_proof": 6,
    "audit_unavailable": 7,
    "store_unavailable": 7,
}


def _fail(console: Console, exc: RemitError) -> typer.Exit:
    console.print(f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}")
    return typer.Exit(EXIT_CODES.get(exc.code, 1))


@app.command()
def version() -> None:
    """Print Remit's version."""
    print(__version__)


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option(help="Keep the temporary data directory and print its path.")
    ] = False,
) -> None:
    """Run the main scenario on a temporary SQLite database and show every decision."""
    from remit.demo import run_demo

    console = Console()
    with tempfile.TemporaryDirectory(prefix="remit-demo-") as tmp:
        try:
            ok = run_demo(Path(tmp), console)
        except RemitError as exc:
            raise _fail(console, exc) from exc
        if keep:
            kept = Path(tempfile.mkdtemp(prefix="remit-demo-kept-"))
            shutil.copytree(tmp, kept, dirs_exist_ok=True)
            console.print(f"data kept in {kept}")
    if not ok:
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit chain and check every signed checkpoint."""
    from remit.runtime import build_remit

    console = Console()
    try:
        remit = build_remit(load_settings())
    except RemitError as exc:
        raise _fail(console, exc) from exc
    try:
        report = remit.verify_audit()
    finally:
        remit.close()
    style = "green" if report.ok else "bold red"
    console.print(f"[{style}]{report.summary()}[/]")
    for problem in report.problems:
        console.print(f"  - {escape(problem)}")
    if not report.ok:
        raise typer.Exit(8)


@policy_app.command("validate")
def policy_validate(directory: Path) -> None:
    """Validate a directory of Cedar policies against Remit's schema and baseline."""
    from remit.runtime import read_policy_dir

    console = Console()
    try:
        sources = read_policy_dir(directory)
        PolicyEngine().validate(sources)
    except RemitError as exc:
        raise _fail(console, exc) from exc
    console.print(f"[green]valid[/]: {len(sources)} file(s)")


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the Cedar schema that policies are validated against."""
    from remit.core.policy_pack import SCHEMA

    print(SCHEMA)


@policy_app.command("baseline")
def policy_baseline() -> None:
    """Print the baseline policy pack that ships with Remit."""
    from remit.core.policy_pack import BASELINE

    print(BASELINE)


def render_table(title: str, rows: list[tuple[str, ...]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def main() -> None:
    try:
        app()
    except RemitError as exc:  # pragma: no cover - commands catch their own
        Console(stderr=True).print(f"error [{exc.code}] {exc.message}")
        sys.exit(EXIT_CODES.get(exc.code, 1))
