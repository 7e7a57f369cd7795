"""The light halves of the text-encoder plugins: recipe ``Config`` s and the checks validation runs (no torch).

``lensforge validate`` checks recipes against these classes without importing torch or transformers;
:class:`~lensforge_plugins.text_encoder.gpt_oss.GptOssEncoder` and
:class:`~lensforge_plugins.text_encoder.hf_encoder.HFEncoder` subclass them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lensforge.errors import LensforgeError
from lensforge.interfaces.schema import TextEncoderSchema

from lensforge_plugins.text_encoder.common import check_dtype_and_length, check_folder, read_json, resolve_path

#: Lens's system sentence (rendered as the developer "# Instructions").
LENS_SYSTEM_PROMPT = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background."
)
#: Lens's assistant analysis-channel sentence.
LENS_THINKING = "Need to generate one image according to the description."


def gpt_oss_dirs(path: str, tokenizer_path: str | None) -> tuple[str, str]:
    """``(model_dir, tokenizer_dir)`` for a Lens root folder or a plain GPT-OSS folder."""
    root = resolve_path(path)
    if os.path.isdir(os.path.join(root, "text_encoder")):
        model_dir = os.path.join(root, "text_encoder")
        tok_dir = os.path.join(root, "tokenizer")
    else:
        model_dir = root
        has_tok = os.path.isfile(os.path.join(root, "tokenizer.json")) or os.path.isfile(
            os.path.join(root, "tokenizer_config.json")
        )
        tok_dir = root if has_tok else os.path.join(os.path.dirname(root.rstrip("/")), "tokenizer")
    if tokenizer_path is not None:
        tok_dir = resolve_path(tokenizer_path)
    return model_dir, tok_dir


class GptOssSchema(TextEncoderSchema):
    """Config and validation checks of: GPT-OSS residual-stream features at selected layers, rendered and sliced exactly as Lens does."""

    @dataclass(kw_only=True)
    class Config:
        path: str | None = None
        """Lens root folder (with text_encoder/ and tokenizer/) or a local GPT-OSS folder; 'pkg:<package>/<dir>' also works."""
        tokenizer_path: str | None = None
        """Tokenizer folder when it is not next to the model (default: <path>, <root>/tokenizer or ../tokenizer)."""
        layers: list[int] = field(default_factory=lambda: [5, 11, 17, 23])
        """Decoder layers (0-based) whose output residual stream is returned, ascending."""
        dtype: str = "bfloat16"
        """Weight and feature dtype: bfloat16, float32 or float16."""
        max_length: int = 512
        """Token cap over the whole rendered sequence (prefix included), as Lens."""
        txt_offset: int | None = None
        """Tokens dropped from the front (Lens: 97); null = computed by tokenising the rendered prefix."""
        system_prompt: str = LENS_SYSTEM_PROMPT
        """System sentence rendered as the developer instructions."""
        thinking: str = LENS_THINKING
        """Assistant analysis-channel sentence."""
        date: str | None = "2026-05-23"
        """'Current date' written in the preamble (sources conflict: frozen vs live); null keeps the template's date."""
        reasoning_effort: str = "medium"
        """'Reasoning:' level in the preamble."""
        use_chat_template: bool = True
        """Render with the tokenizer's chat template when it has one (else the in-code harmony renderer)."""
        attn_implementation: str = "eager"
        """transformers attention implementation ('eager' is the one that runs on CPU with sinks)."""
        dequantize_mxfp4: bool = True
        """Dequantise MXFP4 expert weights to dtype on load (needs no kernels package)."""
        batch_size: int = 8
        """Prompts per forward pass."""
        device: str | None = None
        """Device to load onto (null: CPU; the stage moves the module)."""

    @staticmethod
    def _check_layers(layers: list[int]) -> None:
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0 or list(layers) != sorted(layers):
            raise LensforgeError(f"gpt_oss: layers must be unique, ascending and >= 0, got {layers}")

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        # folder checks run in `lensforge fit`'s preflight, not in validate (recipes/lens_3b8.yaml
        # names folders of the training machine); moved here from check_config by the export/plan helper.
        if config.path is None:
            return []
        try:
            model_dir, _ = gpt_oss_dirs(config.path, config.tokenizer_path)
        except LensforgeError as e:
            return [("path", str(e))]
        return check_folder(model_dir)

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if config.path is None:
            return [("path", "a local GPT-OSS or Lens folder is required")]
        try:
            model_dir, _ = gpt_oss_dirs(config.path, config.tokenizer_path)
        except LensforgeError as e:
            return [("path", str(e))]
        try:
            cls._check_layers(config.layers)
        except LensforgeError as e:
            out.append(("layers", str(e).split(": ", 1)[1]))
        cfg = read_json(os.path.join(model_dir, "config.json"))
        if cfg and config.layers and max(config.layers) >= int(cfg.get("num_hidden_layers", 10**9)):
            out.append(("layers", f"layer {max(config.layers)} out of range ({cfg['num_hidden_layers']} layers)"))
        return out + check_dtype_and_length(config)

    @classmethod
    def feature_spec(cls, config: Any) -> tuple[int, ...] | None:
        if config.path is None:
            return None
        try:
            model_dir, _ = gpt_oss_dirs(config.path, config.tokenizer_path)
        except LensforgeError:
            return None
        cfg = read_json(os.path.join(model_dir, "config.json"))
        if not cfg or "hidden_size" not in cfg:
            return None
        return tuple(int(cfg["hidden_size"]) for _ in config.layers)

    @classmethod
    def tiny_config(cls) -> Any:
        from lensforge.testing.fixtures import tiny_gpt_oss_folder

        return cls.Config(path=str(tiny_gpt_oss_folder()), layers=[1, 3], dtype="float32")


