"""Quantile min-max normalisation: round trips, clamping, padding, key resolution, file sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wall_runtime.model.normalizer import (
    Normalizer,
    NormalizerError,
    Normalizers,
    load_normalizers,
    write_norm_stats_json,
    write_normalizer_pth,
)

Q01 = np.array([-1.0, 0.0, 2.0], np.float32)
Q99 = np.array([1.0, 0.5, 6.0], np.float32)


@pytest.fixture
def norm() -> Normalizer:
    return Normalizer({"arm": (Q01, Q99 - Q01)}, dim=5, label="action")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1, 1, width=32), min_size=5, max_size=5))
def test_round_trip_from_normalised(values):
    n = Normalizer({"arm": (Q01, Q99 - Q01)}, dim=5, label="action")
    y = np.array(values, np.float32)
    np.testing.assert_allclose(n.normalize(n.unnormalize(y, "arm"), "arm"), y, atol=2e-6)


def test_round_trip_inside_the_quantiles(norm):
    rng = np.random.default_rng(0)
    x = np.concatenate([Q01 + rng.uniform(0, 1, 3).astype(np.float32) * (Q99 - Q01), [0.3, 0.7]])
    x = x.astype(np.float32)
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(x, "arm"), "arm"), x, rtol=1e-6, atol=1e-6)


def test_formula_and_clamp(norm):
    x = np.array([0.0, 0.25, 100.0, -3.0, 0.5], np.float32)
    y = norm.normalize(x, "arm")
    np.testing.assert_allclose(y[:2], [0.0, 0.0], atol=1e-7)
    assert y[2] == 1.0  # clamped
    # padded tail: min 0 / delta 1 -> normalize(raw 0) = -1
    assert y[3] == -1.0
    np.testing.assert_allclose(y[4], 0.0, atol=1e-7)
    np.testing.assert_array_equal(norm.normalize(np.zeros(5, np.float32), "arm")[3:], [-1.0, -1.0])


def test_zero_delta_counts_as_one():
    n = Normalizer({"k": (np.array([2.0]), np.array([0.0]))}, dim=1, label="state")
    assert n.normalize(np.array([2.5], np.float32), "k")[0] == pytest.approx(0.0)


def test_stats_wider_than_config_rejected():
    with pytest.raises(NormalizerError, match="more than the configured"):
        Normalizer({"k": (np.zeros(4), np.ones(4))}, dim=3, label="action")


def test_wrong_width_vector_rejected(norm):
    with pytest.raises(NormalizerError, match="4 dims, expected 5"):
        norm.normalize(np.zeros(4, np.float32), "arm")


def _pair(keys):
    stats = {k: (Q01, Q99 - Q01) for k in keys}
    return Normalizers(Normalizer(stats, 3, "action"), Normalizer(stats, 3, "state"), "test")


def test_key_resolution():
    two = _pair(["x2_normal", "agibot"])
    assert two.resolve_key("agibot") == "agibot"
    with pytest.raises(NormalizerError, match=r"unknown norm key 'droid'.*x2_normal"):
        two.resolve_key("droid")
    with pytest.raises(NormalizerError, match="several norm keys"):
        two.resolve_key(None)
    assert _pair(["x2_normal_v2", "agibot"]).resolve_key("x2_normal") == "x2_normal_v2"
    assert _pair(["only"]).resolve_key("anything") == "only"
    assert _pair(["only"]).resolve_key(None) == "only"


def test_norm_stats_json_is_preferred_and_quantile_based(tmp_path):
    write_norm_stats_json(tmp_path / "norm_stats.json", (Q01, Q99), (Q01[:2], Q99[:2]))
    write_normalizer_pth(tmp_path / "normalizer_action.pth", {"other": (np.zeros(3), np.ones(3))})
    write_normalizer_pth(tmp_path / "normalizer_propri.pth", {"other": (np.zeros(3), np.ones(3))})
    ns = load_normalizers(tmp_path, action_dim=4, state_dim=3, norm_key="robot")
    assert ns.keys == ("robot",)
    np.testing.assert_array_equal(ns.action.min("robot"), [*Q01, 0.0])
    np.testing.assert_array_equal(ns.action.delta("robot"), [*(Q99 - Q01), 1.0])
    np.testing.assert_array_equal(ns.state.delta("robot"), [*(Q99[:2] - Q01[:2]), 1.0])
    # mean/std are present in the file but unused
    table = json.loads((tmp_path / "norm_stats.json").read_text())
    assert "mean" in table["norm_stats"]["action"]


def test_pth_tables_with_several_keys(tmp_path):
    write_normalizer_pth(
        tmp_path / "normalizer_action.pth", {"a": (Q01, Q99 - Q01), "b": (Q01 + 1, Q99 - Q01)}
    )
    write_normalizer_pth(tmp_path / "normalizer_propri.pth", {"a": (Q01, Q99 - Q01), "b": (Q01, Q99)})
    ns = load_normalizers(tmp_path, action_dim=3, state_dim=3)
    assert set(ns.keys) == {"a", "b"}
    np.testing.assert_array_equal(ns.action.min("b"), Q01 + 1)
    with pytest.raises(NormalizerError, match="unknown norm key 'c'"):
        ns.resolve_key("c")


def test_missing_statistics_named(tmp_path):
    write_normalizer_pth(tmp_path / "normalizer_action.pth", {"a": (Q01, Q99)})
    with pytest.raises(NormalizerError, match=r"normalizer_propri\.pth"):
        load_normalizers(tmp_path, 3, 3)
