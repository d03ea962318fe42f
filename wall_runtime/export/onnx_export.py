"""Export WALL-OSS as two static-shape ONNX graphs: the prefix, and the whole denoise loop fused.

(a) ``prefix.onnx``: pixel patches of every camera → vision tower → token embeddings with the
    image features (and, for FLOW, the ``<|propri|>`` state embedding) written in → prefill of the
    language model → the prefix KV cache ``k, v [layers, B, kv_heads, Lp, head_dim]``.
(b) ``denoise.onnx``: that KV cache, the initial noise, the dof mask, the action tokens' position ids,
    the prefix padding mask and the padding action → the final normalised chunk after all N Euler
    steps, the steps unrolled in one graph (``wall_runtime.model.sampler.DenoiseModule``).

Every shape is fixed at export: batch, the camera grids (from the cameras' frame sizes and the
checkpoint's per-view resolution), the prompt length ``Lp`` (image tokens plus a text budget;
prompts are left-padded to it), the chunk and the step count. The graphs are traced with the
TorchScript exporter (``dynamo=False``): a plain graph of standard ONNX ops, real-valued RoPE
tables computed from the position ids, no control flow.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

OPSET = 18
# above this size the graph's weights go to one external-data file (protobuf's 2 GiB limit)
EXTERNAL_DATA_BYTES = 1 << 30

PREFIX_INPUTS = ("pixel_values", "input_ids", "attention_mask", "position_ids", "image_positions")
STATE_INPUTS = ("state", "state_mask", "state_positions")
PREFIX_OUTPUTS = ("k", "v")
DENOISE_INPUTS = (
    "k",
    "v",
    "noise",
    "dof_mask",
    "suffix_position_ids",
    "prefix_mask",
    "padding_action",
)
DENOISE_OUTPUTS = ("actions",)


@dataclass(frozen=True)
class GraphShapes:
    """The static shapes both graphs are built for."""

    batch: int
    prefix_length: int  # Lp: left-padded prompt tokens before the first <|action|>
    grid_thw: tuple[tuple[int, int, int], ...]  # one per image, batch-major then camera order
    patch_dim: int
    horizon: int
    action_dim: int
    state_dim: int
    state_token: bool  # FLOW: one <|propri|> token embedded from the state
    num_layers: int
    num_kv_heads: int
    head_dim: int
    cameras: tuple[str, ...] = ()
    frame_sizes: tuple[tuple[int, int], ...] = ()  # per camera (height, width) of the raw frames

    @property
    def num_patches(self) -> int:
        return sum(t * h * w for t, h, w in self.grid_thw)

    @property
    def num_image_tokens(self) -> int:
        return self.num_patches // 4

    def prefix_input_shapes(self) -> dict[str, tuple[int, ...]]:
        b, lp = self.batch, self.prefix_length
        shapes = {
            "pixel_values": (self.num_patches, self.patch_dim),
            "input_ids": (b, lp),
            "attention_mask": (b, lp),
            "position_ids": (3, b, lp),
            "image_positions": (self.num_image_tokens,),
        }
        if self.state_token:
            shapes |= {
                "state": (b, self.state_dim),
                "state_mask": (b, self.state_dim),
                "state_positions": (b,),
            }
        return shapes

    def kv_shape(self) -> tuple[int, ...]:
        return (self.num_layers, self.batch, self.num_kv_heads, self.prefix_length, self.head_dim)

    def denoise_input_shapes(self) -> dict[str, tuple[int, ...]]:
        b, h, d = self.batch, self.horizon, self.action_dim
        return {
            "k": self.kv_shape(),
            "v": self.kv_shape(),
            "noise": (b, h, d),
            "dof_mask": (b, h, d),
            "suffix_position_ids": (3, b, h),
            "prefix_mask": (b, self.prefix_length),
            "padding_action": (b, d),
        }

    def to_json(self) -> dict:
        d = asdict(self)
        d["grid_thw"] = [list(g) for g in self.grid_thw]
        d["frame_sizes"] = [list(s) for s in self.frame_sizes]
        d["cameras"] = list(self.cameras)
        return d

    @staticmethod
    def from_json(d: dict) -> GraphShapes:
        d = dict(d)
        d["grid_thw"] = tuple(tuple(g) for g in d["grid_thw"])
        d["frame_sizes"] = tuple(tuple(s) for s in d.get("frame_sizes", ()))
        d["cameras"] = tuple(d.get("cameras", ()))
        return GraphShapes(**d)


def prefix_attention_mask(attention_mask: Tensor) -> Tensor:
    """Causal over the prefix with padding keys removed; a padding row keeps its own diagonal.

    The same mask as ``decoder.prefix_attention_mask``, built from index comparisons: that one uses a
    boolean ``torch.eye``, which exports as a boolean EyeLike that onnxruntime has no kernel for.
    The parity tests hold the two graphs' outputs together.
    """
    valid = attention_mask.bool()
    idx = torch.arange(valid.shape[1], device=valid.device)
    causal = idx[None, :] <= idx[:, None]
    diagonal = idx[None, :] == idx[:, None]
    return ((causal[None] & valid[:, None, :]) | diagonal[None])[:, None]


class PrefixGraph(nn.Module):
    """(a): vision tower + embedding assembly + prefill → ``(k, v)``.

    ``image_positions [num_image_tokens]`` and ``state_positions [B]`` index the flattened
    ``B·Lp`` token grid: where each image feature row (in image order) and each state embedding go.
    """

    def __init__(self, net: nn.Module, visual: nn.Module, grid_thw, state_token: bool) -> None:
        super().__init__()
        self.net = net
        self.visual = visual
        self.plan = visual.plan(torch.as_tensor(grid_thw))
        self.state_token = state_token

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        image_positions: Tensor,
        state: Tensor | None = None,
        state_mask: Tensor | None = None,
        state_positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        from wall_runtime.model.decoder import PREFIX_EXPERT

        net = self.net
        batch, length = input_ids.shape
        embeds = net.embed_tokens(input_ids).reshape(batch * length, -1)
        image_features = self.visual(pixel_values.to(embeds.dtype), plan=self.plan).to(embeds.dtype)
        embeds = embeds.index_put((image_positions,), image_features)
        if self.state_token:
            state_embeds = net.embed_state(state, state_mask).reshape(batch, -1).to(embeds.dtype)
            embeds = embeds.index_put((state_positions,), state_embeds)
        embeds = embeds.reshape(batch, length, -1).to(net.dtype)
        cos, sin = net.model.rope(position_ids, net.dtype)
        mask = prefix_attention_mask(attention_mask)
        _, k, v = net.model.forward_segments([(PREFIX_EXPERT, embeds)], cos, sin, mask)
        return k, v


def example_prefix_inputs(shapes: GraphShapes, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Well-formed tracing inputs (values do not matter to a static trace, only shapes and dtypes)."""
    b, lp = shapes.batch, shapes.prefix_length
    n_img = shapes.num_image_tokens
    per_row = n_img // b
    image_positions = torch.cat([r * lp + 1 + torch.arange(per_row) for r in range(b)])
    inputs = {
        "pixel_values": torch.zeros(shapes.num_patches, shapes.patch_dim),
        "input_ids": torch.zeros(b, lp, dtype=torch.int64),
        "attention_mask": torch.ones(b, lp, dtype=torch.int64),
        "position_ids": torch.arange(lp).expand(3, b, lp).contiguous(),
        "image_positions": image_positions,
    }
    if shapes.state_token:
        inputs |= {
            "state": torch.zeros(b, shapes.state_dim),
            "state_mask": torch.ones(b, shapes.state_dim),
            "state_positions": torch.arange(b) * lp + lp - 1,
        }
    return {k: v.to(device) for k, v in inputs.items()}


