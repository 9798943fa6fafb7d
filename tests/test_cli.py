from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from remit.cli import app
from remit.config import load_settings
from remit.errors import InvalidRequest

runner = CliRunner()


def test_demo_runs_the_main_scenario() -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "read ticket 4711" in out and "ALLOW" in out
    assert "attacker@evil.example" in out and "DENY" in out
    assert "exfiltration-after-untrusted-read" in out.replace("\n", "").replace(" ", "").replace(
        "│", ""
    )
    assert "token_revoked" in out
    assert "audit chain intact" in out
    assert "demo finished as expected" in out


def test_policy_validate(tmp_path: Path) -> None:
    (tmp_path / "ok.cedar").write_text(
        '@id("no-crm") forbid (principal, action, resource == Tool::"crm/read");'
    )
    result = runner.invoke(app, ["policy", "validate", str(tmp_path)])
    assert result.exit_code == 0 and "valid" in result.output
    (tmp_path / "bad.cedar").write_text(
        '@id("bad") forbid (principal, action, resource) when { context.nope };'
    )
    result = runner.invoke(app, ["policy", "validate", str(tmp_path)])
    assert result.exit_code == 2 and "policy_invalid" in result.output


def test_policy_schema_and_baseline() -> None:
    assert "entity Agent" in runner.invoke(app, ["policy", "schema"]).output
    assert "exfiltration-after-untrusted-read" in runner.invoke(app, ["policy", "baseline"]).output


def test_audit_verify_on_a_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMIT_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0 and "intact" in result.output


def test_settings_from_environment(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "REMIT_DATA_DIR": str(tmp_path),
            "REMIT_TRUST_DOMAIN": "x.example",
            "REMIT_AUDIT_DURABLE": "false",
            "REMIT_MAX_TASK_TTL_SECONDS": "60",
        }
    )
    assert settings.data_dir == tmp_path and settings.trust_domain == "x.example"
    assert settings.audit_durable is False and settings.max_task_ttl_seconds == 60
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'remit.db'}"
    with pytest.raises(InvalidRequest):
        load_settings({"REMIT_MAX_TASK_TTL_SECONDS": "soon"})
