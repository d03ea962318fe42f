import math

import pytest

from wall_runtime.control.limits import LimitsError, parse_joint_limits


def test_ros2_control_block_parses_with_soft_limits() -> None:
    lim = parse_joint_limits(
        "j1",
        {
            "has_position_limits": True,
            "min_position": -2.0,
            "max_position": 2.0,
            "max_velocity": 1.5,
            "soft_lower_limit": -1.9,
            "soft_upper_limit": 1.8,
        },
    )
    assert lim.has_velocity_limits and lim.max_velocity == 1.5
    assert (lim.lower, lim.upper) == (-1.9, 1.8)
    assert not lim.has_jerk_limits and math.isinf(lim.max_jerk)


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"max_velocty": 1.0}, "max_velocty"),
        ({"min_position": 1.0, "max_position": 0.0}, "min_position"),
        ({"max_velocity": "fast"}, "max_velocity"),
        ({"max_jerk": -1.0}, "max_jerk"),
        ({"has_position_limits": "yes"}, "has_position_limits"),
    ],
)
def test_bad_block_names_the_field(block: dict, field: str) -> None:
    with pytest.raises(LimitsError, match=field):
        parse_joint_limits("elbow", block)
