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
from collections.abc import Mapping
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


def dim_names(layout: Mapping[str, int]) -> list[str]:
    """One name per dim of a ``dof_config`` / ``agent_pos_config`` layout, e.g. ``follow_right_gripper[0]``."""
    return [f"{key}[{i}]" for key, width in layout.items() for i in range(int(width))]


def _describe(dims: list[int], names: list[str]) -> str:
    shown = [names[d] if d < len(names) else str(d) for d in dims[:8]]
    return ", ".join(shown) + (f" and {len(dims) - 8} more" if len(dims) > 8 else "")


class Normalizer:
    """min / delta vectors for each embodiment key, all of one width.

    ``layout`` (the checkpoint's ``dof_config`` / ``agent_pos_config``) lets the checks name dims: the
    reference pads statistics shorter than the layout with min 0 / delta 1 and treats q01 == q99 as
    delta 1 without a word; both are accepted here too, with a warning when they touch a real
    (non-``action_padding``) dim, because such a dim then passes un-normalised or is pinned to q01.
    """

    def __init__(
        self,
        stats: dict[str, tuple[np.ndarray, np.ndarray]],
        dim: int,
        label: str,
        layout: Mapping[str, int] | None = None,
        source: str = "",
    ):
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
            self._warn_if_suspicious(key, mn.size, delta, layout, source)

    def _warn_if_suspicious(
        self, key: str, given: int, delta: np.ndarray, layout: Mapping[str, int] | None, source: str
    ) -> None:
        where = f" in {source}" if source else ""
        names = dim_names(layout) if layout else []
        real = self.dim - int(layout.get("action_padding", 0)) if layout else self.dim
        if given < real:
            short = list(range(given, real))
            log.warning(
                "%s statistics [%r]%s have %d dims but the layout has %d real dims: %s get min 0 / delta 1 "
                "(the reference pads the same way) and pass un-normalised; check the statistics belong "
                "to this checkpoint's layout",
                self.label,
                key,
                where,
                given,
                real,
                _describe(short, names),
            )
        degenerate = [int(i) for i in np.flatnonzero(delta == 0) if i < real]
        if degenerate:
            log.warning(
                "%s statistics [%r]%s have q01 == q99 on %s: normalising treats the range as 1 and "
                "un-normalised %s on those dims are pinned to q01 (as the reference does)",
                self.label,
                key,
                where,
                _describe(degenerate, names),
                "actions" if self.label == "action" else "values",
            )

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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NormalizerError(f"{path} is not valid JSON: {exc}") from exc
    stats = table.get("norm_stats", table) if isinstance(table, dict) else None
    if not isinstance(stats, dict):
        raise NormalizerError(f"{path} must hold an object of statistics")
    if not isinstance(stats.get(entry), dict):
        raise NormalizerError(f"{path} has no {entry!r} entry (found {sorted(stats)})")
    try:
        q01 = np.asarray(stats[entry]["q01"], dtype=np.float32).reshape(-1)
        q99 = np.asarray(stats[entry]["q99"], dtype=np.float32).reshape(-1)
    except KeyError as exc:
        raise NormalizerError(f"{path}: {entry!r} has no {exc.args[0]!r} quantile") from exc
    except (TypeError, ValueError) as exc:
        raise NormalizerError(f"{path}: {entry!r} quantiles must be lists of numbers: {exc}") from exc
    if q01.shape != q99.shape:
        raise NormalizerError(f"{path}: {entry!r} q01 has {q01.size} dims but q99 has {q99.size}")
    return {key: (q01, q99 - q01)}


def _stats_from_pth(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torch

    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle / zip
        raise NormalizerError(f"{path}: cannot read as a PyTorch table: {exc}") from exc
    if not isinstance(table, dict):
        raise NormalizerError(f"{path}: expected a dict of 'min.<key>' / 'delta.<key>' tensors")
    if "state_dict" in table:
        table = table["state_dict"]
    mins: dict[str, np.ndarray] = {}
    deltas: dict[str, np.ndarray] = {}
    for name, value in table.items():
        prefix, _, key = str(name).partition(".")
        if not key:
            continue
        if prefix in ("min", "delta") and not isinstance(value, torch.Tensor):
            raise NormalizerError(f"{path}: {name!r} is not a tensor")
        if prefix == "min":
            mins[key] = value.float().numpy()
        elif prefix == "delta":
            deltas[key] = value.float().numpy()
    unpaired = sorted(set(mins) ^ set(deltas))
    if unpaired:
        raise NormalizerError(f"{path}: keys {unpaired} have a min without a delta or the reverse")
    return {k: (mins[k], deltas[k]) for k in mins}


def load_normalizers(
    checkpoint_dir: str | Path,
    action_dim: int,
    state_dim: int,
    norm_key: str | None = None,
    *,
    action_layout: Mapping[str, int] | None = None,
    state_layout: Mapping[str, int] | None = None,
) -> Normalizers:
    """Statistics from ``norm_stats.json``, else the two ``.pth`` tables (the reference's order).

    The layouts (``dof_config``, ``agent_pos_config``) name dims in the warnings about short or
    degenerate statistics."""
    root = Path(checkpoint_dir)
    json_path = root / NORM_STATS_JSON
    if json_path.is_file():
        key = norm_key or DEFAULT_KEY
        action = Normalizer(
            _stats_from_norm_stats_json(json_path, "action", key),
            action_dim,
            "action",
            action_layout,
            str(json_path),
        )
        state = Normalizer(
            _stats_from_norm_stats_json(json_path, "observation.state", key),
            state_dim,
            "state",
            state_layout,
            str(json_path),
        )
        return Normalizers(action, state, str(json_path))
    action_path, propri_path = root / ACTION_PTH, root / PROPRI_PTH
    missing = [p.name for p in (action_path, propri_path) if not p.is_file()]
    if missing:
        raise NormalizerError(
            f"{root} has no normalisation statistics: expected {NORM_STATS_JSON}, or {ACTION_PTH} and "
            f"{PROPRI_PTH} (missing: {', '.join(missing)})"
        )
    action = Normalizer(_stats_from_pth(action_path), action_dim, "action", action_layout, str(action_path))
    state = Normalizer(_stats_from_pth(propri_path), state_dim, "state", state_layout, str(propri_path))
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
