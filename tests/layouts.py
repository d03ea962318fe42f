"""Checkpoint layouts the tests share."""

from __future__ import annotations

# WALL-OSS-FLOW's dof_config without its padding (spec §11): both arms' absolute EE pose (position
# + Euler) and grippers, head, lift and base velocity
FLOW_LAYOUT: dict[str, int] = {
    "follow_left_ee_cartesian_pos": 3,
    "follow_left_ee_rotation": 3,
    "follow_left_gripper": 1,
    "follow_right_ee_cartesian_pos": 3,
    "follow_right_ee_rotation": 3,
    "follow_right_gripper": 1,
    "head_actions": 2,
    "height": 1,
    "velocity_decomposed": 3,
}
