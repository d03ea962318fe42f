"""The torch backend's fast path on a GPU: the whole flow loop captured once in a CUDA graph.

With static shapes (fixed cameras, resolutions, prompt budget and chunk length) the N Euler steps
launch the same kernels in the same order every call, so they are recorded once per shape and then
replayed with one launch. This removes the Python and kernel-launch overhead that dominates the
action-token steps (each step is only H tokens). Inputs are copied into the graph's static buffers,
the graph is replayed, and the output buffer is cloned (the next replay overwrites it).

Use from the torch backend::

    denoiser = CudaGraphDenoiser(net, settings)          # net on CUDA, bf16 (see to_inference_dtype)
    chunk = denoiser(kv, noise, dof_mask, suffix_position_ids, prefix_mask, padding_action)

which takes the arguments of :func:`wall_runtime.model.sampler.denoise` after ``net`` and returns
the same chunk (tests/test_gpu_cuda_graph.py holds it to the eager result). :class:`CudaGraphDenoise`
wraps it as the pipeline's denoise stage, applied from outside: ``model.infer(obs, denoise=stage)``.

The second half is the ``cuda_graph`` backend: the whole call in two graphs (:class:`GraphedRunner`
for the prefix and for the denoise loop) behind :class:`~wall_runtime.backends.graph_policy.GraphPolicy`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wall_runtime.backends.graph_policy import GraphPolicy, common_options, load_graph_preprocessor

log = logging.getLogger(__name__)

_INPUTS = ("k", "v", "noise", "dof_mask", "suffix_position_ids", "prefix_mask", "padding_action")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]
    output: Tensor


class CudaGraphDenoiser:
    """``sampler.denoise`` with the N-step loop replayed from a CUDA graph, one graph per input shape.

    A new shape (another camera count, batch size or prompt-length bucket) is captured on first use; at
    most ``max_graphs`` are kept, the least recently used dropped first.
    """

    def __init__(self, net, settings=None, warmup: int = 2, max_graphs: int = 4, bucket: int = 64) -> None:
        from wall_runtime.model.sampler import SamplerSettings

        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA GPU; use the eager torch backend on CPU")
        device = next(net.parameters()).device
        if device.type != "cuda":
            raise RuntimeError(f"the network must be on a CUDA device for graph capture, it is on {device}")
        self.net = net
        self.settings = settings or SamplerSettings.from_config(net.cfg)
        self.device = device
        self.warmup = warmup
        self.max_graphs = max_graphs
        # prompts change length (instructions; 0.5 writes the state as digits), so the prefix is
        # left-padded to a multiple of ``bucket``: a handful of graphs instead of one per length
        self.bucket = bucket
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle()  # graphs of different shapes share one memory pool

    def _run_eager(self, inputs: dict[str, Tensor]) -> Tensor:
        from wall_runtime.model.decoder import KVCache
        from wall_runtime.model.sampler import denoise

        return denoise(
            self.net,
            KVCache(inputs["k"], inputs["v"]),
            inputs["noise"],
            inputs["dof_mask"],
            inputs["suffix_position_ids"],
            inputs["prefix_mask"],
            self.settings,
            inputs["padding_action"],
        )

    def _capture(self, example: dict[str, Tensor]) -> _Captured:
        static = {name: t.detach().clone() for name, t in example.items()}
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # warm-up on a side stream: lazy initialisations (cuBLAS handles, SDPA kernel choice) must
        # happen before capture, and capture must not run on the default stream
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(self.warmup):
                self._run_eager(static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread-local: the policy server's other threads may touch CUDA while this one captures
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = self._run_eager(static)
        log.info(
            "captured the %d-step denoise loop in a CUDA graph for %s",
            self.settings.num_steps,
            _shape_key(example),
        )
        return _Captured(graph, static, output)

    def __call__(
        self,
        kv,
        noise: Tensor,
        dof_mask: Tensor,
        suffix_position_ids: Tensor,
        prefix_mask: Tensor,
        padding_action: Tensor | None = None,
    ) -> Tensor:
        k, v = kv.k, kv.v
        extra = -prefix_mask.shape[1] % self.bucket
        if extra:
            # masked-out keys on the left change nothing (the same left padding a batch uses)
            k = F.pad(k, (0, 0, extra, 0))
            v = F.pad(v, (0, 0, extra, 0))
            prefix_mask = F.pad(prefix_mask, (extra, 0))
        if padding_action is None:
            if self.settings.dof_override != "none":
                raise ValueError(
                    "this model overrides masked dofs: pass padding_action (normalize(0) per row)"
                )
            # unused without the override; the graph needs a fixed input set
            padding_action = torch.zeros(noise.shape[0], noise.shape[-1], device=noise.device)
        given = dict(
            zip(
                _INPUTS,
                (k, v, noise, dof_mask, suffix_position_ids, prefix_mask, padding_action),
                strict=True,
            )
        )
        for name, t in given.items():
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device}, the captured graph runs on {self.device}")
        key = _shape_key(given)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(given)
            self._graphs[key] = captured
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
            for name, t in given.items():
                captured.inputs[name].copy_(t)
        captured.graph.replay()
        return captured.output.clone()


def _shape_key(tensors: dict[str, Tensor]) -> tuple:
    return tuple((name, tuple(t.shape), t.dtype) for name, t in tensors.items())


class CudaGraphDenoise:
    """The denoise stage of a CUDA :class:`wall_runtime.model.pipeline.WallOSS` with the loop replayed
    from a CUDA graph (:class:`CudaGraphDenoiser`): ``stage(batch, kv, noise, guidance=None)``, the
    signature of ``WallOSS.denoise``, for ``WallOSS.infer(..., denoise=stage)``. Guided (RTC
    inpainting) calls keep the eager path: they need autograd.

    The torch backend uses it when asked for ``cuda_graph=True`` on a GPU.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.denoiser = CudaGraphDenoiser(model.net, model.settings)

    def __call__(self, batch, kv, noise: Tensor, guidance=None) -> Tensor:
        model = self.model
        if guidance is not None:
            return model.denoise(batch, kv, noise, guidance)
        horizon = model.cfg.net.action_horizon
        lp = batch.prefix_length
        device = model.device
        dof_mask = (
            torch.from_numpy(batch.dof_mask).to(device)[:, None, :].expand(-1, horizon, -1).contiguous()
        )
        suffix_positions = torch.from_numpy(batch.position_ids[:, :, lp:]).to(device)
        prefix_mask = torch.from_numpy(batch.attention_mask[:, :lp]).to(device)
        padding = torch.from_numpy(batch.padding_action).to(device)
        return self.denoiser(kv, noise, dof_mask, suffix_positions, prefix_mask, padding)


