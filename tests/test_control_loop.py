"""The control loop on a first-order simulated robot: chunks flow, the watchdog holds, the e-stop latches."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from wall_runtime.control import estop as estop_mod
from wall_runtime.control.dryrun import FirstOrderRobot, ThreadedPolicySource
from wall_runtime.control.estop import EStop, KeySource, SignalSource, SocketSource, TriggerFileSource
from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.control.loop import ControlLoop, LoopConfig
from wall_runtime.control.safety import SafetyConfig
from wall_runtime.control.scheduler import SchedulerConfig
from wall_runtime.robot import JointSpec, RobotSpec
from wall_runtime.types import ActionChunk, Observation, RobotState

HZ = 100.0
ACTION_DT = 0.02
H = 25


def arm_spec() -> RobotSpec:
    lim = {
        "min_position": -1.5,
        "max_position": 1.5,
        "max_velocity": 2.0,
        "max_acceleration": 20.0,
        "max_jerk": 2000,
    }
    joints = tuple(JointSpec(f"j{i}", "revolute", "rad", parse_joint_limits(f"j{i}", lim)) for i in range(3))
    return RobotSpec("sim_arm", (*joints, JointSpec("base_x", "base_linear", "m/s")), HZ)


SAFETY = SafetyConfig.from_dict(
    {"max_step": 0.03, "base": {"max_linear_velocity": 0.4, "max_linear_acceleration": 1.0}},
    arm_spec().joints,
)


def wave(obs: Observation) -> np.ndarray:
    """A policy: a slow wave from the observation's time on, in the robot's joints (the model edge
    converts a checkpoint's layout before the loop)."""
    t = obs.stamp + np.arange(H) * ACTION_DT
    out = np.zeros((H, 4))
    out[:, 0] = 0.5 * np.sin(2 * np.pi * 0.5 * t)
    out[:, 1] = 0.3 * np.cos(2 * np.pi * 0.3 * t)
    out[:, 2] = 0.2
    out[:, 3] = 0.2  # base forward at 0.2 m/s
    return out


def observe(state: RobotState, now: float) -> Observation:
    return Observation(stamp=now, images={}, state=state.position.astype(np.float32), instruction="wave")


def make_loop(source: ThreadedPolicySource, **kw) -> tuple[ControlLoop, FirstOrderRobot]:
    robot = FirstOrderRobot(arm_spec(), tau=0.03)
    robot.connect()
    cfg = LoopConfig(
        control_hz=HZ,
        smoother=kw.pop("smoother", "crossfade"),
        watchdog_timeout=0.15,
        scheduler=SchedulerConfig(request_threshold_s=0.3),
    )
    loop = ControlLoop(robot, source, kw.pop("observe", observe), cfg, SAFETY, **kw)
    return loop, robot


def test_chunks_flow_and_the_robot_follows_without_drift() -> None:
    source = ThreadedPolicySource(wave, ACTION_DT, latency=0.06, jitter=0.02)
    loop, _robot = make_loop(source, smoother="rtc")
    summary = loop.run(duration=1.5)
    source.close()
    ticks = summary["counters"]["ticks"] + summary["counters"]["overruns"]
    assert abs(ticks - 1.5 * HZ) <= 2  # absolute deadlines: no drift over the run
    assert summary["counters"]["requests"] >= 6 and len(loop.log.splices) >= 6
    assert summary["watchdog_trips"] == 0
    # the RTC hint went out with the observations once chunks had been seen
    assert any(o.inpaint is not None for o in source.observations[2:])
    measured = loop.log.array("measured")
    commanded = loop.log.array("commanded")
    ok = np.all(np.isfinite(commanded), axis=1)
    assert ok[-50:].all()
    assert np.max(np.abs(measured[-50:, :2] - commanded[-50:, :2])) < 0.1
    # every command respected the step limit
    assert np.max(np.abs(np.diff(commanded[ok][:, :3], axis=0))) <= 0.03 + 1e-9
    assert summary["seams"]["seams"] >= 5


def test_watchdog_holds_within_timeout_plus_one_tick_when_the_server_goes_silent() -> None:
    source = ThreadedPolicySource(wave, ACTION_DT, latency=0.04)
    loop, robot = make_loop(source)

    def silence(lp: ControlLoop) -> None:
        if lp.counters["ticks"] == 50:
            source.silent = True

    loop.run(duration=1.4, on_tick=silence)
    source.close()
    times = loop.log.array("deadline")  # each tick works on its deadline
    status = loop.log.status
    assert robot.holds, "the watchdog never held the robot"
    hold_tick = status.index("hold")
    last_valid = max(i for i in range(hold_tick) if status[i] == "ok")
    deadline = times[last_valid] + loop.watchdog.timeout
    # held on the first tick past the timeout: within timeout + one tick
    assert times[hold_tick - 1] <= deadline + 1e-9
    assert deadline - 1e-9 <= times[hold_tick] <= deadline + loop.period + 1e-9
    assert times[hold_tick] - times[last_valid] <= loop.watchdog.timeout + loop.period + 0.02
    assert robot.holds[0] == pytest.approx(loop.log.array("time")[hold_tick], abs=0.01)
    # and nothing was commanded after the hold
    assert all(t <= robot.holds[0] for t, _ in robot.commands)
    # the base came to rest at its deceleration
    assert robot.read_state().position[3] == pytest.approx(0.0, abs=1e-6)


def test_stale_cameras_mean_no_request_and_a_hold() -> None:
    source = ThreadedPolicySource(wave, ACTION_DT, latency=0.03)

    def stale(state: RobotState, now: float) -> Observation:
        return Observation(
            stamp=now - 2.0, images={}, state=state.position.astype(np.float32), instruction="x"
        )

    loop, robot = make_loop(source, observe=stale)
    loop.run(duration=0.4)
    source.close()
    assert loop.counters["requests"] == 0 and loop.counters["stale_observations"] > 0
    assert robot.holds and not robot.commands


class _Ticker:
    """Drives ``loop.tick`` on a simulated clock (no sleeping)."""

    def __init__(self, loop: ControlLoop, source: ThreadedPolicySource) -> None:
        self.loop = loop
        self.now = time.monotonic()
        source.clock = lambda: self.now  # the policy stamps and waits on the same simulated clock
        loop.watchdog.arm(self.now)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds * HZ)):
            self.loop.tick(self.now)
            self.now += 1.0 / HZ
            time.sleep(0.0005)  # let the policy thread answer


