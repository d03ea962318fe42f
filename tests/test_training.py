"""wall-runtime train: the spec §3 objective, train/inference attention agreement, determinism, and a
checkpoint the normal loader serves."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from wall_runtime.model.pipeline import WallOSS
from wall_runtime.model.sampler import SamplerSettings
from wall_runtime.training.dataset import DatasetError, EpisodeDataset, read_dataset, write_dataset
from wall_runtime.training.trainer import (
    LOG_NAME,
    BatchMaker,
    TrainSettings,
    causal_rows,
    sample_time,
    train,
    training_velocity,
)
from wall_runtime.types import Observation

LAYOUT = {"follow_right_ee_cartesian_pos": 3, "follow_right_ee_rotation": 3, "follow_right_gripper": 1}


def _dataset(episodes: int = 4, length: int = 10, size: int = 28, seed: int = 0) -> EpisodeDataset:
    """Two instructions, two goals; the image colour tells them apart; actions move toward the goal."""
    rng = np.random.default_rng(seed)
    imgs, state, action, ep, task = [], [], [], [], []
    for e in range(episodes):
        which = e % 2
        goal = np.array([0.3, 0.2, 0.1]) if which == 0 else np.array([-0.3, 0.1, 0.2])
        pos = rng.uniform(-0.1, 0.1, 3)
        for k in range(length):
            img = np.zeros((size, size, 3), np.uint8)
            img[..., which] = 200
            imgs.append(img)
            state.append(np.concatenate([pos, [0.1, 0.2, 0.3], [0.02]]))
            pos = pos + 0.25 * (goal - pos)
            action.append(np.concatenate([pos, [0.1, 0.2, 0.3], [0.02 if k < length // 2 else 0.0]]))
            ep.append(e)
            task.append(which)
    return EpisodeDataset(
        images={"face_view": np.stack(imgs)},
        state=np.asarray(state, np.float32),
        action=np.asarray(action, np.float32),
        episode_index=np.asarray(ep),
        task_index=np.asarray(task),
        tasks=["go to the red goal", "go to the green goal"],
        meta={"dof_config": LAYOUT, "agent_pos_config": LAYOUT, "action_horizon": 4},
    )


FAST = dict(size="tiny", batch_size=4, lr=3e-3, warmup_steps=2, log_every=1, threads=1)


def test_time_distribution_is_one_minus_beta_scaled():
    t = sample_time(200_000, torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0 and float(t.max()) <= 0.999
    # 1 − Beta(1.5, 1): mean 1 − 1.5/2.5 = 0.4, P(t < 0.5) = 1 − 0.5^1.5
    assert abs(float(t.mean()) - 0.4 * 0.999) < 3e-3
    assert abs(float((t < 0.5 * 0.999).float().mean()) - (1 - 0.5**1.5)) < 3e-3


def test_attention_schedule_follows_the_sampler():

    flow = SamplerSettings(num_steps=10, action_attention="mixed")
    t = torch.tensor([0.0, 0.05, 0.0999, 0.1, 0.5, 0.999])
    assert causal_rows(t, flow).tolist() == [True, True, True, False, False, False]
    causal = SamplerSettings(num_steps=10, time_scale=0.999, action_attention="causal")
    assert causal_rows(t, causal).all()


def test_chunks_stay_in_their_episode():
    ds = _dataset(episodes=2, length=5)
    idx = ds.chunk_indices(4)
    assert idx[0].tolist() == [0, 1, 2, 3]
    assert idx[3].tolist() == [3, 4, 4, 4]  # padded with the episode's last action
    assert idx[5].tolist() == [5, 6, 7, 8]


def test_start_frames_are_each_episodes_first_frames_and_weighting_is_reproducible(tmp_path):
    ds = _dataset(episodes=3, length=5)
    assert ds.start_frames(2).tolist() == [0, 1, 5, 6, 10, 11]
    assert ds.start_frames(9).tolist() == list(range(15))  # never past an episode's end
    digests = []
    for name, frac in (("a", 0.5), ("b", 0.5), ("u", 0.0)):
        train(ds, tmp_path / name, TrainSettings(steps=2, start_fraction=frac, start_frames=2, **FAST))
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]  # the weighted draw is part of the seeded run
    with pytest.raises(ValueError, match="start_fraction"):
        TrainSettings(start_fraction=1.5).check()


def test_dataset_round_trip_and_bad_files(tmp_path):
    ds = _dataset(episodes=2, length=3)
    back = read_dataset(write_dataset(tmp_path / "d.npz", ds))
    assert back.tasks == ds.tasks and np.array_equal(back.action, ds.action)
    bad = _dataset(episodes=2, length=3)
    bad.action = bad.action[:, :5]
    with pytest.raises(DatasetError, match="action must be"):
        read_dataset(write_dataset(tmp_path / "bad.npz", bad))
    (tmp_path / "x.npz").write_text("nope")
    with pytest.raises(DatasetError, match="cannot read"):
        read_dataset(tmp_path / "x.npz")


def test_training_velocity_is_the_samplers_velocity(tmp_path):
    """The training forward (per-row masks) equals the sampler's full-recompute velocity."""
    ds = _dataset()
    train(ds, tmp_path / "ck", TrainSettings(steps=1, **FAST))
    policy = WallOSS.from_checkpoint(tmp_path / "ck")
    maker = BatchMaker(ds, policy)
    batch, actions = maker(np.array([0, 13, 27]))
    H = actions.shape[1]
    t = torch.tensor([0.02, 0.5, 0.9])
    x_t = torch.randn(actions.shape, generator=torch.Generator().manual_seed(1))
    dof = torch.from_numpy(batch.dof_mask)[:, None, :].expand(-1, H, -1).contiguous()
    with torch.no_grad():
        v = training_velocity(policy, batch, x_t, t, dof)
        features = policy.encode_images(batch)
        embeds = policy.prefix_embeds(batch, features)
        Lp = batch.prefix_length
        pos = torch.from_numpy(batch.position_ids)
        mask = torch.from_numpy(batch.attention_mask[:, :Lp])
        for row, causal in enumerate([True, False, False]):  # FLOW: step 0 causal, later bidirectional
            ref = policy.net.full_velocity(
                embeds[row : row + 1],
                pos[:, row : row + 1, :Lp],
                mask[row : row + 1],
                x_t[row : row + 1],
                t[row : row + 1],
                dof[row : row + 1],
                pos[:, row : row + 1, Lp:],
                causal,
            )
            torch.testing.assert_close(v[row : row + 1], ref, atol=1e-5, rtol=1e-5)


