"""`wall-runtime cameras snapshot` on a robot.yaml whose cameras are video files; `calibrate intrinsics`."""

from __future__ import annotations

import cv2
import yaml
from typer.testing import CliRunner

from tests.camera_media import distinct_frame, write_video
from wall_runtime.cli import app


def test_snapshot_writes_a_mosaic_with_stamps(tmp_path):
    for name in ("a", "b"):
        write_video(tmp_path / f"{name}.avi", [distinct_frame(i) for i in range(90)], fps=30)
    robot_yaml = tmp_path / "robot.yaml"
    robot_yaml.write_text(
        yaml.safe_dump(
            {
                "name": "test_arm",
                "cameras": {
                    "max_age": 0.2,
                    "max_skew": 0.04,
                    "devices": {
                        "front": {
                            "type": "opencv",
                            "source": "a.avi",
                            "view": "face_view",
                            "resize": [96, 72],
                        },
                        "wrist": {"type": "opencv", "source": "b.avi", "rotation": 180},
                    },
                },
            }
        )
    )
    out = tmp_path / "snap.png"
    result = CliRunner().invoke(
        app, ["cameras", "snapshot", "--config", str(robot_yaml), "--out", str(out), "--seconds", "0.5"]
    )
    assert result.exit_code == 0, result.output
    assert "in sync" in result.output and "front -> face_view" in result.output and "fps" in result.output
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 240 and img.shape[1] > 2 * 160


def test_snapshot_names_the_bad_field(tmp_path):
    robot_yaml = tmp_path / "robot.yaml"
    robot_yaml.write_text(
        yaml.safe_dump({"cameras": {"devices": {"front": {"type": "opencv", "source": 0, "fsp": 30}}}})
    )
    result = CliRunner().invoke(app, ["cameras", "snapshot", "--config", str(robot_yaml)])
    assert result.exit_code == 2
    assert "cameras.devices.front: unknown key 'fsp'" in result.output


def test_cameras_list_runs_without_devices():
    result = CliRunner().invoke(app, ["cameras", "list"])
    assert result.exit_code == 0, result.output
