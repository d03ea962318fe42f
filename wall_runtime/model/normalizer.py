"""Quantile min-max normalisation of actions and state, per embodiment key (spec §5, §10).

``normalize(x) = clamp((x − min) / delta · 2 − 1, −1, 1)`` and ``unnormalize(y) = (y + 1) / 2 · delta + min``
in float32, with ``min = q01`` and ``delta = q99 − q01``. Statistics come from the checkpoint's
``norm_stats.json`` (LeRobot form, one key) or else from ``normalizer_action.pth`` /
``normalizer_propri.pth`` (``"min.<key>"`` / ``"delta.<key>"`` tensors, any number of keys), and are
tail-padded with min 0 / delta 1 to the configured width, so a padded dim normalises raw 0 to −1.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NORM_STATS_JSON = "norm_stats.json"
ACTION_PTH = "normalizer_action.pth"
PROPRI_PTH = "normalizer_propri.pth"
DEFAULT_KEY = "default"  # the one key of a norm_stats.json when the caller names none


class NormalizerError(ValueError):
    """Missing statistics, a wrong width or an unknown embodiment key."""


class Normalizer:
    """min / delta vectors for each embodiment key, all of one width."""

    def __init__(self, stats: dict[str, tuple[np.ndarray, np.ndarray]], dim: int, label: str):
        if not stats:
            raise NormalizerError(f"{label} normaliser has no statistics")
        self.label = label
        self.dim = int(dim)
        self._min: dict[str, np.ndarray] = {}
        self._delta: dict[str, np.ndarray] = {}
        for key, (mn, delta) in stats.items():
            mn = np.asarray(mn, dtype=np.float32).reshape(-1)
            delta = np.asarray(delta, dtype=np.float32).reshape(-1)
            if mn.shape != delta.shape:
                raise NormalizerError(f"{label}[{key!r}]: min has {mn.size} dims but delta has {delta.size}")
            if mn.size > self.dim:
                raise NormalizerError(
                    f"{label}[{key!r}] statistics have {mn.size} dims, more than the configured {self.dim}"
                )
            pad = self.dim - mn.size
            self._min[key] = np.concatenate([mn, np.zeros(pad, np.float32)])
            self._delta[key] = np.concatenate([delta, np.ones(pad, np.float32)])
            if not (np.isfinite(self._min[key]).all() and np.isfinite(self._delta[key]).all()):
                raise NormalizerError(f"{label}[{key!r}] statistics hold NaN or infinity")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._min)

    def min(self, key: str) -> np.ndarray:
        return self._min[key]

    def delta(self, key: str) -> np.ndarray:
        return self._delta[key]

    def normalize(self, x: np.ndarray, key: str) -> np.ndarray:
        """Robot units -> [−1, 1]; a zero delta counts as 1, as the reference does."""
        x = self._check(x, key)
        delta = np.where(self._delta[key] == 0, np.float32(1), self._delta[key])
        y = (x - self._min[key]) / delta
        return np.clip(y * np.float32(2) - np.float32(1), -1, 1).astype(np.float32)

    def unnormalize(self, y: np.ndarray, key: str) -> np.ndarray:
        """[−1, 1] -> robot units, over every dim (spec §10)."""
        y = self._check(y, key)
        return ((y + np.float32(1)) / np.float32(2) * self._delta[key] + self._min[key]).astype(np.float32)

    def _check(self, x: np.ndarray, key: str) -> np.ndarray:
        if key not in self._min:
            raise NormalizerError(f"{self.label} normaliser has no key {key!r}; available: {list(self.keys)}")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.dim:
            raise NormalizerError(f"{self.label} vector has {x.shape[-1]} dims, expected {self.dim}")
        return x


@dataclass(frozen=True)
class Normalizers:
    action: Normalizer
    state: Normalizer
    source: str  # the file the statistics came from

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.action.keys if k in self.state.keys)

    def resolve_key(self, key: str | None) -> str:
        """The embodiment key to use: exact, else a unique ``<key>_…`` prefix match, else the only key.

        A key that matches nothing while several exist is an error naming the ones available
        (normalising with another robot's statistics would silently scale every action wrongly).
        """
        available = self.keys
        if not available:
            raise NormalizerError(
                f"action and state normalisers share no key (action: {list(self.action.keys)}, "
                f"state: {list(self.state.keys)})"
            )
        if key is not None and key in available:
            return key
        if key is not None:
            prefixed = [k for k in available if k.startswith(f"{key}_")]
            if len(prefixed) == 1:
                log.warning("norm key %r not found; using prefix match %r", key, prefixed[0])
                return prefixed[0]
        if len(available) == 1:
            if key is not None:
                log.warning("norm key %r not found; using the only key %r", key, available[0])
            return available[0]
        if key is None:
            raise NormalizerError(f"the checkpoint has several norm keys {list(available)}; choose one")
        raise NormalizerError(f"unknown norm key {key!r}; available: {list(available)}")


def _stats_from_norm_stats_json(path: Path, entry: str, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NormalizerError(f"{path} is not valid JSON: {exc}") from exc
    stats = table.get("norm_stats", table)
    if entry not in stats:
        raise NormalizerError(f"{path} has no {entry!r} entry (found {sorted(stats)})")
    try:
        q01 = np.asarray(stats[entry]["q01"], dtype=np.float32)
        q99 = np.asarray(stats[entry]["q99"], dtype=np.float32)
    except KeyError as exc:
        raise NormalizerError(f"{path}: {entry!r} has no {exc.args[0]!r} quantile") from exc
    return {key: (q01, q99 - q01)}


def _stats_from_pth(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torch

    table = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(table, dict) and "state_dict" in table:
        table = table["state_dict"]
    mins: dict[str, np.ndarray] = {}
    deltas: dict[str, np.ndarray] = {}
    for name, value in table.items():
        prefix, _, key = str(name).partition(".")
        if not key:
            continue
        if prefix == "min":
            mins[key] = value.float().numpy()
        elif prefix == "delta":
            deltas[key] = value.float().numpy()
    unpaired = sorted(set(mins) ^ set(deltas))
    if unpaired:
        raise NormalizerError(f"{path}: keys {unpaired} have a min without a delta or the reverse")
    return {k: (mins[k], deltas[k]) for k in mins}


def load_normalizers(
    checkpoint_dir: str | Path, action_dim: int, state_dim: int, norm_key: str | None = None
) -> Normalizers:
    """Statistics from ``norm_stats.json``, else the two ``.pth`` tables (the reference's order)."""
    root = Path(checkpoint_dir)
    json_path = root / NORM_STATS_JSON
    if json_path.is_file():
        key = norm_key or DEFAULT_KEY
        action = Normalizer(_stats_from_norm_stats_json(json_path, "action", key), action_dim, "action")
        state = Normalizer(
            _stats_from_norm_stats_json(json_path, "observation.state", key), state_dim, "state"
        )
        return Normalizers(action, state, str(json_path))
    action_path, propri_path = root / ACTION_PTH, root / PROPRI_PTH
    missing = [p.name for p in (action_path, propri_path) if not p.is_file()]
    if missing:
        raise NormalizerError(
            f"{root} has no normalisation statistics: expected {NORM_STATS_JSON}, or {ACTION_PTH} and "
            f"{PROPRI_PTH} (missing: {', '.join(missing)})"
        )
    action = Normalizer(_stats_from_pth(action_path), action_dim, "action")
    state = Normalizer(_stats_from_pth(propri_path), state_dim, "state")
    return Normalizers(action, state, f"{action_path}, {propri_path}")


def write_norm_stats_json(
    path: str | Path, action: tuple[np.ndarray, np.ndarray], state: tuple[np.ndarray, np.ndarray]
) -> None:
    """Write ``(q01, q99)`` pairs in the LeRobot ``norm_stats.json`` form the reference reads."""

    def entry(q01: np.ndarray, q99: np.ndarray) -> dict:
        q01, q99 = np.asarray(q01, np.float64), np.asarray(q99, np.float64)
        return {
            "mean": ((q01 + q99) / 2).tolist(),
            "std": ((q99 - q01) / 4).tolist(),
            "q01": q01.tolist(),
            "q99": q99.tolist(),
        }

    table = {"norm_stats": {"action": entry(*action), "observation.state": entry(*state)}}
    Path(path).write_text(json.dumps(table, indent=2))


def write_normalizer_pth(path: str | Path, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``{"min.<key>": tensor, "delta.<key>": tensor}`` as the reference saves its normalisers."""
    import torch

    table = {}
    for key, (mn, delta) in stats.items():
        table[f"min.{key}"] = torch.as_tensor(np.asarray(mn, np.float32))
        table[f"delta.{key}"] = torch.as_tensor(np.asarray(delta, np.float32))
    torch.save(table, path)
