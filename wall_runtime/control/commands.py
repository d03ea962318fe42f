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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from wall_runtime.action_space.source import EdgeSource
from wall_runtime.control.dryrun import FirstOrderRobot, ThreadedPolicySource
from wall_runtime.control.estop import EStop, KeySource, SignalSource, SocketSource, TriggerFileSource
from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.control.loop import ChunkSource, ObservationProvider
from wall_runtime.control.safety import FILTERS, SafetyConfig
from wall_runtime.control.smoothing import SMOOTHERS
from wall_runtime.e2e.assemble import LoopOptions, assemble_loop
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


def load_control_setup(robot_yaml: Path) -> ControlSetup:
    """The robot side from ``robot.yaml``: adapter (connected), cameras (started)."""
    from wall_runtime.e2e.robot_side import load_robot_side

    side = load_robot_side(robot_yaml)
    side.start()
    return ControlSetup(
        adapter=side.adapter,
        observe=None,
        safety=side.safety,
        safe_pose=side.safe_pose,
        close=lambda: side.cameras.stop() if side.cameras is not None else None,
        side=side,
    )


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
        robot: Path | None = typer.Option(None, "--robot", help="robots/<name>/robot.yaml"),
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
    ) -> None:
        """Run a robot from a served policy: chunk scheduling, smoothing, safety, watchdog, e-stop."""
        if smoother not in SMOOTHERS:
            raise typer.BadParameter(f"unknown smoother {smoother!r} (known: {', '.join(SMOOTHERS)})")
        source: ChunkSource
        try:
            if dry_run:
                setup, source = dry_run_setup(instruction or "dry run")
            else:
                if robot is None or server is None:
                    raise typer.BadParameter("--robot and --server are required (or --dry-run)")
                setup = load_control_setup(robot)
                try:
                    source = connect_policy(server, setup, instruction, server_key, client_key)
                except BaseException:
                    # the robot is connected and its cameras run: release them before leaving
                    setup.close()
                    setup.adapter.disconnect()
                    raise
        except (OSError, ValueError, RuntimeError, TransportError) as exc:  # bad robot.yaml, no server
            console.print(f"[red]cannot run:[/] {exc}")
            raise typer.Exit(2) from None

        for name in unsafe_disable_filter:
            if name not in FILTERS or name == "finite":
                raise typer.BadParameter(
                    f"--unsafe-disable-filter {name!r}: not a filter that can be disabled"
                )
            console.print(f"[bold red]WARNING: safety filter {name!r} is DISABLED for this run[/]")

        stop = EStop()
        stop.add(SignalSource())
        stop.add(TriggerFileSource(estop_file))
        if estop_socket is not None:
            stop.add(SocketSource(estop_socket))
        if keys and sys.stdin.isatty():
            stop.add(KeySource())
        if estop_file.exists():
            console.print(f"[red]e-stop file {estop_file} exists: remove it before running[/]")
            stop.close()
            raise typer.Exit(2)

        adapter = setup.adapter
        if not adapter.is_connected:  # load_control_setup connected it: never open a bus twice
            adapter.connect()
        assert setup.observe is not None
        loop = assemble_loop(
            adapter,
            source,
            setup.observe,
            setup.safety,
            LoopOptions(
                smoother=smoother, safe_pose=safe_pose, disabled_filters=frozenset(unsafe_disable_filter)
            ),
            safe_pose=setup.safe_pose,
            estop=stop,
        )
        cfg = loop.config
        console.print(
            f"running {adapter.spec.name} at {cfg.control_hz:.0f} Hz ({smoother}); "
            f"e-stop: Ctrl-C, `touch {estop_file}`"
            + (", space" if keys and sys.stdin.isatty() else "")
            + (f", 'estop' to {estop_socket}" if estop_socket else "")
            + "; a second Ctrl-C exits"
        )
        try:
            summary = loop.run(duration=duration if duration is not None else math.inf)
        except KeyboardInterrupt:
            summary = loop.summary()
        finally:
            stop.close()
            setup.close()
            close_source = getattr(source, "close", None)
            if close_source is not None and not dry_run:
                close_source()
            adapter.disconnect()
        if isinstance(source, EdgeSource):
            summary["model_edge"] = {
                "interventions": source.interventions,
                "orientation_residual_max_rad": source.edge.orientation_residual,
            }
        _print_summary(summary)
        if log_json is not None:
            from wall_runtime.control.report import write_summary

            write_summary(loop, summary, log_json)
        if plot is not None:
            from wall_runtime.control.report import plot_run

            plot_run(loop, plot)
        if stop.engaged:
            console.print(f"[red]stopped by e-stop: {stop.reason}[/]")
            raise typer.Exit(1)
