"""The checkpoint's Qwen2 tokenizer, read with the ``tokenizers`` library (no transformers at run time).

The reference loads the Qwen2.5-VL processor and then calls ``tokenizer.add_tokens(["<|propri|>",
"<|action|>"])`` in that order; the embedding table then has ``len(tokenizer)`` rows. Every special
token id is looked up here, never hard-coded (spec §10).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"

PROPRI_TOKEN = "<|propri|>"
ACTION_TOKEN = "<|action|>"
ADDED_TOKENS = (PROPRI_TOKEN, ACTION_TOKEN)  # order matters: ids follow it

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
ENDOFTEXT = "<|endoftext|>"


class TokenizerError(ValueError):
    """The checkpoint's tokenizer files are missing or lack a token the model needs."""


class WallTokenizer:
    """Text -> ids, with the ids of the tokens the prompt and the router need."""

    def __init__(self, tokenizer: Tokenizer, pad_token: str = ENDOFTEXT):
        self._tok = tokenizer
        # Added like the reference (normal added tokens, not special); a no-op if already present.
        self._tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
        self.propri_id = self.token_id(PROPRI_TOKEN)
        self.action_id = self.token_id(ACTION_TOKEN)
        self.image_pad_id = self.token_id(IMAGE_PAD)
        self.vision_start_id = self.token_id(VISION_START)
        self.vision_end_id = self.token_id(VISION_END)
        self.im_start_id = self.token_id(IM_START)
        self.im_end_id = self.token_id(IM_END)
        self.pad_id = self.token_id(pad_token)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path) -> WallTokenizer:
        root = Path(checkpoint_dir)
        path = root / TOKENIZER_JSON
        if not path.is_file():
            raise TokenizerError(f"{path} not found: the checkpoint's tokenizer.json is required")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception for a bad file
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerError(f"{path}: not a valid tokenizers JSON file ({detail})") from exc
        pad_token = ENDOFTEXT
        config_path = root / TOKENIZER_CONFIG_JSON
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise TokenizerError(f"{config_path}: not valid JSON: {exc}") from exc
            if not isinstance(config, dict):
                raise TokenizerError(f"{config_path}: expected a JSON object")
            try:
                _add_missing_config_tokens(tok, config, config_path)
            except (TypeError, ValueError, AttributeError) as exc:
                if isinstance(exc, TokenizerError):
                    raise
                raise TokenizerError(f"{config_path}: bad added_tokens_decoder: {exc}") from exc
            pad = config.get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str) and tok.token_to_id(pad) is not None:
                pad_token = pad
        try:
            return cls(tok, pad_token=pad_token)
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from exc

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise TokenizerError(f"the tokenizer has no token {token!r}")
        return int(idx)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    @property
    def backend(self) -> Tokenizer:
        return self._tok


def _add_missing_config_tokens(tok: Tokenizer, config: dict, path: Path) -> None:
    """Tokens ``tokenizer_config.json`` declares (``added_tokens_decoder``) but tokenizer.json lacks.

    transformers adds them at load time; they must land on the ids the config gives them,
    or every later id (and the embedding rows) would shift.
    """
    decoder = config.get("added_tokens_decoder") or {}
    for idx in sorted(decoder, key=int):
        entry = decoder[idx]
        content = entry.get("content") if isinstance(entry, dict) else None
        if not content or tok.token_to_id(content) is not None:
            continue
        tok.add_tokens([AddedToken(content, special=bool(entry.get("special")), normalized=False)])
        got = tok.token_to_id(content)
        if got != int(idx):
            raise TokenizerError(
                f"{path}: token {content!r} is declared with id {idx} but would get id {got}"
            )
