"""config.json + config.yml resolution: the overrides the reference applies, and clear errors."""

from __future__ import annotations

import copy

import pytest

from wall_runtime.model.config import ConfigError, build_config, load_config
from wall_runtime.model.tiny_checkpoint import tiny_config_files, write_tiny_checkpoint


@pytest.fixture(scope="module")
def flow_files():
    return tiny_config_files("flow", 424)


@pytest.fixture(scope="module")
def v05_files():
    return tiny_config_files("0.5", 424)


def test_flow_config_resolves_reference_behaviour(flow_files):
    cfg = build_config(*flow_files, vocab_size=424)
    assert cfg.variant == "flow"
    n = cfg.net
    assert (n.attention_per_expert, n.norm_per_expert, n.state_as_text) == (False, False, False)
    assert n.action_dim == 10 and n.state_dim == 10 and n.action_horizon == 8
    assert n.time_scale == 1.0 and n.action_attention == "mixed" and n.dof_override == "none"
    assert n.vocab_size == 424  # len(tokenizer), not config.vocab_size
    assert cfg.camera_label("face_view") == "front view"
    assert cfg.camera_label("right_wrist_view") == "right wrist view"


def test_05_config_reads_task_and_data_sections(v05_files):
    cfg = build_config(*v05_files, vocab_size=424)
    n = cfg.net
    assert cfg.variant == "0.5"
    assert n.attention_per_expert and n.norm_per_expert and n.state_as_text
    assert n.expert_hidden == (64, 32) and n.action_hidden_size == 32
    assert n.time_scale == pytest.approx(0.999) and n.action_attention == "causal"
    assert n.dof_override == "every_step"
    assert cfg.data.cameras == ("face_view", "right_wrist_view")
    # data.camera_name_mapping, else the raw key (1.1.0 serving)
    assert cfg.camera_label("face_view") == "front view"
    assert cfg.camera_label("right_wrist_view") == "right_wrist_view"
    assert cfg.data.max_length == 512


def test_yaml_overrides_config_json(v05_files):
    cfg_json, yml = copy.deepcopy(v05_files)
    cfg_json["dof_config"] = {"a": 2}
    yml["task"]["action_horizon_flow"] = 5
    yml["task"]["noise_scheduler"] = {"time_shift": 2.0}
    yml["state_bins"] = 512
    cfg = build_config(cfg_json, yml)
    assert cfg.net.action_horizon == 5
    assert cfg.net.action_dim == 12  # config.yml's dof_config wins
    assert cfg.net.time_shift == 2.0
    assert cfg.net.state_bins == 512


def test_state_bins_default_is_256(v05_files):
    cfg_json, yml = copy.deepcopy(v05_files)
    del yml["data"]["state_bins"]
    assert build_config(cfg_json, yml).net.state_bins == 256


def test_action_padding_is_moved_to_the_tail(flow_files):
    cfg_json, yml = copy.deepcopy(flow_files)
    yml["dof_config"] = {"action_padding": 2, "arm": 6, "gripper": 1}
    cfg = build_config(cfg_json, yml)
    assert list(cfg.data.dof_config) == ["arm", "gripper", "action_padding"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c, y: y.pop("dof_config"), "dof_config is missing"),
        (lambda c, y: y.__setitem__("agent_pos_config", {"x": -1}), "agent_pos_config.x"),
        (lambda c, y: c.pop("num_hidden_layers"), "num_hidden_layers"),
        (lambda c, y: c["rope_scaling"].pop("mrope_section"), "mrope_section"),
        (lambda c, y: c.pop("vision_config"), "vision_config"),
    ],
)
def test_bad_config_is_a_clear_error(flow_files, edit, message):
    cfg_json, yml = copy.deepcopy(flow_files)
    edit(cfg_json, yml)
    with pytest.raises(ConfigError, match=message):
        build_config(cfg_json, yml)


def test_missing_config_yml_is_named(tmp_path):
    write_tiny_checkpoint(tmp_path, "flow")
    (tmp_path / "config.yml").unlink()
    with pytest.raises(ConfigError, match=r"config\.yml"):
        load_config(tmp_path)
