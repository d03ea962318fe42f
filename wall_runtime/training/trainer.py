"""Flow-matching training of a WALL-OSS-architecture model, exactly the objective of spec §3.

Per sample: ``t = (1 − Beta(1.5, 1)) · 0.999``, noise ``ε ~ N(0, I)``, ``x_t = (1 − t)·ε + t·x``; the
network's output at the action tokens is regressed on the velocity ``x − ε`` (or, for a 0.5 model with
``use_x_loss``, ``x̂ = (1 − t)·v + x_t`` on ``x``) with an MSE masked by ``dof_mask``.

``Beta(1.5, 1)`` is drawn as ``U^(1/1.5)`` (its inverse CDF; exact), from the run's own generator, so
the draw does not depend on the global RNG.

Attention: the same masks the sampler uses at inference. Prefix rows are causal and never see the
action tokens; action rows see the whole prefix and, among themselves, the mask the sampler uses at
the Euler step whose interval holds ``t`` (FLOW's "mixed" schedule: lower-triangular at step 0,
``t < t₁``; bidirectional after; 0.5: lower-triangular always). The forward pass is the sampler's own
full-recompute path (``WallOSSNet`` segments, prefix = expert 0, action tokens = expert 1), so train
and inference run one network.

The model starts from the deterministic random-weight checkpoint of ``tiny_checkpoint`` with the
dataset's layout and statistics, is trained in fp32 on the CPU, and is written back in the published
layout (config.json, config.yml, safetensors, tokenizer, norm_stats.json) with a JSON-lines log.

Determinism: a fixed seed, a fixed thread count and ``torch.use_deterministic_algorithms`` give the
same weights bit for bit on one machine and torch build (tests compare the safetensors bytes).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wall_runtime.model.checkpoint import fuse_state_dict, published_fused_names, write_state_dict
from wall_runtime.model.decoder import ACTION_EXPERT, PREFIX_EXPERT, full_attention_mask
from wall_runtime.model.pipeline import PreparedBatch, WallOSS
from wall_runtime.model.sampler import SamplerSettings
from wall_runtime.model.tiny_checkpoint import SIZES, TinyLayout, write_tiny_checkpoint
from wall_runtime.training.dataset import EpisodeDataset
from wall_runtime.types import Observation

LOG_NAME = "training_log.jsonl"
SUMMARY_NAME = "training.json"
NORM_KEY = "default"


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    variant: str = "flow"
    size: str = "demo"
    threads: int = 2
    log_every: int = 10
    beta_alpha: float = 1.5
    time_scale: float = 0.999
    # share of each batch drawn from the first ``start_frames`` frames of the episodes: there the
    # instruction and the images alone decide where the arm goes; later frames are largely
    # predictable from the arm's own pose, so a uniform draw gives the grounding a sliver of the
    # gradient (the "copycat" shortcut of behaviour cloning)
    start_fraction: float = 0.0
    start_frames: int = 8

    def check(self) -> None:
        if self.variant not in ("flow", "0.5"):
            raise ValueError(f"variant {self.variant!r} is not flow or 0.5")
        if self.size not in SIZES:
            raise ValueError(f"size {self.size!r} is not one of {', '.join(SIZES)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: the untrained starting checkpoint), got {self.steps}")
        for name in ("batch_size", "threads", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.start_fraction <= 1.0:
            raise ValueError(f"start_fraction must be in [0, 1], got {self.start_fraction}")
        if self.start_frames < 1:
            raise ValueError(f"start_frames must be >= 1, got {self.start_frames}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    out_dir: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    weights_sha256: str = ""


def sample_time(batch: int, generator: torch.Generator, alpha: float = 1.5, scale: float = 0.999) -> Tensor:
    """``t = (1 − Beta(alpha, 1)) · scale``, ``[batch]`` fp32 (Beta(α, 1) = U^(1/α))."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return ((1.0 - u.pow(1.0 / alpha)) * scale).float()


def causal_rows(t: Tensor, settings: SamplerSettings) -> Tensor:
    """Per sample, whether the sampler's step whose interval holds ``t`` attends causally among actions."""
    times = settings.times()
    schedule = torch.tensor(settings.causal_schedule())
    step = torch.clamp(
        torch.searchsorted(times[1:-1].contiguous(), t.contiguous(), right=True), 0, len(schedule) - 1
    )
    return schedule[step]


