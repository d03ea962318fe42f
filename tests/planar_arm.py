"""A two-link planar arm with a hand-written forward kinematics and a workspace box: the safety
chain's box tests (property tests and the workspace check's equivalence test) drive it."""

from __future__ import annotations

import numpy as np

from wall_runtime.control.limits import parse_joint_limits
from wall_runtime.robot import JointSpec

LINKS = (0.5, 0.4)
BOX = {"min": [0.2, -0.3, 0.0], "max": [1.0, 0.3, 0.5]}


def planar_fk(q: np.ndarray) -> np.ndarray:
    x1, y1 = LINKS[0] * np.cos(q[0]), LINKS[0] * np.sin(q[0])
    return np.array([[x1 + LINKS[1] * np.cos(q[0] + q[1]), y1 + LINKS[1] * np.sin(q[0] + q[1]), 0.2]])


def planar_arm(jerk: bool) -> tuple[JointSpec, ...]:
    """Its two joints; with ``jerk``, each with a jerk limit."""
    j = (lambda value: {"max_jerk": value}) if jerk else (lambda value: {})
    limits = {
        "a": dict(min_position=-3, max_position=3, max_velocity=2.0, max_acceleration=10.0, **j(300.0)),
        "b": dict(
            min_position=-3,
            max_position=3,
            max_velocity=3.0,
            max_acceleration=15.0,
            max_deceleration=25.0,
            **j(500.0),
        ),
    }
    return tuple(
        JointSpec(n, "revolute", "rad", parse_joint_limits(n, dict(lim))) for n, lim in limits.items()
    )
