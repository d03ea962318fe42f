"""Transport round trip with the model replaced by the echo policy: p50/p99 latency and CPU cost.

Three transports carry the same observation (3 x 224x224x3 uint8 images + float32 state + prompt)
and return a 32x20 float32 chunk, each server in its own process on loopback:

  ours    wall_runtime PolicyServer / PolicyClient (ROUTER/DEALER, msgpack header + raw frames,
          two leader/follower threads on the server, background I/O thread on the client);
          the caller blocks on each future (``submit(obs).result()``)
  ours_callback  the same client used event-driven: each chunk's callback submits the next
          observation (no thread waits on a future; the robot host's normal use)
  openpi  built the way openpi serves: an asyncio ``websockets`` server (compression off,
          max_size None) packing with openpi_client.msgpack_numpy, metadata sent on connect; the
          client is the installed ``openpi-client`` package's WebsocketClientPolicy
  floor   raw ZeroMQ DEALER/ROUTER in one thread each: the client sends exactly the frames our
          protocol sends, the server answers with exactly the frames our chunk reply has, without
          decoding, validating or calling a policy. No transport over ZeroMQ can beat it.

Both policy-serving transports use the same EchoPolicy with ``image_digest=False`` (so the policy
costs microseconds and the transport is what is measured). Configurations run interleaved in
rounds so load from other processes on a shared machine spreads over all three.

    python benchmarks/bench_transport.py [--rounds 10 --per-round 150 --out benchmarks/results]

Flood mode (``--mode flood``): the good robot's round trip at its control rate while another
process connects thousands of peers at once and hangs up, again and again (``connect``), then does
the same with every peer saying hello as a new robot (``hello``). Target: its p99 within 2x idle.

    python benchmarks/bench_transport.py --mode flood [--peers 2000 --phase-s 10] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from wall_runtime.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAMERAS = ("face_view", "left_wrist_view", "right_wrist_view")
STATE_DIM = 14
HORIZON, ACTION_DIM = 32, 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _policy():
    from wall_runtime.backends.echo import EchoPolicy

    return EchoPolicy.from_checkpoint(
        None, cameras=CAMERAS, action_horizon=HORIZON, action_dim=ACTION_DIM, state_dim=20, image_digest=False
    )


def _observation(stamp: float, rng: np.random.Generator):
    from wall_runtime.types import Observation

    return Observation(
        stamp=stamp,
        images={c: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for c in CAMERAS},
        state=rng.standard_normal(STATE_DIM).astype(np.float32),
        instruction="pick up the red cup and put it in the sink",
    )


# ------------------------------------------------------------------------------------- servers


def serve_ours(ready: mp.Queue) -> None:
    from wall_runtime.transport.server import PolicyServer, ServerConfig

    server = PolicyServer(_policy(), ServerConfig(bind="tcp://127.0.0.1:*", max_batch=8, max_wait_ms=2.0))
    ready.put(server.start())
    while True:
        time.sleep(3600)


def serve_openpi(ready: mp.Queue) -> None:
    import websockets
    import websockets.asyncio.server
    from openpi_client import msgpack_numpy

    from wall_runtime.types import Observation

    policy = _policy()
    packer = msgpack_numpy.Packer()

    async def handler(ws) -> None:
        await ws.send(packer.pack(policy.metadata.to_dict()))
        prev_total = None
        while True:
            t0 = time.monotonic()
            try:
                obs = msgpack_numpy.unpackb(await ws.recv())
            except websockets.ConnectionClosed:  # as openpi's server: the client went away
                return
            t_infer = time.monotonic()
            observation = Observation(
                stamp=obs["stamp"], images=obs["images"], state=obs["state"], instruction=obs["prompt"]
            )
            result = policy.infer([observation])[0]
            out = {
                "actions": result.actions,
                "server_timing": {"infer_ms": (time.monotonic() - t_infer) * 1000},
            }
            if prev_total is not None:
                out["server_timing"]["prev_total_ms"] = prev_total
            await ws.send(packer.pack(out))
            prev_total = (time.monotonic() - t0) * 1000

    async def main() -> None:
        async with websockets.asyncio.server.serve(
            handler, "127.0.0.1", 0, compression=None, max_size=None
        ) as server:
            ready.put(server.sockets[0].getsockname()[1])
            await server.serve_forever()

    asyncio.run(main())


def serve_floor(ready: mp.Queue, reply_frames: list[bytes]) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    ready.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        frames = sock.recv_multipart(copy=False)
        sock.send_multipart([frames[0], *reply_frames], copy=False)


# ------------------------------------------------------------------------------------- clients


class OursClient:
    name = "ours"

    def __init__(self, endpoint: str) -> None:
        from wall_runtime.transport.client import PolicyClient
        from wall_runtime.transport.protocol import RobotDescription

        desc = RobotDescription(self.name, "bench_arm", {c: (224, 224, 3) for c in CAMERAS}, STATE_DIM, 0.02)
        self.client = PolicyClient(endpoint, desc, default_deadline=2.0)
        self.client.connect(timeout=10)

    def call(self, obs) -> np.ndarray:
        return self.client.submit(obs).result(timeout=5).actions

    def run(self, observations: list, n: int) -> list[float]:
        return _timed_calls(self, observations, n)

    def close(self) -> None:
        self.client.close()


class OursCallbackClient(OursClient):
    """Our client used through callbacks: each chunk's callback (on the client's I/O thread)
    records the latency and submits the next observation, as an event-driven robot host would;
    no thread waits on a future."""

    name = "ours_callback"

    def run(self, observations: list, n: int) -> list[float]:
        lat: list[float] = []
        finished = threading.Event()
        errors: list[BaseException] = []
        state = {"i": 0, "t0": 0.0}

        def on_done(future) -> None:
            lat.append((time.perf_counter() - state["t0"]) * 1000.0)
            if future.exception() is not None:
                errors.append(future.exception())
                finished.set()
                return
            state["i"] += 1
            if state["i"] >= n:
                finished.set()
                return
            state["t0"] = time.perf_counter()
            self.client.submit(observations[state["i"] % len(observations)], callback=on_done)

        state["t0"] = time.perf_counter()
        self.client.submit(observations[0], callback=on_done)
        if not finished.wait(120) or errors:
            raise RuntimeError(f"callback chain failed: {errors or 'timed out'}")
        return lat


class OpenpiClient:
    name = "openpi"

    def __init__(self, port: int) -> None:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        self.client = WebsocketClientPolicy(host="127.0.0.1", port=port)

    def call(self, obs) -> np.ndarray:
        request = {"images": obs.images, "state": obs.state, "prompt": obs.instruction, "stamp": obs.stamp}
        return self.client.infer(request)["actions"]

    def run(self, observations: list, n: int) -> list[float]:
        return _timed_calls(self, observations, n)

    def close(self) -> None:
        self.client._ws.close()


class FloorClient:
    name = "floor"

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def call(self, obs) -> np.ndarray:
        from wall_runtime.transport.protocol import encode_observe

        self.sock.send_multipart(encode_observe(obs, 1, 2000.0), copy=False)
        frames = self.sock.recv_multipart(copy=False)
        return np.frombuffer(frames[1].buffer, np.float32).reshape(HORIZON, ACTION_DIM)

    def run(self, observations: list, n: int) -> list[float]:
        return _timed_calls(self, observations, n)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


# ------------------------------------------------------------------------------------ measuring


def _timed_calls(client, observations: list, n: int) -> list[float]:
    """Blocking calls in a loop, as a synchronous robot host makes them."""
    lat = []
    for i in range(n):
        obs = observations[i % len(observations)]
        t0 = time.perf_counter()
        client.call(obs)
        lat.append((time.perf_counter() - t0) * 1000.0)
    return lat


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def _run_delay_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat run_delay):
    on a shared machine, how much of a tail is the host starving the server."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        # a thread that ended meanwhile, or no schedstat on this kernel, counts nothing
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


def _machine() -> dict:
    import zmq

    return describe_machine(
        "zmq",
        "msgpack",
        "websockets",
        libzmq=zmq.zmq_version(),
        niceness=os.getpriority(os.PRIO_PROCESS, 0),
        note="shared machine with other jobs running (see load averages); loopback TCP",
    )


def _summary(lat_ms: list[float], client_cpu_s: float, server_cpu_s: float, n: int, rounds: int) -> dict:
    a = np.asarray(lat_ms)
    per_round = a.reshape(rounds, -1)
    return {
        "n": n,
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
        # robust to a load spike from other jobs landing in one configuration's round
        "p99_median_of_rounds_ms": float(np.median(np.percentile(per_round, 99, axis=1))),
        "client_cpu_ms_per_request": client_cpu_s * 1000 / n,
        "server_cpu_ms_per_request": server_cpu_s * 1000 / n,
        "total_cpu_ms_per_request": (client_cpu_s + server_cpu_s) * 1000 / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="Rounds (flood mode: of the four phases).")
    parser.add_argument("--per-round", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="transport", help="Result file stem.")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="checks the script runs: one short round (1 x 5 calls, 2 warm-up); flood mode: 40 peers, 0.5 s phases",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="Change the niceness of the benchmark and its servers (e.g. -10 on a shared machine, "
        "so other jobs preempt all three transports less; every configuration gets the same).",
    )
    parser.add_argument(
        "--mode",
        choices=["roundtrip", "flood"],
        default="roundtrip",
        help="roundtrip: the transports compared; flood: the good robot's latency under connection floods.",
    )
    parser.add_argument("--peers", type=int, default=2000, help="flood: peers connecting at once, per cycle.")
    parser.add_argument("--phase-s", type=float, default=3.0, help="flood: seconds per phase and round.")
    parser.add_argument(
        "--period", type=float, default=0.02, help="flood: the good robot's request period (s)."
    )
    parser.add_argument(
        "--flood-nice",
        type=int,
        default=None,
        help="flood: niceness the flooders add (default 0 when pinned to their own CPU, else 10).",
    )
    parser.add_argument("--io-threads", type=int, default=2, help="flood: the server's libzmq I/O threads.")
    parser.add_argument(
        "--pin",
        choices=["split", "flooders", "none"],
        default="split",
        help="flood: split = flooders on the last CPU, server and good robot on the others; flooders = "
        "only the flooders pinned (to the last CPU); none = unpinned.",
    )
    parser.add_argument(
        "--session-timeout", type=float, default=10.0, help="flood: the server's session timeout."
    )
    parser.add_argument(
        "--one-endpoint",
        action="store_true",
        help="flood: no session endpoint (the good robot shares the public socket with the flood), "
        "the layout before robots attached to their own",
    )
    parser.add_argument(
        "--handshake-io-priority",
        choices=["idle", "batch", "normal"],
        default="idle",
        help="flood: scheduling of the public endpoint's libzmq threads (with a session endpoint).",
    )
    args = parser.parse_args()
    if args.smoke and args.mode == "roundtrip":
        args.rounds, args.per_round, args.warmup = 1, 5, 2
    if args.nice:
        os.nice(args.nice)  # inherited by the spawned server processes
    if args.mode == "flood":
        flood_main(args)
        return

    from rich.progress import Progress

    from wall_runtime.transport.protocol import encode_chunk
    from wall_runtime.types import ActionChunk

    rng = np.random.default_rng(0)
    observations = [_observation(float(i), rng) for i in range(8)]
    chunk_reply = [
        bytes(f)
        for f in encode_chunk(
            ActionChunk(np.zeros((HORIZON, ACTION_DIM), np.float32), 0.0, 0.02, 1, {"server_total": 0.1})
        )
    ]
    payload_bytes = sum(v.nbytes for v in observations[0].images.values()) + observations[0].state.nbytes

    ctx = mp.get_context("spawn")
    procs: dict[str, mp.Process] = {}
    clients = {}
    try:
        for name, target, extra in (
            ("ours", serve_ours, ()),
            # its own server: with two robots on one server, a lone request would wait max_wait_ms
            # for a batch partner, which is batching policy, not transport cost
            ("ours_callback", serve_ours, ()),
            ("openpi", serve_openpi, ()),
            ("floor", serve_floor, (chunk_reply,)),
        ):
            ready = ctx.Queue()
            procs[name] = ctx.Process(target=target, args=(ready, *extra), daemon=True)
            procs[name].start()
            address = ready.get(timeout=60)
            kinds = {"ours": OursClient, "ours_callback": OursCallbackClient, "openpi": OpenpiClient}
            clients[name] = kinds.get(name, FloorClient)(address)

        expected = _policy().expected_actions(observations[0])
        for name in ("ours", "ours_callback", "openpi"):
            np.testing.assert_array_equal(clients[name].call(observations[0]), expected)
        lat: dict[str, list[float]] = {k: [] for k in clients}
        cpu_client = dict.fromkeys(clients, 0.0)
        cpu_server = dict.fromkeys(clients, 0.0)
        for client in clients.values():
            client.run(observations, args.warmup)
        total = args.rounds * len(clients) * args.per_round
        with Progress() as progress:
            task = progress.add_task("round trips", total=total)
            for r in range(args.rounds):
                order = list(clients) if r % 2 == 0 else list(reversed(list(clients)))
                for name in order:
                    client = clients[name]
                    pid = procs[name].pid
                    c0, s0 = time.process_time(), _proc_cpu_s(pid)
                    lat[name].extend(client.run(observations, args.per_round))
                    cpu_client[name] += time.process_time() - c0
                    cpu_server[name] += _proc_cpu_s(pid) - s0
                    progress.advance(task, args.per_round)
    finally:
        for client in clients.values():
            client.close()
        for p in procs.values():
            p.terminate()
            p.join(5)

    n = args.rounds * args.per_round
    results = {name: _summary(lat[name], cpu_client[name], cpu_server[name], n, args.rounds) for name in lat}
    ratios = {
        "openpi_p99_over_ours_p99": results["openpi"]["p99_ms"] / results["ours"]["p99_ms"],
        "ours_p99_over_floor_p99": results["ours"]["p99_ms"] / results["floor"]["p99_ms"],
        "openpi_p50_over_ours_p50": results["openpi"]["p50_ms"] / results["ours"]["p50_ms"],
        "ours_p50_over_floor_p50": results["ours"]["p50_ms"] / results["floor"]["p50_ms"],
        "openpi_over_ours_p99_median_of_rounds": results["openpi"]["p99_median_of_rounds_ms"]
        / results["ours"]["p99_median_of_rounds_ms"],
        "ours_over_floor_p99_median_of_rounds": results["ours"]["p99_median_of_rounds_ms"]
        / results["floor"]["p99_median_of_rounds_ms"],
        "openpi_p99_over_ours_callback_p99": results["openpi"]["p99_ms"] / results["ours_callback"]["p99_ms"],
        "ours_callback_p99_over_floor_p99": results["ours_callback"]["p99_ms"] / results["floor"]["p99_ms"],
        "ours_callback_p50_over_floor_p50": results["ours_callback"]["p50_ms"] / results["floor"]["p50_ms"],
    }
    targets = {
        "p99_at_least_3x_lower_than_openpi": ratios["openpi_p99_over_ours_p99"] >= 3.0,
        "p99_within_1.5x_of_raw_floor": ratios["ours_p99_over_floor_p99"] <= 1.5,
    }
    machine = _machine()
    machine["load_avg_1m_at_end"] = os.getloadavg()[0]
    report = {
        "benchmark": "transport round trip, echo policy",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "payload": {
            "images": "3 x 224x224x3 uint8",
            "state": f"float32[{STATE_DIM}]",
            "request_array_bytes": payload_bytes,
            "reply": f"float32[{HORIZON},{ACTION_DIM}] chunk",
        },
        "method": {
            "rounds": args.rounds,
            "per_round": args.per_round,
            "warmup": args.warmup,
            "interleaved": True,
            "latency": "client submit to result in hand, perf_counter",
            "cpu": "client: process_time of the benchmark process (all threads); server: utime+stime of its process",
        },
        "results": results,
        "ratios": ratios,
        "targets_met": targets,
        "raw_latencies_ms": {k: [round(x, 4) for x in v] for k, v in lat.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out / f"{args.name}.png")
    for name, r in results.items():
        print(
            f"{name:7s} p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  "
            f"cpu {r['total_cpu_ms_per_request']:6.3f} ms/req (client {r['client_cpu_ms_per_request']:.3f}, "
            f"server {r['server_cpu_ms_per_request']:.3f})"
        )
    print(json.dumps({"ratios": ratios, "targets_met": targets}, indent=2))


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["floor", "ours_callback", "ours", "openpi"]
    colors = {"floor": "tab:gray", "ours_callback": "tab:cyan", "ours": "tab:blue", "openpi": "tab:orange"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        a = np.sort(report["raw_latencies_ms"][name])
        q = np.arange(1, len(a) + 1) / len(a)
        r = report["results"][name]
        ax1.plot(a, q, color=colors[name], label=f"{name}: p50 {r['p50_ms']:.2f}, p99 {r['p99_ms']:.2f} ms")
    ax1.set_xscale("log")
    ax1.set_xlabel("round-trip latency (ms, log)")
    ax1.set_ylabel("fraction of requests")
    ax1.axhline(0.99, color="k", lw=0.5, ls=":")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title("Echo-policy round trip, 3x224x224 RGB + state")
    x = np.arange(len(names))
    client = [report["results"][n]["client_cpu_ms_per_request"] for n in names]
    server = [report["results"][n]["server_cpu_ms_per_request"] for n in names]
    ax2.bar(x, client, color="tab:green", label="client")
    ax2.bar(x, server, bottom=client, color="tab:purple", label="server")
    ax2.set_xticks(x, [n.replace("_", "\n") for n in names])
    ax2.set_ylabel("CPU ms per request")
    ax2.set_title("CPU cost")
    ax2.legend()
    fig.suptitle(_machine_line(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _machine_line(report: dict) -> str:
    """One line naming the machine (keys as ``wall_runtime.machine.describe_machine`` writes them)."""
    m = report["machine"]
    load = m.get("load_average_at_start") or [float("nan")]
    return (
        f"{m.get('cpu')} ({m.get('usable_cores', m.get('cores'))} usable cores), nice {m.get('niceness')}, "
        f"load {load[0]:.1f} at start, {report['date_utc']}"
    )


# ------------------------------------------------------------------------------- flood mode


def _pin(cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)  # inherited by every thread started after this


def flood_cpus(pin: str) -> tuple[list[int] | None, list[int] | None]:
    """(server + good robot CPUs, flooders' CPUs). ``split``: the flooders (and the CPU-burn
    control) get the last usable CPU to themselves, the server and the good robot the others, so
    the flooders' own work (their sockets, their side of the kernel's loopback TCP) is not charged
    to the server: on a real network the attacker's CPU is not the policy host's."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "none" or len(cpus) < 2:
        return None, None
    return (cpus[:-1] if pin == "split" else None), cpus[-1:]


