"""``transformers_lm``: rewrite prompts with a local causal LM and its chat template (Lens's local GPT-OSS path).

Lens's local path (LENS_SPEC §5): system = SYSTEM_PROMPT + "Keep any reasoning private. …", user = the
prompt, ``apply_chat_template(add_generation_prompt=True, reasoning_effort="low")``, tokenised with the
special tokens, ``generate(max_new_tokens=4096, do_sample=temperature > 0, temperature=0.7)``, the new
tokens decoded **with** their special tokens and cleaned by Lens's output parsing
(:mod:`lensforge.reasoners.parsing`); an empty result falls back to the user's prompt (reported).

**Sharing the gpt_oss text encoder's weights** (``share_text_encoder: true``; Lens: "not a separate
model"). The ``gpt_oss`` encoder holds a ``GptOssModel`` — embeddings, the decoder layers up to its last
captured layer, the final norm — and never loads ``lm_head`` or the layers after its last captured one.
:func:`share_gpt_oss` builds a ``GptOssForCausalLM`` skeleton on the meta device and fills it **with the
encoder's own modules** (the same ``nn.Module`` objects, so the same parameter tensors: checked by
identity in the tests), then loads from the checkpoint only what the encoder lacks:

* ``lm_head`` (vocab × hidden: 201,088 × 2,880 = 579 M parameters, **1.16 GB in bf16** for GPT-OSS-20B);
* the decoder layers after the encoder's last captured layer (none for Lens's layers 5/11/17/23 of 24;
  MXFP4 experts are dequantised on load, like the encoder's).

So reasoning costs ``lm_head`` (plus any skipped layers) instead of a second 21 B-parameter copy, plus
the KV cache of generation, and each rewrite runs the whole stack where encoding stops at the last
captured layer. The shared modules stay where the encoder put them (never call ``.to()`` on the
generator: it would move the encoder too). A text encoder that is not ``gpt_oss``, or a ``gpt_oss``
loaded from another folder than ``path``, cannot be shared: :meth:`TransformersLMReasoner.setup` raises
a :class:`~lensforge.errors.LensforgeError` saying so (CLI exit 2).

Without sharing, ``path`` is any local causal-LM folder with a chat template (``AutoModelForCausalLM``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from lensforge.errors import LensforgeError
from lensforge.interfaces.reasoner import Reasoner, Rewrite
from lensforge.recipe.plugin_config import NonNegativeFloat, PositiveInt

log = logging.getLogger("lensforge.reasoner.transformers_lm")


def _model_dirs(path: str) -> tuple[str, str]:
    from lensforge_plugins.text_encoder.schemas import gpt_oss_dirs

    return gpt_oss_dirs(path, None)


def _checkpoint_reader(model_dir: str):
    """``get(key) -> tensor | None`` over a folder's safetensors (single file or sharded with an index)."""
    import json

    from safetensors import safe_open

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    else:
        single = os.path.join(model_dir, "model.safetensors")
        if not os.path.isfile(single):
            raise LensforgeError(f"transformers_lm: no model.safetensors (or index) in '{model_dir}'")
        with safe_open(single, framework="pt", device="cpu") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    handles: dict[str, Any] = {}

    def get(key: str):
        fname = weight_map.get(key)
        if fname is None:
            return None
        if fname not in handles:
            handles[fname] = safe_open(os.path.join(model_dir, fname), framework="pt", device="cpu")
        return handles[fname].get_tensor(key)

    return get, set(weight_map)


