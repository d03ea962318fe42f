"""`wall-runtime serve`, `wall-runtime keys generate`, `wall-runtime metrics`."""

from __future__ import annotations

import json
import logging
import math
import signal
from pathlib import Path
from typing import Any

import typer

log = logging.getLogger(__name__)


def _parse_options(options: list[str]) -> dict[str, str]:
    """``-o KEY=VALUE`` pairs; the backend's typed options check keys and values
    (wall_runtime.backends.options)."""
    parsed: dict[str, str] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option takes KEY=VALUE, got {item!r}")
        parsed[key] = value
    return parsed


def _host_port(value: str | None, option: str = "--metrics-http") -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter(f"{option} takes HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def serve(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Checkpoint folder (the echo backend needs none)."
    ),
    backend: str = typer.Option("torch", "--backend", help="torch | onnxruntime | tensorrt | echo"),
    bind: str = typer.Option(
        "tcp://127.0.0.1:5555", "--bind", help="ZeroMQ endpoint; port * picks a free one."
    ),
    max_batch: int = typer.Option(
        8, "--max-batch", min=1, help="Most observations per policy call (ZeroMQ and --openpi)."
    ),
    max_wait_ms: float = typer.Option(
        2.0, "--max-wait-ms", min=0, help="Longest a request waits for a batch (ZeroMQ and --openpi)."
    ),
    heartbeat: float = typer.Option(1.0, "--heartbeat", min=0.01, help="Ping interval told to clients (s)."),
    session_timeout: float = typer.Option(
        10.0, "--session-timeout", help="Forget robots silent this long (s)."
    ),
    max_message_mb: float = typer.Option(32.0, "--max-message-mb", help="Largest accepted message."),
    server_key: Path | None = typer.Option(
        None, "--server-key", help="Server .key_secret file (turns CURVE on)."
    ),
    allow: Path | None = typer.Option(None, "--allow", help="Folder of allowed client public .key files."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind without CURVE."),
    metrics_http: str | None = typer.Option(None, "--metrics-http", help="HOST:PORT serving /metrics."),
    max_sessions: int = typer.Option(1024, "--max-sessions", min=1, help="Most robots + monitors at once."),
    max_connections: int = typer.Option(
        4096, "--max-connections", min=1, help="Most open connections (kept under the fd limit)."
    ),
    max_connections_per_address: int = typer.Option(
        256,
        "--max-connections-per-address",
        min=0,
        help="Most open TCP connections from one peer address (0: no limit); more are refused.",
    ),
    session_port: int = typer.Option(
        0,
        "--session-port",
        min=-1,
        max=65535,
        help="Port of the session endpoint welcomed robots move to, on the --bind host (0: any free "
        "port; -1: none, robots stay on --bind). Keeps floods at --bind off known robots' traffic.",
    ),
    handshake_io_priority: str = typer.Option(
        "idle",
        "--handshake-io-priority",
        help="Scheduling of the public endpoint's libzmq threads while robots have a session endpoint: "
        "idle (Linux SCHED_IDLE) | batch | normal.",
    ),
    endpoint_file: Path | None = typer.Option(None, "--endpoint-file", help="Write the bound endpoint here."),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Backend option KEY=VALUE (repeatable; the keys are listed below)."
    ),
    openpi: str | None = typer.Option(
        None,
        "--openpi",
        help="Also serve openpi's websocket protocol on HOST:PORT (openpi-client, wall-x serving names).",
    ),
    openpi_token_file: Path | None = typer.Option(
        None, "--openpi-token-file", help="File holding the token openpi clients must send (Api-Key)."
    ),
) -> None:
    """Serve a policy to robots over ZeroMQ (and openpi's websocket protocol) until SIGINT/SIGTERM
    (SIGHUP re-reads --allow)."""
    from wall_runtime.backends import load_policy
    from wall_runtime.transport.auth import SecurityError
    from wall_runtime.transport.peers import raise_fd_limit
    from wall_runtime.transport.server import PolicyServer, ServerConfig, parse_io_priority

    raise_fd_limit()  # connections are capped below it; a low soft limit would cap them early
    try:
        parse_io_priority(handshake_io_priority)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--handshake-io-priority'") from None

    config = ServerConfig(
        bind=bind,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        heartbeat_interval=heartbeat,
        session_timeout=session_timeout,
        max_message_bytes=int(max_message_mb * 1024 * 1024),
        server_key=server_key,
        allow_dir=allow,
        insecure=insecure,
        metrics_http=_host_port(metrics_http),
        max_sessions=max_sessions,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        session_port=None if session_port < 0 else session_port,
        handshake_io_priority=handshake_io_priority,
    )
    from wall_runtime.backends.options import BackendOptionError, parse_options

    try:
        backend_options = parse_options(backend, _parse_options(option))
    except BackendOptionError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--option' / '-o'") from None
    openpi_config = None
    if openpi is not None:
        from wall_runtime.transport.openpi_ws import OpenpiConfig, check_exposure

        host, port = _host_port(openpi, "--openpi")
        token = openpi_token_file.read_text().strip() if openpi_token_file is not None else None
        openpi_config = OpenpiConfig(
            host=host,
            port=port,
            token=token or None,
            insecure=insecure,
            max_message_bytes=config.max_message_bytes,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
        )
        try:
            check_exposure(openpi_config)  # before the (slow) policy load
        except SecurityError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        policy = load_policy(checkpoint, backend, backend_options)
    except (ValueError, RuntimeError, OSError) as exc:  # a bad checkpoint: one line, nothing bound
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    openpi_server = None
    try:
        if openpi_config is not None:
            from wall_runtime.transport.openpi_ws import OpenpiServer, SharedPolicy

            policy = SharedPolicy(policy)  # both endpoints call it; one call at a time
            openpi_server = OpenpiServer(policy, openpi_config)
        server = PolicyServer(policy, config)
    except SecurityError as exc:
        policy.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if openpi_server is not None:
        openpi_server.start()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("received %s; finishing the batch in compute and shutting down", signal.Signals(signum).name)
        server.stop()

    def _reload(signum: int, _frame: Any) -> None:
        log.info("received SIGHUP; re-reading the allow-list")
        server.reload_allow_list()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _reload)
    if endpoint_file is not None:
        # The endpoint is only known once bound; a watcher thread writes it then.
        import threading

        def _write_endpoint() -> None:
            endpoint = server.wait_bound(30)
            if endpoint:
                endpoint_file.write_text(endpoint + "\n")

        threading.Thread(target=_write_endpoint, daemon=True).start()
    try:
        server.serve_forever()
    except Exception as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        if openpi_server is not None:
            openpi_server.stop()
        policy.close()


