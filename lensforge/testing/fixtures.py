"""Tiny random reference models saved to folders, for parity and contract tests (no network).

* :func:`save_tiny_flux2_vae` — a diffusers ``AutoencoderKLFlux2`` with random weights and
  non-trivial BatchNorm running statistics, written with ``save_pretrained``.
* :func:`build_harmony_tokenizer` — a byte-level BPE trained in memory on a small corpus that
  contains the GPT-OSS harmony special tokens, wrapped as ``PreTrainedTokenizerFast`` with a chat
  template rendering the harmony format exactly like GPT-OSS's own template does for Lens's
  conversation (system preamble, developer instructions, user, assistant analysis + final).
* :func:`save_tiny_gpt_oss` — a few-layer ``GptOssForCausalLM`` (MoE, sinks, alternating
  sliding/full layers) plus that tokenizer.
* :func:`save_tiny_bert` — a tiny ``BertModel`` with a WordPiece tokenizer built offline.
* :func:`save_tiny_gpt_oss_mxfp4` — the tiny GPT-OSS with its expert weights stored as MXFP4
  ``*_blocks``/``*_scales`` (as in the released checkpoint), plus the expected dequantised values.

The ``*_folder`` helpers cache one copy per process in a temporary directory (used by the
plugins' ``tiny_config()``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import torch

#: Harmony special tokens used by GPT-OSS (o200k_harmony). ``<|endoftext|>`` is the pad token.
HARMONY_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|startoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>",
    "<|return|>", "<|constrain|>", "<|call|>",
]

#: A chat template equivalent to GPT-OSS's ``chat_template.jinja`` for conversations without tools
#: (system preamble with ``strftime_now`` date, developer "# Instructions", user, and — for a
#: final assistant turn without generation prompt — analysis + final channel ending in ``<|return|>``).
HARMONY_CHAT_TEMPLATE = (
    "{%- if reasoning_effort is not defined %}{%- set reasoning_effort = 'medium' %}{%- endif %}"
    "{{- '<|start|>system<|message|>' }}"
    "{{- 'You are ChatGPT, a large language model trained by OpenAI.\\n' }}"
    "{{- 'Knowledge cutoff: 2024-06\\n' }}"
    "{{- 'Current date: ' + strftime_now('%Y-%m-%d') + '\\n\\n' }}"
    "{{- 'Reasoning: ' + reasoning_effort + '\\n\\n' }}"
    "{{- '# Valid channels: analysis, commentary, final. Channel must be included for every message.' }}"
    "{{- '<|end|>' }}"
    "{%- if messages[0].role == 'developer' or messages[0].role == 'system' %}"
    "{%- set developer_message = messages[0].content %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set developer_message = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- if developer_message %}"
    "{{- '<|start|>developer<|message|># Instructions\\n\\n' + developer_message + '\\n\\n<|end|>' }}"
    "{%- endif %}"
    "{%- for message in loop_messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- if loop.last and not add_generation_prompt %}"
    "{%- if 'thinking' in message %}"
    "{{- '<|start|>assistant<|channel|>analysis<|message|>' + message.thinking + '<|end|>' }}"
    "{%- endif %}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|return|>' }}"
    "{%- else %}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|end|>' }}"
    "{%- endif %}"
    "{%- elif message.role == 'user' -%}"
    "{{- '<|start|>user<|message|>' + message.content + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)

_CORPUS = [
    "You are ChatGPT, a large language model trained by OpenAI.",
    "Knowledge cutoff: 2024-06 Current date: 2026-05-23 2025-01-01 Reasoning: medium low high",
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.",
    "# Instructions",
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background.",
    "Need to generate one image according to the description.",
    "a red circle above a blue square on a green background",
    "two small yellow triangles left of a large purple star, white background",
    "an orange hexagon and a black ring, three pink dots, cyan stripes, gray grid",
    "the quick brown fox jumps over the lazy dog 0123456789",
]


def build_harmony_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE with the harmony specials and chat template (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=HARMONY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        padding_side="right",
    )
    fast.chat_template = HARMONY_CHAT_TEMPLATE
    return fast


def tiny_gpt_oss_config(vocab_size: int, num_layers: int = 5, dtype: str = "float32"):
    """A GPT-OSS config with the real structure at toy width (MoE 4×top-2, alternating layers)."""
    from transformers import GptOssConfig

    return GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=32,
        head_dim=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=num_layers,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=6,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)],
        max_position_embeddings=131072,
        pad_token_id=0,
        eos_token_id=6,
        dtype=dtype,
        architectures=["GptOssForCausalLM"],
    )


def save_tiny_gpt_oss(folder: str | os.PathLike, *, seed: int = 0, num_layers: int = 5) -> Path:
    """Write a tiny random ``GptOssForCausalLM`` and the harmony tokenizer to ``folder``."""
    from transformers import GptOssForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_harmony_tokenizer()
    cfg = tiny_gpt_oss_config(len(tok), num_layers)
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = tok.eos_token_id
    torch.manual_seed(seed)
    model = GptOssForCausalLM(cfg)
    with torch.no_grad():  # the router/sinks/biases start at zero: give them signal
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_flux2_config() -> dict:
    """Constructor kwargs of a tiny AutoencoderKLFlux2 (2 levels: downsample 2·2 = 4)."""
    return {
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 32,
    }


def save_tiny_flux2_vae(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random ``AutoencoderKLFlux2`` with non-trivial BN running stats to ``folder``."""
    from diffusers import AutoencoderKLFlux2

    folder = Path(folder)
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(**tiny_flux2_config())
    n = vae.bn.running_mean.numel()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
        vae.bn.running_var.copy_(torch.rand(n, generator=g) * 2.0 + 0.25)
    vae.save_pretrained(folder)
    return folder


