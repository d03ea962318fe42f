"""One typed options object per backend: what ``-o KEY=VALUE`` may say, checked before anything loads.

Each backend's options are a frozen dataclass whose fields carry a type, a default and a line of
help. :func:`parse_options` turns the command line's strings (or a caller's Python values) into that
object, so an unknown key or a value of the wrong type is a one-line error naming the key and the
valid ones, and ``--help`` lists them (:func:`options_help`). The backend receives the object's
fields as keyword arguments (:meth:`BackendOptions.kwargs`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

DEFAULT_TEXT_TOKENS = (
    64  # wall_runtime.backends.static_shapes.DEFAULT_TEXT_TOKENS (not imported: keeps this light)
)
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")
DEFAULT_ECHO_CAMERAS = ("face_view", "left_wrist_view", "right_wrist_view")


class BackendOptionError(ValueError):
    """A backend option that does not exist or does not parse; the message names the key."""


def option(default: Any, help: str) -> Any:
    """A dataclass field with its help line (fields whose values need their own parser set
    ``metadata["parse"]`` through ``field`` directly)."""
    return field(default=default, metadata={"help": help})


def _cameras(value: Any) -> dict[str, tuple[int, int]]:
    """``face_view=640x480,right_wrist_view=640x480`` (W×H, as cameras are quoted) or a mapping
    view -> (height, width) → view -> (height, width)."""
    from wall_runtime.backends.graph_policy import parse_cameras

    return parse_cameras(value) or {}


def _providers(value: Any) -> str | list[str]:
    """One of ``cpu | cuda | tensorrt``, or an explicit onnxruntime provider list."""
    if isinstance(value, str) and "," not in value:
        if value not in ORT_PROVIDERS:
            raise ValueError(f"expected one of {', '.join(ORT_PROVIDERS)} or a list of provider names")
        return value
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(p).strip() for p in items if str(p).strip()]


@dataclass(frozen=True)
class BackendOptions:
    """Base of every backend's options."""

    def kwargs(self) -> dict[str, Any]:
        """The options set, as the backend's ``from_checkpoint`` keyword arguments (None = its default)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    device: str = option("cpu", "cpu | cuda | cuda:N")
    dtype: Literal["fp32", "float32", "bf16", "bfloat16", "fp16", "float16"] | None = option(
        None, "weights' dtype (default fp32 on CPU, bf16 on CUDA; the head stays fp32)"
    )
    norm_key: str | None = option(None, "normalisation statistics to use (the checkpoint's embodiment)")
    seed: int | None = option(None, "seed of the initial-noise generator")
    num_steps: int | None = option(None, "flow steps (default 10)")
    noise_knots: int | None = option(
        None, "smooth initial noise through N knots (random-weight demo checkpoints only)"
    )
    cuda_graph: bool = option(True, "on CUDA, replay the denoise loop as a CUDA graph")
    action_attention: Literal["mixed", "causal", "bidirectional"] | None = option(
        None, "override the generation's attention among action tokens"
    )
    dof_override: Literal["none", "prefill", "every_step"] | None = option(
        None, "override when the dof mask is applied"
    )


@dataclass(frozen=True)
class GraphOptions(BackendOptions):
    """What every exported-graph backend takes (static shapes, cache, sampling)."""

    cameras: dict[str, tuple[int, int]] | None = field(
        default=None,
        metadata={
            "help": "views and raw sizes NAME=WxH,... (default: the checkpoint's views at 640x480)",
            "parse": _cameras,
        },
    )
    batch: int = option(1, "static batch size of the graphs")
    text_tokens: int = option(DEFAULT_TEXT_TOKENS, "static instruction length in tokens")
    num_steps: int | None = option(None, "flow steps fused into the denoise graph (default 10)")
    norm_key: str | None = option(None, "normalisation statistics to use (the checkpoint's embodiment)")
    seed: int | None = option(None, "seed of the initial-noise generator")
    noise_knots: int | None = option(
        None, "smooth initial noise through N knots (random-weight demo checkpoints only)"
    )
    cache_dir: str | None = option(None, "engine cache folder (default $WALL_RUNTIME_CACHE or ~/.cache)")


@dataclass(frozen=True)
class OnnxRuntimeOptions(GraphOptions):
    device: str = option("cpu", "cpu | cuda (picks the providers when providers is not given)")
    providers: Any = field(
        default=None,
        metadata={
            "help": "cpu | cuda | tensorrt, or a comma list of onnxruntime provider names",
            "parse": _providers,
        },
    )
    threads: int | None = option(
        None, "intra-op threads (default $WALL_RUNTIME_ORT_THREADS or onnxruntime's)"
    )


@dataclass(frozen=True)
class TensorRTOptions(GraphOptions):
    precision: Literal["bf16", "fp16", "fp32"] = option("bf16", "engine precision")
    device: str = option("cuda", "CUDA device")
    show_progress: bool = option(True, "show TensorRT's build progress")


@dataclass(frozen=True)
class CudaGraphOptions(GraphOptions):
    device: str = option("cuda", "CUDA device")
    dtype: Literal["fp32", "float32", "bf16", "bfloat16", "fp16", "float16"] | None = option(
        None, "weights' dtype (default bf16 on CUDA; the head stays fp32)"
    )
    capture: bool = option(True, "capture the CUDA graphs (false: the same modules run eagerly)")
    compile: bool = option(False, "torch.compile both modules before capture (minutes at full size)")
    max_graphs: int = option(4, "graphs kept per stage, one per input shape")


@dataclass(frozen=True)
class ExpertOptions(BackendOptions):
    variant: Literal["flow", "0.5"] = option(
        "flow", "layout of the served chunks: FLOW absolute, 0.5 relative"
    )
    task: str = option("aloha_transfer_cube", "the scripted task")
    horizon: int = option(32, "actions per chunk")
    cameras: tuple[str, ...] = option(("face_view",), "views it announces, comma separated")


@dataclass(frozen=True)
class EchoOptions(BackendOptions):
    action_horizon: int = option(32, "rows per chunk")
    action_dim: int = option(20, "action dims")
    state_dim: int = option(20, "state dims")
    num_steps: int = option(0, "reported flow steps (no model runs)")
    cameras: tuple[str, ...] = option(DEFAULT_ECHO_CAMERAS, "views it announces, comma separated")
    norm_keys: tuple[str, ...] = option((), "norm keys it announces, comma separated")
    delay_ms: float = option(0.0, "time each call takes")
    step: float = option(0.01, "ramp step of the echoed chunk")
    fail_on: str | None = option(None, "raise when the instruction equals this")
    image_digest: bool = option(True, "fold the images' brightness into the chunk")


OPTIONS: dict[str, type[BackendOptions]] = {
    "torch": TorchOptions,
    "onnxruntime": OnnxRuntimeOptions,
    "tensorrt": TensorRTOptions,
    "echo": EchoOptions,
    "expert": ExpertOptions,
    "cuda_graph": CudaGraphOptions,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` (a command-line string or a Python value) as type ``hint``; ValueError if it is not."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(i).strip() for i in items if str(i).strip())
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if hint is str:
        return str(value)
    return value


def parse_options(backend: str, values: Mapping[str, Any] | BackendOptions | None = None) -> BackendOptions:
    """The ``backend``'s options object from ``values`` (strings from ``-o KEY=VALUE`` or Python values)."""
    if backend not in OPTIONS:
        raise BackendOptionError(f"unknown backend {backend!r}; choose one of {', '.join(OPTIONS)}")
    cls = OPTIONS[backend]
    if isinstance(values, BackendOptions):
        if not isinstance(values, cls):
            raise BackendOptionError(f"{type(values).__name__} given for the {backend} backend")
        return values
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    parsed: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if key not in fields:
            raise BackendOptionError(
                f"-o {key}: not an option of the {backend} backend (valid: {', '.join(sorted(fields))})"
            )
        parse = fields[key].metadata.get("parse")
        try:
            if parse is not None:
                parsed[key] = None if value is None else parse(value)
            else:
                parsed[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise BackendOptionError(f"-o {key}={value}: {exc}") from None
    return cls(**parsed)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return "|".join(map(str, typing.get_args(hint)))
    if origin is tuple:
        return "list"
    if origin is dict:
        return "NAME=WxH,..."
    if hint is Any:
        return "value"
    return getattr(hint, "__name__", str(hint))


def options_help(backend: str) -> list[str]:
    """One line per option of ``backend``: ``key (type, default D): help``."""
    cls = OPTIONS[backend]
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = (
            ""
            if f.default is None
            else f", default {f.default if not isinstance(f.default, tuple) else ','.join(f.default)}"
        )
        lines.append(f"{f.name} ({_type_name(hints[f.name])}{default}): {f.metadata['help']}")
    return lines


def options_epilog(backends: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")) -> str:
    """The ``-o`` keys of ``backends`` for a command's ``--help`` (click keeps ``\\b`` blocks unwrapped)."""
    blocks = []
    for name in backends:
        blocks.append(
            "\b\n"
            + f"-o options of the {name} backend:\n"
            + "\n".join(f"  {line}" for line in options_help(name))
        )
    return "\n\n".join(blocks)
