"""Reasoners: Lens's output parsing, the shipped system prompt, ``synthetic_world`` and ``openai_compatible``
(against a real chat-completions server on 127.0.0.1 whose answers the tests script)."""

from __future__ import annotations

import json

import pytest

from lensforge import registry
from lensforge.errors import LensforgeError
from lensforge.interfaces.reasoner import Reasoner, Rewrite
from lensforge.reasoners.parsing import clean_answer, rewrite_from_answer
from lensforge.reasoners.prompts import default_system_prompt_path, load_system_prompt
from lensforge.testing.chat_server import ChatServer, Reply

TINY_WORLD = {"shapes": ["circle", "square", "triangle"], "colors": ["red", "green", "blue", "yellow"],
              "sizes": ["huge"], "backgrounds": ["flat"], "max_objects": 1, "dense_words": [10, 16]}


# ------------------------------------------------------------------------------------------- parsing (LENS_SPEC §5)


@pytest.mark.parametrize("raw,want", [
    # 1. the last harmony final message, up to <|return|> / <|end|> / the end
    ("<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>A red cube.<|return|>",
     "A red cube."),
    ("<|start|>assistant<|channel|>final<|message|>first<|end|><|start|>assistant<|channel|>final<|message|>second",
     "second"),
    ("<|start|>assistant<|message|>A plain answer.<|end|>", "A plain answer."),
    ("<|channel|>final<|message|>A bare final.<|end|>junk", "A bare final."),
    # ... or a plain-text "assistant final" marker (decoded without special tokens)
    ("analysisThe user wants a cube.assistantfinalA blue cube on grass.", "A blue cube on grass."),
    ("analysis: need a cube\nfinal A green cube.", "A green cube."),
    # 2. <think> blocks and leftover markers removed
    ("<think>hmm, maybe red</think>  A red ball.", "A red ball."),
    ("reasoning that was never opened</think>A yellow star.", "A yellow star."),
    ("A cat<|endoftext|><|endoftext|>", "A cat"),
    # 3. still "analysis" at the start: no answer
    ("<|channel|>analysis<|message|>We need to think about it", ""),
    ("analysis of the request: it is vague", ""),
    # 4. code fences, surrounding quotes, whitespace
    ("```\nA   dog\n on a  sofa.\n```", "A dog on a sofa."),
    ('"A quoted prompt."', "A quoted prompt."),
    ('A sign that says "OPEN".', 'A sign that says "OPEN".'),
    ("", ""), (None, ""),
])
def test_clean_answer_follows_lens_parsing(raw, want):
    assert clean_answer(raw) == want


def test_empty_answer_falls_back_to_the_prompt_and_is_reported():
    rw = rewrite_from_answer("a cat", "<think>only thoughts</think>")
    assert (rw.text, rw.ok, rw.error, rw.raw) == ("a cat", False, "empty rewrite", "<think>only thoughts</think>")
    ok = rewrite_from_answer("a cat", "A grey cat on a red sofa.")
    assert ok.ok and ok.text == "A grey cat on a red sofa." and ok.error is None


