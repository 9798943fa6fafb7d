from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from remit.cli import EXIT_CODES, app
from remit.config import load_settings
from remit.errors import InvalidRequest
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit

from .conftest import CATALOG, CEILING, PRINCIPAL, make_settings

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


def as_json(result: Result) -> Any:
    """--json prints exactly one JSON document on stdout."""
    return json.loads(result.stdout)


# ---------------------------------------------------------------------- local commands


@pytest.mark.parametrize("transport", [[], ["--in-process"]], ids=["http", "in-process"])
def test_demo_runs_the_main_scenario(transport: list[str]) -> None:
    result = invoke("demo", *transport)
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
    result = invoke("policy", "validate", str(tmp_path))
    assert result.exit_code == 0 and "valid" in result.output
    assert as_json(invoke("policy", "validate", str(tmp_path), "--json")) == {
        "valid": True,
        "files": ["ok.cedar"],
    }
    (tmp_path / "bad.cedar").write_text(
        '@id("bad") forbid (principal, action, resource) when { context.nope };'
    )
    result = invoke("policy", "validate", str(tmp_path))
    assert result.exit_code == 2 and "policy_invalid" in result.stderr
    assert result.stdout == ""
    result = invoke("policy", "validate", str(tmp_path), "--json")
    assert result.exit_code == 2 and as_json(result)["error"]["code"] == "policy_invalid"


def test_policy_schema_and_baseline() -> None:
    assert "entity Agent" in invoke("policy", "schema").output
    assert "exfiltration-after-untrusted-read" in invoke("policy", "baseline").output


CASES = """
cases:
  - name: clean read
    tool: docs/read
    expect: allow
    reasons: [permit-within-mandate]
  - name: planted instruction
    tool: email/send
    context:
      taint_flags: [untrusted]
      destinations_by_pattern: ["email:b@partner.example"]
    expect: deny
    reasons: [exfiltration-after-untrusted-read]
  - name: operator rule
    tool: crm/read
    expect: deny
    reasons: [no-crm-reads]
"""


@pytest.fixture
def policy_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "ops.cedar").write_text(
        '@id("no-crm-reads") forbid (principal, action, resource in ToolGroup::"crm");'
    )
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES)
    return policies, catalog, cases


