"""running_server and serve: real sockets, graceful shutdown with a final checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from remit.config import Settings
from remit.http.server import find_free_port, running_server
from remit.runtime import build_remit
from tests.http.conftest import live_remit


def test_running_server_serves_and_stops(tmp_path: Path) -> None:
    remit = live_remit(tmp_path)
    try:
        with running_server(remit) as base_url:
            assert base_url.startswith("http://127.0.0.1:")
            assert httpx.get(base_url + "/healthz").json() == {"status": "ok"}
        with pytest.raises(httpx.ConnectError):
            httpx.get(base_url + "/healthz", timeout=1.0)
        port = find_free_port()
        with running_server(remit, port=port) as again:
            assert again == f"http://127.0.0.1:{port}"
            assert httpx.get(again + "/readyz").status_code == 200
    finally:
        remit.close()


def test_serve_shuts_down_gracefully(tmp_path: Path) -> None:
    port = find_free_port()
    data_dir = tmp_path / "data"
    setup = build_remit(Settings(data_dir=data_dir))
    _, secret = setup.create_admin_token("root", scopes=["admin"])
    setup.close()
    before = json.loads((data_dir / "audit-anchor.json").read_text())["seq"]
    env = {**os.environ, "REMIT_DATA_DIR": str(data_dir)}
    code = (
        "from remit.config import load_settings\n"
        "from remit.http.server import serve\n"
        f"serve(load_settings(), port={port})\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base_url + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        principal = httpx.post(
            base_url + "/v1/principals",
            json={"principal_id": "user:last@acme.example"},
            headers={"Authorization": f"Bearer {secret.reveal()}"},
        )
        assert principal.status_code == 201, principal.text
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # uvicorn drains, runs the lifespan shutdown, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM), output.decode(errors="replace")
    assert b"Application shutdown complete" in output
    # Closing Remit flushed the audit and wrote a signed checkpoint of the head.
    anchor = json.loads((data_dir / "audit-anchor.json").read_text())
    assert anchor["seq"] == before + 1 and anchor["signature"]
