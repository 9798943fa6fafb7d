"""``remit analyze blast-radius``: offline on files (CI) and against a server."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from remit.cli import EXIT_CODES, EXIT_FINDINGS, app
from remit.graph_render import dot_string, svg_escape, to_dot, to_svg
from remit.http.server import running_server
from remit.runtime import build_remit, catalog_from_yaml
from remit.service import Remit

from .conftest import CATALOG, CEILING, make_settings

runner = CliRunner()
SVG = "{http://www.w3.org/2000/svg}"
LEAD = "spiffe://acme.example/agent/lead"
MAILER = "spiffe://acme.example/agent/mailer"

AGENTS = """
trust_domain: acme.example
agents:
  - name: lead
    owner: sam@acme.example
    ceiling:
      tools: [ticket/read, crm/read, docs/read, email/send]
      privileges: [read, act]
      destinations: ["email:*"]
      max_sensitivity: confidential
  - name: mailer
    owner: sam@acme.example
    mode: {mode}
    ceiling:
      tools: [email/send]
      privileges: [act]
      destinations: ["email:*"]
      max_sensitivity: confidential
"""
NO_EMAIL_FOR_LEAD = f"""@id("lead-sends-no-email")
forbid (principal == Agent::"{LEAD}", action == Action::"act", resource in ToolGroup::"email");
"""
CLOSE_EDGE = f"""@id("lead-never-delegates-to-mailer")
forbid (principal == Agent::"{LEAD}", action == Action::"delegate",
        resource == Agent::"{MAILER}");
