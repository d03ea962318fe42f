"""The message schema (protocol version 1), shared by server and client. ``docs/protocol.md`` is its
human-readable form; keep the two in step and bump ``PROTOCOL_VERSION`` on any incompatible change.

Every message is ``codec.encode(header, arrays)``: a msgpack header with ``v`` (protocol version)
and ``type``, then raw array frames. This module builds and checks headers field by field, and
converts observations and chunks to and from messages, validating them against the handshake.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wall_runtime.model.image_processing import wire_frame_size
from wall_runtime.transport.codec import Message, encode
from wall_runtime.transport.errors import ErrorCode, ProtocolError
from wall_runtime.types import ActionChunk, InpaintHint, Observation, PolicyMetadata

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024

# Message types.
HELLO, WELCOME = "hello", "welcome"
OBSERVE, CHUNK, ERROR = "observe", "chunk", "error"
PING, PONG = "ping", "pong"
RESET, ACK = "reset", "ack"
BYE = "bye"
STATS = "stats"
ATTACH, ATTACHED = "attach", "attached"  # a welcomed robot moves to the session endpoint
CLIENT_TYPES = frozenset({HELLO, OBSERVE, PING, RESET, BYE, STATS, ATTACH})
SERVER_TYPES = frozenset({WELCOME, CHUNK, ERROR, PONG, ACK, STATS, ATTACHED})

IMAGE_PREFIX = "image/"
MAX_IMAGE_SIDE = 4096
MAX_NAME_LEN = 64
MAX_INSTRUCTION_LEN = 4096
STATS_PAGE = 100  # sessions listed per stats reply unless asked otherwise
STATS_PAGE_MAX = 200  # most sessions one stats reply lists (its header stays well under 64 KiB)
MAX_PRIVILEGED = 16  # entries of an observation's privileged state, each at most 64 floats


def _bad(message: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> ProtocolError:
    return ProtocolError(code, message)


def require(
    header: Mapping[str, Any], name: str, kind: type | tuple[type, ...], optional: bool = False
) -> Any:
    """``header[name]`` checked to be of ``kind`` (bool is never taken for int)."""
    if name not in header or header[name] is None:
        if optional:
            return None
        raise _bad(f"'{header.get('type')}' message lacks field '{name}'")
    value = header[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise _bad(f"field '{name}' must be {'/'.join(k.__name__ for k in kinds)}, got bool")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds):
        raise _bad(
            f"field '{name}' must be {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"field '{name}' must be finite, got {value}", ErrorCode.BAD_VALUE)
    return value


def check_version(header: Mapping[str, Any]) -> None:
    v = header.get("v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {v!r} is not supported; this server speaks version {PROTOCOL_VERSION}",
        )


def seq_of(header: Mapping[str, Any]) -> int | None:
    """The request's sequence number if it has a usable one (for addressing error replies)."""
    seq = header.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63:
        return seq
    return None


def _seq(header: Mapping[str, Any]) -> int:
    seq = require(header, "seq", int)
    if not 0 <= seq < 2**63:
        raise _bad(f"seq must be in [0, 2**63), got {seq}")
    return seq


# ----------------------------------------------------------------------------------------- hello


