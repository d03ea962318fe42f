"""CURVE encryption and authentication, and the endpoint policy, over real loopback sockets."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest
from transport_helpers import client_for, echo_policy, observation, robot, serving

from wall_runtime.transport.auth import SecurityError, generate_keys, is_loopback
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.errors import ConnectionLost, NotConnected, ServerError
from wall_runtime.transport.server import PolicyServer, ServerConfig

# a crash in a server or client thread must fail the test, not just warn
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for name in ("server", "robot", "intruder"):
        out[name], out[name + "_secret"] = generate_keys(root, name)
    allow = root / "allowed"
    allow.mkdir()
    shutil.copy(out["robot"], allow / "robot.key")
    out["allow"] = allow
    return out


def _never_served(endpoint: str, **kwargs) -> None:
    client = PolicyClient(endpoint, robot("intruder"), **kwargs)
    try:
        with pytest.raises(NotConnected):
            client.connect(timeout=1.5)
        assert isinstance(client.submit(observation(9.0)).exception(timeout=1), NotConnected)
    finally:
        client.close()


def test_allowed_curve_client_is_served_and_others_never_are(keys: dict[str, Path]) -> None:
    policy = echo_policy()
    with (
        serving(policy, server_key=keys["server_secret"], allow_dir=keys["allow"]) as server,
        client_for(server.endpoint, server_key=keys["server"], client_key=keys["robot_secret"]) as ok,
    ):
        assert ok.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
        # a well-formed key that is not on the allow-list
        _never_served(server.endpoint, server_key=keys["server"], client_key=keys["intruder_secret"])
        # a client without encryption at all
        _never_served(server.endpoint)
        sessions = ok.stats().result(timeout=5)["sessions"]
    assert [s["robot_id"] for s in sessions] == ["arm-1"]
    assert policy.calls == [[1.0]]  # nothing from the intruders was ever computed


def test_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    public, secret = generate_keys(tmp_path, "robot")
    assert (secret.stat().st_mode & 0o077) == 0
    assert "secret-key" not in public.read_text()
    with pytest.raises(FileExistsError):
        generate_keys(tmp_path, "robot")


def test_curve_needs_both_halves_and_a_nonempty_allow_list(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SecurityError):
        PolicyServer(echo_policy(), ServerConfig(bind="tcp://127.0.0.1:*", server_key=keys["server_secret"]))
    with pytest.raises(SecurityError, match="no client public keys"):  # refused before binding
        PolicyServer(
            echo_policy(),
            ServerConfig(bind="tcp://127.0.0.1:*", server_key=keys["server_secret"], allow_dir=tmp_path),
        )


def test_non_loopback_bind_without_keys_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SecurityError, match="--insecure"):
        PolicyServer(echo_policy(), ServerConfig(bind="tcp://0.0.0.0:5555"))
    with caplog.at_level(logging.WARNING):
        PolicyServer(echo_policy(), ServerConfig(bind="tcp://0.0.0.0:5555", insecure=True))  # never started
    assert "INSECURE" in caplog.text


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:*", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/wall.sock", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.20:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://[::]:5555", False),
    ],
)
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


def _curve_keys(tmp_path: Path, *names: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name in ("server", *names):
        out[name], out[name + "_secret"] = generate_keys(tmp_path / "keys", name)
    allow = tmp_path / "allowed"
    allow.mkdir()
    for name in names:
        shutil.copy(out[name], allow / f"{name}.key")
    out["allow"] = allow
    return out


def test_refusal_log_names_the_peer_and_its_key(
    keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="wall_runtime.transport.auth"),
        serving(echo_policy(), server_key=keys["server_secret"], allow_dir=keys["allow"]) as server,
    ):
        _never_served(server.endpoint, server_key=keys["server"], client_key=keys["intruder_secret"])
    refusals = [r.getMessage() for r in caplog.records if "refused CURVE client" in r.getMessage()]
    assert refusals, caplog.text
    intruder_key = keys["intruder"].read_text().split('public-key = "')[1].split('"')[0]
    assert "127.0.0.1" in refusals[0] and intruder_key in refusals[0]
    assert server.endpoint.rsplit(":", 1)[1] not in refusals[0]  # not the server's own endpoint


def test_robot_id_is_bound_to_the_first_curve_key_that_claims_it(tmp_path: Path) -> None:
    k = _curve_keys(tmp_path, "robot", "other")
    curve = {"server_key": k["server"]}
    with (
        serving(echo_policy(), server_key=k["server_secret"], allow_dir=k["allow"]) as server,
        client_for(server.endpoint, robot("arm-1"), client_key=k["robot_secret"], **curve) as real,
    ):
        # an allowed key, but not the one arm-1 is bound to: refused, and the real robot keeps its link
        impostor = PolicyClient(server.endpoint, robot("arm-1"), client_key=k["other_secret"], **curve)
        try:
            with pytest.raises(NotConnected, match="robot_id_in_use"):
                impostor.connect(timeout=1.0)
        finally:
            impostor.close()
        assert real.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
        # the same key on a fresh connection is the robot itself reconnecting: admitted
        with client_for(server.endpoint, robot("arm-1"), client_key=k["robot_secret"], **curve) as again:
            assert again.submit(observation(2.0), deadline=2.0).result(timeout=5).stamp == 2.0


def test_key_removed_from_the_allow_list_stops_working_without_a_restart(tmp_path: Path) -> None:
    k = _curve_keys(tmp_path, "robot")
    with (
        serving(echo_policy(), server_key=k["server_secret"], allow_dir=k["allow"]) as server,
        client_for(server.endpoint, client_key=k["robot_secret"], server_key=k["server"]) as client,
    ):
        assert client.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
        (k["allow"] / "robot.key").unlink()
        server.reload_allow_list()  # what SIGHUP does; a changed folder is also noticed within 1 s
        deadline = time.monotonic() + 5
        error = None
        while time.monotonic() < deadline:
            error = client.submit(observation(2.0), deadline=1.0).exception(timeout=5)
            if error is not None:
                break
            time.sleep(0.05)
        assert isinstance(error, (ServerError, NotConnected, ConnectionLost)), error
        assert server.queue.summary()["robots"] == 0


def _refused_fast(endpoint: str, **kwargs) -> str:
    """connect() with the usual 30 s timeout must fail within 2 s; returns the error's text."""
    client = PolicyClient(endpoint, robot("arm-1"), **kwargs)
    try:
        started = time.monotonic()
        with pytest.raises(NotConnected) as info:
            client.connect(timeout=30.0)
        assert time.monotonic() - started < 2.0
        assert not client.connected
    finally:
        client.close()
    return str(info.value)


