"""Calibration on synthetic images rendered from known intrinsics and poses."""

from __future__ import annotations

import functools
import time

import cv2
import numpy as np
import pytest

from wall_runtime.calibration.boards import BoardError, BoardSpec
from wall_runtime.calibration.handeye import (
    HandEye,
    calibrate_hand_eye,
    pose_from_xyz_quat,
    rotation_angle_deg,
)
from wall_runtime.calibration.intrinsics import CalibrationError, Intrinsics, board_pose, calibrate_intrinsics
from wall_runtime.calibration.joints import JointCalibration, calibrate_joints
from wall_runtime.calibration.results import CalibrationFileError
from wall_runtime.calibration.synthetic import look_at, render_board
from wall_runtime.robot import JointSpec, RobotAdapter, RobotSpec
from wall_runtime.types import RobotState

K_TRUE = np.array([[615.0, 0, 322.5], [0, 612.0, 238.0], [0, 0, 1]])
SIZE = (640, 480)


def board_views(board: BoardSpec, n: int, seed: int, k: np.ndarray = K_TRUE, noise: float = 1.0):
    """Images of the board from varied viewpoints, with their true board->camera poses."""
    rng = np.random.default_rng(seed)
    centre = np.array([*np.array(board.size_m) / 2, 0.0])
    images, poses = [], []
    while len(images) < n:
        eye = centre + np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2), -rng.uniform(0.38, 0.55)])
        cam_in_board = look_at(eye, centre + rng.uniform(-0.03, 0.03, 3) * [1, 1, 0], rng.uniform(-0.4, 0.4))
        board_in_cam = np.linalg.inv(cam_in_board)
        rvec = cv2.Rodrigues(board_in_cam[:3, :3])[0]
        img = render_board(board, k, rvec, board_in_cam[:3, 3], SIZE, noise_std=noise, rng=rng)
        images.append(img)
        poses.append(board_in_cam)
    return images, poses


@functools.cache
def calibrated(spec: str) -> Intrinsics:
    """Intrinsics calibrated from 10 rendered views (shared by the tests that need a calibration)."""
    board = BoardSpec.parse(spec)
    return calibrate_intrinsics(board, board_views(board, 10, seed=3)[0])


@pytest.mark.parametrize("spec", ["checkerboard:10x7:0.03", "charuco:10x7:0.03:0.022"])
def test_intrinsics_recover_focal_length(spec, tmp_path):
    intr = calibrated(spec)
    assert intr.views_used == 10
    print(
        f"{spec}: fx error {100 * (intr.fx / K_TRUE[0, 0] - 1):+.3f} %, fy {100 * (intr.fy / K_TRUE[1, 1] - 1):+.3f} %"
    )
    assert abs(intr.fx / K_TRUE[0, 0] - 1) < 0.005, intr.fx
    assert abs(intr.fy / K_TRUE[1, 1] - 1) < 0.005, intr.fy
    assert np.allclose(intr.camera_matrix[:2, 2], K_TRUE[:2, 2], atol=3.0)
    assert intr.rms_px < 0.5
    path = intr.save(tmp_path / "calibration" / "arm" / "intrinsics_wrist.yaml")
    back = Intrinsics.load(path)
    np.testing.assert_allclose(back.camera_matrix, intr.camera_matrix)
    assert back.rms_px == pytest.approx(intr.rms_px) and back.image_size == SIZE


def test_too_few_views_is_an_error():
    board = BoardSpec.parse("checkerboard:10x7:0.03")
    blank = [np.full((480, 640, 3), 128, np.uint8)] * 3
    with pytest.raises(CalibrationError, match="found in 0 of 3 images"):
        calibrate_intrinsics(board, blank)