@dataclass(frozen=True)
class RobotDescription:
    """What a robot announces in ``hello``; every later observation is checked against it.

    ``state_dim`` None leaves the state vector's size to the policy: the server takes the policy's
    ``state_dim`` for the session (:meth:`for_policy`) and says so in the welcome, so a robot that
    does not pin the checkpoint's size needs one handshake, not a probe first."""

    robot_id: str
    embodiment: str
    cameras: dict[str, tuple[int, int, int]]  # model view name -> (H, W, 3)
    state_dim: int | None  # None: the policy's own (resolved by the server at the handshake)
    action_period: float  # seconds between actions; becomes each chunk's ``dt``

    def to_header(self) -> dict[str, Any]:
        header = {
            "v": PROTOCOL_VERSION,
            "type": HELLO,
            "robot_id": self.robot_id,
            "embodiment": self.embodiment,
            "cameras": {k: list(v) for k, v in self.cameras.items()},
            "state_dim": self.state_dim,
            "action_period": self.action_period,
        }
        if self.state_dim is None:
            del header["state_dim"]  # omitted, not nil: the same hello as before for explicit sizes
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any], policy: PolicyMetadata | None = None) -> RobotDescription:
        """The hello's description; one that leaves ``state_dim`` to the policy (absent or nil)
        takes ``policy.state_dim`` when ``policy`` is given (the server's case), else keeps None."""
        robot_id = require(header, "robot_id", str)
        embodiment = require(header, "embodiment", str)
        for name, value in (("robot_id", robot_id), ("embodiment", embodiment)):
            if not 0 < len(value) <= MAX_NAME_LEN:
                raise _bad(f"{name} must be 1..{MAX_NAME_LEN} characters", ErrorCode.BAD_HELLO)
        cams = require(header, "cameras", dict)
        if not 0 < len(cams) <= 8:
            raise _bad("cameras must describe 1..8 views", ErrorCode.BAD_HELLO)
        cameras: dict[str, tuple[int, int, int]] = {}
        for name, shape in cams.items():
            ok = (
                isinstance(name, str)
                and 0 < len(name) <= MAX_NAME_LEN
                and isinstance(shape, list)
                and len(shape) == 3
                and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
                and 0 < shape[0] <= MAX_IMAGE_SIDE
                and 0 < shape[1] <= MAX_IMAGE_SIDE
                and shape[2] == 3
            )
            if not ok:
                raise _bad(f"camera {name!r}: shape must be [H, W, 3], got {shape!r}", ErrorCode.BAD_HELLO)
            cameras[name] = (shape[0], shape[1], shape[2])
        state_dim = require(header, "state_dim", int, optional=True)
        action_period = require(header, "action_period", float)
        if state_dim is not None and not 0 < state_dim <= 1024:
            raise _bad(f"state_dim must be in 1..1024, got {state_dim}", ErrorCode.BAD_HELLO)
        if not 0 < action_period <= 10:
            raise _bad(f"action_period must be in (0, 10] s, got {action_period}", ErrorCode.BAD_HELLO)
        robot = cls(robot_id, embodiment, cameras, state_dim, action_period)
        return robot.for_policy(policy) if policy is not None else robot

    def for_policy(self, meta: PolicyMetadata) -> RobotDescription:
        """This description with the state size the session takes: its own, or else the policy's."""
        if self.state_dim is not None:
            return self
        return dataclasses.replace(self, state_dim=meta.state_dim)

    def check_fits(self, meta: PolicyMetadata) -> None:
        """Refuse at the handshake a robot whose observations the policy could not take."""
        unknown = sorted(set(self.cameras) - set(meta.cameras))
        if unknown:
            raise _bad(
                f"cameras {unknown} are not views of this policy (it takes {list(meta.cameras)})",
                ErrorCode.BAD_HELLO,
            )
        if self.state_dim is not None and self.state_dim > meta.state_dim:
            raise _bad(
                f"state_dim {self.state_dim} exceeds the policy's state dim {meta.state_dim}",
                ErrorCode.BAD_HELLO,
            )

    def expected_bytes(self, meta: PolicyMetadata) -> int:
        """Largest well-formed observe message (arrays + header allowance) for this robot."""
        images = sum(h * w * c for h, w, c in self.cameras.values())
        floats = (self.state_dim or meta.state_dim) + meta.state_dim + meta.action_dim
        floats += meta.action_horizon * (meta.action_dim + 1)
        return images + 4 * floats + 16 * 1024


def _resolutions(d: Any) -> dict[str, int]:
    """The views' first-resize resolutions a server announces (absent from older servers)."""
    if not isinstance(d, Mapping):
        raise TypeError("resolutions must be a map of view -> int")
    out = {}
    for view, res in d.items():
        if not isinstance(res, int) or isinstance(res, bool) or not 0 < res <= MAX_IMAGE_SIDE:
            raise ValueError(f"resolution of {view!r} must be an int in 1..{MAX_IMAGE_SIDE}, got {res!r}")
        out[str(view)] = res
    return out


