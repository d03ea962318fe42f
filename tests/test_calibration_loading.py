"""calibration/<robot>/ loaded where the robot side is built: intrinsics onto the cameras (and their
undistortion), hand-eye as camera extrinsics, a summary line per file in check-robot.

The files are made by the project's own calibration code: intrinsics calibrated from rendered board
views, hand-eye solved from robot/board pose pairs, on a copy of the shipped sim_arm robot.
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from wall_runtime.calibration.boards import BoardSpec
from wall_runtime.calibration.handeye import calibrate_hand_eye, rotation_angle_deg
from wall_runtime.calibration.intrinsics import Intrinsics, calibrate_intrinsics
from wall_runtime.calibration.results import CalibrationFileError
from wall_runtime.calibration.synthetic import look_at, render_board
from wall_runtime.cameras.base import CameraError
from wall_runtime.e2e.robot_side import load_robot_side

REPO = Path(__file__).resolve().parents[1]
SIZE = (224, 224)  # sim_arm's cameras
K_TRUE = np.array([[210.0, 0, 111.5], [0, 208.0, 112.5], [0, 0, 1]])


@functools.cache
def calibrated() -> Intrinsics:
    """Intrinsics of a 224x224 camera calibrated from 10 rendered checkerboard views."""
    board = BoardSpec.parse("checkerboard:8x6:0.03")
    rng = np.random.default_rng(5)
    centre = np.array([*np.array(board.size_m) / 2, 0.0])
    images = []
    for _ in range(10):
        eye = centre + np.array([rng.uniform(-0.12, 0.12), rng.uniform(-0.1, 0.1), -rng.uniform(0.3, 0.38)])
        board_in_cam = np.linalg.inv(look_at(eye, centre, rng.uniform(-0.3, 0.3)))
        rvec = cv2.Rodrigues(board_in_cam[:3, :3])[0]
        images.append(render_board(board, K_TRUE, rvec, board_in_cam[:3, 3], SIZE, noise_std=1.0, rng=rng))
    return calibrate_intrinsics(board, images)


def random_pose(rng: np.random.Generator, max_deg: float, reach: float) -> np.ndarray:
    axis = rng.normal(size=3)
    t = np.eye(4)
    t[:3, :3] = cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(rng.uniform(-max_deg, max_deg)))[0]
    t[:3, 3] = rng.uniform(-reach, reach, 3)
    return t


def solved_hand_eye(x_true: np.ndarray, mode: str, seed: int):
    """``calibrate_hand_eye`` on 12 robot poses and the board poses a camera at ``x_true`` sees."""
    rng = np.random.default_rng(seed)
    fixed = random_pose(rng, 20, 0.3)  # board in base (eye-in-hand) or board on the gripper
    robot = [random_pose(rng, 35, 0.25) for _ in range(12)]
    if mode == "eye-in-hand":  # T_camera_board = X^-1 T_gripper_base T_base_board
        boards = [np.linalg.inv(x_true) @ np.linalg.inv(r) @ fixed for r in robot]
    else:  # camera fixed at X in the base, board on the gripper
        boards = [np.linalg.inv(x_true) @ r @ fixed for r in robot]
    return calibrate_hand_eye(robot, boards, mode=mode)


@pytest.fixture
def robot_dir(tmp_path, monkeypatch):
    """sim_arm copied to tmp, its calibration root at tmp/calibration."""
    dst = tmp_path / "sim_arm"
    shutil.copytree(REPO / "robots" / "sim_arm", dst)
    monkeypatch.setenv("WALL_RUNTIME_CALIBRATION", str(tmp_path / "calibration"))
    return dst


def cal_dir(robot_dir: Path) -> Path:
    return robot_dir.parent / "calibration" / "sim_arm"


def set_camera(robot_dir: Path, camera: str, **settings) -> None:
    path = robot_dir / "robot.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["cameras"]["devices"][camera].update(settings)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_no_calibration_folder_loads_nothing(robot_dir):
    side = load_robot_side(robot_dir)
    assert side.camera_extrinsics == {} and side.calibration.lines == []
    assert all(c.intrinsics is None for c in side.cameras.cameras.values())


def test_intrinsics_and_hand_eye_arrive_on_the_robot_side(robot_dir):
    intr = calibrated()
    assert abs(intr.fx / K_TRUE[0, 0] - 1) < 0.01 and intr.rms_px < 0.5, (intr.fx, intr.rms_px)
    intr.save(cal_dir(robot_dir) / "intrinsics_face_view.yaml")
    x_wrist = random_pose(np.random.default_rng(1), 30, 0.08)
    x_face = random_pose(np.random.default_rng(2), 40, 0.6)
    solved_hand_eye(x_wrist, "eye-in-hand", 3).save(cal_dir(robot_dir) / "hand_eye_left_wrist_view.yaml")
    solved_hand_eye(x_face, "eye-to-hand", 4).save(cal_dir(robot_dir) / "hand_eye_face_view.yaml")

    side = load_robot_side(robot_dir)
    face = side.cameras.cameras["face_view"]
    np.testing.assert_allclose(face.intrinsics.camera_matrix, intr.camera_matrix)
    assert face.intrinsics.image_size == SIZE
    assert face.transform.undistort is None  # attached, but not applied: the config did not ask
    assert side.cameras.cameras["left_wrist_view"].intrinsics is None
    for view, x_true, frame in (("left_wrist_view", x_wrist, "gripper"), ("face_view", x_face, "base")):
        got = side.camera_extrinsics[view]
        assert got.shape == (4, 4) and side.calibration.camera_frames[view] == frame
        assert np.linalg.norm(got[:3, 3] - x_true[:3, 3]) < 1e-6
        assert rotation_angle_deg(got[:3, :3].T @ x_true[:3, :3]) < 1e-4
    lines = side.calibration.lines
    assert len(lines) == 3 and "intrinsics_face_view.yaml: intrinsics of 'face_view' 224x224" in lines[0]


def straightness_px(image: np.ndarray) -> float:
    """Largest distance (px) of a bright line's per-column centre from the straight line fitted to it."""
    gray = image[..., 0].astype(np.float64)
    cols = [x for x in range(30, 195) if gray[:, x].sum() > 50]
    rows = np.arange(gray.shape[0])
    centres = np.array([(gray[:, x] * rows).sum() / gray[:, x].sum() for x in cols])
    fit = np.polyval(np.polyfit(cols, centres, 1), cols)
    return float(np.abs(centres - fit).max())