def serve_flood_target(
    ready: mp.Queue,
    session_timeout: float,
    io_threads: int = 2,
    cpus: list[int] | None = None,
    one_endpoint: bool = False,
    handshake_io_priority: str = "idle",
) -> None:
    """The server under a flood: default caps, the robot-facing heartbeat, quiet logging."""
    from wall_runtime.transport.server import PolicyServer, ServerConfig

    _pin(cpus)  # before the server's threads (libzmq's I/O threads included) start

    config = ServerConfig(
        bind="tcp://127.0.0.1:*",
        max_batch=8,
        max_wait_ms=2.0,
        session_timeout=session_timeout,
        io_threads=io_threads,
        session_port=None if one_endpoint else 0,
        handshake_io_priority=handshake_io_priority,
    )
    server = PolicyServer(_policy(), config)
    ready.put(server.start())
    while True:
        time.sleep(3600)


FLOOD_PHASES = ("idle", "cpu_burn", "connect_flood", "hello_flood")


def flood_worker(
    endpoint: str,
    kind: str,
    peers: int,
    niceness: int,
    go,
    idle,
    stop,
    out: mp.Queue,
    cpus: list[int] | None = None,
) -> None:
    """A process that floods while ``go`` is set (``idle`` set while it is not flooding).

    ``connect``: open ``peers`` connections at once (each a distinct peer: its own loopback source
    address) and hang up, again and again (TCP + ZMTP handshake, no message). ``hello``: each peer
    also says hello as a new robot and hangs up without a bye (its session stays until the server's
    session timeout). ``burn``: the control, spinning one core without touching the server."""
    import zmq

    from wall_runtime.transport.codec import decode, encode
    from wall_runtime.transport.protocol import RobotDescription

    os.nice(niceness)
    _pin(cpus)
    ctx = zmq.Context()
    port = endpoint.rsplit(":", 1)[1]
    endpoints = [f"tcp://127.0.{2 + i // 250}.{1 + i % 250}:0;127.0.0.1:{port}" for i in range(peers)]
    cams = {c: (224, 224, 3) for c in CAMERAS}
    counts = {"cycles": 0, "connections": 0, "hellos": 0, "welcome": 0, "error": 0, "flooding_s": 0.0}
    errors: dict[str, int] = {}
    messages: dict[str, int] = {}
    while not stop.is_set():
        idle.set()
        if not go.wait(0.05):
            continue
        idle.clear()
        t0 = time.monotonic()
        if kind == "burn":
            while go.is_set():
                pass
            counts["flooding_s"] += time.monotonic() - t0
            continue
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm, sock.rcvhwm = 1, 0  # one hello per connection: a DEALER round-robins them
        for ep in endpoints:
            sock.connect(ep)
        counts["connections"] += peers
        settle = time.monotonic() + 0.3
        if kind == "hello":
            sent = answered = 0
            while go.is_set() and time.monotonic() < settle + 0.7 and answered < peers:
                while sent < peers:
                    hello = RobotDescription(
                        f"flood-{counts['cycles']}-{sent}", "flood", cams, STATE_DIM, 0.02
                    )
                    try:
                        sock.send_multipart(encode(hello.to_header()), zmq.NOBLOCK)
                        sent += 1
                    except zmq.Again:
                        break
                if sock.poll(5):
                    answered += 1
                    header = decode(sock.recv_multipart(), 1 << 20).header
                    reply = header.get("type")
                    counts[reply] = counts.get(reply, 0) + 1
                    if reply == "error":
                        errors[header.get("code")] = errors.get(header.get("code"), 0) + 1
                        messages.setdefault(str(header.get("message"))[:120], 0)
                        messages[str(header.get("message"))[:120]] += 1
            counts["hellos"] += sent
        else:
            while go.is_set() and time.monotonic() < settle:
                time.sleep(0.01)
        sock.close()
        counts["cycles"] += 1
        counts["flooding_s"] += time.monotonic() - t0
    ctx.term()
    top = dict(sorted(messages.items(), key=lambda kv: -kv[1])[:5])
    out.put({**counts, "error_codes": errors, "error_messages": top, "cpu_s": time.process_time()})


