"""Spec §11's rotation conventions against scipy's Rotation, computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from wall_runtime.action_space import rotations as rot

RNG = np.random.default_rng(7)


def random_euler(n: int) -> np.ndarray:
    return np.column_stack(
        [
            RNG.uniform(-math.pi, math.pi, n),
            RNG.uniform(-math.pi / 2, math.pi / 2, n),
            RNG.uniform(-math.pi, math.pi, n),
        ]
    )


def test_euler_to_matrix_is_extrinsic_xyz():
    e = random_euler(500)
    ours = rot.euler_to_matrix(e)
    np.testing.assert_allclose(ours, Rotation.from_euler("xyz", e).as_matrix(), atol=1e-12)
    # the same rotation as intrinsic ZYX with the angles reversed (yaw, pitch, roll)
    np.testing.assert_allclose(ours, Rotation.from_euler("ZYX", e[:, ::-1]).as_matrix(), atol=1e-12)


def test_matrix_to_euler_matches_scipy_and_round_trips():
    r = Rotation.random(2000, random_state=3)
    ours = rot.matrix_to_euler(r.as_matrix())
    ref = Rotation.from_matrix(r.as_matrix()).as_euler("xyz")
    # same angles up to the wrap (scipy returns (-π, π]; the authors wrap to [-π, π))
    np.testing.assert_allclose(rot.wrap_angle(ours - ref), 0.0, atol=1e-9)
    np.testing.assert_allclose(rot.euler_to_matrix(ours), r.as_matrix(), atol=1e-12)
    assert np.all(ours >= -math.pi) and np.all(ours < math.pi)


def test_wrap_sends_plus_pi_to_minus_pi():
    assert rot.wrap_angle(math.pi) == -math.pi
    assert rot.wrap_angle(-math.pi) == -math.pi
    np.testing.assert_allclose(
        rot.wrap_angle([3 * math.pi, 2 * math.pi, -0.5]), [-math.pi, 0.0, -0.5], atol=1e-12
    )
    # yaw of exactly π (R10 = +0, R00 = -1) comes back as -π
    e = rot.matrix_to_euler(Rotation.from_euler("z", math.pi).as_matrix())
    assert e[2] == pytest.approx(-math.pi)
    np.testing.assert_allclose(
        rot.euler_to_matrix(e), Rotation.from_euler("z", math.pi).as_matrix(), atol=1e-12
    )


@pytest.mark.parametrize("pitch", [math.pi / 2, -math.pi / 2])
def test_gimbal_lock(pitch):
    # just off the lock the inverse still recovers the matrix
    for roll, yaw in RNG.uniform(-math.pi, math.pi, (50, 2)):
        near = pitch - math.copysign(1e-5, pitch)
        r = Rotation.from_euler("xyz", [roll, near, yaw]).as_matrix()
        np.testing.assert_allclose(rot.euler_to_matrix(rot.matrix_to_euler(r)), r, atol=1e-9)
    # at the lock the authors' formulae read roll and yaw from atan2 of rounding residue: pitch is
    # exact, the values are finite and are the formulae's own (reproduced, not "repaired"), and
    # the matrix they rebuild has the right third row (the approach direction)
    for roll, yaw in RNG.uniform(-math.pi, math.pi, (50, 2)):
        r = Rotation.from_euler("xyz", [roll, pitch, yaw]).as_matrix()
        e = rot.matrix_to_euler(r)
        assert e[1] == pytest.approx(pitch, abs=1e-7)
        expected = [
            math.atan2(r[2, 1], r[2, 2]),
            math.asin(max(-1.0, min(1.0, -r[2, 0]))),
            math.atan2(r[1, 0], r[0, 0]),
        ]
        np.testing.assert_allclose(e, rot.wrap_angle(expected), atol=0)
        np.testing.assert_allclose(rot.euler_to_matrix(e)[2], r[2], atol=1e-7)
    # the inverse clips R20 past ±1 (rounding) instead of returning NaN
    r = Rotation.from_euler("xyz", [0.3, pitch, -0.2]).as_matrix()
    r[2, 0] *= 1 + 1e-12
    assert np.all(np.isfinite(rot.matrix_to_euler(r)))


def test_6d_is_the_first_two_rows():
    r = Rotation.random(300, random_state=5).as_matrix()
    d6 = rot.matrix_to_6d(r)
    np.testing.assert_array_equal(d6[:, :3], r[:, 0, :])
    np.testing.assert_array_equal(d6[:, 3:], r[:, 1, :])
    np.testing.assert_allclose(rot.matrix_to_6d(np.eye(3)), [1, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(rot.sixd_to_matrix(d6), r, atol=1e-12)


def test_gram_schmidt_over_rows_of_an_unnormalised_6d():
    r = Rotation.random(200, random_state=11).as_matrix()
    scale = RNG.uniform(0.1, 10.0, (200, 2))
    skew = 0.3 * r[:, 0, :]  # b gets a component along a
    a = r[:, 0, :] * scale[:, :1]
    b = (r[:, 1, :] + skew) * scale[:, 1:]
    out = rot.sixd_to_matrix(np.concatenate([a, b], axis=1))
    np.testing.assert_allclose(out, r, atol=1e-9)
    assert rot.is_rotation(out).all()
    # independent Gram-Schmidt with the 1e-12 epsilons, rows stacked
    a1 = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    b1 = b - np.sum(a1 * b, axis=1, keepdims=True) * a1
    b1 = b1 / (np.linalg.norm(b1, axis=1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(out, np.stack([a1, b1, np.cross(a1, b1)], axis=1), atol=1e-15)
    # a degenerate 6D is not a rotation (callers refuse it)
    assert not rot.is_rotation(rot.sixd_to_matrix(np.zeros(6)))
    assert not rot.is_rotation(rot.sixd_to_matrix([1, 0, 0, 2, 0, 0]))


def test_relative_composition_multiplies_on_the_left():
    p0 = RNG.normal(size=3)
    r0 = Rotation.random(random_state=1)
    rel = Rotation.random(32, random_state=2)
    dp = RNG.normal(size=(32, 3)) * 0.05
    p, r = rot.compose_relative(p0, r0.as_matrix(), dp, rot.matrix_to_6d(rel.as_matrix()))
    np.testing.assert_allclose(p, p0 + dp, atol=1e-15)
    np.testing.assert_allclose(r, (rel * r0).as_matrix(), atol=1e-12)  # base-frame delta: rel · R0
    # not R0 · rel (the two differ on random data)
    assert np.max(np.abs(r - (r0 * rel).as_matrix())) > 0.1
    dp2, rel6 = rot.relative_from_absolute(p0, r0.as_matrix(), p, r)
    np.testing.assert_allclose(dp2, dp, atol=1e-12)
    np.testing.assert_allclose(rot.sixd_to_matrix(rel6), rel.as_matrix(), atol=1e-12)


def test_serving_output_row_is_wrapped_euler_of_the_composed_pose():
    # what the authors' serving returns per arm: [x, y, z, roll, pitch, yaw, gripper] of the composed pose
    r0 = Rotation.from_euler("xyz", [0.1, -0.2, 3.1])
    rel = Rotation.from_euler("z", 0.2)
    _, r = rot.compose_relative(np.zeros(3), r0.as_matrix(), np.zeros(3), rot.matrix_to_6d(rel.as_matrix()))
    e = rot.matrix_to_euler(r)
    ref = (rel * r0).as_euler("xyz")
    np.testing.assert_allclose(rot.wrap_angle(e - ref), 0, atol=1e-12)
    assert -math.pi <= e[2] < 0  # 3.3 rad wrapped


def test_rotation_angle():
    a = Rotation.random(50, random_state=4)
    b = Rotation.random(50, random_state=9)
    np.testing.assert_allclose(
        rot.rotation_angle(a.as_matrix(), b.as_matrix()), (a.inv() * b).magnitude(), atol=1e-7
    )