def test_undistort_makes_a_straight_line_straight(robot_dir):
    """A lens with known barrel distortion bends a straight line; the camera's undistort transform
    (maps from the intrinsics file, cv2.remap) straightens it again."""
    k = calibrated().camera_matrix
    dist = np.array([-0.3, 0.09, 0.0, 0.0, 0.0])
    lens = Intrinsics(k, dist, SIZE, rms_px=0.1, per_view_px=(), views_used=10)
    lens.save(cal_dir(robot_dir) / "intrinsics_face_view.yaml")
    set_camera(robot_dir, "face_view", undistort=True)

    # a straight line near the top of the ideal image, seen through the distorting lens
    ideal = np.column_stack([np.linspace(5, 219, 800), np.linspace(30, 50, 800)])
    normalised = cv2.undistortPoints(ideal.reshape(-1, 1, 2), k, None).reshape(-1, 2)
    seen, _ = cv2.projectPoints(
        np.column_stack([normalised, np.ones(len(normalised))]), np.zeros(3), np.zeros(3), k, dist
    )
    raw = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    cv2.polylines(
        raw, [np.round(seen.reshape(-1, 2) * 16).astype(np.int32)], False, (255,) * 3, 1, cv2.LINE_AA, 4
    )

    side = load_robot_side(robot_dir)
    cam = side.cameras.cameras["face_view"]
    assert cam.transform.undistort is not None
    fixed, _ = cam.transform.apply(raw)
    before, after = straightness_px(raw), straightness_px(fixed)
    print(f"line straightness: distorted {before:.2f} px, undistorted {after:.2f} px")
    assert before > 2.0 and after < 0.3, (before, after)

    # in the capture chain: the sim's rendered frames come through undistorted at the configured size
    side.start()
    try:
        frame = cam.wait_for(-1, timeout=10.0)
        raw_render = side.adapter.render("face_view", *SIZE)  # the arm stands still: same scene
        assert frame.image.shape == (224, 224, 3)
        diff_raw = np.abs(frame.image.astype(int) - raw_render).mean()
        diff_undistorted = np.abs(frame.image.astype(int) - cam.transform.undistort.apply(raw_render)).mean()
        print(
            f"capture vs raw render {diff_raw:.2f}, vs undistorted render {diff_undistorted:.2f} (mean |grey|)"
        )
        assert diff_undistorted < 0.5 < diff_raw
    finally:
        side.close()