def random_rotation(rng, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return cv2.Rodrigues(axis * np.radians(rng.uniform(-max_deg, max_deg)))[0]


@pytest.mark.parametrize(
    ("mode", "spec"),
    [
        ("eye-in-hand", "charuco:10x7:0.03:0.022"),
        ("eye-to-hand", "charuco:10x7:0.03:0.022"),
        ("eye-in-hand", "checkerboard:10x7:0.03"),  # squares_x + squares_y odd: orientation is unique
    ],
)
def test_hand_eye_recovers_the_mounting(mode, spec, tmp_path):
    """Robot poses + rendered images from a camera mounted with a known transform."""
    rng = np.random.default_rng(7 if mode == "eye-in-hand" else 11)
    board = BoardSpec.parse(spec)
    intr = calibrated(spec)
    x_true = np.eye(4)  # camera in gripper (eye-in-hand) or in base (eye-to-hand)
    x_true[:3, :3] = random_rotation(rng, 30)
    x_true[:3, 3] = [0.03, -0.05, 0.08] if mode == "eye-in-hand" else [0.6, 0.2, 0.5]
    fixed = np.eye(4)  # board in base (eye-in-hand) or board in gripper (eye-to-hand)
    fixed[:3, :3] = random_rotation(rng, 20)
    fixed[:3, 3] = [0.5, 0.0, 0.0] if mode == "eye-in-hand" else [0.0, 0.02, 0.1]
    centre = np.array([*np.array(board.size_m) / 2, 0.0])
    robot_poses, board_poses = [], []
    for _ in range(12):
        # varied viewing directions and rolls: hand-eye translation is only as good as the rotations
        eye = centre + np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.25, 0.25), -rng.uniform(0.35, 0.5)])
        cam_in_board = look_at(eye, centre, rng.uniform(-1.2, 1.2))
        board_in_cam = np.linalg.inv(cam_in_board)
        if mode == "eye-in-hand":  # T_base_cam = fixed · cam_in_board; T_base_gripper = T_base_cam · X^-1
            gripper = fixed @ cam_in_board @ np.linalg.inv(x_true)
        else:  # T_base_board = X · board_in_cam; T_base_gripper = T_base_board · fixed^-1
            gripper = x_true @ board_in_cam @ np.linalg.inv(fixed)
        rvec = cv2.Rodrigues(board_in_cam[:3, :3])[0]
        img = render_board(board, K_TRUE, rvec, board_in_cam[:3, 3], SIZE, noise_std=1.0, rng=rng)
        robot_poses.append(gripper)
        board_poses.append(board_pose(board, img, intr))
    result = calibrate_hand_eye(robot_poses, board_poses, mode=mode)
    rot_err = rotation_angle_deg(result.transform[:3, :3].T @ x_true[:3, :3])
    trans_err_mm = 1000 * np.linalg.norm(result.transform[:3, 3] - x_true[:3, 3])
    print(
        f"{mode} {spec}: rotation error {rot_err:.4f} deg, translation error {trans_err_mm:.3f} mm ({result.method})"
    )
    assert rot_err < 0.5, rot_err
    assert trans_err_mm < 2.0, trans_err_mm
    assert result.residual_trans_mm < 5 and result.residual_rot_deg < 1
    back = HandEye.load(result.save(tmp_path / "hand_eye_wrist.yaml"))
    np.testing.assert_allclose(back.transform, result.transform)
    assert back.mode == mode


def test_hand_eye_rejects_bad_input():
    with pytest.raises(CalibrationError, match="seen in 2 views"):
        calibrate_hand_eye([np.eye(4)] * 3, [np.eye(4), None, np.eye(4)])
    with pytest.raises(CalibrationError, match="3 robot poses but 2 images"):
        calibrate_hand_eye([np.eye(4)] * 3, [np.eye(4)] * 2)
    bad = np.eye(4)
    bad[0, 0] = 2
    with pytest.raises(CalibrationError, match="robot pose 1 is not"):
        calibrate_hand_eye([np.eye(4), bad, np.eye(4)], [np.eye(4)] * 3)


