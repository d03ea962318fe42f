"""Checkpoint configuration: ``config.json`` with the overrides the training ``config.yml`` applies.

The reference builds its model config from ``config.json`` and then lets the training YAML override
``dof_config``, ``agent_pos_config``, the flow action horizon, the noise scheduler and the
state-as-text switch (``update_model_config``). Those keys may sit at the top level of the YAML or
under ``task:`` (1.1.0) and ``data:`` (FLOW era); this module resolves them in the reference's order
and produces the flat records the rest of the runtime reads: :class:`NetConfig` for the network, the
raw vision config for the vision tower, and :class:`DataConfig` for prompt, images and normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from wall_runtime.model.net_config import ActionAttention, DofOverride, NetConfig

Variant = Literal["flow", "0.5"]

CONFIG_JSON = "config.json"
CONFIG_YML = "config.yml"

DEFAULT_STATE_BINS = 256  # wall-x default when config.yml sets none
DEFAULT_MAX_LENGTH = 768  # wall-x collator default
DEFAULT_RESOLUTION = {"flow": 256, "0.5": 448}

# FLOW-era training labels (wall_x/data/utils.py::CAMERA_NAME_MAPPING at 97406f2).
FLOW_CAMERA_LABELS = {
    "face_view": "front view",
    "left_wrist_view": "left wrist view",
    "right_wrist_view": "right wrist view",
    "move1_view": "move view",
    "move2_view": "move view",
    "wall_view": "wall view",
    "top_view": "top view",
}


class ConfigError(ValueError):
    """A checkpoint's configuration is missing a field or holds an invalid one."""


@dataclass(frozen=True)
class DataConfig:
    """What preprocessing, the prompt and the normalisers need from the training config."""

    dof_config: dict[str, int]  # action layout, in order (virtual ``action_padding`` last)
    agent_pos_config: dict[str, int]  # state layout, in order
    action_horizon: int
    state_as_text: bool
    state_bins: int
    cameras: tuple[str, ...]  # model view names, in prompt order
    resolution: dict[str, int]  # view name -> longest side after the first resize
    camera_name_mapping: dict[str, str]  # view name -> label written in the prompt (0.5)
    max_length: int
    noise_scheduler: dict[str, Any] = field(default_factory=dict)

    @property
    def action_dim(self) -> int:
        return sum(self.dof_config.values())

    @property
    def state_dim(self) -> int:
        return sum(self.agent_pos_config.values())


@dataclass(frozen=True)
class WallConfig:
    """Everything a checkpoint's two config files say, resolved."""

    variant: Variant
    net: NetConfig
    data: DataConfig
    vision: dict[str, Any]  # config.json ``vision_config`` (read by VisionConfig.from_dict)
    config_json: dict[str, Any]
    config_yml: dict[str, Any]

    def vision_config(self):
        """The vision tower's config (``wall_runtime.model.vision.VisionConfig``)."""
        from wall_runtime.model.vision import VisionConfig

        return VisionConfig.from_dict(self.vision)

    def camera_label(self, view: str) -> str:
        """The label the prompt writes before a view's image (spec §10)."""
        if self.variant == "flow":
            return FLOW_CAMERA_LABELS.get(view, view)
        return self.data.camera_name_mapping.get(view, view)

    def with_vocab_size(self, vocab_size: int) -> WallConfig:
        """Embedding rows = ``len(tokenizer)`` (the reference's ``resize_token_embeddings``)."""
        return replace(self, net=replace(self.net, vocab_size=int(vocab_size)))


# --------------------------------------------------------------------------- resolution helpers


def _first(*candidates: Any) -> Any:
    for value in candidates:
        if value is not None:
            return value
    return None


def _section(d: dict, name: str) -> dict:
    value = d.get(name)
    return value if isinstance(value, dict) else {}


def _layout(name: str, yml: dict, cfg: dict) -> dict[str, int]:
    """``dof_config`` / ``agent_pos_config``: YAML top level, then ``task:``, then config.json."""
    raw = _first(yml.get(name) or None, _section(yml, "task").get(name) or None, cfg.get(name) or None)
    if not raw:
        raise ConfigError(f"{name} is missing: expected it in config.yml (top level or task:) or config.json")
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping of name -> dims, got {type(raw).__name__}")
    layout: dict[str, int] = {}
    for key, dims in raw.items():
        if not isinstance(dims, int) or isinstance(dims, bool) or dims <= 0:
            raise ConfigError(f"{name}.{key} must be a positive integer, got {dims!r}")
        layout[str(key)] = dims
    # The reference keeps virtual padding dims after the real ones.
    head = {k: v for k, v in layout.items() if k != "action_padding"}
    tail = {k: v for k, v in layout.items() if k == "action_padding"}
    return {**head, **tail}


