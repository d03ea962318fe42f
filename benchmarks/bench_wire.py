"""Bytes on the wire per observation, and the round trip, with and without the robot host resizing
frames to the model's size (``PolicyClient(resize_images=True)``), over rate-limited links.

The observation is the Wall-OSS-0.5 robot's: three 640×480 RGB cameras (each view's resolution 448,
so the model takes 448×336 after the first resize) and a 14-float state. The policy is the echo
policy plus the model's real image preprocessing (both Pillow resizes and the patches; no network):
what is measured is the link, the transport and the image work that moves from the policy host to
the robot host. The round trip includes the client's resize when it does it.

The link: a network namespace this script creates, its loopback set to an Ethernet MTU (1500) and
shaped with a token-bucket filter (``tc qdisc add dev lo root tbf rate R ...``) at 1 Gbit/s and
100 Mbit/s; loopback packets pass the qdisc once, so both directions are limited. (``tc netem``'s
rate is the usual tool; this machine's kernel has no netem module, and tbf gives the same rate
limit.) Server and client both run inside the namespace; an unshaped loopback run is the reference.
Creating namespaces needs root and ``ip``; without them only the unshaped link is measured and the
JSON says why.

    sudo python benchmarks/bench_wire.py [--calls 40] [--out benchmarks/results]
    python benchmarks/bench_wire.py --smoke --out /tmp/bench   # two calls per point

Writes ``wire_bytes.json`` (the machine described) and ``wire_bytes.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wall_runtime.machine import describe_machine  # noqa: E402

CAMERAS = ("face_view", "left_wrist_view", "right_wrist_view")
FRAME = (480, 640)
RESOLUTION = 448
STATE_DIM = 14
RATES = {"1gbit": 1e9, "100mbit": 1e8}
MODES = ("camera_sized", "model_sized")


# ------------------------------------------------------------------------------------------ inner run


def _policy():
    """The echo policy plus the model's real image preprocessing (both resizes, patches) on each call:
    what the policy host does with the frames before the network, so a client that did the first resize
    is credited with the server time it saves. It announces the views' resolutions like WALL-OSS."""
    import dataclasses

    from wall_runtime.backends.echo import EchoPolicy
    from wall_runtime.model.image_processing import preprocess_images

    class PreprocessingEcho(EchoPolicy):
        def infer(self, observations, noise=None):
            for obs in observations:
                preprocess_images([obs.images[c] for c in CAMERAS], [RESOLUTION] * len(CAMERAS))
            return super().infer(observations, noise)

    echo = EchoPolicy.from_checkpoint(
        None, cameras=CAMERAS, action_horizon=32, action_dim=20, state_dim=20, image_digest=False
    )
    meta = dataclasses.replace(echo.metadata, resolutions=dict.fromkeys(CAMERAS, RESOLUTION))
    return PreprocessingEcho(meta, image_digest=False)


def _serve(ready) -> None:
    from wall_runtime.transport.server import PolicyServer, ServerConfig

    server = PolicyServer(_policy(), ServerConfig(bind="tcp://127.0.0.1:*", max_wait_ms=0.0))
    ready.put(server.start())
    while True:
        time.sleep(3600)


def _observation(seed: int):
    from wall_runtime.types import Observation

    rng = np.random.default_rng(seed)
    h, w = FRAME
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    images = {}
    for i, cam in enumerate(CAMERAS):
        img = np.stack(
            [255 * x / w, 255 * y / h, 128 + 90 * np.sin((x + 40 * i) / 9.0) * np.cos(y / 13.0)], -1
        )
        images[cam] = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    state = rng.standard_normal(STATE_DIM).astype(np.float32)
    return Observation(stamp=float(seed), images=images, state=state, instruction="pick up the red cup")


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
    }


