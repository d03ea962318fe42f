"""Loading an arm's kinematic model: MJCF or URDF, from the robot folder or an installed package,
reduced to the arm's chain.

The reduction keeps every body, site and fixed offset of the model but deletes every joint that is
not in the chain (grippers, the other arm, free objects of a scene), with the actuators, sensors,
equalities, tendons and keyframes that refer to them. What remains is a model whose ``qpos`` is
exactly the chain's joints, in the chain's order, so the IK's decision variables are the arm's
joints and nothing else. Positions of deleted joints are their reference (zero) positions, which is
irrelevant as long as none of them sits between the base and the tool frame (checked).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wall_runtime.kinematics.config import ArmKinematicsConfig, KinematicsConfigError

PACKAGE_PREFIX = "package:"


def resolve_model_path(model: str, robot_dir: Path, where: str = "model") -> Path:
    """``package:NAME/sub/path`` -> the file inside the installed package NAME (found by import
    spec, not imported); anything else is relative to the robot folder."""
    if model.startswith(PACKAGE_PREFIX):
        rest = model[len(PACKAGE_PREFIX) :]
        pkg, _, sub = rest.partition("/")
        if not pkg or not sub:
            raise KinematicsConfigError(f"{where}: expected package:NAME/path/in/package, got {model!r}")
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise KinematicsConfigError(
                f"{where}: package {pkg!r} is not installed (scripts/setup.sh installs the model packages)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / sub
    else:
        path = Path(model)
        if not path.is_absolute():
            path = Path(robot_dir) / path
    if not path.is_file():
        raise KinematicsConfigError(f"{where}: {path} does not exist")
    return path


def _load_spec(path: Path, where: str):
    import mujoco

    try:
        spec = mujoco.MjSpec.from_file(str(path))
    except Exception as exc:  # mujoco raises ValueError with the parser's message
        raise KinematicsConfigError(f"{where}: cannot load {path.name}: {exc}") from None
    if path.suffix.lower() == ".urdf":
        # URDF tool links usually hang on fixed joints; keep them as bodies instead of fusing them
        # into their parents, so they can be named as the tool frame.
        spec.compiler.fusestatic = False
        spec.compiler.discardvisual = True
    return spec


def build_chain_model(
    cfg: ArmKinematicsConfig, robot_dir: Path, limits: Mapping[str, tuple[float, float]] | None = None
):
    """The arm's reduced MuJoCo model (``qpos`` = the chain, in order) and the resolved file.

    ``limits`` (robot joint name -> (lower, upper)) narrow the model's joint ranges to the robot's
    own limits; the IK never leaves the intersection.
    """
    import mujoco

    where = cfg.where
    path = resolve_model_path(cfg.model, robot_dir, f"{where}.model")
    spec = _load_spec(path, f"{where}.model")

    by_name = {j.name: j for j in spec.joints}
    for robot_name, model_name in zip(cfg.joints, cfg.model_joints, strict=True):
        if model_name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise KinematicsConfigError(
                f"{where}.joints: {robot_name!r} (model joint {model_name!r}) is not a joint of "
                f"{path.name} (its joints: {known})"
            )
        j = by_name[model_name]
        if j.type not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
            raise KinematicsConfigError(f"{where}.joints: {model_name!r} is not a hinge or slide joint")

    # Everything that refers to joints by index or name goes first, then the other joints.
    for group in (spec.actuators, spec.sensors, spec.equalities, spec.tendons, spec.keys):
        for item in list(group):
            spec.delete(item)
    keep = set(cfg.model_joints)
    for j in list(spec.joints):
        if j.name not in keep:
            spec.delete(j)

    for robot_name, model_name in zip(cfg.joints, cfg.model_joints, strict=True):
        j = spec.joint(model_name)
        lo, hi = (-np.inf, np.inf)
        if j.limited == mujoco.mjtLimited.mjLIMITED_TRUE or (
            j.limited == mujoco.mjtLimited.mjLIMITED_AUTO and j.range[0] < j.range[1]
        ):
            lo, hi = float(j.range[0]), float(j.range[1])
        if limits and robot_name in limits:
            rlo, rhi = limits[robot_name]
            lo, hi = max(lo, rlo), min(hi, rhi)
        if not lo < hi:
            raise KinematicsConfigError(
                f"{where}.joints: {robot_name!r} has an empty range once the model's range and "
                f"joint_limits are intersected ([{lo}, {hi}])"
            )
        if np.isfinite(lo) and np.isfinite(hi):
            j.limited = mujoco.mjtLimited.mjLIMITED_TRUE
            j.range = [lo, hi]

    try:
        model = spec.compile()
    except Exception as exc:
        raise KinematicsConfigError(
            f"{where}.model: {path.name} does not compile once reduced: {exc}"
        ) from None

    # The chain's order is the model's qpos order only if the joints appear in that order.
    qadr = [
        model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n)] for n in cfg.model_joints
    ]
    if model.nq != len(cfg.model_joints) or qadr != list(range(model.nq)):
        raise KinematicsConfigError(
            f"{where}.joints: list the chain's joints base to tool, as they appear in {path.name}"
        )
    for ref, label in ((cfg.base, "base"), (cfg.tool, "tool")):
        obj = mujoco.mjtObj.mjOBJ_BODY if ref.kind == "body" else mujoco.mjtObj.mjOBJ_SITE
        if mujoco.mj_name2id(model, obj, ref.name) < 0:
            names = _names(model, ref.kind)
            raise KinematicsConfigError(
                f"{where}.{label}.{ref.kind}: {ref.name!r} is not a {ref.kind} of {path.name} (its {ref.kind}s: {names})"
            )
    return model, path


def _names(model, kind: str) -> str:
    import mujoco

    obj, count = (
        (mujoco.mjtObj.mjOBJ_BODY, model.nbody) if kind == "body" else (mujoco.mjtObj.mjOBJ_SITE, model.nsite)
    )
    names = [mujoco.mj_id2name(model, obj, i) for i in range(count)]
    shown = [n for n in names if n][:30]
    return ", ".join(shown) or "none"


def frame_pose(model, data, kind: str, frame_id: int) -> tuple[np.ndarray, np.ndarray]:
    """World position and rotation of a body or site after ``mj_kinematics``."""
    if kind == "body":
        return data.xpos[frame_id].copy(), data.xmat[frame_id].reshape(3, 3).copy()
    return data.site_xpos[frame_id].copy(), data.site_xmat[frame_id].reshape(3, 3).copy()


def chain_dofs_between(model, base_body: int, tool_body: int) -> Sequence[int]:
    """Joint ids on the kinematic path from ``base_body`` down to ``tool_body`` (empty if the tool
    does not hang below the base)."""
    ids: list[int] = []
    b = tool_body
    while b not in (base_body, 0):
        start, n = model.body_jntadr[b], model.body_jntnum[b]
        ids.extend(range(start, start + n))
        b = model.body_parentid[b]
    return ids if b == base_body else []
