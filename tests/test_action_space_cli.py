"""The EE model edge on the command line: `make-tiny-checkpoint --robot`, `check-robot
--checkpoint` and `predict` speaking per-arm poses, checked against scipy's Rotation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from wall_runtime.cli import app

runner = CliRunner()
ROBOTS = Path(__file__).resolve().parents[1] / "robots"


@pytest.fixture(scope="module")
def so100_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for variant in ("flow", "0.5"):
        out[variant] = root / variant
        made = runner.invoke(
            app,
            [
                "make-tiny-checkpoint",
                str(out[variant]),
                "--robot",
                str(ROBOTS / "so100"),
                "--variant",
                variant,
            ],
        )
        assert made.exit_code == 0, made.output
    return out


def _layout(ckpt: Path) -> tuple[dict, dict]:
    import yaml

    yml = yaml.safe_load((ckpt / "config.yml").read_text())
    task = yml.get("task", yml)
    return task["dof_config"], task["agent_pos_config"]


def test_make_tiny_checkpoint_lays_out_the_robots_ee_slots(so100_checkpoints) -> None:
    dof, pos = _layout(so100_checkpoints["flow"])
    assert (
        dof
        == pos
        == {
            "follow_left_ee_cartesian_pos": 3,
            "follow_left_ee_rotation": 3,
            "follow_left_gripper": 1,
        }
    )
    dof, pos = _layout(so100_checkpoints["0.5"])
    assert dof == {
        "follow_left_ee_cartesian_pos_relative": 3,
        "follow_left_ee_rotation_6D_relative": 6,
        "follow_left_gripper": 1,
    }
    assert pos == {
        "follow_left_ee_cartesian_pos": 3,
        "follow_left_ee_rotation_6D": 6,
        "follow_left_gripper": 1,
    }


def test_check_robot_checks_the_slot_mapping_against_a_checkpoint(so100_checkpoints, tmp_path) -> None:
    ok = runner.invoke(
        app,
        [
            "check-robot",
            str(ROBOTS / "so100"),
            "--checkpoint",
            str(so100_checkpoints["0.5"]),
            "--mapping-only",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "slot_mapping" in ok.output and "pass" in ok.output
    # the bimanual maps a right arm the single-arm checkpoint has no slots for: refused, by name
    report = tmp_path / "fit.json"
    bad = runner.invoke(
        app,
        [
            "check-robot",
            str(ROBOTS / "sim_bimanual"),
            "--checkpoint",
            str(so100_checkpoints["flow"]),
            "--mapping-only",
            "--json",
            str(report),
        ],
    )
    assert bad.exit_code == 1
    detail = json.loads(report.read_text())["checks"][0]["detail"]
    assert detail.startswith("model.arms.right: the checkpoint has no follow_right_* action slots"), detail


def _obs(path: Path, pose: list[float]) -> Path:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.savez(
        path,
        **{
            "image.face_view": img,
            "image.left_wrist_view": img,
            "instruction": np.array("pick up the cube"),
            "pose.left": np.array(pose),
        },
    )
    return path


POSE = [0.2, -0.05, 0.1, 0.3, 1.2, 3.0, 0.4]  # yaw near π: composition crosses the wrap


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_predict_decodes_a_supplied_chunk_into_base_frame_poses(so100_checkpoints, tmp_path, variant) -> None:
    ckpt = so100_checkpoints[variant]
    dim = sum(_layout(ckpt)[0].values())
    chunk = np.random.default_rng(3).uniform(-1, 1, (8, dim)).astype(np.float32)
    np.save(tmp_path / "chunk.npy", chunk)
    out = tmp_path / "r.npz"
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--observation",
            str(_obs(tmp_path / "obs.npz", POSE)),
            "--out",
            str(out),
            "--steps",
            "0",
            "--noise",
            str(tmp_path / "chunk.npy"),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    np.testing.assert_array_equal(saved["actions_normalized"], chunk)  # the initial sample, unchanged
    a = saved["actions"].astype(np.float64)
    poses = saved["pose.left"]
    assert poses.shape == (8, 7)
    if variant == "flow":
        want_p, want_r = a[:, :3], Rotation.from_euler("xyz", a[:, 3:6])
    else:  # composed onto the observation's pose: delta on the left, in the base frame
        r0 = Rotation.from_euler("xyz", POSE[3:6])
        rows = a[:, 3:9].reshape(8, 2, 3)
        x = rows[:, 0] / np.linalg.norm(rows[:, 0], axis=1, keepdims=True)
        y = rows[:, 1] - np.sum(x * rows[:, 1], axis=1, keepdims=True) * x
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        rel = Rotation.from_matrix(np.stack([x, y, np.cross(x, y)], axis=1))
        want_p, want_r = np.asarray(POSE[:3]) + a[:, :3], rel * r0
    np.testing.assert_allclose(poses[:, :3], want_p, atol=1e-6)
    got = Rotation.from_euler("xyz", poses[:, 3:6])
    assert np.max((got.inv() * want_r).magnitude()) < 1e-5
    assert np.all(poses[:, 3:6] >= -math.pi) and np.all(poses[:, 3:6] < math.pi)
    np.testing.assert_allclose(poses[:, 6], a[:, dim - 1], atol=1e-6)


def test_predict_runs_the_model_from_poses(so100_checkpoints, tmp_path) -> None:
    out = tmp_path / "r.npz"
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(so100_checkpoints["0.5"]),
            "--observation",
            str(_obs(tmp_path / "obs.npz", POSE)),
            "--out",
            str(out),
            "--steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    poses = np.load(out)["pose.left"]
    assert poses.shape == (8, 7) and np.all(np.isfinite(poses))
    bad = _obs(tmp_path / "bad.npz", POSE[:6])
    result = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(so100_checkpoints["0.5"]),
            "--observation",
            str(bad),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1 and "pose.left must be 7 finite floats" in result.output