class HFEncoderSchema(TextEncoderSchema):
    """Config and validation checks of: Selected hidden states of any local Hugging Face AutoModel (BERT-like or decoder LLM), frozen."""

    @dataclass(kw_only=True)
    class Config:
        path: str | None = None
        """Local model folder (config.json, weights, tokenizer), or 'pkg:<package>/<dir>' inside an installed package."""
        tokenizer_path: str | None = None
        """Tokenizer folder when it is not the model folder."""
        layers: list[int] = field(default_factory=lambda: [-1])
        """Indices into transformers' hidden_states (0 = embeddings, i = block i, -1 = last)."""
        dtype: str = "float32"
        """Weight and feature dtype: float32, bfloat16 or float16."""
        max_length: int = 128
        """Token cap over the whole rendered sequence."""
        chat_template: bool = False
        """Render each prompt as a user message with the tokenizer's chat template."""
        system_prompt: str | None = None
        """System message placed before the user message (chat_template only)."""
        add_generation_prompt: bool = False
        """Append the assistant generation header (chat_template only)."""
        drop_prefix: bool = False
        """Drop the tokens before the prompt (leading specials and the rendered template prefix)."""
        prefix_tokens: int | None = None
        """Override the number of dropped tokens (null = computed from the rendered prefix)."""
        batch_size: int = 16
        """Prompts per forward pass."""

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        # machine-dependent: run by `lensforge fit`'s preflight, not by validate
        return check_folder(config.path)

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [] if config.path is not None else [("path", "a local model folder is required")]
        if not config.layers:
            out.append(("layers", "select at least one layer"))
        return out + check_dtype_and_length(config)

    @classmethod
    def feature_spec(cls, config: Any) -> tuple[int, ...] | None:
        if config.path is None:
            return None
        try:
            cfg = read_json(os.path.join(resolve_path(config.path), "config.json"))
        except LensforgeError:
            return None
        if cfg is None:
            return None
        hidden = cfg.get("hidden_size") or cfg.get("d_model")
        return tuple(int(hidden) for _ in config.layers) if hidden else None

    @classmethod
    def tiny_config(cls) -> Any:
        from lensforge.testing.fixtures import tiny_bert_folder

        return cls.Config(path=str(tiny_bert_folder()), layers=[1, 3])


__all__ = ["GptOssSchema", "HFEncoderSchema", "LENS_SYSTEM_PROMPT", "LENS_THINKING", "gpt_oss_dirs"]
