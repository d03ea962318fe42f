"""OpenCV cameras on MJPG video files written in the test: timing, transforms, frozen and stale frames."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.camera_media import distinct_frame, write_video
from wall_runtime.cameras import (
    CameraError,
    CameraGroup,
    CameraStoppedError,
    FrozenCameraError,
    ImageTransform,
    SnapshotError,
    StaleFrameError,
)
from wall_runtime.cameras.opencv import OpenCVCamera


def collect(cam: OpenCVCamera, n: int, timeout: float = 3.0) -> list:
    frames, last = [], -1
    while len(frames) < n:
        f = cam.wait_for(last, timeout)
        frames.append(f)
        last = f.index
    return frames


def test_realtime_replay_paces_stamps_and_converts_to_rgb(tmp_path):
    path = write_video(tmp_path / "a.avi", [distinct_frame(i) for i in range(20)], fps=30)
    cam = OpenCVCamera("front", str(path), transform=ImageTransform(resize=(32, 24)))
    cam.start()
    try:
        frames = collect(cam, 12)
    finally:
        cam.stop()
    idx = [f.index for f in frames]
    assert idx == list(range(idx[0], idx[0] + 12)), "frames skipped or reordered"
    # each frame is stamped when its media time comes: 1/30 s apart, and the wall clock agrees
    np.testing.assert_allclose(np.diff([f.stamp for f in frames]), 1 / 30, atol=1e-6)
    np.testing.assert_allclose(np.diff([f.sensor_stamp for f in frames]), 1 / 30, atol=2e-3)
    span = frames[-1].received - frames[0].received
    assert abs(span - 11 / 30) < 0.06, span
    assert all(f.received >= f.stamp - 1e-4 for f in frames), "stamp after arrival"
    img = frames[0].image
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    assert img[..., 0].mean() > 150 and img[..., 0].mean() > img[..., 1].mean(), "not RGB"
    assert cam.stats().dropped == 0


def test_fast_replay_and_end_of_file(tmp_path):
    path = write_video(tmp_path / "b.avi", [distinct_frame(i) for i in range(60)], fps=30)
    cam = OpenCVCamera("front", str(path), replay="fast")
    t0 = time.monotonic()
    cam.start()
    with pytest.raises(CameraStoppedError, match="end of stream"):
        cam.wait_for(10**9, timeout=3.0)
    assert time.monotonic() - t0 < 1.0, "fast replay was paced"
    assert cam.stats().frames == 60
    with pytest.raises(CameraStoppedError):
        cam.latest()  # a finished stream never hands out its last frame as current
    cam.stop()


def test_loop_keeps_indices_increasing(tmp_path):
    path = write_video(tmp_path / "c.avi", [distinct_frame(i) for i in range(5)], fps=60)
    with OpenCVCamera("front", str(path), loop=True, replay="fast", buffer_size=64) as cam:
        collect(cam, 1)
        time.sleep(0.1)
        ring = cam.frames()
    sensor = [f.sensor_index for f in ring]
    assert sensor == sorted(sensor) and len(sensor) > 5
    assert np.all(np.diff([f.sensor_stamp for f in ring]) > 0), "media time went backwards across a loop"
    assert cam.stats().dropped == 0


def test_frozen_video_is_reported_not_reused(tmp_path):
    """lerobot#1083: a camera repeating the same picture must not look like a live one."""
    frames = [distinct_frame(i) for i in range(5)] + [distinct_frame(99)] * 40
    path = write_video(tmp_path / "frozen.avi", frames, fps=30)
    cam = OpenCVCamera("front", str(path), frozen_after=5)
    cam.start()
    try:
        deadline = time.monotonic() + 1.4
        with pytest.raises(FrozenCameraError, match="frozen"):
            while time.monotonic() < deadline:
                cam.latest()
                time.sleep(0.01)
        stats = cam.stats()
        assert stats.frozen and stats.frozen_events == 1 and stats.repeated >= 4
        # the repeated pictures never entered the ring as new frames
        assert stats.frames == 6
    finally:
        cam.stop()


def test_stale_frame_refused_by_max_age(tmp_path):
    path = write_video(tmp_path / "d.avi", [distinct_frame(i) for i in range(30)], fps=30)
    with OpenCVCamera("front", str(path)) as cam:
        f = cam.latest()
        assert cam.latest(max_age=0.5, now=f.stamp + 0.1).index == f.index
        with pytest.raises(StaleFrameError, match="max_age"):
            cam.latest(max_age=0.05, now=f.stamp + 0.1)


def test_group_rejects_skewed_cameras(tmp_path):
    """Two 10 fps cameras started ~45 ms apart can never be closer than ~45 ms: refused, counted."""
    path = write_video(tmp_path / "e.avi", [distinct_frame(i) for i in range(40)], fps=10)
    a, b = OpenCVCamera("a", str(path)), OpenCVCamera("b", str(path))
    a.start()
    time.sleep(0.045)
    b.start()
    try:
        time.sleep(0.25)
        tight = CameraGroup({"a": a, "b": b}, max_age=0.5, max_skew=0.02)
        with pytest.raises(SnapshotError, match="apart") as e:
            tight.snapshot()
        assert e.value.reason == "skew" and tight.counters["refused_skew"] == 1
        loose = CameraGroup({"a": a, "b": b}, max_age=0.5, max_skew=0.08)
        snap = loose.snapshot()
        assert 0.02 < snap.skew < 0.08 and snap.stamp == min(f.stamp for f in snap.frames.values())
        with pytest.raises(SnapshotError) as e:
            loose.snapshot(now=snap.stamp + 1.0)  # as if the control loop looked a second later
        assert e.value.reason == "stale"
        assert loose.counters == {"ok": 1, "refused_stale": 1}
    finally:
        a.stop()
        b.stop()


def test_missing_file_and_device_errors_name_the_source(tmp_path):
    with pytest.raises(CameraError, match=r"nope\.avi"):
        OpenCVCamera("front", str(tmp_path / "nope.avi")).start()
    with pytest.raises(CameraError, match="/dev/video99"):
        OpenCVCamera("front", "/dev/video99").start()


@pytest.mark.hardware
def test_v4l2_device_stamps_and_size():
    from wall_runtime.cameras.opencv import discover_opencv

    ok = [d for d in discover_opencv() if d.get("status") == "ok"]
    if not ok:
        pytest.skip("no V4L2 camera attached")
    d = ok[0]
    with OpenCVCamera("live", d["source"], width=d["width"], height=d["height"]) as cam:
        f = cam.wait_for(cam.latest().index, timeout=2.0)
        assert f.image.shape == (d["height"], d["width"], 3)
        assert 0 <= time.monotonic() - f.stamp < 0.3
