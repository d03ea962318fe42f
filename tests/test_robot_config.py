"""robot.yaml loading: every shipped robot loads, and each kind of mistake names its field."""

from __future__ import annotations

import copy
from pathlib import Path

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
    (arm,) = cfg.mapping.arms
    assert (arm.slot, arm.arm) == ("left", "arm")  # the checkpoint's left arm, the kinematics' `arm`
    assert arm.gripper.joint == "gripper" and arm.gripper.robot == (0.0, 0.04)
    assert arm.gripper.to_model(0.02) == pytest.approx(0.5)
    assert cfg.kinematics["arm"]["tool"] == {"site": "ee"}
    assert list(cfg.cameras["devices"]) == ["face_view", "left_wrist_view"]
    assert cfg.safety["max_step"]["gripper"] == 0.01
    assert cfg.safe_pose == (0.0, 0.0, 0.8, 0.0, 0.6, 0.0, 0.02)
    assert cfg.ee_limits.max_linear_speed == 1.0
    spec = cfg.spec()
    assert spec.control_hz == 30 and spec.dof == 7
    assert spec.upper[6] == pytest.approx(0.04) and spec.lower[2] == pytest.approx(-0.2)


@pytest.mark.parametrize("name", sorted(p.name for p in ROBOTS.iterdir() if (p / "robot.yaml").is_file()))
def test_every_shipped_robot_yaml_loads(name: str) -> None:
    cfg = load_robot(ROBOTS / name)
    assert cfg.name == name or name == "_template"
    assert len(cfg.joints) == sum(len(p.joints) for p in cfg.parts)


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
        (["model", "action_dims"], {"waist": 0}, "model.action_dims: raw dim indices are gone"),
        (
            ["model", "arms", "left", "arm"],
            "elbow",
            "model.arms.left.arm: 'elbow' is not an arm of the kinematics",
        ),
        (
            ["model", "arms", "middle"],
            {"arm": "arm"},
            "model.arms.middle: the checkpoints' arm slots are left, right",
        ),
        (
            ["model", "arms", "left", "gripper", "joint"],
            "claw",
            "model.arms.left.gripper.joint: 'claw' is not a joint",
        ),
        (
            ["model", "arms", "left", "gripper", "robot"],
            [0.0, 0.0],
            "model.arms.left.gripper.robot: closed and open",
        ),
        (
            ["model", "head"],
            ["waist", "elbow"],
            "model.arms.left: joint 'waist' of arm 'arm' also fills another slot",
        ),
        (["model", "height"], "waist", "model.height: 'waist' is a revolute joint, expected prismatic"),
        (["action_type"], "ee_pose", "action_type: gone: a checkpoint's own keys say"),
        (["safety", "watchdog_timeout"], 0.3, "safety.watchdog_timeout: the watchdog has one key"),
        (["safety", "ee", "max_linear_speed"], -1, "safety.ee.max_linear_speed: expected a positive number"),
        (
            ["safety", "ee", "workspace"],
            {"min": [0, 0, 0], "max": [1, 1]},
            "safety.ee.workspace: min and max",
        ),
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
