"""scripts/gpu-check.sh, the one command for a GPU machine, checked where there is none: its dry run
prints the plan and finds every file it needs, its stage runner records failures and skips and
exits non-zero, and the modules its GPU stages import load without pyzmq (absent on the GPU image).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
STAGES = ("setup", "env", "parity", "cuda-graph", "bench", "onnxruntime-cuda", "tensorrt", "bench-compile")


def _run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(cwd / "scripts" / "gpu-check.sh"), *args],
        cwd=cwd,
        env=os.environ | {"PYTHON": sys.executable, "PYTHONPATH": str(ROOT)} | env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_dry_run_prints_every_stage_and_its_command():
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for stage in STAGES:
        assert f" {stage} " in out, f"stage {stage} missing from the plan"
    assert "bench_inference.py --mode gpu" in out and "--points 3x10" in out
    assert "torch torch_cuda_graph cuda_graph" in out
    assert "tests/test_gpu_parity.py" in out and "tests/test_gpu_cuda_graph.py" in out
    assert "all files the plan needs are present" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs for real")
def test_without_a_gpu_the_plain_command_is_a_dry_run():
    proc = _run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stdout and "dry run" in proc.stdout


def test_dry_run_fails_when_a_needed_file_is_missing(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "gpu-check.sh")
    proc = _run("--dry-run", cwd=tmp_path)
    assert proc.returncode == 1
    assert "missing: tests/test_gpu_parity.py" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path on a machine without a GPU")
def test_stage_runner_records_failures_and_skips(tmp_path):
    """Forced to run without a GPU: the env stage fails (no CUDA device), the onnxruntime-CUDA stage is
    skipped with its reason, the summary JSON says so and the exit status is 1."""
    proc = _run(
        GPU_CHECK_FORCE_RUN="1",
        GPU_CHECK_STAGES="env onnxruntime-cuda",
        GPU_CHECK_RESULTS=str(tmp_path / "results"),
        GPU_CHECK_LOGS=str(tmp_path / "logs"),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "results" / "gpu_check_no-gpu.json").read_text())
    stages = {s["stage"]: s for s in record["stages"]}
    assert record["passed"] is False
    assert stages["env"]["status"] == "failed" and "no CUDA device" in stages["env"]["note"]
    assert stages["onnxruntime-cuda"]["status"] == "skipped"
    assert "CUDA execution provider" in stages["onnxruntime-cuda"]["note"]
    assert "FAILED" in proc.stdout


def test_gpu_stage_modules_import_without_pyzmq():
    code = (
        "import sys; sys.path.insert(0, 'scripts'); import gpu_env; "
        "f = gpu_env.import_without_zmq(); print(f); sys.exit(1 if f else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path on a machine without a GPU")
def test_an_optional_stage_failing_does_not_fail_the_check(tmp_path):
    proc = _run(
        GPU_CHECK_FORCE_RUN="1",
        GPU_CHECK_STAGES="bench-compile",
        GPU_CHECK_RESULTS=str(tmp_path / "results"),
        GPU_CHECK_LOGS=str(tmp_path / "logs"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "results" / "gpu_check_no-gpu.json").read_text())
    (stage,) = record["stages"]
    assert stage["stage"] == "bench-compile" and stage["status"] == "failed-optional"
    assert "needs a CUDA GPU" in stage["note"]
    assert record["passed"] is True
