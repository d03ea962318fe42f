"""Policy transport: versioned msgpack protocol over ZeroMQ (see docs/protocol.md).

Robot host: ``PolicyClient(endpoint, RobotDescription(...)).submit(observation) -> Future[ActionChunk]``.
Policy host: ``PolicyServer(policy, ServerConfig(bind=...)).serve_forever()`` (or ``wall-runtime serve``).
"""

from wall_runtime.transport.client import PolicyClient, fetch_stats
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
from wall_runtime.transport.server import PolicyServer, ServerConfig

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
