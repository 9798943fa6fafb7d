"""The demo scenario, in-process and over a real HTTP server on loopback."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

import remit.demo
from remit.core.pipeline import Obligation
from remit.core.secrets import Secret
from remit.demo import run_demo
from remit.providers.base import Injection
from remit.service import Remit


def _console() -> Console:
    return Console(record=True, width=240, color_system=None, force_terminal=False)


def _flat(text: str) -> str:
    return re.sub(r"[\s│┃|]+", "", text)


def _check_output(text: str) -> None:
    assert "read ticket 4711" in text and "ALLOW" in text
    assert "attacker@evil.example" in text and "DENY" in text
    assert "exfiltration-after-untrusted-read" in _flat(text)
    assert "call after the task ended" in text and "REFUSED" in text
    assert "token_revoked" in text
    assert "audit chain intact" in text
    # Issue 5: a narrower sub-task delegated, a widening refused, a refund that waits for
    # a human, goes through once with the approval, and is refused when replayed.
    flat = _flat(text)
    assert "delegated:researchersearchestrackingALLOW" in flat
    assert "delegatewithcrm/readaddedREFUSEDdenied:widens_tools" in flat
    assert "refund49.99EURtoaliceWAITSapprovalrequiredbyapproval-high-risk-act" in flat
    assert "refund,withtheapprovalALLOW" in flat
    assert "thesamerefundagainDENYdeniedbyapproval_consumed" in flat
    # Issue 6: credentials the agent never sees. The ledger call carries an obligation that
    # becomes a per-call signed token (only its verified claims are printed); it serves one
    # call; the refund's sealed key is leased to the task and revoked when the task ends.
    assert "lookuporder99812intheledgerALLOWallowedbypermit-within-mandate" in flat
    assert re.search(r"carriesonlyanobligation:inject_headerlse_[\w-]+", flat)
    assert "Authorization:Bearer<signedtoken,notshown>" in flat
    assert "audhttps://ledger.acme.internal,expires60safterissue,tasktsk_" in flat
    assert "thesameledgertokenagainREFUSEDtoken_revoked" in flat
    assert "X-Api-Keyfromsealedpayments.api-key(notshown)" in flat
    assert re.search(r"\[leases\]lse_[\w-]+billing/ledgerledgerrevoked\(per-call", flat)
    assert re.search(r"\[leases\]lse_[\w-]+billing/refundpayments\.api-keyrevoked\(taskended", flat)
    # Issue 7: a never-seen destination raises an alert and an operator policy holds the call.
    assert "anomalywarm-upforthisdemodatadir:4allowedcalls" in flat
    assert re.search(r"\[alert\] score \d+ on email/send \([a-z_, ]*new_destination", text)
    assert "never-seendestinationemail:books@ledgerly.example" in flat
    assert (
        "confirmationtobooks@ledgerly.exampleWAITSapprovalrequiredby"
        "anomalous-calls-need-approval" in flat
    )
    # ... and the visibility summary: blast-radius findings and a replayed candidate.
    assert re.search(r"\[blast radius\] support-assistant reaches .*; [1-9]\d* findings", text)
    assert "act-reach: support-assistant can act in email" in text
    assert re.search(
        r"\[replay\] \(local, on the demo's data dir\) candidate replies-need-approval would "
        r"change [1-9]",
        text,
    )
    assert "allow->approval_required" in text
    assert "demo finished as expected" in text


@pytest.fixture
def handed_out(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every secret value the demo makes: the sealed payments key and each injected value
    (the signed ledger tokens included), so a test can check none is ever printed."""
    values: list[str] = []
    make_key = remit.demo.new_payments_key
    credential_for = Remit.credential_for

    def recording_key() -> Secret:
        key = make_key()
        values.append(key.reveal())
        return key

    def recording_credential_for(self: Remit, obligation: Obligation) -> Injection:
        injection = credential_for(self, obligation)
        for header in injection.headers.values():
            values.append(header.reveal().rpartition(" ")[2])  # without "Bearer "
        return injection

    monkeypatch.setattr(remit.demo, "new_payments_key", recording_key)
    monkeypatch.setattr(Remit, "credential_for", recording_credential_for)
    yield values


def _check_no_secret(values: list[str], *outputs: str) -> None:
    tokens = [v for v in values if v.count(".") == 2]
    assert len(tokens) == 1 and len(values) == 3  # the key, once sealed and once injected
    assert values.count(values[0]) == 2 and values[0].startswith("pk_demo_")
    for value in values:
        pieces = [value, *(p for p in value.split(".") if len(p) > 16)]
        for output in outputs:
            for piece in pieces:
                assert piece not in output


def test_demo_in_process(
    tmp_path: Path,
    handed_out: list[str],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    console = _console()
    assert run_demo(tmp_path, console, over_http=False) is True
    text = console.export_text()
    _check_output(text)
    assert "running in-process" in text
    assert "http://" not in text
    captured = capfd.readouterr()
    _check_no_secret(handed_out, text, captured.out, captured.err, caplog.text)


def test_demo_over_http(
    tmp_path: Path,
    handed_out: list[str],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    console = _console()
    assert run_demo(tmp_path, console) is True
    text = console.export_text()
    _check_output(text)
    assert re.search(r"running over HTTP at http://127\.0\.0\.1:\d+", text)
    assert "rat_" not in text  # the bootstrap token is shown only when serving
    captured = capfd.readouterr()
    _check_no_secret(handed_out, text, captured.out, captured.err, caplog.text)


def test_demo_serve_prints_how_to_reach_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = _console()
    seen: dict[str, object] = {}

    def instead_of_waiting() -> None:
        text = console.export_text(clear=False)
        url = re.search(r"Remit is serving at (http://127\.0\.0\.1:\d+)", text)
        token = re.search(r"\b(rat_[A-Za-z0-9_-]+)", text)
        assert url and token
        base = url.group(1)
        seen["jwks"] = httpx.get(f"{base}/.well-known/jwks.json").json()
        agents = httpx.get(
            f"{base}/v1/agents", headers={"Authorization": f"Bearer {token.group(1)}"}
        )
        seen["agents"] = agents.json()
        seen["anonymous"] = httpx.get(f"{base}/v1/agents").status_code

    monkeypatch.setattr(remit.demo, "_wait_until_interrupted", instead_of_waiting)
    assert run_demo(tmp_path, console, serve=True) is True
    text = console.export_text()
    _check_output(text)
    assert "curl" in text and "/.well-known/jwks.json" in text and "/v1/agents" in text
    assert "shown once" in text
    jwks = seen["jwks"]
    assert isinstance(jwks, dict) and jwks["keys"]
    agents = seen["agents"]
    assert isinstance(agents, dict)
    assert [a["name"] for a in agents["agents"]] == ["order-researcher", "support-assistant"]
    assert seen["anonymous"] == 401