def test_loss_falls_and_checkpoint_loads_and_predicts(tmp_path):
    ds = _dataset()
    out = tmp_path / "ck"
    result = train(ds, out, TrainSettings(steps=30, **FAST))
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.7 * first, (first, last)
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(30))
    assert {"step", "loss", "lr", "seconds"} <= set(log[0])
    stats = json.loads((out / "norm_stats.json").read_text())["norm_stats"]["action"]
    np.testing.assert_allclose(stats["q01"][:3], np.quantile(ds.action[:, :3], 0.01, axis=0), rtol=1e-5)
    policy = WallOSS.from_checkpoint(out)
    obs = Observation(0.0, {"face_view": ds.images["face_view"][0]}, ds.state[0], ds.tasks[0])
    (res,) = policy.infer([obs], generator=torch.Generator().manual_seed(0))
    assert res.actions.shape == (4, 7) and np.isfinite(res.actions).all()


def test_same_seed_same_bytes(tmp_path):
    ds = _dataset()
    digests = []
    for name in ("a", "b"):
        train(ds, tmp_path / name, TrainSettings(steps=3, **FAST))
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    train(ds, tmp_path / "c", TrainSettings(steps=3, seed=1, **FAST))
    assert hashlib.sha256((tmp_path / "c" / "model.safetensors").read_bytes()).hexdigest() != digests[0]


def test_train_command(tmp_path):
    from typer.testing import CliRunner

    from wall_runtime.cli import app

    data = write_dataset(tmp_path / "d.npz", _dataset(episodes=2, length=4))
    args = ["train", "--data", str(data), "--out", str(tmp_path / "ck"), "--steps", "2", "--size", "tiny"]
    res = CliRunner().invoke(app, [*args, "--batch-size", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "loss" in res.output and (tmp_path / "ck" / "model.safetensors").is_file()
    (tmp_path / "bad.npz").write_bytes(b"not a dataset")
    res = CliRunner().invoke(
        app, ["train", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "cannot read dataset" in res.output
    assert not (tmp_path / "x").exists()
    res = CliRunner().invoke(app, [*args, "--variant", "0.7"])
    assert res.exit_code != 0 and "variant" in res.output


def test_variant_05_trains_with_x_loss_and_loads(tmp_path):
    ds = _dataset()
    result = train(ds, tmp_path / "ck", TrainSettings(steps=2, variant="0.5", **FAST))
    assert all(np.isfinite(result.losses))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["use_x_loss"] and cfg["causal_action_attention_mask"]
    policy = WallOSS.from_checkpoint(tmp_path / "ck")
    obs = Observation(0.0, {"face_view": ds.images["face_view"][0]}, ds.state[0], ds.tasks[0])
    (res,) = policy.infer([obs], generator=torch.Generator().manual_seed(0))
    assert np.isfinite(res.actions).all()


def test_npz_training_declares_its_row_period(tmp_path):
    """An .npz recorded at 10 Hz (meta fps, as `pick-cube record` writes) trains rows 0.1 s apart and
    the checkpoint says so; --action-period 0.2 takes every 2nd frame; a dataset without fps declares
    nothing (the robot's period applies, as for the published checkpoints)."""
    import yaml
    from typer.testing import CliRunner

    from wall_runtime.cli import app
    from wall_runtime.model.config import load_config

    ds = _dataset(episodes=2, length=6)
    plain = write_dataset(tmp_path / "plain.npz", ds)
    ds.meta["fps"] = 10
    data = write_dataset(tmp_path / "d.npz", ds)
    base = ["--steps", "1", "--size", "tiny", "--batch-size", "2", "--threads", "1"]
    for extra, period in (([], 0.1), (["--action-period", "0.2"], 0.2)):
        out = tmp_path / f"ck{period}"
        res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), *base, *extra])
        assert res.exit_code == 0, res.output
        assert yaml.safe_load((out / "config.yml").read_text())["data"]["action_period"] == period
        assert load_config(out).data.action_period == period
        assert json.loads((out / "training.json").read_text())["chunk_stride"] == round(period * 10)
    res = CliRunner().invoke(app, ["train", "--data", str(plain), "--out", str(tmp_path / "p"), *base])
    assert res.exit_code == 0, res.output
    assert "action_period" not in yaml.safe_load((tmp_path / "p" / "config.yml").read_text())["data"]
    assert load_config(tmp_path / "p").data.action_period is None
    res = CliRunner().invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "q"), *base, "--action-period", "0.15"]
    )
    assert res.exit_code == 2 and "not a whole number of frames" in " ".join(res.output.split())
