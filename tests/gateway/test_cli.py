"""``remit gateway``: the options, and the operator's --discover and --admit."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from remit.cli import app
from remit.core.catalog import tool_definition_digest
from remit.errors import Denied

from .conftest import CANARY, World

runner = CliRunner()


def invoke(world: World, *args: str) -> tuple[int, str]:
    env = {
        "REMIT_DATA_DIR": str(world.settings.data_dir),
        "REMIT_TRUST_DOMAIN": world.settings.trust_domain,
        "REMIT_CATALOG_PATH": str(world.settings.catalog_path),
        "CANARY": CANARY,
    }
    result = runner.invoke(app, ["gateway", "--config", str(world.write_config()), *args], env=env)
    return result.exit_code, result.stdout


def test_one_mode_at_a_time(world: World) -> None:
    code, _ = invoke(world, "--stdio", "--http")
    assert code == 2
    code, _ = invoke(world)
    assert code == 2


def test_discover_shows_what_would_be_pinned(world: World) -> None:
    code, out = invoke(world, "--discover", "--json")
    assert code == 0, out
    tools = {t["tool"]: t for t in json.loads(out)["tools"]}
    now = tools["time/get_current_time"]
    assert now["hints"]["read_only"] and now["suggested_privilege"] == "read"
    assert now["digest"] == tool_definition_digest(now["definition"])
    assert "desk/send_email" in tools and CANARY not in out


def test_admit_pins_the_current_definition(world: World) -> None:
    world.description_file.write_text("Echo, and more.", encoding="utf-8")
    definition = {"name": "echo", "description": "Echo, and more."}
    pinned = {p.tool: p for p in world.remit.list_tool_pins()}["desk/echo"].definition
    changed = {**definition, "input_schema": pinned["input_schema"]}
    try:
        world.remit.check_tool_definition("desk/echo", changed)
        raise AssertionError("a changed definition was accepted")
    except Denied as exc:
        assert exc.reason == "tool_definition_changed"
    world.remit.close()  # the command opens the data directory itself
    code, out = invoke(world, "--admit", "desk/echo", "--json")
    assert code == 0, out
    assert json.loads(out)["admitted"] == [
        {"tool": "desk/echo", "digest": tool_definition_digest(changed)}
    ]
    code, _ = invoke(world, "--admit", "desk/nothing")
    assert code == 2


def test_catalog_import_proposes_entries_for_a_human(world: World, tmp_path: object) -> None:
    import yaml

    from remit.core.catalog import catalog_from_data

    env = {"CANARY": CANARY}
    result = runner.invoke(
        app, ["catalog", "import", "--from-gateway", str(world.write_config())], env=env
    )
    assert result.exit_code == 0, result.stdout
    assert result.stdout.startswith("# Proposed by `remit catalog import --from-gateway`")
    proposal = yaml.safe_load(result.stdout)
    entries = {e["name"]: e for e in proposal["tools"]}
    assert entries["time/get_current_time"]["privilege"] == "read"  # from the server's hint
    assert all("needs-review" in e["risk"] for e in entries.values())
    assert CANARY not in result.stdout
    # Nothing is loaded; the read-only part of the proposal is a valid catalog as it stands.
    catalog_from_data({"tools": [e for e in proposal["tools"] if e["privilege"] != "act"]})
