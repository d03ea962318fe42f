"""Metrics people already scrape (prometheus_client on the robot side) and one-line safety summaries."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.control import safety as safety_module
from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.control.safety import SafetyChain, SafetyConfig
from wall_runtime.robot import JointSpec
from wall_runtime.types import RobotState


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_serves_robot_metrics_while_it_runs(tmp_path: Path) -> None:
    port = _free_port()
    scraped: list[str] = []

    def chunks(text: str) -> float:
        for family in text_string_to_metric_families(text):
            if family.name == "wall_runtime_robot_chunks_received":
                return family.samples[0].value
        return 0.0

    def scrape() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
                    text = resp.read().decode()
                if chunks(text) >= 1:
                    scraped.append(text)
                    return
            except OSError:
                pass
            time.sleep(0.1)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    result = CliRunner().invoke(
        app,
        [
            *("run", "--dry-run", "--duration", "3", "--no-keys"),
            *("--estop-file", str(tmp_path / "estop"), "--metrics-http", f"127.0.0.1:{port}"),
        ],
    )
    scraper.join()
    assert result.exit_code == 0, result.output
    assert scraped, "no scrape during the run"
    families = {f.name: f for f in text_string_to_metric_families(scraped[0])}
    for name in (
        "wall_runtime_robot_ticks",
        "wall_runtime_robot_overruns",
        "wall_runtime_robot_chunks_received",
        "wall_runtime_robot_loop_rate_hertz",
        "wall_runtime_robot_interventions",
        "wall_runtime_robot_watchdog_trips",
        "wall_runtime_robot_estop_triggers",
        "wall_runtime_robot_estop_engaged",
    ):
        assert name in families, name
        assert families[name].documentation  # every metric has its # HELP
    rate = families["wall_runtime_robot_loop_rate_hertz"].samples[0]
    assert rate.labels == {"robot": "dry_run"} and rate.value > 10
    assert families["wall_runtime_robot_chunks_received"].samples[0].value >= 1


def test_interventions_are_summarised_in_one_line(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    joints = [
        JointSpec(n, "revolute", "rad", parse_joint_limits(n, {"min_position": -1.0, "max_position": 1.0}))
        for n in ("shoulder", "elbow", "wrist")
    ]
    chain = SafetyChain(joints, SafetyConfig.from_dict({"max_step": 0.01}, joints), 0.01)
    state = RobotState(stamp=0.0, position=np.zeros(3))
    with caplog.at_level(logging.WARNING, logger="wall_runtime.control.safety"):
        for _ in range(20):  # every joint jumps too far on every tick: 60 interventions
            chain.filter(np.array([0.5, -0.5, 0.9]), state)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("safety:")]
    assert len(lines) == 1, lines  # the first at once, the rest wait for the next summary
    assert "shoulder ×1" in lines[0] and "elbow ×1" in lines[0] and "wrist ×1" in lines[0]
    caplog.clear()
    monkeypatch.setattr(safety_module, "SUMMARY_PERIOD_S", 0.0)
    with caplog.at_level(logging.WARNING, logger="wall_runtime.control.safety"):
        chain.filter(np.array([0.5, -0.5, 0.9]), state)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("safety:")]
    # everything since the first line, counted per joint, in one line
    assert "intervention(s) in" in line and "shoulder ×20" in line
    assert sum(chain.joint_counts.values()) == sum(chain.counts.values())
