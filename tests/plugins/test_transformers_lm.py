"""``transformers_lm`` on a tiny random GPT-OSS saved to a temp folder: chat template, shapes, deterministic greedy
decoding, and weight sharing with the ``gpt_oss`` text encoder checked by tensor identity (no Hub access)."""

from __future__ import annotations

import pytest
import torch

from lensforge.errors import LensforgeError
from lensforge.reasoners.prompts import PRIVATE_REASONING_SUFFIX, load_system_prompt
from lensforge.testing.fixtures import save_tiny_bert, save_tiny_gpt_oss, save_tiny_gpt_oss_mxfp4

from lensforge_plugins.reasoner.transformers_lm import TransformersLMReasoner
from lensforge_plugins.text_encoder.gpt_oss import GptOssEncoder

PROMPTS = ["a red circle", "two small yellow triangles left of a large purple star"]
NEW = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_gpt_oss(tmp_path_factory.mktemp("lm"), seed=5, num_layers=5)


def _reasoner(**kw) -> TransformersLMReasoner:
    cfg = dict(temperature=0.0, max_new_tokens=NEW, dtype="float32", device="cpu", batch_size=2)
    cfg.update(kw)
    return TransformersLMReasoner.from_params(**cfg)


def test_chat_template_is_lens_local_path(folder):
    r = _reasoner(path=str(folder))
    text = r.render("a red circle")
    assert "Reasoning: low" in text  # reasoning_effort="low", as Lens
    assert f"# Instructions\n\n{load_system_prompt()}\n\n{PRIVATE_REASONING_SUFFIX}" in text  # system -> developer
    assert "<|start|>user<|message|>a red circle<|end|>" in text
    assert text.endswith("<|start|>assistant")  # the generation prompt: the model writes the channel itself
    assert "Keep any reasoning private" not in _reasoner(path=str(folder), private_reasoning_suffix=False).render("x")
    assert "custom rules" in r.render("x", system_prompt="custom rules")


def test_greedy_decode_shapes_and_determinism_match_transformers(folder):
    from transformers import AutoTokenizer, GptOssForCausalLM

    r = _reasoner(path=str(folder))
    raw = r.generate(PROMPTS)
    assert len(raw) == 2 and raw == r.generate(PROMPTS)  # deterministic
    # the same greedy tokens as transformers' own model, prompt by prompt (no padding)
    ref = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    for p, got in zip(PROMPTS, raw):
        ids = tok(r.render(p), return_tensors="pt", add_special_tokens=True).input_ids
        with torch.no_grad():
            out = ref.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:]
        assert 1 <= new.shape[0] <= NEW
        assert got.startswith(tok.decode(new, skip_special_tokens=False))
    # a random model answers no harmony final message: parsed empty -> the prompt is kept and the rewrite counted
    rewrites = r.rewrite(PROMPTS)
    assert [w.prompt for w in rewrites] == PROMPTS
    for w in rewrites:
        assert w.raw is not None
        assert (w.ok and w.text != w.prompt) or (not w.ok and w.text == w.prompt and w.error == "empty rewrite")
    assert r.stats()["rewrites"] == 2


def test_shares_the_gpt_oss_encoders_weights_by_identity(folder):
    enc = GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[1, 3], dtype="float32"))
    assert len(enc.model.layers) == 4  # the encoder builds layers 0-3 of 5 and no lm_head
    before = enc.encode(PROMPTS)
    r = _reasoner(share_text_encoder=True)
    r.setup(text_encoder=enc)
    lm = r.model
    for i in range(4):  # the same modules, hence the same tensors: no second copy
        assert lm.model.layers[i] is enc.model.layers[i]
        for (n, a), (_, b) in zip(lm.model.layers[i].named_parameters(), enc.model.layers[i].named_parameters()):
            assert a is b, n
    assert lm.model.embed_tokens.weight is enc.model.embed_tokens.weight
    assert lm.model.norm.weight is enc.model.norm.weight
    assert r.tokenizer is enc.tokenizer
    # what it costs: lm_head and the layer the encoder skipped, loaded once
    info = r.sharing
    assert info["loaded_layers"] == [4] and info["layers"] == 5
    head = lm.lm_head.weight.numel()
    layer4 = sum(p.numel() for p in lm.model.layers[4].parameters())
    assert info["loaded_params"] == head + layer4 and info["loaded_bytes"] == 4 * (head + layer4)
    assert info["shared_params"] == sum(p.numel() for p in enc.model.parameters())
    # the loaded parts equal the checkpoint's, and generation equals a separately loaded model's
    from transformers import GptOssForCausalLM

    ref = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    torch.testing.assert_close(lm.lm_head.weight, ref.lm_head.weight, rtol=0, atol=0)
    for (n, a), (_, b) in zip(lm.model.layers[4].named_parameters(), ref.model.layers[4].named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    alone = _reasoner(path=str(folder))
    assert r.generate(PROMPTS) == alone.generate(PROMPTS)
    # the encoder is unchanged by the sharing (and by generating)
    after = enc.encode(PROMPTS)
    for x, y in zip(before.layers, after.layers):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_sharing_dequantises_the_skipped_mxfp4_layers(tmp_path):
    folder, dense = save_tiny_gpt_oss_mxfp4(tmp_path / "mx", seed=2, num_layers=3)
    enc = GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[0], dtype="float32"))
    r = _reasoner(share_text_encoder=True)
    r.setup(text_encoder=enc)
    assert r.sharing["loaded_layers"] == [1, 2]
    for name in ("gate_up_proj", "down_proj"):
        got = getattr(r.model.model.layers[2].mlp.experts, name)
        torch.testing.assert_close(got, dense[f"layers.2.mlp.experts.{name}"].to(got.dtype), rtol=0, atol=0)
    assert r.model.model.layers[0].mlp.experts.gate_up_proj is enc.model.layers[0].mlp.experts.gate_up_proj


def test_text_encoders_it_cannot_share_are_one_clear_error(folder, tmp_path):
    from lensforge import registry

    bert = registry.get("text_encoder", "hf_encoder").from_params(path=str(save_tiny_bert(tmp_path / "bert")), layers=[1])
    r = _reasoner(share_text_encoder=True)
    with pytest.raises(LensforgeError, match="needs the gpt_oss text encoder.*'hf_encoder'"):
        r.setup(text_encoder=bert)
    with pytest.raises(LensforgeError, match="no loaded text encoder"):
        r.setup(text_encoder=None)
    other = save_tiny_gpt_oss(tmp_path / "other", seed=9, num_layers=2)
    enc = GptOssEncoder(GptOssEncoder.Config(path=str(folder), layers=[1], dtype="float32"))
    with pytest.raises(LensforgeError, match="not the folder the gpt_oss text encoder was loaded from"):
        _reasoner(share_text_encoder=True, path=str(other)).setup(text_encoder=enc)
    with pytest.raises(LensforgeError, match="share_text_encoder is on but setup"):
        _reasoner(share_text_encoder=True).rewrite(["x"])
    # validation-time checks
    assert TransformersLMReasoner.check_config(TransformersLMReasoner.Config()) != []
    env = TransformersLMReasoner.check_environment(TransformersLMReasoner.Config(path=str(tmp_path / "nope"),
                                                                                 system_prompt_file="/no/file.txt"))
    assert {k for k, _ in env} == {"path", "system_prompt_file"}
    with pytest.raises(LensforgeError, match="system prompt file '/no/file.txt' does not exist"):
        _reasoner(path=str(folder), system_prompt_file="/no/file.txt")
