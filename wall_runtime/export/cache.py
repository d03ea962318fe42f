"""Exported graphs and engines, cached under a key that says exactly what they were built from.

An entry lives in ``<root>/<format>/<digest>/`` with a ``manifest.json`` holding the full key and
the SHA-256 of every file. A lookup trusts an entry only when its manifest names the same key and
every file still hashes to what the manifest says; anything else (a different checkpoint, other
shapes or steps, another GPU, another TensorRT, a half-written or edited file, an entry copied in
from elsewhere) is stale or foreign and is rebuilt, never silently used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 8 << 20
_RACY_SECONDS = 2.0


def default_cache_root() -> Path:
    """``$WALL_RUNTIME_CACHE`` or ``~/.cache/wall-runtime`` (the Docker image mounts a volume there)."""
    env = os.environ.get("WALL_RUNTIME_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wall-runtime"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def checkpoint_hash(checkpoint: str | Path, memo_dir: Path | None = None) -> str:
    """Content hash of a checkpoint directory: every regular file, by relative path and bytes.

    Hashing a 17 GB checkpoint takes a while, so per-file digests are memoised by (path, size,
    mtime); touching or rewriting a file makes it hashed again.
    """
    root = Path(checkpoint).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    memo_path = (memo_dir or default_cache_root()) / "file-hashes.json"
    try:
        memo: dict[str, str] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"checkpoint directory is empty: {root}")
    total = hashlib.sha256()
    changed = False
    for p in files:
        st = p.stat()
        memo_key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
        digest = memo.get(memo_key)
        if digest is None:
            digest = sha256_file(p)
            # like git's "racy clean" rule: a file modified within the mtime granularity of now
            # could change again without its stamp moving, so its digest is not memoised
            if time.time() - st.st_mtime > _RACY_SECONDS:
                memo[memo_key] = digest
                changed = True
        total.update(p.relative_to(root).as_posix().encode())
        total.update(b"\0")
        total.update(digest.encode())
        total.update(b"\n")
    if changed:
        with contextlib.suppress(OSError):
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(memo))
            tmp.replace(memo_path)
    return total.hexdigest()


def gpu_model() -> str:
    """The CUDA device an engine is built for, or ``"cpu"``."""
    try:
        import torch

        if torch.cuda.is_available():
            idx = torch.cuda.current_device()
            major, minor = torch.cuda.get_device_capability(idx)
            return f"{torch.cuda.get_device_name(idx)} (sm_{major}{minor})"
    except ImportError:
        pass
    return "cpu"


def tensorrt_version() -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return "none"


@dataclass(frozen=True)
class EngineKey:
    """Everything an exported graph or engine depends on."""

    checkpoint_hash: str
    graph: str  # "prefix" | "denoise" | ... (one artefact each)
    format: str  # "onnx" | "tensorrt"
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # input name -> static shape
    steps: int
    precision: str  # "fp32" | "fp16" | "bf16"
    gpu_model: str  # "cpu" for device-independent ONNX files
    tensorrt_version: str  # "none" for ONNX files
    extra: tuple[tuple[str, str], ...] = ()  # anything else that changes the artefact

    @staticmethod
    def make(
        *,
        checkpoint_hash: str,
        graph: str,
        format: str,
        shapes: Mapping[str, Iterable[int]],
        steps: int,
        precision: str,
        gpu_model: str = "cpu",
        tensorrt_version: str = "none",
        extra: Mapping[str, object] | None = None,
    ) -> EngineKey:
        return EngineKey(
            checkpoint_hash=checkpoint_hash,
            graph=graph,
            format=format,
            shapes=tuple(sorted((k, tuple(int(d) for d in v)) for k, v in shapes.items())),
            steps=int(steps),
            precision=precision,
            gpu_model=gpu_model,
            tensorrt_version=tensorrt_version,
            extra=tuple(sorted((k, str(v)) for k, v in (extra or {}).items())),
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["shapes"] = {k: list(v) for k, v in self.shapes}
        d["extra"] = dict(self.extra)
        return d

    @staticmethod
    def from_json(d: Mapping) -> EngineKey:
        return EngineKey.make(
            checkpoint_hash=d["checkpoint_hash"],
            graph=d["graph"],
            format=d["format"],
            shapes=d["shapes"],
            steps=d["steps"],
            precision=d["precision"],
            gpu_model=d["gpu_model"],
            tensorrt_version=d["tensorrt_version"],
            extra=d.get("extra", {}),
        )

    def digest(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


@dataclass
class CacheEntry:
    key: EngineKey
    path: Path  # the entry directory
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256
    built_at: float = 0.0
    build_seconds: float = 0.0
    reused: bool = False

    def file(self, name: str) -> Path:
        return self.path / name


class StaleEngineError(RuntimeError):
    """An entry exists under the key's name but does not match it."""