def _action_period(value: Any) -> float | None:
    """The policy's declared row period (absent / None from peers that predate it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 10:
        raise ValueError(f"action_period must be seconds in (0, 10], got {value!r}")
    return float(value)


def metadata_from_dict(d: Mapping[str, Any]) -> PolicyMetadata:
    if not isinstance(d, Mapping):
        raise _bad(f"welcome carries policy metadata of type {type(d).__name__}, not a map")
    try:
        return PolicyMetadata(
            model=str(d["model"]),
            variant=str(d["variant"]),
            backend=str(d["backend"]),
            action_horizon=int(d["action_horizon"]),
            action_dim=int(d["action_dim"]),
            state_dim=int(d["state_dim"]),
            num_steps=int(d["num_steps"]),
            cameras=tuple(d["cameras"]),
            norm_keys=tuple(d.get("norm_keys", ())),
            dof_config={str(k): int(v) for k, v in (d.get("dof_config") or {}).items()},
            agent_pos_config={str(k): int(v) for k, v in (d.get("agent_pos_config") or {}).items()},
            resolutions=_resolutions(d.get("resolutions") or {}),
            action_period=_action_period(d.get("action_period")),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise _bad(f"welcome carries unusable policy metadata: {exc}") from None


def hello_extras(header: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(role, token)`` of a hello: ``role`` is ``robot`` (default) or ``monitor`` (a metrics reader
    that only pings and asks for stats); ``token`` is the session token a reconnecting robot got
    in its previous welcome."""
    role = require(header, "role", str, optional=True) or "robot"
    if role not in ("robot", "monitor"):
        raise _bad(f"hello role must be 'robot' or 'monitor', got {role[:40]!r}", ErrorCode.BAD_HELLO)
    token = require(header, "token", str, optional=True)
    if token is not None and len(token) > MAX_NAME_LEN:
        raise _bad(f"hello token must be at most {MAX_NAME_LEN} characters", ErrorCode.BAD_HELLO)
    return role, token


def monitor_hello() -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": HELLO, "role": "monitor"}


def stats_page(header: Mapping[str, Any]) -> tuple[int, int]:
    """``(offset, limit)`` of a stats request's session listing (defaults 0, ``STATS_PAGE``)."""
    offset = require(header, "offset", int, optional=True) or 0
    limit = require(header, "limit", int, optional=True)
    limit = STATS_PAGE if limit is None else limit
    if offset < 0 or limit < 0:
        raise _bad(f"stats offset and limit must be >= 0, got {offset}, {limit}")
    return min(offset, 2**31), min(limit, STATS_PAGE_MAX)


def welcome_header(
    session: str,
    meta: PolicyMetadata,
    heartbeat_interval: float,
    max_message_bytes: int,
    token: str = "",
    limits: Mapping[str, Any] | None = None,
    session_port: int | None = None,
) -> dict[str, Any]:
    header = {
        "v": PROTOCOL_VERSION,
        "type": WELCOME,
        "session": session,
        "metadata": meta.to_dict(),
        "heartbeat_interval": heartbeat_interval,
        "max_message_bytes": max_message_bytes,
        "token": token,
        "limits": dict(limits or {}),
    }
    if session_port is not None:
        header["session_port"] = session_port
    return header


def welcome_session_port(header: Mapping[str, Any]) -> int | None:
    """The session endpoint's TCP port a welcome offers (None: stay on this connection)."""
    port = header.get("session_port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    return None


def attach_token(header: Mapping[str, Any]) -> str:
    """The session token an ``attach`` presents (the one its welcome gave)."""
    token = require(header, "token", str)
    if not 0 < len(token) <= MAX_NAME_LEN:
        raise _bad(f"attach token must be 1 to {MAX_NAME_LEN} characters")
    return token


def session_welcome(welcome: Mapping[str, Any], token: str, robot: RobotDescription | None) -> dict[str, Any]:
    """One session's welcome: the server's shared part, the session's token and, for a robot, the
    ``state_dim`` its observations must have (the hello's, or the policy's when it left it open)."""
    header = {**welcome, "token": token}
    if robot is not None:
        header["state_dim"] = robot.state_dim
    return header


def welcome_state_dim(header: Mapping[str, Any]) -> int | None:
    """The session's state size a welcome names (None from servers that predate the field)."""
    value = header.get("state_dim")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1024:
        return value
    return None


def error_header(code: ErrorCode | str, message: str, seq: int | None) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "type": ERROR,
        "seq": seq,
        "code": getattr(code, "value", code),
        "message": message[:2000],
    }


