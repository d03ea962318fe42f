"""Robot adapters: robot.yaml loading, the part adapters, composition and the conformance kit."""

from wall_runtime.adapters.config import RobotConfig, RobotConfigError, load_robot
from wall_runtime.adapters.registry import build_adapter

__all__ = ["RobotConfig", "RobotConfigError", "build_adapter", "load_robot"]
