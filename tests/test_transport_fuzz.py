"""Bad input thrown at a running server (hypothesis): every message gets an error reply, or libzmq
drops the connection and the server logs why, and a well-behaved robot is served throughout."""

from __future__ import annotations

import logging
import math

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_helpers import CAMERAS, client_for, echo_policy, observation, robot, serving

from wall_runtime.transport import protocol
from wall_runtime.transport.codec import decode, encode

SIZE = 32  # small images keep hundreds of examples fast; shapes are still checked exactly
STATE = 14
MAX_BYTES = 256 * 1024
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible and bounded
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ERROR_CODES = {
    "bad_message",
    "unsupported_version",
    "unknown_type",
    "not_registered",
    "bad_dtype",
    "bad_shape",
    "bad_value",
    "too_large",
    "deadline_exceeded",
}

# a crash in a server or client thread must fail the test, not just warn
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


class Rig:
    """A server, a registered attacker socket, and a well-behaved client sharing it."""

    def __init__(self) -> None:
        self.policy = echo_policy()
        self._server_cm = serving(self.policy, max_message_bytes=MAX_BYTES, max_batch=4)
        self.server = self._server_cm.__enter__()
        self._good_cm = client_for(self.server.endpoint, robot("good", size=SIZE, state_dim=STATE))
        self.good = self._good_cm.__enter__()
        self.ctx = zmq.Context()
        self.attacker = self._socket()
        self.good_served = 0
        self.good_seq = 0

    def _socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(self.server.endpoint)
        hello = robot("attacker", size=SIZE, state_dim=STATE).to_header()
        sock.send_multipart(encode(hello))
        assert sock.poll(5000), "no welcome"
        assert decode(sock.recv_multipart(), 1 << 20).type == "welcome"
        return sock

    def exchange(self, frames: list[bytes]) -> dict:
        """Send raw frames; return the server's reply header (there must be one)."""
        self.attacker.send_multipart(frames)
        assert self.attacker.poll(3000), f"no reply to {[bytes(f)[:40] for f in frames]}"
        return decode(self.attacker.recv_multipart(), 1 << 20).header

    def check_good_client_served(self) -> None:
        self.good_seq += 1
        obs = observation(float(self.good_seq), seed=self.good_seq, size=SIZE, state_dim=STATE)
        chunk = self.good.submit(obs, deadline=2.0).result(timeout=5)
        np.testing.assert_array_equal(chunk.actions, self.policy.expected_actions(obs))
        self.good_served += 1

    def close(self) -> None:
        self.attacker.close()
        self.ctx.term()
        self._good_cm.__exit__(None, None, None)
        self._server_cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def rig():
    r = Rig()
    yield r
    r.close()


def valid_observe(seq: int = 1) -> tuple[dict, dict[str, np.ndarray]]:
    obs = observation(1.0, seed=seq, size=SIZE, state_dim=STATE)
    header = {
        "v": 1,
        "type": "observe",
        "seq": seq,
        "deadline_ms": 2000.0,
        "stamp": 1.0,
        "instruction": "x",
    }
    arrays = {f"image/{c}": obs.images[c] for c in CAMERAS}
    arrays["state"] = obs.state
    return header, arrays


def raw_frames(header: dict, arrays: dict[str, tuple[str, list[int], bytes]]) -> list[bytes]:
    """Frames built by hand, so dtypes and shapes our encoder refuses can be sent."""
    full = dict(header)
    full["arrays"] = [[name, dt, shape] for name, (dt, shape, _) in arrays.items()]
    return [msgpack.packb(full), *(data for _, _, data in arrays.values())]


def as_raw(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, list[int], bytes]]:
    return {k: (v.dtype.str, list(v.shape), v.tobytes()) for k, v in arrays.items()}


def assert_error(reply: dict, *codes: str) -> None:
    assert reply["type"] == "error", reply
    assert reply["code"] in (codes or ERROR_CODES), reply
    assert isinstance(reply["message"], str) and reply["message"]


