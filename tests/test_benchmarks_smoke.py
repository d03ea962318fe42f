"""Every benchmark runs: each script's ``--smoke`` mode (tiny config, one repeat) in a subprocess,
writing its JSON and plot to a temporary folder. The committed scripts once crashed at the plot
(a machine-description key that no longer existed) because nothing ran them; these tests do.

Each run takes seconds to ~15 s on a 2-core machine; the module stays under ~1.5 min.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (command after the interpreter, JSON file, top-level keys it must hold, plot files)
CASES = {
    "bench_transport.py": (
        ["benchmarks/bench_transport.py"],
        "transport.json",
        {"machine", "payload", "results", "ratios", "targets_met", "raw_latencies_ms"},
        ["transport.png"],
    ),
    "bench_openpi_batch.py": (
        ["benchmarks/bench_openpi_batch.py"],
        "openpi_batch.json",
        {"machine", "method", "results", "ratios", "raw_round_ms"},
        ["openpi_batch.png"],
    ),
    "bench_inference.py": (
        ["benchmarks/bench_inference.py"],
        "inference_cpu.json",
        {"mode", "config", "machine", "strategies", "backends", "skipped_backends"},
        ["inference_cpu.png"],
    ),
    "bench_model_cpu.py": (
        ["benchmarks/bench_model_cpu.py"],
        "model_cpu.json",
        {"machine", "repeats", "models", "preprocessing_vs_transformers"},
        ["model_cpu.png"],
    ),
    "bench_preprocess.py": (
        ["benchmarks/bench_preprocess.py"],
        "preprocess-cpu.json",
        {"machine", "repeats", "cases"},
        ["preprocess-cpu.png"],
    ),
    "bench_cameras.py": (
        ["benchmarks/bench_cameras.py"],
        "cameras.json",
        {"machine", "seconds_per_run", "runs"},
        ["cameras.png"],
    ),
    "bench_control.py": (
        ["benchmarks/bench_control.py"],
        "control.json",
        {"machine", "tick_cost", "loop", "seams_synthetic"},
        ["control_run.png"],
    ),
    "bench_control.py --workspace-only": (
        ["benchmarks/bench_control.py", "--workspace-only"],
        "safety_workspace.json",
        {"machine", "settings", "results"},
        ["safety_workspace.png"],
    ),
    "bench_robot_adapters.py": (
        ["benchmarks/bench_robot_adapters.py"],
        "robot_adapters.json",
        {"machine", "robots"},
        ["robot_adapters.png"],
    ),
    "bench_wire.py": (
        ["benchmarks/bench_wire.py"],
        "wire_bytes.json",
        {"machine", "observation", "calls", "links"},
        ["wire_bytes.png"],
    ),
    "bench_training.py": (
        ["benchmarks/bench_training.py"],
        "training_pick_cube.json",
        {"machine", "settings", "data", "log", "loss_first", "cpu_seconds_per_step"},
        ["training_pick_cube.png"],
    ),
    "wall-runtime bench": (
        ["-m", "wall_runtime", "bench"],
        "e2e-cpu.json",
        {"machine", "seconds_per_config", "variant", "results"},
        ["e2e-cpu.png", "e2e-cpu.md"],
    ),
}


def _inference_measured(record: dict) -> None:
    """The inference smoke run measures what the full run does, on the tiny config: strategies that
    agree with each other, and every CPU backend's stages (none turned into an error row)."""
    s = record["strategies"]
    for name in ("full_recompute", "python_loop", "fused_torch", "fused_onnx"):
        assert s[name]["denoise"]["n"] == 1
        assert s[name]["max_abs_vs_python_loop"] <= 1e-4, name
    rows = record["backends"]
    assert {r["backend"] for r in rows} == {"torch", "onnxruntime"}
    assert not [r for r in rows if "error" in r], rows
    assert all(r["stages"]["total"]["p50"] > 0 for r in rows)


def _transport_measured(record: dict) -> None:
    for name in ("ours", "ours_callback", "openpi", "floor"):
        assert record["results"][name]["p50_ms"] > 0


def _wire_measured(record: dict) -> None:
    """Model-sized frames are under half the bytes; every link measured both ways (the shaped links
    where this machine lets the test create a network namespace, else the reason is recorded)."""
    links = record["links"]
    expected = {"loopback_unshaped"} | (set() if "shaping_unavailable" in record else {"1gbit", "100mbit"})
    assert set(links) == expected
    for link in links.values():
        b = link["bytes_per_observation"]
        assert b["model_sized"] < 0.5 * b["camera_sized"]
        assert link["frame_shapes"]["model_sized"] == [336, 448, 3]
        assert all(link["round_trip"][m]["n"] == 2 for m in ("camera_sized", "model_sized"))


def _openpi_batch_measured(record: dict) -> None:
    """Both servers measured with 1 and 4 clients, every reply the client's own; the serial one
    made a call per request, the batched one fewer."""
    r = record["results"]
    assert set(r) == {f"{m}_{n}_clients" for m in ("batched", "serial") for n in (1, 4)}
    assert all(row["wrong_replies"] == 0 and row["round"]["p50_ms"] > 0 for row in r.values())
    assert r["serial_4_clients"]["policy_calls_per_round"] == 4
    assert r["batched_4_clients"]["policy_calls_per_round"] < 4


def _workspace_measured(record: dict) -> None:
    """Every shipped arm with a box, with and without jerk limits, reached the face and braked for
    it; far from it the check without jerk limits takes its shortcut (two forward-kinematics calls)
    and the jerk-limited one samples the stopping path."""
    r = record["results"]
    robots = ("sim_arm", "sim_pick", "sim_bimanual", "pick_cube_task")
    assert set(r) == {f"{name}{jerk}" for name in robots for jerk in ("", "_jerk")}
    for name, row in r.items():
        assert row["far"]["ticks"] > 0 and row["braking"]["ticks"] > 0, name
        assert all(c["p50_ms"] > 0 for c in row.values() if c["ticks"]), name
        if not name.endswith("_jerk"):
            assert row["far"]["fk_calls_max"] == 2, name
        else:
            assert row["far"]["fk_calls_p50"] > 2, name


CHECKS = {
    "bench_control.py --workspace-only": _workspace_measured,
    "bench_openpi_batch.py": _openpi_batch_measured,
    "bench_inference.py": _inference_measured,
    "bench_transport.py": _transport_measured,
    "bench_wire.py": _wire_measured,
}


def _run_smoke(args: list[str], out: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, *args, "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_smoke_mode_writes_json_and_plot(name, tmp_path):
    args, json_name, keys, plots = CASES[name]
    proc = _run_smoke(args, tmp_path)
    assert proc.returncode == 0, f"{name} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    record = json.loads((tmp_path / json_name).read_text())
    assert keys <= set(record), f"{json_name} lacks {sorted(keys - set(record))}"
    machine = record["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and "torch" in machine
    if name in CHECKS:
        CHECKS[name](record)
    for plot in plots:
        path = tmp_path / plot
        assert path.is_file() and path.stat().st_size > 0, f"{name} wrote no {plot}"
        if plot.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_MAGIC, f"{plot} is not a PNG"
            with Image.open(path) as image:
                image.verify()  # raises on a truncated or corrupt file
                assert image.size[0] > 100 and image.size[1] > 100


def test_every_benchmark_script_has_a_smoke_mode_that_a_test_runs():
    """A new script in benchmarks/ must come with ``--smoke`` and a test that names it (here or in
    its own test module)."""
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        assert '"--smoke"' in script.read_text(), f"{script.name} has no --smoke mode"
        assert script.stem in tests, f"no test runs {script.name} --smoke"
