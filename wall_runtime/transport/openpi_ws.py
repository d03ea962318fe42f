"""An openpi-style websocket endpoint for our policies (``serve --openpi HOST:PORT``).

openpi's serving protocol is what many robot scripts already speak (``openpi-client``'s
``WebsocketClientPolicy``, LIBERO-style eval scripts, wall-x's own serving): a websocket carrying
msgpack frames in which numpy arrays are maps ``{__ndarray__, data, dtype, shape}``; the server sends
its metadata first, then answers each observation with one reply; an error is a text frame; HTTP
``GET /healthz`` answers 200. This module speaks it over the same :class:`Policy` the ZeroMQ server
serves, with the same rules:

- nothing is trusted: msgpack without extension types, arrays only of plain numeric dtypes whose
  bytes match their shape (never pickle), bounded message size (``max_message_bytes``, larger frames
  close that connection with 1009), instruction length, image sizes, views and norm keys checked
  against the policy's metadata, state and masks finite; a bad request gets a one-line error (a text
  frame, as openpi's clients expect) and the connection and the server keep serving;
- loopback unless told otherwise; a non-loopback bind needs a token (``Authorization: Api-Key
  TOKEN``, what ``WebsocketClientPolicy(api_key=...)`` sends) unless ``insecure``.

Requests (a msgpack map): ``images`` (or wall-x's ``views``) ``{view: HxWx3 uint8}``, wall-x view
names accepted (``camera_front`` / ``camera_left`` / ``camera_right`` → ``face_view`` /
``left_wrist_view`` / ``right_wrist_view``) and base64 JPEG/PNG strings decoded (to RGB); ``state``
either float ``[S]`` in the model's state layout or wall-x's named map (``follow1_pos`` /
``follow2_pos`` = ``[x, y, z, roll, pitch, yaw, gripper]``, ``head_pos``, ``lift``,
``velocity_decomposed``, or any key of the checkpoint's ``agent_pos_config``), converted to that
layout with the missing slots masked; ``prompt`` or ``instruction``; optional ``norm_key``,
``state_mask``, ``dof_mask``. ``{"type": "reset"}`` is answered ``{"reset": true}``. Replies:
``actions`` ``[H, D]`` float32 in robot units, ``predict_action`` ``[1, H, D]`` (wall-x's name),
``server_timing`` ``{infer_ms, queue_ms, batch_size, prev_total_ms}`` and ``policy_timing`` (per
stage, ms).

Connections are served on threads of their own, but their requests are batched as the ZeroMQ
server batches robots' (``batching.CallBatcher``): requests that arrive together run as one
``policy.infer`` call of up to ``max_batch``, gathered for at most ``max_wait_ms`` and only while
another recently active connection has none waiting (one client alone never waits); a failing batch
is retried member by member, so only the request the policy refuses gets the error.
"""

from __future__ import annotations

import base64
import hmac
import http
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from wall_runtime.action_space.rotations import euler_to_6d as _euler_to_6d
from wall_runtime.backends.base import Policy
from wall_runtime.transport.auth import SecurityError, is_loopback
from wall_runtime.transport.batching import CallBatcher
from wall_runtime.transport.protocol import MAX_INSTRUCTION_LEN
from wall_runtime.types import Observation

log = logging.getLogger(__name__)

# wall-x serving's request names (spec §11) -> the model's
WALLX_VIEWS = {
    "camera_front": "face_view",
    "camera_left": "left_wrist_view",
    "camera_right": "right_wrist_view",
}
WALLX_ARMS = {"follow1_pos": "left", "follow2_pos": "right"}
WALLX_STATE = {"head_pos": "head_actions", "lift": "height", "velocity_decomposed": "velocity_decomposed"}
MAX_IMAGE_SIDE = 4096
MAX_NDIM = 4
_NUMERIC_KINDS = "buif"