class EngineCache:
    """Artefacts keyed by :class:`EngineKey`; ``get_or_build`` is the whole interface most callers need."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def entry_dir(self, key: EngineKey) -> Path:
        return self.root / key.format / f"{key.graph}-{key.digest()}"

    def lookup(self, key: EngineKey) -> CacheEntry | None:
        """The valid entry for ``key``, or None. Raises :class:`StaleEngineError` for a mismatch."""
        d = self.entry_dir(key)
        if not d.exists():
            return None
        manifest_path = d / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise StaleEngineError(f"{d}: unreadable manifest ({e})") from e
        if manifest.get("manifest_version") != MANIFEST_VERSION:
            raise StaleEngineError(f"{d}: manifest version {manifest.get('manifest_version')!r}")
        try:
            stored_key = EngineKey.from_json(manifest["key"])
        except (KeyError, TypeError, ValueError) as e:
            raise StaleEngineError(f"{d}: manifest has no valid key ({e})") from e
        if stored_key != key:
            diffs = [
                f"{k}: cached {v!r} != wanted {key.to_json()[k]!r}"
                for k, v in stored_key.to_json().items()
                if key.to_json()[k] != v
            ]
            raise StaleEngineError(f"{d}: built for another key ({'; '.join(diffs)})")
        files: dict[str, str] = manifest.get("files", {})
        if not files:
            raise StaleEngineError(f"{d}: manifest lists no files")
        for name, digest in files.items():
            p = d / name
            if not p.is_file():
                raise StaleEngineError(f"{d}: {name} is missing")
            if sha256_file(p) != digest:
                raise StaleEngineError(f"{d}: {name} does not match its manifest hash")
        return CacheEntry(
            key=key,
            path=d,
            files=files,
            built_at=float(manifest.get("built_at", 0.0)),
            build_seconds=float(manifest.get("build_seconds", 0.0)),
            reused=True,
        )

    def get_or_build(self, key: EngineKey, build: Callable[[Path], Iterable[str]]) -> CacheEntry:
        """Return the cached entry for ``key`` or build it with ``build(tmp_dir) -> file names``.

        ``build`` writes its files into the directory it is given; they are hashed into the manifest
        and the directory is moved into place in one rename, so a crashed build leaves nothing that a
        later lookup could take for an engine.
        """
        try:
            entry = self.lookup(key)
        except StaleEngineError as e:
            log.warning("rebuilding %s: %s", key.graph, e)
            shutil.rmtree(self.entry_dir(key), ignore_errors=True)
            entry = None
        if entry is not None:
            log.info("reusing cached %s %s from %s", key.format, key.graph, entry.path)
            return entry
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            names = list(build(tmp))
            if not names:
                raise RuntimeError(f"building {key.graph} produced no files")
            files = {}
            for name in names:
                p = tmp / name
                if not p.is_file():
                    raise RuntimeError(f"building {key.graph} did not write {name}")
                files[name] = sha256_file(p)
            seconds = time.perf_counter() - t0
            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "key": key.to_json(),
                "files": files,
                "built_at": time.time(),
                "build_seconds": seconds,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s %s in %.1f s -> %s", key.format, key.graph, seconds, final)
        return CacheEntry(
            key=key, path=final, files=files, built_at=manifest["built_at"], build_seconds=seconds
        )

    def entries(self) -> list[dict]:
        """Every manifest under the root (for listing and pruning)."""
        out = []
        for m in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            try:
                d = json.loads(m.read_text())
            except (OSError, ValueError):
                continue
            d["path"] = str(m.parent)
            out.append(d)
        return out
