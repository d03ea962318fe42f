"""Failures that used to be silent: a norm key the policy lacks, a policy that never answers, a
CURVE refusal. Each ends with a message that says what to check, and a non-zero exit."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from transport_helpers import echo_policy, robot, serving
from typer.testing import CliRunner

from wall_runtime.backends.echo import EchoPolicy
from wall_runtime.cli import app
from wall_runtime.transport.auth import generate_keys
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.errors import NotConnected
from wall_runtime.transport.server import PolicyServer, ServerConfig

# a FLOW-style layout the sim arm's model: block fits (its left arm's EE slots and gripper):
# `run` builds the model edge at the handshake, so the policy must report its layouts
LAYOUT = {
    "follow_left_ee_cartesian_pos": 3,
    "follow_left_ee_rotation": 3,
    "follow_left_gripper": 1,
    "action_padding": 13,
}


def _server(**options) -> PolicyServer:
    policy = EchoPolicy.from_checkpoint(
        None,
        dof_config=LAYOUT,
        agent_pos_config=LAYOUT,
        cameras=("face_view", "left_wrist_view"),
        **options,
    )
    return PolicyServer(policy, ServerConfig(bind="tcp://127.0.0.1:0"))


def _run(endpoint: str, tmp_path: Path, *extra: str):
    args = ["run", "--robot", "sim_arm", "--server", endpoint, "--no-keys", "--no-safe-pose"]
    args += ["--estop-file", str(tmp_path / "estop"), *extra]
    return CliRunner().invoke(app, args, terminal_width=200)


def test_run_refuses_a_norm_key_the_policy_lacks(tmp_path: Path) -> None:
    with _server(norm_keys=("aloha", "so100")) as server:
        result = _run(server.start(), tmp_path, "--duration", "5")
    out = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "model.norm_key 'sim_arm' is not a normalisation key" in out
    assert "(it has: aloha, so100)" in out


def test_run_exits_non_zero_when_no_chunk_arrives(tmp_path: Path) -> None:
    # every request fails on the server: the robot holds, and run stops at the first-chunk deadline
    with _server(norm_keys=("sim_arm",), fail_on="fail please") as server:
        t0 = time.monotonic()
        result = _run(
            server.start(), tmp_path, "--duration", "30", "--first-chunk-timeout", "1.5", "-i", "fail please"
        )
        took = time.monotonic() - t0
    out = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "no chunk arrived within 1.5 s" in out and "last error:" in out
    assert took < 20


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for name in ("server", "robot", "intruder"):
        out[name], out[name + "_secret"] = generate_keys(root, name)
    (root / "allowed").mkdir()
    shutil.copy(out["robot"], root / "allowed" / "robot.key")
    out["allow"] = root / "allowed"
    return out


def test_a_curve_refusal_says_which_keys_to_check(keys: dict[str, Path]) -> None:
    with serving(echo_policy(), server_key=keys["server_secret"], allow_dir=keys["allow"]) as server:
        endpoint = server.wait_bound(5)
        intruder = PolicyClient(
            endpoint, robot("intruder"), server_key=keys["server"], client_key=keys["intruder_secret"]
        )
        try:
            with pytest.raises(
                NotConnected, match=r"refused this host's CURVE key.*intruder\.key.*--allow folder"
            ):
                intruder.connect(timeout=1.0)
        finally:
            intruder.close()
        plain = PolicyClient(endpoint, robot("plain"))
        try:
            with pytest.raises(
                NotConnected, match=r"requires CURVE: pass its public key \(--server-key .*--client-key "
            ):
                plain.connect(timeout=1.0)
        finally:
            plain.close()