def _state_as_text(yml: dict, cfg: dict) -> bool:
    value = _first(
        _section(yml, "task").get("use_state_string_representation"),
        yml.get("use_state_string_representation"),
        _section(yml, "data").get("use_state_string_representation"),
        cfg.get("use_state_string_representation"),
    )
    return bool(value) if value is not None else False


def _action_horizon(yml: dict, cfg: dict) -> int:
    task, data = _section(yml, "task"), _section(yml, "data")
    value = _first(
        yml.get("action_horizon_flow"),
        task.get("action_horizon_flow"),
        data.get("action_horizon_flow"),
        yml.get("action_horizon"),
        task.get("action_horizon"),
        data.get("action_horizon"),
        cfg.get("action_horizon_flow"),
        32,
    )
    if int(value) <= 0:
        raise ConfigError(f"action horizon must be positive, got {value!r}")
    return int(value)


def _cameras(yml: dict, resolution: dict[str, int]) -> tuple[str, ...]:
    data = _section(yml, "data")
    camera_keys = _section(_section(data, "key_mappings"), "camera")
    names: list[str] = []
    for value in camera_keys.values():
        if str(value) not in names:
            names.append(str(value))
    if not names:
        names = [str(k) for k in resolution]
    return tuple(names)


def detect_variant(cfg: dict) -> Variant:
    """FLOW shares attention and norms; 0.5 is a mixture of transformers with a narrower action expert."""
    dims = cfg.get("dim_inputs")
    hidden = _text(cfg).get("hidden_size")
    if cfg.get("norm_moe") or (dims and hidden and int(dims[-1]) != int(hidden)):
        return "0.5"
    return "flow"


def _text(cfg: dict) -> dict:
    """Language-model fields: transformers 5 nests them under ``text_config``; older files are flat."""
    text = dict(cfg)
    text.update(_section(cfg, "text_config"))
    return text


# --------------------------------------------------------------------------- public API


def read_config_files(checkpoint_dir: str | Path) -> tuple[dict, dict]:
    """The raw ``config.json`` and ``config.yml`` of a checkpoint directory."""
    root = Path(checkpoint_dir)
    json_path, yml_path = root / CONFIG_JSON, root / CONFIG_YML
    if not json_path.is_file():
        raise ConfigError(f"{json_path} not found: a checkpoint directory holds config.json")
    if not yml_path.is_file():
        raise ConfigError(
            f"{yml_path} not found: the training config.yml carries dof_config, agent_pos_config, "
            "the action horizon and the camera settings the model needs"
        )
    try:
        cfg = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{json_path} is not valid JSON: {exc}") from exc
    try:
        yml = yaml.safe_load(yml_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{yml_path} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict) or not isinstance(yml, dict):
        raise ConfigError(f"{checkpoint_dir}: config.json and config.yml must each hold a mapping")
    return cfg, yml


