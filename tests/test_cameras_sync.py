"""Simulated cameras, stalls, drops, group alignment and the robot.yaml ``cameras:`` schema."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.camera_media import distinct_frame, write_video
from wall_runtime.cameras import (
    CameraConfigError,
    CameraError,
    CameraGroup,
    CamerasConfig,
    SnapshotError,
    StaleFrameError,
    make_group,
)
from wall_runtime.cameras.simulated import SimulatedCamera


class Renderer:
    """A render callable like the simulator's: a new picture per call, optionally blocking."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.hung = threading.Event()  # set once a call is blocked on the closed gate
        self.delay_once = 0.0

    def __call__(self) -> np.ndarray:
        if not self.gate.is_set():
            self.hung.set()
        self.gate.wait()
        if self.delay_once:
            time.sleep(self.delay_once)
            self.delay_once = 0.0
        self.calls += 1
        return distinct_frame(self.calls)


def test_stalled_camera_is_reported():
    r = Renderer()
    cam = SimulatedCamera("top", r, fps=50, stall_timeout=0.15)
    cam.start()
    try:
        assert cam.latest().image.shape == (48, 64, 3)
        r.gate.clear()
        assert r.hung.wait(2.0)  # the renderer hangs, like a driver stuck in select()
        last = cam.latest().index
        time.sleep(0.25)
        with pytest.raises(StaleFrameError, match="stalled"):
            cam.latest()
        group = CameraGroup({"top": cam}, max_age=1.0, max_skew=0.1)
        with pytest.raises(SnapshotError) as e:
            group.snapshot()
        assert e.value.reason == "stale" and group.counters["refused_stale"] == 1
        r.gate.set()
        cam.wait_for(last, timeout=1.0)
        # the frame after `last` is the one whose render hung (a loaded machine may wake this thread
        # after newer frames arrived, so it is looked up in the ring rather than taken as newest)
        held = next(f for f in cam.frames() if f.index == last + 1)
        # the frame whose render hung is stamped when it started: honest, and old
        assert held.received - held.stamp > 0.2
        fresh = cam.wait_for(held.index, timeout=1.0)
        assert time.monotonic() - fresh.stamp < 0.1
        assert group.snapshot().frames["top"].index >= fresh.index
    finally:
        r.gate.set()
        cam.stop()


def test_late_render_counts_dropped_ticks():
    r = Renderer()
    with SimulatedCamera("top", r, fps=40) as cam:
        r.delay_once = 0.2  # eight 25 ms ticks missed
        time.sleep(0.4)
        stats = cam.stats()
    assert 6 <= stats.dropped <= 10, stats
    assert stats.frames >= 6


def test_bad_render_stops_the_camera_loudly():
    cam = SimulatedCamera("top", lambda: np.zeros((4, 4), np.float32), fps=30)
    with pytest.raises(CameraError, match="HxWx3 uint8"):
        cam.start(timeout=1.0)


def test_group_aligns_unsynchronised_cameras_from_their_rings():
    """At 20 fps the newest frames can be up to 50 ms apart; picking from the rings pairs them closer."""
    cams = {n: SimulatedCamera(n, Renderer(), fps=20) for n in ("a", "b", "c")}
    group = CameraGroup(cams, max_age=0.2, max_skew=0.03, views={"a": "face_view", "b": "left", "c": "right"})
    # start phases 0, 10, 20 ms: the best triple is 20 ms wide, inside max_skew with margin for
    # thread-start jitter (phases 17 ms apart would make the best triple 33 ms wide: no valid answer)
    for cam in cams.values():
        cam.start()
        time.sleep(0.010)
    try:
        time.sleep(0.2)
        snap = group.wait_snapshot(timeout=2.0)
        assert snap.skew <= 0.03
        assert set(snap.images(group.views)) == {"face_view", "left", "right"}
        newest = [cam.frames()[-1].stamp for cam in cams.values()]
        assert snap.stamp <= min(newest) + 1e-9
    finally:
        group.stop()


def test_frozen_camera_refuses_group_snapshot(tmp_path):
    write_video(tmp_path / "f.avi", [distinct_frame(1)] * 40, fps=30)
    block = {
        "max_age": 0.5,
        "max_skew": 0.1,
        "devices": {"front": {"type": "opencv", "source": "f.avi", "frozen_after": 3}},
    }
    group = make_group(CamerasConfig.from_dict(block), base_dir=tmp_path)
    group.start()
    try:
        time.sleep(0.3)
        with pytest.raises(SnapshotError, match="frozen") as e:
            group.snapshot()
        assert e.value.reason == "frozen" and group.counters["refused_frozen"] == 1
    finally:
        group.stop()


