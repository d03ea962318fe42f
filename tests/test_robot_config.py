"""robot.yaml loading: every shipped robot loads, and each kind of mistake names its field."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from wall_runtime.adapters.config import RobotConfigError, load_robot, parse_robot
from wall_runtime.adapters.registry import build_adapter

ROBOTS = Path(__file__).resolve().parents[1] / "robots"
SIM_ARM = ROBOTS / "sim_arm" / "robot.yaml"


def _raw() -> dict:
    return yaml.safe_load(SIM_ARM.read_text())


def _parse(raw: dict):
    return parse_robot(raw, SIM_ARM)


def test_sim_arm_loads_with_the_model_mapping_the_tiny_checkpoint_needs() -> None:
    cfg = load_robot(ROBOTS / "sim_arm")
    assert cfg.name == "sim_arm"
    assert cfg.joint_names == [
        "waist",
        "shoulder",
        "elbow",
        "forearm_roll",
        "wrist_pitch",
        "wrist_roll",
        "gripper",
    ]
    assert cfg.mapping.action_index == tuple(range(7))
    np.testing.assert_array_equal(cfg.mapping.dof_mask, [1] * 7 + [0] * 13)
    assert list(cfg.cameras["devices"]) == ["face_view", "left_wrist_view"]
    assert cfg.safety["max_step"]["gripper"] == 0.01
    assert cfg.safe_pose == (0.0, 0.0, 0.8, 0.0, 0.6, 0.0, 0.02)
    assert cfg.joint_dims == tuple(range(7))
    spec = cfg.spec()
    assert spec.control_hz == 30 and spec.dof == 7
    assert spec.upper[6] == pytest.approx(0.04) and spec.lower[2] == pytest.approx(-0.2)


@pytest.mark.parametrize("name", sorted(p.name for p in ROBOTS.iterdir() if (p / "robot.yaml").is_file()))
def test_every_shipped_robot_yaml_loads(name: str) -> None:
    cfg = load_robot(ROBOTS / name)
    assert cfg.name == name or name == "_template"
    assert len(cfg.joints) == sum(len(p.joints) for p in cfg.parts)


def test_mapping_state_vector_and_relative_actions() -> None:
    raw = _raw()
    raw["action_type"] = "relative_joints"
    cfg = _parse(raw)
    m = cfg.mapping
    pos = np.arange(7, dtype=float) / 10
    state = m.state_vector(pos)
    assert state.shape == (20,) and state.dtype == np.float32
    np.testing.assert_allclose(state[:7], pos)
    assert not state[7:].any()
    action = np.zeros(20)
    action[:7] = 0.01
    target = m.action_to_target(action, pos)
    # joints move relative to the current position; the gripper stays absolute
    np.testing.assert_allclose(target[:6], pos[:6] + 0.01)
    assert target[6] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="action has shape"):
        m.action_to_target(np.zeros(7), pos)


def _mutate(path: list, value) -> dict:
    raw = _raw()
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["control_hz"], _DELETE, "control_hz: missing"),
        (["control_hz"], -5, "control_hz: must be a positive"),
        (["contol_hz"], 30, "contol_hz: unknown field"),
        (["action_type"], "joint_velocity", "action_type: 'joint_velocity' is not one of"),
        (["joints", 0, "kind"], "hinge", r"joints\[0\].kind"),
        (["joints", 6, "unit"], "deg", r"joints\[6\].unit"),
        (["joint_limits", "waist"], _DELETE, "joint_limits.waist: missing"),
        (["joint_limits", "waist", "max_postion"], 1.0, "joint_limits.waist.max_postion: unknown field"),
        (["joint_limits", "elbow", "min_position"], 3.0, "joint_limits.elbow: min_position must be below"),
        (["parts", 0, "type"], "robotiq", r"parts\[0\].type: 'robotiq' is not a known part type"),
        (["parts", 0, "joints"], ["waist"], "joint 'shoulder' is driven by no part"),
        (["model", "norm_key"], _DELETE, "model.norm_key: missing"),
        (
            ["model", "action_dims", "gripper"],
            3,
            "model.action_dims.gripper: dim 3 is already used by 'forearm_roll'",
        ),
        (["model", "action_dims", "gripper"], 20, r"model.action_dims.gripper: must be in \[0, 20\)"),
        (
            ["cameras", "devices", "face_view", "fsp"],
            10,
            r"cameras.devices.face_view: unknown key 'fsp' \(did you mean 'fps'\?\)",
        ),
        (
            ["cameras", "devices", "left_wrist_view", "view"],
            "face_view",
            r"model view\(s\) \['face_view'\] fed by more than one camera",
        ),
        (["safety", "max_steps"], 0.2, "safety.max_steps: unknown field"),
        (["safety", "max_step"], -1, "safety.max_step"),
        (["safety", "safe_pose", "elbow"], 3.0, r"safety.safe_pose.elbow: 3.0 is not inside \[-0.2, 2.5\]"),
        (["safety", "safe_pose", "waist"], _DELETE, "safety.safe_pose.waist: missing"),
        (
            ["safety", "safe_pose"],
            [0.0, 0.1],
            r"safety.safe_pose: expected 7 values \(one per joint\), got 2",
        ),
        (["watchdog_timeout_s"], 0.001, "watchdog_timeout_s: .* shorter than one control period"),
    ],
)
def test_bad_robot_yaml_names_the_field(path: list, value, message: str) -> None:
    with pytest.raises(RobotConfigError, match=message):
        _parse(_mutate(path, value))


def test_bad_connection_block_fails_at_build_naming_the_field() -> None:
    raw = _raw()
    raw["parts"][0]["connection"]["mjfc"] = "typo.xml"
    with pytest.raises(RobotConfigError, match=r"parts\[0\].connection.mjfc: unknown field"):
        build_adapter(_parse(raw))
    raw = _raw()
    raw["parts"][0]["connection"]["mjcf"] = "missing.xml"
    with pytest.raises(RobotConfigError, match=r"connection\.mjcf: no such file"):
        build_adapter(_parse(raw))
    raw = _raw()
    # limits the model cannot honour (wider than the MJCF joint range) are refused
    raw["joint_limits"]["waist"]["max_position"] = 3.0
    with pytest.raises(RobotConfigError, match=r"joint_limits\.waist: .* wider than the MJCF joint range"):
        build_adapter(_parse(raw))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RobotConfigError, match=r"no such robot\.yaml"):
        load_robot(tmp_path / "nope.yaml")
    bad = tmp_path / "robot.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(RobotConfigError, match="not valid YAML"):
        load_robot(bad)
    bad.write_text(yaml.safe_dump(copy.deepcopy([1, 2])))
    with pytest.raises(RobotConfigError, match="expected a mapping"):
        load_robot(bad)
