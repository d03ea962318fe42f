"""CURVE keys and the endpoint policy.

Key files are ZeroMQ's certificate format (``zmq.auth.create_certificates``): ``NAME.key`` holds the
public key and may be copied anywhere; ``NAME.key_secret`` holds both and stays on its host (written
owner-read-only). The server admits only clients whose public ``.key`` file sits in its allow-list
folder, enforced by ZeroMQ's ZAP handler (``zmq.auth.thread.ThreadAuthenticator``).

Without keys every byte (images, instructions, actions) crosses the network in clear and anyone who
can reach the port can drive the policy, so the server refuses non-loopback endpoints then unless it
is told ``insecure=True``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


class SecurityError(RuntimeError):
    """An endpoint or key set-up that would expose the server; the message says how to fix it."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes | None


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory``; refuse to overwrite."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise FileExistsError(f"{p} exists; remove it first or choose another --name")
    public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def load_secret(path: str | Path) -> KeyPair:
    public, secret = zmq.auth.load_certificate(str(path))
    if not secret:
        raise SecurityError(f"{path} holds no secret key (pass the .key_secret file)")
    return KeyPair(public, secret)


def load_public(path: str | Path) -> bytes:
    public, _ = zmq.auth.load_certificate(str(path))
    return public


def is_loopback(endpoint: str) -> bool:
    """True for ipc/inproc and for tcp on a loopback address; ``*`` and 0.0.0.0 are not loopback."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    if ";" in host:  # tcp://source;dest form: the bind address is what counts
        host = host.split(";", 1)[0]
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # interface names and hostnames may face the network


def check_endpoint(endpoint: str, secure: bool, insecure: bool) -> None:
    """Refuse exposing an unauthenticated server; warn loudly when told to anyway."""
    if secure or is_loopback(endpoint):
        return
    if not insecure:
        raise SecurityError(
            f"refusing to bind {endpoint} without CURVE keys: anyone on the network could send "
            "observations and read actions. Generate keys (`wall-runtime keys generate DIR`) and pass "
            "--server-key/--allow, bind a loopback address, or pass --insecure to accept the risk."
        )
    log.warning(
        "!!! INSECURE: serving %s WITHOUT encryption or authentication. Any host that can reach this "
        "port can drive the policy and read its actions. Use CURVE keys for anything but a closed lab "
        "network. !!!",
        endpoint,
    )


def start_authenticator(context: zmq.Context, allow_dir: str | Path) -> ThreadAuthenticator:
    """ZAP handler admitting only CURVE clients whose public key file is in ``allow_dir``."""
    allow_dir = Path(allow_dir)
    keys = sorted(allow_dir.glob("*.key")) if allow_dir.is_dir() else []
    if not keys:
        raise SecurityError(f"allow-list {allow_dir} holds no client public keys (*.key)")
    auth = ThreadAuthenticator(context, log=logging.getLogger("wall_runtime.transport.zap"))
    auth.start()
    auth.configure_curve(domain="*", location=str(allow_dir))
    log.info("CURVE authentication on; %d client key(s) allowed from %s", len(keys), allow_dir)
    return auth


def apply_server_curve(socket: zmq.Socket, keys: KeyPair) -> None:
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def apply_client_curve(socket: zmq.Socket, client: KeyPair, server_public: bytes) -> None:
    socket.curve_secretkey = client.secret
    socket.curve_publickey = client.public
    socket.curve_serverkey = server_public
