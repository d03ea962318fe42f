"""Policy transport: versioned msgpack protocol over ZeroMQ (see docs/protocol.md).

Robot host: ``PolicyClient(endpoint, RobotDescription(...)).submit(observation) -> Future[ActionChunk]``.
Policy host: ``PolicyServer(policy, ServerConfig(bind=...)).serve_forever()`` (or ``wall-runtime serve``).
"""

from __future__ import annotations

import importlib
from typing import Any

from wall_runtime.transport.errors import (
    ConnectionLost,
    DeadlineExceededError,
    ErrorCode,
    NotConnected,
    ProtocolError,
    RequestTimeout,
    ServerError,
    SupersededError,
    TransportError,
)
from wall_runtime.transport.protocol import PROTOCOL_VERSION, RobotDescription

# The ZeroMQ halves load on first use: a policy host that only runs the model (a GPU image without
# pyzmq, `wall-runtime verify`, the benchmarks) can import the protocol and the CLI without zmq.
_LAZY = {
    "PolicyClient": "wall_runtime.transport.client",
    "fetch_stats": "wall_runtime.transport.client",
    "PolicyServer": "wall_runtime.transport.server",
    "ServerConfig": "wall_runtime.transport.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROTOCOL_VERSION",
    "ConnectionLost",
    "DeadlineExceededError",
    "ErrorCode",
    "NotConnected",
    "PolicyClient",
    "PolicyServer",
    "ProtocolError",
    "RequestTimeout",
    "RobotDescription",
    "ServerConfig",
    "ServerError",
    "SupersededError",
    "TransportError",
    "fetch_stats",
]
