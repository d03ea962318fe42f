"""`wall-runtime calibrate intrinsics | hand-eye | joints`: guided calibration flows.

Results go to ``calibration/<robot>/`` (``--root`` to change): ``intrinsics_<camera>.yaml``,
``hand_eye_<camera>.yaml``, ``joints.yaml``, each with its error figure.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import typer
import yaml
from rich.console import Console
from rich.progress import track

console = Console()
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def read_images(folder: Path) -> tuple[list[Path], list[np.ndarray]]:
    paths = (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    )
    if not paths:
        raise typer.BadParameter(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for p in track(paths, description="reading images", transient=True):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise typer.BadParameter(f"{p}: not a readable image")
        images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return paths, images


def read_robot_poses(path: Path) -> list[np.ndarray]:
    """A YAML list, one entry per image in name order: a 4x4 matrix or {xyz: [..], quat_xyzw: [..]}."""
    from wall_runtime.calibration.handeye import pose_from_xyz_quat

    doc = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(doc, list):
        raise typer.BadParameter(f"{path}: expected a YAML list of poses (T_base_gripper), one per image")
    poses = []
    for i, entry in enumerate(doc):
        try:
            if isinstance(entry, dict):
                poses.append(pose_from_xyz_quat(entry["xyz"], entry["quat_xyzw"]))
            else:
                m = np.asarray(entry, float)
                if m.shape != (4, 4):
                    raise ValueError(f"shape {m.shape}")
                poses.append(m)
        except (KeyError, TypeError, ValueError) as e:
            raise typer.BadParameter(
                f"{path}: pose {i}: expected a 4x4 matrix or xyz + quat_xyzw ({e})"
            ) from e
    return poses


def _fail(e: Exception) -> typer.Exit:
    console.print(f"[red]calibration failed:[/red] {e}")
    return typer.Exit(1)


def register(app: typer.Typer) -> None:
    cal = typer.Typer(help="Camera intrinsics, hand-eye and joint calibration.", no_args_is_help=True)
    app.add_typer(cal, name="calibrate")

    @cal.command("capture")
    def capture(
        camera: str = typer.Option(..., "--camera", help="Camera name in the robot.yaml cameras block."),
        out: Path = typer.Option(..., "--out", help="Folder for the captured PNGs."),
        robot: str = typer.Option(None, "--robot", help="Robot name: reads robots/<name>/robot.yaml."),
        config: Path = typer.Option(None, "--config", help="A robot.yaml to read instead."),
        board: str = typer.Option(None, "--board", help="Check each view for this board before saving it."),
    ) -> None:
        """Capture calibration images from a configured camera, one per Enter (raw, untransformed)."""
        from dataclasses import replace

        from wall_runtime.calibration.boards import BoardError, BoardSpec, detect
        from wall_runtime.cameras import CameraConfigError, CameraError, CamerasConfig, make_camera
        from wall_runtime.cameras.commands import load_cameras_block

        block, base = load_cameras_block(robot, config)
        try:
            spec = BoardSpec.parse(board) if board else None
            cfgs = {c.name: c for c in CamerasConfig.from_dict(block).cameras}
            if camera not in cfgs:
                raise CameraConfigError(f"cameras.devices: no camera {camera!r} (have {sorted(cfgs)})")
            # Calibrate the sensor's own image: no rotation, crop or resize.
            cam = make_camera(replace(cfgs[camera], rotation=0, crop=None, resize=None), base_dir=base)
            cam.start()
        except (BoardError, CameraConfigError, CameraError) as e:
            raise typer.BadParameter(str(e)) from e
        out.mkdir(parents=True, exist_ok=True)
        saved = len(list(out.glob("*.png")))
        console.print(
            "Show the board at many angles and distances, covering the image corners; "
            "keep it still for each shot (10-30 views)."
        )
        try:
            while True:
                answer = typer.prompt(
                    f"[{saved} saved] Enter = capture, q = finish", default="", show_default=False
                )
                if answer.strip().lower() == "q":
                    break
                try:
                    frame = cam.latest(max_age=0.5)
                except CameraError as e:
                    console.print(f"[red]not captured:[/red] {e}")
                    continue
                if spec is not None:
                    found = detect(spec, frame.image)
                    if found is None:
                        console.print("[yellow]board not found in this view: not saved[/yellow]")
                        continue
                    console.print(f"board found: {len(found.ids)} corners")
                path = out / f"{saved:03d}.png"
                cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
                saved += 1
        finally:
            cam.stop()
        console.print(f"{saved} images in {out}")

    @cal.command("intrinsics")
    def intrinsics(
        images: Path = typer.Option(..., "--images", help="Folder of board images from one camera."),
        board: str = typer.Option(
            ..., "--board", help="checkerboard:10x7:0.025 or charuco:10x7:0.04:0.03[:DICT]"
        ),
        robot: str = typer.Option(..., "--robot", help="Robot name (result folder)."),
        camera: str = typer.Option(..., "--camera", help="Camera name, as in robot.yaml."),
        root: Path = typer.Option(Path("calibration"), "--root", help="Calibration results root."),
    ) -> None:
        """Intrinsics from 10-30 images of a board: fill the frame, tilt it, cover the corners."""
        from wall_runtime.calibration.boards import BoardError, BoardSpec
        from wall_runtime.calibration.intrinsics import CalibrationError, calibrate_intrinsics
        from wall_runtime.calibration.results import result_path

        try:
            spec = BoardSpec.parse(board)
        except BoardError as e:
            raise typer.BadParameter(str(e)) from e
        _, imgs = read_images(images)
        try:
            result = calibrate_intrinsics(spec, imgs)
        except CalibrationError as e:
            raise _fail(e) from e
        out = result.save(result_path(robot, f"intrinsics_{camera}.yaml", root))
        console.print(
            f"fx {result.fx:.2f} fy {result.fy:.2f} cx {result.camera_matrix[0, 2]:.2f} cy {result.camera_matrix[1, 2]:.2f}"
        )
        worst = int(np.argmax(result.per_view_px))
        console.print(
            f"reprojection RMS {result.rms_px:.3f} px over {result.views_used} views "
            f"(worst view {result.per_view_px[worst]:.3f} px)"
        )
        if result.rms_px > 1.0:
            console.print("[yellow]RMS above 1 px: check focus, motion blur and the board size[/yellow]")
        console.print(f"wrote {out}")

    @cal.command("hand-eye")
    def hand_eye(
        images: Path = typer.Option(..., "--images", help="Folder of board images, one per robot pose."),
        poses: Path = typer.Option(..., "--poses", help="YAML list of T_base_gripper, in image-name order."),
        board: str = typer.Option(..., "--board", help="A ChArUco board or an asymmetric checkerboard."),
        intrinsics_file: Path = typer.Option(..., "--intrinsics", help="intrinsics_<camera>.yaml"),
        robot: str = typer.Option(..., "--robot"),
        camera: str = typer.Option(..., "--camera"),
        mode: str = typer.Option("eye-in-hand", "--mode", help="eye-in-hand | eye-to-hand"),
        root: Path = typer.Option(Path("calibration"), "--root"),
    ) -> None:
        """Camera-to-gripper (eye-in-hand) or camera-to-base (eye-to-hand) transform."""
        from wall_runtime.calibration.boards import BoardError, BoardSpec
        from wall_runtime.calibration.handeye import MODES, calibrate_hand_eye
        from wall_runtime.calibration.intrinsics import CalibrationError, Intrinsics, board_pose
        from wall_runtime.calibration.results import CalibrationFileError, result_path

        if mode not in MODES:
            raise typer.BadParameter(f"--mode must be one of {MODES}")
        try:
            spec = BoardSpec.parse(board)
            intr = Intrinsics.load(intrinsics_file)
        except (BoardError, CalibrationFileError) as e:
            raise typer.BadParameter(str(e)) from e
        if not spec.orientation_unique:
            raise typer.BadParameter(
                f"{board}: this checkerboard looks the same turned 180°; use ChArUco or squares_x + squares_y odd"
            )
        paths, imgs = read_images(images)
        robot_poses = read_robot_poses(poses)
        if len(robot_poses) != len(imgs):
            raise typer.BadParameter(f"{len(imgs)} images but {len(robot_poses)} poses in {poses}")
        board_poses = [board_pose(spec, img, intr) for img in track(imgs, description="board poses")]
        for p, b in zip(paths, board_poses, strict=True):
            if b is None:
                console.print(f"[yellow]board not found in {p.name}: view skipped[/yellow]")
        try:
            result = calibrate_hand_eye(robot_poses, board_poses, mode=mode)
        except CalibrationError as e:
            raise _fail(e) from e
        out = result.save(result_path(robot, f"hand_eye_{camera}.yaml", root))
        console.print(
            f"T_{result.frame}_camera ({result.method}):\n{np.array2string(result.transform, precision=4)}"
        )
        console.print(
            f"residual {result.residual_rot_deg:.3f} deg, {result.residual_trans_mm:.2f} mm over {result.views_used} views"
        )
        console.print(f"wrote {out}")

    @cal.command("joints")
    def joints(
        robot: str = typer.Option(..., "--robot", help="robots/<NAME>/robot.yaml, or a robot.yaml path"),
        root: Path = typer.Option(
            Path("calibration"), "--root", help="results go to <root>/<robot>/joints.yaml"
        ),
    ) -> None:
        """Zero offsets and ranges of a servo arm: torque off, the arm moved by hand; the servo ticks
        at each joint's zero are written where the adapters load them (in place of robot.yaml's)."""
        from wall_runtime.calibration.intrinsics import CalibrationError
        from wall_runtime.calibration.joints import calibrate_robot
        from wall_runtime.robot import RobotError

        try:
            result, out = calibrate_robot(
                robot, lambda prompt: typer.prompt(prompt, default="", show_default=False), root
            )
        except (CalibrationError, RobotError, ValueError) as e:
            raise _fail(e) from e
        for i, name in enumerate(result.joints):
            ticks = result.offset_ticks.get(name)
            console.print(
                f"{name}: zero {result.zero_offset[i]:+.4f}"
                + (f" (servo ticks {ticks:.1f})" if ticks is not None else "")
                + f"  range [{result.range_min[i]:+.3f}, {result.range_max[i]:+.3f}]  zero spread {result.zero_std[i]:.4f}"
            )
        console.print(f"wrote {out}")