class RequestError(ValueError):
    """A request this endpoint refuses; ``code`` names the kind (as the ZeroMQ path's error codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------- codec


def _decode_array(obj: dict) -> Any:
    """openpi-client's ndarray / numpy scalar maps, checked; anything else passes unchanged."""
    if b"__ndarray__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            shape = tuple(int(n) for n in obj[b"shape"])
            data = obj[b"data"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError("BAD_MESSAGE", f"malformed ndarray: {exc}") from None
        if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None:
            raise RequestError("BAD_DTYPE", f"array dtype {dtype} is not accepted (plain numbers only)")
        if len(shape) > MAX_NDIM or any(n < 0 for n in shape):
            raise RequestError("BAD_SHAPE", f"array shape {list(shape)} is not accepted")
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            raise RequestError("BAD_SHAPE", f"array data does not match shape {list(shape)} of {dtype}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
        except (KeyError, TypeError) as exc:
            raise RequestError("BAD_MESSAGE", f"malformed numpy scalar: {exc}") from None
        if dtype.kind not in _NUMERIC_KINDS:
            raise RequestError("BAD_DTYPE", f"scalar dtype {dtype} is not accepted")
        return dtype.type(obj[b"data"])
    return obj


def _ext_refused(code: int, data: bytes) -> Any:
    raise RequestError("BAD_MESSAGE", f"msgpack extension type {code} is not accepted")


def unpack(data: bytes) -> Any:
    """A frame as openpi-client packs it; RequestError for anything else."""
    try:
        return msgpack.unpackb(data, raw=False, object_hook=_decode_array, ext_hook=_ext_refused)
    except RequestError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise RequestError("BAD_MESSAGE", f"not valid msgpack: {exc}") from None


def _encode_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def pack(obj: Any) -> bytes:
    """``obj`` as openpi-client's ``msgpack_numpy.unpackb`` reads it."""
    return msgpack.packb(obj, default=_encode_array, use_bin_type=True)


# -------------------------------------------------------------------------- request → observation


def euler_to_6d(rpy: np.ndarray) -> np.ndarray:
    """``[roll, pitch, yaw]`` → the 6D the checkpoint's state takes (spec §11, through
    :mod:`wall_runtime.action_space.rotations`, the one place the conventions live), float32."""
    return np.asarray(_euler_to_6d(np.asarray(rpy, dtype=np.float64)), dtype=np.float32)


def _vector(value: Any, name: str, length: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError("BAD_VALUE", f"'{name}' must be numbers") from None
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        want = f"[{length}]" if length is not None else "a vector"
        raise RequestError("BAD_SHAPE", f"'{name}' must be {want}, got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise RequestError("BAD_VALUE", f"'{name}' holds NaN or Inf")
    return arr


def named_state(state: Mapping[str, Any], layout: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """wall-x's named state → (state, state_mask) in the checkpoint's ``agent_pos_config`` order."""
    if not layout:
        raise RequestError("BAD_VALUE", "this policy publishes no state layout: send 'state' as a vector")
    slots: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise RequestError("BAD_MESSAGE", "state keys must be strings")
        if key in WALLX_ARMS:
            side = WALLX_ARMS[key]
            pose = _vector(value, f"state.{key}", 7)
            slots[f"follow_{side}_ee_cartesian_pos"] = pose[:3]
            slots[f"follow_{side}_ee_rotation"] = pose[3:6]
            slots[f"follow_{side}_ee_rotation_6D"] = euler_to_6d(pose[3:6])
            slots[f"follow_{side}_gripper"] = pose[6:7]
        elif key in WALLX_STATE:
            slots[WALLX_STATE[key]] = _vector(value, f"state.{key}")
        elif key in layout:
            slots[key] = _vector(value, f"state.{key}")
        else:
            known = sorted({*WALLX_ARMS, *WALLX_STATE, *(k for k in layout if k != "action_padding")})
            raise RequestError(
                "BAD_VALUE", f"state.{key}: not a state of this policy (known: {', '.join(known)})"
            )
    values, mask = [], []
    for key, width in layout.items():
        part = slots.get(key)
        if part is not None and part.shape[0] != width:
            raise RequestError(
                "BAD_SHAPE", f"state.{key} has {part.shape[0]} values, the policy's layout {width}"
            )
        values.append(part if part is not None else np.zeros(width, np.float32))
        mask.append(np.full(width, 1.0 if part is not None else 0.0, np.float32))
    return np.concatenate(values), np.concatenate(mask)


def _image(value: Any, view: str) -> np.ndarray:
    if isinstance(value, (str, bytes)) and not isinstance(value, np.ndarray):
        import cv2

        try:
            raw = base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            raise RequestError("BAD_VALUE", f"image '{view}' is a string but not base64") from None
        decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise RequestError("BAD_VALUE", f"image '{view}' does not decode as JPEG or PNG")
        value = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)  # the model expects RGB (spec §11)
    if not isinstance(value, np.ndarray):
        raise RequestError("BAD_VALUE", f"image '{view}' must be an HxWx3 uint8 array or base64 JPEG")
    if value.dtype != np.uint8:
        raise RequestError("BAD_DTYPE", f"image '{view}' must be uint8, got {value.dtype}")
    if (
        value.ndim != 3
        or value.shape[2] != 3
        or not 0 < max(value.shape[:2]) <= MAX_IMAGE_SIDE
        or 0 in value.shape
    ):
        raise RequestError(
            "BAD_SHAPE",
            f"image '{view}' must be HxWx3 (sides up to {MAX_IMAGE_SIDE}), got {list(value.shape)}",
        )
    return value


def _mask(value: Any, name: str, length: int) -> np.ndarray | None:
    if value is None:
        return None
    arr = _vector(value, name, length)
    if (arr < 0).any() or (arr > 1).any():
        raise RequestError("BAD_VALUE", f"'{name}' must lie in [0, 1]")
    return arr


def to_observation(request: Any, policy: Policy, layout: Mapping[str, int]) -> Observation:
    """A request map → an :class:`Observation` the policy can take; RequestError names what is wrong."""
    meta = policy.metadata
    if not isinstance(request, dict):
        raise RequestError("BAD_MESSAGE", f"a request must be a map, got {type(request).__name__}")
    known = {"images", "views", "state", "observation/state", "prompt", "instruction", "norm_key"}
    known |= {"state_mask", "dof_mask", "infer_mode", "type", "stamp"}
    unknown = sorted(str(k) for k in request if k not in known)
    if unknown:
        raise RequestError(
            "BAD_MESSAGE", f"unknown request fields {unknown} (known: {', '.join(sorted(known))})"
        )
    images_in = request.get("images", request.get("views", {}))
    if not isinstance(images_in, dict):
        raise RequestError("BAD_MESSAGE", "'images' must be a map view -> image")
    images: dict[str, np.ndarray] = {}
    for name, value in images_in.items():
        view = WALLX_VIEWS.get(name, name)
        if view not in meta.cameras:
            raise RequestError(
                "BAD_VALUE", f"image '{name}' is not a view of this policy (it takes {list(meta.cameras)})"
            )
        images[view] = _image(value, str(name))
    instruction = request.get("instruction", request.get("prompt", ""))
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION_LEN:
        raise RequestError(
            "BAD_VALUE",
            f"'prompt' / 'instruction' must be a string of up to {MAX_INSTRUCTION_LEN} characters",
        )
    norm_key = request.get("norm_key")
    if norm_key is not None and (
        not isinstance(norm_key, str) or (meta.norm_keys and norm_key not in meta.norm_keys)
    ):
        raise RequestError("BAD_VALUE", f"norm_key {norm_key!r} is not one of {list(meta.norm_keys)}")
    raw_state = request.get("state", request.get("observation/state"))
    state_mask = _mask(request.get("state_mask"), "state_mask", meta.state_dim)
    if isinstance(raw_state, dict):
        state, named_mask = named_state(raw_state, layout)
        state_mask = named_mask if state_mask is None else state_mask
    elif raw_state is None:
        raise RequestError("BAD_MESSAGE", "the request has no 'state'")
    else:
        state = _vector(raw_state, "state")
        if not 0 < state.shape[0] <= meta.state_dim:
            raise RequestError(
                "BAD_SHAPE", f"'state' has {state.shape[0]} values; the policy's state has {meta.state_dim}"
            )
    return Observation(
        stamp=time.monotonic(),
        images=images,
        state=state,
        instruction=instruction,
        state_mask=state_mask,
        dof_mask=_mask(request.get("dof_mask"), "dof_mask", meta.action_dim),
        norm_key=norm_key,
    )


# ------------------------------------------------------------------------------------- server


@dataclass
class OpenpiConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free one
    token: str | None = None  # required from clients (Authorization: Api-Key TOKEN) when set
    insecure: bool = False  # allow a non-loopback bind without a token
    max_message_bytes: int = 32 * 1024 * 1024
    # concurrent connections' requests share one policy call (as the ZeroMQ server's robots do):
    # at most max_batch, gathered for at most max_wait_ms after the first, and only while another
    # recently active connection has none waiting (a lone client never waits)
    max_batch: int = 8
    max_wait_ms: float = 2.0


def check_exposure(config: OpenpiConfig) -> None:
    """SecurityError for a non-loopback endpoint without a token (unless ``insecure``)."""
    if not is_loopback(f"tcp://{config.host}:0") and not config.token and not config.insecure:
        raise SecurityError(
            f"the openpi endpoint on {config.host} would be reachable from other hosts without a "
            "token: give one (--openpi-token-file), bind 127.0.0.1, or pass --insecure on a trusted network"
        )


class OpenpiServer:
    """The websocket endpoint, one thread per connection. Requests that connections send at the
    same time are batched into one ``policy.infer`` call (:class:`~wall_runtime.transport.batching.
    CallBatcher`: ``max_batch``, ``max_wait_ms``; a failing batch is retried member by member);
    each call takes ``lock``. When the ZeroMQ server serves the same policy, wrap it in
    :class:`SharedPolicy` for both (and do not pass its lock here: it is not re-entrant)."""

    def __init__(
        self,
        policy: Policy,
        config: OpenpiConfig | None = None,
        lock: threading.Lock | None = None,
        state_layout: Mapping[str, int] | None = None,
    ) -> None:
        self.policy = policy
        self.config = config or OpenpiConfig()
        check_exposure(self.config)
        self.lock = lock or threading.Lock()
        self.batcher = CallBatcher(
            self._locked_infer, self.config.max_batch, self.config.max_wait_ms / 1000.0
        )
        self.layout = dict(state_layout if state_layout is not None else _policy_state_layout(policy))
        self.counts: Counter[str] = Counter()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    def metadata(self) -> dict[str, Any]:
        return {
            **self.policy.metadata.to_dict(),
            "protocol": "openpi-websocket",
            "state_layout": self.layout,
            "wallx_views": WALLX_VIEWS,
        }

    def start(self) -> int:
        """Listen on a background thread; return the bound port."""
        from websockets.sync.server import serve

        self._server = serve(
            self._handle,
            self.config.host,
            self.config.port,
            compression=None,
            max_size=self.config.max_message_bytes,
            process_request=self._process_request,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="openpi-ws", daemon=True)
        self._thread.start()
        log.info("openpi websocket endpoint on ws://%s:%d", self.config.host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OpenpiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _process_request(self, connection: Any, request: Any) -> Any:
        if request.path in ("/healthz", "/v2/health/ready"):
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.config.token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.config.token}".encode()):
                self.counts["unauthorized"] += 1
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED, "a valid 'Authorization: Api-Key TOKEN' is required\n"
                )
        return None

    def _locked_infer(self, observations: list[Observation]) -> list[Any]:
        with self.lock:  # one call at a time, with the ZeroMQ server's too when they share a policy
            return self.policy.infer(observations)

    def _handle(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        prev_total_ms: float | None = None
        try:
            connection.send(pack(self.metadata()))
            for message in connection:
                t0 = time.perf_counter()
                reply = self._answer(message, prev_total_ms, connection)
                connection.send(reply)
                prev_total_ms = (time.perf_counter() - t0) * 1e3
        except ConnectionClosed:
            pass  # the client went away, or sent a frame over the limit (closed with 1009)
        finally:
            self.batcher.forget(connection)  # no batch waits for a closed connection

    def _answer(self, message: Any, prev_total_ms: float | None, client: Any = None) -> bytes | str:
        try:
            if isinstance(message, str):
                raise RequestError(
                    "BAD_MESSAGE", "text frames are not requests: send msgpack in a binary frame"
                )
            request = unpack(message)
            if isinstance(request, dict) and request.get("type") == "reset":
                self.counts["reset"] += 1
                return pack({"reset": True})
            obs = to_observation(request, self.policy, self.layout)
            check = self.policy.input_check
            if check is not None:  # what the model refuses (a missing view, a long prompt), by name
                try:
                    check.check(obs)
                except ValueError as exc:
                    raise RequestError("BAD_VALUE", str(exc)) from None
            served = self.batcher.infer(client, obs)  # with other connections' requests
            if served.result is None:  # the policy refused this one (alone, if its batch failed)
                raise served.error or RuntimeError("no result")
        except RequestError as exc:
            self.counts[f"error_{exc.code}"] += 1
            return f"error {exc.code}: {exc}"
        except Exception as exc:  # the policy refused the observation (e.g. a camera size it cannot take)
            self.counts["error_POLICY"] += 1
            log.warning("openpi request failed in the policy: %s", exc)
            return f"error POLICY_ERROR: {type(exc).__name__}: {exc}"
        self.counts["infer"] += 1
        actions = np.asarray(served.result.actions, dtype=np.float32)
        timing = {"infer_ms": served.infer_ms, "queue_ms": served.queue_ms, "batch_size": served.batch_size}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        return pack(
            {
                "actions": actions,
                "predict_action": actions[None],
                "server_timing": timing,
                "policy_timing": {k: float(v) for k, v in served.result.timing_ms.items()},
            }
        )


def _policy_state_layout(policy: Policy) -> dict[str, int]:
    """The checkpoint's ``agent_pos_config`` where the policy has one (every model backend's metadata
    carries it, graph backends included); else empty."""
    return dict(policy.metadata.agent_pos_config or {})


class SharedPolicy(Policy):
    """One policy served by two endpoints (ZeroMQ and openpi): ``infer`` calls take turns."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.metadata = inner.metadata
        # Policy declares input_check on the class, so __getattr__ would never reach the inner one:
        # without this the ZeroMQ server behind the wrapper would stop checking observations.
        self.input_check = inner.input_check
        self.lock = threading.Lock()

    def infer(self, observations, noise=None):
        with self.lock:
            return self.inner.infer(observations, noise)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # the rest (e.g. ``model``) from the wrapped policy
        return getattr(self.inner, name)