"""


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = root / "policies"
        self.policies.mkdir()
        (self.policies / "lead.cedar").write_text(NO_EMAIL_FOR_LEAD)
        self.catalog = root / "catalog.yaml"
        self.catalog.write_text(CATALOG)
        self.agents = root / "agents.yaml"
        self.set_mailer_mode("shadow")

    def set_mailer_mode(self, mode: str) -> None:
        self.agents.write_text(AGENTS.replace("{mode}", mode))

    def args(self, *extra: str) -> list[str]:
        return [
            "analyze",
            "blast-radius",
            "lead",
            "--policies",
            str(self.policies),
            "--catalog",
            str(self.catalog),
            "--agents",
            str(self.agents),
            *extra,
        ]

    def run(self, *extra: str) -> Result:
        return invoke(*self.args(*extra))


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def findings(result: Result, kind: str) -> list[dict[str, Any]]:
    return [f for f in json.loads(result.stdout)["findings"] if f["kind"] == kind]


# ---------------------------------------------------------------------- offline, for CI


def test_fail_on_exfil_path_until_a_policy_closes_it(files: Files) -> None:
    # The lead may not email; the mailer, in shadow mode, lets every call through.
    result = files.run("--fail-on", "exfil-path", "--json")
    assert result.exit_code == EXIT_FINDINGS == 11, result.output
    assert "exfil-path" in result.stderr and "--fail-on" in result.stderr
    paths = findings(result, "exfil-path")
    assert paths
    crm = [f for f in paths if f["tools"][0] == "crm/read"]
    assert crm and crm[0]["path"][:2] == [f"agent:{LEAD}", f"agent:{MAILER}"]
    assert "permit-delegation-same-trust-domain" in crm[0]["reasons"]
    assert "shadow-mode" in crm[0]["reasons"]
    # Without --fail-on the same findings are only reported.
    assert files.run("--json").exit_code == 0

    (files.policies / "close.cedar").write_text(CLOSE_EDGE)
    closed = files.run("--fail-on", "exfil-path", "--json")
    assert closed.exit_code == 0, closed.output
    assert findings(closed, "exfil-path") == []
    assert json.loads(closed.stdout)["summary"]["chains"] == 1


def test_fail_on_delegation_widening_and_any(files: Files) -> None:
    files.set_mailer_mode("enforce")
    # Enforced everywhere: the baseline leaves no exfil path ...
    assert files.run("--fail-on", "exfil-path").exit_code == 0
    # ... but the mailer can email, which the lead cannot: a widening edge.
    result = files.run("--fail-on", "delegation-widening", "--json")
    assert result.exit_code == EXIT_FINDINGS
    (widening,) = findings(result, "delegation-widening")
    assert widening["systems"] == ["email"]
    assert widening["path"] == [f"agent:{LEAD}", f"agent:{MAILER}"]
    summary = json.loads(result.stdout)["summary"]
    assert "email" not in summary["direct_systems"] and "email" in summary["reachable_systems"]
    assert files.run("--fail-on", "any").exit_code == EXIT_FINDINGS
    assert files.run("--fail-on", "exfil-path", "--fail-on", "act-reach").exit_code == 11


def test_table_output(files: Files) -> None:
    result = files.run()
    assert result.exit_code == 0, result.output
    assert "blast radius of spiffe://acme.example/agent/lead" in result.stdout
    assert "exfil-path" in result.stdout and "delegation-widening" in result.stdout


def test_dot_output(files: Files, tmp_path: Path) -> None:
    result = files.run("--format", "dot")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith('digraph "blast radius of spiffe://acme.example/agent/lead" {')
    assert text.rstrip().endswith("}")
    assert f'"agent:{LEAD}" -> "agent:{MAILER}"' in text
    assert "delegates_to" in text and "#d00000" in text  # the exfil path is red
    # One statement per line, quotes balanced.
    for line in text.splitlines()[1:-1]:
        assert line.endswith(";") and line.count('"') % 2 == 0, line
    out = tmp_path / "graph.dot"
    assert files.run("--format", "dot", "-o", str(out)).exit_code == 0
    assert out.read_text() == text


def test_svg_output_parses(files: Files) -> None:
    result = files.run("--format", "svg")
    assert result.exit_code == 0, result.output
    root = ET.fromstring(result.stdout.encode("utf-8"))
    assert root.tag == f"{SVG}svg"
    report = json.loads(files.run("--json").stdout)
    groups = root.findall(f".//{SVG}g[@class='nodes']/{SVG}g")
    assert len(groups) == len(report["nodes"])
    titles = {g.findtext(f"{SVG}title", "").split(" ")[0] for g in groups}
    assert titles == {n["id"] for n in report["nodes"]}
    paths = root.findall(f".//{SVG}g[@class='edges']/{SVG}path")
    assert len(paths) == len(report["edges"])
    assert any(p.get("stroke") == "#d00000" for p in paths)


def test_escaping_of_hostile_names() -> None:
    hostile = "a<b>&\"c'\n\x00d"
    assert svg_escape(hostile) == "a&lt;b&gt;&amp;&quot;c&#x27;\n\ufffdd"
    assert dot_string('x"y\\z\nw') == '"x\\"y\\\\z\\nw"'
    document = {
        "agent_id": hostile,
        "summary": {"findings": {"exfil-path": 1}},
        "nodes": [
            {"id": f"agent:{hostile}", "kind": "agent", "label": hostile, "detail": [hostile]},
            {"id": "tool:x/y", "kind": "tool", "label": "x/y", "detail": []},
        ],
        "edges": [
            {
                "source": f"agent:{hostile}",
                "target": "tool:x/y",
                "kind": "can_act",
                "detail": [],
                "reasons": [hostile],
                "calls": None,
            }
        ],
        "findings": [{"kind": "exfil-path", "path": [f"agent:{hostile}", "tool:x/y"]}],
    }
    root = ET.fromstring(to_svg(document).encode("utf-8"))
    assert root.findtext(f"{SVG}title") == "blast radius of " + hostile.replace("\x00", "\ufffd")
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert any(t.startswith("agent: a<b>&\"c'") for t in texts)
    dot = to_dot(document)
    assert '"agent:a<b>&\\"c\'\\n\x00d" -> "tool:x/y"' in dot
    # No raw line break from a name: a header of 4 lines, one per node and edge, and "}".
    assert len(dot.splitlines()) == 4 + 2 + 1 + 1


def test_bad_inputs_exit_2(files: Files) -> None:
    for extra in (["--format", "png"], ["--fail-on", "everything"], ["--days", "7"]):
        result = files.run(*extra)
        assert result.exit_code == EXIT_CODES["invalid_request"] == 2, (extra, result.output)
    only_catalog = invoke("analyze", "blast-radius", "lead", "--catalog", str(files.catalog))
    assert only_catalog.exit_code == 2 and "--agents" in only_catalog.stderr
    files.agents.write_text("agents:\n  - name: Bad Name\n    owner: x\n    ceiling: {}\n")
    assert files.run().exit_code == 2
    files.set_mailer_mode("enforce")
    missing = invoke(*files.args()[:2], "nobody", *files.args()[3:])
    assert missing.exit_code == EXIT_CODES["not_found"]


# ---------------------------------------------------------------------- against a server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Remit, str, str]]:
    remit = build_remit(make_settings(tmp_path), catalog=catalog_from_yaml(CATALOG))
    try:
        _, readonly = remit.create_admin_token("viewer", scopes=["readonly"])
        with running_server(remit) as url:
            yield remit, url, readonly.reveal()
    finally:
        remit.close()


def test_over_http(server: tuple[Remit, str, str]) -> None:
    remit, url, token = server
    remit.register_agent("lead", owner="sam@acme.example", ceiling=CEILING)
    env = {"REMIT_URL": url, "REMIT_ADMIN_TOKEN": token}
    result = invoke("analyze", "blast-radius", "lead", "--days", "7", "--json", env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["days"] == 7 and report["agent_id"] == "spiffe://acme.example/agent/lead"
    assert report["summary"]["findings"]["unused-grant"] > 0
    # shadow/tool is a catalog tool in shadow mode: it is reached, and reported as unused.
    failed = invoke(
        "analyze", "blast-radius", "lead", "--fail-on", "unused-grant", "--format", "svg", env=env
    )
    assert failed.exit_code == EXIT_FINDINGS
    ET.fromstring(failed.stdout.encode("utf-8"))
    missing = invoke("analyze", "blast-radius", "nobody", env=env)
    assert missing.exit_code == EXIT_CODES["not_found"]
