"""openpi endpoint: concurrent clients batched into one policy call vs served one call at a time.

Two ``wall-runtime serve --openpi`` processes run side by side on the echo policy, whose call
costs ``--delay-ms`` whatever its batch size (a model far from saturating its accelerator, where a
batch of 4 costs about what 1 does; on a CPU-bound model the gain is smaller):

  batched  --max-batch 8 --max-wait-ms 2 (the defaults): concurrent requests share a call
  serial   --max-batch 1: one call per request, taking turns (what the endpoint did before
           batching); ``--serial-src DIR`` serves it from another checkout instead (e.g. one
           before batching, to compare with the old code itself)

For 1 and for ``--clients`` clients (``openpi-client``'s WebsocketClientPolicy, one thread and
connection each), every round all clients send one request at once (a barrier) and the round
ends when the last reply is in: the figure is the round time (and each request's latency). The
single-client rows check that batching costs a lone client nothing. Blocks of rounds alternate
between the two servers, so load from other jobs on a shared machine spreads over both.

    python benchmarks/bench_openpi_batch.py [--clients 4 --rounds 200 --delay-ms 20] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wall_runtime.machine import describe_machine  # noqa: E402

STATE_DIM = 14
HORIZON = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, max_batch: int, delay_ms: float, src: Path) -> subprocess.Popen:
    args = ["serve", "--backend", "echo", "--bind", "tcp://127.0.0.1:*", "--openpi", f"127.0.0.1:{port}"]
    args += ["--max-batch", str(max_batch), "--max-wait-ms", "2"]
    for option in (f"delay_ms={delay_ms}", "image_digest=false", "cameras=face_view"):
        args += ["-o", option]
    args += [
        "-o",
        f"action_horizon={HORIZON}",
        "-o",
        f"action_dim={STATE_DIM}",
        "-o",
        f"state_dim={STATE_DIM}",
    ]
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.Popen(
        [sys.executable, "-m", "wall_runtime", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no /healthz on {port}") from None
            time.sleep(0.2)


class Clients:
    """``n`` openpi clients, each on its own thread, sending one request per round together."""

    def __init__(self, port: int, n: int) -> None:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        self.n = n
        self.clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in range(n)]
        self.start = threading.Barrier(n + 1)
        self.end = threading.Barrier(n + 1)
        self.latency_ms: list[list[float]] = [[] for _ in range(n)]
        self.batch_sizes: list[int] = []
        self.wrong = 0
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        state = np.full(STATE_DIM, float(i), np.float32)
        while True:
            self.start.wait()
            if self.stopping:
                return
            t0 = time.perf_counter()
            reply = self.clients[i].infer({"state": state, "prompt": "pick"})
            self.latency_ms[i].append((time.perf_counter() - t0) * 1e3)
            self.batch_sizes.append(int(reply["server_timing"].get("batch_size", 1)))
            if abs(float(reply["actions"][0, 0]) - (i + 0.01)) > 1e-4:  # the echo chunk: state + ramp
                self.wrong += 1
            self.end.wait()

    def rounds(self, count: int) -> list[float]:
        """Round times (ms): barrier release until the last client has its reply."""
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            self.start.wait()
            self.end.wait()
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    def close(self) -> None:
        self.stopping = True
        self.start.wait()
        for t in self.threads:
            t.join(5)


def _stats(values: list[float]) -> dict:
    a = np.asarray(values)
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=200, help="Rounds per server and client count.")
    parser.add_argument("--block", type=int, default=20, help="Rounds per block (blocks alternate servers).")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="The echo policy's cost per call.")
    parser.add_argument("--serial-src", type=Path, default=ROOT, help="Checkout serving the serial mode.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="openpi_batch", help="Result file stem.")
    parser.add_argument("--smoke", action="store_true", help="A few rounds, to check the script runs.")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.block, args.warmup, args.delay_ms = 4, 2, 1, 5.0

    modes = {"batched": (8, ROOT), "serial": (1, args.serial_src.resolve())}
    ports = {m: _free_port() for m in modes}
    procs = {m: _serve(ports[m], batch, args.delay_ms, src) for m, (batch, src) in modes.items()}
    results: dict = {}
    raw: dict = {}
    try:
        for m, proc in procs.items():
            _wait_healthy(proc, ports[m])
        for n in (1, args.clients):
            pools = {m: Clients(ports[m], n) for m in modes}
            for pool in pools.values():
                pool.rounds(args.warmup)
                pool.latency_ms = [[] for _ in range(n)]
                pool.batch_sizes.clear()
            rounds: dict[str, list[float]] = {m: [] for m in modes}
            done = 0
            while done < args.rounds:
                block = min(args.block, args.rounds - done)
                for m in modes:
                    rounds[m] += pools[m].rounds(block)
                done += block
            for m, pool in pools.items():
                key = f"{m}_{n}_clients"
                results[key] = {
                    "mode": m,
                    "clients": n,
                    "round": _stats(rounds[m]),
                    "request": _stats([x for lat in pool.latency_ms for x in lat]),
                    "mean_batch_size": float(np.mean(pool.batch_sizes)),
                    # a request in a call of b requests is 1/b of a call
                    "policy_calls_per_round": float(sum(1.0 / b for b in pool.batch_sizes) / args.rounds),
                    "wrong_replies": pool.wrong,
                }
                raw[key] = [round(x, 3) for x in rounds[m]]
                pool.close()
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(20)

    n = args.clients
    ratios = {
        f"serial_over_batched_round_p50_{n}_clients": results[f"serial_{n}_clients"]["round"]["p50_ms"]
        / results[f"batched_{n}_clients"]["round"]["p50_ms"],
        "batched_over_serial_request_p50_1_client": results["batched_1_clients"]["request"]["p50_ms"]
        / results["serial_1_clients"]["request"]["p50_ms"],
    }
    machine = describe_machine("websockets", niceness=os.nice(0))
    machine["load_avg_1m_at_end"] = os.getloadavg()[0]
    report = {
        "benchmark": "openpi endpoint, concurrent clients: batched vs serial policy calls (echo policy)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "method": {
            "policy": f"echo, {args.delay_ms} ms per call whatever the batch size",
            "request": f"state float32[{STATE_DIM}] + prompt, no images",
            "servers": {
                m: {"max_batch": b, "max_wait_ms": 2.0, "src": str(src)} for m, (b, src) in modes.items()
            },
            "rounds": args.rounds,
            "block": args.block,
            "warmup": args.warmup,
            "round": "all clients send at once (barrier); until the last reply is in",
        },
        "results": results,
        "ratios": ratios,
        "raw_round_ms": raw,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out / f"{args.name}.png")
    for key, r in results.items():
        print(
            f"{key:20s} round p50 {r['round']['p50_ms']:7.2f} p90 {r['round']['p90_ms']:7.2f} ms  "
            f"request p50 {r['request']['p50_ms']:7.2f} p99 {r['request']['p99_ms']:7.2f} ms  "
            f"calls/round {r['policy_calls_per_round']:.2f}  wrong {r['wrong_replies']}"
        )
    print(json.dumps(ratios, indent=2))


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {"batched": "tab:blue", "serial": "tab:orange"}
    for key, r in report["results"].items():
        a = np.sort(report["raw_round_ms"][key])
        q = np.arange(1, len(a) + 1) / len(a)
        ls = "-" if r["clients"] > 1 else ":"
        ax.plot(
            a,
            q,
            color=colors[r["mode"]],
            ls=ls,
            label=f"{r['mode']}, {r['clients']} client(s): p50 {r['round']['p50_ms']:.1f} ms",
        )
    ax.set_xlabel("round time (ms): all clients send at once, until the last reply")
    ax.set_ylabel("fraction of rounds")
    ax.legend(loc="lower right", fontsize=8)
    m = report["machine"]
    ax.set_title(
        f"openpi endpoint, {report['method']['policy']}\n{m.get('cpu')} ({m.get('usable_cores')} cores), "
        f"load {m.get('load_average_at_start', [0])[0]:.1f}, {report['date_utc']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
