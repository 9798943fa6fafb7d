"""``remit approvals list|show|approve|deny``: the approver's side of issue 5.

A separate typer sub-app, registered at the end of ``remit.cli``. Approvers use
an operator token with the ``approver`` (or ``admin``) scope; the token's name
is the approver's identity, and the task's own principal cannot approve.
"""

from __future__ import annotations

from typing import Annotated, Any

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
    _fields,
    _text,
    _ts,
    render_table,
)

approvals_app = typer.Typer(
    help="Human approvals of one exact call (approver scope).", no_args_is_help=True
)
_TIMES = ("created_at", "expires_at", "decided_at", "consumed_at")
ReasonOption = Annotated[str, typer.Option(help="Why; recorded in the audit log.")]


@approvals_app.command("list")
def approvals_list(
    status: Annotated[
        str | None,
        typer.Option(help="pending, approved, denied or consumed.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """List approval requests, newest first."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        found = client.list_approvals(status=status, limit=limit)

    output.table(
        {"approvals": found},
        "approvals",
        found,
        [
            ("id", lambda a: escape(str(a.get("approval_id")))),
            ("status", lambda a: escape(str(a.get("status")))),
            ("tool", lambda a: escape(str(a.get("tool")))),
            ("task", lambda a: escape(str(a.get("task_id")))),
            (
                "approvals",
                lambda a: (
                    f"{len([v for v in a.get('votes', []) if v.get('approve')])}/{a.get('quorum')}"
                ),
            ),
            ("expires", lambda a: _ts(a.get("expires_at"))),
        ],
    )


def _show(approval: dict[str, Any], console: Console) -> None:
    data = dict(approval)
    arguments = data.pop("arguments", {})
    votes = data.pop("votes", [])
    console.print(_fields(f"approval {data.get('approval_id')}", data, _TIMES))
    # The exact call, from server data: every argument, escaped (never rendered as markup).
    console.print(
        render_table(
            "arguments",
            [(escape(str(k)), escape(_text(v))) for k, v in dict(arguments).items()],
            ["argument", "value"],
        )
    )
    if votes:
        rows = [
            (escape(str(v["approver"])), "approve" if v["approve"] else "deny", escape(v["reason"]))
            for v in votes
        ]
        console.print(render_table("votes", rows, ["approver", "vote", "reason"]))


@approvals_app.command("show")
def approvals_show(
    approval_id: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one request: the exact call (tool and every argument), the reasons, the votes."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        approval = client.get_approval(approval_id)
    output.data(approval, lambda console: _show(approval, console))


@approvals_app.command("approve")
def approvals_approve(
    approval_id: str,
    reason: ReasonOption = "",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Consent to the one exact call (approved once the quorum of approvers is met)."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        approval = client.approve(approval_id, reason=reason)
    output.done(approval, f"approval {escape(approval_id)}: {escape(str(approval['status']))}")


@approvals_app.command("deny")
def approvals_deny(
    approval_id: str,
    reason: ReasonOption = "",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Refuse the call; one denial ends the request."""
    output = Output(json_output)
    with _client(url, token, output) as client:
        approval = client.deny(approval_id, reason=reason)
    output.done(approval, f"approval {escape(approval_id)}: {escape(str(approval['status']))}")