def build_config(
    cfg: dict,
    yml: dict,
    *,
    vocab_size: int | None = None,
    variant: Variant | None = None,
    action_attention: ActionAttention | None = None,
    dof_override: DofOverride | None = None,
    num_steps: int = 10,
) -> WallConfig:
    """Resolve ``config.json`` + ``config.yml`` into a :class:`WallConfig`.

    ``vocab_size`` is ``len(tokenizer)`` (embedding rows); it defaults to ``config.vocab_size``.
    ``action_attention`` / ``dof_override`` override the generation's reference behaviour.
    """
    text = _text(cfg)
    variant = variant or detect_variant(cfg)
    if variant not in ("flow", "0.5"):
        raise ConfigError(f"unknown variant {variant!r}; expected 'flow' or '0.5'")
    try:
        hidden = int(text["hidden_size"])
        num_heads = int(text["num_attention_heads"])
        num_layers = int(text["num_hidden_layers"])
        num_kv_heads = int(text.get("num_key_value_heads", num_heads))
    except KeyError as exc:
        raise ConfigError(f"config.json is missing {exc.args[0]!r}") from exc
    rope = _section(text, "rope_scaling") or _section(text, "rope_parameters")
    mrope = rope.get("mrope_section")
    if not mrope or len(mrope) != 3:
        raise ConfigError("config.json rope_scaling.mrope_section must list three section sizes")
    rope_theta = float(_first(text.get("rope_theta"), rope.get("rope_theta"), 1_000_000.0))

    experts = cfg.get("experts")
    if not experts or len(experts) != 2:
        raise ConfigError("config.json must describe two experts (VLM and action) under 'experts'")
    dim_inputs = cfg.get("dim_inputs") or [e.get("hidden_size", hidden) for e in experts]
    expert_hidden = (int(dim_inputs[0]), int(dim_inputs[1]))
    expert_intermediate = (int(experts[0]["intermediate_size"]), int(experts[1]["intermediate_size"]))

    dof = _layout("dof_config", yml, cfg)
    agent_pos = _layout("agent_pos_config", yml, cfg)
    horizon = _action_horizon(yml, cfg)
    noise = dict(cfg.get("noise_scheduler") or {})
    noise.update(
        _first(
            yml.get("noise_scheduler"),
            _section(yml, "task").get("noise_scheduler"),
            _section(yml, "data").get("noise_scheduler"),
        )
        or {}
    )
    state_as_text = _state_as_text(yml, cfg)
    data_section = _section(yml, "data")
    state_bins = int(_first(yml.get("state_bins"), data_section.get("state_bins"), DEFAULT_STATE_BINS))
    if state_bins < 2:
        raise ConfigError(f"state_bins must be at least 2, got {state_bins}")

    resolution = {str(k): int(v) for k, v in (data_section.get("resolution") or {}).items()}
    cameras = _cameras(yml, resolution)
    for cam in cameras:
        resolution.setdefault(cam, DEFAULT_RESOLUTION[variant])
    max_length = int(_first(yml.get("max_length"), data_section.get("max_length"), DEFAULT_MAX_LENGTH))
    mapping = {str(k): str(v) for k, v in (data_section.get("camera_name_mapping") or {}).items()}

    time_shift = float(noise.get("time_shift", 1.0))
    time_scale = 1.0 if variant == "flow" else float(noise.get("s", 0.999))
    net_fields = dict(
        variant=variant,
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=int(text.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        mrope_section=(int(mrope[0]), int(mrope[1]), int(mrope[2])),
        vocab_size=int(vocab_size if vocab_size is not None else text.get("vocab_size", 151936)),
        expert_hidden=expert_hidden,
        expert_intermediate=expert_intermediate,
        attention_per_expert=bool(cfg.get("attention_moe", False)),
        norm_per_expert=bool(cfg.get("norm_moe", False)),
        action_dim=sum(dof.values()),
        state_dim=sum(agent_pos.values()),
        action_horizon=horizon,
        action_hidden_size=int(cfg.get("action_hidden_size") or expert_hidden[1]),
        proj_with_mask=bool(cfg.get("proj_with_mask", True)),
        state_as_text=state_as_text,
        state_bins=state_bins,
        use_x_pred=bool(cfg.get("use_x_pred", False)),
        time_shift=time_shift,
        time_scale=time_scale,
        action_attention=action_attention or ("mixed" if variant == "flow" else "causal"),
        dof_override=dof_override or ("none" if variant == "flow" else "every_step"),
        num_steps=int(num_steps),
        state_hidden_size=int(cfg["state_hidden_size"]) if cfg.get("state_hidden_size") else None,
    )
    try:
        net = NetConfig(**net_fields)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"config.json / config.yml describe an invalid network: {exc}") from exc
    data = DataConfig(
        dof_config=dof,
        agent_pos_config=agent_pos,
        action_horizon=horizon,
        state_as_text=state_as_text,
        state_bins=state_bins,
        cameras=cameras,
        resolution=resolution,
        camera_name_mapping=mapping,
        max_length=max_length,
        noise_scheduler=noise,
    )
    vision = dict(cfg.get("vision_config") or {})
    if not vision:
        raise ConfigError("config.json has no vision_config")
    return WallConfig(variant=variant, net=net, data=data, vision=vision, config_json=cfg, config_yml=yml)


def load_config(checkpoint_dir: str | Path, **options: Any) -> WallConfig:
    """Read and resolve a checkpoint directory's ``config.json`` and ``config.yml``."""
    cfg, yml = read_config_files(checkpoint_dir)
    return build_config(cfg, yml, **options)
