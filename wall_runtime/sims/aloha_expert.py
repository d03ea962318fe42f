"""A scripted expert for ALOHA transfer-cube, acting in end-effector space.

It plans from the task's privileged state (:meth:`AlohaTask.privileged_state`: the episode time,
the cube's pose, each arm's base) a timed sequence of EE waypoints per arm — the right arm
approaches the cube from above, grasps, lifts it to a meeting point and holds it there; the left
arm comes in sideways with its fingers turned to pinch the cube's top and bottom, closes, and the
right arm lets go and backs off. Waypoints that touch the cube follow its *current* pose (the
left arm grasps where the cube actually is), so a stale observation costs the expert what it
costs any closed-loop policy. Between waypoints the pose follows a minimum-jerk profile
(position: quintic blend; rotation: slerp on the same profile).

Poses come out per arm in that arm's base frame (the frame of robot.yaml's ``kinematics`` block),
as position + rotation matrix + gripper (0 closed ... 1 open): the policy backend
(:mod:`wall_runtime.backends.expert`) writes them in a WALL-OSS layout, and the direct check
(:func:`run_direct`) solves IK itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

ARMS = ("left", "right")
MEET = np.array([0.0, 0.5, 0.22])  # world: where the cube is handed over

# each arm's EE pose at gym-aloha's START_ARM_POSE, in its base frame (FK of our ViperX model;
# tests/test_aloha.py checks it): where every episode starts. Orientation as pitch (about the base
# y axis, positive = tool pointing down) and roll (about the tool's x axis).
START_POSITION = np.array([0.30106181, 0.0, 0.31022585])
START_PITCH = -0.1  # shoulder + elbow + wrist angle of START_ARM_POSE: -0.96 + 1.16 - 0.3


@dataclass(frozen=True)
class Key:
    """One waypoint of one arm: reached at ``t`` (episode seconds); position in the arm's base
    frame; the tool's heading follows the position (yaw = its bearing from the base: the waist
    turns, the wrist need not roll), its pitch and roll are the key's."""

    t: float
    position: np.ndarray
    pitch: float
    roll: float
    grip: float
    yaw: float = 0.0  # added to the heading (e.g. to square the fingers with the cube's faces)


def _pose(priv: Mapping[str, Sequence[float]], name: str) -> tuple[np.ndarray, Rotation]:
    v = np.asarray(priv[name], dtype=np.float64)
    return v[:3], Rotation.from_quat(v[3:7], scalar_first=True)


def base_poses(priv: Mapping[str, Sequence[float]]) -> dict[str, tuple[np.ndarray, Rotation]]:
    return {arm: _pose(priv, f"{arm}_base") for arm in ARMS}


def plan(priv: Mapping[str, Sequence[float]]) -> dict[str, list[Key]]:
    """The waypoints of both arms (each in its base frame) for the episode whose privileged state
    is ``priv``."""
    bases = base_poses(priv)
    cube0 = np.asarray(priv["objects_initial"][:3], dtype=np.float64)
    cube = np.asarray(priv["objects"][:3], dtype=np.float64)
    t = float(priv["episode_time"][0])

    def local(arm: str, world: np.ndarray) -> np.ndarray:
        p, r = bases[arm]
        return r.inv().apply(np.asarray(world, dtype=np.float64) - p)

    down = np.radians(60.0)  # the right gripper points 60° below level at the cube
    side = np.radians(90.0)  # the left comes in level, turned 90° (its fingers close vertically)
    # the left grasps where the cube is once it has been lifted (else where it will be)
    held = cube if t >= 2.6 else MEET
    r_ = lambda w: local("right", w)  # noqa: E731
    l_ = lambda w: local("left", w)  # noqa: E731
    # the fingers close square to the cube's faces (the cube sits axis-aligned, like both bases)
    c = r_(cube0)
    square = -float(np.arctan2(c[1], c[0]))
    right = [
        Key(0.0, START_POSITION, START_PITCH, 0.0, 0.0),
        # above the cube, open; squared only on the way down, where the wrist is well bent (turning
        # while it passes straight spins forearm and wrist against each other)
        Key(1.0, r_(cube0 + np.array([0, 0, 0.09])), down, 0.0, 1.0),
        Key(1.6, r_(cube0 + np.array([0, 0, -0.005])), down, 0.0, 1.0, square),  # down around it
        Key(2.0, r_(cube0 + np.array([0, 0, -0.005])), down, 0.0, 0.0, square),  # close
        Key(2.7, r_(MEET + np.array([0.04, 0, 0.02])), down, 0.0, 0.0),  # lift towards the meeting point
        Key(3.0, r_(MEET), down, 0.0, 0.0),
        Key(4.1, r_(MEET), down, 0.0, 0.0),  # hold while the left arm takes it
        Key(4.4, r_(MEET), down, 0.0, 1.0),  # let go
        Key(5.0, r_(MEET + np.array([0.12, 0, 0.03])), down, 0.0, 1.0),  # back off
    ]
    left = [
        Key(0.0, START_POSITION, START_PITCH, 0.0, 0.0),
        Key(1.5, l_(MEET + np.array([-0.14, 0, 0.0])), 0.0, side, 1.0),  # beside the meeting point, open
        Key(3.0, l_(MEET + np.array([-0.14, 0, 0.0])), 0.0, side, 1.0),
        Key(3.6, l_(held), 0.0, side, 1.0),  # fingers around the held cube
        Key(4.0, l_(held), 0.0, side, 0.0),  # close
        Key(4.4, l_(held), 0.0, side, 0.0),
        Key(5.0, l_(MEET + np.array([-0.08, 0, 0.03])), 0.0, side, 0.0),  # carry it away
    ]
    return {"left": left, "right": right}


