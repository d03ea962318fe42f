"""``wall-runtime run``: drive a robot from a served policy through the control loop.

The robot side (adapter, cameras, the model edge's slot mapping, ``safety:`` block) comes from
``robots/<name>/robot.yaml`` through :func:`load_control_setup`, and the policy side from the
ZeroMQ client through :func:`connect_policy`. ``--dry-run`` runs the whole loop (safety,
watchdog, e-stop sources, run log) against a first-order simulated arm and a simulated policy.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wall_runtime.action_space.source import EdgeSource
from wall_runtime.control.dryrun import FirstOrderRobot, ThreadedPolicySource
from wall_runtime.control.estop import EStop, KeySource, SignalSource, SocketSource, TriggerFileSource
from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.control.loop import ChunkSource, LoopConfig, ObservationProvider
from wall_runtime.control.safety import FILTERS, SafetyChain, SafetyConfig
from wall_runtime.control.smoothing import SMOOTHERS
from wall_runtime.e2e.assemble import LoopOptions, assemble_loop, loop_parts
from wall_runtime.robot import JointSpec, RobotAdapter, RobotSpec
from wall_runtime.transport.errors import TransportError
from wall_runtime.types import Observation, RobotState

if TYPE_CHECKING:
    from wall_runtime.e2e.robot_side import RobotSide

log = logging.getLogger(__name__)
console = Console(stderr=True)


@dataclass
class ControlSetup:
    """Everything the loop needs from the robot side."""

    adapter: RobotAdapter
    observe: ObservationProvider | None  # None: the policy link's edge builds observations
    safety: SafetyConfig
    safe_pose: Sequence[float] | None = None
    close: Callable[[], None] = field(default=lambda: None)
    side: RobotSide | None = None  # the robot.yaml side; None in a dry run


def load_control_setup(robot_yaml: str | Path, start: bool = True) -> ControlSetup:
    """The robot side from ``robot.yaml``: adapter, cameras; with ``start``, the adapter connected
    and the cameras started (released again if starting fails). Observations come with the policy
    link (:func:`connect_policy`): the model edge builds their state vector."""
    from wall_runtime.e2e.robot_side import load_robot_side

    side = load_robot_side(robot_yaml)
    setup = ControlSetup(
        adapter=side.adapter,
        observe=None,
        safety=side.safety,
        safe_pose=side.safe_pose,
        close=lambda: side.cameras.stop() if side.cameras is not None else None,
        side=side,
    )
    if start:
        start_setup(setup)
    return setup


def start_setup(setup: ControlSetup) -> None:
    """Connect the robot and start its cameras; on any failure release what was started."""
    try:
        if setup.side is not None:
            setup.side.start()
        elif not (setup.adapter.is_connected or getattr(setup.adapter, "connected", False)):
            setup.adapter.connect()
    except BaseException:
        release_setup(setup)
        raise


def release_setup(setup: ControlSetup) -> None:
    """Stop the cameras and disconnect the robot, each whatever the other did (idempotent)."""
    for what, step in (("cameras", setup.close), ("robot", setup.adapter.disconnect)):
        try:
            step()
        except Exception as exc:  # release the rest; say what could not be released
            log.error("could not release the %s: %s", what, exc)


def connect_policy(
    server: str, setup: ControlSetup, instruction: str, server_key: Path | None, client_key: Path | None
) -> EdgeSource:
    """A non-blocking chunk source on the ZeroMQ client behind the model edge, after the handshake
    with ``server`` (a policy whose layout does not fit the robot is refused here)."""
    from wall_runtime.e2e.session import open_policy_link

    assert setup.side is not None
    link = open_policy_link(setup.side, server, server_key=server_key, client_key=client_key)
    meta = link.metadata
    console.print(
        f"policy: {meta.model} ({meta.backend}), horizon {meta.action_horizon}, {meta.num_steps} steps"
    )
    source = EdgeSource(link.edge, link.source)
    setup.observe = setup.side.observer(instruction, source)
    return source


def _recorder(
    folder: Path, setup: ControlSetup, source: Any, cfg: LoopConfig, task: str, robot_yaml: Path | None
) -> Any:
    """The loop's LeRobot v3 recorder: one frame per tick, a video per camera view (the shapes
    announced to the policy server; a dry run has no cameras)."""
    from wall_runtime.recording.lerobot_v3 import DatasetLayout, dataset_fps
    from wall_runtime.recording.recorder import LeRobotRecorder, loop_settings

    side = setup.side
    # the policy link behind the model edge knows the shapes the cameras announced
    client = getattr(getattr(source, "inner", source), "client", None)
    cameras = dict(client.robot.cameras) if client is not None and side is not None else {}
    layout = DatasetLayout(
        fps=dataset_fps(cfg.control_hz),
        joint_names=tuple(setup.adapter.spec.joint_names),
        views={view: (int(shape[0]), int(shape[1])) for view, shape in cameras.items()},
        robot_type=side.config.name if side is not None else setup.adapter.spec.name,
    )
    return LeRobotRecorder(
        folder,
        layout,
        task,
        meta=loop_settings(cfg, robot_yaml),
        images=side.latest_images if side is not None and cameras else None,
    )


def _camera_views(setup: ControlSetup) -> list[str]:
    """The model views the robot's cameras deliver (none in a dry run)."""
    cameras = setup.side.cameras if setup.side is not None else None
    return list(cameras.views.values()) if cameras is not None else []