def test_quaternion_pose_and_board_parsing():
    t = pose_from_xyz_quat([1, 2, 3], [0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    np.testing.assert_allclose(t[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(t[:3, 3], [1, 2, 3])
    assert BoardSpec.parse("charuco:8x6:0.04:0.03:DICT_4X4_50").dictionary == "DICT_4X4_50"
    with pytest.raises(BoardError, match="expected checkerboard"):
        BoardSpec.parse("checkerboard:9by6")
    with pytest.raises(BoardError, match="smaller than the square"):
        BoardSpec.parse("charuco:8x6:0.04:0.05")


def test_result_files_are_checked(tmp_path):
    (tmp_path / "x.yaml").write_text("kind: hand_eye\nversion: 1\n")
    with pytest.raises(CalibrationFileError, match="expected a 'camera_intrinsics'"):
        Intrinsics.load(tmp_path / "x.yaml")
    with pytest.raises(CalibrationFileError, match="mode must be"):
        HandEye.load(tmp_path / "x.yaml")
    with pytest.raises(CalibrationFileError, match="no such calibration file"):
        Intrinsics.load(tmp_path / "missing.yaml")


class ServoArm(RobotAdapter):
    """A servo arm whose encoders read ``true angle + mounting offset`` with noise; a motion thread
    plays the operator moving it, like a torque-off SO-100 being moved by hand."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.spec = RobotSpec(
            name="so100",
            joints=tuple(JointSpec(f"j{i}", "revolute", "rad") for i in range(len(offsets))),
            control_hz=50,
        )
        self.offsets = offsets
        self.angle = np.zeros(len(offsets))
        self.rng = np.random.default_rng(0)

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def hold(self) -> None: ...
    def command(self, target: np.ndarray) -> None:
        raise AssertionError("calibration must never command the arm")

    def read_state(self) -> RobotState:
        pos = self.angle + self.offsets + self.rng.normal(0, 1e-3, len(self.offsets))
        return RobotState(stamp=time.monotonic(), position=pos)


def test_joint_calibration_records_offsets_and_ranges(tmp_path):
    offsets = np.array([0.3, -0.2, 1.1, 0.05])
    lo, hi = np.array([-1.5, -0.5, -2.0, 0.0]), np.array([1.5, 2.0, 0.5, 1.2])
    arm = ServoArm(offsets)
    prompts = []

    def operator(prompt: str) -> None:
        prompts.append(prompt)
        if "Step 2/2" in prompt:  # sweep every joint end stop to end stop
            for s in np.concatenate([np.linspace(0, 1, 40), np.linspace(1, 0, 40)]):
                arm.angle = lo + s * (hi - lo)
                time.sleep(0.004)
            arm.angle = np.zeros(4)

    cal = calibrate_joints(arm, operator, hz=400)
    assert len(prompts) == 2 and "ZERO pose" in prompts[0]
    np.testing.assert_allclose(cal.zero_offset, offsets, atol=1e-3)
    np.testing.assert_allclose(cal.range_min, lo, atol=0.01)
    np.testing.assert_allclose(cal.range_max, hi, atol=0.01)
    assert np.all(cal.zero_std < 3e-3)
    back = JointCalibration.load(cal.save(tmp_path / "so100" / "joints.yaml"))
    np.testing.assert_allclose(back.apply(arm.read_state().position), arm.angle, atol=5e-3)


def test_joint_that_never_moved_is_reported():
    arm = ServoArm(np.zeros(3))

    def operator(prompt: str) -> None:
        if "Step 2/2" in prompt:
            for s in np.linspace(0, 1, 30):
                arm.angle = np.array([s, 0.0, -s])
                time.sleep(0.004)

    with pytest.raises(CalibrationError, match=r"\['j1'\] moved less"):
        calibrate_joints(arm, operator, hz=400)


def test_calibrate_intrinsics_command(tmp_path):
    from typer.testing import CliRunner

    from wall_runtime.cli import app

    board = BoardSpec.parse("checkerboard:10x7:0.03")
    images, _ = board_views(board, 6, seed=9)
    (tmp_path / "imgs").mkdir()
    for i, img in enumerate(images):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    args = [
        "calibrate",
        "intrinsics",
        "--images",
        str(tmp_path / "imgs"),
        "--board",
        "checkerboard:10x7:0.03",
    ]
    args += ["--robot", "arm", "--camera", "wrist", "--root", str(tmp_path / "calibration")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    intr = Intrinsics.load(tmp_path / "calibration" / "arm" / "intrinsics_wrist.yaml")
    assert abs(intr.fx / K_TRUE[0, 0] - 1) < 0.005 and "reprojection RMS" in result.output
    bad = CliRunner().invoke(app, [*args[:5], "checkerboard:10x7", *args[6:]])
    assert bad.exit_code == 2 and "board 'checkerboard:10x7'" in bad.output


def test_capture_then_load_robot_calibration(tmp_path):
    """`calibrate capture` from a camera in robot.yaml (a video of the board), then the runtime loader."""
    import yaml
    from typer.testing import CliRunner

    from tests.camera_media import write_video
    from wall_runtime.calibration import load_robot_calibration
    from wall_runtime.cli import app

    board = BoardSpec.parse("checkerboard:10x7:0.03")
    images, _ = board_views(board, 3, seed=2)
    rng = np.random.default_rng(0)
    # sensor noise on every frame, as a real camera has: identical frames would read as frozen
    frames = [
        np.clip(im + rng.normal(0, 2, im.shape), 0, 255).astype(np.uint8) for im in images for _ in range(30)
    ]
    write_video(tmp_path / "board.avi", frames, fps=30)
    (tmp_path / "robot.yaml").write_text(
        yaml.safe_dump(
            {"cameras": {"devices": {"wrist": {"type": "opencv", "source": "board.avi", "resize": [64, 48]}}}}
        )
    )
    args = ["calibrate", "capture", "--config", str(tmp_path / "robot.yaml"), "--camera", "wrist"]
    args += ["--out", str(tmp_path / "shots"), "--board", "checkerboard:10x7:0.03"]
    result = CliRunner().invoke(app, args, input="\n\nq\n")
    assert result.exit_code == 0, result.output
    assert "board found: 54 corners" in result.output
    shots = sorted((tmp_path / "shots").glob("*.png"))
    assert len(shots) == 2 and cv2.imread(str(shots[0])).shape == (480, 640, 3)  # raw, not resized

    assert load_robot_calibration("arm", tmp_path / "calibration").intrinsics == {}
    intr = calibrated("checkerboard:10x7:0.03")
    intr.save(tmp_path / "calibration" / "arm" / "intrinsics_wrist.yaml")
    loaded = load_robot_calibration("arm", tmp_path / "calibration")
    assert set(loaded.intrinsics) == {"wrist"} and loaded.joints is None


def test_calibrate_joints_on_a_limp_arm_writes_the_offsets_the_adapter_loads(tmp_path, monkeypatch):
    """`calibrate joints --robot`: the emulated SO-100 with torque off, moved "by hand" (the test
    sets the servos' positions), its zero ticks written to calibration/so100/joints.yaml, and the
    Feetech adapter built afterwards reads that pose as zero."""
    import time
    from pathlib import Path

    import yaml

    from wall_runtime.adapters.config import load_robot
    from wall_runtime.adapters.emulators import emulated
    from wall_runtime.adapters.registry import build_adapter
    from wall_runtime.calibration.joints import calibrate_robot

    robots = Path(__file__).resolve().parents[1] / "robots"
    with emulated(load_robot(robots / "so100")) as (_, emulators):
        bus = emulators["arm"]
        raw = yaml.safe_load((robots / "so100" / "robot.yaml").read_text())
        raw.pop("cameras")
        raw["parts"][0]["connection"].update(port=bus.port, timeout_margin_ms=100)
        (tmp_path / "robot.yaml").write_text(yaml.safe_dump(raw))
        # this unit's zero pose is not at robot.yaml's placeholder offsets (2048)
        zero = {sid: 2048 + 37 * (sid - 3) for sid in range(1, 7)}
        torque_seen: list[bool] = []

        def operator(prompt: str) -> None:
            torque_seen.extend(bool(bus.get(sid, "torque")) for sid in zero)
            if prompt.startswith("Step 1"):
                for sid, t in zero.items():
                    bus.set(sid, "position", float(t))
                time.sleep(0.1)
                return
            for k in range(12):  # step 2: every joint through a range and back
                for sid, t in zero.items():
                    bus.set(sid, "position", float(t + (k - 6) * 40))
                time.sleep(0.04)
            for sid, t in zero.items():
                bus.set(sid, "position", float(t))
            time.sleep(0.1)

        cal, path = calibrate_robot(tmp_path / "robot.yaml", operator, tmp_path / "calibration", hz=200)
        assert path == tmp_path / "calibration" / "so100" / "joints.yaml"
        assert torque_seen and not any(torque_seen)  # limp throughout: moved by hand
        names = [j["name"] for j in raw["joints"]]
        assert cal.offset_ticks == pytest.approx({n: float(zero[i + 1]) for i, n in enumerate(names)})
        assert np.all(cal.range_max - cal.range_min > 0.3)

        monkeypatch.setenv("WALL_RUNTIME_CALIBRATION", str(tmp_path / "calibration"))
        arm = build_adapter(load_robot(tmp_path / "robot.yaml"))
        arm.connect()
        try:
            np.testing.assert_allclose(arm.read_state().position, 0.0, atol=1e-9)
        finally:
            arm.disconnect()


def test_calibrate_joints_names_a_robot_it_cannot_find(tmp_path):
    from typer.testing import CliRunner

    from wall_runtime.cli import app

    out = CliRunner().invoke(
        app, ["calibrate", "joints", "--robot", "no_such_robot", "--root", str(tmp_path)]
    )
    assert out.exit_code == 1 and "no_such_robot" in out.output
    out = CliRunner().invoke(app, ["calibrate", "joints", "--robot", "sim_arm", "--root", str(tmp_path)])
    assert out.exit_code == 1 and "torque can be turned off" in out.output