def _min_jerk(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return min(max(u**3 * (10.0 - 15.0 * u + 6.0 * u * u), 0.0), 1.0)


def sample(keys: Sequence[Key], times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions ``[N, 3]``, rotation matrices ``[N, 3, 3]`` and grips ``[N]`` at ``times``, in
    the keys' (the arm's base) frame."""
    times = np.asarray(times, dtype=np.float64)
    kt = np.array([k.t for k in keys])
    seg = np.clip(np.searchsorted(kt, times, side="right") - 1, 0, len(keys) - 2)
    pos = np.zeros((len(times), 3))
    ypr = np.zeros((len(times), 3))
    grip = np.zeros(len(times))
    for n, (s, tt) in enumerate(zip(seg, times, strict=True)):
        a, b = keys[s], keys[s + 1]
        u = _min_jerk(float((tt - a.t) / (b.t - a.t)))
        pos[n] = a.position + u * (b.position - a.position)
        yaw = float(np.arctan2(pos[n][1], pos[n][0])) + a.yaw + u * (b.yaw - a.yaw)
        ypr[n] = (yaw, a.pitch + u * (b.pitch - a.pitch), a.roll + u * (b.roll - a.roll))
        grip[n] = a.grip + u * (b.grip - a.grip)
    return pos, Rotation.from_euler("ZYX", ypr).as_matrix(), grip


def arm_targets(
    priv: Mapping[str, Sequence[float]], times: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per arm, at each of ``times``: position, rotation (in that arm's base frame) and grip."""
    keys = plan(priv)
    return {arm: sample(keys[arm], times) for arm in ARMS}


def run_direct(adapter, kinematics: Mapping, seed: int, time_limit_s: float | None = None) -> dict:
    """The expert straight into the environment, no runtime: at every 20 ms control step its
    target for now → IK (each arm, seeded from the measured joints) → gym-aloha's joint action.
    ``adapter`` is an :class:`AlohaTask` on the simulated clock."""
    from wall_runtime.kinematics import Pose

    assert adapter.sim_clock is not None, "the direct run needs the simulated clock"
    adapter.reset(seed)
    if not adapter.is_connected:
        adapter.connect()
    limit = time_limit_s if time_limit_s is not None else adapter.time_limit_s
    dt = adapter.spec.period_s
    index = {"left": np.arange(0, 6), "right": np.arange(7, 13)}
    grip = {"left": 6, "right": 13}
    ik_fail = 0
    while adapter.episode_time < limit - 1e-9 and not adapter.success:
        q = adapter.read_state().position
        targets = arm_targets(adapter.privileged_state(), np.array([adapter.episode_time + dt]))
        action = q.copy()
        for arm in ARMS:
            p, r, g = targets[arm]
            res = kinematics[arm].ik(Pose(position=p[0], rotation=r[0]), q[index[arm]])
            ik_fail += int(not res.ok)
            action[index[arm]] = res.q
            action[grip[arm]] = float(np.clip(g[0], 0.0, 1.0))
        adapter.command(action)
        adapter.sim_clock.sleep(dt)
    return {**adapter.episode_result(), "ik_failures": ik_fail}