def test_a_curve_refusal_fails_fast_and_names_the_key_files(keys: dict[str, Path]) -> None:
    with serving(echo_policy(), server_key=keys["server_secret"], allow_dir=keys["allow"]) as server:
        # the wrong server key (another key pair's public half): the server cannot decrypt the hello
        message = _refused_fast(server.endpoint, server_key=keys["intruder"], client_key=keys["robot_secret"])
        assert str(keys["intruder"]) in message and "not this server's public key" in message
        # a well-formed client key that is not on the allow-list: ZAP refuses it (status 400)
        message = _refused_fast(
            server.endpoint, server_key=keys["server"], client_key=keys["intruder_secret"]
        )
        assert "ZAP status 400" in message and "--allow" in message
        assert str(keys["intruder"]) in message  # the public half to copy there, by its file
        assert keys["intruder"].read_text().split('public-key = "')[1].split('"')[0] in message
        # no keys at all against a CURVE server
        assert "requires CURVE" in _refused_fast(server.endpoint)
        # the allowed key still gets in
        with client_for(server.endpoint, server_key=keys["server"], client_key=keys["robot_secret"]) as ok:
            assert ok.submit(observation(1.0), deadline=2.0).result(timeout=5).stamp == 1.0
    with serving(echo_policy()) as plain:  # keys against a server without CURVE
        message = _refused_fast(plain.endpoint, server_key=keys["server"], client_key=keys["robot_secret"])
        # (libzmq reports it as a mechanism mismatch or, as for a wrong key, without a reason)
        assert "runs without CURVE" in message and str(keys["robot_secret"]) in message


def test_a_refused_client_gets_in_once_its_key_is_allowed(tmp_path: Path) -> None:
    k = _curve_keys(tmp_path, "robot")
    k["late"], k["late_secret"] = generate_keys(tmp_path / "keys", "late")
    with serving(echo_policy(), server_key=k["server_secret"], allow_dir=k["allow"]) as server:
        client = PolicyClient(
            server.endpoint, robot("late"), server_key=k["server"], client_key=k["late_secret"]
        )
        try:
            with pytest.raises(NotConnected, match="ZAP status 400"):
                client.connect(timeout=30.0)
            shutil.copy(k["late"], k["allow"] / "late.key")
            server.reload_allow_list()
            # libzmq keeps reconnecting; the next handshake is admitted on the same client
            assert client.connect(timeout=10.0).model
            assert client.submit(observation(3.0), deadline=2.0).result(timeout=5).stamp == 3.0
        finally:
            client.close()