def test_valid_observe_from_attacker_socket_is_served(rig: Rig) -> None:
    """The rig itself: a hand-built valid message is answered with a chunk (so errors mean something)."""
    header, arrays = valid_observe(seq=5)
    reply = rig.exchange(raw_frames(header, as_raw(arrays)))
    assert reply["type"] == "chunk" and reply["seq"] == 5


@FUZZ
@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_garbage(rig: Rig, frames: list[bytes]) -> None:
    assert_error(rig.exchange(frames))
    rig.check_good_client_served()


@FUZZ
@given(kind=st.text(max_size=20).filter(lambda t: t not in protocol.CLIENT_TYPES), seq=st.integers(0, 100))
def test_unknown_type(rig: Rig, kind: str, seq: int) -> None:
    reply = rig.exchange([msgpack.packb({"v": 1, "type": kind, "seq": seq})])
    assert_error(reply, "unknown_type")
    assert reply["seq"] == seq  # the error names the request it answers
    rig.check_good_client_served()


@FUZZ
@given(data=st.data())
def test_truncated(rig: Rig, data: st.DataObject) -> None:
    header, arrays = valid_observe()
    frames = raw_frames(header, as_raw(arrays))
    which = data.draw(st.integers(0, len(frames) - 1), label="frame")
    mode = data.draw(st.sampled_from(["cut", "drop_frame", "drop_tail"]), label="mode")
    if mode == "cut":
        frames[which] = frames[which][: data.draw(st.integers(0, len(frames[which]) - 1), label="cut_at")]
        if which == 0 and not frames[0]:
            frames[0] = b"\xc1"  # msgpack's never-used byte: an empty frame is still "garbage"
    elif mode == "drop_frame":
        del frames[max(which, 1)]
    else:
        frames = frames[: max(which, 1)]
    assert_error(rig.exchange(frames), "bad_message", "bad_shape")
    rig.check_good_client_served()


@FUZZ
@given(
    target=st.sampled_from([f"image/{CAMERAS[0]}", "state"]),
    dtype=st.sampled_from(["<f8", "<i4", "<u2", ">f4", "|O", "|V4", "<c8", "<U1", "|b1", "<f2", "|i1"]),
)
def test_wrong_dtype(rig: Rig, target: str, dtype: str) -> None:
    header, arrays = valid_observe()
    raw = as_raw(arrays)
    _, shape, _ = raw[target]
    itemsize = np.dtype(dtype).itemsize
    raw[target] = (dtype, shape, b"\x00" * (math.prod(shape) * itemsize))
    assert_error(rig.exchange(raw_frames(header, raw)), "bad_dtype")
    rig.check_good_client_served()


@FUZZ
@given(
    target=st.sampled_from([f"image/{CAMERAS[1]}", "state"]),
    # under libzmq's per-frame cap (that case is its own test below)
    shape=st.lists(st.integers(0, 80), min_size=0, max_size=4).filter(lambda s: math.prod(s) * 4 < MAX_BYTES),
)
def test_wrong_shape(rig: Rig, target: str, shape: list[int]) -> None:
    header, arrays = valid_observe()
    expected = list(arrays[target].shape)
    if shape == expected:
        shape = [*shape, 1]
    raw = as_raw(arrays)
    dtype = raw[target][0]
    raw[target] = (dtype, shape, b"\x01" * (math.prod(shape) * np.dtype(dtype).itemsize))
    assert_error(rig.exchange(raw_frames(header, raw)), "bad_shape", "too_large")
    rig.check_good_client_served()


@FUZZ
@given(
    positions=st.lists(st.integers(0, STATE - 1), min_size=1, max_size=STATE, unique=True),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    field=st.sampled_from(["state", "deadline_ms", "stamp"]),
)
def test_nan_filled(rig: Rig, positions: list[int], value: float, field: str) -> None:
    header, arrays = valid_observe()
    if field == "state":
        arrays["state"] = arrays["state"].copy()
        arrays["state"][positions] = value
    else:
        header[field] = value
    assert_error(rig.exchange(raw_frames(header, as_raw(arrays))), "bad_value")
    rig.check_good_client_served()


