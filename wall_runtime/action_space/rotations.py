"""Rotation conventions of the WALL-OSS checkpoints, exactly as the authors' loader and serving compute
them (spec §11). Plain numpy, vectorised over leading axes, float64.

- Euler ``[roll, pitch, yaw]``: extrinsic x-y-z, ``R = Rz(yaw) · Ry(pitch) · Rx(roll)`` (scipy's
  ``from_euler("xyz", ...)``). Back: ``pitch = asin(clip(-R20, -1, 1))``, ``roll = atan2(R21, R22)``,
  ``yaw = atan2(R10, R00)``, each wrapped to ``[-π, π)`` (``+π`` becomes ``-π``).
- 6D: the first two *rows* of R, row-major ``[R00 R01 R02 R10 R11 R12]``; back by Gram-Schmidt over
  the rows with the authors' ``1e-12`` epsilons.
- Relative (0.5): ``R_abs = GS(rel6d) · R_state`` (the delta on the left: base-frame axes) and
  ``p_abs = p_state + dp``; the inverse gives a delta from an absolute pose.

No other convention exists in this package: every EE quantity the runtime reads or writes goes
through these functions, so a difference from the reference can only be here (tests compare them
with scipy's ``Rotation``).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # the authors' Gram-Schmidt epsilon (added to the norms)


def wrap_angle(x: np.ndarray | float) -> np.ndarray:
    """Wrap to ``[-π, π)``: ``(x + π) mod 2π − π``; ``+π`` maps to ``−π``."""
    x = np.asarray(x, dtype=np.float64)
    return np.mod(x + np.pi, 2.0 * np.pi) - np.pi


def euler_to_matrix(euler: np.ndarray) -> np.ndarray:
    """``[..., 3]`` roll, pitch, yaw → ``[..., 3, 3]`` with ``R = Rz(yaw) Ry(pitch) Rx(roll)``."""
    e = np.asarray(euler, dtype=np.float64)
    if e.shape[-1] != 3:
        raise ValueError(f"Euler angles need 3 values in the last axis, got shape {e.shape}")
    cr, sr = np.cos(e[..., 0]), np.sin(e[..., 0])
    cp, sp = np.cos(e[..., 1]), np.sin(e[..., 1])
    cy, sy = np.cos(e[..., 2]), np.sin(e[..., 2])
    r = np.empty((*e.shape[:-1], 3, 3))
    r[..., 0, 0] = cy * cp
    r[..., 0, 1] = cy * sp * sr - sy * cr
    r[..., 0, 2] = cy * sp * cr + sy * sr
    r[..., 1, 0] = sy * cp
    r[..., 1, 1] = sy * sp * sr + cy * cr
    r[..., 1, 2] = sy * sp * cr - cy * sr
    r[..., 2, 0] = -sp
    r[..., 2, 1] = cp * sr
    r[..., 2, 2] = cp * cr
    return r


def matrix_to_euler(r: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` → ``[..., 3]`` roll, pitch, yaw, each wrapped to ``[-π, π)``.

    At gimbal lock (``|R20| = 1``) the formulae still give *a* valid decomposition (``atan2`` of
    near-zero terms); the matrix it rebuilds is the same one, which is what matters downstream.
    """
    r = np.asarray(r, dtype=np.float64)
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices need shape [..., 3, 3], got {r.shape}")
    pitch = np.arcsin(np.clip(-r[..., 2, 0], -1.0, 1.0))
    roll = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    yaw = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return wrap_angle(np.stack([roll, pitch, yaw], axis=-1))


def matrix_to_6d(r: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` → ``[..., 6]``: the first two rows, row-major."""
    r = np.asarray(r, dtype=np.float64)
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices need shape [..., 3, 3], got {r.shape}")
    return r[..., :2, :].reshape((*r.shape[:-2], 6))


def sixd_to_matrix(d6: np.ndarray) -> np.ndarray:
    """``[..., 6]`` → ``[..., 3, 3]`` by Gram-Schmidt over the rows (authors' epsilons).

    An unnormalised or skewed 6D is orthonormalised; a degenerate one (zero or parallel rows)
    gives a matrix that is not a rotation — callers check :func:`is_rotation` where that matters.
    """
    d = np.asarray(d6, dtype=np.float64)
    if d.shape[-1] != 6:
        raise ValueError(f"6D rotations need 6 values in the last axis, got shape {d.shape}")
    a, b = d[..., 0:3], d[..., 3:6]
    r1 = a / (np.linalg.norm(a, axis=-1, keepdims=True) + EPS)
    b_orth = b - np.sum(r1 * b, axis=-1, keepdims=True) * r1
    r2 = b_orth / (np.linalg.norm(b_orth, axis=-1, keepdims=True) + EPS)
    r3 = np.cross(r1, r2)
    return np.stack([r1, r2, r3], axis=-2)


def is_rotation(r: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Per matrix: orthonormal with determinant +1, within ``tol`` (and finite)."""
    r = np.asarray(r, dtype=np.float64)
    eye = np.eye(3)
    with np.errstate(invalid="ignore"):
        ortho = np.max(np.abs(np.swapaxes(r, -1, -2) @ r - eye), axis=(-2, -1)) <= tol
        det = np.abs(np.linalg.det(np.nan_to_num(r)) - 1.0) <= tol
    return ortho & det & np.all(np.isfinite(r), axis=(-2, -1))


def euler_to_6d(euler: np.ndarray) -> np.ndarray:
    return matrix_to_6d(euler_to_matrix(euler))


def sixd_to_euler(d6: np.ndarray) -> np.ndarray:
    return matrix_to_euler(sixd_to_matrix(d6))


def compose_relative(
    p_state: np.ndarray, r_state: np.ndarray, dp: np.ndarray, rel6d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """0.5's relative actions onto the chunk-start pose: ``p = p_state + dp``, ``R = GS(rel6d) · R_state``.

    ``p_state [3]``, ``r_state [3, 3]``; ``dp [..., 3]``, ``rel6d [..., 6]`` (every row relative to
    the same chunk-start state, never chained).
    """
    p = np.asarray(p_state, dtype=np.float64) + np.asarray(dp, dtype=np.float64)
    r = sixd_to_matrix(rel6d) @ np.asarray(r_state, dtype=np.float64)
    return p, r


def relative_from_absolute(
    p_state: np.ndarray, r_state: np.ndarray, p_abs: np.ndarray, r_abs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`compose_relative`: ``dp = p − p_state``, ``rel6d = 6D(R · R_stateᵀ)``."""
    dp = np.asarray(p_abs, dtype=np.float64) - np.asarray(p_state, dtype=np.float64)
    rel = np.asarray(r_abs, dtype=np.float64) @ np.swapaxes(np.asarray(r_state, dtype=np.float64), -1, -2)
    return dp, matrix_to_6d(rel)


def rotation_angle(r_a: np.ndarray, r_b: np.ndarray) -> np.ndarray:
    """Angle (rad) of the rotation taking ``r_a`` to ``r_b`` (geodesic distance), ``[...]``."""
    rel = np.swapaxes(np.asarray(r_a, dtype=np.float64), -1, -2) @ np.asarray(r_b, dtype=np.float64)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))
