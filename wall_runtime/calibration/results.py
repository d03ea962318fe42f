"""Calibration result files under ``calibration/<robot>/``: YAML the runtime loads back.

Every file carries ``kind``, ``version``, when it was made, and its error figure, so a stale or
poor calibration is visible in the file itself.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import yaml

FORMAT_VERSION = 1
DEFAULT_ROOT = Path("calibration")


class CalibrationFileError(ValueError):
    """A result file that is missing, of the wrong kind, or malformed; the message names it."""


def result_path(robot: str, filename: str, root: Path | str = DEFAULT_ROOT) -> Path:
    if not robot or "/" in robot or robot.startswith("."):
        raise ValueError(f"robot name {robot!r} cannot name a folder")
    return Path(root) / robot / filename


def save(path: Path | str, kind: str, body: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "kind": kind,
        "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_plain(body),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)  # never leave a half-written calibration behind
    return path


def load(path: Path | str, kind: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CalibrationFileError(f"{path}: no such calibration file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CalibrationFileError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        got = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise CalibrationFileError(f"{path}: expected a {kind!r} calibration, found {got!r}")
    if doc.get("version") != FORMAT_VERSION:
        raise CalibrationFileError(
            f"{path}: format version {doc.get('version')}, this runtime reads {FORMAT_VERSION}"
        )
    return doc


def matrix(doc: dict[str, Any], key: str, shape: tuple[int, ...], path: Path | str) -> np.ndarray:
    try:
        arr = np.asarray(doc[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationFileError(f"{path}: field {key!r} missing or not numeric") from e
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise CalibrationFileError(
            f"{path}: field {key!r} must be finite with shape {shape}, got {arr.shape}"
        )
    return arr


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
