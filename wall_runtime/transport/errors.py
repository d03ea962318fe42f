"""Error codes carried by ``error`` messages, and the exceptions the client raises for them."""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Machine-readable reason in every ``error`` reply (``docs/protocol.md`` lists them)."""

    BAD_MESSAGE = "bad_message"  # undecodable header, wrong frame count, wrong field types
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    NOT_REGISTERED = "not_registered"  # no hello from this peer (e.g. the server restarted)
    BAD_HELLO = "bad_hello"  # the robot's description does not fit the policy
    BAD_DTYPE = "bad_dtype"
    BAD_SHAPE = "bad_shape"
    BAD_VALUE = "bad_value"  # NaN / Inf, out-of-range masks or weights
    TOO_LARGE = "too_large"
    SUPERSEDED = "superseded"  # a newer observation of the same robot replaced it before compute
    DEADLINE_EXCEEDED = "deadline_exceeded"
    POLICY_ERROR = "policy_error"  # the policy raised or returned unusable actions
    SHUTTING_DOWN = "shutting_down"
    ROBOT_ID_IN_USE = "robot_id_in_use"  # another live session (or CURVE key) holds this robot_id
    UNAUTHORIZED = "unauthorized"  # the CURVE key is no longer in the allow-list
    OVERLOADED = "overloaded"  # the server's session cap is reached


class TransportError(Exception):
    """Base of every error a client future can raise."""


class ProtocolError(TransportError):
    """A message broke the protocol; ``code`` says how. Also what the server replies with."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        self.message = message
        super().__init__(f"{getattr(self.code, 'value', self.code)}: {message}")


class ServerError(ProtocolError):
    """The server answered a request with an ``error`` message."""


class SupersededError(ServerError):
    """A newer observation of this robot replaced the request before it was computed."""


class DeadlineExceededError(ServerError):
    """The server dropped the request because its deadline passed before compute."""


class RequestTimeout(TransportError):
    """No answer arrived within the request's client-side timeout."""


class ConnectionLost(TransportError):
    """Heartbeats stopped; requests in flight were failed and the client is reconnecting."""


class NotConnected(TransportError):
    """No handshake with a server is in place (yet, or any more)."""


def server_error(code: str, message: str) -> ServerError:
    """The exception a client future gets for an ``error`` reply with ``code``."""
    if code == ErrorCode.SUPERSEDED.value:
        return SupersededError(code, message)
    if code == ErrorCode.DEADLINE_EXCEEDED.value:
        return DeadlineExceededError(code, message)
    return ServerError(code, message)
