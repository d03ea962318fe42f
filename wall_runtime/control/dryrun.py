"""A first-order simulated robot for dry runs of the control loop without MuJoCo or hardware.

Every joint follows its commanded target with a first-order lag (time constant ``tau``), integrated
on the monotonic clock whenever the state is read, so the dynamics do not depend on how often
anyone looks. Base velocity joints follow the commanded velocity the same way; ``hold`` makes arms
keep their current position and brings bases to rest at ``base_brake`` (units/s²). It obeys the
``RobotAdapter`` contract; every call to ``command`` and ``hold`` is recorded for tests and plots.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from wall_runtime.control.safety import BASE_KINDS
from wall_runtime.robot import RobotAdapter, RobotSpec
from wall_runtime.types import ActionChunk, Observation, RobotState


class FirstOrderRobot(RobotAdapter):
    def __init__(
        self,
        spec: RobotSpec,
        initial: np.ndarray | None = None,
        tau: float = 0.05,
        base_brake: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        fk: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ) -> None:
        self.spec = spec
        self.tau = tau
        self.base_brake = base_brake
        self.clock = clock
        self._fk = fk
        n = spec.dof
        self._initial = np.zeros(n) if initial is None else np.asarray(initial, dtype=np.float64).copy()
        self._is_base = np.array([j.kind in BASE_KINDS for j in spec.joints])
        self._lock = threading.Lock()
        self.connected = False
        self.estop_input = False
        self.commands: list[tuple[float, np.ndarray]] = []
        self.holds: list[float] = []

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self) -> None:
        self._position = self._initial.copy()
        self._target = self._initial.copy()
        self._holding = False
        self._t = self.clock()
        self.connected = True

    def _advance(self) -> None:
        now = self.clock()
        dt = max(0.0, now - self._t)
        self._t = now
        if dt == 0.0:
            return
        if self._holding:
            # bases brake to zero within their deceleration; arms stay where they are
            v = self._position[self._is_base]
            self._position[self._is_base] = np.sign(v) * np.maximum(np.abs(v) - self.base_brake * dt, 0.0)
            return
        alpha = 1.0 - math.exp(-dt / self.tau)
        self._position += alpha * (self._target - self._position)

    def read_state(self) -> RobotState:
        self._require()
        with self._lock:
            self._advance()
            return RobotState(stamp=self._t, position=self._position.copy(), estop=self.estop_input)

    def command(self, target: np.ndarray) -> None:
        self._require()
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self.spec.dof,) or not np.all(np.isfinite(target)):
            raise ValueError(f"command must be {self.spec.dof} finite values, got {target!r}")
        with self._lock:
            self._advance()
            self._target = target.copy()
            self._holding = False
            self.commands.append((self._t, target.copy()))

    def hold(self) -> None:
        self._require()
        with self._lock:
            self._advance()
            self._holding = True
            self._target = np.where(self._is_base, 0.0, self._position)
            self.holds.append(self._t)

    def disconnect(self) -> None:
        if self.connected:
            self.hold()
        self.connected = False

    def forward_kinematics(self, position: np.ndarray) -> np.ndarray | None:
        return None if self._fk is None else self._fk(position)

    def _require(self) -> None:
        if not self.connected:
            raise RuntimeError(f"{self.spec.name}: not connected (call connect() first)")


class ThreadedPolicySource:
    """Answers observations with chunks from ``policy(observation) -> actions [H, D]`` on a worker
    thread after ``latency`` seconds: the loop's ``ChunkSource`` contract (non-blocking request and
    poll) for dry runs and benchmarks. ``silent = True`` makes it stop answering, like a dead server."""

    def __init__(
        self,
        policy: Callable[[Observation], np.ndarray],
        dt: float,
        latency: float = 0.05,
        jitter: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.dt = dt
        self.latency = latency
        self.jitter = jitter
        self.clock = clock
        self.silent = False
        self.observations: list[Observation] = []
        self._rng = np.random.default_rng(seed)
        self._inbox: queue.Queue[Observation | None] = queue.Queue()
        self._outbox: queue.Queue[ActionChunk] = queue.Queue()
        self._seq = 0
        self._thread = threading.Thread(target=self._serve, name="dry-run-policy", daemon=True)
        self._thread.start()

    def request(self, observation: Observation) -> None:
        self._inbox.put(observation)

    def poll(self) -> ActionChunk | None:
        try:
            return self._outbox.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=2.0)

    def _serve(self) -> None:
        while True:
            obs = self._inbox.get()
            if obs is None:
                return
            if self.silent:
                continue
            self.observations.append(obs)
            actions = np.asarray(self.policy(obs), dtype=np.float32)
            ready = obs.stamp + self.latency + self._rng.uniform(0.0, self.jitter)
            delay = ready - self.clock()
            if delay > 0:
                time.sleep(delay)
            if self.silent:
                continue
            self._seq += 1
            self._outbox.put(ActionChunk(actions=actions, stamp=obs.stamp, dt=self.dt, seq=self._seq))
