"""Model-sized frames on the wire: the robot host runs the first, exact preprocessing step (the
Pillow bicubic resize to each view's resolution, announced at the handshake) and the model input is
bit-identical to what the policy host computes from the camera frame.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from transport_helpers import serving

from wall_runtime.backends.torch_backend import TorchPolicy
from wall_runtime.model.image_processing import shrink_for_wire, wire_frame_size
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.transport import protocol
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.codec import Message
from wall_runtime.transport.errors import ProtocolError
from wall_runtime.transport.protocol import RobotDescription
from wall_runtime.types import Observation

FRAMES = [(480, 640), (720, 1280), (640, 480), (300, 400), (100, 90)]  # (h, w); the last is under 112


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("wire")
    return write_tiny_checkpoint(root / "ckpt", "0.5")


def _frame(h: int, w: int, seed: int) -> np.ndarray:
    """A camera-like frame: smooth gradients plus noise, so a resize has real work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / w, 255 * y / h, 128 + 90 * np.sin(x / 7) * np.cos(y / 11)], -1)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def _observation(views, size: tuple[int, int], seed: int = 0) -> Observation:
    return Observation(
        stamp=1.0,
        images={v: _frame(*size, seed + i) for i, v in enumerate(views)},
        state=np.linspace(-0.5, 0.5, 7, dtype=np.float32),
        instruction="put the cup on the plate",
    )


@pytest.mark.parametrize("size", FRAMES)
def test_model_input_is_bit_identical(checkpoint, size):
    model = WallOSS.from_checkpoint(checkpoint)
    views = model.cfg.data.cameras
    raw = _observation(views, size)
    sent = Observation(
        stamp=raw.stamp,
        images={v: shrink_for_wire(img, model.cfg.data.resolution[v]) for v, img in raw.images.items()},
        state=raw.state,
        instruction=raw.instruction,
    )
    for v in views:
        assert sent.images[v].shape[:2] == wire_frame_size(*size, model.cfg.data.resolution[v])
    if max(size) > 112:
        assert sent.images[views[0]].nbytes < raw.images[views[0]].nbytes
    a, b = model.preprocess([raw]), model.preprocess([sent])
    for field in ("pixel_values", "grid_thw", "input_ids", "attention_mask", "position_ids", "state"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and np.array_equal(x, y), field


class _Recording(TorchPolicy):
    """The torch policy, keeping the prepared model input of each call (what the network is fed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs: list = []
        self.frames: list = []
        self.lock = threading.Lock()

    def infer(self, observations, noise=None):
        with self.lock:
            self.inputs += [self.model.preprocess([o]) for o in observations]
            self.frames += [{k: v.shape for k, v in o.images.items()} for o in observations]
        zero = [np.zeros((self.metadata.action_horizon, self.metadata.action_dim), np.float32)] * len(
            observations
        )
        return super().infer(observations, noise=zero)


def test_client_sends_model_sized_frames_and_the_model_input_is_unchanged(checkpoint):
    base = TorchPolicy.from_checkpoint(checkpoint)
    policy = _Recording(base.model, seed=0)
    views = policy.metadata.cameras
    assert policy.metadata.resolutions == dict.fromkeys(views, 112)
    description = RobotDescription("arm", "test", {v: (480, 640, 3) for v in views}, 7, 0.05)
    obs = _observation(views, (480, 640), seed=3)
    chunks, sizes = [], []
    with serving(policy) as server:
        for resize in (False, True):
            client = PolicyClient(server.endpoint, description, resize_images=resize)
            try:
                meta = client.connect(timeout=10.0)
                assert meta.resolutions == dict.fromkeys(views, 112)
                chunks.append(client.submit(obs, deadline=30.0).result(timeout=60).actions)
            finally:
                client.close()
            wire = obs
            if resize:
                images = {v: shrink_for_wire(i, 112) for v, i in obs.images.items()}
                wire = Observation(obs.stamp, images, obs.state, obs.instruction)
            sent = protocol.encode_observe(wire, 1, 100.0)
            sizes.append(sum(len(bytes(f)) for f in sent))
    assert policy.frames[0] == dict.fromkeys(views, (480, 640, 3))
    assert policy.frames[1] == dict.fromkeys(views, (84, 112, 3))
    a, b = policy.inputs
    assert np.array_equal(a.pixel_values, b.pixel_values) and np.array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(chunks[0], chunks[1])
    assert sizes[1] < sizes[0] / 20  # 640x480 -> 112x84 per view: ~33x fewer image bytes


def _observe_message(images: dict[str, np.ndarray]) -> Message:
    header = {"v": protocol.PROTOCOL_VERSION, "type": protocol.OBSERVE, "seq": 1, "deadline_ms": 100.0}
    header |= {"stamp": 0.0, "instruction": "x"}
    arrays = {protocol.IMAGE_PREFIX + k: v for k, v in images.items()}
    return Message(header, arrays | {"state": np.zeros(7, np.float32)})


def test_server_takes_the_announced_shape_or_the_resized_one_and_nothing_else(checkpoint):
    meta = TorchPolicy.from_checkpoint(checkpoint).metadata
    view = meta.cameras[0]
    robot = RobotDescription("arm", "test", {view: (480, 640, 3)}, 7, 0.05)
    for shape in ((480, 640, 3), (84, 112, 3)):
        req = protocol.decode_observe(_observe_message({view: np.zeros(shape, np.uint8)}), robot, meta)
        assert req.observation.images[view].shape == shape
    with pytest.raises(ProtocolError, match=r"\[480, 640, 3\].*or \[84, 112, 3\]"):
        protocol.decode_observe(_observe_message({view: np.zeros((96, 128, 3), np.uint8)}), robot, meta)


def test_metadata_carries_resolutions_and_refuses_bad_ones(checkpoint):
    meta = TorchPolicy.from_checkpoint(checkpoint).metadata
    back = protocol.metadata_from_dict(meta.to_dict())
    assert back == meta and back.resolutions == meta.resolutions
    old = {k: v for k, v in meta.to_dict().items() if k != "resolutions"}  # an older server
    assert protocol.metadata_from_dict(old).resolutions == {}
    with pytest.raises(ProtocolError, match="resolution"):
        protocol.metadata_from_dict(meta.to_dict() | {"resolutions": {"face_view": -3}})
