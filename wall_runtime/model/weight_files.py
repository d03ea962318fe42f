"""Reading weight files tensor by tensor, without a second copy of the model in memory.

A ``.safetensors`` file is an 8-byte little-endian header length, a JSON header (name → dtype, shape,
byte range) and the raw tensor bytes. This module checks the header completely before anything is
read (so a truncated, garbage or hostile file is one clear error naming the file and the problem),
memory-maps the file, hands out zero-copy tensor views onto it, and lets the caller drop a tensor's
pages from the process once it has been copied into the model (``madvise(MADV_DONTNEED)``): the
loader's peak memory is then the model plus about one tensor, not the model plus the whole file.

The ``safetensors`` library reads the same format, but its ``get_tensor`` copies every tensor and
exposes neither byte offsets nor a way to release pages, which is exactly what loading a 4 B model
into 8 GB of bf16 parameters without an 8 GB (or 16 GB fp32) detour needs.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

# The format's dtype names (safetensors spec) -> torch.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
_PAGE = mmap.PAGESIZE


class WeightFileError(ValueError):
    """A weight file that cannot be read as what it claims to be."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: str | Path) -> dict[str, TensorEntry]:
    """The tensors a ``.safetensors`` file holds, after checking every entry against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise WeightFileError(
                    f"{path}: {size} bytes, too short for a safetensors header (truncated?)"
                )
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES:
                raise WeightFileError(
                    f"{path}: header length {length} bytes exceeds the {MAX_HEADER_BYTES}-byte limit "
                    "(not a safetensors file, or corrupted)"
                )
            if 8 + length > size:
                raise WeightFileError(
                    f"{path}: header length {length} bytes runs past the end of the {size}-byte file "
                    "(truncated, or not a safetensors file)"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise WeightFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightFileError(
            f"{path}: the header is not valid JSON (not a safetensors file?): {exc}"
        ) from exc
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: the header is not a JSON object")
    data_start = 8 + length
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, name, info, data_start, size)
    return entries


def _entry(path: Path, name: str, info: object, data_start: int, size: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise WeightFileError(f"{path}: header entry {name!r} is not an object")
    dtype = DTYPES.get(str(info.get("dtype")))
    if dtype is None:
        raise WeightFileError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise WeightFileError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise WeightFileError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != expected:
        raise WeightFileError(
            f"{path}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but its shape {tuple(shape)} "
            f"and dtype need {expected}"
        )
    start, end = data_start + offsets[0], data_start + offsets[1]
    if end > size:
        raise WeightFileError(
            f"{path}: tensor {name!r} ends at byte {end} but the file has {size} bytes (truncated)"
        )
    return TensorEntry(name, dtype, tuple(shape), start, end)


class MappedSafetensors:
    """An open, memory-mapped ``.safetensors`` file: zero-copy views and page release.

    Use as a context manager; views must not outlive it (copy what you keep).
    """

    def __init__(self, path: str | Path, entries: Mapping[str, TensorEntry] | None = None) -> None:
        self.path = Path(path)
        self.entries = dict(entries) if entries is not None else read_safetensors_header(self.path)
        self._file = None
        self._map: mmap.mmap | None = None

    def __enter__(self) -> MappedSafetensors:
        self._file = self.path.open("rb")
        if any(e.nbytes for e in self.entries.values()):
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            # a caller still holding a view keeps the map alive until the view is freed
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def view(self, name: str) -> torch.Tensor:
        """The tensor as stored (dtype and shape), backed by the mapped file: read-only, do not keep."""
        entry = self.entries[name]
        if entry.numel == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        if self._map is None:
            raise RuntimeError(f"{self.path} is not open")
        with warnings.catch_warnings():
            # frombuffer warns that the buffer is read-only; views are only ever read.
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(self._map, dtype=entry.dtype, count=entry.numel, offset=entry.start)
        return flat.view(entry.shape)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process (they stay in the page cache)."""
        entry = self.entries[name]
        advice = getattr(mmap, "MADV_DONTNEED", None)  # Linux and most Unixes; elsewhere a no-op
        if self._map is None or entry.nbytes == 0 or advice is None:
            return
        start = entry.start - entry.start % _PAGE
        self._map.madvise(advice, start, entry.end - start)


@contextmanager
def open_safetensors(
    path: str | Path, entries: Mapping[str, TensorEntry] | None = None
) -> Iterator[MappedSafetensors]:
    with MappedSafetensors(path, entries) as handle:
        yield handle