def training_velocity(
    policy: WallOSS, batch: PreparedBatch, x_t: Tensor, t: Tensor, dof_mask: Tensor
) -> Tensor:
    """The network's velocity at ``x_t [B, H, D]``, ``t [B]`` with gradients: vision tower, prompt
    embeddings (image features and the ``<|propri|>`` embedding in place), then one pass over prefix
    + action tokens with, per row, the attention mask the sampler uses at that ``t``."""
    net = policy.net
    H = x_t.shape[1]
    Lp = batch.prefix_length
    ids = torch.from_numpy(batch.input_ids[:, :Lp])
    features = net.visual(torch.from_numpy(batch.pixel_values), torch.from_numpy(batch.grid_thw))
    embeds = net.embed_tokens(ids)
    embeds = embeds.masked_scatter(
        (ids == policy.tokenizer.image_pad_id)[..., None], features.to(embeds.dtype)
    )
    if not policy.cfg.net.state_as_text:
        propri = net.embed_state(torch.from_numpy(batch.state), torch.from_numpy(batch.state_mask))
        embeds = embeds.masked_scatter((ids == policy.tokenizer.propri_id)[..., None], propri)
    prefix_mask = torch.from_numpy(batch.attention_mask[:, :Lp])
    causal = causal_rows(t, policy.settings)[:, None, None, None]
    mask = torch.where(
        causal,
        full_attention_mask(prefix_mask, H, True),
        full_attention_mask(prefix_mask, H, False),
    )
    cos, sin = net.model.rope(torch.from_numpy(batch.position_ids), net.dtype)
    segments = [(PREFIX_EXPERT, embeds), (ACTION_EXPERT, net.embed_actions(x_t, t, dof_mask))]
    (_, hidden), _, _ = net.model.forward_segments(segments, cos, sin, mask, return_kv=False)
    return net._velocity(hidden, x_t, t)


def flow_loss(
    policy: WallOSS,
    batch: PreparedBatch,
    actions: Tensor,
    noise: Tensor,
    t: Tensor,
    *,
    x_loss: bool = False,
) -> Tensor:
    """The masked flow-matching MSE of one prepared batch (gradients flow into ``policy.net``).

    ``actions`` are normalised chunks ``[B, H, D]`` (masked dims anything finite), ``noise`` the same
    shape, ``t [B]``.
    """
    H = actions.shape[1]
    dof_mask = torch.from_numpy(batch.dof_mask)[:, None, :].expand(-1, H, -1).contiguous()
    tt = t[:, None, None]
    x_t = (1 - tt) * noise + tt * actions
    v = training_velocity(policy, batch, x_t, t, dof_mask)
    if x_loss:
        pred, target = (1 - tt) * v + x_t, actions
    else:
        pred, target = v, actions - noise
    err = (pred - target) ** 2 * dof_mask
    return err.sum() / dof_mask.sum().clamp(min=1)


class BatchMaker:
    """Observations and normalised action chunks of dataset frames, in the runtime's layout."""

    def __init__(self, ds: EpisodeDataset, policy: WallOSS) -> None:
        self.ds = ds
        self.policy = policy
        cfg = policy.cfg
        self.H = cfg.net.action_horizon
        self.D = cfg.net.action_dim
        self.chunks = ds.chunk_indices(self.H)
        self.real_a = ds.action.shape[1]
        self.views = [v for v in cfg.data.cameras if v in ds.images]
        self.dof_mask = np.zeros(self.D, np.float32)
        self.dof_mask[: self.real_a] = 1

    def observation(self, i: int) -> Observation:
        return Observation(
            stamp=0.0,
            images={v: self.ds.images[v][i] for v in self.views},
            state=self.ds.state[i],
            instruction=self.ds.tasks[int(self.ds.task_index[i])],
            dof_mask=self.dof_mask,
            norm_key=NORM_KEY,
        )

    def __call__(self, indices: np.ndarray) -> tuple[PreparedBatch, Tensor]:
        batch = self.policy.preprocess([self.observation(int(i)) for i in indices])
        raw = np.zeros((len(indices), self.H, self.D), np.float32)
        raw[:, :, : self.real_a] = self.ds.action[self.chunks[indices]]
        norm = self.policy.normalizers.action.normalize(raw, NORM_KEY)
        return batch, torch.from_numpy(np.ascontiguousarray(norm, np.float32))


def _lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = (step - settings.warmup_steps) / span
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def published_state_dict(policy: WallOSS) -> dict[str, Tensor]:
    sd = {k: v.detach().float().contiguous().clone() for k, v in policy.net.state_dict().items()}
    return fuse_state_dict(sd, published_fused_names(policy.cfg, "published"))


def dataset_layout(ds: EpisodeDataset, views: list[str], horizon: int) -> TinyLayout:
    action_range, state_range = ds.stats()
    return TinyLayout(
        dof_config=ds.dof_config,
        agent_pos_config=ds.agent_pos_config,
        views=tuple(views),
        horizon=horizon,
        action_range=action_range,
        state_range=state_range,
    )


