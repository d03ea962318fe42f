"""Flow sampler: cache == full recompute, batching with left padding, schedules, masked dofs, x-pred, RTC."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wall_runtime.model.decoder import KVCache, WallOSSNet, random_init_
from wall_runtime.model.net_config import tiny_net_config
from wall_runtime.model.sampler import (
    DenoiseModule,
    PrefixModule,
    RTCGuidance,
    SamplerSettings,
    action_attention_schedule,
    denoise,
    denoise_full_recompute,
    denoise_stepwise,
    inference_times,
    rtc_guidance_weight,
    time_callable,
    time_denoise_strategies,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is faster, and far faster on a shared, oversubscribed CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PAD = 3  # left padding of the second batch item


def _net(variant: str, **overrides) -> WallOSSNet:
    return random_init_(WallOSSNet(tiny_net_config(variant, **overrides)), seed=11).eval()


def _inputs(net: WallOSSNet, seed: int = 0, lp: int = 10):
    """Batch of 2 with different prompt lengths: item 1 is left-padded by PAD."""
    cfg = net.cfg
    g = torch.Generator().manual_seed(seed)
    batch, horizon, dim = 2, cfg.action_horizon, cfg.action_dim
    embeds = torch.randn(batch, lp, cfg.hidden_size, generator=g)
    mask = torch.ones(batch, lp, dtype=torch.long)
    mask[1, :PAD] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # a few 3-D positions (as image tokens would have) so mRoPE sections all matter
    pos = torch.stack([pos, pos + (torch.arange(lp) % 3), pos + (torch.arange(lp) % 2)])
    last = pos.amax(dim=(0, 2))
    suffix_pos = (last[:, None] + 1 + torch.arange(horizon))[None].expand(3, -1, -1).contiguous()
    noise = torch.randn(batch, horizon, dim, generator=g)
    dof_mask = torch.ones(batch, horizon, dim)
    dof_mask[0, :, -2:] = 0  # item 0 has two padded dofs, item 1 none
    padding_action = torch.full((batch, dim), -1.0)
    padding_action[:, 0] = 0.25
    return dict(
        prefix_embeds=embeds,
        prefix_position_ids=pos,
        prefix_mask=mask,
        noise=noise,
        dof_mask=dof_mask,
        suffix_position_ids=suffix_pos,
        padding_action=padding_action,
    )


def _cached(net, x, settings=None, guidance=None, fn=denoise):
    kv = net.prefix(x["prefix_embeds"], x["prefix_position_ids"], x["prefix_mask"])
    return fn(
        net,
        kv,
        x["noise"],
        x["dof_mask"],
        x["suffix_position_ids"],
        x["prefix_mask"],
        settings,
        x["padding_action"],
        guidance,
    )


def _full(net, x, settings=None):
    return denoise_full_recompute(
        net,
        x["prefix_embeds"],
        x["prefix_position_ids"],
        x["prefix_mask"],
        x["noise"],
        x["dof_mask"],
        x["suffix_position_ids"],
        settings,
        x["padding_action"],
    )


def _item(x: dict, i: int) -> dict:
    """Batch item ``i`` alone, without its padding."""
    start = PAD if i == 1 else 0
    out = {k: v[i : i + 1] for k, v in x.items() if k not in ("prefix_position_ids", "suffix_position_ids")}
    out["prefix_embeds"] = out["prefix_embeds"][:, start:]
    out["prefix_mask"] = out["prefix_mask"][:, start:]
    out["prefix_position_ids"] = x["prefix_position_ids"][:, i : i + 1, start:]
    out["suffix_position_ids"] = x["suffix_position_ids"][:, i : i + 1]
    return out


@pytest.mark.parametrize(
    ("variant", "attention"),
    [("flow", "mixed"), ("flow", "causal"), ("flow", "bidirectional"), ("0.5", "causal")],
)
def test_cached_sampler_equals_full_recompute(variant: str, attention: str) -> None:
    net = _net(variant)
    x = _inputs(net)
    settings = SamplerSettings.from_config(net.cfg, action_attention=attention)
    with torch.no_grad():
        cached = _cached(net, x, settings)
        full = _full(net, x, settings)
    assert torch.isfinite(cached).all()
    err = (cached - full).abs().max().item()
    assert err <= 1e-5, err
    assert (cached - x["noise"]).abs().max() > 0.1  # the loop moved the sample


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_left_padded_batch_equals_items_alone(variant: str) -> None:
    net = _net(variant)
    x = _inputs(net, seed=1)
    with torch.no_grad():
        batched = _cached(net, x)
        alone = torch.cat([_cached(net, _item(x, i)) for i in range(2)])
        full_alone = torch.cat([_full(net, _item(x, i)) for i in range(2)])
    assert (batched - alone).abs().max() <= 1e-5
    assert (batched - full_alone).abs().max() <= 1e-5


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_fused_loop_equals_stepwise_loop(variant: str) -> None:
    net = _net(variant)
    x = _inputs(net, seed=2)
    with torch.no_grad():
        fused = _cached(net, x)
        stepwise = _cached(net, x, fn=denoise_stepwise)
        module = DenoiseModule(net)
        k, v = PrefixModule(net)(x["prefix_embeds"], x["prefix_position_ids"], x["prefix_mask"])
        exported_shape = module(
            k, v, x["noise"], x["dof_mask"], x["suffix_position_ids"], x["prefix_mask"], x["padding_action"]
        )
    assert (fused - stepwise).abs().max() <= 1e-6
    assert torch.equal(fused, exported_shape)


def test_mixed_schedule_is_really_used() -> None:
    """FLOW's mixed schedule differs from all-causal by far more than rounding (spec §10)."""
    net = _net("flow")
    x = _inputs(net, seed=3)
    with torch.no_grad():
        mixed = _cached(net, x, SamplerSettings.from_config(net.cfg))
        causal = _cached(net, x, SamplerSettings.from_config(net.cfg, action_attention="causal"))
    assert (mixed - causal).abs().max() > 1e-3
    assert action_attention_schedule("mixed", 4) == [True, False, False, False]
    assert action_attention_schedule("causal", 3) == [True] * 3
    assert action_attention_schedule("bidirectional", 2) == [False] * 2