def test_policy_test_passes(policy_files: tuple[Path, Path, Path]) -> None:
    policies, catalog, cases = policy_files
    args = ["policy", "test", str(cases), "--policies", str(policies), "--catalog", str(catalog)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "3 passed, 0 failed" in result.output
    report = as_json(invoke(*args, "--json"))
    assert report["passed"] == 3 and report["failed"] == 0
    assert [c["actual"] for c in report["cases"]] == ["allow", "deny", "deny"]


def test_policy_test_fails_with_a_reason_diff(policy_files: tuple[Path, Path, Path]) -> None:
    policies, catalog, cases = policy_files
    cases.write_text(
        CASES.replace("expect: allow", "expect: deny").replace(
            "[exfiltration-after-untrusted-read]", "[mandate-destination-scope]"
        )
    )
    args = ["policy", "test", str(cases), "--policies", str(policies), "--catalog", str(catalog)]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "1 passed, 2 failed" in result.output
    assert "FAIL clean read: expected deny, got allow" in result.output
    assert "FAIL planted instruction: deny as expected, but other policies decided" in result.output
    assert "missing reasons:    mandate-destination-scope" in result.output
    assert "unexpected reasons: exfiltration-after-untrusted-read" in result.output
    result = invoke(*args, "--json")
    assert result.exit_code == 1
    report = as_json(result)
    clean, planted, _ = report["cases"]
    assert not clean["passed"] and clean["expect"] == "deny" and clean["actual"] == "allow"
    assert planted["missing"] == ["mandate-destination-scope"]
    assert planted["unexpected"] == ["exfiltration-after-untrusted-read"]


def test_policy_test_without_operator_policies(policy_files: tuple[Path, Path, Path]) -> None:
    _, catalog, cases = policy_files
    result = invoke("policy", "test", str(cases), "--catalog", str(catalog), "--json")
    assert result.exit_code == 1
    assert as_json(result)["cases"][2]["unexpected"] == ["permit-within-mandate"]


def test_policy_test_bad_inputs_exit_2(policy_files: tuple[Path, Path, Path]) -> None:
    policies, catalog, cases = policy_files
    for text in ("cases: [", "cases: []", "cases:\n  - tool: docs/read\n    expect: maybe\n"):
        cases.write_text(text)
        result = invoke("policy", "test", str(cases), "--catalog", str(catalog))
        assert result.exit_code == 2, (text, result.output)
        assert "invalid_request" in result.stderr
    cases.write_text(CASES)
    (policies / "broken.cedar").write_text("this is not cedar")
    result = invoke("policy", "test", str(cases), "--policies", str(policies))
    assert result.exit_code == 2 and "policy_invalid" in result.stderr
    result = invoke("policy", "test", str(policies / "missing.yaml"))
    assert result.exit_code == 2


def test_policy_explain_locally(policy_files: tuple[Path, Path, Path]) -> None:
    policies, catalog, _ = policy_files
    result = invoke(
        "policy",
        "explain",
        "crm/read",
        "--policies",
        str(policies),
        "--catalog",
        str(catalog),
        "--json",
    )
    assert result.exit_code == 0, result.output
    explained = as_json(result)
    assert explained["allowed"] is False and explained["reasons"] == ["no-crm-reads"]
    assert explained["explanation"] == "denied by no-crm-reads"
    result = invoke(
        "policy",
        "explain",
        "email/send",
        "--catalog",
        str(catalog),
        "--context",
        '{"taint_flags": ["untrusted"], "destinations_by_pattern": ["email:x@y.example"]}',
    )
    assert result.exit_code == 0 and "exfiltration-after-untrusted-read" in result.output
    result = invoke("policy", "explain", "docs/read", "--catalog", str(catalog), "--context", "{")
    assert result.exit_code == 2


def test_catalog_validate_locally(tmp_path: Path) -> None:
    good = tmp_path / "catalog.yaml"
    good.write_text(CATALOG)
    result = invoke("catalog", "validate", str(good), "--json")
    assert result.exit_code == 0 and as_json(result)["valid"] is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("tools:\n  - name: x\n    privilege: fly\n")
    result = invoke("catalog", "validate", str(bad), "--json")
    assert result.exit_code == 2 and as_json(result)["valid"] is False


def test_audit_verify_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMIT_DATA_DIR", str(tmp_path))
    result = invoke("audit", "verify", "--local")
    assert result.exit_code == 0 and "intact" in result.output
    report = as_json(invoke("audit", "verify", "--local", "--data-dir", str(tmp_path), "--json"))
    assert report["ok"] is True and report["problems"] == []


def test_admin_token_bootstrap_on_the_local_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REMIT_URL", raising=False)
    data = str(tmp_path / "data")
    result = invoke("admin-token", "create", "first", "--scope", "admin", "--data-dir", data)
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("rat_") and "shown once" in result.stderr
    created = as_json(
        invoke("admin-token", "create", "ci", "-s", "auditor", "--data-dir", data, "--json")
    )
    assert created["token"].startswith("rat_") and created["scopes"] == ["auditor"]
    listed = as_json(invoke("admin-token", "list", "--data-dir", data, "--json"))["tokens"]
    assert {t["name"] for t in listed} == {"first", "ci"}
    assert secret not in json.dumps(listed) and "token_hash" not in json.dumps(listed)
    result = invoke("admin-token", "revoke", created["token_id"], "--data-dir", data)
    assert result.exit_code == 0
    result = invoke("admin-token", "revoke", created["token_id"], "--data-dir", data)
    assert result.exit_code == EXIT_CODES["not_found"] == 3
    result = invoke("admin-token", "create", "x", "--scope", "root", "--data-dir", data)
    assert result.exit_code == 2
    remit = build_remit(make_settings(tmp_path))
    try:
        assert remit.authenticate_admin(secret).has("admin")
    finally:
        remit.close()


def test_an_unreachable_server_exits_7() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        result = invoke("agent", "list", "--url", f"http://127.0.0.1:{port}", "--token", "rat_x")
    assert result.exit_code == 7, result.output
    assert "cannot reach Remit" in result.stderr and "rat_x" not in result.output


def test_serve_hands_the_settings_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import remit.http.server

    calls: list[tuple[Any, str, int]] = []
    monkeypatch.setattr(
        remit.http.server,
        "serve",
        lambda settings, *, host, port: calls.append((settings, host, port)),
    )
    result = invoke("serve", "--port", "9999", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    ((settings, host, port),) = calls
    assert settings.data_dir == tmp_path and host == "127.0.0.1" and port == 9999


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


# ---------------------------------------------------------------------- against a server


@dataclass
class Server:
    remit: Remit
    url: str
    admin: str
    readonly: str

    def run(self, *args: str, token: str | None = None) -> Result:
        env = {"REMIT_URL": self.url, "REMIT_ADMIN_TOKEN": token or self.admin}
        return runner.invoke(app, list(args), env=env)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    from remit.http.server import running_server

    remit = build_remit(make_settings(tmp_path), catalog=catalog_from_yaml(CATALOG))
    try:
        _, admin = remit.create_admin_token("cli", scopes=["admin"])
        _, readonly = remit.create_admin_token("viewer", scopes=["readonly"])
        with running_server(remit) as url:
            yield Server(remit, url, admin.reveal(), readonly.reveal())
    finally:
        remit.close()


def register(server: Server, name: str = "support") -> Result:
    return server.run(
        "agent",
        "register",
        name,
        "--owner",
        "sam@acme.example",
        "-t",
        "docs/read",
        "-t",
        "email/send",
        "-p",
        "read",
        "-p",
        "act",
        "-d",
        "email:*",
        "--json",
    )


def test_agents_over_http(server: Server, tmp_path: Path) -> None:
    result = register(server)
    assert result.exit_code == 0, result.output
    agent = as_json(result)
    assert agent["agent_id"] == "spiffe://acme.example/agent/support"
    assert agent["ceiling"]["tools"] == ["docs/read", "email/send"]
    ceiling = tmp_path / "ceiling.yaml"
    ceiling.write_text(json.dumps(CEILING))
    result = server.run("agent", "register", "wide", "--owner", "ops", "--ceiling", str(ceiling))
    assert result.exit_code == 0 and "wide" in result.output
    listed = as_json(server.run("agent", "list", "--json"))["agents"]
    assert sorted(a["name"] for a in listed) == ["support", "wide"]
    assert "support" in server.run("agent", "list").output
    shown = as_json(server.run("agent", "show", "support", "--json"))
    assert shown == agent
    assert "ceiling" in server.run("agent", "show", "support").output
    suspended = as_json(server.run("agent", "suspend", "support", "--reason", "x", "--json"))
    assert suspended["status"] == "suspended"
    assert "active" in server.run("agent", "resume", "support").output
    assert as_json(server.run("agent", "mode", "support", "shadow", "--json"))["mode"] == "shadow"
    assert as_json(server.run("agent", "retire", "wide", "--json"))["status"] == "retired"
    # A retired agent cannot change again: conflict.
    assert server.run("agent", "resume", "wide").exit_code == EXIT_CODES["conflict"]
    # Duplicate registration: conflict too.
    assert register(server).exit_code == EXIT_CODES["conflict"]


def test_exit_codes_follow_error_codes(server: Server) -> None:
    result = server.run("agent", "show", "nobody")
    assert result.exit_code == EXIT_CODES["not_found"] == 3
    assert "not_found" in result.stderr
    result = server.run("agent", "show", "nobody", "--json")
    assert as_json(result)["error"]["code"] == "not_found"
    result = server.run("agent", "list", token="rat_" + "x" * 43)
    assert result.exit_code == EXIT_CODES["invalid_token"] == 6
    assert "rat_xxx" not in result.output
    result = register(server, "viewer-made")
    assert result.exit_code == 0
    result = server.run("agent", "suspend", "viewer-made", token=server.readonly)
    assert result.exit_code == EXIT_CODES["forbidden"] == 9, result.output
    assert "forbidden" in result.stderr
    assert server.run("agent", "list", token=server.readonly).exit_code == 0
    result = server.run("agent", "register", "Bad Name", "--owner", "x", "-t", "docs/read")
    assert result.exit_code == EXIT_CODES["invalid_request"] == 2


def test_principals_join_tokens_and_tasks_over_http(server: Server) -> None:
    from remit.agent import AgentSession
    from remit.client import RemitClient

    result = server.run(
        "principal", "add", PRINCIPAL, "--display-name", "Sam", "-i", "email:sam@acme.example"
    )
    assert result.exit_code == 0, result.output
    register(server)
    result = server.run("join-token", "create", "support")
    assert result.exit_code == 0 and "shown once" in result.stderr
    join_token = result.stdout.strip()
    assert join_token.startswith("rjt_")
    with RemitClient(server.url) as api:
        session = AgentSession.attest(api, join_token)
        task = session.open_task(
            principal=PRINCIPAL, intent={"purpose": "look", "tools": ["docs/read"]}
        )
        assert task.authorize("docs/read", {}).allowed
        shown = as_json(server.run("task", "show", task.task_id, "--json"))
        assert shown["task_id"] == task.task_id and shown["status"] == "open"
        assert shown["calls_used"] == 1
        assert "mandate" in server.run("task", "show", task.task_id).output
        result = server.run("task", "revoke", task.task_id, "--reason", "incident", "--json")
        assert as_json(result) == {"closed": [task.task_id], "outstanding_leases": []}
        other = session.open_task(
            principal=PRINCIPAL, intent={"purpose": "look", "tools": ["docs/read"]}
        )
        assert server.run("task", "end", other.task_id).exit_code == 0
    assert server.run("task", "show", "tsk_nosuchtasknosuchtask").exit_code == 3
    used = server.run("join-token", "create", "nobody")
    assert used.exit_code == 3 and used.stdout == ""


def test_catalog_and_policies_over_http(server: Server, tmp_path: Path) -> None:
    catalog = as_json(server.run("catalog", "show", "--json"))
    assert "docs/read" in {t["name"] for t in catalog["tools"]}
    assert "ticket/read" in server.run("catalog", "show").output
    smaller = tmp_path / "catalog.yaml"
    smaller.write_text("tools:\n  - name: docs/read\n    privilege: read\n")
    result = server.run("catalog", "load", str(smaller), "--json")
    assert result.exit_code == 0, result.output
    assert [t["name"] for t in as_json(result)["tools"]] == ["docs/read"]
    assert server.run("catalog", "load", str(tmp_path / "none.yaml")).exit_code == 2

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "ops.cedar").write_text(
        '@id("no-docs") forbid (principal, action, resource == Tool::"docs/read");'
    )
    result = server.run("policy", "upload", str(policies), "--json")
    assert result.exit_code == 0, result.output
    version = as_json(result)["version"]
    listed = as_json(server.run("policy", "list", "--json"))
    assert listed["active"] == version
    explained = as_json(server.run("policy", "explain", "docs/read", "--json"))
    assert explained["allowed"] is False and explained["reasons"] == ["no-docs"]
    (policies / "ops.cedar").write_text(
        '@id("x") forbid (principal, action, resource) when { context.nope };'
    )
    result = server.run("policy", "upload", str(policies))
    assert result.exit_code == EXIT_CODES["policy_invalid"] == 2
    (policies / "ops.cedar").write_text(
        '@id("no-email") forbid (principal, action, resource == Tool::"email/send");'
    )
    second = as_json(server.run("policy", "upload", str(policies), "--json"))["version"]
    assert second != version
    result = server.run("policy", "activate", version, "--json")
    assert as_json(result) == {"version": version}
    assert server.remit.policy.version == version
    assert "*" in server.run("policy", "list").output
    assert server.run("policy", "activate", "nope").exit_code == 3


def test_audit_keys_and_kill_switch_over_http(server: Server, tmp_path: Path) -> None:
    register(server)
    assert as_json(server.run("kill-switch", "on", "--agent", "support", "--json"))["engaged"]
    assert "released" in server.run("kill-switch", "off").output
    keys = as_json(server.run("keys", "rotate", "--json"))
    assert keys["active_kid"] in keys["kids"] and len(keys["kids"]) == 2

    report = as_json(server.run("audit", "verify", "--json"))
    assert report["ok"] is True
    assert "intact" in server.run("audit", "verify").output
    tail = as_json(server.run("audit", "tail", "-n", "3", "--json"))["records"]
    assert [r["kind"] for r in tail][-1] == "keys.rotated"
    assert len(tail) == 3 and tail[0]["seq"] < tail[-1]["seq"]
    kinds = as_json(server.run("audit", "tail", "--kind", "agent.registered", "--json"))
    assert [r["kind"] for r in kinds["records"]] == ["agent.registered"]
    assert "keys.rotated" in server.run("audit", "tail").output

    out = tmp_path / "audit.ndjson"
    result = server.run("audit", "export", "--output", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["seq"] >= report["head_seq"]
    result = server.run("audit", "export", "--after-seq", str(len(lines) - 2))
    assert [json.loads(x)["seq"] for x in result.stdout.splitlines()][:2] == [
        len(lines) - 1,
        len(lines),
    ]


def test_audit_tail_follows(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import remit.cli

    polls = []

    def sleep(seconds: float) -> None:
        if polls:
            raise KeyboardInterrupt
        polls.append(seconds)
        server.remit.register_principal("user:new@acme.example")

    monkeypatch.setattr(remit.cli.time, "sleep", sleep)
    result = server.run("audit", "tail", "-f", "-n", "1", "--json", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    kinds = [json.loads(line)["kind"] for line in result.stdout.splitlines()]
    assert kinds == ["admin_token.created", "principal.registered"]
    assert polls == [0.5]


def test_admin_tokens_over_http(server: Server) -> None:
    result = server.run("admin-token", "create", "bot", "--scope", "readonly", "--json")
    assert result.exit_code == 0, result.output
    created = as_json(result)
    assert created["token"].startswith("rat_")
    listed = as_json(server.run("admin-token", "list", "--json"))["tokens"]
    assert {"cli", "viewer", "bot"} <= {t["name"] for t in listed}
    assert created["token"] not in json.dumps(listed)
    assert server.run("agent", "list", token=created["token"]).exit_code == 0
    assert server.run("admin-token", "revoke", created["token_id"]).exit_code == 0
    assert server.run("agent", "list", token=created["token"]).exit_code == 6
    assert server.run("admin-token", "list", token=server.readonly).exit_code == 9


def test_settings_from_a_config_file_with_environment_overrides(tmp_path: Path) -> None:
    from remit.config import load_settings as load

    config = tmp_path / "remit.toml"
    config.write_text(
        'data_dir = "/srv/remit"\ntrust_domain = "file.example"\naudit_durable = false\nmax_task_ttl_seconds = 120\n'
    )
    settings = load({"REMIT_CONFIG": str(config), "REMIT_TRUST_DOMAIN": "env.example"})
    assert settings.data_dir == Path("/srv/remit") and settings.trust_domain == "env.example"
    assert settings.audit_durable is False and settings.max_task_ttl_seconds == 120
    config.write_text('data_dri = "/typo"\n')
    with pytest.raises(InvalidRequest):
        load({"REMIT_CONFIG": str(config)})
    config.write_text("max_task_ttl_seconds = 'soon'\n")
    with pytest.raises(InvalidRequest):
        load({}, config_file=config)


def test_analyze_permissions(server: Server) -> None:
    assert register(server).exit_code == 0
    result = server.run("analyze", "permissions", "support", "--json", token=server.readonly)
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert report["agent_id"] == "spiffe://acme.example/agent/support"
    points = {(p["tool"], p["destination_class"], p["taint"]): p for p in report["permissions"]}
    assert {p["tool"] for p in report["permissions"]} == {"docs/read", "email/send"}
    assert points[("docs/read", "none", "none")]["allowed"]
    assert points[("email/send", "by_pattern", "confidential")]["reasons"] == [
        "exfiltration-after-confidential-read"
    ]
    table = server.run("analyze", "permissions", "support")
    assert table.exit_code == 0 and "email/send" in table.output
    missing = server.run("analyze", "permissions", "nobody")
    assert missing.exit_code != 0
