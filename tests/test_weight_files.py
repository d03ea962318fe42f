"""The safetensors reader the loader streams from: same tensors as the safetensors library, every
dtype and an empty tensor, zero-copy views, and header problems named."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from wall_runtime.model.weight_files import WeightFileError, open_safetensors, read_safetensors_header


def test_views_equal_what_safetensors_reads(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(2, 2, 2, generator=g).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    expected = load_file(str(path))
    entries = read_safetensors_header(path)
    assert set(entries) == set(tensors)
    with open_safetensors(path) as handle:
        for name, want in expected.items():
            got = handle.view(name)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want), name
            handle.release(name)
            assert torch.equal(handle.view(name), want)  # pages come back from the page cache


def test_header_entries_are_checked(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(4)}, str(path))
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length].decode()

    def rewrite(new_header: str) -> None:
        raw = new_header.encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])

    rewrite(header.replace('"F32"', '"F99"'))
    with pytest.raises(WeightFileError, match=r"tensor 'x' has unsupported dtype 'F99'"):
        read_safetensors_header(path)
    rewrite(header.replace("[4]", "[5]"))
    with pytest.raises(WeightFileError, match=r"spans 16 bytes but its shape \(5,\)"):
        read_safetensors_header(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(WeightFileError, match="too short"):
        read_safetensors_header(path)
