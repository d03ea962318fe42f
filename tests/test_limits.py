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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "expected a number, got True"),
        ("2", "expected a number, got .2."),
        (math.inf, "expected a finite number"),
    ],
)
def test_a_limit_is_a_finite_number_not_a_bool_or_a_string(value, expected: str) -> None:
    with pytest.raises(LimitsError, match=f"joint_limits.elbow.max_velocity: {expected}"):
        parse_joint_limits("elbow", {"max_velocity": value})


def test_yaml_inf_and_bools_are_refused_as_yaml_gives_them() -> None:
    import yaml

    for text in ("max_velocity: .inf", "max_velocity: true", "max_velocity: '2'", "max_position: .nan"):
        with pytest.raises(LimitsError, match=r"joint_limits\.j\."):
            parse_joint_limits("j", yaml.safe_load(text))


def test_a_pasted_ros2_control_block_is_accepted_as_the_schema_defines_it() -> None:
    """Every field of ros2_control's joint_limits.yaml, as its example files write them."""
    import yaml

    block = yaml.safe_load(
        """
        has_position_limits: true
        min_position: -2.0
        max_position: 2.0
        has_velocity_limits: true
        max_velocity: 1.5
        has_acceleration_limits: true
        max_acceleration: 5.0
        has_deceleration_limits: true
        max_deceleration: 7.5
        has_jerk_limits: false
        max_jerk: 0.0
        has_effort_limits: true
        max_effort: 12.0
        angle_wraparound: false
        has_soft_limits: true
        k_position: 100.0
        k_velocity: 20.0
        soft_lower_limit: -1.8
        soft_upper_limit: 1.9
        """
    )
    lim = parse_joint_limits("shoulder", block)
    assert (lim.lower, lim.upper) == (-1.8, 1.9)
    assert (lim.acceleration, lim.deceleration) == (5.0, 7.5)
    assert math.isinf(lim.jerk)  # switched off by its flag, so its 0.0 is no limit
    assert (lim.k_position, lim.k_velocity) == (100.0, 20.0)
    # switched off, the soft limits and the deceleration limit are not used
    off = parse_joint_limits("s", {**block, "has_soft_limits": False, "has_deceleration_limits": False})
    assert (off.lower, off.upper) == (-2.0, 2.0) and off.deceleration == 5.0


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"has_velocity_limits": True}, "has_velocity_limits: true, but no max_velocity"),
        ({"has_soft_limits": True, "soft_lower_limit": -1.0}, "has_soft_limits: needs"),
        (
            {"min_position": -1, "max_position": 1, "soft_lower_limit": 2, "soft_upper_limit": 3},
            "soft_lower_limit: .* leaves no room",
        ),
        ({"max_deceleration": 0.0}, "max_deceleration: must be positive"),
        ({"min_position": -1.0}, "min_position: position limits need both"),
    ],
)
def test_inconsistent_flags_and_values_name_the_field(block: dict, field: str) -> None:
    with pytest.raises(LimitsError, match=f"joint_limits.j.{field}"):
        parse_joint_limits("j", block)
