"""The demo scenario, in-process and over a real HTTP server on loopback."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from rich.console import Console

import remit.demo
from remit.demo import run_demo


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
    assert "demo finished as expected" in text


def test_demo_in_process(tmp_path: Path) -> None:
    console = _console()
    assert run_demo(tmp_path, console, over_http=False) is True
    text = console.export_text()
    _check_output(text)
    assert "running in-process" in text
    assert "http://" not in text


def test_demo_over_http(tmp_path: Path) -> None:
    console = _console()
    assert run_demo(tmp_path, console) is True
    text = console.export_text()
    _check_output(text)
    assert re.search(r"running over HTTP at http://127\.0\.0\.1:\d+", text)
    assert "rat_" not in text  # the bootstrap token is shown only when serving


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
