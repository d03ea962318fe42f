"""The flow prompt, token for token as each generation's reference builds it (spec §6, §10).

::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\nObservation: {label}: <|vision_start|><|image_pad|><|vision_end|> {label}: ...
    \\nInstruction: {instruction}\\nPredict the next action in robot action.\\nProprioception: {state}\\n
    <|im_end|>\\n<|im_start|>assistant\\n<|action|>×H

``{state}`` is one ``<|propri|>`` token (FLOW) or the discretised normalised state as space-separated
integers with masked dims left out (0.5). The instruction is written verbatim and nothing follows the
action tokens. Each ``<|image_pad|>`` is expanded to the image's merged-token count, as the Qwen
processor does. A prompt longer than ``max_length`` is refused, never truncated (truncation would
cut action tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wall_runtime.model.tokenizer import (
    ACTION_TOKEN,
    IM_END,
    IM_START,
    IMAGE_PAD,
    PROPRI_TOKEN,
    VISION_END,
    VISION_START,
    WallTokenizer,
)


class PromptError(ValueError):
    """A prompt cannot be built (too long, image count mismatch, bad instruction)."""


def discretize_state(norm_state: np.ndarray, bins: int) -> np.ndarray:
    """``np.digitize(x, linspace(−1, 1, bins + 1)[:-1]) − 1``: integers in [0, bins − 1] for x in [−1, 1]."""
    edges = np.linspace(-1, 1, bins + 1)[:-1]
    return np.digitize(np.asarray(norm_state), edges) - 1


def state_text(norm_state: np.ndarray, state_mask: np.ndarray, bins: int) -> str:
    """The 0.5 state string: present dims only, space-separated."""
    values = discretize_state(norm_state, bins)
    present = np.asarray(state_mask).astype(bool)
    return " ".join(str(int(v)) for v in values[present])


def prompt_text(labels: Sequence[str], instruction: str, state: str, action_horizon: int) -> tuple[str, str]:
    """``(prefix, suffix)``: everything up to ``assistant\\n``, then the action tokens."""
    observation = "".join(f" {label}: {VISION_START}{IMAGE_PAD}{VISION_END}" for label in labels)
    prefix = (
        f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n"
        f"{IM_START}user\nObservation:{observation}\nInstruction: {instruction}"
        f"\nPredict the next action in robot action.\nProprioception: {state}\n{IM_END}\n"
        f"{IM_START}assistant\n"
    )
    return prefix, ACTION_TOKEN * action_horizon


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: np.ndarray  # int64 [L]
    prefix_length: int  # tokens before the first <|action|>
    text: str  # before image-pad expansion


def encode_prompt(
    tokenizer: WallTokenizer,
    labels: Sequence[str],
    instruction: str,
    state: str,
    action_horizon: int,
    image_token_counts: Sequence[int],
    max_length: int | None = None,
) -> EncodedPrompt:
    """Tokenise the prompt and expand each ``<|image_pad|>`` to its image's token count."""
    if not isinstance(instruction, str):
        raise PromptError(f"instruction must be a string, got {type(instruction).__name__}")
    if len(labels) != len(image_token_counts):
        raise PromptError(f"{len(labels)} camera labels but {len(image_token_counts)} images")
    prefix, suffix = prompt_text(labels, instruction, state, action_horizon)
    ids = tokenizer.encode(prefix)
    pads = [i for i, t in enumerate(ids) if t == tokenizer.image_pad_id]
    if len(pads) != len(labels):
        raise PromptError(
            f"the prompt holds {len(pads)} image placeholders for {len(labels)} images "
            "(does the instruction contain a special token?)"
        )
    if tokenizer.action_id in ids or ids.count(tokenizer.propri_id) != int(state == PROPRI_TOKEN):
        raise PromptError("the instruction must not contain <|action|> or <|propri|>")
    expanded: list[int] = []
    start = 0
    for pos, count in zip(pads, image_token_counts, strict=True):
        expanded.extend(ids[start:pos])
        expanded.extend([tokenizer.image_pad_id] * int(count))
        start = pos + 1
    expanded.extend(ids[start:])
    prefix_length = len(expanded)
    expanded.extend([tokenizer.action_id] * action_horizon)
    if max_length is not None and len(expanded) > max_length:
        raise PromptError(
            f"the prompt is {len(expanded)} tokens, over max_length {max_length} from config.yml; the "
            "reference would truncate it and cut action tokens. Use fewer or smaller images, or a "
            "shorter instruction"
        )
    return EncodedPrompt(np.asarray(expanded, dtype=np.int64), prefix_length, prefix + suffix)


def pad_left(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad to a common length: ``(input_ids [B, L], attention_mask [B, L])``.

    Every prompt ends in the same H action tokens, so left padding gives the whole batch one
    prefix length, which the cached sampler needs.
    """
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        ids[i, length - len(seq) :] = seq
        mask[i, length - len(seq) :] = 1
    return ids, mask
