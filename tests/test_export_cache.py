"""The engine cache: reused when everything matches, rebuilt when anything it depends on changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wall_runtime.export.cache import EngineCache, EngineKey, StaleEngineError, checkpoint_hash


def _checkpoint(tmp_path: Path) -> Path:
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "config.json").write_text('{"hidden_size": 64}')
    (ck / "model.safetensors").write_bytes(b"\x01" * 4096)
    return ck


def _key(ck_hash: str, shapes=None, steps=10, gpu="cpu", trt="none") -> EngineKey:
    return EngineKey.make(
        checkpoint_hash=ck_hash,
        graph="denoise",
        format="onnx",
        shapes=shapes or {"noise": (1, 8, 6), "kv": (2, 1, 2, 40, 16)},
        steps=steps,
        precision="fp32",
        gpu_model=gpu,
        tensorrt_version=trt,
    )


class Builder:
    """Counts builds; writes a file whose bytes depend on the key so a mix-up would show."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, key: EngineKey):
        def build(out: Path):
            self.calls += 1
            (out / "graph.onnx").write_text(key.digest())
            return ["graph.onnx"]

        return build


def test_entry_is_reused_when_nothing_changed(tmp_path):
    ck = _checkpoint(tmp_path)
    cache = EngineCache(tmp_path / "cache")
    b = Builder()
    key = _key(checkpoint_hash(ck, memo_dir=tmp_path))
    first = cache.get_or_build(key, b(key))
    second = cache.get_or_build(key, b(key))
    assert b.calls == 1
    assert not first.reused and second.reused
    assert second.file("graph.onnx").read_text() == key.digest()


def test_changed_checkpoint_gives_a_new_key_and_a_rebuild(tmp_path):
    ck = _checkpoint(tmp_path)
    cache = EngineCache(tmp_path / "cache")
    b = Builder()
    h1 = checkpoint_hash(ck, memo_dir=tmp_path)
    cache.get_or_build(_key(h1), b(_key(h1)))
    # same size, different bytes: a content change the memo must not hide
    (ck / "model.safetensors").write_bytes(b"\x02" * 4096)
    h2 = checkpoint_hash(ck, memo_dir=tmp_path)
    assert h2 != h1
    entry = cache.get_or_build(_key(h2), b(_key(h2)))
    assert b.calls == 2 and not entry.reused
    # a renamed file changes the hash too
    (ck / "model.safetensors").rename(ck / "model-00001.safetensors")
    assert checkpoint_hash(ck, memo_dir=tmp_path) not in (h1, h2)


@pytest.mark.parametrize(
    "change",
    [
        {"shapes": {"noise": (1, 8, 6), "kv": (2, 1, 2, 52, 16)}},  # another camera count
        {"steps": 4},
        {"gpu": "NVIDIA H100 80GB HBM3 (sm_90)"},
        {"trt": "10.9.0"},
    ],
)
def test_any_key_field_change_rebuilds(tmp_path, change):
    cache = EngineCache(tmp_path / "cache")
    b = Builder()
    base = _key("abc")
    cache.get_or_build(base, b(base))
    other = _key("abc", **change)
    assert other.digest() != base.digest()
    entry = cache.get_or_build(other, b(other))
    assert b.calls == 2 and not entry.reused
    assert entry.file("graph.onnx").read_text() == other.digest()


def test_tampered_or_truncated_engine_is_rebuilt_not_used(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    b = Builder()
    key = _key("abc")
    entry = cache.get_or_build(key, b(key))
    entry.file("graph.onnx").write_text("corrupted")
    with pytest.raises(StaleEngineError, match="does not match its manifest hash"):
        cache.lookup(key)
    again = cache.get_or_build(key, b(key))
    assert b.calls == 2 and again.file("graph.onnx").read_text() == key.digest()


def test_foreign_entry_under_the_right_name_is_rebuilt(tmp_path):
    """An engine copied in from another machine (other GPU) under this key's directory name."""
    cache = EngineCache(tmp_path / "cache")
    b = Builder()
    mine = _key("abc")
    foreign = _key("abc", gpu="NVIDIA GeForce RTX 5090 (sm_120)")
    src = cache.get_or_build(foreign, b(foreign)).path
    dst = cache.entry_dir(mine)
    shutil.copytree(src, dst)
    with pytest.raises(StaleEngineError, match="gpu_model"):
        cache.lookup(mine)
    entry = cache.get_or_build(mine, b(mine))
    assert b.calls == 2 and entry.file("graph.onnx").read_text() == mine.digest()


def test_failed_build_leaves_no_entry(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    key = _key("abc")

    def broken(out: Path):
        (out / "graph.onnx").write_text("half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cache.get_or_build(key, broken)
    assert cache.lookup(key) is None
    assert not any(cache.root.rglob("graph.onnx"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        checkpoint_hash(tmp_path / "nope", memo_dir=tmp_path)
