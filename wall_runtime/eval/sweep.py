"""``wall-runtime eval``: sweeps of closed-loop episodes, the expert's direct baseline, the report.

One policy server process serves every configuration; each configuration (smoother × latency ×
execution horizon) runs the same seeds through :class:`~wall_runtime.eval.episode.EvalRunner`.
The report folder gets ``eval.json`` (machine, options, every episode, per-configuration
summaries), ``table.md`` and ``success_vs_latency.png`` (success rate against the injected
latency, one line per smoother, the expert's direct success as the reference), plus a video of
each failed episode (re-run on the simulated clock with rendering, which does not change it).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.eval.episode import EpisodeResult, EvalConfig, EvalRunner, summarize_episodes

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    robot: Path
    seeds: list[int]
    smoothers: list[str] = field(default_factory=lambda: ["crossfade"])
    latencies_ms: list[float] = field(default_factory=lambda: [0.0])  # injected, on top of latency_ms
    horizons: list[int | None] = field(default_factory=lambda: [None])  # execution horizon
    steps: list[int | None] = field(default_factory=lambda: [None])  # a model's denoise steps (a server each)
    latency_ms: float | None = 0.0  # simulated clock: the inference latency applied (None = measured)
    clock: str = "simulated"
    backend: str = "expert"
    checkpoint: Path | None = None
    backend_options: dict[str, Any] = field(default_factory=lambda: {"variant": "flow"})
    server: str | None = None  # a running server instead of starting one
    direct: bool = True  # also run the expert straight in the environment (scripted expert only)
    video: str = "failures"  # failures | all | none
    video_fps: float = 10.0
    max_videos: int = 3  # per configuration (a video costs a re-run with ~0.2 s of rendering per frame)
    out: Path = Path("runs/eval")
    instruction: str = "transfer the cube to the left arm"  # unless the task names its own per episode
    record: Path | None = None  # every episode appended to this LeRobot v3 dataset (success marked)
    after_success_s: float = 0.0  # an episode runs on this long after success (a recording's ending)
    time_limit_s: float | None = None  # an episode's limit (None: the task's own, robot.yaml)


def _write_video(frames: list[np.ndarray], path: Path, fps: float) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video(
    runner: EvalRunner, seed: int, path: Path, fps: float, time_limit_s: float | None = None
) -> tuple[EpisodeResult, bool]:
    """Re-run ``seed`` rendering a frame every 1/fps s; returns the result and whether it matches."""
    frames: list[np.ndarray] = []
    every = max(1, round(runner.side.config.control_hz / fps))
    # the task's overview camera (gym-aloha's ``angle``; the pick task's ``face_view``)
    camera, width, height = getattr(runner.task, "video_view", ("angle", 320, 240))
    ticks = [0]

    def grab(_loop: Any) -> None:
        ticks[0] += 1
        if ticks[0] % every == 1 or every == 1:
            frames.append(runner.task.render(camera, width, height))

    result = runner.run_episode(seed, time_limit_s, on_tick=grab)
    if frames:
        _write_video(frames, path, fps)
    return result, True


def run_eval(options: EvalOptions, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from wall_runtime.e2e.demo import policy_server_process
    from wall_runtime.e2e.robot_side import load_robot_side
    from wall_runtime.machine import describe_machine

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    side = load_robot_side(options.robot)
    record: dict[str, Any] = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "machine": describe_machine("mujoco", "dm_control", "gym_aloha", "zmq"),
        "configs": [],
    }
    if options.backend != "expert" and options.checkpoint is None and options.server is None:
        from wall_runtime.e2e.demo_checkpoint import demo_checkpoint

        # the robot's random-weight tiny checkpoint (its EE slots, its norm key), as `demo` uses
        variant = str(options.backend_options.pop("variant", "flow"))
        options.checkpoint = demo_checkpoint(side.config, variant)
    if options.backend == "expert":
        from wall_runtime.eval.episode import _task_part

        # the task's expert (e.g. pick_cube: one arm, both views) unless the options say otherwise
        for k, v in getattr(_task_part(side.adapter), "expert_options", {}).items():
            options.backend_options.setdefault(k, v)
    started = time.monotonic()
    runner_meta = None
    for steps in options.steps:
        if steps is not None and options.backend == "expert":
            raise ValueError("denoise steps sweep a model backend; the scripted expert has none")
        server_options = dict(options.backend_options)
        if steps is not None:
            server_options["num_steps"] = steps
        with _server(options, policy_server_process, server_options) as endpoint:
            for smoother, extra, horizon in itertools.product(
                options.smoothers, options.latencies_ms, options.horizons
            ):
                cfg = EvalConfig(
                    smoother=smoother,
                    latency_ms=options.latency_ms,
                    extra_latency_ms=float(extra),
                    execute_horizon=horizon,
                    clock=options.clock,
                    num_steps=steps,
                    render=True if options.record is not None else None,
                    after_success_s=options.after_success_s,
                )
                runner = EvalRunner(options.robot, endpoint, cfg, options.instruction, side=side)
                episodes = []
                videos = 0
                for seed in options.seeds:
                    ep = runner.run_episode(seed, options.time_limit_s, record_to=options.record)
                    if options.record is not None:
                        progress(
                            f"seed {seed}: {'success' if ep.success else 'failure'}, recorded as episode {ep.recorded_episode}"
                        )
                    wanted = options.video == "all" or (options.video == "failures" and not ep.success)
                    if wanted and videos < options.max_videos:
                        videos += 1
                        name = f"{smoother}_lat{extra:g}_h{horizon or 'auto'}_s{steps or 'd'}_seed{seed}.mp4"
                        again, _ = _video(runner, seed, out / name, options.video_fps, options.time_limit_s)
                        ep.video = name
                        if options.clock == "simulated" and again.success != ep.success:
                            log.warning("seed %d: the re-run for the video differs (%s)", seed, again.success)
                    episodes.append(ep)
                summary = summarize_episodes(episodes)
                progress(
                    f"{cfg.label()}: {summary['successes']}/{summary['episodes']} "
                    f"({time.monotonic() - started:.0f} s)"
                )
                record["configs"].append(
                    {"config": asdict(cfg), "summary": summary, "episodes": [e.to_dict() for e in episodes]}
                )
                runner_meta = runner.metadata.to_dict()
                runner.link.close()  # closes its client; the task robot stays connected
    record["policy"] = runner_meta
    if options.direct and options.backend == "expert":
        record["direct"] = _direct(side, options.seeds)
        progress(f"direct: {record['direct']['successes']}/{record['direct']['episodes']}")
    side.adapter.disconnect()
    record["wall_s"] = time.monotonic() - started
    (out / "eval.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "table.md").write_text(markdown_table(record))
    plot(record, out / "success_vs_latency.png")
    return record


class _server:
    """The policy server: a running one (``--server``) or ``wall-runtime serve`` in its own process."""

    def __init__(self, options: EvalOptions, factory: Any, backend_options: dict[str, Any]) -> None:
        self.options = options
        self.factory = factory
        self.backend_options = backend_options
        self._cm: Any = None

    def __enter__(self) -> str:
        if self.options.server:
            return self.options.server
        self._cm = self.factory(self.options.checkpoint, self.options.backend, self.backend_options)
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)


def _direct(side: Any, seeds: list[int]) -> dict[str, Any]:
    """The scripted expert straight into the environment (its IK per control step, no runtime)."""
    from wall_runtime.eval.episode import _task_part
    from wall_runtime.sims.aloha_expert import run_direct

    task = _task_part(side.adapter)
    if task.sim_clock is None:
        raise ValueError("the direct baseline runs on the simulated clock")
    if hasattr(task, "run_direct"):  # a task with its own expert (pick_cube)
        results = [task.run_direct(s) for s in seeds]
    else:
        results = [run_direct(task, side.kinematics, s) for s in seeds]
    ok = [r for r in results if r["success"]]
    return {
        "episodes": len(results),
        "successes": len(ok),
        "success_rate": len(ok) / len(results) if results else float("nan"),
        "time_to_success_mean_s": float(np.mean([r["success_time_s"] for r in ok])) if ok else None,
        "failed_seeds": [r["seed"] for r in results if not r["success"]],
    }


def markdown_table(record: dict[str, Any]) -> str:
    lines = [
        "| smoother | injected latency (ms) | exec. horizon | steps | success | time to success (s) | interventions / ep | EE interventions | holds | seam max jerk (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in record["configs"]:
        cfg, s = c["config"], c["summary"]
        t = s["time_to_success_mean_s"]
        jerk = s["seam_max_jerk_median"]
        lines.append(
            f"| {cfg['smoother']} | {cfg['extra_latency_ms']:g} | {cfg['execute_horizon'] or 'auto'} | "
            f"{cfg.get('num_steps') or '-'} | "
            f"{s['successes']}/{s['episodes']} ({100 * s['success_rate']:.0f} %) | "
            f"{'-' if t is None else f'{t:.2f}'} | {s['interventions_per_episode']:.1f} | "
            f"{sum(s['ee_interventions'].values())} | {s['holds']} | {'-' if jerk is None else f'{jerk:.1f}'} |"
        )
    d = record.get("direct")
    if d:
        lines.append("")
        lines.append(
            f"Scripted expert run directly in the environment (no runtime): {d['successes']}/{d['episodes']} "
            f"({100 * d['success_rate']:.0f} %)."
        )
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by: dict[tuple[str, Any], list[tuple[float, float]]] = {}
    for c in record["configs"]:
        cfg, s = c["config"], c["summary"]
        by.setdefault((cfg["smoother"], cfg["execute_horizon"], cfg.get("num_steps")), []).append(
            (cfg["extra_latency_ms"], 100 * s["success_rate"])
        )
    lines = list(by.items())
    span = max((p[0] for _, pts in lines for p in pts), default=0.0) or 1.0
    for i, ((smoother, horizon, steps), pts) in enumerate(lines):
        pts.sort()
        # lines offset a little along x so that identical results stay visible (noted on the axis)
        dx = (i - (len(lines) - 1) / 2) * 0.012 * span
        pts = [(x + dx, y) for x, y in pts]
        label = (
            smoother
            + ("" if horizon is None else f", horizon {horizon}")
            + ("" if steps is None else f", {steps} steps")
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    d = record.get("direct")
    if d:
        ax.axhline(100 * d["success_rate"], color="k", ls="--", lw=1, label="expert, direct")
    ax.set_xlabel("injected inference latency (ms, simulated clock; lines offset slightly)")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-3, 103)
    opts = record["options"]
    n = len(opts["seeds"])
    robot = Path(str(opts["robot"])).parent.name or str(opts["robot"])
    ax.set_title(f"{robot}, {opts.get('backend', 'expert')} through the runtime ({n} seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