def test_shipped_system_prompt_and_bad_files(tmp_path):
    text = load_system_prompt()
    assert default_system_prompt_path().is_file() and text == default_system_prompt_path().read_text().strip()
    for rule in ("Do not add explanations", "describe each of them separately", "2+2=4", "not in English", "plain prose"):
        assert rule in text
    with pytest.raises(LensforgeError, match="does not exist"):
        load_system_prompt(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(LensforgeError, match="is empty"):
        load_system_prompt(tmp_path / "empty.txt")
    (tmp_path / "mine.txt").write_text("\nRewrite it densely.\n")
    assert load_system_prompt(tmp_path / "mine.txt") == "Rewrite it densely."


def test_registry_kind_has_a_real_contract():
    assert registry.base_class("reasoner") is Reasoner
    assert {"synthetic_world", "openai_compatible", "transformers_lm"} <= set(registry.names("reasoner"))
    for name in ("synthetic_world", "openai_compatible", "transformers_lm"):
        assert issubclass(registry.get("reasoner", name), Reasoner)


# ------------------------------------------------------------------------------------------- synthetic_world


def _sw(**kw):
    return registry.get("reasoner", "synthetic_world").from_params(**kw)


def test_synthetic_world_writes_the_worlds_caption_keeping_stated_facts():
    r = _sw(world=TINY_WORLD)
    rw = r.rewrite(["a photo of a green triangle in the upper left of the image."])[0]
    # the tiny world's terse dense caption, as the main job was trained on
    assert rw.ok and rw.text.startswith("A huge green triangle in the upper left on a plain ") and rw.text.endswith(" background.")
    assert rw.notes["unparsed"] == []
    scene = rw.notes["scene"]
    [obj] = scene["objects"]
    assert (obj["color"], obj["shape"], obj["size"], obj["cell"]) == ("green", "triangle", "huge", [0, 0])
    assert scene["background"]["kind"] == "flat" and scene["background"]["colors"][0] in (
        "light grey", "grey", "dark grey", "beige", "cream", "slate", "charcoal", "off-white")


def test_unstated_attributes_come_from_the_worlds_priors_seeded():
    r = _sw(world=TINY_WORLD)
    prompts = [f"a photo of a {c} {s}." for c in TINY_WORLD["colors"] for s in TINY_WORLD["shapes"]] + ["a circle"] * 1
    first = [w.notes["scene"] for w in r.rewrite(prompts)]
    again = [w.notes["scene"] for w in _sw(world=TINY_WORLD).rewrite(prompts)]
    assert first == again  # the same prompt always gets the same scene
    other_seed = [w.notes["scene"] for w in _sw(world=TINY_WORLD, seed=1).rewrite(prompts)]
    assert first != other_seed
    cells = {tuple(s["objects"][0]["cell"]) for s in first}
    assert len(cells) > 3  # positions are drawn, not fixed
    circle = r.rewrite(["a circle"])[0].notes["scene"]["objects"][0]
    assert circle["color"] in TINY_WORLD["colors"] and circle["size"] == "huge"


def test_unparseable_words_are_kept_and_reported():
    r = _sw(world=TINY_WORLD)
    rw = r.rewrite(["a happy dog next to a blue square at sunset"])[0]
    assert rw.ok and rw.notes["unparsed"] == ["happy", "dog", "next", "sunset"]
    assert rw.text.endswith("Also mentioned: happy, dog, next, sunset.")
    assert "blue square" in rw.text
    assert r.stats()["with_unparsed"] == 1 and r.stats()["unparsed_words"] == 4
    quiet = _sw(world=TINY_WORLD, keep_unparsed=False).rewrite(["a dog"])[0]
    assert "dog" not in quiet.text and quiet.notes["unparsed"] == ["dog"]


def test_taxonomy_prompts_rewritten_satisfy_their_own_rubric():
    """A clean render of the scene synthetic_world writes for a short taxonomy prompt passes every checked item."""
    from lensforge.data.checks import score_row
    from lensforge.data.sources.synthetic import render_scene
    from lensforge.data.synthetic_prompts import taxonomy_rows

    rows = taxonomy_rows(33, seed=4, categories="single_object,color,shape,size,count,position,relation,background,text,"
                                               "aspect_ratio,scene")
    r = _sw()
    for row in rows:
        rw = r.rewrite([row["prompt"]])[0]
        assert rw.ok, (row["prompt"], rw.error)
        if row["category"] == "scene":  # already one of the world's dense captions: kept as it is (Lens's rule 4)
            assert rw.text == row["prompt"] and rw.notes["kept"].startswith("already detailed")
            continue
        assert rw.notes["unparsed"] == [], (row["prompt"], rw.notes["unparsed"])
        size = (row.get("height") or 96, row.get("width") or 96)
        img = render_scene(rw.notes["scene"], size)
        res = score_row(img, row)
        assert res["mean"] == pytest.approx(1.0), (row["category"], row["prompt"], rw.text, res["items"])


def test_relations_counts_text_and_backgrounds_are_parsed():
    from lensforge.reasoners.synthetic_world import parse_prompt

    p = parse_prompt('three small red circles above a green star on a vertical grey to slate gradient, and the word '
                     '"KAT" in black letters in the lower right')
    assert [(o["color"], o["shape"], o["size"]) for o in p.objects] == [("red", "circle", "small")] * 3 + [("green", "star", None)]
    assert p.relation == (2, "above", 3)
    assert p.background == {"kind": "gradient", "direction": "vertical", "colors": ["grey", "slate"]}
    assert p.text == {"word": "KAT", "ink": "black", "cell": (2, 2)}
    assert p.unparsed == []
    q = parse_prompt("a wide 2:1 photo of something blue")
    assert q.format_words == ["wide", "2:1"] and q.objects[0]["color"] == "blue" and q.objects[0]["shape"] is None
    assert parse_prompt("a square 1:1 photo of a circle").objects[0]["shape"] == "circle"


def test_synthetic_world_uses_the_served_models_training_world():
    from lensforge.data.sources.synthetic import SyntheticWorld

    r = _sw()
    r.setup(world=SyntheticWorld.Config(**{**TINY_WORLD, "dense_words": (10, 16)}))
    assert r.rewrite(["blue square"])[0].text.startswith("A huge blue square in the ")
    pinned = _sw(world={"sizes": ["small"], "dense_words": [10, 16]})
    pinned.setup(world=SyntheticWorld.Config(**{**TINY_WORLD, "dense_words": (10, 16)}))  # its own world wins
    assert pinned.rewrite(["blue square"])[0].text.startswith("A small blue square")
    with pytest.raises(LensforgeError, match="sizes"):
        _sw(world={"sizes": ["gigantic"]})


# ------------------------------------------------------------------------------------------- openai_compatible


def _oc(server, **kw):
    return registry.get("reasoner", "openai_compatible").from_params(
        endpoint={"base_url": server.base_url, "model": server.model, "max_retries": 0, **kw.pop("endpoint", {})}, **kw)


def test_openai_compatible_sends_lens_api_path_and_parses_answers(tmp_path):
    answers = {"a cat": "<think>cats</think>A grey cat on a red sofa.",
               "a dog": "<|start|>assistant<|channel|>final<|message|>A brown dog.<|return|>",
               "nothing": "   "}
    with ChatServer(lambda call: answers[call.last_user_text()]) as server:
        r = _oc(server)
        r.preflight()
        out = r.rewrite(["a cat", "a dog", "nothing", "a cat"])
        assert [w.text for w in out] == ["A grey cat on a red sofa.", "A brown dog.", "nothing", "A grey cat on a red sofa."]
        assert [w.ok for w in out] == [True, True, False, True] and out[2].error == "empty rewrite"
        assert server.num_calls == 3  # each distinct prompt once
        body = server.calls[0].body
        assert body["messages"][0] == {"role": "system", "content": load_system_prompt()}  # no private-reasoning suffix
        assert body["messages"][1]["role"] == "user" and body["max_tokens"] == 4096
        r.rewrite(["a dog"], system_prompt="Be terse.")
        assert server.calls[-1].body["messages"][0]["content"] == "Be terse."
        stats = r.stats()
        assert stats["rewrites"] == 5 and stats["failed"] == 1 and stats["empty"] == 1 and stats["llm/prompt_tokens"] > 0
        r.close()
        # a file from the search works as the system prompt
        f = tmp_path / "best.txt"
        f.write_text("Rewrite densely.\n")
        r2 = _oc(server, system_prompt_file=str(f))
        r2.rewrite(["a dog"])
        assert server.calls[-1].body["messages"][0]["content"] == "Rewrite densely."
        r2.close()


def test_openai_compatible_failures_are_reported_not_raised(tmp_path, monkeypatch):
    with ChatServer(replies=[Reply.error(500, "boom")]) as server:
        server.handler = lambda call: "A fine rewrite."
        r = _oc(server)
        [bad] = r.rewrite(["x"])
        assert not bad.ok and bad.text == "x" and bad.error.startswith("request failed:") and "boom" in bad.error
        assert r.stats()["request_errors"] == 1
        # the response cache: a second reasoner on the same cache asks nothing
        r_c = _oc(server, endpoint={"cache_dir": str(tmp_path / "cache")})
        first = r_c.rewrite(["y"])[0]
        n = server.num_calls
        again = _oc(server, endpoint={"cache_dir": str(tmp_path / "cache")}).rewrite(["y"])[0]
        assert again.text == first.text and server.num_calls == n and again.notes.get("cached")
        dead_url = server.base_url  # nothing listens there once the server is closed
    with pytest.raises(LensforgeError, match="cannot reach"):
        registry.get("reasoner", "openai_compatible").from_params(
            endpoint={"base_url": dead_url, "model": "m", "timeout_s": 3}).preflight()
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(LensforgeError, match="NO_SUCH_KEY_VAR is not set"):
        registry.get("reasoner", "openai_compatible").from_params(
            endpoint={"base_url": dead_url, "model": "m", "api_key_env": "NO_SUCH_KEY_VAR"})
    with pytest.raises(LensforgeError, match="does not exist"):
        registry.get("reasoner", "openai_compatible").from_params(
            endpoint={"base_url": dead_url, "model": "m"}, system_prompt_file=str(tmp_path / "none.txt"))


def test_cli_args_build_nested_settings_and_rewrite_verb(capsys):
    from lensforge.cli import main
    from lensforge.reasoners.use import parse_params

    assert parse_params(["endpoint.base_url=http://127.0.0.1:9/v1", "endpoint.model=m", "max_tokens=12", "world={sizes: [huge]}"]) == {
        "endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}, "max_tokens": 12, "world": {"sizes": ["huge"]}}
    with pytest.raises(LensforgeError, match="key=value"):
        parse_params(["oops"])
    assert main(["reasoner", "rewrite", "a photo of a blue circle.", "a unicorn", "--reasoner", "synthetic_world",
                 "--reasoner-arg", "world=" + json.dumps(TINY_WORLD), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first["text"].startswith("A huge blue circle in the ") and second["notes"]["unparsed"] == ["unicorn"]
    assert "1 with words it could not parse" in lines[2]
    assert main(["reasoner", "rewrite", "x", "--reasoner", "synthetic_world", "--system-prompt-file", "f.txt"]) == 2
    assert "does not use a system prompt" in capsys.readouterr().err
    assert main(["reasoner", "rewrite", "x", "--reasoner", "no_such"]) == 2
    assert "unknown reasoner plugin 'no_such'" in capsys.readouterr().err
    assert main(["reasoner", "system-prompt"]) == 0
    assert load_system_prompt() in capsys.readouterr().out


def test_rewrite_record_round_trips():
    rw = Rewrite(prompt="a", text="b", raw="<x>b", notes={"unparsed": ["q"]})
    assert rw.to_dict() == {"prompt": "a", "text": "b", "ok": True, "raw": "<x>b", "notes": {"unparsed": ["q"]}}
    failed = Rewrite(prompt="a", text="a", ok=False, error="empty rewrite")
    assert failed.to_dict() == {"prompt": "a", "text": "a", "ok": False, "error": "empty rewrite"}


def test_recipes_name_a_reasoner_in_sampling_and_validate_sharing():
    from pathlib import Path

    from lensforge.errors import RecipeError
    from lensforge.recipe import load_recipe

    tiny = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "pretrain.yaml"
    assert load_recipe(tiny).config.sampling.reasoner is None
    ref = load_recipe(tiny, ["sampling.reasoner.name=synthetic_world", "sampling.reasoner.seed=3"]).config.sampling.reasoner
    assert ref.name == "synthetic_world" and ref.config.seed == 3
    with pytest.raises(RecipeError, match="sampling.reasoner.share_text_encoder: the model's text encoder is 'hf_encoder'"):
        load_recipe(tiny, ["sampling.reasoner={name: transformers_lm, share_text_encoder: true}"])
    with pytest.raises(RecipeError, match="did you mean 'synthetic_world'"):
        load_recipe(tiny, ["sampling.reasoner.name=synthetic_wrld"])