def save_tiny_bert(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random ``BertModel`` with an offline WordPiece tokenizer to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = Path(folder)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_CORPUS * 4, trainer=trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", padding_side="right",
    )
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=fast.pad_token_id)
    BertModel(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


_CACHE: dict[str, Path] = {}
_TMP_ROOT: Path | None = None


def _tmp_root() -> Path:
    global _TMP_ROOT
    if _TMP_ROOT is None:
        _TMP_ROOT = Path(tempfile.mkdtemp(prefix="lensforge-tiny-"))
        atexit.register(shutil.rmtree, _TMP_ROOT, True)
    return _TMP_ROOT


def _cached(key: str, make) -> Path:
    p = _CACHE.get(key)
    if p is None or not p.exists():
        p = make(_tmp_root() / key)
        _CACHE[key] = p
    return p


def tiny_gpt_oss_folder() -> Path:
    """A process-wide tiny GPT-OSS folder (built on first use)."""
    return _cached("gpt_oss", save_tiny_gpt_oss)


def tiny_flux2_folder() -> Path:
    """A process-wide tiny FLUX.2 VAE folder (built on first use)."""
    return _cached("flux2_vae", save_tiny_flux2_vae)


def tiny_bert_folder() -> Path:
    """A process-wide tiny BERT folder (built on first use)."""
    return _cached("bert", save_tiny_bert)


def mxfp4_pack(codes: torch.Tensor, exponents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack E2M1 codes ``[..., G·32]`` (uint8 0..15) into MXFP4 ``(blocks [..., G, 16], scales [..., G])``.

    Two codes per byte, the even element in the low nibble; ``exponents`` ``[..., G]`` are the
    E8M0 scales (value ``2^(s − 127)``).
    """
    *prefix, n = codes.shape
    c = codes.to(torch.uint8).reshape(*prefix, n // 32, 16, 2)
    blocks = c[..., 0] | (c[..., 1] << 4)
    return blocks, exponents.to(torch.uint8)


FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def save_tiny_gpt_oss_mxfp4(folder: str | os.PathLike, *, seed: int = 0, num_layers: int = 3) -> tuple[Path, dict]:
    """A tiny GPT-OSS whose expert weights are stored as MXFP4 ``*_blocks``/``*_scales`` (like the release).

    Returns the folder and ``{param name: dequantised tensor}`` computed independently of
    transformers (E2M1 lookup × 2^(s−127), transposed to the dense ``[E, in, out]`` layout).
    """
    import json

    from safetensors.torch import load_file, save_file

    folder = save_tiny_gpt_oss(folder, seed=seed, num_layers=num_layers)
    sd = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(seed + 7)
    lut = torch.tensor(FP4_VALUES)
    dense: dict[str, torch.Tensor] = {}
    for key in [k for k in sd if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        E, d_in, d_out = sd[key].shape  # dense layout [E, in, out]; MXFP4 groups run along "in"
        codes = torch.randint(0, 16, (E, d_out, d_in), generator=g)
        exps = torch.randint(122, 126, (E, d_out, d_in // 32), generator=g)
        blocks, scales = mxfp4_pack(codes, exps)
        del sd[key]
        sd[key + "_blocks"], sd[key + "_scales"] = blocks, scales
        values = lut[codes] * torch.pow(2.0, (exps.float() - 127).repeat_interleave(32, -1))
        dense[key.removeprefix("model.")] = values.transpose(1, 2).contiguous()
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder, dense