def _load_layer(layer: Any, i: int, get: Any, keys: set[str], dtype: Any) -> int:
    """Fill decoder layer ``i`` (materialised) from the checkpoint, dequantising MXFP4 experts; returns parameters loaded."""
    import torch

    prefix = f"model.layers.{i}."
    state: dict[str, Any] = {}
    for name, p in layer.named_parameters():
        key = prefix + name
        if key in keys:
            state[name] = get(key)
        elif key + "_blocks" in keys and key + "_scales" in keys:
            from transformers.integrations.mxfp4 import convert_moe_packed_tensors

            state[name] = convert_moe_packed_tensors(get(key + "_blocks"), get(key + "_scales"), dtype=dtype)
        else:
            raise LensforgeError(f"transformers_lm: the checkpoint has no '{key}' (needed for layer {i})")
    with torch.no_grad():
        for name, p in layer.named_parameters():
            t = state[name]
            if tuple(t.shape) != tuple(p.shape):
                raise LensforgeError(f"transformers_lm: '{prefix + name}' has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            p.copy_(t.to(dtype=p.dtype))
    return sum(p.numel() for p in layer.parameters())


def share_gpt_oss(encoder: Any) -> tuple[Any, dict[str, Any]]:
    """A ``GptOssForCausalLM`` built around a loaded ``gpt_oss`` encoder's modules (see the module docstring).

    Returns ``(model, info)``; ``info`` says what is shared and what was loaded (parameters, bytes).
    """
    import torch
    from transformers import AutoConfig, GenerationConfig, GptOssForCausalLM
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssDecoderLayer

    from lensforge_plugins.text_encoder.schemas import gpt_oss_dirs

    base = encoder.model
    model_dir, _ = gpt_oss_dirs(encoder.config.path, encoder.config.tokenizer_path)
    full = AutoConfig.from_pretrained(model_dir)
    full._attn_implementation = base.config._attn_implementation
    n_full, n_built = int(full.num_hidden_layers), len(base.layers)
    first = next(base.parameters())
    dtype, device = first.dtype, first.device
    with torch.device("meta"):
        lm = GptOssForCausalLM(full)
    lm.model.embed_tokens = base.embed_tokens
    lm.model.norm = base.norm
    lm.model.rotary_emb = base.rotary_emb
    for i in range(n_built):
        lm.model.layers[i] = base.layers[i]
    get, keys = _checkpoint_reader(model_dir)
    loaded = 0
    for i in range(n_built, n_full):
        layer = GptOssDecoderLayer(full, i).to(device=device, dtype=dtype)
        loaded += _load_layer(layer, i, get, keys, dtype)
        lm.model.layers[i] = layer
    if getattr(full, "tie_word_embeddings", False):
        lm.lm_head.weight = base.embed_tokens.weight
    else:
        w = get("lm_head.weight")
        if w is None:
            raise LensforgeError(f"transformers_lm: the checkpoint in '{model_dir}' has no lm_head.weight: the "
                                 "gpt_oss text encoder's folder cannot generate text (a base model without an LM head)")
        lm.lm_head = torch.nn.Linear(full.hidden_size, full.vocab_size, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            lm.lm_head.weight.copy_(w.to(dtype))
        loaded += w.numel()
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:
        raise LensforgeError(f"transformers_lm: could not fill {left[:3]} from '{model_dir}'")
    if os.path.isfile(os.path.join(model_dir, "generation_config.json")):
        lm.generation_config = GenerationConfig.from_pretrained(model_dir)
    lm.requires_grad_(False)
    lm.eval()
    shared = sum(p.numel() for p in base.parameters())
    size = torch.tensor([], dtype=dtype).element_size()
    info = {"model_dir": model_dir, "shared_params": int(shared), "loaded_params": int(loaded),
            "loaded_bytes": int(loaded * size), "layers_built_by_encoder": n_built, "layers": n_full,
            "loaded_layers": list(range(n_built, n_full)), "dtype": str(dtype).replace("torch.", "")}
    log.info("transformers_lm: shares %.3g M parameters with the gpt_oss text encoder (embeddings, layers 0-%d, final "
             "norm) by reference; loaded lm_head%s: %.3g M parameters, %.3g MB (%s)", shared / 1e6, n_built - 1,
             f" and layers {n_built}-{n_full - 1}" if n_full > n_built else "", loaded / 1e6, loaded * size / 1e6,
             info["dtype"])
    return lm, info


class TransformersLMReasoner(Reasoner):
    """Rewrites prompts with a local causal LM's chat template (Lens's local GPT-OSS path), optionally sharing gpt_oss's weights."""

    @dataclass(kw_only=True)
    class Config:
        path: str | None = None
        """Local causal-LM folder with a chat template (a GPT-OSS or Lens folder); null with share_text_encoder = the encoder's folder."""
        share_text_encoder: bool = False
        """Reuse the loaded gpt_oss text encoder's weights by reference (Lens's no-extra-memory option); loads only lm_head and any layers the encoder skipped."""
        system_prompt_file: str | None = None
        """Plain-text system prompt (null = the shipped Lens-style prompt; a search's best_system_prompt.txt works)."""
        private_reasoning_suffix: bool = True
        """Append Lens's "Keep any reasoning private. …" sentence to the system prompt, as its local path does."""
        reasoning_effort: str | None = "low"
        """reasoning_effort passed to the chat template (GPT-OSS's 'Reasoning:' line; Lens: low); null = not passed."""
        max_new_tokens: PositiveInt = 4096
        """Most new tokens per rewrite (Lens: 4096)."""
        temperature: NonNegativeFloat = 0.7
        """Sampling temperature (Lens: 0.7); 0 = greedy decoding (deterministic)."""
        seed: int = 0
        """Seed of sampling (temperature > 0), combined with the batch's prompts: the same prompts give the same rewrites."""
        batch_size: PositiveInt = 1
        """Prompts generated together, left-padded (Lens rewrites one at a time)."""
        dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
        """Weight dtype of a model loaded here (a shared one keeps the encoder's)."""
        device: str | None = None
        """Device of a model loaded here (null: cuda if available, else cpu); a shared one stays with the encoder."""
        attn_implementation: str = "eager"
        """transformers attention implementation of a model loaded here ('eager' runs GPT-OSS's sinks on CPU)."""
        dequantize_mxfp4: bool = True
        """Dequantise MXFP4 expert weights on load."""

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        if config.path is None and not config.share_text_encoder:
            return [("path", "a local causal-LM folder is required (or share_text_encoder: true to use the gpt_oss "
                             "text encoder's weights)")]
        return []

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        out = []
        if config.path is not None:
            try:
                model_dir, _ = _model_dirs(config.path)
            except LensforgeError as e:
                return [("path", str(e))]
            if not os.path.isfile(os.path.join(model_dir, "config.json")):
                out.append(("path", f"'{config.path}' holds no config.json (not a model folder)"))
        f = config.system_prompt_file
        if f is not None and not os.path.isfile(os.path.expanduser(f)):
            out.append(("system_prompt_file", f"'{f}' does not exist"))
        return out

    def __init__(self, config: Any = None):
        super().__init__(config)
        _ = self.system_prompt  # a missing or empty system-prompt file fails here
        self.model: Any = None
        self.tokenizer: Any = None
        self.sharing: dict[str, Any] | None = None
        """What is shared with the text encoder and what was loaded (None when nothing is shared)."""
        self._counts = {"rewrites": 0, "failed": 0, "empty": 0, "generated_tokens": 0}

    # -- loading ----------------------------------------------------------------------------------------

    def setup(self, *, text_encoder: Any = None, world: Any = None) -> None:
        if not self.config.share_text_encoder or self.model is not None:
            return
        if text_encoder is None:
            raise LensforgeError("transformers_lm: share_text_encoder is on, but there is no loaded text encoder to "
                                 "share (give path: <model folder> and share_text_encoder: false)")
        name = getattr(text_encoder, "plugin_name", None) or type(text_encoder).__name__
        from lensforge_plugins.text_encoder.gpt_oss import GptOssEncoder

        if not isinstance(text_encoder, GptOssEncoder):
            raise LensforgeError(
                f"transformers_lm: share_text_encoder needs the gpt_oss text encoder, but the model's text encoder is "
                f"'{name}', whose weights cannot be shared for generation; set share_text_encoder: false and path: "
                f"<a causal-LM folder> to load a separate model")
        from lensforge_plugins.text_encoder.schemas import gpt_oss_dirs

        enc_dir, enc_tok = gpt_oss_dirs(text_encoder.config.path, text_encoder.config.tokenizer_path)
        if self.config.path is not None:
            mine, _ = _model_dirs(self.config.path)
            if os.path.realpath(mine) != os.path.realpath(enc_dir):
                raise LensforgeError(
                    f"transformers_lm: path '{self.config.path}' is not the folder the gpt_oss text encoder was loaded "
                    f"from ('{enc_dir}'): only the same weights can be shared (drop path, or set share_text_encoder: false)")
        self.model, self.sharing = share_gpt_oss(text_encoder)
        self.tokenizer = text_encoder.tokenizer
        self._check_template()

    def _check_template(self) -> None:
        if not getattr(self.tokenizer, "chat_template", None):
            raise LensforgeError("transformers_lm: the tokenizer has no chat template (a chat/instruct model is needed)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _load(self) -> None:
        if self.model is not None:
            return
        if self.config.share_text_encoder:
            raise LensforgeError("transformers_lm: share_text_encoder is on but setup(text_encoder=…) was not called "
                                 "with the loaded gpt_oss encoder")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lensforge_plugins.text_encoder.common import dtype_of, read_json
        from lensforge_plugins.text_encoder.gpt_oss import load_kwargs_for

        model_dir, tok_dir = _model_dirs(self.config.path)
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise LensforgeError(f"transformers_lm: '{self.config.path}' holds no config.json (not a model folder)")
        extra = load_kwargs_for(read_json(os.path.join(model_dir, "config.json")) or {},
                                dequantize_mxfp4=self.config.dequantize_mxfp4)
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype_of(self.config.dtype),
                                                          attn_implementation=self.config.attn_implementation, **extra)
        self.model.to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir if os.path.isdir(tok_dir) else model_dir)
        self._check_template()
        log.info("transformers_lm: loaded %s (%s, %s)", model_dir, self.config.dtype, device)

    def preflight(self) -> None:
        self._load()

    def describe(self) -> str:
        what = "shares the gpt_oss text encoder's weights" if self.config.share_text_encoder else self.config.path
        mode = "greedy" if self.config.temperature == 0 else f"temperature {self.config.temperature:g}"
        return f"transformers_lm ({what}; {mode}, max {self.config.max_new_tokens} new tokens)"

    # -- rewriting --------------------------------------------------------------------------------------

    def render(self, prompt: str, system_prompt: str | None = None) -> str:
        """The chat text the model continues: system (+ Lens's private-reasoning sentence), user, generation prompt."""
        from lensforge.reasoners.prompts import PRIVATE_REASONING_SUFFIX

        self._load()
        sp = self.system_prompt if system_prompt is None else system_prompt
        if self.config.private_reasoning_suffix:
            sp = f"{sp}\n\n{PRIVATE_REASONING_SUFFIX}"
        kw = {} if self.config.reasoning_effort is None else {"reasoning_effort": self.config.reasoning_effort}
        return self.tokenizer.apply_chat_template([{"role": "system", "content": sp}, {"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True, **kw)

    def generate(self, prompts: Sequence[str], system_prompt: str | None = None) -> list[str]:
        """The raw decoded continuations (special tokens kept), one per prompt."""
        import torch

        self._load()
        texts = [self.render(p, system_prompt) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=True)
        device = next(self.model.parameters()).device
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        kw: dict[str, Any] = {"max_new_tokens": self.config.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if self.config.temperature > 0:
            kw.update(do_sample=True, temperature=float(self.config.temperature))
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).digest()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed((int(self.config.seed) * 1_000_003 + int.from_bytes(digest[:6], "big")) % 2**63)
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)
        new = out[:, ids.shape[1]:]
        pad = self.tokenizer.pad_token_id
        self._counts["generated_tokens"] += int((new != pad).sum()) if pad is not None else int(new.numel())
        return [self.tokenizer.decode(row, skip_special_tokens=False) for row in new]

    def rewrite(self, prompts: Sequence[str], *, system_prompt: str | None = None) -> list[Rewrite]:
        from lensforge.reasoners.parsing import rewrite_from_answer

        out: list[Rewrite] = []
        bs = max(1, int(self.config.batch_size))
        prompts = [str(p) for p in prompts]
        for i in range(0, len(prompts), bs):
            chunk = prompts[i:i + bs]
            for p, raw in zip(chunk, self.generate(chunk, system_prompt)):
                out.append(rewrite_from_answer(p, raw))
        self._counts["rewrites"] += len(out)
        self._counts["failed"] += sum(not r.ok for r in out)
        self._counts["empty"] += sum(r.error == "empty rewrite" for r in out)
        return out

    def stats(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._counts.items()}
        if self.sharing:
            out["shared_params"] = float(self.sharing["shared_params"])
            out["loaded_params"] = float(self.sharing["loaded_params"])
        return out

    def close(self) -> None:
        self.model = None


__all__ = ["TransformersLMReasoner", "share_gpt_oss"]
