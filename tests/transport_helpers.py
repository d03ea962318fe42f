"""Shared set-up for the transport tests: an echo policy, a robot description, observations."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np

from wall_runtime.backends.echo import EchoPolicy
from wall_runtime.transport.client import PolicyClient
from wall_runtime.transport.protocol import RobotDescription
from wall_runtime.transport.server import PolicyServer, ServerConfig
from wall_runtime.types import Observation

CAMERAS = ("face_view", "left_wrist_view", "right_wrist_view")
LOOPBACK = "tcp://127.0.0.1:*"  # libzmq picks a free port; the server reads it back


def echo_policy(**options) -> EchoPolicy:
    options.setdefault("action_horizon", 32)
    options.setdefault("action_dim", 20)
    options.setdefault("state_dim", 20)
    return EchoPolicy.from_checkpoint(None, cameras=CAMERAS, **options)


def robot(
    robot_id: str = "arm-1", size: int = 224, state_dim: int = 14, period: float = 0.02
) -> RobotDescription:
    return RobotDescription(
        robot_id=robot_id,
        embodiment="test_arm",
        cameras={c: (size, size, 3) for c in CAMERAS},
        state_dim=state_dim,
        action_period=period,
    )


def observation(stamp: float, seed: int = 0, size: int = 224, state_dim: int = 14) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(
        stamp=stamp,
        images={c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in CAMERAS},
        state=rng.standard_normal(state_dim).astype(np.float32),
        instruction="pick up the cup",
    )


@contextlib.contextmanager
def serving(policy, **config) -> Iterator[PolicyServer]:
    config.setdefault("bind", LOOPBACK)
    config.setdefault("heartbeat_interval", 0.2)
    server = PolicyServer(policy, ServerConfig(**config))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def client_for(
    endpoint: str, description: RobotDescription | None = None, **kwargs
) -> Iterator[PolicyClient]:
    client = PolicyClient(endpoint, description or robot(), **kwargs)
    try:
        client.connect(timeout=5.0)
        yield client
    finally:
        client.close()


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` s pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
