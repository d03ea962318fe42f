"""`wall-runtime model-size`: both generations at published size on the meta device (fast, no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wall_runtime.cli import app
from wall_runtime.model.size import (
    BACKENDS,
    BATCHES,
    PUBLISHED_PARAMETERS,
    kv_cache_bytes,
    published_config,
    size_report,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["flow", "0.5"])
def report(request):
    return size_report(request.param)


def test_counts_match_the_published_sizes_within_2_percent(report):
    total = report["parameters"]["total"]
    assert abs(total / PUBLISHED_PARAMETERS[report["variant"]] - 1) <= 0.02, total
    parts = {k: v for k, v in report["parameters"].items() if k != "total"}
    assert sum(parts.values()) == total
    assert set(parts) == {"vision", "embedding", "language_model", "action_expert", "action_head"}
    # the shared backbone is the same in both generations: Qwen2.5-VL-3B without its tied lm_head
    assert parts["language_model"] + parts["embedding"] == pytest.approx(3.086e9, rel=0.002)


def test_published_shapes():
    flow, v05 = published_config("flow"), published_config("0.5")
    assert flow.net.action_dim == 20 and v05.net.action_dim == 26
    assert flow.net.expert_hidden == (2048, 2048) and v05.net.expert_hidden == (2048, 1024)
    assert v05.vision["intermediate_size"] == 3456  # the 1.1.0 padded ViT FFN
    assert flow.vision["intermediate_size"] == 3420


def test_every_parameter_is_in_a_graph_and_large_graphs_need_external_data(report):
    from wall_runtime.model.size import parameters

    # what only the VLM stream's output needs (text generation): the last layer's expert-0 FFN (and,
    # 0.5, its o_proj / post-attention norm) and 0.5's final VLM norm
    unused = {p.name for p in parameters(published_config(report["variant"])) if not p.graphs}
    last = "model.layers.35."
    expected = {last + f"moe.experts.0.{m}_proj.weight" for m in ("gate", "up", "down")}
    if report["variant"] == "0.5":
        expected |= {
            last + "self_attn.o_proj_experts.0.weight",
            last + "post_attention_layernorms.0.weight",
            "model.norms.0.weight",
        }
    assert unused == expected
    g = report["graphs"]
    covered = g["prefix"]["parameters"] + g["denoise"]["parameters"] + report["unused_by_flow_inference"]
    assert covered >= report["parameters"]["total"]
    assert g["prefix"]["onnx_external_data"]  # ~14 GiB of fp32: over protobuf's 2 GiB
    assert g["prefix"]["onnx_fp32_bytes"] == 4 * g["prefix"]["parameters"]


def test_plan_covers_backends_views_batches_and_grows(report):
    rows = {(r["backend"], r["views"], r["batch"]): r for r in report["plan"]}
    assert set(rows) == {(b, v, n) for b in BACKENDS for v in (1, 2, 3) for n in BATCHES}
    for b in BACKENDS:
        for v in (1, 2, 3):
            totals = [rows[(b, v, n)]["total_bytes"] for n in BATCHES]
            assert totals == sorted(totals)
        r = rows[(b, 3, 8)]
        assert r["total_bytes"] == r["weights_bytes"] + r["kv_cache_bytes"] + r["activation_bytes"]
    # bf16 on CUDA: about 2 bytes per parameter (norms and the action head stay fp32)
    cuda = rows[("torch-cuda", 1, 1)]["weights_bytes"]
    assert 2 * report["parameters"]["total"] < cuda < 2.01 * report["parameters"]["total"]


def test_kv_cache_matches_the_networks_cache_shape():
    from wall_runtime.model.pipeline import empty_network
    from wall_runtime.model.size import prompt_length

    cfg = published_config("0.5")
    net = empty_network(cfg)
    shape = net.kv_cache_shape(4, prompt_length(cfg, 3))
    assert kv_cache_bytes(cfg, 3, 4, 2) == 2 * int(np.prod(shape)) * 2


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_graph_attribution_matches_the_exported_onnx_graphs(tmp_path, variant):
    """On the tiny model, the parameters the report puts in each graph are the weights the exporter
    writes into it (the prefix graph exactly; the denoise graph also holds a few folded constants)."""
    import onnx

    from wall_runtime.backends.static_shapes import resolve_shapes
    from wall_runtime.export.onnx_export import export_graphs
    from wall_runtime.model.pipeline import WallOSS
    from wall_runtime.model.size import _graph, _part
    from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint

    model = WallOSS.from_checkpoint(write_tiny_checkpoint(tmp_path / "ckpt", variant))
    graphs = export_graphs(
        model.net, model.net.visual, resolve_shapes(model), model.settings, tmp_path / "out"
    )
    last = model.cfg.net.num_layers - 1
    for which, path in (("prefix", graphs.prefix), ("denoise", graphs.denoise)):
        exported = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
        attributed = sum(
            p.numel() for n, p in model.net.named_parameters() if which in _graph(n, _part(n), last)
        )
        if which == "prefix":
            assert exported == attributed, (which, exported, attributed)
        else:
            assert attributed <= exported <= 1.05 * attributed, (which, exported, attributed)


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_cli_json_is_the_committed_result(variant):
    r = CliRunner().invoke(app, ["model-size", "--variant", variant, "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    committed = json.loads((ROOT / "benchmarks" / "results" / f"model_size_{variant}.json").read_text())
    assert printed == committed, (
        "regenerate: wall-runtime model-size --variant V --json --out benchmarks/results/model_size_V.json"
    )
    assert printed == json.loads(json.dumps(size_report(variant)))


def test_cli_table_and_bad_variant():
    r = CliRunner().invoke(app, ["model-size", "--variant", "flow"])
    assert r.exit_code == 0 and "memory plan" in r.output and "tensorrt" in r.output
    r = CliRunner().invoke(app, ["model-size", "--variant", "fast"])
    assert r.exit_code != 0 and "fast" in r.output
