"""What a WALL-OSS policy refuses beyond the handshake's shapes, checked without touching a pixel.

The server validates each observation against this at its protocol boundary, so an input the model
would refuse inside ``infer`` (a camera too elongated for smart-resize, a prompt over the config's
``max_length``, a prompt longer than an exported graph takes) is answered for that one robot and
never reaches a batch. The rules are the preprocessing's own functions (``longest_side_size``,
``smart_resize``, ``encode_prompt``), run on sizes and text only: image token counts depend only on
a camera's frame size, so they are worked out once per robot at its hello.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from wall_runtime.types import Observation

if TYPE_CHECKING:
    from wall_runtime.model.preprocess import Preprocessor


class InputRefused(ValueError):
    """The policy could not take this input; the message names the field."""


class ModelInputCheck:
    """Input limits of a policy over a :class:`wall_runtime.model.preprocess.Preprocessor`.

    ``max_prefix_tokens`` and ``frame_sizes`` add an exported graph's static limits (its prompt
    length and its frame sizes); ``guidance`` is False for backends without RTC inpainting.
    """

    def __init__(
        self,
        preprocessor: Preprocessor,
        *,
        max_prefix_tokens: int | None = None,
        frame_sizes: Mapping[str, tuple[int, int]] | None = None,
        guidance: bool = True,
    ) -> None:
        from wall_runtime.model import image_processing as ip

        self._ip = ip
        self.preprocessor = preprocessor
        cfg = preprocessor.cfg
        self.resolution = {v: int(cfg.data.resolution[v]) for v in cfg.data.cameras}
        self.max_length = cfg.data.max_length
        self.max_prefix_tokens = max_prefix_tokens
        self.frame_sizes = dict(frame_sizes) if frame_sizes is not None else None
        self.guidance = guidance
        self._merge = preprocessor.vision_cfg.spatial_merge_size**2

    def to_dict(self) -> dict[str, Any]:
        """The limits as plain data (sent to robots in the handshake's ``limits``)."""
        limits: dict[str, Any] = {
            "max_prompt_tokens": self.max_length,
            "max_aspect_ratio": self._ip.MAX_ASPECT_RATIO,
            "view_resolution": dict(self.resolution),
            "image_factor": self._ip.IMAGE_FACTOR,
            "min_pixels": self._ip.MIN_PIXELS,
            "max_pixels": self._ip.MAX_PIXELS,
            "guidance": self.guidance,
        }
        if self.max_prefix_tokens is not None:
            limits["max_prefix_tokens"] = self.max_prefix_tokens
        if self.frame_sizes is not None:
            limits["frame_sizes"] = {k: list(v) for k, v in self.frame_sizes.items()}
        return limits

    def image_tokens(self, view: str, height: int, width: int) -> int:
        """Tokens a ``height``×``width`` frame of ``view`` becomes; ``InputRefused`` if it cannot."""
        if view not in self.resolution:
            raise InputRefused(f"camera {view!r} is not a view of this policy ({list(self.resolution)})")
        if self.frame_sizes is not None and tuple(self.frame_sizes.get(view, ())) != (height, width):
            raise InputRefused(
                f"camera {view!r}: frames are {height}x{width}, the exported graphs take "
                f"{self.frame_sizes.get(view)} (export again with --camera {view}={width}x{height})"
            )
        ip = self._ip
        try:
            h, w = ip.longest_side_size(height, width, self.resolution[view])
            if h == 0 or w == 0:
                raise ValueError(
                    f"a {height}x{width} frame is too elongated for resolution {self.resolution[view]}"
                )
            h, w = ip.smart_resize(h, w)
        except (ValueError, ZeroDivisionError) as exc:
            raise InputRefused(f"camera {view!r}: {exc}") from None
        return (h // ip.PATCH_SIZE) * (w // ip.PATCH_SIZE) // self._merge

    def missing_views(self, views: Iterable[str]) -> None:
        """Refuse a set of cameras without one of the model's views: the reference's serving refuses
        such an observation (``Missing view for ...``), and a prompt without a view the model was
        trained with is not what it learned from."""
        missing = [v for v in self.resolution if v not in set(views)]
        if missing:
            raise InputRefused(
                f"missing camera view(s) {missing}: this policy takes {list(self.resolution)} and "
                "refuses an observation without any of them"
            )

    def camera_tokens(self, cameras: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Image tokens per view for a robot's cameras (``name -> (H, W, 3)``); refuses bad sizes
        and a robot without one of the model's views."""
        self.missing_views(cameras)
        if self.frame_sizes is not None and set(cameras) != set(self.frame_sizes):
            raise InputRefused(
                f"cameras {sorted(cameras)}: the exported graphs take exactly {sorted(self.frame_sizes)}"
            )
        return {v: self.image_tokens(v, int(s[0]), int(s[1])) for v, s in cameras.items()}

    def check(self, obs: Observation, image_tokens: Mapping[str, int] | None = None) -> None:
        """Raise ``InputRefused`` when ``infer`` would refuse ``obs``: the prompt it would build is
        tokenised (the instruction and, for the 0.5 variant, the state text) and measured."""
        from wall_runtime.model.prompt import PROPRI_TOKEN, encode_prompt, state_text

        pre, cfg = self.preprocessor, self.preprocessor.cfg
        if obs.inpaint is not None and not self.guidance:
            raise InputRefused("inpaint hints need the torch backend (this one runs forward-only graphs)")
        self.missing_views(obs.images)
        views = [v for v in cfg.data.cameras if v in obs.images]
        if image_tokens is None:
            image_tokens = {v: self.image_tokens(v, *obs.images[v].shape[:2]) for v in views}
        try:
            if cfg.net.state_as_text:
                key = pre.normalizers.resolve_key(obs.norm_key) if obs.norm_key else pre.norm_key
                raw_state, state_mask, _ = pre.row_masks(obs)
                norm_state = pre.normalizers.state.normalize(raw_state, key)
                text = state_text(norm_state, state_mask, cfg.net.state_bins)
            else:
                text = PROPRI_TOKEN
            encoded = encode_prompt(
                pre.tokenizer,
                [cfg.camera_label(v) for v in views],
                obs.instruction,
                text,
                cfg.net.action_horizon,
                [image_tokens[v] for v in views],
                self.max_length,
            )
        except Exception as exc:  # the model's own refusal (PromptError, ObservationError, ...)
            raise InputRefused(f"instruction/state: {exc}") from None
        if self.max_prefix_tokens is not None and encoded.prefix_length > self.max_prefix_tokens:
            raise InputRefused(
                f"instruction: the prompt is {encoded.prefix_length} tokens before the actions; the "
                f"exported graphs take at most {self.max_prefix_tokens} (shorten the instruction)"
            )