keys_app = typer.Typer(
    help="CURVE key files for `serve --server-key/--allow` and clients.", no_args_is_help=True
)


@keys_app.command("generate")
def keys_generate(
    directory: Path = typer.Argument(..., help="Folder to write NAME.key (public) and NAME.key_secret."),
    name: list[str] = typer.Option(["server", "client"], "--name", "-n", help="Key pair name (repeatable)."),
) -> None:
    """Write CURVE key pairs; copy client .key files into the server's --allow folder."""
    from wall_runtime.transport.auth import generate_keys

    for n in name:
        try:
            public, secret = generate_keys(directory, n)
        except FileExistsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{n}: public {public}  secret {secret} (keep it on this host)")


def metrics(
    connect: str = typer.Option("tcp://127.0.0.1:5555", "--connect", help="The server's endpoint."),
    server_key: Path | None = typer.Option(None, "--server-key", help="Server public .key (CURVE servers)."),
    client_key: Path | None = typer.Option(None, "--client-key", help="This client's .key_secret (CURVE)."),
    fmt: str = typer.Option("table", "--format", help="table | prometheus | json"),
    timeout: float = typer.Option(3.0, "--timeout"),
    sessions: int = typer.Option(20, "--sessions", min=0, help="Sessions to list (at most 200)."),
    offset: int = typer.Option(0, "--offset", min=0, help="First session to list."),
) -> None:
    """Read a running server's metrics (and a page of its sessions)."""
    from wall_runtime.transport.client import fetch_stats
    from wall_runtime.transport.errors import TransportError
    from wall_runtime.transport.metrics import histogram_quantile, render_prometheus

    try:
        stats = fetch_stats(connect, server_key, client_key, timeout, offset=offset, limit=sessions)
    except TransportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    snap = stats["metrics"]
    if fmt == "prometheus":
        typer.echo(render_prometheus(snap), nl=False)
        return
    if fmt == "json":
        typer.echo(json.dumps(stats, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    meta = stats.get("metadata", {})
    console.print(
        f"[bold]{connect}[/] session {stats.get('session')}: {meta.get('model')} ({meta.get('backend')})"
    )
    counters = Table("counter", "labels", "value")
    for c in snap["counters"]:
        counters.add_row(c["name"], ",".join(f"{k}={v}" for k, v in c["labels"].items()), f"{c['value']:g}")
    console.print(counters)
    hists = Table("histogram", "count", "mean", "p50 ≤", "p99 ≤")
    for h in snap["histograms"]:
        mean = h["sum"] / h["count"] if h["count"] else math.nan
        hists.add_row(
            h["name"],
            str(h["count"]),
            f"{mean:.3f}",
            f"{histogram_quantile(h, 0.5):g}",
            f"{histogram_quantile(h, 0.99):g}",
        )
    console.print(hists)
    listed = stats.get("sessions", [])
    total = stats.get("sessions_total", len(listed))
    summary = stats.get("summary", {})
    robots = Table(
        "robot",
        "embodiment",
        "endpoint",
        "observe",
        "chunk",
        "error",
        title=f"{summary.get('robots', '?')} robots ({summary.get('attached', '?')} on the session endpoint), "
        f"{summary.get('monitors', '?')} monitors; "
        f"sessions {offset + 1 if listed else 0}-{offset + len(listed)} of {total}",
    )
    for s in listed:
        name = s.get("robot_id") or f"({s.get('role', 'monitor')})"
        robots.add_row(
            name,
            s.get("embodiment", ""),
            s.get("endpoint", ""),
            str(s["observe"]),
            str(s["chunk"]),
            str(s["error"]),
        )
    console.print(robots)


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    from wall_runtime.backends.options import options_epilog

    app.command("serve", epilog=options_epilog(("torch", "onnxruntime", "tensorrt", "echo")))(serve)
    app.command("metrics")(metrics)
    app.add_typer(keys_app, name="keys")
