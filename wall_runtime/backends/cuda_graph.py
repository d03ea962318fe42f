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
the same chunk (tests/test_gpu_cuda_graph.py holds it to the eager result).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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


def use_cuda_graph(model) -> CudaGraphDenoiser:
    """Make ``model`` (a CUDA :class:`wall_runtime.model.pipeline.WallOSS`) run its denoise stage from a
    CUDA graph. Guided (RTC inpainting) calls keep the eager path: they need autograd.

    The torch backend calls this when asked for ``cuda_graph=True`` on a GPU.
    """
    denoiser = CudaGraphDenoiser(model.net, model.settings)
    eager = model.denoise

    def denoise(batch, kv, noise: Tensor, guidance=None) -> Tensor:
        if guidance is not None:
            return eager(batch, kv, noise, guidance)
        horizon = model.cfg.net.action_horizon
        lp = batch.prefix_length
        device = model.device
        dof_mask = (
            torch.from_numpy(batch.dof_mask).to(device)[:, None, :].expand(-1, horizon, -1).contiguous()
        )
        suffix_positions = torch.from_numpy(batch.position_ids[:, :, lp:]).to(device)
        prefix_mask = torch.from_numpy(batch.attention_mask[:, :lp]).to(device)
        padding = torch.from_numpy(batch.padding_action).to(device)
        return denoiser(kv, noise, dof_mask, suffix_positions, prefix_mask, padding)

    model.denoise = denoise
    model.cuda_graph = denoiser
    return denoiser
