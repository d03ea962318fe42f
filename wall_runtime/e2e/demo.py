"""``wall-runtime demo`` on a robot without a task (``--robot sim_arm``): the whole runtime, closed
loop, running free.

A policy server (a tiny WALL-OSS checkpoint shaped for the robot, the torch backend on CPU by
default) on loopback, the simulated arm with its rendered cameras, and the control loop with
smoothing and safety, for a set time or until interrupted, with a live status line and a report.
The same session code drives a physical robot (``wall-runtime run``). The default demo, a trained
policy doing the pick task, is :mod:`wall_runtime.e2e.task_demo`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from wall_runtime.control.estop import EStop, SignalSource
from wall_runtime.control.loop import ControlLoop
from wall_runtime.e2e.robot_side import RobotSide, load_robot_side
from wall_runtime.e2e.session import Session, SessionOptions
from wall_runtime.robot_files import bundled_robots_dir

log = logging.getLogger(__name__)

DEFAULT_ROBOT_NAME = "sim_arm"
# the shipped simulated arm's robot.yaml (package data; the checkout's robots/ when run from source)
DEFAULT_ROBOT = (bundled_robots_dir() or Path("robots")) / DEFAULT_ROBOT_NAME / "robot.yaml"


def default_report_dir(command: str) -> Path:
    """``./runs/<command>-<time>`` under the current directory, wherever the package lives."""
    return Path.cwd() / "runs" / time.strftime(f"{command}-%Y%m%d-%H%M%S")


@dataclass
class DemoOptions:
    robot: str | Path = DEFAULT_ROBOT_NAME  # a name (``./robots/NAME`` or shipped), folder or robot.yaml
    checkpoint: Path | None = None  # default: the robot's tiny demo checkpoint
    variant: str = "flow"
    backend: str = "torch"
    # the demo's random-weight checkpoint gets smooth initial noise (TorchPolicy.smooth_noise)
    backend_options: dict[str, Any] = field(default_factory=lambda: {"noise_knots": 3})
    server: str | None = None  # an external server; default: one in this process on loopback
    duration: float | None = 20.0
    instruction: str = "pick up the red cube and place it in the bowl"
    smoother: str = "crossfade"
    report: Path | None = None
    record: bool = True  # the run as a LeRobot v3 dataset episode, in <report>/dataset
    live: bool = True
    metrics_http: tuple[str, int] | None = None  # serve the robot side's Prometheus metrics here
    display: bool = False  # live rerun view (a spawned viewer, or served when there is no screen)
    display_save: Path | None = None  # the live view written to this .rrd file


def _status_table(loop: ControlLoop, session: Session, started: float) -> Table:
    c = loop.counters
    elapsed = max(time.monotonic() - started, 1e-9)
    stages = session.stages.percentiles()
    table = Table(title=f"wall-runtime demo: {loop.spec.name}", show_header=False, expand=False)
    table.add_row(
        "time",
        f"{elapsed:5.1f} s   control {c['ticks'] / elapsed:5.1f} Hz (target {loop.config.control_hz:g})",
    )
    table.add_row(
        "chunks",
        f"requested {c['requests']}  received {c['chunks_received']}  errors {dict(session.link.errors) or 0}",
    )
    for stage in (
        "policy_preprocess",
        "policy_vision",
        "policy_prefix",
        "policy_denoise",
        "capture_to_chunk",
        "model_edge",
    ):
        if stage in stages:
            s = stages[stage]
            table.add_row(stage.removeprefix("policy_"), f"p50 {s['p50']:7.1f} ms   p95 {s['p95']:7.1f} ms")
    table.add_row("interventions", str(dict(loop.safety.counts) or "none"))
    seams = loop.log.seams(loop.period)
    if seams:
        worst = max(seams, key=lambda s: s.jerk)
        table.add_row("seams", f"{len(seams)}  worst jump {worst.jump:.4f}  jerk {worst.jerk:.1f}")
    table.add_row("watchdog / e-stop", f"{loop.watchdog.trips} / {loop.estop.triggers}")
    return table


def graph_cameras(config: Any) -> str:
    """``view=WxH,...``: the model views and the image sizes the robot's cameras deliver, the static
    shapes an exported-graph backend (onnxruntime, tensorrt) is built for."""
    from wall_runtime.cameras import CamerasConfig

    specs = []
    for cam in CamerasConfig.from_dict(config.cameras).cameras:
        if cam.width is None or cam.height is None:
            raise ValueError(f"cameras.devices.{cam.name}: width and height are needed to size the graphs")
        w, h = cam.transform.output_size(cam.width, cam.height)
        specs.append(f"{cam.view}={w}x{h}")
    return ",".join(specs)


def with_graph_cameras(backend: str, options: dict[str, Any], config: Any) -> dict[str, Any]:
    """``options`` with ``cameras`` sized for the robot when the backend runs exported graphs."""
    if backend in ("onnxruntime", "tensorrt") and "cameras" not in options:
        return {**options, "cameras": graph_cameras(config)}
    return options


@contextlib.contextmanager
def policy_server_process(
    checkpoint: Path, backend: str, backend_options: dict[str, Any], timeout: float = 120.0
) -> Iterator[str]:
    """``wall-runtime serve`` on loopback in its own process, as on a real GPU host: the policy's
    compute never competes with the control loop for the interpreter lock."""
    with tempfile.TemporaryDirectory(prefix="wall-runtime-serve-") as tmp:
        endpoint_file = Path(tmp) / "endpoint"
        cmd = [
            sys.executable,
            "-m",
            "wall_runtime",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--backend",
            backend,
            "--bind",
            "tcp://127.0.0.1:*",
            "--endpoint-file",
            str(endpoint_file),
        ]
        for key, value in backend_options.items():
            cmd += ["-o", f"{key}={value}"]
        log_file = open(Path(tmp) / "server.log", "w+")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not endpoint_file.exists() or not endpoint_file.read_text().strip():
                if proc.poll() is not None:
                    log_file.seek(0)
                    raise RuntimeError(
                        f"the policy server exited ({proc.returncode}):\n{log_file.read()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the policy server did not come up within {timeout:.0f} s")
                time.sleep(0.05)
            yield endpoint_file.read_text().strip()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log_file.close()


def _safe_status(session: Session, started: float) -> Any:
    """The status table; the log it reads grows on the control thread meanwhile, so a render that
    catches it mid-append shows a note instead of ending rich's refresh thread."""
    try:
        return _status_table(session.loop, session, started)
    except (ValueError, IndexError) as exc:
        return f"(status not available this refresh: {exc})"