def simple_header(kind: str, seq: int | None = None, **extra: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": kind}
    if seq is not None:
        h["seq"] = seq
    h.update(extra)
    return h


# --------------------------------------------------------------------------------------- observe


@dataclass
class ObserveRequest:
    seq: int
    deadline_ms: float  # budget from the server's receipt of the message
    observation: Observation


def encode_observe(obs: Observation, seq: int, deadline_ms: float) -> list[Any]:
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "type": OBSERVE,
        "seq": seq,
        "deadline_ms": float(deadline_ms),
        "stamp": float(obs.stamp),
        "instruction": obs.instruction,
    }
    if obs.norm_key is not None:
        header["norm_key"] = obs.norm_key
    if obs.privileged:
        header["privileged"] = {k: [float(x) for x in v] for k, v in obs.privileged.items()}
    arrays: dict[str, np.ndarray] = {IMAGE_PREFIX + k: v for k, v in obs.images.items()}
    arrays["state"] = np.asarray(obs.state, dtype=np.float32)
    if obs.state_mask is not None:
        arrays["state_mask"] = np.asarray(obs.state_mask, dtype=np.float32)
    if obs.dof_mask is not None:
        arrays["dof_mask"] = np.asarray(obs.dof_mask, dtype=np.float32)
    if obs.inpaint is not None:
        header["max_guidance"] = float(obs.inpaint.max_guidance)
        arrays["inpaint/actions"] = np.asarray(obs.inpaint.actions, dtype=np.float32)
        arrays["inpaint/weights"] = np.asarray(obs.inpaint.weights, dtype=np.float32)
    return encode(header, arrays)