def test_time_schedules() -> None:
    flow = SamplerSettings.from_config(tiny_net_config("flow"))
    times = flow.times()
    assert times.dtype == torch.float32
    assert torch.equal(times, torch.linspace(0, 1, 11, dtype=torch.float32))
    assert times[-1].item() == 1.0 and flow.causal_schedule()[:2] == [True, False]

    v05 = SamplerSettings.from_config(tiny_net_config("0.5"))
    assert v05.times()[-1].item() == pytest.approx(0.999, abs=1e-7)
    assert torch.allclose(v05.times(), torch.linspace(0, 1, 11) * 0.999)

    shifted = inference_times(4, time_shift=2.0, time_scale=0.999)
    expected = [0.999 * 2 * t / (1 + t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert shifted.tolist() == pytest.approx(expected, abs=1e-6)
    assert len(inference_times(10)) == 11


def test_masked_dofs_end_at_padding_values_for_0_5() -> None:
    """0.5 overrides masked dofs at every step: x_N = noise + t_N·(pad − noise), t_N = 0.999."""
    net = _net("0.5")
    x = _inputs(net, seed=4)
    with torch.no_grad():
        out = _cached(net, x)
    masked = x["dof_mask"] == 0
    pad = x["padding_action"][:, None, :].expand_as(out)
    expected = x["noise"] + 0.999 * (pad - x["noise"])
    assert masked.any()
    assert (out[masked] - expected[masked]).abs().max() <= 1e-5
    # item 1 has no masked dof: the padding action must not touch it
    other = x | {"padding_action": torch.full_like(x["padding_action"], 0.7)}
    with torch.no_grad():
        out_other = _cached(net, other)
    assert torch.equal(out[1], out_other[1])


def test_flow_has_no_override_by_default_and_prefill_option() -> None:
    net = _net("flow")
    x = _inputs(net, seed=5)
    masked = x["dof_mask"] == 0
    with torch.no_grad():
        default = _cached(net, x)
        prefill = _cached(net, x, SamplerSettings.from_config(net.cfg, dof_override="prefill"))
        every = _cached(net, x, SamplerSettings.from_config(net.cfg, dof_override="every_step"))
    pad = x["padding_action"][:, None, :].expand_as(default)
    assert (default[masked] - pad[masked]).abs().max() > 0.1  # not pinned
    assert (every[masked] - pad[masked]).abs().max() <= 1e-5  # final t = 1: exactly the pad value
    assert not torch.allclose(prefill, default) and not torch.allclose(prefill, every)


def test_x_prediction_velocity() -> None:
    """use_x_pred: v = (pred − x_t) / clamp(1 − t, 0.05), pred being the network's direct output."""
    net_x = _net("0.5", use_x_pred=True)
    net_v = WallOSSNet(dataclasses.replace(net_x.cfg, use_x_pred=False)).eval()
    net_v.load_state_dict(net_x.state_dict())
    x = _inputs(net_x, seed=6)
    with torch.no_grad():
        kv = net_x.prefix(x["prefix_embeds"], x["prefix_position_ids"], x["prefix_mask"])
        x_t = x["noise"] * 0.5
        for t_value in (0.0, 0.3, 0.97):
            t = torch.full((2,), t_value)
            args = (kv, x_t, t, x["dof_mask"], x["suffix_position_ids"], x["prefix_mask"], True)
            pred = net_v.denoise_step(*args)
            v = net_x.denoise_step(*args)
            expected = (pred - x_t) / max(1 - t_value, 0.05)
            assert (v - expected).abs().max() <= 1e-5, t_value
        cached = _cached(net_x, x)
        full = _full(net_x, x)
    assert (cached - full).abs().max() <= 1e-5


def test_noise_is_honoured() -> None:
    net = _net("0.5")
    x = _inputs(net, seed=7)
    with torch.no_grad():
        a = _cached(net, x)
        b = _cached(net, x | {"noise": x["noise"] + 0.5})
        c = _cached(net, x)
    assert torch.equal(a, c)
    assert (a - b).abs().max() > 0.1


def test_rtc_guidance_weight() -> None:
    t = torch.tensor([0.0, 0.5, 0.9, 1.0])
    w = rtc_guidance_weight(t, max_guidance=5.0)
    r2 = (1 - 0.5) ** 2 / (0.5**2 + 0.5**2)
    assert w[0] == 5.0 and w[-1] == 5.0
    assert w[1].item() == pytest.approx(min(5.0, 0.5 / (0.5 * r2)))
    assert w[2].item() == 5.0  # (0.81 + 0.01) / (0.9 · 0.1) ≈ 9.1, clipped
    assert rtc_guidance_weight(torch.tensor([0.3]), 100.0).item() == pytest.approx(
        (0.09 + 0.49) / (0.3 * 0.7)
    )


@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_rtc_guidance_pulls_weighted_rows_toward_target(variant: str) -> None:
    net = _net(variant)
    x = _inputs(net, seed=8)
    horizon = net.cfg.action_horizon
    g = torch.Generator().manual_seed(9)
    target = torch.randn(x["noise"].shape, generator=g).clamp(-1, 1)
    weights = torch.zeros(2, horizon)
    weights[:, : horizon // 2] = 1.0
    settings = SamplerSettings.from_config(net.cfg, dof_override="none")
    with torch.no_grad():
        free = _cached(net, x, settings)
        guided = _cached(net, x, settings, RTCGuidance(target, weights, max_guidance=5.0))
        zero = _cached(net, x, settings, RTCGuidance(target, torch.zeros_like(weights)))
    held, loose = weights[0] == 1, weights[0] == 0
    err_free = (free - target).abs()
    err_guided = (guided - target).abs()
    # weighted rows: much closer to the target than without guidance
    assert err_guided[:, held].mean() < 0.25 * err_free[:, held].mean()
    # weight-0 rows stay free: not dragged onto the target
    assert err_guided[:, loose].mean() > 0.5 * err_free[:, loose].mean()
    assert err_guided[:, loose].mean() > 4 * err_guided[:, held].mean()
    # zero weights are no guidance at all
    assert (zero - free).abs().max() <= 1e-6


def test_rtc_guidance_rejects_bad_shapes() -> None:
    net = _net("flow")
    x = _inputs(net)
    with pytest.raises(ValueError, match="weights"):
        _cached(net, x, guidance=RTCGuidance(x["noise"], torch.ones(2, 3, 1, 1)))
    with pytest.raises(ValueError, match="finite"):
        _cached(
            net, x, guidance=RTCGuidance(x["noise"] * float("nan"), torch.ones(2, net.cfg.action_horizon))
        )


def test_input_shape_errors_are_clear() -> None:
    net = _net("flow")
    x = _inputs(net)
    with pytest.raises(ValueError, match="position_ids"):
        net.prefix(x["prefix_embeds"], x["prefix_position_ids"][:2], x["prefix_mask"])
    kv = net.prefix(x["prefix_embeds"], x["prefix_position_ids"], x["prefix_mask"])
    args = [kv, x["noise"], x["dof_mask"], x["suffix_position_ids"], x["prefix_mask"]]
    for index, bad, match in [
        (2, x["dof_mask"][..., :-1], "dof_mask"),
        (1, x["noise"][..., :-1], "action_dim"),
        (3, x["suffix_position_ids"][:, :, :-1], "suffix_position_ids"),
        (0, KVCache(kv.k[:, :, :, 1:], kv.v[:, :, :, 1:]), "kv cache"),
    ]:
        with pytest.raises(ValueError, match=match):
            denoise(net, *[bad if i == index else a for i, a in enumerate(args)])
    with pytest.raises(ValueError, match="padding_action"):
        denoise(net, *args, padding_action=torch.zeros(2, 3))


def test_timing_helpers_report_every_strategy() -> None:
    net = _net("0.5")
    x = _inputs(net)
    stats = time_callable(lambda: None, repeats=3, warmup=0)
    assert stats.repeats == 3 and stats.min_ms <= stats.p50_ms <= stats.max_ms
    result = time_denoise_strategies(
        net,
        x["prefix_embeds"],
        x["prefix_position_ids"],
        x["prefix_mask"],
        x["noise"],
        x["dof_mask"],
        x["suffix_position_ids"],
        padding_action=x["padding_action"],
        repeats=1,
        warmup=0,
    )
    assert set(result) == {
        "prefix",
        "denoise_fused",
        "denoise_stepwise",
        "prefix_plus_denoise",
        "full_recompute",
    }
    assert all(s.mean_ms > 0 for s in result.values())


@pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning"
)
@pytest.mark.parametrize("variant", ["flow", "0.5"])
def test_prefix_and_fused_denoise_export_to_onnx(variant: str, tmp_path) -> None:
    """The export-shaped modules trace to ONNX and onnxruntime reproduces them (static shapes)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = _net(variant)
    x = _inputs(net, seed=10)
    prefix = PrefixModule(net).eval()
    settings = SamplerSettings.from_config(net.cfg, num_steps=3, dof_override="every_step")
    fused = DenoiseModule(net, settings).eval()
    prefix_args = (x["prefix_embeds"], x["prefix_position_ids"], x["prefix_mask"])
    with torch.no_grad():
        k, v = prefix(*prefix_args)
        denoise_args = (
            k,
            v,
            x["noise"],
            x["dof_mask"],
            x["suffix_position_ids"],
            x["prefix_mask"],
            x["padding_action"],
        )
        expected = fused(*denoise_args)
    names = ["k", "v", "noise", "dof_mask", "suffix_position_ids", "prefix_mask", "padding_action"]
    # the input shape checks become constants under tracing, by design: shapes are static per robot
    torch.onnx.export(prefix, prefix_args, tmp_path / "prefix.onnx", dynamo=False, opset_version=17)
    torch.onnx.export(
        fused, denoise_args, tmp_path / "denoise.onnx", dynamo=False, opset_version=17, input_names=names
    )
    onnx.checker.check_model(str(tmp_path / "denoise.onnx"))
    session = ort.InferenceSession(str(tmp_path / "prefix.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), prefix_args, strict=True)}
    k_ort, _ = session.run(None, feeds)
    assert abs(k_ort - k.numpy()).max() <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "denoise.onnx"), providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, denoise_args, strict=True)}
    (out,) = session.run(None, feeds)
    assert abs(out - expected.numpy()).max() <= 1e-4


def test_rtc_guidance_with_inference_mode_cache() -> None:
    """A cache built under inference_mode still works with guidance; guidance inside it is a clear error."""
    net = _net("0.5")
    x = _inputs(net, seed=12)
    guidance = RTCGuidance(x["noise"] * 0, torch.ones(2, net.cfg.action_horizon))
    with torch.inference_mode():
        kv = net.prefix(x["prefix_embeds"], x["prefix_position_ids"], x["prefix_mask"])
    args = (x["noise"], x["dof_mask"], x["suffix_position_ids"], x["prefix_mask"], None, x["padding_action"])
    with torch.no_grad():
        out = denoise(net, kv, *args, guidance)
        ref = _cached(net, x, guidance=guidance)
    assert torch.equal(out, ref)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        denoise(net, kv, *args, guidance)