def declare_action_period(out: Path, period: float) -> None:
    """Write the seconds between two chunk rows into the checkpoint's ``config.yml``
    (``data.action_period``): the server stamps it as each chunk's ``dt``, so a model trained on
    rows 0.1 s apart plays them 0.1 s apart on a robot of any control rate (docs/model.md)."""
    import yaml

    path = out / "config.yml"
    yml = yaml.safe_load(path.read_text())
    yml.setdefault("data", {})["action_period"] = round(float(period), 9)
    path.write_text(yaml.safe_dump(yml, sort_keys=False))


def write_snapshot(policy: WallOSS, out: Path, dest: Path) -> None:
    """A loadable checkpoint of the weights now: ``out``'s config and tokenizer files, these weights."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in out.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.name != LOG_NAME:
            shutil.copy2(f, tmp / f.name)
    write_state_dict(published_state_dict(policy), tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # an evaluation never sees a half-written snapshot


def train(
    ds: EpisodeDataset,
    out_dir: str | Path,
    settings: TrainSettings,
    *,
    on_step: Callable[[int, float], None] | None = None,
    data_id: str = "",
    snapshot_every: int = 0,
    snapshot_dir: str | Path | None = None,
) -> TrainResult:
    """Train on ``ds`` and write the checkpoint into ``out_dir`` (with ``training_log.jsonl``).

    ``snapshot_every > 0``: every that many steps a complete checkpoint of the weights so far is
    written to ``snapshot_dir/step_NNNNNN`` (default ``out_dir/../<name>-snapshots``), so a long run
    can be evaluated while it goes on; snapshots read nothing back, so the weights do not change."""
    settings.check()
    out = Path(out_dir)
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)

    horizon = int(ds.meta.get("action_horizon", SIZES[settings.size]["horizon"]))
    layout = dataset_layout(ds, sorted(ds.images), horizon)
    write_tiny_checkpoint(
        out, settings.variant, seed=settings.seed, size=settings.size, layout=layout, norm_key=NORM_KEY
    )
    period = ds.action_period
    if period is not None:
        declare_action_period(out, period)
    policy = WallOSS.from_checkpoint(out, device="cpu", dtype=torch.float32)
    x_loss = bool(json.loads((out / "config.json").read_text()).get("use_x_loss", False))
    net = policy.net
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in net.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
        foreach=False,
    )
    maker = BatchMaker(ds, policy)
    start_pool = ds.start_frames(settings.start_frames)
    n_start = round(settings.batch_size * settings.start_fraction)
    H, D = maker.H, maker.D
    result = TrainResult(out_dir=out)
    log_path = out / LOG_NAME
    start = time.perf_counter()
    cpu_start = time.process_time()
    with log_path.open("w") as log:
        for step in range(settings.steps):
            lr = _lr_at(step, settings)
            for group in optim.param_groups:
                group["lr"] = lr
            idx = torch.randint(ds.num_frames, (settings.batch_size,), generator=generator).numpy()
            if n_start:
                pick = torch.randint(len(start_pool), (n_start,), generator=generator).numpy()
                idx[:n_start] = start_pool[pick]
            batch, actions = maker(idx)
            t = sample_time(settings.batch_size, generator, settings.beta_alpha, settings.time_scale)
            noise = torch.randn(settings.batch_size, H, D, generator=generator)
            loss = flow_loss(policy, batch, actions, noise, t, x_loss=x_loss)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip, foreach=False)
            optim.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {step}")
            result.losses.append(value)
            if step % settings.log_every == 0 or step == settings.steps - 1:
                record = {
                    "step": step,
                    "loss": value,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "seconds": round(time.perf_counter() - start, 3),
                    # CPU time of this process: on a shared machine, the figure that does not
                    # depend on how many other jobs run
                    "cpu_seconds": round(time.process_time() - cpu_start, 3),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
            if snapshot_every > 0 and (step + 1) % snapshot_every == 0 and step + 1 < settings.steps:
                root = (
                    Path(snapshot_dir) if snapshot_dir is not None else out.parent / f"{out.name}-snapshots"
                )
                write_snapshot(policy, out, root / f"step_{step + 1:06d}")
            if on_step is not None:
                on_step(step, value)
    result.seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    net.eval()
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    write_state_dict(published_state_dict(policy), out)
    result.weights_sha256 = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    summary = {
        "settings": asdict(settings),
        "data": data_id,
        "frames": ds.num_frames,
        "episodes": ds.num_episodes,
        "tasks": ds.tasks,
        "action_horizon": H,
        "action_period": period,
        "chunk_stride": ds.chunk_stride,
        # steps 0: the untrained starting point (the random-weight baseline of the same recipe)
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss_mean_last_10pct": (
            float(np.mean(result.losses[-max(1, len(result.losses) // 10) :])) if result.losses else None
        ),
        "seconds": round(result.seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "model.safetensors sha256": result.weights_sha256,
        "torch": torch.__version__,
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    return result
