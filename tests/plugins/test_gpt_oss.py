"""``gpt_oss`` parity with transformers' own GPT-OSS (tiny random model, offline tokenizer)."""

from __future__ import annotations

import pytest
import torch

from lensforge.errors import LensforgeError
from lensforge.testing.fixtures import save_tiny_gpt_oss, save_tiny_gpt_oss_mxfp4

from lensforge_plugins.text_encoder.gpt_oss import (
    LENS_SYSTEM_PROMPT,
    LENS_THINKING,
    USER_HEADER,
    GptOssEncoder,
    load_kwargs_for,
    render_harmony,
)

PROMPTS = [
    "a red circle",
    "two small yellow triangles left of a large purple star on a white background, three pink dots",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_gpt_oss(tmp_path_factory.mktemp("gpt_oss"), seed=3, num_layers=5)


@pytest.fixture(scope="module")
def encoder(folder):
    return GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[1, 3], dtype="float32"))


def test_template_render_matches_spec(encoder):
    text = encoder.render("a red circle")
    assert text == render_harmony("a red circle")  # tokenizer template == in-code renderer (date replaced)
    assert text.startswith("<|start|>system<|message|>You are ChatGPT")
    assert "Current date: 2026-05-23\n\n" in text
    assert f"<|start|>developer<|message|># Instructions\n\n{LENS_SYSTEM_PROMPT}" in text
    assert f"{USER_HEADER}a red circle<|end|>" in text
    assert f"<|channel|>analysis<|message|>{LENS_THINKING}<|end|>" in text
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>")
    assert "<|return|>" not in text


def test_prefix_offset_points_at_the_user_prompt(encoder):
    ids = encoder.tokenize(["a red circle"])["input_ids"][0]
    tok = encoder.tokenizer
    kept = tok.decode(ids[encoder.txt_offset :])
    assert kept.startswith("a red circle<|end|>"), kept
    assert tok.decode(ids[: encoder.txt_offset]).endswith(USER_HEADER)


def test_features_equal_hooks_on_transformers_model(folder, encoder):
    from transformers import AutoTokenizer, GptOssForCausalLM

    ref = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        ref.model.layers[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out))
        for i in (1, 3)
    ]
    texts = [encoder.render(p) for p in PROMPTS]
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    assert tok.padding_side == "right"
    with torch.no_grad():
        ref(**enc)
    for h in hooks:
        h.remove()
    feats = encoder.encode(PROMPTS)
    off = encoder.txt_offset
    lens = enc["attention_mask"].sum(1) - off
    assert feats.lengths.tolist() == lens.tolist()
    assert lens[0] != lens[1]
    for li, layer in enumerate((1, 3)):
        for b in range(len(PROMPTS)):
            want = captured[layer][b, off : off + int(lens[b])]
            got = feats.sample(b)[li]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the capture is pre-norm: the model's final norm would change it
    assert not torch.allclose(ref.model.norm(captured[3][0]), captured[3][0], atol=1e-3)


def test_stops_after_last_selected_layer(encoder):
    assert len(encoder.model.layers) == 4  # layers 0..3 of 5; layer 4 is never built nor run
    assert encoder.feature_dims == (32, 32)


def test_max_length_truncates_whole_sequence(folder):
    enc = GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[0], dtype="float32", max_length=20))
    f = enc.encode(PROMPTS)
    assert f.lengths.tolist() == [max(0, 20 - enc.txt_offset)] * 2


def test_offset_override_and_bad_layers(folder):
    enc = GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[0], dtype="float32", txt_offset=3))
    assert enc.txt_offset == 3
    with pytest.raises(LensforgeError, match="out of range"):
        GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[9], dtype="float32"))
    bad = GptOssEncoder.Config(path=str(folder / "nope"), layers=[3, 1])
    assert [k for k, _ in GptOssEncoder.check_config(bad)] == ["layers"]
    assert [k for k, _ in GptOssEncoder.check_environment(bad)] == ["path"]
    assert GptOssEncoder.feature_spec(GptOssEncoder.Config(path=str(folder), layers=[0, 2])) == (32, 32)


def test_mxfp4_checkpoints_are_dequantised(tmp_path):
    kw = load_kwargs_for({"quantization_config": {"quant_method": "mxfp4"}}, dequantize_mxfp4=True)
    assert kw["quantization_config"].dequantize is True
    assert load_kwargs_for({}, dequantize_mxfp4=True) == {}
    # a folder whose experts are MXFP4 blocks/scales, like the released text_encoder/
    folder, dense = save_tiny_gpt_oss_mxfp4(tmp_path / "mxfp4", seed=1, num_layers=3)
    enc = GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[0, 2], dtype="float32"))
    sd = enc.model.state_dict()
    assert len(dense) == 6
    for name, want in dense.items():  # E2M1 low nibble = even element, scale 2^(s-127)
        assert torch.equal(sd[name].float(), want), name
    feats = enc.encode(PROMPTS)
    assert all(torch.isfinite(t).all() for t in feats.layers)


def test_in_code_renderer_and_lens_root_layout(folder, encoder, tmp_path):
    import shutil

    # a Lens root: text_encoder/ (weights) next to tokenizer/ (tokenizer files)
    root = tmp_path / "lens"
    shutil.copytree(folder, root / "text_encoder")
    (root / "tokenizer").mkdir()
    for f in (root / "text_encoder").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.move(str(f), root / "tokenizer" / f.name)
    plain = GptOssEncoder(GptOssEncoder.Config(path=str(root), layers=[1, 3], dtype="float32", use_chat_template=False))
    assert not plain.uses_template and encoder.uses_template
    assert plain.txt_offset == encoder.txt_offset
    a, b = plain.encode(PROMPTS), encoder.encode(PROMPTS)
    assert torch.equal(a.lengths, b.lengths)
    for x, y in zip(a.layers, b.layers):
        torch.testing.assert_close(x, y)