def _latency_phase(
    client, observations: list, seconds: float, period: float
) -> tuple[list[float], int, list[float]]:
    """Requests at the robot's control rate (one per ``period``) for ``seconds``: their latencies,
    how many failed, and the server's own share of each (receipt to reply, ``server_total``)."""
    lat: list[float] = []
    server: list[float] = []
    failed = 0
    end = time.perf_counter() + seconds
    nxt = time.perf_counter()
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        try:
            chunk = client.submit(observations[i % len(observations)], deadline=2.0).result(timeout=5)
            lat.append((time.perf_counter() - t0) * 1000.0)
            server.append(chunk.timing_ms["server_total"])
        except Exception:
            failed += 1
            lat.append(float("inf"))
        i += 1
        nxt += period
        time.sleep(max(0.0, nxt - time.perf_counter()))
    return lat, failed, server


def flood(args: argparse.Namespace) -> dict:
    """The good robot's round trip idle, beside a CPU burner, during connect floods and hello
    floods; phases interleaved in rounds so a shared machine's load drift spreads over all."""
    from wall_runtime.transport.client import PolicyClient, fetch_stats
    from wall_runtime.transport.protocol import RobotDescription

    machine = _machine()  # before pinning: the machine, not this process's share of it
    rng = np.random.default_rng(0)
    observations = [_observation(float(i), rng) for i in range(8)]
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    server_cpus, flood_cpu = flood_cpus(args.pin)
    _pin(server_cpus)  # the good robot (this process) beside the server
    server = ctx.Process(
        target=serve_flood_target,
        args=(
            ready,
            args.session_timeout,
            args.io_threads,
            server_cpus,
            args.one_endpoint,
            args.handshake_io_priority,
        ),
        daemon=True,
    )
    server.start()
    endpoint = ready.get(timeout=60)
    desc = RobotDescription("good", "bench_arm", {c: (224, 224, 3) for c in CAMERAS}, STATE_DIM, 0.02)
    client = PolicyClient(endpoint, desc, default_deadline=2.0)
    stop = ctx.Event()
    attached_at = None
    workers: dict[str, tuple] = {}
    lat = {p: [] for p in FLOOD_PHASES}
    in_server = {p: [] for p in FLOOD_PHASES}
    per_round_p99 = {p: [] for p in FLOOD_PHASES}
    failed = dict.fromkeys(FLOOD_PHASES, 0)
    cpu = dict.fromkeys(FLOOD_PHASES, 0.0)
    waited = dict.fromkeys(FLOOD_PHASES, 0.0)
    wall = dict.fromkeys(FLOOD_PHASES, 0.0)
    try:
        for phase, kind in (("cpu_burn", "burn"), ("connect_flood", "connect"), ("hello_flood", "hello")):
            go, idle, out = ctx.Event(), ctx.Event(), ctx.Queue()
            proc = ctx.Process(
                target=flood_worker,
                args=(endpoint, kind, args.peers, args.flood_nice, go, idle, stop, out, flood_cpu),
                daemon=True,
            )
            proc.start()
            workers[phase] = (proc, go, idle, out)
        for _, _, idle, _ in workers.values():
            idle.wait(60)
        client.connect(timeout=10)
        attached_at = client.session_endpoint  # None: on the public endpoint
        _latency_phase(client, observations, min(1.0, args.phase_s), args.period)  # warm up
        for r in range(args.rounds):
            order = FLOOD_PHASES if r % 2 == 0 else tuple(reversed(FLOOD_PHASES))
            for phase in order:
                worker = workers.get(phase)
                if worker is not None:
                    worker[1].set()
                    time.sleep(0.3)  # flooding before measuring
                s0, t0, d0 = _proc_cpu_s(server.pid), time.perf_counter(), _run_delay_s(server.pid)
                got, bad, server_ms = _latency_phase(client, observations, args.phase_s, args.period)
                in_server[phase].extend(server_ms)
                wall[phase] += time.perf_counter() - t0
                cpu[phase] += _proc_cpu_s(server.pid) - s0
                waited[phase] += _run_delay_s(server.pid) - d0
                if worker is not None:
                    worker[1].clear()
                    worker[2].wait(30)  # its cycle finished: the next phase starts clean
                lat[phase].extend(got)
                failed[phase] += bad
                per_round_p99[phase].append(float(np.percentile(got, 99)))
        stats = fetch_stats(endpoint, timeout=10, limit=0)
    finally:
        stop.set()
        flood_counts = {}
        for phase, (proc, go, _, out) in workers.items():
            go.clear()
            try:
                flood_counts[phase] = out.get(timeout=30)
            except Exception:
                flood_counts[phase] = None
            proc.join(5)
        client.close()
        server.terminate()
        server.join(5)
    phases: dict[str, dict] = {}
    for phase in FLOOD_PHASES:
        a = np.asarray(lat[phase])
        finite = a[np.isfinite(a)]
        counts = flood_counts.get(phase)
        if counts and counts.get("flooding_s"):
            counts["connections_per_s"] = counts["connections"] / counts["flooding_s"]
        phases[phase] = {
            "requests": int(a.size),
            "failed": failed[phase],
            "p50_ms": float(np.percentile(finite, 50)) if finite.size else None,
            "p99_ms": float(np.percentile(a, 99)),
            "p99_median_of_rounds_ms": float(np.median(per_round_p99[phase])),
            "max_ms": float(np.max(a)),
            # the server's own share (receipt to reply, measured by the server): the rest of the
            # round trip is sockets, libzmq I/O threads and the OS scheduler of a shared machine
            "server_total_p50_ms": float(np.percentile(in_server[phase], 50)),
            "server_total_p99_ms": float(np.percentile(in_server[phase], 99)),
            "server_cpu_fraction": cpu[phase] / wall[phase],
            # the server's threads runnable but waiting for a CPU (other processes had it), per
            # second of the phase: a starved server's tail is the host's, not the flood's handling
            "server_runqueue_wait_s_per_s": waited[phase] / wall[phase],
            "flood": counts,
            "raw_latencies_ms": [round(float(x), 4) for x in a],
        }
    ratios = {}
    for key in ("p99_ms", "p99_median_of_rounds_ms", "server_total_p99_ms"):
        for base in ("idle", "cpu_burn"):
            for phase in ("cpu_burn", "connect_flood", "hello_flood"):
                if phase != base:
                    ratios[f"{phase}_over_{base}_{key}"] = phases[phase][key] / phases[base][key]
    counters = {
        c["name"]
        + ("{" + ",".join(f"{k}={v}" for k, v in c["labels"].items()) + "}" if c["labels"] else ""): c[
            "value"
        ]
        for c in stats["metrics"]["counters"]
    }
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other jobs ran too
    within = {
        key: all(ratios[f"{p}_over_idle_{key}"] <= 2.0 for p in ("connect_flood", "hello_flood"))
        for key in ("p99_ms", "p99_median_of_rounds_ms", "server_total_p99_ms")
    }
    return {
        "benchmark": "transport flood: the good robot's round trip while thousands of peers connect and leave",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "method": {
            "smoke": args.smoke,
            "peers_per_cycle": args.peers,
            "rounds": args.rounds,
            "phase_s_per_round": args.phase_s,
            "interleaved": "phases alternate in rounds (order reversed every other round)",
            "good_robot_period_s": args.period,
            "flood_niceness": args.flood_nice,
            "pinning": (
                f"{args.pin}: server and good robot on CPUs {server_cpus or 'any'}, flooders and cpu_burn "
                f"on CPU {flood_cpu}"
                if flood_cpu
                else "none: every process may run on every CPU (flooders compete with the server)"
            ),
            "run_with": f"niceness {os.getpriority(os.PRIO_PROCESS, 0)} (on a shared machine other jobs "
            "may run beside it at a better one; see the load averages and the server's run-queue waits)",
            "server": f"own process, default caps (max_sessions 1024, max_connections 4096, 256 per address), "
            f"{args.io_threads} libzmq I/O threads, echo policy, "
            + (
                "one endpoint: the good robot on the public socket beside the flood"
                if args.one_endpoint
                else "the good robot attached to the session endpoint (own context and I/O thread), "
                f"public endpoint's I/O threads at {args.handshake_io_priority} priority"
            ),
            "good_robot": "PolicyClient in the benchmark process, 3 x 224x224 RGB + state at the control rate",
            "good_robot_endpoint": f"session endpoint {attached_at}" if attached_at else "public endpoint",
            "flooders": "own processes, niced by flood_niceness more than the benchmark and pinned as "
            "'pinning' says (on a real network the attacker's CPU is not the policy host's); each peer a "
            "distinct loopback source address; connect: TCP + ZMTP handshake then hang up; hello: also a "
            "hello as a new robot, then hang up without bye",
            "cpu_burn": "control: a process of the flooders' niceness and CPU spinning, touching nothing",
        },
        "phases": phases,
        "ratios": ratios,
        "targets_met": {
            "flood_p99_within_2x_idle": within["p99_ms"],
            "flood_p99_median_of_rounds_within_2x_idle": within["p99_median_of_rounds_ms"],
            "flood_server_side_p99_within_2x_idle": within["server_total_p99_ms"],
        },
        "server_after": {"summary": stats.get("summary"), "counters": counters},
    }