def test_wrong_size_intrinsics_is_refused_naming_the_file(robot_dir):
    path = calibrated().save(cal_dir(robot_dir) / "intrinsics_face_view.yaml")
    set_camera(robot_dir, "face_view", width=320, height=240)
    with pytest.raises(CalibrationFileError) as err:
        load_robot_side(robot_dir)
    msg = str(err.value)
    assert str(path) in msg and "224x224" in msg and "320x240" in msg and "\n" not in msg


def test_bad_files_are_one_line_errors_naming_them(robot_dir):
    he = solved_hand_eye(random_pose(np.random.default_rng(1), 30, 0.08), "eye-in-hand", 3)
    path = he.save(cal_dir(robot_dir) / "hand_eye_left_wrist_view.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["matrix"][0][0] = 3.0  # not a rotation any more
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        CalibrationFileError, match=f"^{re.escape(str(path))}: matrix is not a rigid transform$"
    ):
        load_robot_side(robot_dir)
    path.unlink()
    stray = he.save(cal_dir(robot_dir) / "hand_eye_elbow.yaml")
    with pytest.raises(
        CalibrationFileError, match=f"^{re.escape(str(stray))}: robot.yaml has no camera 'elbow'"
    ):
        load_robot_side(robot_dir)
    stray.unlink()
    set_camera(robot_dir, "face_view", undistort=True)  # asks for a calibration it does not have
    with pytest.raises(
        CameraError, match=r"undistort: true but has no calibration .*intrinsics_face_view\.yaml"
    ):
        load_robot_side(robot_dir)


@pytest.mark.slow  # the full sim conformance run, a few seconds
def test_check_robot_lists_the_calibration_files(robot_dir):
    from typer.testing import CliRunner

    from wall_runtime.cli import app

    calibrated().save(cal_dir(robot_dir) / "intrinsics_face_view.yaml")
    solved_hand_eye(random_pose(np.random.default_rng(1), 30, 0.08), "eye-in-hand", 3).save(
        cal_dir(robot_dir) / "hand_eye_left_wrist_view.yaml"
    )
    ok = CliRunner().invoke(app, ["check-robot", str(robot_dir)], env={"COLUMNS": "250"})
    assert ok.exit_code == 0, ok.output
    cal_lines = [ln for ln in ok.output.splitlines() if ln.startswith("calibration: ")]
    assert len(cal_lines) == 2, ok.output
    assert (
        "intrinsics of 'face_view'" in cal_lines[0]
        and "'left_wrist_view' pose in the gripper" in cal_lines[1]
    )

    set_camera(robot_dir, "face_view", width=320, height=240)
    bad = CliRunner().invoke(app, ["check-robot", str(robot_dir)], env={"COLUMNS": "250"})
    assert bad.exit_code == 2 and "intrinsics_face_view.yaml: intrinsics are for 224x224" in bad.output


def test_display_draws_a_fixed_cameras_calibrated_pose(robot_dir, tmp_path):
    """An eye-to-hand result reaches the rerun view as the camera's pose in the 3D world."""
    pytest.importorskip("rerun", reason="rerun-sdk is not installed (the display extra)")
    from rerun.chunk import RrdReader

    from wall_runtime.recording.rerun_view import DisplayOptions, open_view

    x_face = random_pose(np.random.default_rng(2), 40, 0.6)
    solved_hand_eye(x_face, "eye-to-hand", 4).save(cal_dir(robot_dir) / "hand_eye_face_view.yaml")
    solved_hand_eye(x_face, "eye-in-hand", 5).save(cal_dir(robot_dir) / "hand_eye_left_wrist_view.yaml")
    side = load_robot_side(robot_dir)
    assert set(side.fixed_camera_poses) == {"face_view"}  # the wrist camera moves with the gripper
    rrd = tmp_path / "view.rrd"
    view = open_view(
        side.adapter.spec, DisplayOptions(save=rrd), name="t", camera_poses=side.fixed_camera_poses
    )
    assert view is not None
    view.close()
    static = {c.entity_path.lstrip("/") for c in RrdReader(rrd).stream() if c.is_static}
    assert "world/cameras/face_view" in static and "world/cameras/left_wrist_view" not in static
