"""``lens_mmdit``: the Lens dual-stream MMDiT (LENS_SPEC §1) over packed mixed-resolution batches.

One forward handles several samples of different ``(h, w)`` token grids, timesteps and text
lengths, concatenated without padding (:class:`~lensforge.interfaces.PackedBatch`):

* the image and text streams are kept as two packed token tensors ``[N_img, D]`` / ``[N_txt, D]``;
* per-sample modulation (from each sample's timestep) is gathered per token;
* RoPE is built per sample (centred image grid, text positions after it) and cached per shape;
* attention runs over the joint sequence ``img_0, txt_0, img_1, txt_1, …`` and is confined to each
  sample's own ``[image; text]`` segment by the attention backend (``seqlens``).

Everything that depends on the batch layout (gather indices, RoPE tables, the joint permutation)
is computed once per forward in a :class:`PackedLayout` and shared by all blocks.

With flavor ``3b8`` the parameter names and shapes are exactly those of the released
``transformer/`` folder (1264 tensors, 4,104,225,152 parameters), so official weights load with
``strict=True``. :meth:`LensMMDiT.forward_padded` mirrors the official call signature.

Conventions (LENS_SPEC): timestep input is σ ∈ [0, 1]; the output is the velocity ``noise − x0``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lensforge.errors import LensforgeError
from lensforge.interfaces import DiT, PackedBatch
from lensforge.nn.attention import build_attention
from lensforge.nn.modulation import AdaLayerNormContinuous, Modulation, TimestepEmbedding, modulate, timestep_sinusoid
from lensforge.nn.norms import RMSNorm, SwiGLU
from lensforge.nn.rope import MultiAxisRope, apply_rope

from lensforge_plugins.dit.lens_mmdit.flavors import FLAVORS, LensArch, default_mlp_hidden
from lensforge_plugins.dit.lens_mmdit.schema import LensMMDiTSchema

log = logging.getLogger("lensforge.dit.lens_mmdit")

OFFICIAL_CLASS_NAME = "LensTransformer2DModel"
OFFICIAL_DIFFUSERS_VERSION = "0.37.1"
FP16_MAX = 65504.0


# --------------------------------------------------------------------------------------------
# Batch layout shared by all blocks of one forward
# --------------------------------------------------------------------------------------------


@dataclass
class PackedLayout:
    """Per-forward indices and tables (computed once, used by every block).

    Attributes:
        img_sample: ``[N_img]`` sample index of each image token (None when there is one sample).
        txt_sample: ``[N_txt]`` sample index of each text token (None when there is one sample).
        img_cos, img_sin: ``[N_img, head_dim/2]`` RoPE tables of the image tokens.
        txt_cos, txt_sin: ``[N_txt, head_dim/2]`` RoPE tables of the text tokens.
        joint_perm: rows of ``cat([img, txt])`` in joint order ``img_0, txt_0, img_1, …``
            (None when it is the identity, i.e. one sample).
        joint_inv: the inverse permutation.
        seqlens: joint length ``h_i·w_i + L_i`` of each sample.
        key_valid: ``[B, L]`` bool key mask for the padded path (equal ``L`` per sample), or None.
    """

    img_sample: Tensor | None
    txt_sample: Tensor | None
    img_cos: Tensor
    img_sin: Tensor
    txt_cos: Tensor
    txt_sin: Tensor
    joint_perm: Tensor | None
    joint_inv: Tensor | None
    seqlens: list[int]
    num_img: int
    key_valid: Tensor | None = None

    @staticmethod
    def build(
        rope: MultiAxisRope,
        img_shapes: Sequence[tuple[int, int]],
        txt_lengths: Sequence[int],
        device: torch.device,
        key_valid: Tensor | None = None,
    ) -> "PackedLayout":
        B = len(img_shapes)
        img_lens = [h * w for h, w in img_shapes]
        txt_lens = [int(n) for n in txt_lengths]
        num_img, num_txt = sum(img_lens), sum(txt_lens)
        img_tabs = [rope.image(h, w, device) for h, w in img_shapes]
        txt_tabs = [rope.text(h, w, n, device) for (h, w), n in zip(img_shapes, txt_lens)]
        img_cos = torch.cat([c for c, _ in img_tabs]) if B > 1 else img_tabs[0][0]
        img_sin = torch.cat([s for _, s in img_tabs]) if B > 1 else img_tabs[0][1]
        txt_cos = torch.cat([c for c, _ in txt_tabs])
        txt_sin = torch.cat([s for _, s in txt_tabs])
        if B == 1:
            return PackedLayout(None, None, img_cos, img_sin, txt_cos, txt_sin, None, None,
                                [num_img + num_txt], num_img, key_valid)
        ar = torch.arange(B, device=device)
        img_sample = torch.repeat_interleave(ar, torch.as_tensor(img_lens, device=device), output_size=num_img)
        txt_sample = torch.repeat_interleave(ar, torch.as_tensor(txt_lens, device=device), output_size=num_txt)
        pieces, io, to = [], 0, num_img
        for li, lt in zip(img_lens, txt_lens):
            pieces.append(torch.arange(io, io + li))
            pieces.append(torch.arange(to, to + lt))
            io, to = io + li, to + lt
        perm = torch.cat(pieces)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel())
        return PackedLayout(
            img_sample, txt_sample, img_cos, img_sin, txt_cos, txt_sin, perm.to(device), inv.to(device),
            [li + lt for li, lt in zip(img_lens, txt_lens)], num_img, key_valid,
        )

    def per_img_token(self, x_B: Tensor) -> Tensor:
        """``[B, …]`` per-sample values → one row per image token (broadcastable)."""
        return x_B if self.img_sample is None else x_B.index_select(0, self.img_sample)

    def per_txt_token(self, x_B: Tensor) -> Tensor:
        """``[B, …]`` per-sample values → one row per text token (broadcastable)."""
        return x_B if self.txt_sample is None else x_B.index_select(0, self.txt_sample)

    def to_joint(self, img: Tensor, txt: Tensor) -> Tensor:
        """Packed image rows + packed text rows → joint order ``img_0, txt_0, img_1, …``."""
        cat = torch.cat([img, txt], 0)
        return cat if self.joint_perm is None else cat.index_select(0, self.joint_perm)

    def from_joint(self, joint: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse of :meth:`to_joint`."""
        cat = joint if self.joint_inv is None else joint.index_select(0, self.joint_inv)
        return cat[: self.num_img], cat[self.num_img :]

    def attend(self, backend: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Block-diagonal attention over the joint sequence (``[N, H, Dh]`` each)."""
        if self.key_valid is None:
            return backend(q, k, v, self.seqlens)
        # Padded path with a text mask: equal segment length L, keys masked (LENS_SPEC §1.9).
        B, L = self.key_valid.shape
        H, Dh = q.shape[1], q.shape[2]
        qb, kb, vb = (t.reshape(B, L, H, Dh).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=self.key_valid[:, None, None, :])
        return out.transpose(1, 2).reshape(B * L, H, Dh)


# --------------------------------------------------------------------------------------------
# Modules (names match the official state dict)
# --------------------------------------------------------------------------------------------


class LensJointAttention(nn.Module):
    """Joint image/text attention with fused QKV per stream, per-head QK RMSNorm and RoPE."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.img_qkv = nn.Linear(dim, 3 * inner)
        self.txt_qkv = nn.Linear(dim, 3 * inner)
        self.norm_q = RMSNorm(head_dim, eps)
        self.norm_k = RMSNorm(head_dim, eps)
        self.norm_added_q = RMSNorm(head_dim, eps)
        self.norm_added_k = RMSNorm(head_dim, eps)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Identity()])
        self.to_add_out = nn.Linear(inner, dim)

    def _qkv(self, proj: nn.Linear, nq: RMSNorm, nk: RMSNorm, x: Tensor, cos: Tensor, sin: Tensor):
        # rows of the fused projection are ordered (qkv, head, head_dim) (LENS_SPEC §1.6)
        q, k, v = proj(x).view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        return apply_rope(nq(q), cos, sin), apply_rope(nk(k), cos, sin), v

    def forward(
        self, img: Tensor, txt: Tensor, layout: PackedLayout, backend: Any, text_output: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Image and text outputs; the text one is skipped (None) when ``text_output`` is False."""
        qi, ki, vi = self._qkv(self.img_qkv, self.norm_q, self.norm_k, img, layout.img_cos, layout.img_sin)
        qt, kt, vt = self._qkv(self.txt_qkv, self.norm_added_q, self.norm_added_k, txt, layout.txt_cos, layout.txt_sin)
        out = layout.attend(
            backend, layout.to_joint(qi, qt), layout.to_joint(ki, kt), layout.to_joint(vi, vt)
        ).to(qi.dtype)
        out_img, out_txt = layout.from_joint(out.flatten(1))
        out_img = self.to_out[1](self.to_out[0](out_img))
        return out_img, self.to_add_out(out_txt) if text_output else None


class LensTransformerBlock(nn.Module):
    """Dual-stream block: modulated RMSNorm → joint attention → gated residual → SwiGLU (LENS_SPEC §1.5)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden_dim: int, eps: float = 1e-6):
        super().__init__()
        self.img_mod = Modulation(dim, 6)
        self.txt_mod = Modulation(dim, 6)
        self.img_norm1 = RMSNorm(dim, eps)
        self.img_norm2 = RMSNorm(dim, eps)
        self.txt_norm1 = RMSNorm(dim, eps)
        self.txt_norm2 = RMSNorm(dim, eps)
        self.attn = LensJointAttention(dim, num_heads, head_dim, eps)
        self.img_mlp = SwiGLU(dim, mlp_hidden_dim)
        self.txt_mlp = SwiGLU(dim, mlp_hidden_dim)
        #: False for the last block: its text-stream output is discarded by the model, so the text
        #: attention output projection and text MLP are not computed (their weights stay in the
        #: state dict for the official layout; see :meth:`LensMMDiT.freeze_dead_text_tail`).
        self.text_output = True

    def text_tail_parameters(self) -> list[nn.Parameter]:
        """Parameters used only to produce the text-stream output (dead in the last block)."""
        return [*self.attn.to_add_out.parameters(), *self.txt_norm2.parameters(), *self.txt_mlp.parameters()]

    def forward(self, img: Tensor, txt: Tensor, temb: Tensor, layout: PackedLayout, backend: Any) -> tuple[Tensor, Tensor]:
        """``img [N_img, D]``, ``txt [N_txt, D]``, ``temb [B, D]`` → ``(txt, img)`` (text first, as official)."""
        # (shift, scale, gate) for attention, then for the MLP (chunk(2) then chunk(3) == chunk(6))
        i_sh1, i_sc1, i_g1, i_sh2, i_sc2, i_g2 = layout.per_img_token(self.img_mod(temb)).chunk(6, dim=-1)
        t_sh1, t_sc1, t_g1, t_sh2, t_sc2, t_g2 = layout.per_txt_token(self.txt_mod(temb)).chunk(6, dim=-1)

        a_img, a_txt = self.attn(
            modulate(self.img_norm1(img), i_sh1, i_sc1), modulate(self.txt_norm1(txt), t_sh1, t_sc1), layout, backend,
            self.text_output,
        )
        img = img + i_g1 * a_img
        img = img + i_g2 * self.img_mlp(modulate(self.img_norm2(img), i_sh2, i_sc2))
        if a_txt is not None:
            txt = txt + t_g1 * a_txt
            txt = txt + t_g2 * self.txt_mlp(modulate(self.txt_norm2(txt), t_sh2, t_sc2))
        if img.dtype == torch.float16:
            img = img.clamp(-FP16_MAX, FP16_MAX)
            txt = txt.clamp(-FP16_MAX, FP16_MAX)
        return txt, img


