"""A robot made of several parts (arm + gripper, two arms, arm + base) behind one adapter."""

from __future__ import annotations

import logging

import numpy as np

from wall_runtime.adapters.config import PartConfig
from wall_runtime.robot import RobotAdapter, RobotError, RobotSpec
from wall_runtime.types import RobotState

log = logging.getLogger(__name__)


class CompositeRobot(RobotAdapter):
    """Splits commands across parts and concatenates their states, in the robot's joint order."""

    def __init__(self, spec: RobotSpec, parts: list[tuple[PartConfig, RobotAdapter]]) -> None:
        self.spec = spec
        self.parts = parts
        names = spec.joint_names
        self._slices = [np.array([names.index(j) for j in cfg.joints]) for cfg, _ in parts]

    @property
    def is_connected(self) -> bool:
        return all(a.is_connected for _, a in self.parts)

    def part(self, name: str) -> RobotAdapter:
        for cfg, adapter in self.parts:
            if cfg.name == name:
                return adapter
        raise KeyError(f"{self.spec.name}: no part named {name!r}")

    def connect(self) -> None:
        done: list[RobotAdapter] = []
        try:
            for _, adapter in self.parts:
                adapter.connect()
                done.append(adapter)
        except Exception:
            for adapter in done:
                try:
                    adapter.disconnect()
                except Exception:  # the original error is the one worth reporting
                    log.exception("disconnect after a failed connect")
            raise

    def read_state(self) -> RobotState:
        states = [adapter.read_state() for _, adapter in self.parts]
        dof = self.spec.dof
        position = np.zeros(dof)
        for idx, st in zip(self._slices, states, strict=True):
            position[idx] = st.position
        # velocity / effort only where every part reports them
        velocity = effort = None
        if all(st.velocity is not None for st in states):
            velocity = np.zeros(dof)
            for idx, st in zip(self._slices, states, strict=True):
                velocity[idx] = st.velocity
        if all(st.effort is not None for st in states):
            effort = np.zeros(dof)
            for idx, st in zip(self._slices, states, strict=True):
                effort[idx] = st.effort
        # The oldest part's stamp: the state is no fresher than its stalest member.
        return RobotState(
            stamp=min(s.stamp for s in states),
            position=position,
            velocity=velocity,
            effort=effort,
            estop=any(s.estop for s in states),
        )

    def command(self, target: np.ndarray) -> None:
        target = self.spec.validate_target(target)
        for idx, (_, adapter) in zip(self._slices, self.parts, strict=False):
            adapter.command(target[idx])

    def hold(self) -> None:
        errors: list[str] = []
        for cfg, adapter in self.parts:
            try:
                adapter.hold()
            except Exception as exc:  # every part must get its hold, whatever the others do
                errors.append(f"{cfg.name}: {exc}")
        if errors:
            raise RobotError(f"{self.spec.name}: hold failed for " + "; ".join(errors))

    def disconnect(self) -> None:
        errors: list[str] = []
        for cfg, adapter in self.parts:
            try:
                adapter.disconnect()
            except Exception as exc:
                errors.append(f"{cfg.name}: {exc}")
        if errors:
            raise RobotError(f"{self.spec.name}: disconnect failed for " + "; ".join(errors))

    def render(self, camera: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """Rendered view from the first simulated part that has this camera."""
        for _, adapter in self.parts:
            if camera in getattr(adapter, "camera_names", ()):
                return adapter.render(camera, width, height)  # type: ignore[attr-defined]
        raise KeyError(f"{self.spec.name}: no simulated camera named {camera!r}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c for _, a in self.parts for c in getattr(a, "camera_names", ()))

    def forward_kinematics(self, position: np.ndarray) -> np.ndarray | None:
        out = []
        for idx, (_, adapter) in zip(self._slices, self.parts, strict=False):
            ee = adapter.forward_kinematics(np.asarray(position)[idx])
            if ee is not None:
                out.append(ee)
        return np.concatenate(out, axis=0) if out else None

    def inject_fault(self, fault: str) -> None:
        """Fault injection for the conformance kit, forwarded to every part that supports it."""
        for _, adapter in self.parts:
            if hasattr(adapter, "inject_fault"):
                adapter.inject_fault(fault)
