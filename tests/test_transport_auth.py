"""CURVE encryption and authentication, and the endpoint policy, over real loopback sockets."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from transport_helpers import client_for, echo_policy, observation, robot, serving

from wall_runtime.transport.auth import SecurityError, generate_keys, is_loopback
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.errors import NotConnected
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
    server = PolicyServer(
        echo_policy(),
        ServerConfig(bind="tcp://127.0.0.1:*", server_key=keys["server_secret"], allow_dir=tmp_path),
    )
    with pytest.raises(SecurityError, match="no client public keys"):
        server.start()


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
