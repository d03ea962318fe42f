"""`wall-runtime cameras list` and `wall-runtime cameras snapshot`."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import typer
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

console = Console()


def load_cameras_block(robot: str | None, config: Path | None) -> tuple[dict | None, Path]:
    """The ``cameras:`` block of robots/<robot>/robot.yaml (or of ``config``) and its folder."""
    if (robot is None) == (config is None):
        raise typer.BadParameter("give exactly one of --robot NAME or --config PATH/TO/robot.yaml")
    from wall_runtime.robot_files import RobotNotFoundError, resolve_robot

    try:
        path = resolve_robot(config if config is not None else str(robot))
    except RobotNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{path}: expected a mapping at the top level")
    return doc.get("cameras"), path.parent


def register(app: typer.Typer) -> None:
    cameras = typer.Typer(help="Camera discovery and checks.", no_args_is_help=True)
    app.add_typer(cameras, name="cameras")

    @cameras.command("list")
    def list_cameras() -> None:
        """Discover OpenCV (V4L2) and RealSense cameras attached to this machine."""
        from wall_runtime.cameras.opencv import discover_opencv
        from wall_runtime.cameras.realsense import discover_realsense

        table = Table(title="cameras")
        for col in ("type", "source / serial", "details", "status"):
            table.add_column(col)
        rs_devices = discover_realsense()
        for d in rs_devices:
            table.add_row(
                "realsense", str(d["serial"]), f"{d['name']} fw {d['firmware']} usb {d['usb']}", "ok"
            )
        cv_devices = discover_opencv()
        for d in cv_devices:
            details = (
                f"{d.get('width')}x{d.get('height')} @ {d.get('fps')} ({d.get('backend')})"
                if "width" in d
                else ""
            )
            table.add_row("opencv", str(d["source"]), details, str(d["status"]))
        if not rs_devices and not cv_devices:
            console.print("no cameras found (no /dev/video* device that OpenCV can open, no RealSense)")
            return
        console.print(table)

    @cameras.command("snapshot")
    def snapshot(
        robot: str = typer.Option(
            None, "--robot", help="Robot name (./robots/NAME or a shipped robot) or its robot.yaml."
        ),
        config: Path = typer.Option(None, "--config", help="A robot.yaml to read instead."),
        out: Path = typer.Option(Path("snapshot.png"), "--out", help="Mosaic PNG to write."),
        seconds: float = typer.Option(2.0, "--seconds", help="Capture this long to measure rates."),
    ) -> None:
        """Capture all configured cameras and write a mosaic PNG with stamps and measured fps."""
        from wall_runtime.cameras import CameraError, CamerasConfig, SnapshotError, make_group
        from wall_runtime.cameras.config import CameraConfigError
        from wall_runtime.cameras.mosaic import Tile, mosaic

        block, base = load_cameras_block(robot, config)
        side = None
        try:
            cfg = CamerasConfig.from_dict(block)
            if not cfg.cameras:
                raise CameraConfigError("cameras.devices: the robot.yaml has no cameras")
            if any(c.type == "simulated" for c in cfg.cameras):
                # simulated cameras render the robot's simulator: bring the (simulated) robot up with them
                from wall_runtime.e2e.robot_side import load_robot_side
                from wall_runtime.robot_files import resolve_robot

                side = load_robot_side(resolve_robot(config if config is not None else str(robot)))
                from wall_runtime.adapters.registry import SIMULATED_PART_TYPES

                if any(p.type not in SIMULATED_PART_TYPES for p in side.config.parts):
                    raise CameraConfigError(
                        "cameras.devices: simulated cameras on a robot with hardware parts; "
                        "snapshot renders simulated robots only"
                    )
                side.start()
                group = side.cameras
            else:
                group = make_group(cfg, base_dir=base)
                group.start()
        except (CameraConfigError, CameraError, ValueError) as e:
            if side is not None:
                side.close()
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        tiles: list[Tile] = []
        try:
            with Progress(transient=True) as progress:
                task = progress.add_task("capturing", total=seconds)
                t0 = time.monotonic()
                while (el := time.monotonic() - t0) < seconds:
                    progress.update(task, completed=el)
                    time.sleep(0.05)
            now = time.monotonic()
            try:
                snap = group.snapshot(now)
                frames, sync = snap.frames, f"in sync: skew {1000 * snap.skew:.1f} ms"
            except SnapshotError as e:
                frames, sync = {}, f"snapshot refused ({e.reason}): {e}"
            for name, cam in group.cameras.items():
                stats = cam.stats()
                title = f"{name} -> {group.views[name]}"
                try:
                    frame = frames.get(name) or cam.latest(now=now)
                except CameraError as e:
                    tiles.append(Tile(title, (str(e),), None, ok=False))
                    continue
                lines = (
                    f"stamp {frame.stamp:.3f} s  age {1000 * (now - frame.stamp):.0f} ms  #{frame.index}",
                    f"{stats.fps:.1f} fps  dropped {stats.dropped}  repeated {stats.repeated}",
                )
                tiles.append(Tile(title, lines, frame.image, ok=name in frames))
        finally:
            if side is not None:
                side.close()  # its cameras, then the simulator
            else:
                group.stop()
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), cv2.cvtColor(mosaic(tiles), cv2.COLOR_RGB2BGR))
        console.print(sync)
        for t in tiles:
            console.print(f"  {t.title}: {' | '.join(t.lines)}")
        console.print(f"wrote {out}")