@settings(FUZZ, max_examples=10)
@given(extra_frames=st.integers(2, 5))
def test_oversized_message(rig: Rig, extra_frames: int) -> None:
    header, arrays = valid_observe()
    raw = as_raw(arrays)
    chunk = MAX_BYTES // 2 + 1  # each frame under libzmq's per-frame cap, the total over ours
    for i in range(extra_frames):
        raw[f"pad{i}"] = ("|u1", [chunk], b"\x00" * chunk)
    assert_error(rig.exchange(raw_frames(header, raw)), "too_large")
    rig.check_good_client_served()


@FUZZ
@given(
    key=st.sampled_from(["v", "seq", "deadline_ms", "stamp", "instruction", "norm_key", "arrays", "type"]),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=10),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
)
def test_wrong_field_types(rig: Rig, key: str, value: object) -> None:
    header, arrays = valid_observe()
    raw = as_raw(arrays)
    header[key] = value
    frames = raw_frames(header, raw)
    if key == "arrays":  # raw_frames rewrote it; put the fuzzed value back
        full = msgpack.unpackb(frames[0])
        full["arrays"] = value
        frames[0] = msgpack.packb(full)
    reply = rig.exchange(frames)
    if reply["type"] == "chunk":
        # some values are legitimately fine (a float stamp is a stamp): then it must be the real answer
        assert key in ("stamp", "deadline_ms", "instruction", "norm_key", "seq")
    else:
        assert_error(reply)
    rig.check_good_client_served()


def test_structurally_hostile_headers(rig: Rig) -> None:
    deep = b"\x91" * 5000 + b"\xc0"  # 5000 nested one-element arrays
    ext = msgpack.packb({"v": 1, "type": "observe", "seq": 1, "x": msgpack.ExtType(5, b"boom")})
    huge = msgpack.packb({"v": 1, "type": "observe", "pad": "x" * 70_000})
    not_map = msgpack.packb([1, 2, 3])
    timestamp = msgpack.packb({"v": 1, "type": "observe", "seq": 1, "stamp": msgpack.Timestamp(1, 0)})
    for frames in ([deep], [ext], [huge], [not_map], [timestamp], [b""]):
        assert_error(rig.exchange(frames))
        rig.check_good_client_served()
    assert_error(rig.exchange([msgpack.packb({"v": 2, "type": "ping", "seq": 1})]), "unsupported_version")


def test_unregistered_peer_is_told_so(rig: Rig) -> None:
    sock = rig.ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(rig.server.endpoint)
    try:
        header, arrays = valid_observe(seq=3)
        sock.send_multipart(raw_frames(header, as_raw(arrays)))
        assert sock.poll(3000)
        reply = decode(sock.recv_multipart(), 1 << 20).header
        assert_error(reply, "not_registered")
        assert reply["seq"] == 3
    finally:
        sock.close()
    rig.check_good_client_served()


def test_frame_over_libzmq_limit_drops_the_connection_with_a_logged_reason(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    sock = rig.ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(rig.server.endpoint)
    try:
        # per-connection lines are DEBUG (a flood of connects must not cost log lines at INFO)
        with caplog.at_level(logging.DEBUG, logger="wall_runtime.transport.server"):
            sock.send_multipart(
                [msgpack.packb({"v": 1, "type": "ping", "seq": 1}), b"\x00" * (MAX_BYTES + 1)]
            )
            assert not sock.poll(1000), "an over-limit frame must not be processed"
            rig.check_good_client_served()
        assert "MAXMSGSIZE" in caplog.text
    finally:
        sock.close()


def test_good_client_was_served_throughout(rig: Rig) -> None:
    # runs last in this module: every example above was followed by a served good request
    assert rig.good_served >= 100
    stats = rig.good.stats().result(timeout=5)
    errors = {c["labels"]["code"]: c["value"] for c in stats["metrics"]["counters"] if c["name"] == "errors"}
    assert (
        errors.get("bad_dtype", 0) > 0 and errors.get("bad_value", 0) > 0 and errors.get("too_large", 0) > 0
    )