def test_config_builds_a_group_with_transforms_and_views(tmp_path):
    write_video(tmp_path / "v.avi", [distinct_frame(i) for i in range(30)], fps=30)
    block = {
        "max_age": 0.2,
        "max_skew": 0.05,
        "devices": {
            "front": {
                "type": "opencv",
                "source": "v.avi",
                "view": "face_view",
                "rotation": 90,
                "resize": [16, 20],
            },
            "top": {"type": "simulated", "fps": 30, "crop": [8, 0, 48, 48], "resize": [24, 24]},
        },
    }
    cfg = CamerasConfig.from_dict(block)
    assert cfg.views == {"front": "face_view", "top": "top"}
    assert cfg.cameras[1].frozen_after is None  # simulated scenes may legitimately stand still
    with pytest.raises(CameraError, match="render callable"):
        make_group(cfg, base_dir=tmp_path)
    group = make_group(cfg, renderers={"top": Renderer()}, base_dir=tmp_path)
    with group:
        images = group.wait_snapshot(timeout=1.0).images(group.views)
    assert images["face_view"].shape == (20, 16, 3)
    assert images["top"].shape == (24, 24, 3)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"devices": {"f": {"type": "opencv", "source": 0, "fsp": 30}}}, r"cameras\.devices\.f: unknown key 'fsp' \(did you mean 'fps'\?\)"),
        ({"devices": {"f": {"type": "webcam"}}}, r"cameras\.devices\.f\.type: expected one of"),
        ({"devices": {"f": {"source": 0}}}, r"cameras\.devices\.f\.type: required"),
        ({"devices": {"f": {"type": "opencv"}}}, r"cameras\.devices\.f\.source: required"),
        ({"devices": {"f": {"type": "opencv", "source": 0, "fps": -5}}}, r"cameras\.devices\.f\.fps: expected a positive number"),
        ({"devices": {"f": {"type": "opencv", "source": 0, "rotation": 45}}}, r"\.rotation: expected one of \[0, 90, 180, 270\]"),
        ({"devices": {"f": {"type": "opencv", "source": 0, "crop": [0, 0, 10]}}}, r"\.crop: expected a list of 4"),
        ({"devices": {"f": {"type": "opencv", "source": 0, "resize": [224, 0]}}}, r"\.resize: expected non-zero"),
        ({"devices": {"f": {"type": "opencv", "source": 0, "depth": True}}}, r"\.depth: only realsense"),
        ({"devices": {"f": {"type": "realsense", "serial": "1", "playback": "a.db3"}}}, r"either serial or playback"),
        ({"devices": {"f": {"type": "opencv", "source": 0, "fourcc": "MJPEG"}}}, r"\.fourcc: must be 4"),
        ({"max_age": "fast", "devices": {}}, r"cameras\.max_age: expected a positive number"),
        ({"max_skw": 0.1}, r"cameras: unknown key 'max_skw' \(did you mean 'max_skew'\?\)"),
        ({"devices": {"a": {"type": "simulated", "view": "v"}, "b": {"type": "simulated", "view": "v"}}}, r"\['v'\] fed by more than one"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(block, message):
    with pytest.raises(CameraConfigError, match=message):
        CamerasConfig.from_dict(block)


def test_sensor_clock_maps_onto_host_time_without_running_ahead():
    """Arrival = capture + transfer delay (>= 1 ms, jittery); the mapping recovers capture times."""
    from wall_runtime.cameras.clock import SensorClock

    rng = np.random.default_rng(0)
    clock = SensorClock(window=100)
    offset = 1234.5  # host monotonic minus sensor clock
    sensor = np.arange(300) / 30.0
    delay = 0.001 + rng.exponential(0.004, sensor.size)
    arrival = sensor + offset + delay
    mapped = np.array([clock.to_host(s, a) for s, a in zip(sensor, arrival, strict=True)])
    assert np.all(mapped <= arrival + 1e-12), "a stamp after the frame arrived"
    err = mapped - (sensor + offset)
    assert np.max(np.abs(err[30:])) < 0.0015, np.max(np.abs(err[30:]))  # within the minimum delay
    # host-side spacing follows the sensor's, not the jittery arrivals
    assert np.std(np.diff(mapped[30:])) < 1e-4 < np.std(np.diff(arrival[30:]))
