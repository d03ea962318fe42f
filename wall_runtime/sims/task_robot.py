"""What every simulated task robot shares: its two clocks, the real-time physics thread, the
connection state and the conformance kit's dropped link.

A task robot (gym-aloha's :class:`~wall_runtime.sims.aloha.AlohaTask`, the project's
:class:`~wall_runtime.sims.pick_cube.PickCubeTask`) steps its own physics and knows its success.
Subclasses implement ``reset(seed)`` (which must end with :meth:`_episode_started`),
``episode_time`` (physics seconds since the episode began) and ``_physics_steps(target)`` (step
until ``episode_time`` reaches ``target``, scoring as they go); ``_on_disconnect`` frees what a
connection held (offscreen renderers).

Clocks (``connection.clock``): ``real`` — the physics runs on its own thread in real time, like a
servo controller; ``simulated`` — a :class:`~wall_runtime.sims.clock.SimClock` that the control loop
sleeps on advances the physics, so a run does not depend on the machine's load.
"""

from __future__ import annotations

import threading
import time

from wall_runtime.adapters.config import Connection, RobotConfigError
from wall_runtime.robot import RobotAdapter, RobotLinkError, RobotNotConnectedError, RobotSpec
from wall_runtime.sims.clock import SimClock

CLOCKS = ("real", "simulated")


class SimTaskRobot(RobotAdapter):
    thread_name = "sim-task"
    seed: int
    _episode_start: float

    def _init_task_robot(self, spec: RobotSpec, connection: Connection, time_limit_s: float) -> None:
        """The connection keys every task shares (``clock``, ``seed``, ``time_limit_s``) and the
        spec with the ``simulated`` and ``privileged_state`` capabilities; the clock starts at
        :meth:`_start_clock`, once the subclass can reset."""
        self.clock_kind = connection.str("clock", "real")
        if self.clock_kind not in CLOCKS:
            raise RobotConfigError(f"connection.clock: {self.clock_kind!r} is not 'real' or 'simulated'")
        self.seed = connection.int("seed", 0)
        self.time_limit_s = connection.float("time_limit_s", time_limit_s)
        self.spec = RobotSpec(
            name=spec.name,
            joints=spec.joints,
            control_hz=spec.control_hz,
            capabilities=frozenset(set(spec.capabilities) | {"simulated", "privileged_state"}),
            watchdog_timeout_s=spec.watchdog_timeout_s,
        )
        self._lock = threading.RLock()
        self._connected = False
        self._link_up = True
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.sim_clock: SimClock | None = None

    def _start_clock(self) -> None:
        self.use_clock(self.clock_kind)

    # -- clock and episode ---------------------------------------------------------------------

    def use_clock(self, kind: str) -> None:
        """Switch between the ``real`` and the ``simulated`` clock (before ``connect``); resets."""
        if self._connected:
            raise RuntimeError(f"{self.spec.name}: choose the clock before connecting")
        if kind not in CLOCKS:
            raise ValueError(f"clock {kind!r}: choose real or simulated")
        self.clock_kind = kind
        self.sim_clock = None
        if kind == "simulated":
            self.sim_clock = SimClock()
            self.sim_clock.on_advance(self._advance_to)
        self.reset(self.seed)

    def now(self) -> float:
        return self.sim_clock.now() if self.sim_clock is not None else time.monotonic()

    def reset(self, seed: int) -> None:  # pragma: no cover - every task defines it
        raise NotImplementedError

    @property
    def episode_time(self) -> float:  # pragma: no cover - every task defines it
        raise NotImplementedError

    def _physics_steps(self, target: float) -> None:  # pragma: no cover - every task defines it
        raise NotImplementedError

    def _episode_started(self) -> None:
        """The end of every ``reset``: the simulated clock back at 0 (each episode on the same float
        times, so the same seed gives bit-identical reruns) and the episode's start noted."""
        if self.sim_clock is not None:
            self.sim_clock.restart(0.0)
        self._episode_start = self.now()

    def _advance_to(self, t: float) -> None:
        with self._lock:
            self._physics_steps(t - self._episode_start)

    def _run(self) -> None:
        wall0, sim0 = time.monotonic(), self.episode_time
        while not self._stop.is_set():
            with self._lock:
                behind = (time.monotonic() - wall0) - (self.episode_time - sim0)
                if behind > 0.1:  # a loaded machine: drop the backlog rather than fast-forward
                    wall0 += behind - 0.1
                self._physics_steps(time.monotonic() - wall0 + sim0)
            time.sleep(0.002)

    # -- contract ------------------------------------------------------------------------------

    def connect(self) -> None:
        self._link_up = True  # (again, after a dropped link)
        if self._connected:
            return
        self._connected = True
        if self.sim_clock is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"{self.thread_name}:{self.spec.name}", daemon=True
            )
            self._thread.start()

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._on_disconnect()
        self._connected = False

    def _on_disconnect(self) -> None:
        """What a connection held, freed (the physics thread is already stopped)."""

    def _check(self) -> None:
        if not self._connected:
            raise RobotNotConnectedError(f"{self.spec.name}: not connected")
        if not self._link_up:
            raise RobotLinkError(
                f"{self.spec.name}: link dropped (simulated); call connect() to re-establish"
            )

    def inject_fault(self, fault: str) -> None:
        """The conformance kit's dropped link."""
        if fault != "link_drop":
            raise ValueError(f"unknown fault {fault!r} (known: link_drop)")
        self._link_up = False
