"""`wall-runtime make-tiny-checkpoint` and `wall-runtime predict`, end to end through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.model.commands import read_observation
from wall_runtime.model.pipeline import WallOSS

runner = CliRunner()


def _write_obs(path, **extra):
    rng = np.random.default_rng(0)
    arrays = {
        "image.face_view": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "image.right_wrist_view": rng.integers(0, 256, (64, 48, 3), dtype=np.uint8),
        "state": rng.uniform(-1, 1, 7).astype(np.float32),
        "instruction": np.array("fold the towel"),
    }
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("variant, dim", [("flow", 10), ("0.5", 12)])
def test_make_tiny_checkpoint_then_predict(tmp_path, variant, dim):
    ckpt = tmp_path / "ckpt"
    made = runner.invoke(app, ["make-tiny-checkpoint", "--variant", variant, str(ckpt)])
    assert made.exit_code == 0, made.output
    for name in ("config.json", "config.yml", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (ckpt / name).is_file()

    obs_path = _write_obs(tmp_path / "obs.npz")
    noise = np.random.default_rng(7).standard_normal((8, dim)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    out = tmp_path / "result.npz"
    args = ["predict", "--checkpoint", str(ckpt), "--observation", str(obs_path)]
    result = runner.invoke(app, [*args, "--noise", str(tmp_path / "noise.npy"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for stage in ("preprocess", "vision", "prefix", "denoise", "postprocess"):
        assert stage in result.output

    saved = np.load(out)
    assert saved["actions_normalized"].shape == saved["actions"].shape == (8, dim)
    # the same as the library on the same observation and noise
    model = WallOSS.from_checkpoint(ckpt)
    expected = model.infer([read_observation(obs_path)], noise=[noise])[0]
    np.testing.assert_allclose(saved["actions_normalized"], expected.actions_normalized, atol=1e-6)
    np.testing.assert_allclose(saved["actions"], expected.actions, atol=1e-6)


def test_predict_reports_bad_inputs(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert runner.invoke(app, ["make-tiny-checkpoint", str(ckpt)]).exit_code == 0
    out = tmp_path / "r.npz"

    def run(obs, *extra):
        return runner.invoke(
            app, ["predict", "--checkpoint", str(ckpt), "--observation", str(obs), "--out", str(out), *extra]
        )

    no_instruction = tmp_path / "a.npz"
    np.savez(
        no_instruction, **{"image.face_view": np.zeros((8, 8, 3), np.uint8)}, state=np.zeros(3, np.float32)
    )
    r = run(no_instruction)
    assert r.exit_code == 1 and "instruction" in r.output

    r = run(_write_obs(tmp_path / "b.npz", **{"image.top_view": np.zeros((8, 8, 3), np.uint8)}))
    assert r.exit_code == 1 and "top_view" in r.output

    np.save(tmp_path / "bad_noise.npy", np.zeros((2, 2), np.float32))
    r = run(_write_obs(tmp_path / "c.npz"), "--noise", str(tmp_path / "bad_noise.npy"))
    assert r.exit_code == 1 and "noise" in r.output

    r = run(_write_obs(tmp_path / "d.npz"), "--norm-key", "nope")
    assert r.exit_code == 0  # one key only: the single-key fallback applies


def test_make_tiny_checkpoint_rejects_unknown_variant(tmp_path):
    r = runner.invoke(app, ["make-tiny-checkpoint", "--variant", "fast", str(tmp_path / "x")])
    assert r.exit_code != 0 and "fast" in r.output
