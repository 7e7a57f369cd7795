"""``gpt_oss``: GPT-OSS hidden states exactly as Lens extracts them (LENS_SPEC §3).

Pipeline for a batch of prompts:

1. **Render** Lens's conversation (system = the Lens "Describe the image …" sentence, user = the
   prompt, assistant with thinking "Need to generate one image …" and empty content) with the
   tokenizer's chat template (or, if it has none, an identical in-code harmony renderer), then keep
   the text before the first ``<|return|>``.
2. **Tokenise** with right padding, truncation and ``max_length`` 512 over the whole rendered text.
3. **Run** embed → decoder layers ``0..max(layers)`` only (the final norm, lm_head and any later
   layer are never run, and later layers are not even loaded), with transformers' own padding-aware
   causal mask for ``full_attention`` layers and sliding-window mask for ``sliding_attention``
   layers, position ids ``arange(S)`` and no KV cache. The residual stream after each selected
   layer is captured **before** the final norm.
4. **Drop the fixed prefix** (system + developer + ``<|start|>user<|message|>``): Lens hard-codes
   ``txt_offset = 97`` for its tokenizer; this plugin computes it by tokenising the rendered
   prefix, so it is right for any tokenizer (``txt_offset`` overrides it).
5. Return :class:`~lensforge.interfaces.TextFeatures`: one ``[N, hidden]`` tensor per layer,
   variable length, no padding.

**Date [conflict in the sources]:** the GPT-OSS template writes ``Current date: <today>``; mflux says
Lens's reference froze it at 2026-05-23, mlx-gen says it is live. The date precedes the offset but
is causal context for the kept tokens. ``date`` (default ``"2026-05-23"``) replaces whatever date
the template rendered; ``date: null`` keeps the template's (live) date.

Weights: a Lens root folder (``text_encoder/`` + ``tokenizer/``) or a GPT-OSS folder. MXFP4
checkpoints are dequantised on load (transformers' ``Mxfp4Config(dequantize=True)``) unless
``dequantize_mxfp4`` is false. The encoder is frozen.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.interfaces import TextEncoder, TextFeatures

from lensforge_plugins.text_encoder.schemas import LENS_SYSTEM_PROMPT, LENS_THINKING, GptOssSchema, gpt_oss_dirs

from lensforge_plugins.text_encoder.common import check_dtype_and_length, check_folder, read_json, dtype_of, freeze_module, prefix_token_count, resolve_path

log = logging.getLogger("lensforge.text_encoder.gpt_oss")

#: Lens's ``DEFAULT_TXT_OFFSET`` for the real o200k_harmony tokenizer.
LENS_TXT_OFFSET = 97
USER_HEADER = "<|start|>user<|message|>"
RETURN_TOKEN = "<|return|>"
_DATE_RE = re.compile(r"Current date: \d{4}-\d{2}-\d{2}")


def render_harmony(
    prompt: str,
    *,
    system_prompt: str = LENS_SYSTEM_PROMPT,
    thinking: str = LENS_THINKING,
    date: str = "2026-05-23",
    reasoning_effort: str = "medium",
) -> str:
    """Lens's conversation in GPT-OSS harmony format (as GPT-OSS's chat template renders it, no tools).

    Ends with the opening of the empty final message (the text before ``<|return|>``).
    """
    return (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\n"
        f"Current date: {date}\n\n"
        f"Reasoning: {reasoning_effort}\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
        f"<|start|>developer<|message|># Instructions\n\n{system_prompt}\n\n<|end|>"
        f"{USER_HEADER}{prompt}<|end|>"
        f"<|start|>assistant<|channel|>analysis<|message|>{thinking}<|end|>"
        "<|start|>assistant<|channel|>final<|message|>"
    )


def load_kwargs_for(model_config: dict[str, Any], *, dequantize_mxfp4: bool) -> dict[str, Any]:
    """Extra ``from_pretrained`` kwargs implied by a checkpoint's ``config.json`` (MXFP4 handling)."""
    q = model_config.get("quantization_config") or {}
    if q.get("quant_method") == "mxfp4":
        from transformers import Mxfp4Config

        return {"quantization_config": Mxfp4Config(dequantize=dequantize_mxfp4)}
    return {}


