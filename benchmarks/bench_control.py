"""Control-runtime benchmark: tick cost, loop jitter, seam metrics, and a plot of a run.

    python benchmarks/bench_control.py [--quick] [--out benchmarks/results]
    python benchmarks/bench_control.py --smoke --out /tmp/bench   # a few ticks, 1 s loops
    python benchmarks/bench_control.py --workspace-only [--baseline OLD.json]   # only section 5

1. Cost of one control tick (scheduler + smoother + safety chain, no sleeping, no robot I/O) on a
   7-joint arm with a gripper (every limit configured, jerk included), chunks of 32 actions in the
   arm's 8 joints (what reaches the loop after the model edge) arriving every 8 actions: p50 / p99
   / max. The edge's own cost per chunk (IK per waypoint) is in benchmarks/bench_ik.py.
2. Loop period jitter at 100 Hz and 500 Hz while observations (two 224x224 RGB frames copied per
   request) and chunks (a policy thread answering after 80 ± 20 ms) flow, against the first-order
   dry-run robot. The loop sleeps and then spins the last 0.3 ms before each deadline.
3. Seam metrics of the four smoothers on the same synthetic stream as tests/test_control_seams.py.
4. A plot of the 100 Hz run's commanded and measured trajectory with chunk boundaries and safety
   interventions marked (the policy injects a 0.3 rad jump every 6th chunk and one NaN chunk).

5. The safety chain alone (``SafetyChain.filter``) with a workspace box, per tick at 100 Hz, on
   each shipped arm that has a box and forward kinematics on its adapter (sim_arm, sim_pick,
   sim_bimanual, pick_cube_task; ur5e has a box but its adapter no forward kinematics), with its
   robot.yaml limits and again with jerk limits added: the shoulder sweeps the fingertip into the
   table-top face and back; ticks are classed far / near (within 10 cm) / braking (the box changed
   the command), with the forward-kinematics calls each made. ``--baseline`` draws an earlier run
   beside it (benchmarks/results/safety_workspace_before.json: before the check was made cheaper).

Results: benchmarks/results/control.json and control_run.png; safety_workspace.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from wall_runtime.control.dryrun import FirstOrderRobot, ThreadedPolicySource
from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.control.loop import ControlLoop, LoopConfig
from wall_runtime.control.report import plot_run
from wall_runtime.control.safety import SafetyChain, SafetyConfig, joint_step_limits
from wall_runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from wall_runtime.control.seams import seam_metrics, summarize
from wall_runtime.control.smoothing import SMOOTHERS, make_smoother
from wall_runtime.machine import describe_machine
from wall_runtime.robot import JointSpec, RobotSpec
from wall_runtime.types import ActionChunk, Observation, RobotState

RESULTS = Path(__file__).parent / "results"
console = Console()
H = 32
ACTION_DT = 0.02
D = 8  # chunks reach the loop in the robot's joints (the model edge converted them)


def arm() -> RobotSpec:
    joints = []
    for i in range(7):
        lim = {
            "min_position": -2.5,
            "max_position": 2.5,
            "soft_lower_limit": -2.4,
            "soft_upper_limit": 2.4,
            "max_velocity": 2.0,
            "max_acceleration": 15.0,
            "max_jerk": 2000.0,
        }
        joints.append(JointSpec(f"joint{i + 1}", "revolute", "rad", parse_joint_limits(f"joint{i + 1}", lim)))
    grip = parse_joint_limits("gripper", {"min_position": 0.0, "max_position": 0.08, "max_velocity": 0.2})
    joints.append(JointSpec("gripper", "gripper", "m", grip))
    return RobotSpec("bench_arm", tuple(joints), 100.0)


SAFETY = {"max_step": 0.03, "position_margin": 0.02, "gripper": {"min": 0.0, "max": 0.08}}


def machine() -> dict[str, object]:
    return describe_machine(
        note="shared 2-core machine with other jobs running; timings include their interference"
    )


def wave(t: np.ndarray) -> np.ndarray:
    out = np.zeros((len(t), D))
    for j in range(7):
        out[:, j] = 0.6 * np.sin(2 * np.pi * 0.3 * t + j)
    out[:, 7] = 0.04 + 0.015 * np.sin(2 * np.pi * 0.2 * t)
    return out


def bench_tick(ticks: int) -> dict[str, dict[str, float]]:
    spec = arm()
    dt = 0.01
    cfg = SafetyConfig.from_dict(SAFETY, spec.joints)
    out = {}
    rng = np.random.default_rng(0)
    for name in SMOOTHERS:
        step = joint_step_limits(spec.joints, cfg, dt)
        sched = ChunkScheduler(make_smoother(name), SchedulerConfig(max_step=step))
        chain = SafetyChain(spec.joints, cfg, dt)
        state = RobotState(0.0, np.array([0.0] * 7 + [0.04]))
        costs = np.empty(ticks)
        seq = 0
        for k in track(range(ticks), description=f"tick cost [{name}]", console=console, transient=True):
            now = k * dt
            chunk = None
            if k % 16 == 0:  # a chunk every 8 actions (16 ticks at 2 ticks per action)
                seq += 1
                stamp = now - 0.08
                actions = wave(stamp + np.arange(H) * ACTION_DT) + rng.normal(0, 0.01, D)
                chunk = ActionChunk(actions.astype(np.float32), stamp=stamp, dt=ACTION_DT, seq=seq)
            t0 = time.perf_counter()
            if chunk is not None:
                sched.accept(chunk, now)
                if name == "rtc":
                    sched.hint(now)
            target = sched.target(now)
            if target is not None:
                chain.filter(target, state)
            costs[k] = time.perf_counter() - t0
        out[name] = {
            "p50_us": float(np.percentile(costs, 50) * 1e6),
            "p99_us": float(np.percentile(costs, 99) * 1e6),
            "max_us": float(costs.max() * 1e6),
            "ticks": ticks,
        }
    return out


def run_loop(hz: float, seconds: float, inject: bool) -> tuple[ControlLoop, dict]:
    spec = arm()
    robot = FirstOrderRobot(spec, initial=np.array([0.0] * 7 + [0.04]), tau=0.03)
    robot.connect()
    frame = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    count = {"n": 0}

    def policy(obs: Observation) -> np.ndarray:
        count["n"] += 1
        actions = wave(obs.stamp + np.arange(H) * ACTION_DT)
        if inject and count["n"] % 6 == 0:
            actions[:, :7] += 0.3  # a chunk that disagrees sharply with the last one
        if inject and count["n"] == 9:
            actions[5, 2] = np.nan  # and one broken chunk: rejected, the old plan continues
        return actions

    source = ThreadedPolicySource(policy, ACTION_DT, latency=0.08, jitter=0.02)

    def observe(state: RobotState, now: float) -> Observation:
        images = {"face_view": frame.copy(), "left_wrist_view": frame.copy()}
        return Observation(
            stamp=now, images=images, state=state.position.astype(np.float32), instruction="wave"
        )

    cfg = LoopConfig(control_hz=hz, smoother="crossfade", scheduler=SchedulerConfig(request_threshold_s=0.25))
    loop = ControlLoop(robot, source, observe, cfg, SafetyConfig.from_dict(SAFETY, spec.joints))
    with console.status(f"control loop at {hz:.0f} Hz for {seconds:.0f} s"):
        summary = loop.run(duration=seconds)
    source.close()
    return loop, summary


def seam_study() -> dict[str, dict[str, float]]:
    dt, latency, out = 0.02, 0.09, {}

    def truth(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t)[:, None]
        return np.hstack([0.4 * np.sin(2 * np.pi * 0.4 * t), 0.3 * np.cos(2 * np.pi * 0.25 * t + 0.5)])

    for name in SMOOTHERS:
        rows = []
        for seed in range(3):
            rng = np.random.default_rng(seed)
            sched = ChunkScheduler(make_smoother(name), SchedulerConfig(request_threshold_s=0.25))
            pending: list[tuple[float, ActionChunk]] = []
            trace, bounds, seq = [], [], 0
            for k in range(400):
                now = k * dt
                for item in [p for p in pending if p[0] <= now]:
                    pending.remove(item)
                    if sched.accept(item[1], now) is not None:
                        bounds.append(len(trace))
                target = sched.target(now)
                if target is not None:
                    trace.append(target)
                if sched.should_request(now):
                    sched.note_request(now, now)
                    hint = sched.hint(now)
                    times = now + np.arange(H) * dt
                    raw = (
                        truth(times)
                        + rng.normal(0, 0.04, 2)
                        + np.outer(np.arange(H) * dt, rng.normal(0, 0.1, 2))
                    )
                    if name == "rtc" and hint is not None:
                        w = hint.weights[:, None].astype(np.float64)
                        raw = w * hint.actions + (1 - w) * raw  # the guided sampler's target, simulated
                    seq += 1
                    pending.append(
                        (
                            now + latency + rng.uniform(0, 0.02),
                            ActionChunk(raw.astype(np.float32), now, dt, seq),
                        )
                    )
            rows.append(summarize(seam_metrics(np.array(trace), dt, bounds[1:])))
        out[name] = {k: max(r[k] for r in rows) for k in ("max_jump", "max_acceleration", "max_jerk")}
    return out


# -- the safety chain's workspace box on the shipped arms ----------------------------------------

WS_ROBOTS = ("sim_arm", "sim_pick", "sim_bimanual", "pick_cube_task")  # a box and an FK on the adapter
WS_HZ = 100.0
WS_NEAR_M = 0.1  # a tick whose last command's end effector is within this of a face is "near"
WS_JERK_PER_ACC = 10.0  # the jerk-limited variant: max_jerk = 10 x max_acceleration (0.1 s ramps)
# the stream: every arm's shoulder swept between these offsets from the safe pose (a cosine of
# this period), which lifts the fingertip well clear of the table and drives it through the
# table-top face of the box, so the chain brakes for the face on every down stroke
WS_SWEEP = (-0.8, 1.0)
WS_PERIOD_S = 3.0


def _ws_setup(robot: str, jerk: bool):
    """The robot's joints (with jerk limits added where asked), safety settings, adapter FK (the
    adapter is built, never connected) and the safe pose."""
    from dataclasses import replace

    from wall_runtime.adapters.config import load_robot
    from wall_runtime.adapters.registry import build_adapter
    from wall_runtime.e2e.robot_side import safety_config

    config = load_robot(robot)
    spec = config.spec()
    joints = spec.joints
    if jerk:
        joints = tuple(
            replace(
                j,
                limits=replace(
                    j.limits, has_jerk_limits=True, max_jerk=WS_JERK_PER_ACC * j.limits.max_acceleration
                ),
            )
            for j in joints
        )
        spec = replace(spec, joints=joints)
    fk = build_adapter(config).forward_kinematics
    safe = config.safety.get("safe_pose")  # parsed: one value per joint
    pose: dict[str, float] = {}
    for part in config.parts:  # no safe pose (sim_bimanual): where the simulation starts
        pose.update(part.connection.get("initial_position") or {})
    q0 = np.array(safe if safe is not None else [float(pose.get(j.name, 0.0)) for j in joints], dtype=float)
    return joints, safety_config(config, spec), fk, q0


def bench_workspace(ticks: int) -> dict[str, dict[str, object]]:
    """``SafetyChain.filter`` per tick at 100 Hz on each shipped arm with a workspace box, with and
    without jerk limits, over a stream that sweeps the fingertip into the table-top face and back.
    Ticks are classed by where the last command left the end effector and what the chain did:
    ``far`` (more than WS_NEAR_M from every face), ``near`` (within it, command unchanged by the
    box) and ``braking`` (the box changed the command). Forward-kinematics calls are counted."""
    dt = 1.0 / WS_HZ
    out: dict[str, dict[str, object]] = {}
    for robot in WS_ROBOTS:
        for jerk in (False, True):
            joints, cfg, fk, q0 = _ws_setup(robot, jerk)
            calls = {"n": 0}

            def counted(q: np.ndarray, fk=fk, calls=calls) -> np.ndarray | None:
                calls["n"] += 1
                return fk(q)

            chain = SafetyChain(joints, cfg, dt, forward_kinematics=counted)
            box_lo, box_hi = np.array(cfg.workspace_min), np.array(cfg.workspace_max)
            shoulder = np.array([j.name.endswith("shoulder") for j in joints])
            chain.reset(RobotState(0.0, q0 + shoulder * WS_SWEEP[0]))  # the stream's first target
            by_case: dict[str, list[tuple[float, int]]] = {"far": [], "near": [], "braking": []}
            for k in range(ticks):
                phase = 0.5 - 0.5 * np.cos(2 * np.pi * k * dt / WS_PERIOD_S)
                target = q0 + shoulder * (WS_SWEEP[0] + phase * (WS_SWEEP[1] - WS_SWEEP[0]))
                last = chain.last_command
                assert last is not None
                ee = np.asarray(fk(last)).reshape(-1, 3)
                margin = float(np.min(np.minimum(ee - box_lo, box_hi - ee)))
                calls["n"] = 0
                t0 = time.perf_counter()
                chain.filter(target)
                cost = time.perf_counter() - t0
                boxed = any(e.filter.startswith("workspace") for e in chain.last_tick_interventions)
                case = "braking" if boxed else "far" if margin > WS_NEAR_M else "near"
                by_case[case].append((cost, calls["n"]))
            row: dict[str, object] = {}
            for case, rows in by_case.items():
                if not rows:
                    row[case] = {"ticks": 0}
                    continue
                cost = np.array([r[0] for r in rows]) * 1e3
                n_fk = np.array([r[1] for r in rows])
                row[case] = {
                    "ticks": len(rows),
                    "p50_ms": float(np.percentile(cost, 50)),
                    "p99_ms": float(np.percentile(cost, 99)),
                    "max_ms": float(cost.max()),
                    "fk_calls_p50": float(np.percentile(n_fk, 50)),
                    "fk_calls_max": int(n_fk.max()),
                }
            out[f"{robot}{'_jerk' if jerk else ''}"] = row
            console.print(
                f"workspace {robot}{' jerk' if jerk else ''}: "
                + ", ".join(
                    f"{c} p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms fk {r['fk_calls_p50']:.0f}"
                    for c, r in row.items()
                    if r.get("ticks")  # type: ignore[union-attr]
                )
            )
    return out


def plot_workspace(result: dict, path: Path, baseline: dict | None = None) -> None:
    """p50 and p99 per tick by case, per robot and jerk setting (and the baseline's, hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = ("far", "near", "braking")
    rows = list(result)
    fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4.5), sharey=True)
    x = np.arange(len(rows))
    for ax, case in zip(axes, cases, strict=True):
        series = [("now", result, 0.0, None)]
        if baseline is not None:
            series = [("before", baseline, -0.2, "//"), ("now", result, 0.2, None)]
        for label, data, off, hatch in series:
            p50 = [data.get(r, {}).get(case, {}).get("p50_ms", np.nan) for r in rows]
            p99 = [data.get(r, {}).get(case, {}).get("p99_ms", np.nan) for r in rows]
            w = 0.4 if baseline is not None else 0.6
            ax.bar(x + off, p99, w, color="#f4a582", hatch=hatch, label=f"p99 {label}")
            ax.bar(x + off, p50, w, color="#2166ac", hatch=hatch, label=f"p50 {label}")
        ax.set_xticks(x, rows, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{case}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"SafetyChain.filter per tick (ms), {WS_HZ:.0f} Hz")
    axes[0].legend(fontsize=8)
    fig.suptitle("safety chain with a workspace box: cost per tick by case")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--smoke", action="store_true", help="check the script runs: a few ticks, 1 s loops")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for control.json and control_run.png"
    )
    parser.add_argument(
        "--workspace-only",
        action="store_true",
        help="only the safety chain's workspace-box cost (safety_workspace.json and .png)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="an earlier safety_workspace.json to draw beside this run's (hatched bars)",
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ws_ticks = 200 if args.smoke else 600 if args.quick else 3000
    ws: dict[str, object] = {
        "machine": machine(),
        "settings": {
            "hz": WS_HZ,
            "ticks_per_run": ws_ticks,
            "near_m": WS_NEAR_M,
            "jerk_per_acceleration": WS_JERK_PER_ACC,
            "shoulder_sweep_rad": list(WS_SWEEP),
            "sweep_period_s": WS_PERIOD_S,
        },
        "results": bench_workspace(ws_ticks),
    }
    baseline = None
    if args.baseline is not None:
        baseline = json.loads(args.baseline.read_text())["results"]
        ws["baseline"] = {"file": str(args.baseline), "results": baseline}
    (out / "safety_workspace.json").write_text(json.dumps(ws, indent=2, default=float))
    plot_workspace(ws["results"], out / "safety_workspace.png", baseline)  # type: ignore[arg-type]
    console.print(f"wrote {out / 'safety_workspace.json'} and {out / 'safety_workspace.png'}")
    if args.workspace_only:
        return
    result: dict[str, object] = {"machine": machine()}
    ticks, seconds = (200, 1.0) if args.smoke else (2000, 2.0) if args.quick else (20000, 6.0)
    result["tick_cost"] = bench_tick(ticks)
    loops = {}
    plotted = None
    for hz in (100.0, 500.0):
        loop, summary = run_loop(hz, seconds, inject=hz == 100.0)
        loops[f"{hz:.0f}Hz"] = summary
        if hz == 100.0:
            plotted = loop
    result["loop"] = loops
    result["seams_synthetic"] = seam_study()
    assert plotted is not None
    plot_run(
        plotted,
        out / "control_run.png",
        joints=(0, 2, 7),
        title="control loop at 100 Hz, crossfade smoother, injected 0.3 rad jumps and a NaN chunk",
    )
    (out / "control.json").write_text(json.dumps(result, indent=2, default=float))
    console.print_json(json.dumps({k: v for k, v in result.items() if k != "machine"}, default=float))
    console.print(f"wrote {out / 'control.json'} and {out / 'control_run.png'}")


if __name__ == "__main__":
    main()
