"""The wire codec and schema without a server: framing, zero copy, strict decoding, validation."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from transport_helpers import echo_policy, observation, robot

from wall_runtime.transport import protocol
from wall_runtime.transport.codec import decode, encode
from wall_runtime.transport.errors import ErrorCode, ProtocolError
from wall_runtime.transport.metrics import ServerMetrics
from wall_runtime.types import ActionChunk, InpaintHint

META = echo_policy().metadata


def _decode_observe(frames, description=None):
    msg = decode([bytes(f) for f in frames], protocol.DEFAULT_MAX_MESSAGE_BYTES)
    return protocol.decode_observe(msg, description or robot(), META)


def test_observe_round_trip_is_exact() -> None:
    obs = observation(7.25, seed=4)
    obs.dof_mask = np.ones(20, np.float32)
    obs.inpaint = InpaintHint(
        np.full((32, 20), 0.5, np.float32), np.linspace(1, 0, 32, dtype=np.float32), 3.0
    )
    req = _decode_observe(protocol.encode_observe(obs, seq=42, deadline_ms=150.0))
    assert (req.seq, req.deadline_ms, req.observation.stamp) == (42, 150.0, 7.25)
    for cam, img in obs.images.items():
        np.testing.assert_array_equal(req.observation.images[cam], img)
    np.testing.assert_array_equal(req.observation.state, obs.state)
    np.testing.assert_array_equal(req.observation.inpaint.actions, obs.inpaint.actions)
    assert req.observation.inpaint.max_guidance == 3.0 and req.observation.state_mask is None


def test_arrays_are_not_copied_on_either_end() -> None:
    image = np.arange(224 * 224 * 3, dtype=np.uint8).reshape(224, 224, 3)
    frames = encode({"v": 1, "type": "x"}, {"img": image})
    # send side: the frame is a view on the array itself
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), image)
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://codec-zero-copy")
        b.connect("inproc://codec-zero-copy")
        a.send_multipart(frames, copy=False)
        received = b.recv_multipart(copy=False)
        msg = decode(received, 1 << 24)
        # receive side: the array is a read-only view on zmq's message buffer
        assert np.shares_memory(msg.arrays["img"], np.frombuffer(received[1].buffer, np.uint8))
        assert not msg.arrays["img"].flags.writeable
        np.testing.assert_array_equal(msg.arrays["img"], image)
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


@pytest.mark.parametrize("arr", [np.array([object()]), np.zeros(3, np.float64), np.zeros(2, np.complex64)])
def test_encoder_refuses_what_the_wire_does_not_carry(arr: np.ndarray) -> None:
    with pytest.raises(ProtocolError) as info:
        encode({"v": 1, "type": "x"}, {"a": arr})
    assert info.value.code == ErrorCode.BAD_DTYPE


def test_non_contiguous_arrays_are_sent_correctly() -> None:
    base = np.arange(40, dtype=np.float32).reshape(5, 8)
    msg = decode(encode({"v": 1, "type": "x"}, {"t": base.T}), 1 << 20)
    np.testing.assert_array_equal(msg.arrays["t"], base.T)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], ErrorCode.BAD_MESSAGE),
        ([b"\xc1"], ErrorCode.BAD_MESSAGE),
        ([msgpack.packb([1, 2])], ErrorCode.BAD_MESSAGE),
        ([msgpack.packb({"v": 1})], ErrorCode.BAD_MESSAGE),
        ([msgpack.packb({1: 2, "type": "x"})], ErrorCode.BAD_MESSAGE),  # non-string map key
        ([msgpack.packb({"type": "x", "e": msgpack.ExtType(1, b"")})], ErrorCode.BAD_MESSAGE),
        ([msgpack.packb({"type": "x", "arrays": [["a", "|u1", [4]]]})], ErrorCode.BAD_MESSAGE),
        ([msgpack.packb({"type": "x", "arrays": [["a", "|u1", [4]]]}), b"abc"], ErrorCode.BAD_SHAPE),
        ([msgpack.packb({"type": "x", "arrays": [["a", "|O", [1]]]}), b"12345678"], ErrorCode.BAD_DTYPE),
        ([msgpack.packb({"type": "x", "arrays": [["a", "|u1", [-1]]]}), b""], ErrorCode.BAD_SHAPE),
        (
            [msgpack.packb({"type": "x", "arrays": [["a", "|u1", [1]], ["a", "|u1", [1]]]}), b"1", b"2"],
            ErrorCode.BAD_MESSAGE,
        ),
        ([msgpack.packb({"type": "x"}), b"x" * 2048], ErrorCode.TOO_LARGE),
    ],
)
def test_decoder_rejects_malformed_frames(frames: list[bytes], code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frames, max_bytes=1024)
    assert info.value.code == code


def _with(obs_changes, description=None):
    obs = observation(1.0)
    obs_changes(obs)
    with pytest.raises(ProtocolError) as info:
        _decode_observe(protocol.encode_observe(obs, 1, 100.0), description)
    return info.value


def test_observe_is_checked_against_the_handshake() -> None:
    assert _with(lambda o: o.images.pop("face_view")).code == ErrorCode.BAD_SHAPE
    assert _with(lambda o: o.images.update(face_view=o.images["face_view"][:100])).code == ErrorCode.BAD_SHAPE
    assert _with(lambda o: setattr(o, "state", np.zeros(15, np.float32))).code == ErrorCode.BAD_SHAPE
    assert _with(lambda o: o.images.update(extra=o.images["face_view"])).code == ErrorCode.BAD_SHAPE
    assert _with(lambda o: setattr(o, "state_mask", np.full(20, 2.0, np.float32))).code == ErrorCode.BAD_VALUE
    assert _with(lambda o: setattr(o, "dof_mask", np.ones(7, np.float32))).code == ErrorCode.BAD_SHAPE
    hint = InpaintHint(np.zeros((32, 20), np.float32), np.full(32, 1.5, np.float32))
    assert _with(lambda o: setattr(o, "inpaint", hint)).code == ErrorCode.BAD_VALUE
    short = InpaintHint(np.zeros((16, 20), np.float32), np.ones(16, np.float32))
    assert _with(lambda o: setattr(o, "inpaint", short)).code == ErrorCode.BAD_SHAPE


def test_hello_validation() -> None:
    good = robot().to_header()
    assert protocol.RobotDescription.from_header(good) == robot()
    for key, value in [
        ("cameras", {"face_view": [224, 224, 4]}),
        ("cameras", {}),
        ("state_dim", 0),
        ("state_dim", True),
        ("action_period", -0.1),
        ("robot_id", ""),
    ]:
        with pytest.raises(ProtocolError):
            protocol.RobotDescription.from_header({**good, key: value})
    with pytest.raises(ProtocolError, match="state dim"):
        protocol.RobotDescription("r", "e", {"face_view": (8, 8, 3)}, 64, 0.02).check_fits(META)


def test_chunk_round_trip_and_checks() -> None:
    actions = np.random.default_rng(0).standard_normal((32, 20)).astype(np.float32)
    chunk = ActionChunk(actions, stamp=5.5, dt=0.02, seq=9, timing_ms={"server_total": 1.5})
    back = protocol.decode_chunk(decode(protocol.encode_chunk(chunk), 1 << 20), META)
    np.testing.assert_array_equal(back.actions, actions)
    assert (back.stamp, back.dt, back.seq, back.timing_ms) == (5.5, 0.02, 9, {"server_total": 1.5})
    actions[3, 4] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        protocol.decode_chunk(decode(protocol.encode_chunk(chunk), 1 << 20), META)


def test_metrics_prometheus_text() -> None:
    m = ServerMetrics()
    m.inc("requests", type="observe")
    m.inc("requests", type="observe")
    m.inc("errors", code='we"ird')
    for v in (0.3, 0.7, 3.0, 20000.0):
        m.observe("queue_wait_ms", v)
    text = m.prometheus()
    assert 'wall_runtime_server_requests_total{type="observe"} 2.0' in text
    assert "# HELP wall_runtime_server_requests_total Messages received, by type." in text
    assert 'code="we\\"ird"' in text
    # milliseconds recorded, seconds exported
    assert "# TYPE wall_runtime_server_queue_wait_seconds histogram" in text
    assert 'wall_runtime_server_queue_wait_seconds_bucket{le="0.0005"} 1.0' in text
    assert 'wall_runtime_server_queue_wait_seconds_bucket{le="0.005"} 3.0' in text
    assert 'wall_runtime_server_queue_wait_seconds_bucket{le="+Inf"} 4.0' in text
    assert "wall_runtime_server_queue_wait_seconds_count 4.0" in text
    assert "wall_runtime_server_queue_wait_seconds_sum 20.004" in text
    # and the text parses as Prometheus exposition
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"wall_runtime_server_requests", "wall_runtime_server_queue_wait_seconds"} <= names


def test_the_robot_side_transport_imports_no_backend() -> None:
    """The client and the protocol speak PolicyMetadata from types.py: a robot host needs neither
    torch nor any backend module to talk to a server."""
    import subprocess
    import sys

    code = (
        "import sys, wall_runtime.transport.client, wall_runtime.transport.protocol; "
        "print(sorted(m for m in sys.modules if m.startswith('wall_runtime.backends') or m == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
