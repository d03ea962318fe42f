"""`wall-runtime serve | keys generate | metrics` as a user runs them (serve in a real subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from transport_helpers import client_for, observation
from typer.testing import CliRunner

from wall_runtime.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def test_keys_generate_writes_pairs_and_refuses_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "generate", str(tmp_path), "--name", "server", "--name", "robot1"])
    assert result.exit_code == 0, result.output
    for name in ("server.key", "server.key_secret", "robot1.key", "robot1.key_secret"):
        assert (tmp_path / name).is_file()
    again = runner.invoke(app, ["keys", "generate", str(tmp_path), "--name", "server"])
    assert again.exit_code == 1 and "exists" in again.output


def test_serve_refuses_open_bind_without_keys() -> None:
    result = CliRunner().invoke(app, ["serve", "--backend", "echo", "--bind", "tcp://0.0.0.0:5599"])
    assert result.exit_code == 2
    assert "--insecure" in result.output


def test_serve_refuses_an_unknown_handshake_io_priority() -> None:
    result = CliRunner().invoke(app, ["serve", "--backend", "echo", "--handshake-io-priority", "fast"])
    assert result.exit_code == 2
    assert "idle, batch, normal" in result.output


def test_serve_answers_reports_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    endpoint_file = tmp_path / "endpoint"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wall_runtime",
            "serve",
            "--backend",
            "echo",
            "--bind",
            "tcp://127.0.0.1:*",
            "--endpoint-file",
            str(endpoint_file),
            "--option",
            "delay_ms=1",
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not endpoint_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert endpoint_file.exists(), "serve never reported its endpoint"
        endpoint = endpoint_file.read_text().strip()
        assert endpoint.startswith("tcp://127.0.0.1:")
        with client_for(endpoint) as client:
            assert client.session_endpoint is not None  # the robot moved to the session endpoint
            for i in range(3):
                assert client.submit(observation(float(i)), deadline=2.0).result(timeout=5).stamp == float(i)
        runner = CliRunner()
        prom = runner.invoke(app, ["metrics", "--connect", endpoint, "--format", "prometheus"])
        assert prom.exit_code == 0, prom.output
        assert 'wall_runtime_server_requests_total{type="observe"} 3.0' in prom.output
        table = runner.invoke(app, ["metrics", "--connect", endpoint])
        assert table.exit_code == 0 and "queue_wait_ms" in table.output
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "SIGTERM" in out and "server stopped" in out
