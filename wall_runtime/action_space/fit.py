"""Does a robot's slot mapping fit a checkpoint? The same check the handshake runs, offline
(``wall-runtime check-robot ROBOT --checkpoint DIR``), with a summary of what fills which slot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wall_runtime.action_space.edge import FitError, ModelEdge, build_edge


def fit_checkpoint(config: Any, checkpoint: str | Path, kinematics: dict | None = None) -> ModelEdge:
    """The model edge for ``config`` (a RobotConfig) and a checkpoint directory; a
    :class:`FitError` naming the slot when the mapping does not fit."""
    from wall_runtime.kinematics import load_robot_kinematics
    from wall_runtime.model.config import ConfigError, load_config

    try:
        data = load_config(checkpoint).data
    except ConfigError as exc:
        raise FitError(f"{checkpoint}: {exc}") from None
    kin = load_robot_kinematics(config) if kinematics is None else kinematics
    return build_edge(
        config.joints,
        config.mapping,
        data.dof_config,
        data.agent_pos_config,
        kin,
        config.ee_limits,
        horizon=data.action_horizon,
    )


def describe_fit(edge: ModelEdge) -> str:
    """One line: which robot part fills which slot, and what stays masked."""
    filled, masked = [], []
    for s in edge.actions.slots:
        if s.kind == "padding":
            continue
        (filled if edge._fills(s) else masked).append(s.key)
    arms = []
    for slot, arm in edge.arms.items():
        pos, rot = edge.actions.arm_convention(slot)
        how = "joints" if pos is None else f"{pos.replace('ee_', '')} + {rot.replace('ee_', '')}"
        arms.append(f"{slot} <- {arm.slot.arm} ({how}{', position-only' if arm.kin.position_only else ''})")
    text = "; ".join(arms) if arms else ", ".join(filled)
    return f"{text}; masked: {', '.join(masked) or 'none'}"
