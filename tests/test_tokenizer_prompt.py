"""Tokenizer (ids from the checkpoint, transformers as reference) and the prompt of each generation."""

from __future__ import annotations

import numpy as np
import pytest

from wall_runtime.model.prompt import (
    PromptError,
    discretize_state,
    encode_prompt,
    pad_left,
    prompt_text,
    state_text,
)
from wall_runtime.model.tiny_checkpoint import write_tiny_checkpoint
from wall_runtime.model.tokenizer import WallTokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "flow")


@pytest.fixture(scope="module")
def tok(ckpt):
    return WallTokenizer.from_checkpoint(ckpt)


SAMPLE = (
    "<|im_start|>user\nObservation: front view: <|vision_start|><|image_pad|><|vision_end|>\n"
    "Instruction: Pick up the cup, then 12.5 cm left!\nProprioception: 3 141 59\n<|propri|>"
    "<|im_end|>\n<|im_start|>assistant\n<|action|><|action|>"
)


def test_added_tokens_follow_the_reference_order(tok):
    # add_tokens(["<|propri|>", "<|action|>"]) appends them after every existing token
    assert tok.action_id == tok.propri_id + 1 == len(tok) - 1
    assert tok.image_pad_id != tok.vision_start_id


def test_token_ids_match_transformers(ckpt, tok):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    ref.add_tokens(["<|propri|>", "<|action|>"])
    assert len(ref) == len(tok)
    assert ref(SAMPLE, add_special_tokens=False)["input_ids"] == tok.encode(SAMPLE)
    for token in ("<|propri|>", "<|action|>", "<|image_pad|>", "<|vision_start|>", "<|im_end|>"):
        assert ref.convert_tokens_to_ids(token) == tok.token_id(token)


def test_digits_tokenise_one_per_token(tok):
    ids = tok.encode("Proprioception: 255 128")
    digits = [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()]
    assert digits == ["2", "5", "5", "1", "2", "8"]


def test_discretisation_formula():
    x = np.array([-1.0, -0.99999, -0.5, 0.0, 0.0078125, 0.5, 0.99, 1.0], np.float32)
    got = discretize_state(x, 256)
    # digitize against the 256 left edges of [-1, 1], minus one
    expected = np.floor((x.astype(np.float64) + 1) / (2 / 256)).astype(int)
    expected = np.clip(expected, 0, 255)
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 0 and got[-1] == 255
    assert discretize_state(np.array([1.0]), 512)[0] == 511


def test_state_text_omits_masked_dims():
    norm = np.array([-1.0, 0.0, 1.0, 0.5], np.float32)
    assert state_text(norm, np.array([1, 0, 1, 1]), 256) == "0 255 192"
    assert state_text(norm, np.zeros(4), 256) == ""


def test_flow_prompt_text_exact():
    prefix, suffix = prompt_text(["front view", "left wrist view"], "put the cup away", "<|propri|>", 3)
    assert prefix == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nObservation: front view: <|vision_start|><|image_pad|><|vision_end|>"
        " left wrist view: <|vision_start|><|image_pad|><|vision_end|>\n"
        "Instruction: put the cup away\nPredict the next action in robot action.\n"
        "Proprioception: <|propri|>\n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert suffix == "<|action|><|action|><|action|>"  # nothing after the actions


def test_encode_expands_image_pads_and_ends_with_actions(tok):
    enc = encode_prompt(tok, ["front view", "wrist"], "go", "<|propri|>", 4, [6, 3])
    ids = enc.input_ids.tolist()
    assert ids.count(tok.image_pad_id) == 9
    assert ids[-4:] == [tok.action_id] * 4 and tok.action_id not in ids[:-4]
    assert ids.count(tok.propri_id) == 1
    assert enc.prefix_length == len(ids) - 4
    assert ids[enc.prefix_length - 1] != tok.im_end_id  # "assistant\n" precedes the actions
    first = ids.index(tok.image_pad_id)
    assert ids[first - 1] == tok.vision_start_id and ids[first + 6] == tok.vision_end_id


def test_instruction_is_verbatim(tok):
    enc = encode_prompt(tok, ["v"], "open the drawer", "<|propri|>", 2, [1])
    text = tok.decode(enc.input_ids.tolist())
    assert "Instruction: open the drawer\nPredict" in text  # no "." appended


def test_prompt_over_max_length_is_refused(tok):
    enc = encode_prompt(tok, ["v"], "go", "<|propri|>", 4, [10])
    with pytest.raises(PromptError, match="over max_length"):
        encode_prompt(tok, ["v"], "go", "<|propri|>", 4, [10], max_length=len(enc.input_ids) - 1)
    encode_prompt(tok, ["v"], "go", "<|propri|>", 4, [10], max_length=len(enc.input_ids))


def test_special_tokens_in_instruction_are_refused(tok):
    with pytest.raises(PromptError):
        encode_prompt(tok, ["v"], "go <|action|>", "<|propri|>", 2, [1])
    with pytest.raises(PromptError):
        encode_prompt(tok, ["v"], "go <|image_pad|>", "<|propri|>", 2, [1])


def test_left_padding():
    ids, mask = pad_left([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
