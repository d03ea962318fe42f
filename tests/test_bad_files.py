"""Bad checkpoint files: each is one clear error line naming the file and the problem, a non-zero
exit and nothing written or bound, from `predict` and `serve`; suspicious statistics and a missing
view are warned about (issue 11, Files)."""

from __future__ import annotations

import json
import logging
import shutil
import struct

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.types import Observation

runner = CliRunner()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "flow")


@pytest.fixture
def ckpt(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "ckpt")


def _obs_file(path):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        **{"image.face_view": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)},
        state=rng.uniform(-1, 1, 7).astype(np.float32),
        instruction=np.array("fold the towel"),
    )
    return path


def _predict(ckpt, tmp_path):
    out = tmp_path / "result.npz"
    r = runner.invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--observation",
            str(_obs_file(tmp_path / "o.npz")),
            "--out",
            str(out),
        ],
    )
    return r, out


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, output
    return lines[0]


def _truncate(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(ckpt):
    (ckpt / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))


def _huge_header(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])


def _header_not_json(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"\xff" * length + data[8 + length :])


def _tokenizer_garbage(ckpt):
    (ckpt / "tokenizer.json").write_bytes(b"\x00garbage{{{")


def _tokenizer_empty(ckpt):
    (ckpt / "tokenizer.json").write_text("")


def _hidden_size_text(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hidden_size"] = "sixty-four"
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _vision_depth_float(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vision_config"]["depth"] = 1.5
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _norm_stats_garbage(ckpt):
    (ckpt / "norm_stats.json").write_text('{"norm_stats": {"action": {"q01": ["a"], "q99": [1]}}}')


BAD_FILES = {
    "truncated safetensors": (_truncate, r"model\.safetensors.*truncated"),
    "garbage safetensors": (_garbage, r"model\.safetensors.*(header|truncated)"),
    "2^40 header length": (_huge_header, r"model\.safetensors: header length 1099511627776 bytes"),
    "header not json": (_header_not_json, r"model\.safetensors: the header is not valid JSON"),
    "garbage tokenizer.json": (_tokenizer_garbage, r"tokenizer\.json: not a valid tokenizers JSON file"),
    "empty tokenizer.json": (_tokenizer_empty, r"tokenizer\.json: not a valid tokenizers JSON file"),
    "non-integer hidden_size": (
        _hidden_size_text,
        r"config\.json hidden_size must be an integer, got 'sixty-four'",
    ),
    "non-integer vision depth": (
        _vision_depth_float,
        r"config\.json vision_config\.depth must be an integer",
    ),
    "bad norm stats": (_norm_stats_garbage, r"norm_stats\.json: 'action' quantiles must be lists of numbers"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_predict_names_the_bad_file_in_one_line(ckpt, tmp_path, case):
    corrupt, message = BAD_FILES[case]
    corrupt(ckpt)
    r, out = _predict(ckpt, tmp_path)
    assert r.exit_code == 1, r.output
    import re

    assert re.search(message, _one_error_line(r.output)), r.output
    assert not out.exists()


@pytest.mark.parametrize("case", ["truncated safetensors", "empty tokenizer.json", "non-integer hidden_size"])
def test_serve_refuses_a_bad_checkpoint_before_binding(ckpt, tmp_path, case):
    corrupt, message = BAD_FILES[case]
    corrupt(ckpt)
    endpoint = tmp_path / "endpoint"
    r = runner.invoke(
        app,
        ["serve", "--checkpoint", str(ckpt), "--bind", "tcp://127.0.0.1:*", "--endpoint-file", str(endpoint)],
    )
    assert r.exit_code == 1, r.output
    import re

    assert re.search(message, _one_error_line(r.output)), r.output
    assert not endpoint.exists()


def test_nan_weights_give_an_error_not_a_nan_chunk(ckpt, tmp_path):
    sd = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v.fill_(float("nan")) for k, v in sd.items()}, str(ckpt / "model.safetensors"))
    r, out = _predict(ckpt, tmp_path)
    assert r.exit_code == 1
    assert "NaN or infinity" in _one_error_line(r.output)
    assert not out.exists()


def _obs(views=("face_view", "right_wrist_view")) -> Observation:
    rng = np.random.default_rng(0)
    return Observation(
        stamp=0.0,
        images={v: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for v in views},
        state=rng.uniform(-1, 1, 7).astype(np.float32),
        instruction="fold the towel",
    )


def _rewrite_stats(ckpt, edit):
    table = json.loads((ckpt / "norm_stats.json").read_text())
    edit(table["norm_stats"])
    (ckpt / "norm_stats.json").write_text(json.dumps(table))


def test_short_norm_stats_are_warned_about_by_dim(ckpt, caplog):
    def shorten(stats):
        for q in ("q01", "q99"):
            stats["action"][q] = stats["action"][q][:5]

    _rewrite_stats(ckpt, shorten)
    with caplog.at_level(logging.WARNING, logger="wall_runtime.model.normalizer"):
        model = WallOSS.from_checkpoint(ckpt)
    text = caplog.text
    assert "action statistics" in text and "have 5 dims but the layout has 7 real dims" in text
    assert "follow_right_ee_rotation[2], follow_right_gripper[0]" in text
    # as the reference: padded with min 0 / delta 1
    assert (
        model.normalizers.action.min("default")[5] == 0 and model.normalizers.action.delta("default")[6] == 1
    )
    assert "state statistics" not in text


def test_stats_covering_the_real_dims_are_silent(ckpt, caplog):
    with caplog.at_level(logging.WARNING):
        WallOSS.from_checkpoint(ckpt)
    assert "statistics" not in caplog.text


def test_degenerate_quantiles_are_warned_about(ckpt, caplog):
    def pin(stats):
        stats["observation.state"]["q99"][2] = stats["observation.state"]["q01"][2]

    _rewrite_stats(ckpt, pin)
    with caplog.at_level(logging.WARNING, logger="wall_runtime.model.normalizer"):
        WallOSS.from_checkpoint(ckpt)
    assert "q01 == q99 on follow_right_ee_cartesian_pos[2]" in caplog.text
    assert "state statistics" in caplog.text


def test_a_missing_view_is_warned_about_once(pristine, caplog):
    model = WallOSS.from_checkpoint(pristine)
    with caplog.at_level(logging.WARNING, logger="wall_runtime.model.preprocess"):
        model.preprocess([_obs()])
        assert "without view" not in caplog.text
        model.preprocess([_obs(("face_view",))])
        model.preprocess([_obs(("face_view",))])
    assert caplog.text.count("without view(s) ['right_wrist_view']") == 1
