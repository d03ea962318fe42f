"""Control-runtime benchmark: tick cost, loop jitter, seam metrics, and a plot of a run.

    python benchmarks/bench_control.py [--quick] [--out benchmarks/results]
    python benchmarks/bench_control.py --smoke --out /tmp/bench   # a few ticks, 1 s loops

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

Results: benchmarks/results/control.json and control_run.png.
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--smoke", action="store_true", help="check the script runs: a few ticks, 1 s loops")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for control.json and control_run.png"
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
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