def test_estop_from_a_trigger_file_latches_until_reset(tmp_path: Path) -> None:
    source = ThreadedPolicySource(wave, ACTION_DT, latency=0.0)
    stop = EStop()
    trigger = tmp_path / "estop"
    stop.add(TriggerFileSource(trigger, interval=0.0))
    loop, robot = make_loop(source, estop=stop)
    ticker = _Ticker(loop, source)
    ticker.run(0.3)
    assert robot.commands
    trigger.touch()
    ticker.run(0.05)
    assert stop.engaged and robot.holds
    n_commands = len(robot.commands)
    assert not stop.reset()  # refused: the file still asserts it
    trigger.unlink()
    ticker.run(0.2)
    assert stop.engaged, "the e-stop released itself"
    assert len(robot.commands) == n_commands  # nothing commanded while engaged
    assert stop.reset()
    stood = robot.read_state().position
    ticker.run(0.3)
    source.close()
    assert not stop.engaged and len(robot.commands) > n_commands
    # the resumed motion starts where the robot stood (not where it was last told to go): no jump
    resumed = np.array([stood] + [c for _, c in robot.commands[n_commands:]])
    assert np.max(np.abs(np.diff(resumed[:, :3], axis=0))) <= 0.03 + 1e-9


def test_estop_from_hardware_input_and_socket(tmp_path: Path) -> None:
    source = ThreadedPolicySource(wave, ACTION_DT, latency=0.0)
    stop = EStop()
    sock = tmp_path / "estop.sock"
    stop.add(SocketSource(sock))
    loop, robot = make_loop(source, estop=stop)
    ticker = _Ticker(loop, source)
    ticker.run(0.1)
    robot.estop_input = True
    ticker.run(0.02)
    assert stop.engaged and "hardware" in (stop.reason or "")
    assert not stop.reset()
    robot.estop_input = False
    ticker.run(0.02)
    assert stop.engaged
    estop_mod.send(sock, "reset")
    ticker.run(0.02)
    assert not stop.engaged
    estop_mod.send(sock, "estop")
    ticker.run(0.02)
    assert stop.engaged and "socket" in (stop.reason or "")
    source.close()
    stop.close()
    assert not sock.exists()


