"""RealSense through the real pyrealsense2 pipeline: recordings written with the software device,
played back with ``enable_device_from_file``, depth aligned with ``rs.align``, stamps mapped."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.camera_media import distinct_frame
from wall_runtime.cameras import CameraError, CameraStoppedError, FrozenCameraError, ImageTransform
from wall_runtime.cameras.realsense import RealSenseCamera, discover_realsense
from wall_runtime.cameras.realsense_recording import RecordedFrame, write_recording

rs = pytest.importorskip("pyrealsense2")

N = 15
PERIOD_MS = 1000 / 30
T0_MS = 5000.0


def depth_map(i: int) -> np.ndarray:
    """32x24 depth: a plane at 0.5 m + i mm (a different value per frame)."""
    return np.full((24, 32), 500 + i, np.uint16)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rs") / "rgbd.db3"
    frames = [RecordedFrame(distinct_frame(i), T0_MS + i * PERIOD_MS, depth_map(i)) for i in range(N)]
    write_recording(path, frames, fps=30)
    return path, frames


def drain(cam: RealSenseCamera) -> list:
    """Every frame the camera delivered, in order. Read from its ring: ``wait_for`` hands back the
    newest frame, and a reader woken late (a loaded machine) would otherwise skip some."""

    def after(index: int) -> list:
        with cam._cond:
            return [f for f in cam._ring if f.index > index]

    out, last = [], -1
    while True:
        try:
            cam.wait_for(last, timeout=2.0)
        except CameraStoppedError:
            return out + after(last)
        except FrozenCameraError:
            # A frozen camera refuses reads but keeps capturing until the recording ends: a reader
            # that wakes between the freeze and the end still has frames to collect.
            time.sleep(0.01)
        new = after(last)
        out += new
        if new:
            last = new[-1].index


def test_playback_is_timed_aligned_and_exact(recording):
    path, written = recording
    cam = RealSenseCamera("wrist", playback=path, width=64, height=48, fps=30, depth=True, buffer_size=64)
    cam.start()
    frames = drain(cam)
    stats = cam.stats()
    cam.stop()
    assert len(frames) >= N - 2, f"only {len(frames)} of {N} frames"
    for f in frames:
        i = f.sensor_index
        assert f.sensor_stamp == pytest.approx((T0_MS + i * PERIOD_MS) / 1000, abs=1e-6)
        np.testing.assert_array_equal(f.image, written[i].color)
        # depth 32x24 aligned to the 64x48 colour frame: same shape as colour, same plane
        assert f.depth.shape == (48, 64) and f.depth.dtype == np.uint16
        valid = f.depth > 0
        assert valid.mean() > 0.9
        assert np.all(f.depth[valid] == 500 + i), "depth paired with the wrong colour frame"
        assert f.depth_scale == pytest.approx(0.001)
        assert f.stamp <= f.received + 1e-6, "host stamp later than arrival"
    # sensor clock mapped onto the host clock: host stamps keep the sensor's spacing
    host = np.diff([f.stamp for f in frames])
    sensor = np.diff([f.sensor_stamp for f in frames])
    assert np.max(np.abs(host - sensor)) < 0.008, np.max(np.abs(host - sensor))
    span = frames[-1].sensor_index - frames[0].sensor_index + 1
    assert stats.dropped == span - len(frames), "sensor counter gaps not counted as drops"
    assert stats.frozen_events == 0


def test_fast_playback_delivers_every_frame_with_transform(recording):
    path, _ = recording
    cam = RealSenseCamera(
        "wrist", playback=path, depth=True, realtime=False, buffer_size=64,
        transform=ImageTransform(rotation=90, resize=(24, 32)),
    )  # fmt: skip
    cam.start()
    frames = drain(cam)
    cam.stop()
    assert [f.sensor_index for f in frames] == list(range(N))
    assert cam.stats().dropped == 0
    assert frames[0].image.shape == (32, 24, 3) and frames[0].depth.shape == (32, 24)


def test_repeated_pictures_are_detected_as_frozen(tmp_path):
    """New sensor stamps but the same picture every time: the camera is frozen, not live."""
    pics = [distinct_frame(i) for i in range(3)] + [distinct_frame(50)] * 12
    path = write_recording(
        tmp_path / "frozen.db3",
        [RecordedFrame(p, T0_MS + i * PERIOD_MS) for i, p in enumerate(pics)],
        fps=30,
    )
    cam = RealSenseCamera("wrist", playback=path, width=64, height=48, frozen_after=4, realtime=False)
    cam.start()
    drain(cam)
    stats = cam.stats()
    cam.stop()
    # 3 distinct pictures, then the same one 12 times: the first repeat counts as a frame, the
    # rest as repeats (librealsense's pipeline may still drop one frameset on a loaded machine)
    assert stats.frames in (3, 4) and 10 <= stats.repeated <= 11
    assert stats.frames + stats.repeated >= 14
    assert stats.frozen and stats.frozen_events == 1


def test_frozen_while_playing_raises(tmp_path):
    pics = [distinct_frame(i) for i in range(3)] + [distinct_frame(50)] * 20
    path = write_recording(
        tmp_path / "frozen_rt.db3",
        [RecordedFrame(p, T0_MS + i * PERIOD_MS) for i, p in enumerate(pics)],
        fps=30,
    )
    cam = RealSenseCamera("wrist", playback=path, width=64, height=48, frozen_after=4)
    cam.start()
    try:
        import time

        deadline = time.monotonic() + 0.7
        with pytest.raises(FrozenCameraError):
            while time.monotonic() < deadline:
                cam.latest()
                time.sleep(0.01)
    finally:
        cam.stop()


def test_resolution_mismatch_and_missing_recording_are_errors(recording, tmp_path):
    path, _ = recording
    with pytest.raises(CameraError, match="64x48, config says 640x480"):
        RealSenseCamera("wrist", playback=path, width=640, height=480).start()
    with pytest.raises(CameraError, match="no such RealSense recording"):
        RealSenseCamera("wrist", playback=tmp_path / "none.db3").start()
    with pytest.raises(ValueError, match=r"\.db3"):
        write_recording(tmp_path / "x.bag", [RecordedFrame(distinct_frame(0), 0.0)])


def test_discovery_without_devices_is_empty():
    assert discover_realsense() == [] or all("serial" in d for d in discover_realsense())


@pytest.mark.hardware
def test_live_realsense_stamps_are_on_the_host_clock():
    devices = discover_realsense()
    if not devices:
        pytest.skip("no RealSense attached")
    import time

    cam = RealSenseCamera("live", serial=str(devices[0]["serial"]), depth=True)
    with cam:
        f = cam.wait_for(-1, timeout=3.0)
        f = cam.wait_for(f.index, timeout=1.0)
        assert 0 <= time.monotonic() - f.stamp < 0.2
        assert f.depth is not None and f.depth.shape == f.image.shape[:2]