# ---------------------------------------------------------------------------------------------------------
# the whole call in two graphs: prefix (vision tower + prefill) and the fused denoise loop


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph | None
    inputs: dict[str, Tensor]  # the graph's static input buffers, on the device
    pinned: dict[str, Tensor]  # page-locked host buffers numpy inputs are staged through
    outputs: tuple[Tensor, ...]
    copied: torch.cuda.Event | None = None  # the last host-to-device copy out of ``pinned``


class GraphedRunner:
    """``module(**inputs)`` on static-shaped inputs, replayed from a CUDA graph: a graph-policy runner
    (named inputs → named outputs) for :class:`CudaGraphPolicy`.

    One graph per input-shape key (names, shapes, dtypes), at most ``max_graphs`` kept, the least
    recently used dropped first; the graphs of a runner share one memory pool. A call copies its inputs
    into the graph's static buffers — numpy arrays through page-locked host buffers with
    ``non_blocking`` copies, device tensors device-to-device — and replays: nothing in a call waits for
    the GPU (tests/test_gpu_cuda_graph.py runs it under ``torch.cuda.set_sync_debug_mode("error")``).
    The outputs are the graph's own buffers, valid until this runner's next call.

    ``capture=False`` runs the module eagerly through the same plumbing: the reference the graphs are
    held to, and the path a CPU takes.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        input_names: tuple[str, ...],
        output_names: tuple[str, ...],
        device: torch.device | str,
        *,
        capture: bool = True,
        max_graphs: int = 4,
        warmup: int = 2,
    ) -> None:
        self.module = module.eval()
        self.input_names = input_names
        self.output_names = output_names
        self.device = torch.device(device)
        self.capture = capture and self.device.type == "cuda"
        if capture and self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA GPU")
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[tuple, _Entry] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None
        # GPU time of the last call (input copies + replay), read once the caller has synchronised
        self._events = (
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            if self.capture
            else ()
        )
        self._timed = False

    def last_gpu_ms(self) -> float | None:
        """GPU milliseconds of the last replayed call; call it after the result was read back (that read
        synchronised), else it waits for the GPU. None before a replay, or when running eagerly."""
        if not self._timed:
            return None
        return float(self._events[0].elapsed_time(self._events[1]))

    def _named(self, out: Tensor | tuple[Tensor, ...]) -> dict[str, Tensor]:
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        return dict(zip(self.output_names, out, strict=True))

    def _device_tensor(self, value) -> Tensor:
        t = value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return t.to(self.device)

    def __call__(self, inputs) -> dict[str, Tensor]:
        names = [n for n in self.input_names if n in inputs]
        if not self.capture:
            with torch.no_grad():
                return self._named(self.module(**{n: self._device_tensor(inputs[n]) for n in names}))
        key = tuple((n, tuple(inputs[n].shape), str(inputs[n].dtype)) for n in names)
        self._events[0].record()
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, {n: inputs[n] for n in names})
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
            self._load(entry, inputs)
        assert entry.graph is not None
        entry.graph.replay()
        self._events[1].record()
        self._timed = True
        return self._named(entry.outputs)

    def _load(self, entry: _Entry, inputs) -> None:
        if entry.copied is not None and not entry.copied.query():
            entry.copied.synchronize()  # the previous call's copy still reads the pinned buffers (rare)
        for name, static in entry.inputs.items():
            value = inputs[name]
            if isinstance(value, Tensor) and value.device.type == "cuda":
                static.copy_(value, non_blocking=True)
            else:
                staged = entry.pinned[name]
                staged.copy_(value if isinstance(value, Tensor) else torch.from_numpy(np.asarray(value)))
                static.copy_(staged, non_blocking=True)
        if entry.copied is None:
            entry.copied = torch.cuda.Event()
        entry.copied.record()

    def _capture(self, key: tuple, example) -> _Entry:
        static = {n: self._device_tensor(v).clone() for n, v in example.items()}
        pinned = {
            n: torch.empty(tuple(v.shape), dtype=static[n].dtype, pin_memory=True)
            for n, v in example.items()
            if not (isinstance(v, Tensor) and v.device.type == "cuda")
        }
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(self.warmup):  # lazy initialisation (cuBLAS, SDPA kernel choice) before capture
                self.module(**static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self.module(**static)
        outputs = (out,) if isinstance(out, Tensor) else tuple(out)
        log.info("captured %s in a CUDA graph for %s", type(self.module).__name__, key)
        return _Entry(graph, static, pinned, outputs)


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.float().cpu().numpy()
    return np.asarray(value)


class CudaGraphPolicy(GraphPolicy):
    """The torch network with the whole call in two CUDA graphs, at the robot's static shapes: the
    prefix (vision tower + embeddings + prefill → KV cache) and the fused N-step denoise loop, bf16 with
    the reference's fp32 islands (norms, action head), fused attention (SDPA). It is the exported-graph
    policy with torch as the engine: the same static shapes (cameras, frame sizes, prompt budget
    ``text_tokens``, batch, steps), the same refusals of an observation that does not fit, and no export.
    """

    @classmethod
    def from_checkpoint(cls, path: str | Path | None, **options: Any) -> CudaGraphPolicy:
        """Options: ``cameras``, ``batch``, ``text_tokens``, ``num_steps``, ``norm_key``, ``seed`` (as the
        exported backends), ``device`` ("cuda"), ``dtype`` ("bf16"; "fp32"), ``capture`` (False: the same
        two modules run eagerly, the reference), ``compile`` (``torch.compile`` both modules before
        capture; minutes of compilation at full size), ``max_graphs`` (per stage, default 4)."""
        from wall_runtime.backends.static_shapes import resolve_shapes
        from wall_runtime.backends.torch_backend import _dtype
        from wall_runtime.export.onnx_export import (
            DENOISE_INPUTS,
            DENOISE_OUTPUTS,
            PREFIX_INPUTS,
            PREFIX_OUTPUTS,
            STATE_INPUTS,
            PrefixGraph,
        )
        from wall_runtime.model.pipeline import load_network
        from wall_runtime.model.sampler import DenoiseModule, SamplerSettings

        options.pop("cache_dir", None)  # nothing is exported
        common = common_options(options)
        device = torch.device(options.pop("device", "cuda"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the cuda_graph backend needs a CUDA GPU and none is available")
        dtype = _dtype(options.pop("dtype", None)) or (
            torch.bfloat16 if device.type == "cuda" else torch.float32
        )
        capture = str(options.pop("capture", True)).lower() not in ("0", "false", "no")
        compile_ = str(options.pop("compile", False)).lower() not in ("0", "false", "no")
        max_graphs = int(options.pop("max_graphs", 4))
        # preprocessing (and the noise) stay on the CPU; the network lives in the two runners only
        preprocessor = load_graph_preprocessor(path, common["norm_key"], common["num_steps"], **options)
        shapes = resolve_shapes(preprocessor, common["cameras"], common["batch"], common["text_tokens"])
        net = load_network(path, preprocessor.cfg).to(device)  # read in fp32, cast on the device
        if dtype != torch.float32:
            net.to_inference_dtype(dtype)
        settings = SamplerSettings.from_config(preprocessor.cfg.net)
        prefix_inputs = PREFIX_INPUTS + (STATE_INPUTS if shapes.state_token else ())
        prefix_module: torch.nn.Module = PrefixGraph(net, net.visual, shapes.grid_thw, shapes.state_token)
        denoise_module: torch.nn.Module = DenoiseModule(net, settings)
        if compile_:
            # Inductor kernels (fused elementwise work, Triton matmuls where they win), compiled during
            # the runner's warm-up and then captured in the CUDA graph like eager kernels
            prefix_module = torch.compile(prefix_module, dynamic=False)
            denoise_module = torch.compile(denoise_module, dynamic=False)
        prefix = GraphedRunner(
            prefix_module,
            prefix_inputs,
            PREFIX_OUTPUTS,
            device,
            capture=capture,
            max_graphs=max_graphs,
        )
        denoise = GraphedRunner(
            denoise_module,
            DENOISE_INPUTS,
            DENOISE_OUTPUTS,
            device,
            capture=capture,
            max_graphs=max_graphs,
        )
        policy = cls(
            preprocessor,
            shapes,
            prefix,
            denoise,
            backend="cuda_graph",
            seed=common["seed"],
            noise_knots=common["noise_knots"],
            to_numpy=_to_numpy,
        )
        policy.dtype = dtype
        return policy

    def infer(self, observations, noise=None):
        results = super().infer(observations, noise)
        # the graph calls return at launch; the chunk's read-back synchronised, so the GPU times of the
        # two stages are known now (for a single group, the usual case: one robot, batch 1)
        prefix_ms, denoise_ms = self.run_prefix.last_gpu_ms(), self.run_denoise.last_gpu_ms()
        if prefix_ms is not None and denoise_ms is not None and len(results) <= self.shapes.batch:
            for r in results:
                r.timing_ms |= {"prefix": prefix_ms, "denoise": denoise_ms}
        return results

    def close(self) -> None:
        super().close()  # the graphs and the network's weights go with the runners
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