def run_demo(
    options: DemoOptions, console: Console | None = None, side: RobotSide | None = None
) -> dict[str, Any]:
    """Run the free-running demo (a robot without a task; a task robot's demo is
    :func:`wall_runtime.e2e.task_demo.run_task_demo`); returns the run summary (with ``report`` set
    to the report folder). ``side``: the robot already loaded from ``options.robot``."""
    console = console or Console(stderr=True)
    side = side or load_robot_side(options.robot)
    stack = contextlib.ExitStack()
    with stack:
        endpoint = options.server
        checkpoint = options.checkpoint
        if endpoint is None:
            from wall_runtime.e2e.demo_checkpoint import demo_checkpoint

            if checkpoint is None:
                checkpoint = demo_checkpoint(side.config, options.variant)
            console.print(f"policy: {checkpoint} ({options.backend})")
            backend_options = with_graph_cameras(options.backend, options.backend_options, side.config)
            endpoint = stack.enter_context(
                policy_server_process(checkpoint, options.backend, backend_options)
            )
        console.print(f"robot: {side.config.name} ({side.config.path}); server {endpoint}")
        side.start()
        stack.callback(side.close)
        estop = EStop()
        estop.add(SignalSource())
        stack.callback(estop.close)
        report = options.report or default_report_dir("demo")
        view = None
        if options.display or options.display_save is not None:
            from wall_runtime.recording.rerun_view import DisplayOptions, open_view

            view = open_view(
                side.adapter.spec,
                DisplayOptions(show=options.display, save=options.display_save),
                name=f"demo {side.config.name}",
                forward_kinematics=side.adapter.forward_kinematics,
                views=list(side.cameras.views.values()) if side.cameras is not None else [],
                announce=console.print,
                camera_poses=side.fixed_camera_poses,
            )
            stack.callback(view.close)  # after the session's close (callbacks run last first)
        session = Session(
            side,
            endpoint,
            SessionOptions(
                instruction=options.instruction,
                smoother=options.smoother,
                record_to=Path(report) / "dataset" if options.record else None,
            ),
            estop=estop,
            subscribers=[view] if view is not None else [],
        )
        stack.callback(session.close)
        if options.metrics_http is not None:
            from wall_runtime.e2e.robot_metrics import RobotMetricsServer

            metrics = RobotMetricsServer(session.loop, side.config.name, *options.metrics_http)
            stack.callback(metrics.close)
            console.print(f"metrics: http://{options.metrics_http[0]}:{metrics.port}/metrics")
        started = time.monotonic()
        # rich renders the table from its own refresh thread: the control loop's thread never
        # builds it (the seam metrics it shows are computed over the whole run log)
        live = (
            Live(
                get_renderable=lambda: _safe_status(session, started),
                console=console,
                refresh_per_second=4,
                transient=False,
            )
            if options.live
            else None
        )
        if live is not None:
            live.start()
        try:
            summary = session.run(options.duration)
        finally:
            if live is not None:
                live.stop()
        meta = {
            "checkpoint": str(checkpoint) if checkpoint else None,
            "backend": options.backend,
            "server": options.server,
            "command": "demo",
        }
        summary["report"] = str(session.write_report(report, summary, meta))
        console.print(f"report: {summary['report']}")
        return summary
