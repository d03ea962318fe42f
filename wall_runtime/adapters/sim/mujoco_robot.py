"""A robot simulated in MuJoCo that obeys the same contract, limits and timing as hardware.

Timing: by default the physics steps **in real time on its own thread** (``realtime: true``),
the way a servo controller runs whether or not anyone is talking to it: ``command`` only sets
actuator targets and returns at once, ``read_state`` returns whatever the robot is doing now, and
a base whose commands stop arriving is stopped by a firmware-style watchdog after
``watchdog_timeout_s``. With ``realtime: false`` nothing runs in the background and each
``command`` / ``hold`` advances the simulation by one control period instead (lockstep, for
deterministic offline tests).

Joints map by name onto MJCF joints and position actuators of the same name (``joint_map``
renames). Base joints (``base_linear`` m/s, ``base_angular`` rad/s) drive a differential-drive
pair of velocity actuators described by the ``diff_drive`` block. Cameras are the MJCF cameras,
rendered offscreen with ``mujoco.Renderer`` (set ``MUJOCO_GL=osmesa`` on a headless machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.adapters.config import Connection, RobotConfigError
from wall_runtime.robot import RobotAdapter, RobotLinkError, RobotNotConnectedError, RobotSpec
from wall_runtime.types import RobotState

log = logging.getLogger(__name__)

os.environ.setdefault("MUJOCO_GL", "osmesa")


class MujocoRobot(RobotAdapter):
    def __init__(self, spec: RobotSpec, connection: Connection, root: Path) -> None:
        import mujoco

        self._mj = mujoco
        self.spec = spec
        where = "connection"
        mjcf = root / connection.str("mjcf")
        if not mjcf.is_file():
            raise RobotConfigError(f"{where}.mjcf: no such file {mjcf}")
        self.realtime = connection.bool("realtime", True)
        self.render_width = connection.int("render_width", 224, 16, 4097)
        self.render_height = connection.int("render_height", 224, 16, 4097)
        joint_map = connection.raw("joint_map", {}) or {}
        initial = connection.raw("initial_position", {}) or {}
        diff = connection.raw("diff_drive", None)
        try:
            self.model = mujoco.MjModel.from_xml_path(str(mjcf))
        except ValueError as exc:
            raise RobotConfigError(f"{where}.mjcf: MuJoCo cannot load {mjcf}: {exc}") from None
        self.data = mujoco.MjData(self.model)
        self._lock = threading.RLock()
        self._fk_lock = threading.Lock()

        self._pos_joints: list[int] = []  # spec indices of position joints
        self._qadr: list[int] = []
        self._dadr: list[int] = []
        self._act: list[int] = []
        self._base_joints: dict[str, int] = {}
        for i, joint in enumerate(spec.joints):
            if joint.is_velocity:
                self._base_joints[joint.kind] = i
                continue
            mj_name = joint_map.get(joint.name, joint.name)
            jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, mj_name)
            aid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR, mj_name)
            if jid < 0:
                raise RobotConfigError(f"{where}.joint_map.{joint.name}: MJCF has no joint {mj_name!r}")
            if aid < 0:
                raise RobotConfigError(f"{where}.joint_map.{joint.name}: MJCF has no actuator {mj_name!r}")
            if self.model.jnt_limited[jid]:
                lo, hi = self.model.jnt_range[jid]
                if joint.limits.lower < lo - 1e-9 or joint.limits.upper > hi + 1e-9:
                    raise RobotConfigError(
                        f"joint_limits.{joint.name}: [{joint.limits.lower}, {joint.limits.upper}] is wider "
                        f"than the MJCF joint range [{lo}, {hi}]"
                    )
            self._pos_joints.append(i)
            self._qadr.append(int(self.model.jnt_qposadr[jid]))
            self._dadr.append(int(self.model.jnt_dofadr[jid]))
            self._act.append(aid)
        self._diff: dict[str, Any] | None = None
        if self._base_joints:
            if not isinstance(diff, dict):
                raise RobotConfigError(f"{where}.diff_drive: missing; base joints need the wheel layout")
            self._diff = self._parse_diff(diff, where)
        self._idx = np.array(self._pos_joints, dtype=int)

        # Start at the declared initial position (clamped into the limits), holding it.
        start = np.zeros(spec.dof)
        for i in self._pos_joints:
            j = spec.joints[i]
            start[i] = float(initial.get(j.name, np.clip(0.0, j.limits.lower, j.limits.upper)))
        start = spec.clamp(start)
        if self._idx.size:
            self.data.qpos[self._qadr] = start[self._idx]
            self.data.ctrl[self._act] = start[self._idx]
        self._mirror_equalities()
        mujoco.mj_forward(self.model, self.data)

        cams = [self.model.camera(i).name for i in range(self.model.ncam)]
        wanted = connection.raw("cameras", None)
        self.camera_names = tuple(cams if wanted is None else wanted)
        for c in self.camera_names:
            if c not in cams:
                raise RobotConfigError(f"{where}.cameras: MJCF has no camera {c!r} (has {cams})")
        self._ee_sites = [i for i in range(self.model.nsite) if self.model.site(i).name.endswith("ee")]
        caps = set(spec.capabilities) | {"simulated"}
        if self._ee_sites:
            caps.add("forward_kinematics")
        self.spec = RobotSpec(
            name=spec.name,
            joints=spec.joints,
            control_hz=spec.control_hz,
            capabilities=frozenset(caps),
            watchdog_timeout_s=spec.watchdog_timeout_s,
        )

        self._connected = False
        self._link_up = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_command = time.monotonic()
        self._base_target = np.zeros(2)  # commanded (linear m/s, angular rad/s)
        self._base_now = np.zeros(2)  # what the base controller is driving now (ramped)
        self._base_accel, self._base_decel = self._base_ramp_limits()
        self._renderers: dict[tuple[int, int, int], Any] = {}
        self._lockstep_debt = 0.0
        self.overruns = 0  # times the stepping thread fell more than 100 ms behind wall time

    # -- configuration helpers -------------------------------------------------------------------

    def _parse_diff(self, diff: dict[str, Any], where: str) -> dict[str, Any]:
        mj = self._mj
        out: dict[str, Any] = {}
        for key in ("left_wheel", "right_wheel", "chassis"):
            if not isinstance(diff.get(key), str):
                raise RobotConfigError(f"{where}.diff_drive.{key}: missing (a name in the MJCF)")
        for key in ("wheel_radius", "wheel_separation"):
            v = diff.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise RobotConfigError(f"{where}.diff_drive.{key}: expected a positive number, got {v!r}")
            out[key] = float(v)
        for key in ("left_wheel", "right_wheel"):
            aid = mj.mj_name2id(self.model, mj.mjtObj.mjOBJ_ACTUATOR, diff[key])
            if aid < 0:
                raise RobotConfigError(f"{where}.diff_drive.{key}: MJCF has no actuator {diff[key]!r}")
            out[key] = aid
            out[key.split("_")[0] + "_dof"] = int(self.model.jnt_dofadr[self.model.actuator_trnid[aid, 0]])
        bid = mj.mj_name2id(self.model, mj.mjtObj.mjOBJ_BODY, diff["chassis"])
        if bid < 0 or self.model.body_jntnum[bid] < 1:
            raise RobotConfigError(f"{where}.diff_drive.chassis: MJCF has no free body {diff['chassis']!r}")
        out["chassis"] = bid
        extra = set(diff) - {"left_wheel", "right_wheel", "chassis", "wheel_radius", "wheel_separation"}
        if extra:
            raise RobotConfigError(f"{where}.diff_drive.{sorted(extra)[0]}: unknown field")
        return out

    def _mirror_equalities(self) -> None:
        # Mimic joints (the second finger) start where their equality says, not in violation.
        mj = self._mj
        for e in range(self.model.neq):
            if self.model.eq_type[e] == mj.mjtEq.mjEQ_JOINT:
                j1, j2 = self.model.eq_obj1id[e], self.model.eq_obj2id[e]
                c = self.model.eq_data[e]
                x = self.data.qpos[self.model.jnt_qposadr[j2]]
                self.data.qpos[self.model.jnt_qposadr[j1]] = c[0] + c[1] * x + c[2] * x * x

    # -- contract --------------------------------------------------------------------------------

    def connect(self) -> None:
        if self._connected:
            self._link_up = True  # reconnect after a dropped link
            return
        self._connected = True
        self._link_up = True
        self._last_command = time.monotonic()
        if self.realtime:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"mujoco:{self.spec.name}", daemon=True)
            self._thread.start()

    def disconnect(self) -> None:
        if not self._connected:
            return
        with contextlib.suppress(RobotLinkError):
            self.hold()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._connected = False
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    def _check_link(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        if not self._link_up:
            raise RobotLinkError(
                f"{self.spec.name}: link dropped (simulated); call connect() to re-establish"
            )

    def read_state(self) -> RobotState:
        self._check_link()
        with self._lock:
            d = self.data
            position = np.zeros(self.spec.dof)
            velocity = np.zeros(self.spec.dof)
            effort = np.zeros(self.spec.dof)
            if self._idx.size:
                position[self._idx] = d.qpos[self._qadr]
                velocity[self._idx] = d.qvel[self._dadr]
                effort[self._idx] = d.actuator_force[self._act]
            if self._diff is not None:
                v, w = self._base_velocity()
                for kind, value in (("base_linear", v), ("base_angular", w)):
                    if kind in self._base_joints:
                        position[self._base_joints[kind]] = value
        return RobotState(stamp=time.monotonic(), position=position, velocity=velocity, effort=effort)

    def command(self, target: np.ndarray) -> None:
        target = self.spec.validate_target(target)
        self._check_link()
        clamped = self.spec.clamp(target)
        with self._lock:
            if self._idx.size:
                self.data.ctrl[self._act] = clamped[self._idx]
            if self._diff is not None:
                self._base_target = np.array(
                    [
                        clamped[self._base_joints[k]] if k in self._base_joints else 0.0
                        for k in ("base_linear", "base_angular")
                    ]
                )
                # The wheels follow the target through the acceleration ramp on the next physics
                # step; writing it to the actuators here would step the wheel speed under load.
            self._last_command = time.monotonic()
        if not self.realtime:
            self.step(self.spec.period_s)

    def hold(self) -> None:
        self._check_link()
        with self._lock:
            if self._idx.size:
                here = self.spec.clamp(self._positions_now())
                self.data.ctrl[self._act] = here[self._idx]
            if self._diff is not None:
                self._base_target = np.zeros(2)
            self._last_command = time.monotonic()
        if not self.realtime:
            self.step(self.spec.period_s)

    # -- simulation ------------------------------------------------------------------------------

    def _positions_now(self) -> np.ndarray:
        out = np.zeros(self.spec.dof)
        if self._idx.size:
            out[self._idx] = self.data.qpos[self._qadr]
        return out

    def _base_velocity(self) -> tuple[float, float]:
        """Wheel odometry, as a real base reports it (encoder speeds, not ground truth)."""
        assert self._diff is not None
        r, sep = self._diff["wheel_radius"], self._diff["wheel_separation"]
        wl = float(self.data.qvel[self._diff["left_dof"]])
        wr = float(self.data.qvel[self._diff["right_dof"]])
        return r * (wl + wr) / 2, r * (wr - wl) / sep

    def ground_truth_pose(self) -> np.ndarray:
        """The chassis (x, y, yaw) in the world, for tests: what odometry should approximate."""
        assert self._diff is not None
        with self._lock:
            x, y = self.data.xpos[self._diff["chassis"]][:2]
            rot = self.data.xmat[self._diff["chassis"]].reshape(3, 3)
        return np.array([x, y, np.arctan2(rot[1, 0], rot[0, 0])])

    def _base_ramp_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis acceleration / deceleration the base controller ramps with (inf: a step)."""
        accel, decel = np.full(2, np.inf), np.full(2, np.inf)
        for k, kind in enumerate(("base_linear", "base_angular")):
            if kind in self._base_joints:
                lim = self.spec.joints[self._base_joints[kind]].limits
                if lim.has_acceleration_limits:
                    accel[k] = lim.max_acceleration
                    decel[k] = (
                        lim.max_deceleration if np.isfinite(lim.max_deceleration) else lim.max_acceleration
                    )
        return accel, decel

    def _ramp_base(self, dt: float) -> None:
        # Like a base controller with acceleration limits: approach the target at max_acceleration
        # (max_deceleration when slowing down), never with a step that makes the chassis jump.
        now, target = self._base_now, self._base_target
        slowing = np.abs(target) < np.abs(now)
        rate = np.where(slowing, self._base_decel, self._base_accel) * dt
        self._base_now = now + np.clip(target - now, -rate, rate)
        self._apply_base(self._base_now)

    def _apply_base(self, vw: np.ndarray) -> None:
        assert self._diff is not None
        r, sep = self._diff["wheel_radius"], self._diff["wheel_separation"]
        v, w = float(vw[0]), float(vw[1])
        self.data.ctrl[self._diff["left_wheel"]] = (v - w * sep / 2) / r
        self.data.ctrl[self._diff["right_wheel"]] = (v + w * sep / 2) / r

    def _watchdog(self) -> None:
        # A base firmware stops the wheels when commands stop arriving (LeKiwi-style, 500 ms);
        # arm servos keep their last goal, which is what "hold" means for them.
        if self._diff is not None and time.monotonic() - self._last_command > self.spec.watchdog_timeout_s:
            self._base_target = np.zeros(2)

    def step(self, seconds: float) -> None:
        """Advance the simulation (lockstep mode, or tests); the real-time thread calls this too."""
        # Carry the remainder so that many short steps add up to exactly the requested time.
        self._lockstep_debt += seconds
        n = int(self._lockstep_debt / self.model.opt.timestep + 1e-9)
        self._lockstep_debt -= n * self.model.opt.timestep
        if n == 0:
            return
        with self._lock:
            self._watchdog()
            self._advance(n)

    def _run(self) -> None:
        dt = self.model.opt.timestep
        wall0 = time.monotonic()
        sim0 = self.data.time
        while not self._stop.is_set():
            behind = (time.monotonic() - wall0) - (self.data.time - sim0)
            n = int(behind / dt)
            max_steps = int(0.1 / dt)
            if n > max_steps:
                # Fell behind (a loaded machine): drop the backlog instead of fast-forwarding.
                self.overruns += 1
                wall0 += (n - max_steps) * dt
                n = max_steps
            if n > 0:
                with self._lock:
                    self._watchdog()
                    self._advance(n)
            time.sleep(0.002)

    def _advance(self, n: int) -> None:
        """``n`` physics steps. A base ramps its wheel speeds every few milliseconds of simulated
        time, not once per batch: a batch that catches up a loaded machine's backlog would otherwise
        hand the wheels one large speed step."""
        if self._diff is None:
            self._mj.mj_step(self.model, self.data, nstep=n)
            return
        dt = self.model.opt.timestep
        per_ramp = max(1, round(0.005 / dt))
        while n > 0:
            k = min(n, per_ramp)
            self._ramp_base(k * dt)
            self._mj.mj_step(self.model, self.data, nstep=k)
            n -= k

    # -- fault injection (the conformance kit's dropped link) -------------------------------------

    def inject_fault(self, fault: str) -> None:
        if fault != "link_drop":
            raise ValueError(f"unknown fault {fault!r} (known: link_drop)")
        self._link_up = False

    # -- cameras and kinematics ------------------------------------------------------------------

    def render(self, camera: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """The camera's current view, HxWx3 uint8 RGB. Renderers are per thread (GL contexts are)."""
        if camera not in self.camera_names:
            raise KeyError(f"{self.spec.name}: no camera {camera!r} (has {list(self.camera_names)})")
        w, h = width or self.render_width, height or self.render_height
        key = (threading.get_ident(), w, h)
        renderer = self._renderers.get(key)
        if renderer is None:
            renderer = self._mj.Renderer(self.model, height=h, width=w)
            self._renderers[key] = renderer
        with self._lock:
            renderer.update_scene(self.data, camera=camera)
        return renderer.render().copy()

    def forward_kinematics(self, position: np.ndarray) -> np.ndarray | None:
        if not self._ee_sites:
            return None
        # one scratch MjData, reused under its own lock: allocating one per call cost ~0.5 ms, and
        # the safety chain's workspace check calls this several times a tick
        with self._fk_lock:
            data = getattr(self, "_fk_data", None)
            if data is None:
                data = self._fk_data = self._mj.MjData(self.model)
            with self._lock:
                data.qpos[:] = self.data.qpos
            data.qpos[self._qadr] = np.asarray(position)[self._idx]
            self._mj.mj_kinematics(self.model, data)
            return np.array([data.site_xpos[i] for i in self._ee_sites])
