"""Backend options are typed per backend: bad keys and values are one-line errors; --help lists them."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from wall_runtime.backends import load_policy
from wall_runtime.backends.noise import smooth_noise
from wall_runtime.backends.options import (
    OPTIONS,
    BackendOptionError,
    EchoOptions,
    OnnxRuntimeOptions,
    TorchOptions,
    options_help,
    parse_options,
)
from wall_runtime.cli import app


def test_strings_from_the_command_line_come_out_typed() -> None:
    torch = parse_options("torch", {"seed": "7", "cuda_graph": "false", "dtype": "bf16", "noise_knots": "3"})
    assert torch == TorchOptions(seed=7, cuda_graph=False, dtype="bf16", noise_knots=3)
    assert torch.kwargs() == {
        "device": "cpu",
        "dtype": "bf16",
        "seed": 7,
        "noise_knots": 3,
        "cuda_graph": False,
    }
    ort = parse_options(
        "onnxruntime",
        {"cameras": "face_view=640x480,left_wrist_view=320x240", "batch": "2", "providers": "cpu"},
    )
    assert ort == OnnxRuntimeOptions(
        cameras={"face_view": (480, 640), "left_wrist_view": (240, 320)}, batch=2, providers="cpu"
    )
    assert parse_options("echo", {"cameras": "a,b", "delay_ms": "2.5"}) == EchoOptions(
        cameras=("a", "b"), delay_ms=2.5
    )
    # Python values pass through the same checks
    assert parse_options("torch", {"seed": 3, "num_steps": None}).kwargs()["seed"] == 3


@pytest.mark.parametrize(
    ("backend", "values", "message"),
    [
        (
            "onnxruntime",
            {"noise_knot": "3"},
            r"-o noise_knot: not an option of the onnxruntime backend \(valid: .*noise_knots",
        ),
        (
            "torch",
            {"precision": "bf16"},
            r"not an option of the torch backend \(valid: action_attention, cuda_graph",
        ),
        ("torch", {"seed": "x"}, r"-o seed=x: expected an integer"),
        ("torch", {"cuda_graph": "maybe"}, r"-o cuda_graph=maybe: expected true or false"),
        ("tensorrt", {"precision": "int8"}, r"-o precision=int8: expected one of bf16, fp16, fp32"),
        ("onnxruntime", {"cameras": "face_view=640"}, r"-o cameras=face_view=640: camera 'face_view=640'"),
        ("onnxruntime", {"providers": "gpu"}, r"-o providers=gpu: expected one of cpu, cuda, tensorrt"),
        ("jax", {}, r"unknown backend 'jax'"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(backend, values, message) -> None:
    with pytest.raises(BackendOptionError, match=message):
        parse_options(backend, values)


def test_load_policy_checks_options_before_loading() -> None:
    with pytest.raises(BackendOptionError, match="not an option of the echo backend"):
        load_policy(None, "echo", delay=3)
    policy = load_policy(None, "echo", {"action_horizon": "8", "cameras": "face_view"}, action_dim=4)
    assert (policy.metadata.action_horizon, policy.metadata.action_dim) == (8, 4)
    assert policy.metadata.cameras == ("face_view",)


def test_defaults_agree_with_the_export_code() -> None:
    from wall_runtime.backends.options import GraphOptions
    from wall_runtime.backends.static_shapes import DEFAULT_TEXT_TOKENS

    assert GraphOptions().text_tokens == DEFAULT_TEXT_TOKENS


def test_every_registered_backend_has_typed_options() -> None:
    """A backend ``load_policy`` knows but the options table does not is unservable (``serve
    --backend expert`` failed with "unknown backend" while the registry listed it)."""
    from wall_runtime.backends import BACKENDS

    assert set(BACKENDS) == set(OPTIONS)
    for backend in BACKENDS:
        parse_options(backend, {})  # the defaults parse


def test_expert_options_reach_the_policy() -> None:
    policy = load_policy(None, "expert", {"variant": "0.5", "horizon": "16", "cameras": "face_view,top"})
    assert policy.metadata.action_horizon == 16 and policy.metadata.cameras == ("face_view", "top")
    with pytest.raises(BackendOptionError, match=r"variant=0\.7"):
        parse_options("expert", {"variant": "0.7"})


def test_every_backend_documents_every_option() -> None:
    for backend in OPTIONS:
        lines = options_help(backend)
        assert lines and all(": " in line and line.split(" ")[0] for line in lines)


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_help_lists_the_valid_keys(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for backend in ("torch", "onnxruntime", "tensorrt"):
        assert f"-o options of the {backend} backend" in result.output
    for key in ("noise_knots", "cuda_graph", "providers", "precision", "text_tokens"):
        assert f"{key} (" in result.output


def test_a_bad_key_stops_demo_and_serve_before_they_start() -> None:
    runner = CliRunner()
    demo = runner.invoke(app, ["demo", "--backend", "onnxruntime", "-o", "nope=1"])
    assert demo.exit_code == 2
    assert "nope: not an option of the onnxruntime backend (valid: batch" in " ".join(demo.output.split())
    serve = runner.invoke(app, ["serve", "--backend", "echo", "-o", "action_horizon=many"])
    assert serve.exit_code == 2
    assert "action_horizon=many: expected an integer" in " ".join(serve.output.split())


def test_smooth_noise_is_unit_variance_and_smooth() -> None:
    noise = smooth_noise(np.random.default_rng(0), 3, 32, 2000)
    assert noise.shape == (32, 2000) and noise.dtype == np.float32
    assert abs(float(noise.std()) - 1.0) < 0.05
    # neighbouring rows are strongly correlated (i.i.d. noise would give ~0)
    assert float(np.corrcoef(noise[10], noise[11])[0, 1]) > 0.9


@pytest.mark.slow
def test_demo_runs_on_onnxruntime(tmp_path, monkeypatch) -> None:
    """`demo --backend onnxruntime` (listed in the README) crashed on the demo's noise_knots option;
    the graphs are now sized from the robot's cameras and take the smooth demo noise too."""
    monkeypatch.setenv("WALL_RUNTIME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--robot",
            "sim_arm",
            "--backend",
            "onnxruntime",
            "--duration",
            "4",
            "--no-live",
            "--report",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["policy"]["backend"] == "onnxruntime"
    assert summary["counters"]["chunks_received"] >= 1
