"""Wire codec: one msgpack header frame followed by one raw frame per array.

The header is a msgpack map with string keys; its ``arrays`` entry lists ``[name, dtype, shape]``
for the frames that follow, in order. Array bytes never pass through msgpack, so a 150 kB image is
neither copied into a msgpack buffer on send (zmq sends the numpy buffer itself) nor copied out of
one on receive (``np.frombuffer`` over the received zmq frame).

Decoding trusts nothing: msgpack runs with strict map keys, no extension types and bounded
lengths; only the few plain dtypes in ``ALLOWED_DTYPES`` are accepted (never object dtypes, never
pickle); every frame's size must equal ``prod(shape) * itemsize``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from wall_runtime.transport.errors import ErrorCode, ProtocolError

# Little-endian, fixed-size, plain numeric dtypes only.
ALLOWED_DTYPES: dict[str, np.dtype] = {
    "|u1": np.dtype("|u1"),
    "<f4": np.dtype("<f4"),
}
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 32
MAX_NDIM = 4
MAX_ARRAY_EXTENT = 1 << 31  # bytes an array's declared sides may span (zeros counted as ones)


@dataclass
class Message:
    """A decoded message: the header map and its arrays by name (read-only views on the frames)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    nbytes: int = 0

    @property
    def type(self) -> str:
        return self.header["type"]


def _ext_refused(code: int, data: bytes) -> Any:
    raise ProtocolError(ErrorCode.BAD_MESSAGE, f"msgpack extension type {code} is not accepted")


def pack_header(header: Mapping[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def unpack_header(buf: bytes | memoryview) -> dict[str, Any]:
    if len(buf) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header is {len(buf)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            buf,
            raw=False,
            strict_map_key=True,
            ext_hook=_ext_refused,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header must be a map, got {type(header).__name__}")
    if not isinstance(header.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "header has no string 'type'")
    return header


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list[Any]:
    """Frames for ``send_multipart(frames, copy=False)``: header bytes, then each array's buffer."""
    specs: list[list[Any]] = []
    frames: list[Any] = [b""]
    for name, arr in (arrays or {}).items():
        a = np.asarray(arr)
        key = a.dtype.str
        if key not in ALLOWED_DTYPES:
            raise ProtocolError(ErrorCode.BAD_DTYPE, f"array {name!r} has dtype {a.dtype}, not sendable")
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        specs.append([name, key, list(a.shape)])
        # A memoryview keeps the array alive and lets zmq send the buffer without copying it.
        frames.append(memoryview(a).cast("B") if a.size else b"")
    full = dict(header)
    full["arrays"] = specs
    frames[0] = pack_header(full)
    return frames


def _buffer(frame: Any) -> memoryview:
    if hasattr(frame, "buffer"):  # zmq.Frame received with copy=False
        return frame.buffer
    return memoryview(frame)


def decode(frames: Sequence[Any], max_bytes: int) -> Message:
    """Parse and validate frames into a ``Message``; raise ``ProtocolError`` on anything malformed."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty message")
    bufs = [_buffer(f) for f in frames]
    total = sum(b.nbytes for b in bufs)
    if total > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {total} bytes, limit {max_bytes}")
    header = unpack_header(bufs[0])
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'arrays' must be a list of at most 32 entries")
    if len(specs) != len(bufs) - 1:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"header describes {len(specs)} arrays but {len(bufs) - 1} array frames arrived",
        )
    arrays: dict[str, np.ndarray] = {}
    for spec, buf in zip(specs, bufs[1:], strict=True):
        arrays_name, arr = _decode_array(spec, buf)
        if arrays_name in arrays:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"array {arrays_name!r} appears twice")
        arrays[arrays_name] = arr
    return Message(header=header, arrays=arrays, nbytes=total)


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: error messages quote peer input, never all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_array(spec: Any, buf: memoryview) -> tuple[str, np.ndarray]:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"array spec must be [name, dtype, shape], got {_short(spec)}"
        )
    name, dtype_key, shape = spec
    if not isinstance(dtype_key, str) or dtype_key not in ALLOWED_DTYPES:
        raise ProtocolError(
            ErrorCode.BAD_DTYPE,
            f"array {name!r}: dtype {_short(dtype_key)} is not accepted (allowed: {', '.join(ALLOWED_DTYPES)})",
        )
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in shape)
    ):
        raise ProtocolError(
            ErrorCode.BAD_SHAPE, f"array {name!r}: shape {_short(shape)} is not a list of sizes"
        )
    dtype = ALLOWED_DTYPES[dtype_key]
    # An empty array may still declare huge other sides ([0, 2**31, 2**31]); numpy cannot even
    # describe such a view, so the sides are bounded as if every zero were a one.
    if math.prod(max(n, 1) for n in shape) * dtype.itemsize > MAX_ARRAY_EXTENT:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"array {name!r}: shape {shape!r} is too large")
    expected = math.prod(shape) * dtype.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(
            ErrorCode.BAD_SHAPE,
            f"array {name!r}: {buf.nbytes} bytes do not hold {dtype_key}{tuple(shape)} ({expected} bytes)",
        )
    try:
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    except (ValueError, TypeError) as exc:  # belt and braces: never let numpy's error escape
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"array {name!r}: {exc}") from None
    arr.flags.writeable = False  # a view on the received message: the policy must not write into it
    return name, arr