class GptOssEncoder(GptOssSchema, TextEncoder):
    """GPT-OSS residual-stream features at selected layers, rendered and sliced exactly as Lens does."""

    def __init__(self, config: Config):
        super().__init__(config)
        from transformers import AutoConfig, AutoTokenizer, GptOssModel

        if config.path is None:
            raise LensforgeError("gpt_oss: 'path' (a local GPT-OSS or Lens folder) is required")
        self._check_layers(config.layers)
        model_dir, tok_dir = gpt_oss_dirs(config.path, config.tokenizer_path)
        for d, what in ((model_dir, "model"), (tok_dir, "tokenizer")):
            if not os.path.isdir(d):
                raise LensforgeError(f"gpt_oss: {what} folder '{d}' does not exist")
        dtype = dtype_of(config.dtype)
        raw_cfg = read_json(os.path.join(model_dir, "config.json")) or {}
        hf_cfg = AutoConfig.from_pretrained(model_dir)
        n_total = int(hf_cfg.num_hidden_layers)
        last = max(config.layers)
        if last >= n_total:
            raise LensforgeError(f"gpt_oss: layer {last} out of range (the model has {n_total} layers)")
        # Build only the layers we run: later layers' weights are skipped at load time.
        hf_cfg.num_hidden_layers = last + 1
        if getattr(hf_cfg, "layer_types", None):
            hf_cfg.layer_types = list(hf_cfg.layer_types)[: last + 1]
        extra = load_kwargs_for(raw_cfg, dequantize_mxfp4=config.dequantize_mxfp4)
        if extra:
            log.info("gpt_oss: MXFP4 checkpoint, dequantize=%s", config.dequantize_mxfp4)
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the skipped layers and lm_head are reported as "unexpected"
        try:
            self.model = GptOssModel.from_pretrained(
                model_dir, config=hf_cfg, dtype=dtype, attn_implementation=config.attn_implementation, **extra
            )
        finally:
            hf_logging.set_verbosity(level)
        if config.device:
            self.model.to(config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.layers = list(config.layers)
        self.feature_dims = tuple(int(hf_cfg.hidden_size) for _ in self.layers)
        self.uses_template = bool(config.use_chat_template and getattr(self.tokenizer, "chat_template", None))
        prefix = self.render("").split(USER_HEADER, 1)[0] + USER_HEADER
        computed = prefix_token_count(self.tokenizer, prefix)
        self.txt_offset = computed if config.txt_offset is None else int(config.txt_offset)
        log.info(
            "gpt_oss: %s (%d of %d layers built, capture %s, %s, %s); renderer=%s; txt_offset=%d%s",
            model_dir, last + 1, n_total, self.layers, config.dtype, config.attn_implementation,
            "chat template" if self.uses_template else "in-code harmony", self.txt_offset,
            "" if config.txt_offset is None else f" (override; computed {computed})",
        )
        freeze_module(self.model)
        self.freeze()

    # ------------------------------------------------------------------ config-level

    # ------------------------------------------------------------------ rendering

    def render(self, prompt: str) -> str:
        """The harmony text Lens feeds the encoder for ``prompt`` (cut before ``<|return|>``)."""
        c = self.config
        if self.uses_template:
            msgs = [
                {"role": "system", "content": c.system_prompt},
                {"role": "user", "content": prompt},
                {"role": "assistant", "thinking": c.thinking, "content": ""},
            ]
            text = self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=False, reasoning_effort=c.reasoning_effort
            )
            if c.date is not None:
                text = _DATE_RE.sub(f"Current date: {c.date}", text, count=1)
        else:
            text = render_harmony(
                prompt, system_prompt=c.system_prompt, thinking=c.thinking, date=c.date or "2026-05-23",
                reasoning_effort=c.reasoning_effort,
            )
        return text.split(RETURN_TOKEN, 1)[0]

    def tokenize(self, prompts: list[str]) -> dict[str, Tensor]:
        """Right-padded ``input_ids``/``attention_mask`` ``[B, S]`` of the rendered prompts."""
        return self.tokenizer(
            [self.render(p) for p in prompts], padding=True, truncation=True, max_length=self.config.max_length,
            add_special_tokens=True, return_tensors="pt",
        )

    # ------------------------------------------------------------------ forward

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> list[Tensor]:
        """Residual stream ``[B, S, D]`` after each selected layer (pre final norm), full sequence."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        m = self.model
        h = m.embed_tokens(input_ids)
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        kw = dict(config=m.config, inputs_embeds=h, attention_mask=attention_mask, past_key_values=None, position_ids=pos)
        masks = {"full_attention": create_causal_mask(**kw), "sliding_attention": create_sliding_window_causal_mask(**kw)}
        pe = m.rotary_emb(h, pos)
        types = m.config.layer_types
        wanted = set(self.layers)
        out = []
        for i in range(self.layers[-1] + 1):
            h = m.layers[i](h, attention_mask=masks[types[i]], position_embeddings=pe, position_ids=pos)
            if isinstance(h, tuple):
                h = h[0]
            if i in wanted:
                out.append(h)
        return out

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextFeatures:
        """Features of the tokens after the fixed prefix, one packed tensor per selected layer."""
        if isinstance(prompts, str):
            raise LensforgeError("gpt_oss.encode expects a list of prompts, got one string")
        dev = self.model.embed_tokens.weight.device
        parts = []
        for i in range(0, len(prompts), max(1, self.config.batch_size)):
            tok = self.tokenize(list(prompts[i : i + self.config.batch_size]))
            ids, mask = tok["input_ids"].to(dev), tok["attention_mask"].to(dev)
            layers_BSD = self.hidden_states(ids, mask)
            off = self.txt_offset
            parts.append(TextFeatures.from_padded([t[:, off:] for t in layers_BSD], mask[:, off:].bool()))
        if not parts:
            D = self.feature_dims
            return TextFeatures(layers=[torch.zeros(0, d, dtype=self.model.dtype) for d in D], lengths=torch.zeros(0))
        return TextFeatures.cat(parts)

    def forward(self, prompts: list[str]) -> TextFeatures:
        return self.encode(prompts)

    def train(self, mode: bool = True):
        """Frozen: always stays in eval mode."""
        return super().train(False)
