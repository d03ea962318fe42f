"""Smoke runs of the model benchmarks: `bench_loading.py` and `bench_denoise_loop.py` (JSON, plot)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_loading_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_loading", ROOT / "benchmarks" / "bench_loading.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "loading_smoke.json").read_text())
    assert (tmp_path / "loading_smoke.png").stat().st_size > 0
    assert report["machine"]["cpu"] and report["machine"]["torch"]
    stream, legacy = report["results"]["0.5/stream/float32"], report["results"]["0.5/legacy/float32"]
    assert stream["weights_bytes"] == legacy["weights_bytes"] > 0
    assert stream["peak_over_baseline_bytes"] > 0 and stream["ratio_median"] > 0


@pytest.mark.slow
def test_denoise_loop_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_denoise_loop", ROOT / "benchmarks" / "bench_denoise_loop.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "denoise_loop_smoke.json").read_text())
    assert (tmp_path / "denoise_loop_smoke.png").stat().st_size > 0
    assert report["max_abs_fused_vs_loop"] == 0.0  # the same network calls, bit for bit
    assert set(report["results"]["1"]) >= {"python_loop", "fused_torch", "fused_over_loop_p50"}
    assert report["ops_one_call_1_thread"]["fused_torch"]
