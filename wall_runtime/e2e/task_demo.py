"""``wall-runtime demo`` on a task robot: a policy asked to do a task, and whether it did.

By default the trained pick-cube policy (``checkpoints/pick_cube``, see docs/training.md) runs a few
episodes of the language-conditioned pick task (``robots/pick_cube_task``) on held-out seeds,
through the whole runtime on the real clock: the policy server in its own process, the ZeroMQ
link, the model edge (EE safety, IK), scheduler, smoother, joint safety chain and the simulated
robot. Each episode is :class:`~wall_runtime.eval.episode.EvalRunner`'s (the loop ``wall-runtime
eval`` builds), with the recorder and the live view subscribed to it. The terminal (and the rerun
view) shows what the policy was asked, the episode, its time and outcome, and the safety chain's
interventions summarised by filter; the per-tick details are in the report.

Report folder::

    summary.json                      per episode: seed, instruction, success, time, interventions
    lift.png                          the named cube's height over each episode, the success line
    episodes/seed-N/summary.json      the loop's record of the episode (splices, intervention events)
    episodes/seed-N/trajectory.png    commanded vs measured joints, chunk boundaries, interventions
    dataset/                          every episode, recorded through the runtime (LeRobot v3)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from wall_runtime.e2e.robot_side import RobotSide

log = logging.getLogger(__name__)

TASK_ROBOT = "pick_cube_task"
TRAINED_CHECKPOINT = "pick_cube"  # checkpoints/<this> in the checkout, or the package's data
HELD_OUT_SEEDS = [100000, 100001, 100002]  # the pick task's held-out seeds start at 100000
TRAINING_RECIPE = "docs/training.md"

# their warnings summarise interventions every few seconds: the live table counts them instead
_QUIET_LOGGERS = ("wall_runtime.control.safety", "wall_runtime.action_space.edge")


class CheckpointMissingError(FileNotFoundError):
    """The trained demo checkpoint is not in this checkout or install."""


def checkpoint_dirs() -> list[Path]:
    """Where trained checkpoints ship: the checkout's ``checkpoints/`` (beside the package), then the
    package data ``wall_runtime.checkpoints`` of an installed wheel (setup.py maps the folder)."""
    dirs = [Path(__file__).resolve().parents[2] / "checkpoints"]
    try:
        spec = importlib.util.find_spec("wall_runtime.checkpoints")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        dirs.append(Path(location))
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def trained_checkpoint(name: str = TRAINED_CHECKPOINT) -> Path:
    """The trained checkpoint ``name`` (a folder with config.json), or a one-line
    :class:`CheckpointMissingError` that says how to make it."""
    for root in checkpoint_dirs():
        if (root / name / "config.json").is_file():
            return root / name
    raise CheckpointMissingError(
        f"no trained demo checkpoint checkpoints/{name}/ in this checkout or install: train it with "
        f"the recipe in {TRAINING_RECIPE} (wall-runtime train ... --out checkpoints/{name}), pass "
        "--checkpoint DIR, or run the random-weight baseline with --random-weights"
    )


def task_part(side: RobotSide) -> Any | None:
    """The simulated task inside the robot (seeded reset, instruction, success), or None."""
    from wall_runtime.eval.episode import _task_part

    try:
        return _task_part(side.adapter)
    except ValueError:
        return None


@dataclass
class TaskDemoOptions:
    checkpoint: Path | None = None  # default: the trained checkpoint (``random_weights``: the tiny one)
    random_weights: bool = False  # the random-weight tiny checkpoint of the same layout (the baseline)
    variant: str = "flow"  # the random-weight checkpoint's generation (the trained one is FLOW)
    backend: str = "torch"
    backend_options: dict[str, Any] = field(default_factory=dict)
    server: str | None = None  # a running policy server instead of starting one
    seeds: list[int] = field(default_factory=lambda: list(HELD_OUT_SEEDS))
    time_limit_s: float | None = None  # per episode (default: the task's, robot.yaml)
    after_success_s: float = 1.0  # an episode runs on this long after success: it ends holding the cube
    smoother: str = "crossfade"
    # real: the live view plays in real time; simulated: the physics advances with the loop and a chunk
    # lands at once (no inference latency on the simulated clock, so no machine load in the outcome;
    # `wall-runtime eval --latency-ms` sweeps latency)
    clock: str = "real"
    report: Path | None = None
    record: bool = True
    live: bool = True
    display: bool = False
    display_save: Path | None = None


@dataclass
class _Now:
    """What the live table shows: the episode under way and the ones done."""

    episode: int = 0
    seed: int | None = None
    instruction: str = ""
    outcome: str | None = None  # the episode's line once it ended (while the next one is set up)
    done: list[Any] = field(default_factory=list)


def interventions_line(counts: dict[str, int]) -> str:
    """``max_step 12, position_margin 3`` (largest first), or ``none``."""
    if not counts:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def episode_line(ep: Any) -> str:
    """``seed 100000 'pick up the red cube': success in 2.3 s`` / ``failed (best lift 0.01 m)``."""
    head = f"seed {ep.seed} {ep.instruction!r}: "
    if ep.success:
        outcome = f"success in {ep.success_time_s:.1f} s"
    elif ep.best_lift_m is not None:
        outcome = f"failed (best lift {ep.best_lift_m:.2f} m)"
    else:
        outcome = "failed"
    return head + outcome


def _status(now: _Now, runner: Any, total: int, limit: float, title: str) -> Any:
    try:
        task, loop = runner.task, runner.loop
        table = Table(title=title, show_header=False, expand=False)
        table.add_row("episode", f"{now.episode + 1}/{total}   seed {now.seed}")
        table.add_row("asked", repr(now.instruction))
        t = min(float(task.episode_time), limit) if loop is not None else 0.0
        if now.outcome is not None:
            state = now.outcome.split(": ", 1)[-1]
        elif task.success:
            state = f"[green]success[/] at {task.success_time:.1f} s"
        else:
            lift = getattr(task, "best_lift", None)
            state = "running" + ("" if lift is None else f" (best lift {lift:.3f} m)")
        table.add_row("time", f"{t:4.1f} s of {limit:g} s   {state}")
        ok = sum(1 for e in now.done if e.success)
        table.add_row("so far", f"success {ok}/{len(now.done)}" if now.done else "-")
        if loop is not None:
            c = loop.counters
            table.add_row("chunks", f"requested {c['requests']}  received {c['chunks_received']}")
            table.add_row("interventions", interventions_line(dict(loop.safety.counts)))
        return table
    except (ValueError, IndexError, AttributeError, KeyError) as exc:  # caught mid-update
        return f"(status not available this refresh: {exc})"


def _task_markdown(now: _Now, total: int, outcome: str | None = None) -> str:
    lines = [
        f"## {now.instruction!r}",
        "",
        f"episode {now.episode + 1}/{total}, seed {now.seed}",
        "",
        outcome or "running",
    ]
    ok = sum(1 for e in now.done if e.success)
    if now.done:
        lines += ["", f"success so far {ok}/{len(now.done)}"]
    return "\n".join(lines)


@contextlib.contextmanager
def _quiet(loggers: tuple[str, ...]) -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _plot_lift(traces: dict[int, list[tuple[float, float]]], success_m: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for seed, trace in traces.items():
        if trace:
            t, z = zip(*trace, strict=True)
            ax.plot(t, z, label=f"seed {seed}")
    if success_m is not None:
        ax.axhline(success_m, color="C3", ls="--", lw=1, label="success")
    ax.set_xlabel("episode time [s]")
    ax.set_ylabel("named cube lifted [m]")
    ax.legend(fontsize=8)
    ax.set_title("the named cube's lift per episode")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_task_demo(
    options: TaskDemoOptions, side: RobotSide, console: Console | None = None
) -> dict[str, Any]:
    """Episodes of the task robot's task with the policy; returns the summary (``report`` set)."""
    from wall_runtime.control.report import plot_run, write_summary
    from wall_runtime.e2e.demo import default_report_dir, policy_server_process, with_graph_cameras
    from wall_runtime.eval.episode import EvalConfig, EvalRunner, summarize_episodes

    console = console or Console(stderr=True)
    task = task_part(side)
    if task is None:
        raise ValueError(f"{side.config.path}: not a task robot (no simulated task part)")
    report = Path(options.report or default_report_dir("demo"))
    checkpoint = options.checkpoint
    kind = "given"
    backend_options = dict(options.backend_options)
    if options.backend == "expert":  # the task's scripted expert served as a policy: the reference
        checkpoint, kind = None, "scripted-expert"
        for k, v in getattr(task, "expert_options", {}).items():
            backend_options.setdefault(k, v)
    elif options.server is None and checkpoint is None:
        if options.random_weights:
            from wall_runtime.e2e.demo_checkpoint import demo_checkpoint

            checkpoint, kind = demo_checkpoint(side.config, options.variant), "random-weights"
            backend_options.setdefault("noise_knots", 3)  # smooth initial noise, as the arm demo's
        else:
            checkpoint, kind = trained_checkpoint(), "trained"
    stack = contextlib.ExitStack()
    with stack:
        endpoint = options.server
        if endpoint is None:
            console.print(f"policy: {checkpoint or 'the task expert'} ({kind}, {options.backend})")
            server_options = with_graph_cameras(options.backend, backend_options, side.config)
            endpoint = stack.enter_context(policy_server_process(checkpoint, options.backend, server_options))
        config = EvalConfig(
            smoother=options.smoother,
            clock=options.clock,
            render=True,
            latency_ms=0.0,
            after_success_s=options.after_success_s,
        )
        runner = EvalRunner(side.config.path, endpoint, config, side=side)
        stack.callback(runner.close)
        runner.warm_up()
        console.print(f"robot: {side.config.name} ({side.config.path}); server {endpoint}")
        view = None
        if options.display or options.display_save is not None:
            from wall_runtime.recording.rerun_view import DisplayOptions, open_view

            view = open_view(
                side.adapter.spec,
                DisplayOptions(show=options.display, save=options.display_save),
                name=f"demo {side.config.name}",
                forward_kinematics=side.adapter.forward_kinematics,
                views=list(runner.description.cameras),
                announce=console.print,
                task=True,
            )
            stack.callback(view.close)  # after the runner's close (callbacks run last first)
        limit = options.time_limit_s if options.time_limit_s is not None else task.time_limit_s
        now = _Now()
        total = len(options.seeds)
        title = f"wall-runtime demo: {side.config.name}, {kind} policy"
        live = (
            Live(
                get_renderable=lambda: _status(now, runner, total, limit, title),
                console=console,
                refresh_per_second=4,
                transient=True,
            )
            if options.live
            else None
        )
        lift_of = getattr(getattr(task, "env", None), "lifted", None)
        traces: dict[int, list[tuple[float, float]]] = {}
        episodes = []
        dataset = report / "dataset" if options.record else None
        started = time.monotonic()
        stack.enter_context(_quiet(_QUIET_LOGGERS))
        if live is not None:
            live.start()
            stack.callback(live.stop)
        for i, seed in enumerate(options.seeds):
            trace: list[tuple[float, float]] = traces.setdefault(seed, [])

            def sample(_loop: Any, trace: list = trace) -> None:
                if lift_of is not None:
                    trace.append((float(task.episode_time), float(lift_of())))

            runner.loop = None
            now.episode, now.seed, now.outcome = i, seed, None
            task.reset(seed)  # the instruction for the table before the loop starts (reset again there)
            now.instruction = getattr(task, "instruction", "") or ""
            if view is not None:
                view.show_task(
                    _task_markdown(now, total), f"episode {i + 1}: seed {seed} {now.instruction!r}"
                )
            ep = runner.run_episode(
                seed, limit, on_tick=sample, record_to=dataset, subscribers=[view] if view else []
            )
            episodes.append(ep)
            line = episode_line(ep)
            now.done.append(ep)
            now.outcome = line
            console.print(
                ("[green]" if ep.success else "[red]")
                + escape(line)
                + "[/]"
                + f"  [dim]interventions: {escape(interventions_line(ep.interventions))}[/]"
            )
            if view is not None:
                view.show_task(_task_markdown(now, total, line), line)
            folder = report / "episodes" / f"seed-{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            if runner.loop is not None:
                write_summary(runner.loop, ep.to_dict(), folder / "summary.json")
                if runner.loop.log.time:
                    plot_run(
                        runner.loop,
                        folder / "trajectory.png",
                        title=f"seed {seed} {ep.instruction!r}: " + ("success" if ep.success else "failed"),
                    )
        wall_s = time.monotonic() - started
        overall = summarize_episodes(episodes)
        success_m = None
        with contextlib.suppress(ImportError):
            if lift_of is not None:
                from wall_runtime.sims.pick_cube import LIFT_M

                success_m = LIFT_M
        if any(traces.values()):
            _plot_lift(traces, success_m, report / "lift.png")
        summary = {
            "command": "demo",
            "robot": side.config.name,
            "robot_file": str(side.config.path),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "checkpoint_kind": kind if options.server is None else "server",
            "server": options.server,
            "backend": options.backend,
            "smoother": options.smoother,
            "clock": options.clock,
            "policy": runner.metadata.to_dict() if hasattr(runner.metadata, "to_dict") else None,
            "episodes": [
                {
                    "seed": e.seed,
                    "instruction": e.instruction,
                    "success": e.success,
                    "success_time_s": e.success_time_s,
                    "best_lift_m": e.best_lift_m,
                    "episode_time_s": e.episode_time_s,
                    "interventions": e.interventions,
                    "ee_interventions": e.ee_interventions,
                    "chunks_received": e.counters.get("chunks_received", 0),
                    "link_errors": e.link_errors,
                    "recorded_episode": e.recorded_episode,
                    "details": f"episodes/seed-{e.seed}/summary.json",
                }
                for e in episodes
            ],
            "successes": overall["successes"],
            "success_rate": overall["success_rate"],
            "time_to_success_mean_s": overall["time_to_success_mean_s"],
            "interventions": dict(Counter(overall["interventions"])),
            "ee_interventions": overall["ee_interventions"],
            "wall_s": wall_s,
            "dataset": None if dataset is None else str(dataset),
            "report": str(report),
        }
        report.mkdir(parents=True, exist_ok=True)
        (report / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