def test_estop_from_sigint_and_key_press() -> None:
    stop = EStop()
    stop.add(SignalSource())
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert stop.engaged and "SIGINT" in (stop.reason or "")
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C while stopped really quits
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    stop.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    read_fd, write_fd = os.pipe()
    keys = EStop()
    with os.fdopen(read_fd) as stream:
        keys.add(KeySource(stream))
        os.write(write_fd, b"x")
        time.sleep(0.1)
        assert not keys.engaged
        os.write(write_fd, b" ")
        deadline = time.monotonic() + 1.0
        while not keys.engaged and time.monotonic() < deadline:
            time.sleep(0.01)
        assert keys.engaged
        keys.close()
    os.close(write_fd)


def test_safe_pose_on_shutdown_respects_the_limits() -> None:
    robot = FirstOrderRobot(arm_spec(), initial=np.array([1.0, -1.0, 0.5, 0.0]), tau=0.02)
    robot.connect()
    source = ThreadedPolicySource(wave, ACTION_DT)
    cfg = LoopConfig(control_hz=HZ, safe_pose=[0.0, 0.0, 0.0, 0.0], safe_pose_timeout=3.0)
    loop = ControlLoop(robot, source, lambda s, n: None, cfg, SAFETY)
    assert loop.move_to(np.zeros(4), timeout=3.0)
    source.close()
    cmds = np.array([c for _, c in robot.commands])[:, :3]
    steps = np.abs(np.diff(np.vstack([[1.0, -1.0, 0.5], cmds]), axis=0))
    assert steps.max() <= 0.02 + 1e-9  # 2 rad/s at 100 Hz (tighter than max_step 0.03)
    acc = np.abs(np.diff(steps * HZ, axis=0)) * HZ
    assert acc.max() <= 20.0 + 1e-6
    np.testing.assert_allclose(cmds[-1], 0.0, atol=1e-3)
    assert loop.safety.counts.get("velocity", 0) == 0  # the profile stays inside the limits by itself


class _DelayedPolicy:
    """Answers on the simulated clock after a fixed latency (deterministic, no thread)."""

    def __init__(self, clock: list[float], latency: float = 0.09) -> None:
        self.clock, self.latency, self.queue, self.seq = clock, latency, [], 0

    def request(self, observation: Observation) -> None:
        self.seq += 1
        chunk = ActionChunk(wave(observation).astype(np.float32), observation.stamp, ACTION_DT, self.seq)
        self.queue.append((observation.stamp + self.latency, chunk))

    def poll(self) -> ActionChunk | None:
        for item in self.queue:
            if item[0] <= self.clock[0]:
                self.queue.remove(item)
                return item[1]
        return None


@pytest.mark.parametrize("hz", [100.0, 500.0])
def test_a_feasible_stream_reaches_the_robot_untouched(hz: float) -> None:
    """Chunks that agree and move within the limits, at 50 Hz actions: the start from rest and
    every splice are blended within the limits, so the safety chain never has to step in."""
    clock = [1000.0]
    robot = FirstOrderRobot(arm_spec(), clock=lambda: clock[0])
    robot.connect()
    cfg = LoopConfig(control_hz=hz, scheduler=SchedulerConfig(request_threshold_s=0.25))
    loop = ControlLoop(robot, _DelayedPolicy(clock), observe, cfg, SAFETY, clock=lambda: clock[0])
    loop.watchdog.arm(clock[0])
    times = []
    for _ in range(int(2.0 * hz)):
        times.append(clock[0])
        loop.tick(clock[0])
        clock[0] += 1.0 / hz
    assert len(loop.log.splices) >= 6
    assert dict(loop.safety.counts) == {}, [(r, e.filter, e.joint) for r, e in loop.log.interventions][:20]
    assert loop.scheduler.guard_clips == 0
    commanded = loop.log.array("commanded")[:, :3]
    commanded = commanded[np.all(np.isfinite(commanded), axis=1)]
    target = np.array([wave(Observation(t, {}, np.zeros(1), ""))[0, :3] for t in times[-5:]])
    np.testing.assert_allclose(commanded[-5:], target, atol=1e-3)  # and it ends up on the policy's path
