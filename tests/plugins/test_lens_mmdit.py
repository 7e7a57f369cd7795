"""``lens_mmdit``: official key layout, packed == per-sample, padded == packed, hand-computed block,
backends, activation checkpointing, config round trips."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lensforge import registry
from lensforge.errors import LensforgeError
from lensforge.interfaces import DiTSpec, PackedBatch, TextFeatures
from lensforge_plugins.dit.lens_mmdit import LensMMDiT, PackedLayout

# ---------------------------------------------------------------------------------------------
# LENS_SPEC §1.2: the released transformer/ state dict (written from the spec, not the model)
# ---------------------------------------------------------------------------------------------

SPEC_TOP_LEVEL = {
    "time_text_embed.timestep_embedder.linear_1.weight": (1536, 256),
    "time_text_embed.timestep_embedder.linear_1.bias": (1536,),
    "time_text_embed.timestep_embedder.linear_2.weight": (1536, 1536),
    "time_text_embed.timestep_embedder.linear_2.bias": (1536,),
    "txt_norm.0.weight": (2880,),
    "txt_norm.1.weight": (2880,),
    "txt_norm.2.weight": (2880,),
    "txt_norm.3.weight": (2880,),
    "txt_in.weight": (1536, 11520),
    "txt_in.bias": (1536,),
    "img_in.weight": (1536, 128),
    "img_in.bias": (1536,),
    "norm_out.linear.weight": (3072, 1536),
    "norm_out.linear.bias": (3072,),
    "proj_out.weight": (128, 1536),
    "proj_out.bias": (128,),
}

SPEC_PER_BLOCK = {
    "attn.img_qkv.weight": (4608, 1536),
    "attn.img_qkv.bias": (4608,),
    "attn.txt_qkv.weight": (4608, 1536),
    "attn.txt_qkv.bias": (4608,),
    "attn.to_out.0.weight": (1536, 1536),
    "attn.to_out.0.bias": (1536,),
    "attn.to_add_out.weight": (1536, 1536),
    "attn.to_add_out.bias": (1536,),
    "attn.norm_q.weight": (64,),
    "attn.norm_k.weight": (64,),
    "attn.norm_added_q.weight": (64,),
    "attn.norm_added_k.weight": (64,),
    "img_mod.1.weight": (9216, 1536),
    "img_mod.1.bias": (9216,),
    "txt_mod.1.weight": (9216, 1536),
    "txt_mod.1.bias": (9216,),
    "img_norm1.weight": (1536,),
    "img_norm2.weight": (1536,),
    "txt_norm1.weight": (1536,),
    "txt_norm2.weight": (1536,),
    "img_mlp.w1.weight": (4096, 1536),
    "img_mlp.w3.weight": (4096, 1536),
    "img_mlp.w2.weight": (1536, 4096),
    "txt_mlp.w1.weight": (4096, 1536),
    "txt_mlp.w3.weight": (4096, 1536),
    "txt_mlp.w2.weight": (1536, 4096),
}

SPEC_STATE_DICT = dict(SPEC_TOP_LEVEL)
for _i in range(48):
    SPEC_STATE_DICT.update({f"transformer_blocks.{_i}.{k}": v for k, v in SPEC_PER_BLOCK.items()})

SPEC_OFFICIAL_CONFIG = {
    "_class_name": "LensTransformer2DModel",
    "_diffusers_version": "0.37.1",
    "patch_size": 2,
    "in_channels": 128,
    "out_channels": 32,
    "num_layers": 48,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "enc_hidden_dim": 2880,
    "axes_dims_rope": [8, 28, 28],
    "gate_mlp": True,
    "rms_norm": True,
    "multi_layer_encoder_feature": True,
    "selected_layer_index": [5, 11, 17, 23],
}


def test_3b8_on_meta_matches_released_state_dict():
    assert len(SPEC_STATE_DICT) == 1264
    with torch.device("meta"):
        model = LensMMDiT(LensMMDiT.Config(flavor="3b8", attention="sdpa_loop"))
    sd = model.state_dict()
    assert len(sd) == 1264
    assert sum(t.numel() for t in sd.values()) == 4_104_225_152
    assert {k: tuple(v.shape) for k, v in sd.items()} == SPEC_STATE_DICT
    assert list(model.buffers()) == []  # RoPE tables are not state
    assert model.official_config() == SPEC_OFFICIAL_CONFIG


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _model(seed: int = 0, **overrides) -> LensMMDiT:
    """Tiny model with random weights everywhere (zero-init would make outputs trivially equal)."""
    cfg = dataclasses.replace(LensMMDiT.tiny_config(), **overrides)
    model = LensMMDiT(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 2:  # fan-in scaled so activations stay O(1)
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif "norm" in name:  # RMSNorm scales around 1
                p.copy_(1 + 0.1 * noise)
            else:  # biases
                p.copy_(0.1 * noise)
    return model.eval()


def _batch(model: LensMMDiT, shapes, txt_lens, seed: int = 1) -> PackedBatch:
    a = model.arch
    g = torch.Generator().manual_seed(seed)
    n_img = sum(h * w for h, w in shapes)
    text = TextFeatures(
        layers=[torch.randn(sum(txt_lens), d, generator=g) for d in a.text_dims],
        lengths=torch.tensor(txt_lens),
    )
    return PackedBatch(
        img_tokens=torch.randn(n_img, a.in_channels, generator=g),
        img_shapes=torch.tensor(shapes),
        sigmas=torch.rand(len(shapes), generator=g),
        text=text,
    )


MIXED_SHAPES = [(6, 3), (4, 4), (3, 6)]  # aspect 1:2, 1:1, 2:1 (W:H)
MIXED_TXT = [5, 9, 2]


def test_packed_forward_equals_each_sample_alone():
    model = _model()
    batch = _batch(model, MIXED_SHAPES, MIXED_TXT)
    with torch.no_grad():
        packed = model(batch)
        assert packed.shape == (batch.img_tokens.shape[0], model.arch.out_channels)
        alone = [model(_sub(batch, i)) for i in range(batch.num_samples)]
    diff = (packed - torch.cat(alone, 0)).abs().max().item()
    assert diff <= 1e-5, diff
    # and the samples really are different (not a degenerate model)
    assert packed.abs().mean() > 1e-2


def _sub(batch: PackedBatch, i: int) -> PackedBatch:
    return PackedBatch(
        img_tokens=batch.split_img(batch.img_tokens)[i],
        img_shapes=batch.img_shapes[i : i + 1],
        sigmas=batch.sigmas[i : i + 1],
        text=batch.text.select([i]),
    )


def test_packed_handles_empty_text_and_order_changes():
    model = _model(3)
    batch = _batch(model, [(2, 5), (3, 3), (5, 2), (1, 1)], [0, 4, 1, 3])
    with torch.no_grad():
        packed = model(batch)
        alone = torch.cat([model(_sub(batch, i)) for i in range(4)], 0)
    assert (packed - alone).abs().max().item() <= 1e-5


def test_padded_with_mask_equals_packed():
    model = _model(4)
    shapes, txt = [(4, 5)] * 3, [6, 2, 0]
    batch = _batch(model, shapes, txt)
    layers, mask = batch.text.to_padded()
    B, S = mask.shape
    with torch.no_grad():
        packed = model(batch)
        padded = model.forward_padded(
            batch.img_tokens.view(B, 20, -1), layers, batch.sigmas, [(1, 4, 5)] * B, encoder_hidden_states_mask=mask
        )
    assert padded.shape == (B, 20, model.arch.out_channels)
    assert (padded.reshape(-1, padded.shape[-1]) - packed).abs().max().item() <= 1e-5


def test_padded_with_full_mask_and_no_mask_agree():
    model = _model(5)
    batch = _batch(model, [(3, 4)] * 2, [4, 4])
    layers, mask = batch.text.to_padded()
    with torch.no_grad():
        a = model.forward_padded(batch.img_tokens.view(2, 12, -1), layers, batch.sigmas, (3, 4), mask)
        b = model.forward_padded(batch.img_tokens.view(2, 12, -1), layers, batch.sigmas, (3, 4))
        c = model(batch)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a.reshape(-1, a.shape[-1]) - c).abs().max().item() <= 1e-5


def test_padded_rejects_mixed_sizes():
    model = _model()
    x = torch.zeros(2, 12, model.arch.in_channels)
    layers = [torch.zeros(2, 3, d) for d in model.arch.text_dims]
    with pytest.raises(LensforgeError, match="equal image sizes"):
        model.forward_padded(x, layers, torch.rand(2), [(3, 4), (4, 3)])


def test_sdpa_loop_and_sdpa_masked_models_agree():
    loop = _model(6, attention="sdpa_loop")
    masked = _model(6, attention="sdpa_masked")
    batch = _batch(loop, MIXED_SHAPES, MIXED_TXT, seed=7)
    with torch.no_grad():
        assert (loop(batch) - masked(batch)).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------
# an independent re-implementation of the spec's equations (LENS_SPEC §1.4–1.10)
# ---------------------------------------------------------------------------------------------


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope_complex(x_LHD, pos_L3, axes, theta=10000.0):
    """Complex interleaved-pair rotation, axis tables concatenated (frame, height, width)."""
    angles = []
    for a, d in enumerate(axes):
        freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        angles.append(pos_L3[:, a : a + 1].float() * freq[None])
    rot = torch.polar(torch.ones(1), torch.cat(angles, 1))  # [L, D/2]
    L, H, D = x_LHD.shape
    xc = torch.view_as_complex(x_LHD.reshape(L, H, D // 2, 2).contiguous())
    return torch.view_as_real(xc * rot[:, None]).reshape(L, H, D)


def _spec_block(sd, prefix, img, txt, temb, img_pos, txt_pos, heads, hd, axes):
    def lin(name, x):
        return F.linear(x, sd[f"{prefix}{name}.weight"], sd.get(f"{prefix}{name}.bias"))

    def mods(name):
        m = lin(f"{name}.1", F.silu(temb))  # Sequential(SiLU, Linear)
        first, second = m.chunk(2, dim=-1)
        return first.chunk(3, dim=-1), second.chunk(3, dim=-1)  # (shift, scale, gate) each

    (ish1, isc1, ig1), (ish2, isc2, ig2) = mods("img_mod")
    (tsh1, tsc1, tg1), (tsh2, tsc2, tg2) = mods("txt_mod")
    xi = _rms(img, sd[f"{prefix}img_norm1.weight"], 1e-6) * (1 + isc1) + ish1
    xt = _rms(txt, sd[f"{prefix}txt_norm1.weight"], 1e-6) * (1 + tsc1) + tsh1

    def qkv(name, x, nq, nk, pos):
        q, k, v = lin(name, x).view(x.shape[0], 3, heads, hd).unbind(1)
        q = _rms(q, sd[f"{prefix}attn.{nq}.weight"], 1e-6)
        k = _rms(k, sd[f"{prefix}attn.{nk}.weight"], 1e-6)
        return _rope_complex(q, pos, axes), _rope_complex(k, pos, axes), v

    qi, ki, vi = qkv("attn.img_qkv", xi, "norm_q", "norm_k", img_pos)
    qt, kt, vt = qkv("attn.txt_qkv", xt, "norm_added_q", "norm_added_k", txt_pos)
    q, k, v = torch.cat([qi, qt]), torch.cat([ki, kt]), torch.cat([vi, vt])  # [image; text]
    w = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd), dim=-1)
    o = torch.einsum("hqk,khd->qhd", w, v).reshape(q.shape[0], heads * hd)
    n = img.shape[0]
    img = img + ig1 * lin("attn.to_out.0", o[:n])
    txt = txt + tg1 * lin("attn.to_add_out", o[n:])

    def swiglu(name, x):
        return lin(f"{name}.w2", F.silu(lin(f"{name}.w1", x)) * lin(f"{name}.w3", x))

    img = img + ig2 * swiglu("img_mlp", _rms(img, sd[f"{prefix}img_norm2.weight"], 1e-6) * (1 + isc2) + ish2)
    txt = txt + tg2 * swiglu("txt_mlp", _rms(txt, sd[f"{prefix}txt_norm2.weight"], 1e-6) * (1 + tsc2) + tsh2)
    return img, txt


def _spec_positions(h, w, n_txt):
    ys = torch.arange(h) - (h - h // 2)  # centred grid (scale_rope)
    xs = torch.arange(w) - (w - w // 2)
    img = torch.stack([torch.zeros(h * w, dtype=torch.long), ys.repeat_interleave(w), xs.repeat(h)], 1)
    off = max(h // 2, w // 2)
    txt = (torch.arange(n_txt) + off)[:, None].expand(n_txt, 3)
    return img, txt


def test_one_block_matches_spec_equations():
    model = _model(8)
    a = model.arch
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    h, w, n_txt = 3, 5, 4
    g = torch.Generator().manual_seed(9)
    img = torch.randn(h * w, a.inner_dim, generator=g)
    txt = torch.randn(n_txt, a.inner_dim, generator=g)
    temb = torch.randn(1, a.inner_dim, generator=g)
    img_pos, txt_pos = _spec_positions(h, w, n_txt)
    ref_img, ref_txt = _spec_block(sd, "transformer_blocks.0.", img, txt, temb, img_pos, txt_pos,
                                   a.num_heads, a.head_dim, a.axes_dims_rope)
    layout = PackedLayout.build(model.rope, [(h, w)], [n_txt], torch.device("cpu"))
    with torch.no_grad():
        out_txt, out_img = model.transformer_blocks[0](img, txt, temb, layout, model.attention_backend)
    assert (out_img - ref_img).abs().max().item() <= 1e-5
    assert (out_txt - ref_txt).abs().max().item() <= 1e-5


def test_whole_forward_matches_spec_equations():
    """Top level too: σ sinusoid (cos first, ×1000), text front-end, norm_out (scale, shift), proj_out."""
    model = _model(10, num_layers=2)
    a = model.arch
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    batch = _batch(model, [(4, 3)], [5], seed=11)
    sigma = batch.sigmas
    k = torch.arange(128, dtype=torch.float32)
    # diffusers' operation order, (σ·freq)·1000, in fp32 (rounding of a ~1e3 argument matters at 1e-5)
    arg = (sigma[:, None].float() * torch.exp(-math.log(10000) * k / 128)[None]) * 1000
    sinus = torch.cat([torch.cos(arg), torch.sin(arg)], 1)
    t = F.linear(sinus, sd["time_text_embed.timestep_embedder.linear_1.weight"], sd["time_text_embed.timestep_embedder.linear_1.bias"])
    temb = F.linear(F.silu(t), sd["time_text_embed.timestep_embedder.linear_2.weight"], sd["time_text_embed.timestep_embedder.linear_2.bias"])
    feats = torch.cat([_rms(x, sd[f"txt_norm.{i}.weight"], 1e-5) for i, x in enumerate(batch.text.layers)], -1)
    txt = F.linear(feats, sd["txt_in.weight"], sd["txt_in.bias"])
    img = F.linear(batch.img_tokens, sd["img_in.weight"], sd["img_in.bias"])
    img_pos, txt_pos = _spec_positions(4, 3, 5)
    for i in range(a.num_layers):
        img, txt = _spec_block(sd, f"transformer_blocks.{i}.", img, txt, temb, img_pos, txt_pos,
                               a.num_heads, a.head_dim, a.axes_dims_rope)
    scale, shift = F.linear(F.silu(temb), sd["norm_out.linear.weight"], sd["norm_out.linear.bias"]).chunk(2, -1)
    ref = F.linear(F.layer_norm(img, (a.inner_dim,), eps=1e-6) * (1 + scale) + shift, sd["proj_out.weight"], sd["proj_out.bias"])
    with torch.no_grad():
        out = model(batch)
    assert (out - ref).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------
# training-related behaviour
# ---------------------------------------------------------------------------------------------


def test_activation_checkpointing_gives_same_gradients():
    grads = []
    for ac in (False, True):
        model = _model(12, activation_checkpointing=ac).train()
        batch = _batch(model, MIXED_SHAPES, MIXED_TXT, seed=13)
        loss = model(batch).pow(2).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_zero_init_starts_at_zero_velocity_and_trains():
    model = LensMMDiT(LensMMDiT.tiny_config())
    batch = _batch(model, MIXED_SHAPES, MIXED_TXT)
    out = model(batch)
    assert torch.equal(out, torch.zeros_like(out))
    out.sub(1).pow(2).mean().backward()
    assert model.proj_out.bias.grad.abs().sum() > 0


def test_wrong_input_widths_raise():
    model = _model()
    batch = _batch(model, [(2, 2)], [3])
    bad = PackedBatch(img_tokens=batch.img_tokens[:, :5], img_shapes=batch.img_shapes, sigmas=batch.sigmas, text=batch.text)
    with pytest.raises(LensforgeError, match="channels per image token"):
        model(bad)
    bad_txt = TextFeatures(layers=batch.text.layers[:1], lengths=batch.text.lengths)
    with pytest.raises(LensforgeError, match="text features"):
        model(PackedBatch(img_tokens=batch.img_tokens, img_shapes=batch.img_shapes, sigmas=batch.sigmas, text=bad_txt))


# ---------------------------------------------------------------------------------------------
# config: registry, recipe overrides, official config round trip, errors
# ---------------------------------------------------------------------------------------------


def test_registry_build_with_recipe_overrides():
    model = registry.build("dit", {"name": "lens_mmdit", "flavor": "tiny", "in_channels": 48,
                                   "text_dims": [384, 384], "attention": "sdpa_loop"})
    assert isinstance(model, LensMMDiT)
    assert model.img_in.in_features == 48 and model.proj_out.out_features == 48
    assert model.txt_in.in_features == 768 and len(model.txt_norm) == 2
    assert LensMMDiT.input_spec(model.config) == DiTSpec(latent_channels=48, text_dims=(384, 384))
    # overriding the text widths of the 3b8 flavor drops its GPT-OSS layer indices instead of failing
    assert LensMMDiT.resolve(LensMMDiT.Config(text_dims=(384, 384))).text_layers is None
    assert LensMMDiT.check_config(LensMMDiT.Config(text_dims=(384, 384))) == []


def test_official_config_round_trip():
    for cfg in (LensMMDiT.Config(), LensMMDiT.Config(flavor="tiny", text_dims=(24, 40), in_channels=27, mlp_hidden_dim=50)):
        back = LensMMDiT.config_from_official(_official(cfg))
        assert LensMMDiT.resolve(back) == LensMMDiT.resolve(cfg)
    back = LensMMDiT.config_from_official(SPEC_OFFICIAL_CONFIG, attention="sdpa_loop")
    assert back.attention == "sdpa_loop"
    assert LensMMDiT.resolve(back) == LensMMDiT.resolve(LensMMDiT.Config())


def _official(cfg):
    with torch.device("meta"):
        return LensMMDiT(dataclasses.replace(cfg, attention="sdpa_loop")).official_config()


def test_official_config_rejects_unsupported_variants():
    with pytest.raises(LensforgeError, match="gate_mlp"):
        LensMMDiT.config_from_official({**SPEC_OFFICIAL_CONFIG, "gate_mlp": False})
    with pytest.raises(LensforgeError, match="missing"):
        LensMMDiT.config_from_official({"_class_name": "LensTransformer2DModel"})


def test_bad_configs_are_reported():
    probs = dict(LensMMDiT.check_config(LensMMDiT.Config(flavor="tiny", axes_dims_rope=(8, 8, 8))))
    assert "sums to 24" in probs["axes_dims_rope"]
    probs = dict(LensMMDiT.check_config(LensMMDiT.Config(flavor="tinny")))
    assert "did you mean 'tiny'" in probs["flavor"]
    probs = dict(LensMMDiT.check_config(LensMMDiT.Config(flavor="tiny", attention="flash9")))
    assert "unknown backend" in probs["attention"]
    with pytest.raises(LensforgeError, match="head_dim"):
        LensMMDiT(LensMMDiT.Config(flavor="tiny", head_dim=48))


def test_state_dict_loads_strict_into_model_rebuilt_from_official_config():
    import copy

    src = _model(14, text_dims=(24, 40), in_channels=12)
    dst = LensMMDiT(LensMMDiT.config_from_official(src.official_config(), attention="sdpa_loop"))
    dst.load_state_dict(src.state_dict(), strict=True)
    twin = copy.deepcopy(dst)  # EMA copies must work (RoPE cache and backend are plain attributes)
    batch = _batch(src, [(2, 3), (3, 2)], [4, 1])
    with torch.no_grad():
        assert torch.equal(src(batch), dst(batch)) and torch.equal(dst(batch), twin(batch))


def test_every_trainable_parameter_gets_a_gradient():
    """DDP with find_unused_parameters=False needs this: the last block's dead text tail is frozen."""
    model = _model(15, num_layers=3).train()
    model.freeze_dead_text_tail()  # _model() randomised in place; the flags survive
    _batch_loss = model(_batch(model, MIXED_SHAPES, MIXED_TXT)).pow(2).mean()
    _batch_loss.backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "transformer_blocks.2.attn.to_add_out.weight", "transformer_blocks.2.attn.to_add_out.bias",
        "transformer_blocks.2.txt_norm2.weight", "transformer_blocks.2.txt_mlp.w1.weight",
        "transformer_blocks.2.txt_mlp.w2.weight", "transformer_blocks.2.txt_mlp.w3.weight",
    }
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