def inner(calls: int, warmup: int) -> dict:
    """Server and clients on this process's network (the namespace when shaped); both modes interleaved."""
    from wall_runtime.model.image_processing import shrink_for_wire
    from wall_runtime.transport import protocol
    from wall_runtime.transport.client import PolicyClient
    from wall_runtime.types import Observation

    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(ready,), daemon=True)
    proc.start()
    try:
        endpoint = ready.get(timeout=60)
        observations = [_observation(i) for i in range(4)]
        clients = {}
        for m in MODES:  # one robot each (a session per robot id)
            description = protocol.RobotDescription(
                f"arm-{m}", "bench", dict.fromkeys(CAMERAS, (*FRAME, 3)), STATE_DIM, 0.02
            )
            clients[m] = PolicyClient(endpoint, description, resize_images=m == "model_sized")
        for c in clients.values():
            c.connect(timeout=30)
        round_trip = {m: [] for m in MODES}
        for i in range(warmup + calls):
            for m in MODES if i % 2 == 0 else reversed(MODES):
                t0 = time.perf_counter()
                clients[m].submit(observations[i % 4], deadline=10.0).result(timeout=30)
                if i >= warmup:
                    round_trip[m].append((time.perf_counter() - t0) * 1e3)
        for c in clients.values():
            c.close()
    finally:
        proc.terminate()
        proc.join(5)
    obs = observations[0]
    resized = Observation(
        obs.stamp,
        {k: shrink_for_wire(v, RESOLUTION) for k, v in obs.images.items()},
        obs.state,
        obs.instruction,
    )
    from wall_runtime.model.image_processing import preprocess_images, shrink_all_for_wire

    resolutions = dict.fromkeys(CAMERAS, RESOLUTION)
    resize_ms, server_ms = [], {m: [] for m in MODES}
    for _ in range(max(calls, 5)):
        t0 = time.perf_counter()
        shrink_all_for_wire(obs.images, resolutions)
        resize_ms.append((time.perf_counter() - t0) * 1e3)
        for m, o in (("camera_sized", obs), ("model_sized", resized)):
            t0 = time.perf_counter()
            preprocess_images(list(o.images.values()), [RESOLUTION] * len(CAMERAS))
            server_ms[m].append((time.perf_counter() - t0) * 1e3)
    wire = {
        m: sum(len(bytes(f)) for f in protocol.encode_observe(o, 1, 100.0))
        for m, o in (("camera_sized", obs), ("model_sized", resized))
    }
    return {
        "bytes_per_observation": wire,
        "frame_shapes": {
            "camera_sized": list(obs.images[CAMERAS[0]].shape),
            "model_sized": list(resized.images[CAMERAS[0]].shape),
        },
        "round_trip": {m: _stats(v) for m, v in round_trip.items()},
        "client_resize_3_views": _stats(resize_ms),
        "server_image_preprocess_3_views": {m: _stats(v) for m, v in server_ms.items()},
    }


# ------------------------------------------------------------------------------------------ shaping


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def shaping_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces and tc need root"
    name = f"wallwire-probe-{os.getpid()}"
    try:
        _sh("ip", "netns", "add", name)
        _sh("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1gbit",
            "burst", "64kb", "limit", "1mb")  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        return f"ip netns / tc tbf failed: {getattr(e, 'stderr', '') or e}".strip()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def shaped(rate_name: str, calls: int, warmup: int) -> dict:
    """One inner run in a fresh namespace whose loopback is limited to ``rate_name``."""
    name = f"wallwire-{os.getpid()}-{rate_name}"
    bits = RATES[rate_name]
    # burst: a few Ethernet frames' worth at this rate (>= 64 KiB: GSO packets on loopback are that big);
    # limit: deep enough that a whole observation queues without a drop (the rate is what is measured)
    burst = max(64 * 1024, int(bits / 8 / 2000))
    tbf = ["tbf", "rate", rate_name, "burst", str(burst), "limit", str(16 * 2**20)]
    out = Path(tempfile.mkdtemp(prefix="bench-wire-")) / "inner.json"
    try:
        _sh("ip", "netns", "add", name)
        _sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "mtu", "1500", "up")
        _sh("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", *tbf)
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, __file__, "--inner", "--calls", str(calls), "--warmup", str(warmup)]
        subprocess.run(["ip", "netns", "exec", name, *cmd, "--inner-out", str(out)], check=True, env=env)
        result = json.loads(out.read_text())
        result["link"] = {"shaper": "tc tbf on the namespace's loopback (MTU 1500)", "qdisc": " ".join(tbf)}
        return result
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


