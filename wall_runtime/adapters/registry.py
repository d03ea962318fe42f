"""Part types a robot.yaml may name, and ``build_adapter``, which composes them into one robot.

Adapter modules are imported only when a robot uses them, so a missing vendor SDK only matters
for the robots that need it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from wall_runtime.adapters.config import Connection, PartConfig, RobotConfig
from wall_runtime.robot import RobotAdapter, RobotSpec

# type -> "module:Class"; the class is constructed as Class(spec, Connection, root).
PART_TYPES: dict[str, str] = {
    "mujoco": "wall_runtime.adapters.sim.mujoco_robot:MujocoRobot",
    "feetech": "wall_runtime.adapters.feetech:FeetechArm",
    "dynamixel": "wall_runtime.adapters.dynamixel:DynamixelArm",
    "ur_rtde": "wall_runtime.adapters.ur:URArm",
    "xarm": "wall_runtime.adapters.xarm:XArm",
    "piper": "wall_runtime.adapters.piper:PiperArm",
    "agilex_base": "wall_runtime.adapters.agilex_base:AgilexBase",
    "lerobot": "wall_runtime.adapters.lerobot_bridge:LeRobotBridge",
    "gym_aloha": "wall_runtime.sims.aloha:AlohaTask",
    "pick_cube": "wall_runtime.sims.pick_cube:PickCubeTask",
}
# part types that are simulations (no hardware behind them): check-robot runs them without
# --hardware, and `cameras snapshot` renders their simulated cameras
SIMULATED_PART_TYPES = frozenset({"mujoco", "gym_aloha", "pick_cube"})


class PartFactory(Protocol):
    def __call__(self, spec: RobotSpec, connection: Connection, root: Path) -> RobotAdapter: ...


def part_class(type_name: str) -> Any:
    module_name, _, cls_name = PART_TYPES[type_name].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def build_part(config: RobotConfig, part: PartConfig) -> RobotAdapter:
    connection = Connection(part.connection, part.where)
    adapter = part_class(part.type)(config.part_spec(part), connection, config.root)
    connection.finish()
    return adapter


def build_adapter(config: RobotConfig) -> RobotAdapter:
    """One adapter for the whole robot, in ``config.joints`` order (nothing connects yet)."""
    from wall_runtime.adapters.composite import CompositeRobot

    parts = [build_part(config, p) for p in config.parts]
    return CompositeRobot(config.spec(), list(zip(config.parts, parts, strict=False)))