def _plot_flood(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "idle": "tab:gray",
        "cpu_burn": "tab:purple",
        "connect_flood": "tab:red",
        "hello_flood": "tab:orange",
    }
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, ph in report["phases"].items():
        a = np.sort(np.asarray(ph["raw_latencies_ms"]))
        q = np.arange(1, len(a) + 1) / len(a)
        rate = (ph.get("flood") or {}).get("connections_per_s")
        label = f"{name}: p99 {ph['p99_ms']:.2f} ms" + (f", {rate:.0f} conn/s" if rate else "")
        ax1.plot(a, q, color=colors.get(name), label=label)
    ax1.set_xscale("log")
    ax1.set_xlabel("good robot round trip (ms, log)")
    ax1.set_ylabel("fraction of requests")
    ax1.axhline(0.99, color="k", lw=0.5, ls=":")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"{report['method']['peers_per_cycle']} peers at once, connect and hang up, repeated")
    names = list(report["phases"])
    x = np.arange(len(names))
    ax2.bar(x - 0.2, [report["phases"][n]["p99_ms"] for n in names], 0.4, color=[colors[n] for n in names])
    ax2.bar(
        x + 0.2,
        [report["phases"][n]["p99_median_of_rounds_ms"] for n in names],
        0.4,
        color=[colors[n] for n in names],
        alpha=0.5,
        hatch="//",
    )
    ax2.plot(
        x,
        [report["phases"][n]["server_total_p99_ms"] for n in names],
        "kD",
        label="in the server, p99",
    )
    ax2.axhline(2 * report["phases"]["idle"]["p99_ms"], color="k", ls="--", lw=1, label="2x idle p99")
    ax2.set_xticks(x, [n.replace("_", "\n") for n in names])
    ax2.set_ylabel("p99 (ms): all samples | median of rounds (hatched)")
    ax2.set_title("good robot p99 per phase")
    ax2.legend()
    fig.suptitle(_machine_line(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def flood_main(args: argparse.Namespace) -> None:
    if args.flood_nice is None:
        args.flood_nice = 0 if flood_cpus(args.pin)[1] else 10
    if args.smoke:
        args.peers, args.phase_s, args.rounds = min(args.peers, 40), min(args.phase_s, 0.5), 1
    report = flood(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name if args.name != "transport" else "transport_flood"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot_flood(report, args.out / f"{stem}.png")
    for name, ph in report["phases"].items():
        counts = {
            k: v for k, v in (ph["flood"] or {}).items() if k in ("connections_per_s", "welcome", "error")
        }
        print(
            f"{name:14s} p50 {ph['p50_ms']:7.3f} ms  p99 {ph['p99_ms']:7.3f} ms "
            f"(in the server p99 {ph['server_total_p99_ms']:6.3f})  "
            f"(median of rounds {ph['p99_median_of_rounds_ms']:7.3f})  failed {ph['failed']}  "
            f"server cpu {100 * ph['server_cpu_fraction']:5.1f} %  "
            f"waiting for a CPU {1000 * ph['server_runqueue_wait_s_per_s']:5.1f} ms/s  {counts}"
        )
    print(json.dumps({"ratios": report["ratios"], "targets_met": report["targets_met"]}, indent=2))


if __name__ == "__main__":
    main()
