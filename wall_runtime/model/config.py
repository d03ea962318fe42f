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
import math
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
    # seconds between two rows of a chunk, when the checkpoint declares it (config.yml
    # data.action_period, written by ``wall-runtime train``); None: the robot's control period
    action_period: float | None = None

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

    def with_vision_intermediate_size(self, width: int) -> WallConfig:
        """The vision MLP width the weights store (the 1.1.0 padded form, spec §10)."""
        return replace(self, vision={**self.vision, "intermediate_size": int(width)})


# --------------------------------------------------------------------------- resolution helpers


def _int(value: Any, where: str) -> int:
    """An integer field, or a :class:`ConfigError` naming it (``2048.0`` is accepted, ``"2k"`` is not)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ConfigError(f"{where} must be an integer, got {value!r}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{where} must be a number, got {value!r}") from None


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
    if _int(value, "action_horizon_flow / action_horizon") <= 0:
        raise ConfigError(f"action horizon must be positive, got {value!r}")
    return _int(value, "action_horizon_flow / action_horizon")


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
    if cfg.get("norm_moe") or (
        isinstance(dims, list)
        and dims
        and hidden
        and _int(dims[-1], "config.json dim_inputs") != _int(hidden, "config.json hidden_size")
    ):
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{json_path} is not valid JSON: {exc}") from exc
    try:
        yml = yaml.safe_load(yml_path.read_text()) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
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
        hidden = _int(text["hidden_size"], "config.json hidden_size")
        num_heads = _int(text["num_attention_heads"], "config.json num_attention_heads")
        num_layers = _int(text["num_hidden_layers"], "config.json num_hidden_layers")
        num_kv_heads = _int(text.get("num_key_value_heads", num_heads), "config.json num_key_value_heads")
    except KeyError as exc:
        raise ConfigError(f"config.json is missing {exc.args[0]!r}") from exc
    if min(hidden, num_heads, num_layers, num_kv_heads) <= 0:
        raise ConfigError(
            "config.json hidden_size, num_attention_heads, num_hidden_layers and num_key_value_heads must be positive"
        )
    rope = _section(text, "rope_scaling") or _section(text, "rope_parameters")
    mrope = rope.get("mrope_section")
    if not isinstance(mrope, list) or len(mrope) != 3:
        raise ConfigError("config.json rope_scaling.mrope_section must list three section sizes")
    mrope = [_int(m, "config.json rope_scaling.mrope_section") for m in mrope]
    rope_theta = _float(
        _first(text.get("rope_theta"), rope.get("rope_theta"), 1_000_000.0), "config.json rope_theta"
    )

    experts = cfg.get("experts")
    if not isinstance(experts, list) or len(experts) != 2 or not all(isinstance(e, dict) for e in experts):
        raise ConfigError("config.json must describe two experts (VLM and action) under 'experts'")
    dim_inputs = cfg.get("dim_inputs") or [e.get("hidden_size", hidden) for e in experts]
    if not isinstance(dim_inputs, list) or len(dim_inputs) != 2:
        raise ConfigError(f"config.json dim_inputs must list two widths, got {dim_inputs!r}")
    expert_hidden = (
        _int(dim_inputs[0], "config.json dim_inputs[0]"),
        _int(dim_inputs[1], "config.json dim_inputs[1]"),
    )
    try:
        expert_intermediate = (
            _int(experts[0]["intermediate_size"], "config.json experts[0].intermediate_size"),
            _int(experts[1]["intermediate_size"], "config.json experts[1].intermediate_size"),
        )
    except KeyError:
        raise ConfigError("config.json experts[i] must each give intermediate_size") from None

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
    state_bins = _int(
        _first(yml.get("state_bins"), data_section.get("state_bins"), DEFAULT_STATE_BINS),
        "config.yml state_bins",
    )
    if state_bins < 2:
        raise ConfigError(f"state_bins must be at least 2, got {state_bins}")

    resolution_table = data_section.get("resolution") or {}
    if not isinstance(resolution_table, dict):
        raise ConfigError(f"config.yml data.resolution must map view -> pixels, got {resolution_table!r}")
    resolution = {str(k): _int(v, f"config.yml data.resolution.{k}") for k, v in resolution_table.items()}
    cameras = _cameras(yml, resolution)
    for cam in cameras:
        resolution.setdefault(cam, DEFAULT_RESOLUTION[variant])
    max_length = _int(
        _first(yml.get("max_length"), data_section.get("max_length"), DEFAULT_MAX_LENGTH),
        "config.yml max_length",
    )
    mapping = {str(k): str(v) for k, v in (data_section.get("camera_name_mapping") or {}).items()}
    action_period = None
    if data_section.get("action_period") is not None:
        action_period = _float(data_section["action_period"], "config.yml data.action_period")
        if not (math.isfinite(action_period) and 0 < action_period <= 10):
            raise ConfigError(
                f"config.yml data.action_period must be seconds in (0, 10], got {action_period!r}"
            )

    time_shift = _float(noise.get("time_shift", 1.0), "noise_scheduler.time_shift")
    time_scale = 1.0 if variant == "flow" else _float(noise.get("s", 0.999), "noise_scheduler.s")
    net_fields = dict(
        variant=variant,
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=_int(text.get("head_dim") or hidden // num_heads, "config.json head_dim"),
        rms_norm_eps=_float(text.get("rms_norm_eps", 1e-6), "config.json rms_norm_eps"),
        rope_theta=rope_theta,
        mrope_section=(int(mrope[0]), int(mrope[1]), int(mrope[2])),
        vocab_size=_int(
            vocab_size if vocab_size is not None else text.get("vocab_size", 151936), "vocab_size"
        ),
        expert_hidden=expert_hidden,
        expert_intermediate=expert_intermediate,
        attention_per_expert=bool(cfg.get("attention_moe", False)),
        norm_per_expert=bool(cfg.get("norm_moe", False)),
        action_dim=sum(dof.values()),
        state_dim=sum(agent_pos.values()),
        action_horizon=horizon,
        action_hidden_size=_int(
            cfg.get("action_hidden_size") or expert_hidden[1], "config.json action_hidden_size"
        ),
        proj_with_mask=bool(cfg.get("proj_with_mask", True)),
        state_as_text=state_as_text,
        state_bins=state_bins,
        use_x_pred=bool(cfg.get("use_x_pred", False)),
        time_shift=time_shift,
        time_scale=time_scale,
        action_attention=action_attention or ("mixed" if variant == "flow" else "causal"),
        dof_override=dof_override or ("none" if variant == "flow" else "every_step"),
        num_steps=int(num_steps),
        state_hidden_size=(
            _int(cfg["state_hidden_size"], "config.json state_hidden_size")
            if cfg.get("state_hidden_size")
            else None
        ),
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
        action_period=action_period,
    )
    vision = dict(cfg.get("vision_config") or {}) if isinstance(cfg.get("vision_config"), dict) else {}
    if not vision:
        raise ConfigError("config.json has no vision_config")
    _check_vision(vision)
    return WallConfig(variant=variant, net=net, data=data, vision=vision, config_json=cfg, config_yml=yml)


_VISION_INT_FIELDS = ("depth", "hidden_size", "intermediate_size", "num_heads")


def _check_vision(vision: dict) -> None:
    """The vision tower's fields, each named when it is missing or not what it must be."""
    from wall_runtime.model.vision import VisionConfig

    for key in _VISION_INT_FIELDS:
        if key not in vision and not (key == "num_heads" and "num_attention_heads" in vision):
            raise ConfigError(f"config.json vision_config is missing {key!r}")
    for key in (
        *_VISION_INT_FIELDS,
        "out_hidden_size",
        "patch_size",
        "spatial_merge_size",
        "temporal_patch_size",
        "window_size",
    ):
        if key in vision:
            if _int(vision[key], f"config.json vision_config.{key}") <= 0:
                raise ConfigError(f"config.json vision_config.{key} must be positive, got {vision[key]!r}")
            vision[key] = _int(vision[key], f"config.json vision_config.{key}")
    try:
        VisionConfig.from_dict(vision)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config.json vision_config: {exc}") from exc


def load_config(checkpoint_dir: str | Path, **options: Any) -> WallConfig:
    """Read and resolve a checkpoint directory's ``config.json`` and ``config.yml``."""
    cfg, yml = read_config_files(checkpoint_dir)
    return build_config(cfg, yml, **options)