# ------------------------------------------------------------------------------------------ report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(report["links"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    any_link = report["links"][links[0]]
    b = any_link["bytes_per_observation"]
    ax1.bar(
        ["camera-sized\n3×640×480", "model-sized\n3×448×336"],
        [b["camera_sized"] / 1e6, b["model_sized"] / 1e6],
        color=["tab:gray", "tab:blue"],
    )
    ax1.set_ylabel("MB per observation (encoded frames)")
    ax1.set_title(f"bytes per observation: {b['model_sized'] / b['camera_sized']:.0%} after the resize")
    x = np.arange(len(links))
    for k, (mode, colour) in enumerate((("camera_sized", "tab:gray"), ("model_sized", "tab:blue"))):
        p50 = [report["links"][link]["round_trip"][mode]["p50_ms"] for link in links]
        p95 = [report["links"][link]["round_trip"][mode]["p95_ms"] for link in links]
        err = [np.zeros(len(links)), np.subtract(p95, p50)]
        ax2.bar(x + (k - 0.5) * 0.38, p50, 0.36, yerr=err, color=colour, label=mode.replace("_", " "))
        for i, v in enumerate(p50):
            ax2.text(x[i] + (k - 0.5) * 0.38, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(x, [link.replace("_", " ") for link in links])
    ax2.set_ylabel("round trip ms (p50, bar to p95)")
    ax2.set_yscale("log")
    ax2.set_title("round trip: transport + image preprocessing", fontsize=11)
    ax2.legend()
    m = report["machine"]
    load = m.get("load_average_at_start", ["?"])[0]
    fig.suptitle(
        f"{m['cpu']} ({m['cores']} cores, load {load}), tc tbf in a network namespace, {report['date_utc']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40, help="timed round trips per mode and link")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--smoke", action="store_true", help="check the script runs: two calls per point")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--inner-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.calls, args.warmup = 2, 1
    if args.inner:
        args.inner_out.write_text(json.dumps(inner(args.calls, args.warmup)))
        return

    report: dict = {
        "benchmark": "bytes per observation and round trip, camera-sized vs model-sized frames",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": describe_machine("zmq", "PIL", note="shared machine; loopback inside a network namespace"),
        "observation": f"3 views {FRAME[1]}x{FRAME[0]} RGB uint8, resolution {RESOLUTION}, state float32[{STATE_DIM}]",
        "calls": args.calls,
        "links": {},
    }
    report["links"]["loopback_unshaped"] = inner(args.calls, args.warmup)
    why = shaping_unavailable()
    if why:
        report["shaping_unavailable"] = why
        print(f"rate-limited links skipped: {why}")
    else:
        for rate in RATES:
            report["links"][rate] = shaped(rate, args.calls, args.warmup)
    for link, r in report["links"].items():
        rt = r["round_trip"]
        r["round_trip_p50_ratio_model_over_camera"] = (
            rt["model_sized"]["p50_ms"] / rt["camera_sized"]["p50_ms"]
        )
        print(
            f"{link:>18}: camera-sized p50 {rt['camera_sized']['p50_ms']:8.2f} ms, "
            f"model-sized p50 {rt['model_sized']['p50_ms']:8.2f} ms "
            f"(×{r['round_trip_p50_ratio_model_over_camera']:.2f})"
        )
    b = report["links"]["loopback_unshaped"]["bytes_per_observation"]
    print(f"bytes per observation: {b['camera_sized']} camera-sized, {b['model_sized']} model-sized")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wire_bytes.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "wire_bytes.png")
    print(f"wrote {args.out / 'wire_bytes.json'} and {args.out / 'wire_bytes.png'}")


if __name__ == "__main__":
    main()
