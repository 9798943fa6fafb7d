"""The gateway config file, names on the wire, redaction and what the agent signs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from remit.canonical import digest
from remit.core.secrets import Secret
from remit.errors import InvalidRequest
from remit.gateway.agent_auth import what_to_sign
from remit.gateway.config import (
    HttpTarget,
    StdioTarget,
    gateway_config_from_data,
    join_token_from,
    read_gateway_config,
)
from remit.gateway.names import catalog_name, mcp_op, split_wire_name, wire_name
from remit.gateway.redact import REDACTED, Redactor

SECRET = "s3cr3t-value-0123456789"

TOML = """
[gateway]
public_url = "https://gw.example.com"

[[upstreams]]
name = "tickets"
command = "python"
args = ["-m", "tickets"]
env = { API_KEY = "${TICKETS_KEY}" }
public_env = { LOG_LEVEL = "info" }
timeout_seconds = 5

[[upstreams]]
name = "web"
url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${WEB_TOKEN}" }

[task]
principal = "user:sam@acme.example"
join_token = "${JOIN}"
[task.intent]
purpose = "reply"
tools = ["tickets/read"]
"""


def test_a_toml_config_resolves_credentials_into_secrets(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(TOML, encoding="utf-8")
    config = read_gateway_config(
        path, {"TICKETS_KEY": SECRET, "WEB_TOKEN": "tok-123456", "JOIN": "rjt_abc"}
    )
    tickets, web = config.upstreams
    assert isinstance(tickets.target, StdioTarget) and isinstance(web.target, HttpTarget)
    assert tickets.target.env["API_KEY"].reveal() == SECRET
    assert tickets.target.public_env == {"LOG_LEVEL": "info"}
    assert tickets.timeout_seconds == 5.0 and web.timeout_seconds == 30.0
    assert web.target.headers["Authorization"].reveal() == "Bearer tok-123456"
    assert config.public_url == "https://gw.example.com"
    assert config.task is not None and config.task.intent["tools"] == ["tickets/read"]
    assert join_token_from(config, {}) == Secret("rjt_abc")
    assert SECRET not in repr(config)
    assert {s.reveal() for s in config.secrets()} == {SECRET, "Bearer tok-123456", "rjt_abc"}


def test_a_yaml_config_and_the_join_token_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({"upstreams": [{"name": "a", "command": "x"}]}), encoding="utf-8")
    config = read_gateway_config(path, {})
    assert config.task is None
    assert join_token_from(config, {"REMIT_JOIN_TOKEN": "rjt_env"}) == Secret("rjt_env")
    assert join_token_from(config, {}) is None


def base(**upstream: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "a", "command": "x", **upstream}]}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"upstreams": [], "extra": 1}, "unknown keys: ['extra']"),
        ({"upstreams": []}, "non-empty 'upstreams'"),
        (base(colour="red"), "unknown keys: ['colour']"),
        ({"upstreams": [{"name": "a__b", "command": "x"}]}, "name must be"),
        ({"upstreams": [{"name": "A", "command": "x"}]}, "name must be"),
        ({"upstreams": [{"name": "a"}]}, "either 'command'"),
        ({"upstreams": [{"name": "a", "command": "x", "url": "http://h/mcp"}]}, "either"),
        (base(headers={"X": "y"}), "'headers' is for HTTP"),
        ({"upstreams": [{"name": "a", "url": "ftp://h"}]}, "url must be http"),
        ({"upstreams": [{"name": "a", "url": "http://u:p@h/mcp"}]}, "not in the url"),
        ({"upstreams": [{"name": "a", "url": "http://h/mcp", "env": {}}]}, "for stdio"),
        ({"upstreams": [{"name": "a", "url": "http://h", "headers": {"Host": "x"}}]}, "may not"),
        (base(timeout_seconds=0), "timeout_seconds"),
        (base(timeout_seconds=True), "timeout_seconds"),
        (base(protocol="v1"), "protocol"),
        (base(env={"BAD NAME": "x"}), "malformed"),
        (base(env={"K": ""}), "non-empty"),
        ({**base(), "gateway": {"port": 1}}, "unknown keys: ['port']"),
        ({**base(), "task": {"principal": "user:a@b.example"}}, "task.intent"),
        ({"upstreams": [{"name": "a", "command": "x"}, {"name": "a", "url": "http://h"}]}, "same"),
    ],
)
def test_bad_configs_are_refused(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        gateway_config_from_data(data, {})
    assert caught.value.reason == "bad_gateway_config"
    assert fragment in caught.value.message


def test_errors_name_variables_never_values() -> None:
    with pytest.raises(InvalidRequest) as caught:
        gateway_config_from_data(base(env={"K": "${NOT_SET}-${ALSO}"}), {})
    assert "['ALSO', 'NOT_SET']" in caught.value.message
    with pytest.raises(InvalidRequest) as multi:
        gateway_config_from_data(base(env={"K": "${V}"}), {"V": SECRET + "\nmore"})
    assert SECRET not in multi.value.message


def test_wire_and_catalog_names() -> None:
    assert wire_name("desk", "send_email") == "desk__send_email"
    assert split_wire_name("desk__send_email") == ("desk", "send_email")
    assert split_wire_name("desk__a__b") == ("desk", "a__b")
    assert split_wire_name("plain") is None and split_wire_name("__x") is None
    assert catalog_name("desk__send_email") == "desk/send_email"
    assert catalog_name("plain") == "plain"  # Remit refuses it as malformed
    assert mcp_op("tools/list") == "remit:mcp/tools/list"


def test_redaction() -> None:
    redactor = Redactor([Secret(SECRET), Secret(SECRET[:8])])
    assert redactor.text(f"a {SECRET} b") == f"a {REDACTED} b"  # longest first
    result = CallToolResult(
        content=[TextContent(type="text", text=f"key={SECRET}")],
        structured_content={"nested": [{SECRET: SECRET[:8]}]},
    )
    cleaned = redactor.model(result)
    assert SECRET[:8] not in cleaned.model_dump_json()
    assert cleaned.content[0].text == f"key={REDACTED}"  # type: ignore[union-attr]
    clean = CallToolResult(content=[TextContent(type="text", text="fine")])
    assert redactor.model(clean) is clean
    assert not Redactor([]) and repr(redactor) == "Redactor(2 secrets)"


def test_what_an_agent_signs() -> None:
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "desk__send_email", "arguments": {"to": "a@b.example"}},
    }
    assert what_to_sign(json.dumps(call).encode(), "POST") == (
        "desk/send_email",
        {"to": "a@b.example"},
    )
    listing = {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}
    assert what_to_sign(json.dumps(listing).encode(), "POST") == ("remit:mcp/tools/list", {})
    assert what_to_sign(b"", "GET") == ("remit:mcp/GET", {})
    no_args = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "a__b"}}
    op, value = what_to_sign(json.dumps(no_args).encode(), "POST")
    assert (op, digest(value)) == ("a/b", digest({}))
