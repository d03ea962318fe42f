"""A synchronised snapshot across several cameras, refusing old or mutually distant frames.

Each camera's ring holds its last few frames. A snapshot uses every camera's newest frame when
those are within ``max_skew`` of each other (the freshest observation). Otherwise it takes the
camera whose newest frame is the oldest as the reference time and picks, from every other ring,
the frame closest to it; so unsynchronised cameras still pair up as closely as their phases allow
(Diffusion Policy aligns its RealSense frames by timestamp the same way). The
snapshot is refused (``SnapshotError``, with its ``reason`` counted) when any camera is missing,
stopped or frozen, when any chosen frame is older than ``max_age``, or when the chosen frames
are further apart than ``max_skew``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from wall_runtime.cameras.base import Camera, CameraError, Frame


class SnapshotError(CameraError):
    """No usable synchronised snapshot; ``reason`` is one of missing/stopped/frozen/stale/skew."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GroupSnapshot:
    frames: dict[str, Frame]  # camera name -> frame
    stamp: float  # the oldest chosen frame's stamp: the observation's capture time
    skew: float  # seconds between the oldest and newest chosen frame

    def images(self, views: Mapping[str, str] | None = None) -> dict[str, object]:
        """Images keyed by model view (``views``: camera name -> view name) or by camera name."""
        return {(views or {}).get(name, name): f.image for name, f in self.frames.items()}


class CameraGroup:
    """Cameras of one robot with the sync policy; ``counters`` says how many snapshots were refused why."""

    def __init__(
        self,
        cameras: Mapping[str, Camera],
        *,
        max_age: float = 0.1,
        max_skew: float = 0.02,
        views: Mapping[str, str] | None = None,
    ) -> None:
        if not cameras:
            raise ValueError("a camera group needs at least one camera")
        if max_age <= 0 or max_skew < 0:
            raise ValueError(f"max_age must be > 0 and max_skew >= 0, got {max_age}, {max_skew}")
        self.cameras = dict(cameras)
        self.max_age, self.max_skew = max_age, max_skew
        self.views = dict(views or {name: name for name in cameras})
        self.counters: Counter[str] = Counter()

    def start(self, timeout: float = 5.0) -> None:
        started: list[Camera] = []
        try:
            for cam in self.cameras.values():
                cam.start(timeout=timeout)
                started.append(cam)
        except Exception:
            for cam in started:
                cam.stop()
            raise

    def stop(self) -> None:
        for cam in self.cameras.values():
            cam.stop()

    def __enter__(self) -> CameraGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self, now: float | None = None) -> GroupSnapshot:
        """The best-aligned set of frames now, or ``SnapshotError``."""
        now = time.monotonic() if now is None else now
        try:
            snap = self._snapshot(now)
        except SnapshotError as e:
            self.counters[f"refused_{e.reason}"] += 1
            raise
        self.counters["ok"] += 1
        return snap

    def wait_snapshot(self, timeout: float, poll: float = 0.002) -> GroupSnapshot:
        """Retry ``snapshot`` until one succeeds or ``timeout`` passes (then raise the last refusal)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.snapshot()
            except SnapshotError:
                if time.monotonic() + poll > deadline:
                    raise
                time.sleep(poll)

    def _snapshot(self, now: float) -> GroupSnapshot:
        rings: dict[str, list[Frame]] = {}
        for name, cam in self.cameras.items():
            try:
                ring = cam.frames()
                cam.latest(now=now)  # stall check on the newest frame
            except CameraError as e:
                reason = getattr(e, "reason", "missing")
                raise SnapshotError(str(e), "missing" if reason == "error" else reason) from e
            if not ring:
                raise SnapshotError(f"camera {name!r}: no frame yet", "missing")
            rings[name] = ring
        chosen = {name: ring[-1] for name, ring in rings.items()}
        if _spread(chosen) > self.max_skew:
            reference = min(f.stamp for f in chosen.values())
            chosen = {name: min(ring, key=lambda f: abs(f.stamp - reference)) for name, ring in rings.items()}
        oldest = min(f.stamp for f in chosen.values())
        newest = max(f.stamp for f in chosen.values())
        if now - oldest > self.max_age:
            name = min(chosen, key=lambda n: chosen[n].stamp)
            raise SnapshotError(
                f"camera {name!r}: frame is {1000 * (now - oldest):.0f} ms old (max_age {1000 * self.max_age:.0f} ms)",
                "stale",
            )
        if newest - oldest > self.max_skew:
            order = sorted(chosen, key=lambda n: chosen[n].stamp)
            raise SnapshotError(
                f"cameras {order[0]!r} and {order[-1]!r} are {1000 * (newest - oldest):.1f} ms apart "
                f"(max_skew {1000 * self.max_skew:.1f} ms)",
                "skew",
            )
        return GroupSnapshot(frames=chosen, stamp=oldest, skew=newest - oldest)


def _spread(frames: dict[str, Frame]) -> float:
    stamps = [f.stamp for f in frames.values()]
    return max(stamps) - min(stamps)