def _array(
    msg: Message,
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    optional: bool = False,
    also: tuple[int, ...] | None = None,
):
    """The array ``name``, checked: ``dtype``, and ``shape`` (or the alternative shape ``also``)."""
    arr = msg.arrays.get(name)
    if arr is None:
        if optional:
            return None
        raise _bad(f"observe lacks array '{name}'", ErrorCode.BAD_SHAPE)
    if arr.dtype.str != dtype:
        raise _bad(f"array '{name}' must be {np.dtype(dtype)}, got {arr.dtype}", ErrorCode.BAD_DTYPE)
    if arr.shape != shape and arr.shape != also:
        alternative = (
            f" or {list(also)} (resized to the policy's resolution)" if also and also != shape else ""
        )
        raise _bad(
            f"array '{name}' must have shape {list(shape)} (from the handshake){alternative}, got {list(arr.shape)}",
            ErrorCode.BAD_SHAPE,
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise _bad(f"array '{name}' holds NaN or Inf", ErrorCode.BAD_VALUE)
    return arr


def _unit_interval(name: str, arr: np.ndarray | None) -> None:
    if arr is not None and ((arr < 0).any() or (arr > 1).any()):
        raise _bad(f"array '{name}' must lie in [0, 1]", ErrorCode.BAD_VALUE)


def _privileged(header: Mapping[str, Any]) -> dict[str, list[float]] | None:
    """A simulator's privileged state: up to 16 names, each up to 64 finite numbers."""
    raw = require(header, "privileged", dict, optional=True)
    if raw is None:
        return None
    if len(raw) > MAX_PRIVILEGED:
        raise _bad(f"privileged holds {len(raw)} entries, at most {MAX_PRIVILEGED}", ErrorCode.BAD_VALUE)
    out: dict[str, list[float]] = {}
    for name, values in raw.items():
        ok = (
            isinstance(name, str)
            and 0 < len(name) <= MAX_NAME_LEN
            and isinstance(values, list)
            and len(values) <= 64
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        )
        if not ok or not all(math.isfinite(v) for v in values):
            raise _bad(f"privileged.{str(name)[:40]}: expected up to 64 finite numbers", ErrorCode.BAD_VALUE)
        out[name] = [float(v) for v in values]
    return out


def decode_observe(msg: Message, robot: RobotDescription, meta: PolicyMetadata) -> ObserveRequest:
    """Validate an ``observe`` message against the robot's hello and the policy; build the request."""
    h = msg.header
    seq = _seq(h)
    deadline_ms = require(h, "deadline_ms", float)
    stamp = require(h, "stamp", float)
    instruction = require(h, "instruction", str)
    if len(instruction) > MAX_INSTRUCTION_LEN:
        raise _bad(f"instruction longer than {MAX_INSTRUCTION_LEN} characters", ErrorCode.BAD_VALUE)
    norm_key = require(h, "norm_key", str, optional=True)
    if norm_key is not None and meta.norm_keys and norm_key not in meta.norm_keys:
        raise _bad(f"norm_key {norm_key!r} is not one of {list(meta.norm_keys)}", ErrorCode.BAD_VALUE)
    expected = {IMAGE_PREFIX + k for k in robot.cameras} | {"state"}
    expected |= {"state_mask", "dof_mask", "inpaint/actions", "inpaint/weights"}
    unexpected = sorted(set(msg.arrays) - expected)
    if unexpected:
        raise _bad(f"observe carries unexpected arrays {unexpected}", ErrorCode.BAD_SHAPE)
    images = {}
    for cam, shape in robot.cameras.items():
        # a frame the robot host already gave the first resize (the policy's announced resolution)
        res = meta.resolutions.get(cam)
        resized = (*wire_frame_size(shape[0], shape[1], res), 3) if res else shape
        images[cam] = _array(msg, IMAGE_PREFIX + cam, "|u1", shape, also=resized)
    state = _array(msg, "state", "<f4", (robot.state_dim or meta.state_dim,))
    state_mask = _array(msg, "state_mask", "<f4", (meta.state_dim,), optional=True)
    dof_mask = _array(msg, "dof_mask", "<f4", (meta.action_dim,), optional=True)
    _unit_interval("state_mask", state_mask)
    _unit_interval("dof_mask", dof_mask)
    inpaint = None
    hint_actions = _array(
        msg, "inpaint/actions", "<f4", (meta.action_horizon, meta.action_dim), optional=True
    )
    hint_weights = _array(msg, "inpaint/weights", "<f4", (meta.action_horizon,), optional=True)
    if (hint_actions is None) != (hint_weights is None):
        raise _bad("inpaint needs both 'inpaint/actions' and 'inpaint/weights'", ErrorCode.BAD_SHAPE)
    if hint_actions is not None:
        _unit_interval("inpaint/weights", hint_weights)
        max_guidance = require(h, "max_guidance", float)
        if not 0 <= max_guidance <= 1000:
            raise _bad(f"max_guidance must be in [0, 1000], got {max_guidance}", ErrorCode.BAD_VALUE)
        inpaint = InpaintHint(actions=hint_actions, weights=hint_weights, max_guidance=max_guidance)
    obs = Observation(
        stamp=stamp,
        images=images,
        state=state,
        instruction=instruction,
        state_mask=state_mask,
        dof_mask=dof_mask,
        norm_key=norm_key,
        inpaint=inpaint,
        privileged=_privileged(h),
    )
    return ObserveRequest(seq=seq, deadline_ms=deadline_ms, observation=obs)


# ----------------------------------------------------------------------------------------- chunk


def encode_chunk(chunk: ActionChunk) -> list[Any]:
    header = {
        "v": PROTOCOL_VERSION,
        "type": CHUNK,
        "seq": chunk.seq,
        "stamp": chunk.stamp,
        "dt": chunk.dt,
        "timing_ms": {k: float(v) for k, v in chunk.timing_ms.items()},
    }
    return encode(header, {"actions": np.asarray(chunk.actions, dtype=np.float32)})


def decode_chunk(msg: Message, meta: PolicyMetadata | None = None) -> ActionChunk:
    h = msg.header
    seq = _seq(h)
    stamp = require(h, "stamp", float)
    dt = require(h, "dt", float)
    timing = require(h, "timing_ms", dict, optional=True) or {}
    actions = msg.arrays.get("actions")
    if actions is None or actions.dtype.str != "<f4" or actions.ndim != 2:
        raise _bad("chunk must carry float32 'actions' [H, D]", ErrorCode.BAD_SHAPE)
    if meta is not None and actions.shape != (meta.action_horizon, meta.action_dim):
        raise _bad(
            f"chunk actions {list(actions.shape)} differ from the handshake's "
            f"[{meta.action_horizon}, {meta.action_dim}]",
            ErrorCode.BAD_SHAPE,
        )
    if not np.isfinite(actions).all():
        raise _bad("chunk actions hold NaN or Inf", ErrorCode.BAD_VALUE)
    timing_ms = {
        str(k): float(v)
        for k, v in list(timing.items())[:64]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300
    }
    return ActionChunk(actions=actions, stamp=stamp, dt=dt, seq=seq, timing_ms=timing_ms)
