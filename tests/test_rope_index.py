"""mRoPE position ids match transformers' Qwen2.5-VL ``get_rope_index`` on multi-image, left-padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wall_runtime.model.rope_index import get_rope_index

# Qwen2.5-VL's ids; the function takes them as arguments, nothing here is special about the values
VISION_START, VISION_END, IMAGE, PAD = 151652, 151653, 151655, 151643
MERGE = 2


def image_block(grid) -> list[int]:
    return [VISION_START] + [IMAGE] * (int(np.prod(grid)) // MERGE**2) + [VISION_END]


def prompt(grids, text_lengths, seed) -> list[int]:
    """Text runs of the given lengths with one image between each pair of runs."""
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    for i, length in enumerate(text_lengths):
        ids += rng.integers(100, 150000, size=length).tolist()
        if i < len(grids):
            ids += image_block(grids[i])
    return ids


def left_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), PAD, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for b, row in enumerate(rows):
        ids[b, length - len(row) :] = row
        mask[b, length - len(row) :] = 1
    return ids, mask


@pytest.fixture(scope="module")
def hf_model():
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=151936,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32),
        image_token_id=IMAGE,
        vision_start_token_id=VISION_START,
    )
    with torch.device("meta"):  # only get_rope_index is used: no weights needed
        return Qwen2_5_VLModel(config)


def reference(model, ids, grids, mask):
    ids_t = torch.from_numpy(ids)
    position_ids, deltas = model.get_rope_index(
        ids_t,
        mm_token_type_ids=(ids_t == IMAGE).int(),
        image_grid_thw=torch.tensor(grids),
        attention_mask=None if mask is None else torch.from_numpy(mask),
    )
    return position_ids.numpy(), deltas.numpy()


def ours(ids, grids, mask):
    return get_rope_index(
        ids,
        np.asarray(grids),
        mask,
        image_token_id=IMAGE,
        vision_start_token_id=VISION_START,
        spatial_merge_size=MERGE,
    )


def test_three_images_batch_of_two_left_padded(hf_model):
    # row 0: three cameras of different shapes; row 1: the same cameras, shorter text (more padding)
    grids = [[1, 14, 18], [1, 10, 18], [1, 24, 32], [1, 14, 18], [1, 10, 18], [1, 24, 32]]
    rows = [prompt(grids[:3], [20, 5, 7, 30], seed=0), prompt(grids[3:], [9, 3, 4, 11], seed=1)]
    ids, mask = left_pad(rows)
    assert mask[1].sum() < mask[0].sum() and mask[1, 0] == 0

    expected_pos, expected_delta = reference(hf_model, ids, grids, mask)
    position_ids, deltas = ours(ids, grids, mask)

    assert position_ids.dtype == np.int64 and position_ids.shape == (3, 2, ids.shape[1])
    np.testing.assert_array_equal(position_ids, expected_pos)
    np.testing.assert_array_equal(deltas, expected_delta)
    assert deltas.shape == (2, 1) and deltas.dtype == np.int64


def test_batch_without_mask_and_adjacent_images(hf_model):
    grids = [[1, 4, 6], [1, 6, 4], [1, 2, 2]]
    ids = np.asarray([prompt(grids, [3, 0, 0, 2], seed=2)], dtype=np.int64)
    expected_pos, expected_delta = reference(hf_model, ids, grids, None)
    position_ids, deltas = ours(ids, grids, None)
    np.testing.assert_array_equal(position_ids, expected_pos)
    np.testing.assert_array_equal(deltas, expected_delta)


def test_positions_by_hand():
    # 2 text tokens, a 2×3 merged grid (grid 1×4×6), 1 text token
    ids = np.asarray([[7, 8, *image_block([1, 4, 6]), 9]])
    position_ids, deltas = ours(ids, [[1, 4, 6]], None)
    t, h, w = position_ids[:, 0]
    np.testing.assert_array_equal(t, [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7])
    np.testing.assert_array_equal(h, [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7])
    np.testing.assert_array_equal(w, [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7])
    assert deltas[0, 0] == 8 - 11


def test_text_only_rows():
    ids, mask = left_pad([[5, 6, 7, 8], [5, 6]])
    position_ids, deltas = ours(ids, np.zeros((0, 3), dtype=np.int64), mask)
    np.testing.assert_array_equal(position_ids[:, 1], [[0, 0, 0, 1]] * 3)
    np.testing.assert_array_equal(deltas, [[0], [0]])


def test_errors_name_the_problem():
    ids = np.asarray([[1, *image_block([1, 4, 4])]])
    with pytest.raises(ValueError, match=r"4 image tokens but .* need 9"):
        ours(ids, [[1, 6, 6]], None)
    with pytest.raises(ValueError, match="2 rows but the prompts hold 1"):
        ours(ids, [[1, 4, 4], [1, 4, 4]], None)
    with pytest.raises(ValueError, match="more images"):
        ours(ids, np.zeros((0, 3), dtype=np.int64), None)
    with pytest.raises(ValueError, match="attention_mask shape"):
        ours(ids, [[1, 4, 4]], np.ones((1, 3)))
