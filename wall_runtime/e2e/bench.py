"""``wall-runtime bench``: the end-to-end latency benchmark, stage by stage.

Each configuration runs the real closed loop for a while — a policy server in its own process, a
robot (simulated by default) with its cameras, the control loop — and times every stage a chunk
goes through on its way to the actuator:

    capture       age of the observation's frames when it is taken (robot host)
    serialize     encoding and queueing the observation (robot host, ``submit``)
    transport     request sent to chunk arrived, minus the server's own time (both directions)
    server_queue  waiting on the server (batching, the policy busy with another robot)
    preprocess    images, prompt, state (policy host)
    vision        the vision tower
    prefix        the prefill of the prefix (KV cache)
    denoise       all flow steps
    postprocess   un-normalisation
    actuation     ``adapter.command`` (robot host)

each as p50 / p95 / p99, plus the control-period jitter, sweeping backends, denoise steps and
views (the robot's cameras: the simulated base has 1, the arm 2, the bimanual robot 3). Results go
to JSON with the machine described, a Markdown table and a plot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wall_runtime.e2e.demo import policy_server_process, with_graph_cameras
from wall_runtime.e2e.demo_checkpoint import demo_checkpoint
from wall_runtime.e2e.robot_side import load_robot_side
from wall_runtime.e2e.session import Session, SessionOptions
from wall_runtime.machine import describe_machine

log = logging.getLogger(__name__)

STAGES = (
    "capture",
    "serialize",
    "transport",
    "server_queue",
    "preprocess",
    "vision",
    "prefix",
    "denoise",
    "postprocess",
    "actuation",
)
VIEW_ROBOTS = {1: "sim_base", 2: "sim_arm", 3: "sim_bimanual"}


@dataclass(frozen=True)
class BenchConfig:
    backend: str
    steps: int
    views: int

    @property
    def label(self) -> str:
        return f"{self.backend} · {self.steps} steps · {self.views} view{'s' if self.views > 1 else ''}"


def machine() -> dict[str, Any]:
    return describe_machine("onnxruntime", "tensorrt")


class _Timed:
    """Wraps the chunk source and the adapter's ``command`` to time the robot-host stages."""

    def __init__(self, session: Session) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.sent: dict[float, float] = {}
        link = session.link
        inner_request = link.request

        def request(observation: Any) -> None:
            t0 = time.monotonic()
            self.samples["capture"].append((t0 - observation.stamp) * 1e3)
            inner_request(observation)
            t1 = time.monotonic()
            self.samples["serialize"].append((t1 - t0) * 1e3)
            self.sent[observation.stamp] = t1

        link.request = request  # type: ignore[method-assign]
        inner_poll = link.poll

        def poll() -> Any:
            chunk = inner_poll()
            if chunk is not None and chunk.stamp in self.sent:
                arrived = link.last_arrival if link.last_arrival is not None else time.monotonic()
                round_trip = (arrived - self.sent.pop(chunk.stamp)) * 1e3
                server = chunk.timing_ms.get("server_total", 0.0)
                self.samples["transport"].append(max(round_trip - server, 0.0))
                for stage in ("preprocess", "vision", "prefix", "denoise", "postprocess"):
                    if f"policy_{stage}" in chunk.timing_ms:
                        self.samples[stage].append(chunk.timing_ms[f"policy_{stage}"])
                if "server_queue" in chunk.timing_ms:
                    self.samples["server_queue"].append(chunk.timing_ms["server_queue"])
            return chunk

        link.poll = poll  # type: ignore[method-assign]
        adapter = session.side.adapter
        inner_command = adapter.command

        def command(target: Any) -> None:
            t0 = time.perf_counter()
            inner_command(target)
            self.samples["actuation"].append((time.perf_counter() - t0) * 1e3)

        adapter.command = command  # type: ignore[method-assign]


def _percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "n": int(a.size),
    }


def run_config(config: BenchConfig, seconds: float, variant: str = "flow") -> dict[str, Any]:
    side = load_robot_side(VIEW_ROBOTS[config.views])  # a shipped robot, by name
    checkpoint = demo_checkpoint(side.config, variant)
    options: dict[str, Any] = {"num_steps": config.steps}
    options = with_graph_cameras(config.backend, options, side.config)
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(policy_server_process(checkpoint, config.backend, options))
        side.start()
        stack.callback(side.close)
        session = Session(side, endpoint, SessionOptions(instruction="benchmark", safe_pose=False))
        stack.callback(session.close)
        timed = _Timed(session)
        summary = session.run(seconds)
    stages = {s: _percentiles(v) for s, v in timed.samples.items() if v}
    return {
        "config": {
            "backend": config.backend,
            "steps": config.steps,
            "views": config.views,
            "robot": side.config.name,
        },
        "stages_ms": stages,
        "chunks": summary["counters"]["chunks_received"],
        "control": {"hz": summary["control_hz"], **summary["timing"]},
        "link_errors": summary["link_errors"],
    }


def markdown_table(results: list[dict[str, Any]]) -> str:
    head = "| backend | steps | views | " + " | ".join(STAGES) + " | jitter p99 (ms) |"
    sep = "|" + "---|" * (len(STAGES) + 4)
    rows = [head, sep]
    for r in results:
        c = r["config"]
        cells = []
        for stage in STAGES:
            s = r["stages_ms"].get(stage)
            cells.append("—" if s is None else f"{s['p50']:.1f} / {s['p99']:.1f}")
        jitter = r["control"].get("period_jitter_p99_us")
        rows.append(
            f"| {c['backend']} | {c['steps']} | {c['views']} | "
            + " | ".join(cells)
            + f" | {'—' if jitter is None else f'{jitter / 1e3:.2f}'} |"
        )
    return "\n".join(rows) + "\n\nEach cell: p50 / p99 in milliseconds.\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        BenchConfig(**{k: r["config"][k] for k in ("backend", "steps", "views")}).label for r in results
    ]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(results) + 1.8))
    left = np.zeros(len(results))
    for i, stage in enumerate(STAGES):
        widths = np.array([r["stages_ms"].get(stage, {}).get("p50", 0.0) for r in results])
        ax.barh(labels, widths, left=left, color=plt.cm.tab10(i % 10), label=stage)
        left += widths
    ax.set_xlabel("p50 latency per stage, stacked (ms): capture to actuation")
    ax.invert_yaxis()
    ax.legend(fontsize=7, ncol=5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(
    backends: list[str], steps: list[int], views: list[int], seconds: float, out: Path, variant: str = "flow"
) -> dict[str, Any]:
    from rich.progress import Progress

    configs = [BenchConfig(b, s, v) for b in backends for s in steps for v in views]
    results = []
    with Progress() as progress:
        task = progress.add_task("benchmark", total=len(configs))
        for config in configs:
            progress.update(task, description=config.label)
            results.append(run_config(config, seconds, variant))
            progress.advance(task)
    record = {"machine": machine(), "seconds_per_config": seconds, "variant": variant, "results": results}
    out.mkdir(parents=True, exist_ok=True)
    stem = "e2e-gpu" if record["machine"]["gpu"] else "e2e-cpu"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (out / f"{stem}.md").write_text(
        f"End-to-end latency on {record['machine']['cpu']} ({record['machine']['cores']} cores"
        + (f", {record['machine']['gpu']}" if record["machine"]["gpu"] else ", no GPU")
        + f"), tiny {variant} checkpoint, simulated robots.\n\n"
        + markdown_table(results)
    )
    plot(results, out / f"{stem}.png")
    return record