# -- the dry run: a simulated arm, gripper and base, and a simulated policy --------------------

DRY_HZ = 100.0
DRY_ACTION_DT = 0.02
DRY_HORIZON = 32


def dry_run_setup(instruction: str, latency: float = 0.08) -> tuple[ControlSetup, ThreadedPolicySource]:
    lim = {
        "min_position": -2.0,
        "max_position": 2.0,
        "max_velocity": 1.5,
        "max_acceleration": 10.0,
        "max_jerk": 1500,
    }
    joints = [
        JointSpec(f"joint{i + 1}", "revolute", "rad", parse_joint_limits(f"joint{i + 1}", lim))
        for i in range(3)
    ]
    grip = parse_joint_limits("gripper", {"min_position": 0.0, "max_position": 0.08, "max_velocity": 0.2})
    joints += [JointSpec("gripper", "gripper", "m", grip), JointSpec("base_x", "base_linear", "m/s")]
    spec = RobotSpec("dry_run", tuple(joints), DRY_HZ, watchdog_timeout_s=0.25)
    safety = SafetyConfig.from_dict(
        {
            "max_step": 0.02,
            "position_margin": 0.05,
            "base": {"max_linear_velocity": 0.3, "max_linear_acceleration": 0.5},
        },
        spec.joints,
    )
    robot = FirstOrderRobot(spec, initial=np.array([0.0, 0.0, 0.0, 0.04, 0.0]))

    def policy(obs: Observation) -> np.ndarray:
        t = obs.stamp + np.arange(DRY_HORIZON) * DRY_ACTION_DT
        out = np.zeros((DRY_HORIZON, 5))
        for j in range(3):
            out[:, j] = 0.5 * np.sin(2 * np.pi * 0.3 * t + j)
        out[:, 3] = 0.04 + 0.02 * np.sin(2 * np.pi * 0.2 * t)
        out[:, 4] = 0.2
        return out

    def observe(state: RobotState, now: float) -> Observation:
        return Observation(
            stamp=now, images={}, state=state.position.astype(np.float32), instruction=instruction
        )

    source = ThreadedPolicySource(policy, DRY_ACTION_DT, latency=latency, jitter=0.02)
    setup = ControlSetup(
        adapter=robot,
        observe=observe,
        safety=safety,
        safe_pose=[0.0, 0.0, 0.0, 0.04, 0.0],
        close=source.close,
    )
    return setup, source


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="control run", show_header=False)
    timing = summary["timing"]
    table.add_row("ticks", f"{summary['counters']['ticks']} at {summary['control_hz']:.0f} Hz")
    if "period_jitter_p99_us" in timing:
        table.add_row(
            "period jitter p50 / p99",
            f"{timing['period_jitter_p50_us']:.0f} / {timing['period_jitter_p99_us']:.0f} µs",
        )
        table.add_row(
            "tick compute p50 / p99",
            f"{timing['tick_compute_p50_us']:.0f} / {timing['tick_compute_p99_us']:.0f} µs",
        )
    table.add_row("overruns", str(summary["counters"]["overruns"]))
    table.add_row(
        "chunks requested / received",
        f"{summary['counters']['requests']} / {summary['counters']['chunks_received']}",
    )
    table.add_row("chunks rejected", str(summary["chunks_rejected"] or "none"))
    latency = summary["latency_p95_s"]
    table.add_row("latency p95", "n/a" if latency is None else f"{latency * 1e3:.0f} ms")
    table.add_row("safety interventions", str(summary["interventions"] or "none"))
    if "model_edge" in summary:
        edge = summary["model_edge"]
        table.add_row(
            "EE edge drops / caps",
            f"{edge['interventions'] or 'none'}; orientation residual max "
            f"{edge['orientation_residual_max_rad']:.3g} rad",
        )
    table.add_row("watchdog holds / e-stops", f"{summary['watchdog_trips']} / {summary['estop_triggers']}")
    seams = summary["seams"]
    if seams.get("seams"):
        table.add_row("worst seam jump / jerk", f"{seams['max_jump']:.4g} / {seams['max_jerk']:.4g}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""

    @app.command("run")
    def run(
        robot: str | None = typer.Option(
            None, "--robot", help="robot name (./robots/NAME or a shipped robot), folder or robot.yaml"
        ),
        server: str | None = typer.Option(None, "--server", help="policy server, e.g. tcp://gpu-host:5555"),
        instruction: str = typer.Option("", "--instruction", "-i", help="the task, in words"),
        smoother: str = typer.Option("crossfade", help=f"chunk smoother: {', '.join(SMOOTHERS)}"),
        duration: float | None = typer.Option(None, help="seconds to run (default: until stopped)"),
        estop_file: Path = typer.Option(
            Path("/tmp/wall-runtime.estop"), help="e-stop while this file exists (touch it to stop)"
        ),
        estop_socket: Path | None = typer.Option(None, help="UNIX socket taking 'estop' / 'reset'"),
        keys: bool = typer.Option(True, help="space or 'e' on the terminal engages the e-stop"),
        safe_pose: bool = typer.Option(True, help="move to the robot's safe pose on shutdown"),
        unsafe_disable_filter: list[str] = typer.Option(
            [], "--unsafe-disable-filter", help=f"turn a safety filter off ({', '.join(FILTERS[1:])})"
        ),
        log_json: Path | None = typer.Option(None, help="write the run summary and events here"),
        plot: Path | None = typer.Option(None, help="write a plot of the commanded trajectory here"),
        dry_run: bool = typer.Option(False, help="simulated robot and policy (no robot.yaml, no server)"),
        server_key: Path | None = typer.Option(None, help="the server's public .key file (CURVE)"),
        client_key: Path | None = typer.Option(None, help="this host's .key_secret file (CURVE)"),
        first_chunk_timeout: float = typer.Option(
            30.0, help="stop and exit 1 when no chunk has arrived this many seconds after the start"
        ),
        metrics_http: str | None = typer.Option(
            None, help="serve the robot side's Prometheus metrics on HOST:PORT (/metrics)"
        ),
        record: Path | None = typer.Option(
            None, help="record the run as the next episode of this LeRobot v3 dataset folder"
        ),
        display: bool = typer.Option(
            False,
            "--display",
            help="live view in the rerun viewer: cameras, joints, chunks, EE targets, interventions",
        ),
        display_save: Path | None = typer.Option(
            None, "--display-save", help="write the live view to this .rrd file (open: rerun FILE.rrd)"
        ),
    ) -> None:
        """Run a robot from a served policy: chunk scheduling, smoothing, safety, watchdog, e-stop."""
        if smoother not in SMOOTHERS:
            raise typer.BadParameter(f"unknown smoother {smoother!r} (known: {', '.join(SMOOTHERS)})")
        for name in unsafe_disable_filter:
            if name not in FILTERS or name == "finite":
                raise typer.BadParameter(
                    f"--unsafe-disable-filter {name!r}: not a filter that can be disabled"
                )
        if not dry_run and (robot is None or server is None):
            raise typer.BadParameter("--robot and --server are required (or --dry-run)")
        metrics_address = None
        if metrics_http is not None:
            from wall_runtime.e2e.robot_metrics import parse_host_port

            try:
                metrics_address = parse_host_port(metrics_http)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        if estop_file.exists():
            console.print(f"[red]e-stop file {estop_file} exists: remove it before running[/]")
            raise typer.Exit(2)
        if display or display_save is not None:
            from wall_runtime.recording.rerun_view import DisplayError, require_rerun

            try:
                require_rerun()
            except DisplayError as exc:
                console.print(f"[red]cannot run:[/] {escape(str(exc))}")
                raise typer.Exit(2) from None
        options = LoopOptions(
            smoother=smoother, safe_pose=safe_pose, disabled_filters=frozenset(unsafe_disable_filter)
        )
        # everything that can be checked is checked before anything is connected; from the first
        # connection on, every exit path releases the robot, the cameras and the policy link
        source: ChunkSource | None = None
        setup: ControlSetup | None = None
        recorder = None
        view = None
        metrics_server = None
        stop = EStop()
        try:
            try:
                if dry_run:
                    setup, source = dry_run_setup(instruction or "dry run")
                else:
                    assert robot is not None and server is not None
                    setup = load_control_setup(robot, start=False)
                # the loop's settings and the chain's own checks (room inside every margin), before
                # connecting anything; assemble_loop below builds the loop from the same parts
                cfg, safety = loop_parts(setup.adapter.spec, setup.safety, options, setup.safe_pose)
                SafetyChain(setup.adapter.spec.joints, safety, 1.0 / cfg.control_hz)
                start_setup(setup)  # connects the robot once (never a bus opened twice)
                if source is None:
                    assert server is not None
                    source = connect_policy(server, setup, instruction, server_key, client_key)
                if record is not None:
                    recorder = _recorder(record, setup, source, cfg, instruction or "dry run", robot)
                if display or display_save is not None:
                    from wall_runtime.recording.rerun_view import DisplayOptions, open_view

                    view = open_view(
                        setup.adapter.spec,
                        DisplayOptions(show=display, save=display_save),
                        name=f"run {setup.adapter.spec.name}",
                        forward_kinematics=setup.adapter.forward_kinematics,
                        views=_camera_views(setup),
                        announce=console.print,
                    )
                assert setup.observe is not None
                loop = assemble_loop(
                    setup.adapter,
                    source,
                    setup.observe,
                    setup.safety,
                    options,
                    safe_pose=setup.safe_pose,
                    estop=stop,
                    recorder=recorder,
                    subscribers=[view] if view is not None else [],
                )
            except (OSError, ValueError, RuntimeError, TransportError) as exc:  # bad robot.yaml, no server
                console.print(f"[red]cannot run:[/] {escape(str(exc))}")
                raise typer.Exit(2) from None
            for name in unsafe_disable_filter:
                console.print(f"[bold red]WARNING: safety filter {name!r} is DISABLED for this run[/]")
            stop.add(SignalSource())
            stop.add(TriggerFileSource(estop_file))
            if estop_socket is not None:
                stop.add(SocketSource(estop_socket))
            if keys and sys.stdin.isatty():
                stop.add(KeySource())
            console.print(
                f"running {setup.adapter.spec.name} at {cfg.control_hz:.0f} Hz ({smoother}); "
                f"e-stop: Ctrl-C, `touch {estop_file}`"
                + (", space" if keys and sys.stdin.isatty() else "")
                + (f", 'estop' to {estop_socket}" if estop_socket else "")
                + "; a second Ctrl-C exits"
            )
            if metrics_address is not None:
                from wall_runtime.e2e.robot_metrics import RobotMetricsServer

                metrics_server = RobotMetricsServer(loop, setup.adapter.spec.name, *metrics_address)
                console.print(f"metrics: http://{metrics_address[0]}:{metrics_server.port}/metrics")
            started = time.monotonic()

            def no_chunk_in_time() -> bool:
                return (
                    loop.counters["chunks_received"] == 0 and time.monotonic() - started > first_chunk_timeout
                )

            try:
                summary = loop.run(
                    duration=duration if duration is not None else math.inf, should_stop=no_chunk_in_time
                )
            except KeyboardInterrupt:
                summary = loop.summary()
            except BaseException:
                if recorder is not None:  # keep what was recorded up to the failure
                    try:
                        recorder.close({"command": "run", "aborted": True})
                    except Exception as exc:
                        console.print(f"[red]recording not saved:[/] {exc}")
                    recorder = None
                raise
        finally:
            if metrics_server is not None:
                metrics_server.close()
            if view is not None:
                view.close()  # the .rrd is complete after this
                if display_save is not None:
                    console.print(f"display: {display_save}")
            stop.close()
            close_source = getattr(source, "close", None)
            if close_source is not None:
                try:
                    close_source()  # the edge's thread, then the policy link
                except Exception as exc:
                    log.error("could not close the policy link: %s", exc)
            if setup is not None:
                release_setup(setup)
        if isinstance(source, EdgeSource):
            summary["model_edge"] = {
                "interventions": source.interventions,
                "orientation_residual_max_rad": source.edge.orientation_residual,
            }
        _print_summary(summary)
        if recorder is not None:
            console.print(f"recorded: {recorder.close({'summary': summary, 'command': 'run'})}")
        if log_json is not None:
            from wall_runtime.control.report import write_summary

            write_summary(loop, summary, log_json)
        if plot is not None:
            from wall_runtime.control.report import plot_run

            plot_run(loop, plot)
        if stop.engaged:
            console.print(f"[red]stopped by e-stop: {stop.reason}[/]")
            raise typer.Exit(1)
        if summary["counters"]["chunks_received"] == 0:
            reason = getattr(source, "last_error", None) or "no reply from the server"
            console.print(f"[red]no chunk arrived within {first_chunk_timeout:g} s[/] (last error: {reason})")
            raise typer.Exit(1)