def example_denoise_inputs(shapes: GraphShapes, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    b, h = shapes.batch, shapes.horizon
    inputs = {
        "k": torch.zeros(shapes.kv_shape()),
        "v": torch.zeros(shapes.kv_shape()),
        "noise": torch.zeros(b, h, shapes.action_dim),
        "dof_mask": torch.ones(b, h, shapes.action_dim),
        "suffix_position_ids": (shapes.prefix_length + torch.arange(h)).expand(3, b, h).contiguous(),
        "prefix_mask": torch.ones(b, shapes.prefix_length, dtype=torch.int64),
        "padding_action": torch.zeros(b, shapes.action_dim),
    }
    return {k: v.to(device) for k, v in inputs.items()}


@dataclass
class ExportedGraphs:
    prefix: Path
    denoise: Path
    shapes: GraphShapes
    steps: int
    files: list[str] = field(default_factory=list)  # every file written, relative to the directory


def _export(module: nn.Module, inputs: dict[str, Tensor], names_out, path: Path) -> list[str]:
    """Trace ``module`` into ``path``; large graphs get their weights in one ``<name>.data`` file."""
    import onnx

    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns about every Python-level shape check; the shapes are static by design
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=list(names_out),
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    written = [path.name]
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    stray = sorted(p for p in path.parent.iterdir() if p.is_file() and p.name != path.name)
    if param_bytes > EXTERNAL_DATA_BYTES or stray:
        # the exporter may have written one file per tensor: gather them into a single data file
        model = onnx.load(str(path), load_external_data=True)
        data_name = path.name + ".data"
        for p in stray:
            p.unlink()
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        written.append(data_name)
    onnx.checker.check_model(str(path))
    return written


def export_graphs(
    net: nn.Module,
    visual: nn.Module,
    shapes: GraphShapes,
    settings,
    out_dir: Path,
    which: tuple[str, ...] = ("prefix", "denoise"),
) -> ExportedGraphs:
    """Write ``prefix.onnx`` and ``denoise.onnx`` (fp32) for ``shapes`` into ``out_dir``.

    ``settings`` is the sampler's :class:`SamplerSettings` (its ``num_steps`` is unrolled).
    Each graph is traced in its own sub-directory, so stray per-tensor files are never mixed up.
    """
    from wall_runtime.model.sampler import DenoiseModule

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if "prefix" in which:
        d = out_dir / "prefix"
        d.mkdir(exist_ok=True)
        graph = PrefixGraph(net, visual, shapes.grid_thw, shapes.state_token)
        inputs = example_prefix_inputs(shapes)
        files += [f"prefix/{n}" for n in _export(graph, inputs, PREFIX_OUTPUTS, d / "prefix.onnx")]
    if "denoise" in which:
        d = out_dir / "denoise"
        d.mkdir(exist_ok=True)
        graph = DenoiseModule(net, settings)
        inputs = example_denoise_inputs(shapes)
        files += [f"denoise/{n}" for n in _export(graph, inputs, DENOISE_OUTPUTS, d / "denoise.onnx")]
    return ExportedGraphs(
        prefix=out_dir / "prefix" / "prefix.onnx",
        denoise=out_dir / "denoise" / "denoise.onnx",
        shapes=shapes,
        steps=settings.num_steps,
        files=files,
    )
