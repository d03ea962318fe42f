"""The few data types every part of the runtime speaks.

Times are seconds on the robot host's monotonic clock (``time.monotonic()``). The policy host
never interprets a stamp: it echoes it back, so no clock sync across hosts is needed.

Vectors handed to and from the policy are in the *model's* layout (the checkpoint's state and
action vectors, e.g. 20 or 26 dims) and in robot units; the per-robot mapping in ``robot.yaml``
says which of those dims drive which joint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class InpaintHint:
    """Real-time-chunking guidance for the next chunk (Black et al. 2025).

    ``actions[i]`` is what the previous chunk will command at the new chunk's time step ``i``
    (robot units, model action layout, rows past the previous chunk's end repeat its last row);
    ``weights[i]`` in [0, 1] is how strongly the new chunk must continue it (1 for actions that
    will execute while the new chunk is being computed, decaying to 0 afterwards).
    """

    actions: np.ndarray  # float32 [H, D]
    weights: np.ndarray  # float32 [H]
    max_guidance: float = 5.0


@dataclass
class Observation:
    """One observation of one robot, as captured on the robot host."""

    stamp: float
    images: dict[str, np.ndarray]  # model view name -> HxWx3 uint8 RGB
    state: np.ndarray  # float32 [S], model state layout (first len(state) dims when no mask)
    instruction: str
    state_mask: np.ndarray | None = None  # float32 [S_model], 1 = present
    dof_mask: np.ndarray | None = None  # float32 [D_model], 1 = driven by this robot
    norm_key: str | None = None  # normalisation statistics key (the embodiment)
    inpaint: InpaintHint | None = None
    # a simulator's privileged state (name -> a few floats) for scripted experts; real robots send none
    privileged: dict[str, list[float]] | None = None


@dataclass
class PolicyResult:
    """What a policy computes for one observation."""

    actions: np.ndarray  # float32 [H, D] in robot units
    actions_normalized: np.ndarray  # float32 [H, D], the model's normalised chunk
    timing_ms: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds


@dataclass
class ActionChunk:
    """A chunk as the robot host receives it: action ``i`` is meant for ``stamp + i * dt``."""

    actions: np.ndarray  # float32 [H, D] in robot units
    stamp: float  # the stamp of the observation this chunk answers
    dt: float  # seconds between consecutive actions
    seq: int  # sequence number of the request this chunk answers
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    def time_of(self, i: int) -> float:
        return self.stamp + i * self.dt


@dataclass
class RobotState:
    """Measured state of a robot, in the robot's own joint order and units."""

    stamp: float
    position: np.ndarray  # float64 [J] (rad, m, or m/s and rad/s for base velocity joints)
    velocity: np.ndarray | None = None  # float64 [J]
    effort: np.ndarray | None = None  # float64 [J]
    estop: bool = False  # a hardware e-stop input is engaged


@dataclass(frozen=True)
class PolicyMetadata:
    """What a client learns about the policy at the handshake."""

    model: str  # e.g. "wall-oss-flow", "wall-oss-0.5", "echo"
    variant: str  # "flow" | "0.5" | "none"
    backend: str  # "torch" | "onnxruntime" | "tensorrt" | "echo"
    action_horizon: int
    action_dim: int
    state_dim: int
    num_steps: int
    cameras: tuple[str, ...]  # model view names the policy expects, in prompt order
    norm_keys: tuple[str, ...] = ()
    # the checkpoint's layouts by key name (spec §11): the robot side maps its parts onto them
    dof_config: dict[str, int] = field(default_factory=dict, hash=False)
    agent_pos_config: dict[str, int] = field(default_factory=dict, hash=False)
    # view -> longest side of the reference's first (Pillow bicubic) resize; a client may do that
    # resize itself and send model-sized frames (the model input is the same, bit for bit)
    resolutions: dict[str, int] = field(default_factory=dict, hash=False)
    # seconds between two rows of a chunk when the checkpoint declares it (a model trained on rows
    # 0.1 s apart); None: rows are one robot control period apart (the published checkpoints).
    # The server stamps it as each chunk's dt; peers that predate it ignore or omit the field
    action_period: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        d["norm_keys"] = list(self.norm_keys)
        d["dof_config"] = dict(self.dof_config)
        d["agent_pos_config"] = dict(self.agent_pos_config)
        d["resolutions"] = dict(self.resolutions)
        return d