class TimeTextEmbed(nn.Module):
    """σ ∈ [0, 1] → ``temb [B, D]``: 256-ch sinusoid (×1000 inside) → ``timestep_embedder``."""

    def __init__(self, dim: int, num_freq_channels: int = 256):
        super().__init__()
        self.num_freq_channels = num_freq_channels
        self.timestep_embedder = TimestepEmbedding(num_freq_channels, dim)

    def forward(self, sigma_B: Tensor, dtype: torch.dtype) -> Tensor:
        proj = timestep_sinusoid(sigma_B, self.num_freq_channels, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)
        return self.timestep_embedder(proj.to(dtype))


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------


class LensMMDiT(LensMMDiTSchema, DiT):
    """Lens dual-stream MMDiT (any size) over packed mixed-resolution batches; official key layout."""

    # ---------------------------------------------------------------- construction

    def __init__(self, config: Config):
        super().__init__(config)
        problems = self.check_config(config)
        if problems:
            raise LensforgeError("lens_mmdit config: " + "; ".join(f"{k}: {m}" for k, m in problems))
        a = self.arch = self.resolve(config)
        D = a.inner_dim
        self.activation_checkpointing = bool(config.activation_checkpointing)
        self.attention_backend = build_attention(config.attention)
        self.rope = MultiAxisRope(a.axes_dims_rope, a.rope_theta)

        self.time_text_embed = TimeTextEmbed(D)
        self.txt_norm = nn.ModuleList([RMSNorm(d, eps=1e-5) for d in a.text_dims])
        self.txt_in = nn.Linear(sum(a.text_dims), D)
        self.img_in = nn.Linear(a.in_channels, D)
        self.transformer_blocks = nn.ModuleList(
            [LensTransformerBlock(D, a.num_heads, a.head_dim, a.mlp_hidden_dim) for _ in range(a.num_layers)]
        )
        self.norm_out = AdaLayerNormContinuous(D, D, eps=1e-6)
        self.proj_out = nn.Linear(D, a.out_channels)
        if config.zero_init:
            self.zero_init_()
        if self.transformer_blocks:
            self.transformer_blocks[-1].text_output = False
            self.freeze_dead_text_tail()
        log.info(
            "lens_mmdit flavor=%s layers=%d width=%d heads=%dx%d mlp=%d in=%d out=%d text_dims=%s attention=%s",
            config.flavor, a.num_layers, D, a.num_heads, a.head_dim, a.mlp_hidden_dim, a.in_channels,
            a.out_channels, list(a.text_dims), config.attention,
        )

    def zero_init_(self) -> None:
        """adaLN-Zero: zero every modulation linear, ``norm_out.linear`` and ``proj_out``."""
        mods = [m for b in self.transformer_blocks for m in (b.img_mod[1], b.txt_mod[1])]
        for lin in mods + [self.norm_out.linear, self.proj_out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def freeze_dead_text_tail(self) -> None:
        """Set ``requires_grad=False`` on the last block's text-output parameters.

        The model's output is the image stream, so the last block's ``attn.to_add_out``,
        ``txt_norm2`` and ``txt_mlp`` never influence it (true of the official model too). They
        are kept for the official key layout but frozen, so that DDP (``find_unused_parameters=False``)
        and optimizers see only parameters that receive gradients. Call again after a blanket
        ``requires_grad_(True)``.
        """
        if self.transformer_blocks:
            for p in self.transformer_blocks[-1].text_tail_parameters():
                p.requires_grad_(False)

    def fsdp_units(self) -> list[nn.Module]:
        """The modules :func:`lensforge.distributed.fsdp.parallelize` shards one by one."""
        return list(self.transformer_blocks)

    # ---------------------------------------------------------------- forward

    def forward(self, batch: PackedBatch) -> Tensor:
        """Packed mixed-resolution forward: ``[N_img_total, in_channels]`` → ``[N_img_total, out_channels]``.

        (Also receives :meth:`forward_padded`'s arguments, so that both calls go through
        ``nn.Module.__call__`` and its hooks, e.g. FSDP2's all-gather of the root parameters.)
        """
        if isinstance(batch, _PaddedCall):
            return self._forward_padded(batch)
        x = batch.img_tokens
        shapes = [(int(h), int(w)) for h, w in batch.img_shapes.tolist()]
        layout = PackedLayout.build(self.rope, shapes, batch.text.lengths.tolist(), x.device)
        return self._run(x, batch.text.layers, batch.sigmas, layout)

    def forward_padded(
        self,
        hidden_states: Tensor,
        encoder_hidden_states: Sequence[Tensor],
        timestep: Tensor,
        img_shapes: Any,
        encoder_hidden_states_mask: Tensor | None = None,
    ) -> Tensor:
        """The official-style call: equal-size images, right- or arbitrarily-padded text with a mask.

        Args:
            hidden_states: ``[B, S_img, in_channels]`` packed latents (row-major ``h × w``).
            encoder_hidden_states: one ``[B, S_txt, D_l]`` tensor per text layer.
            timestep: ``[B]`` (or one) σ in ``[0, 1]``.
            img_shapes: the token grid ``(h, w)`` (or ``(1, h, w)``, or a per-sample list of those);
                every sample must have the same grid.
            encoder_hidden_states_mask: ``[B, S_txt]`` bool, True = valid (None = all valid).
                Only keys are masked; an all-False row is legal (image keys only).

        Returns:
            ``[B, S_img, out_channels]`` velocities.
        """
        layers = list(encoder_hidden_states) if isinstance(encoder_hidden_states, (list, tuple)) else [encoder_hidden_states]
        return self(_PaddedCall(hidden_states, layers, timestep, img_shapes, encoder_hidden_states_mask))

    def _forward_padded(self, call: "_PaddedCall") -> Tensor:
        hidden_states, layers, timestep = call.hidden_states, call.encoder_hidden_states, call.timestep
        img_shapes, encoder_hidden_states_mask = call.img_shapes, call.encoder_hidden_states_mask
        if hidden_states.dim() != 3:
            raise LensforgeError(f"hidden_states must be [B, S_img, C], got {tuple(hidden_states.shape)}")
        B, S_img, _ = hidden_states.shape
        h, w = _uniform_shape(img_shapes, B)
        if h * w != S_img:
            raise LensforgeError(f"img_shapes ({h}, {w}) gives {h * w} tokens but hidden_states has {S_img}")
        S_txt = layers[0].shape[1] if layers else 0
        key_valid = None
        if encoder_hidden_states_mask is not None:
            m = encoder_hidden_states_mask.to(device=hidden_states.device, dtype=torch.bool)
            if tuple(m.shape) != (B, S_txt):
                raise LensforgeError(f"encoder_hidden_states_mask must be [{B}, {S_txt}], got {tuple(m.shape)}")
            if not bool(m.all()):
                img_valid = torch.ones(B, S_img, dtype=torch.bool, device=m.device)
                key_valid = torch.cat([img_valid, m], 1)
        layout = PackedLayout.build(self.rope, [(h, w)] * B, [S_txt] * B, hidden_states.device, key_valid)
        flat_txt = [t.reshape(B * S_txt, t.shape[-1]) for t in layers]
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1)
        if t.numel() not in (1, B):
            raise LensforgeError(f"timestep has {t.numel()} values for a batch of {B}")
        out = self._run(hidden_states.reshape(B * S_img, -1), flat_txt, t.expand(B), layout)
        return out.reshape(B, S_img, -1)

    def _run(self, x: Tensor, txt_layers: Sequence[Tensor], sigmas: Tensor, layout: PackedLayout) -> Tensor:
        a = self.arch
        if x.shape[-1] != a.in_channels:
            raise LensforgeError(f"lens_mmdit expects {a.in_channels} channels per image token, got {x.shape[-1]}")
        dims = tuple(int(t.shape[-1]) for t in txt_layers)
        if dims != a.text_dims:
            raise LensforgeError(f"lens_mmdit expects text features of widths {list(a.text_dims)}, got {list(dims)}")
        temb = self.time_text_embed(sigmas.to(x.dtype), x.dtype)  # [B, D]
        img = self.img_in(x)
        txt = self.txt_in(torch.cat([norm(t) for norm, t in zip(self.txt_norm, txt_layers)], dim=-1))
        backend = self.attention_backend
        for block in self.transformer_blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                txt, img = checkpoint(block, img, txt, temb, layout, backend, use_reentrant=False)
            else:
                txt, img = block(img, txt, temb, layout, backend)
        img = self.norm_out(img, layout.per_img_token(self.norm_out.emb(temb)))
        return self.proj_out(img)

    # ---------------------------------------------------------------- official config

    def official_config(self) -> dict[str, Any]:
        """The diffusers ``transformer/config.json`` dict describing this model (LENS_SPEC §1.1).

        Things the official schema cannot express (non-uniform text widths, a custom SwiGLU width,
        RoPE theta, out-channels not divisible by ``patch_size²``) go under ``_lensforge``.
        """
        a = self.arch
        p = a.patch_size
        extra: dict[str, Any] = {"flavor": self.config.flavor}
        if a.out_channels % (p * p):
            extra["out_channels_per_token"] = a.out_channels
            out_official = a.out_channels
        else:
            out_official = a.out_channels // (p * p)
        if len(set(a.text_dims)) != 1:
            extra["text_dims"] = list(a.text_dims)
        if a.mlp_hidden_dim != default_mlp_hidden(a.inner_dim):
            extra["mlp_hidden_dim"] = a.mlp_hidden_dim
        if a.rope_theta != 10000.0:
            extra["rope_theta"] = a.rope_theta
        cfg = {
            "_class_name": OFFICIAL_CLASS_NAME,
            "_diffusers_version": OFFICIAL_DIFFUSERS_VERSION,
            "patch_size": p,
            "in_channels": a.in_channels,
            "out_channels": out_official,
            "num_layers": a.num_layers,
            "attention_head_dim": a.head_dim,
            "num_attention_heads": a.num_heads,
            "enc_hidden_dim": a.text_dims[0],
            "axes_dims_rope": list(a.axes_dims_rope),
            "gate_mlp": True,
            "rms_norm": True,
            "multi_layer_encoder_feature": True,
            "selected_layer_index": list(a.text_layers) if a.text_layers is not None else list(range(len(a.text_dims))),
        }
        if a.text_layers is None:
            extra["text_layers_unknown"] = True
        if set(extra) != {"flavor"}:
            cfg["_lensforge"] = extra
        return cfg

    @classmethod
    def config_from_official(cls, cfg: dict[str, Any], **overrides: Any) -> "LensMMDiT.Config":
        """Rebuild a :class:`Config` from a ``transformer/config.json`` dict (ours or the official one).

        ``overrides`` set non-architecture fields (``attention``, ``activation_checkpointing`` …).
        """
        if cfg.get("_class_name", OFFICIAL_CLASS_NAME) != OFFICIAL_CLASS_NAME:
            raise LensforgeError(f"transformer config is a {cfg.get('_class_name')}, not a {OFFICIAL_CLASS_NAME}")
        for flag in ("gate_mlp", "rms_norm", "multi_layer_encoder_feature"):
            if not cfg.get(flag, True):
                raise LensforgeError(f"transformer config has {flag}=false, which lens_mmdit does not implement")
        try:
            extra = dict(cfg.get("_lensforge") or {})
            p = int(cfg["patch_size"])
            layers = [int(i) for i in cfg["selected_layer_index"]]
            text_dims = tuple(extra.get("text_dims") or [int(cfg["enc_hidden_dim"])] * len(layers))
            out = int(extra.get("out_channels_per_token") or int(cfg["out_channels"]) * p * p)
            heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
            fields = dict(
                flavor=extra.get("flavor", "3b8") if extra.get("flavor", "3b8") in FLAVORS else "3b8",
                num_layers=int(cfg["num_layers"]),
                num_heads=heads,
                head_dim=head_dim,
                mlp_hidden_dim=int(extra.get("mlp_hidden_dim") or default_mlp_hidden(heads * head_dim)),
                in_channels=int(cfg["in_channels"]),
                out_channels=out,
                patch_size=p,
                text_dims=text_dims,
                text_layers=None if extra.get("text_layers_unknown") else tuple(layers),
                axes_dims_rope=tuple(int(d) for d in cfg["axes_dims_rope"]),
                rope_theta=float(extra.get("rope_theta", 10000.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LensforgeError(f"transformer config is missing or has a bad field: {e}") from e
        fields.update(overrides)
        return cls.Config(**fields)


@dataclass
class _PaddedCall:
    """:meth:`LensMMDiT.forward_padded`'s arguments, routed through ``__call__`` to ``forward``."""

    hidden_states: Tensor
    encoder_hidden_states: list[Tensor]
    timestep: Tensor
    img_shapes: Any
    encoder_hidden_states_mask: Tensor | None


def _uniform_shape(img_shapes: Any, batch_size: int) -> tuple[int, int]:
    """Normalise ``(h, w)``, ``(1, h, w)`` or per-sample lists of them to one ``(h, w)``."""

    def as_hw(s: Any) -> tuple[int, int] | None:
        if isinstance(s, Tensor):
            s = s.tolist()
        if isinstance(s, (list, tuple)) and len(s) in (2, 3) and all(isinstance(v, int) for v in s):
            if len(s) == 3 and s[0] != 1:
                raise LensforgeError(f"img_shapes frame count must be 1, got {tuple(s)}")
            return int(s[-2]), int(s[-1])
        return None

    one = as_hw(img_shapes)
    if one is not None:
        return one
    flat: list[tuple[int, int]] = []
    stack = list(img_shapes) if isinstance(img_shapes, (list, tuple)) else []
    for item in stack:
        hw = as_hw(item)
        if hw is None and isinstance(item, (list, tuple)):
            flat.extend(hw2 for hw2 in (as_hw(x) for x in item) if hw2 is not None)
        elif hw is not None:
            flat.append(hw)
    if not flat:
        raise LensforgeError(f"cannot read img_shapes {img_shapes!r}: expected (h, w) or a list of them")
    if len(set(flat)) != 1:
        raise LensforgeError(f"forward_padded needs equal image sizes, got {sorted(set(flat))}; use forward(PackedBatch)")
    return flat[0]


__all__ = ["LensMMDiT", "LensTransformerBlock", "LensJointAttention", "PackedLayout"]
