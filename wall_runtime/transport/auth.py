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
import time
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


class AllowList:
    """The client public keys in an allow-list folder, reloaded when the folder changes.

    ZeroMQ asks it (as the ZAP credentials provider) at every CURVE handshake; the server also asks
    it for every message, so a key removed from the folder stops working at the next reload, not at
    the next restart. Refusals are logged with the peer's address and key, at most a few a second.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._keys: frozenset[str] = frozenset()
        self._signature: tuple = ()
        self._refusals = 0
        self._refusal_window = 0.0
        self.peer_address = "?"  # set by the authenticator before each callback
        if not self.reload():
            raise SecurityError(f"allow-list {self.directory} holds no client public keys (*.key)")

    def _scan(self) -> tuple:
        try:
            files = sorted(self.directory.glob("*.key"))
            return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        except OSError:
            return ()

    def reload(self, force: bool = True) -> bool:
        """Re-read the folder (``force``) or only if it changed; True when keys are loaded."""
        signature = self._scan()
        if not force and signature == self._signature:
            return bool(self._keys)
        keys = set()
        for name, _, _ in signature:
            try:
                public, _ = zmq.auth.load_certificate(str(self.directory / name))
            except Exception as exc:  # a half-written or foreign file must not stop the others
                log.warning("allow-list: skipping %s: %s", self.directory / name, exc)
                continue
            keys.add(public.decode("ascii"))
        changed = frozenset(keys) != self._keys
        self._keys, self._signature = frozenset(keys), signature
        if changed and self._signature:
            log.info("CURVE allow-list %s: %d client key(s)", self.directory, len(keys))
        elif changed:
            log.warning("CURVE allow-list %s is now empty: no client is admitted", self.directory)
        return bool(keys)

    def allowed(self, z85_key: str | bytes | None) -> bool:
        if z85_key is None:
            return False
        key = z85_key.decode("ascii", "replace") if isinstance(z85_key, bytes) else z85_key
        return key in self._keys

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """ZAP credentials provider hook (``configure_curve_callback``)."""
        ok = self.allowed(z85_key)
        if not ok:
            now = time.monotonic()
            if now > self._refusal_window:
                self._refusal_window, self._refusals = now + 1.0, 0
            self._refusals += 1
            if self._refusals <= 5:
                log.warning(
                    "refused CURVE client at %s: key %s is not in the allow-list %s",
                    self.peer_address,
                    z85_key.decode("ascii", "replace"),
                    self.directory,
                )
        return ok


class _Authenticator(ThreadAuthenticator):
    """ZeroMQ's ZAP thread, remembering each request's peer address for the refusal log."""

    allow_list: AllowList

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) > 3:
            self.allow_list.peer_address = msg[3].decode("utf-8", "replace") or "?"
        await super().handle_zap_message(msg)


def start_authenticator(context: zmq.Context, allow: AllowList) -> ThreadAuthenticator:
    """ZAP handler admitting only CURVE clients whose public key file is in the allow-list folder."""
    auth = _Authenticator(context, log=logging.getLogger("wall_runtime.transport.zap"))
    auth.allow_list = allow
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=allow)
    log.info("CURVE authentication on; %d client key(s) allowed from %s", len(allow._keys), allow.directory)
    return auth


def apply_server_curve(socket: zmq.Socket, keys: KeyPair) -> None:
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def apply_client_curve(socket: zmq.Socket, client: KeyPair, server_public: bytes) -> None:
    socket.curve_secretkey = client.secret
    socket.curve_publickey = client.public
    socket.curve_serverkey = server_public
