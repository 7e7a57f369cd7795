"""The ``rubric_judge`` reward against a real chat-completions server on 127.0.0.1 that answers from the verifier.

The test server (:class:`lensforge.testing.chat_server.ChatServer`) decodes the PNG the judge sent, finds
the row by its prompt and answers each rubric item from :func:`lensforge.data.checks.score_items` — so
on clean synthetic renders the judge's item scores equal the verifier's. Backoffs are tiny; waits that
are the point of a test (``Retry-After``, timeouts) are short and measured from the server's clock.
"""

from __future__ import annotations

import json
import math
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from lensforge.cli import main
from lensforge.data.checks import score_items
from lensforge.data.prompt_sets import GLOBAL_STRUCTURAL_ITEM
from lensforge.data.sources.synthetic import render_scene, to_tensor
from lensforge.data.synthetic_prompts import taxonomy_rows
from lensforge.errors import LensforgeError
from lensforge.llm import REASK_MESSAGE
from lensforge.rewards.rubric_judge import JUDGE_SYSTEM_PROMPT, RubricJudgeReward
from lensforge.testing.chat_server import ChatServer, Reply

REPO = Path(__file__).resolve().parents[2]
GID = GLOBAL_STRUCTURAL_ITEM.id
KEY_VAR = "LENSFORGE_TEST_JUDGE_KEY"
SECRET = "sk-judge-9d3e1f0a2b7c4e6d8f1a"


def size_of(row):
    return (row["height"], row["width"]) if "height" in row else (64, 64)


def render(row, scene_row=None):
    """The clean render of ``scene_row``'s scene (default: the row's own) at the row's size, as [3,H,W] in [-1,1]."""
    return to_tensor(render_scene((scene_row or row)["scene"], size_of(row)))


ROWS = taxonomy_rows(8, seed=11)


def verdicts(image, row):
    """What the test server answers: yes iff the verifier scores the item 1 (the global item: yes)."""
    scores = score_items(np.asarray(image.convert("RGB")), row)
    return {k: v >= 1.0 - 1e-9 for k, v in scores.items()}


class VerifierJudge:
    """Handler answering every mode from the verifier, for rows it knows by prompt."""

    def __init__(self, rows, scale_max=5, p_yes=0.9, p_no=0.2):
        self.rows = list(rows)
        self.scale_max, self.p_yes, self.p_no = scale_max, p_yes, p_no

    def row_of(self, text):
        hits = [r for r in self.rows if f'prompt: "{r["prompt"]}"' in text]
        assert len(hits) == 1, text[:200]
        return hits[0]

    def __call__(self, call):
        text = call.first_user_text()
        if not call.images():  # the logprob probe of preflight
            return Reply(content="Yes", top_logprobs={"Yes": -0.05, "No": -3.0})
        row = self.row_of(text)
        (image,) = call.images()
        ok = verdicts(image, row)
        if call.body.get("logprobs"):  # one question per request
            q = re.search(r"Question about the image: (.*)\n", text).group(1)
            item = next((it for it in row["rubric"] if it["question"] == q), None)
            yes = True if item is None else ok[item["id"]]  # None: the global item
            p = self.p_yes if yes else self.p_no
            return Reply(content="Yes" if yes else "No",
                         top_logprobs={"Yes": math.log(p * 0.75), " yes": math.log(p * 0.25), "No": math.log(1 - p)})
        ids = json.loads("[" + re.search(r"The keys must be exactly: (.*)\. No other text", text).group(1) + "]")
        if "integer scale" in text:
            return {i: (self.scale_max if ok.get(i, True) else 1) for i in ids}
        return {i: ("yes" if ok.get(i, True) else "no") for i in ids}


def expected_items(image_tensor, row):
    """The verifier's binarised item scores plus the global item (1)."""
    from lensforge.data.verifier import to_uint8

    s = score_items(to_uint8(image_tensor), row)
    out = {k: float(v >= 1.0 - 1e-9) for k, v in s.items()}
    out[GID] = 1.0
    return out


def weighted(items, row, global_weight=1.0):
    w = {it["id"]: float(it["weight"]) for it in row["rubric"]}
    w[GID] = global_weight
    return sum(w[k] * v for k, v in items.items()) / sum(w[k] for k in items)


def judge(server, **kw):
    endpoint = dict(base_url=server.base_url, model=server.model, backoff_s=0.01, max_backoff_s=0.05,
                    max_retries=2, timeout_s=5.0, concurrency=4)
    endpoint.update(kw.pop("endpoint", {}))
    return RubricJudgeReward.from_params(endpoint=endpoint, **kw)


@pytest.fixture
def server():
    with ChatServer(VerifierJudge(ROWS)) as s:
        yield s
        assert s.handler_errors == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# success


def test_yes_no_answers_match_the_verifier_and_a_mismatched_image_scores_low(server):
    rows = ROWS
    clean = [render(r) for r in rows]
    mismatched = [render(r, rows[(i + 3) % len(rows)]) for i, r in enumerate(rows)]
    rj = judge(server)
    assert rj.check_rows(rows) == []
    rj.preflight()
    out = rj.score(clean, rows)
    assert out.failures == [None] * len(rows) and out.num_failed == 0
    for img, row, items, reward in zip(clean, rows, out.items, out.rewards):
        want = expected_items(img, row)
        assert items == want
        assert reward == pytest.approx(weighted(want, row))
    assert min(out.rewards) >= 0.99  # the world's clean renders satisfy their own rubric
    bad = rj.score(mismatched, rows)
    assert bad.num_failed == 0
    for img, row, items in zip(mismatched, rows, bad.items):
        assert items == expected_items(img, row)
    assert float(np.mean(bad.rewards)) < float(np.mean(out.rewards)) - 0.4
    # one request per image: the system prompt, then the image as a PNG data URL and the rubric
    call = server.calls[0]
    assert call.messages[0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    parts = call.messages[1]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert call.body["temperature"] == 0.0 and call.model == server.model
    row = next(r for r in rows if r["prompt"] in parts[1]["text"])
    for it in row["rubric"]:
        assert f"- {it['id']}: {it['question']}" in parts[1]["text"]
    assert f"- {GID}: {GLOBAL_STRUCTURAL_ITEM.question}" in parts[1]["text"]
    # the decoded image is the render, pixel for pixel
    img = np.asarray(call.images()[0].convert("RGB"))
    assert any(np.array_equal(img, render_scene(r["scene"], size_of(r))) for r in rows)
    st = rj.stats()
    assert st["requests"] == 2 * len(rows) and st["images"] == 2 * len(rows) and st["scored_images"] == 2 * len(rows)
    assert st["dropped_images"] == 0 and st["failures"] == 0 and st["cache_hits"] == 0
    assert st["prompt_tokens"] > 0 and st["completion_tokens"] > 0 and st["latency_mean_s"] > 0 and st["latency_p95_s"] > 0
    assert st["items_judged"] == sum(len(i) for i in out.items + bad.items)
    rj.close()


def test_scale_mode_maps_1_to_n_onto_0_1():
    rows = ROWS[:3]
    with ChatServer(VerifierJudge(rows, scale_max=7)) as server:
        rj = judge(server, mode="scale", scale_max=7)
        imgs = [render(r, rows[(i + 1) % 3]) for i, r in enumerate(rows)]
        out = rj.score(imgs, rows)
        assert "integer scale from 1 (not at all) to 7" in server.calls[0].first_user_text()
        rj.close()
    for img, row, items, d in zip(imgs, rows, out.items, out.details):
        assert items == expected_items(img, row)  # 7 -> 1.0, 1 -> 0.0
        assert set(d["answers"].values()) <= {1.0, 7.0}
    # a middle value maps linearly
    with ChatServer(lambda call: {it["id"]: 3 for it in ROWS[0]["rubric"]} | {GID: "5"}) as server:
        out = judge(server, mode="scale", scale_max=5).score([render(ROWS[0])], ROWS[0:1])
    assert set(out.items[0].values()) == {0.5, 1.0} and out.items[0][GID] == 1.0


def test_logprob_mode_scores_p_yes_from_top_logprobs(server):
    rows = ROWS[:3]
    imgs = [render(r, rows[(i + 1) % 3]) for i, r in enumerate(rows)]
    rj = judge(server, mode="logprob")
    rj.preflight()  # the probe: this server returns logprobs
    n_probe = server.num_calls
    assert n_probe == 1
    out = rj.score(imgs, rows)
    n_items = sum(len(r["rubric"]) + 1 for r in rows)
    assert server.num_calls - n_probe == n_items  # one request per (image, item)
    call = server.calls[-1]
    assert call.body["logprobs"] is True and call.body["top_logprobs"] == 20 and call.body["max_tokens"] == 1
    assert "Answer with a single word: yes or no." in call.first_user_text()
    for img, row, items in zip(imgs, rows, out.items):
        want = {k: (0.9 if v else 0.2) for k, v in expected_items(img, row).items()}
        assert items == pytest.approx(want)
    assert out.rewards == pytest.approx([weighted(i, r) for i, r in zip(out.items, rows)])
    rj.close()


def test_logprob_mode_without_logprobs_fails_at_preflight_or_drops_the_image():
    with ChatServer(lambda call: Reply(content="Yes")) as server:  # no logprobs served
        rj = judge(server, mode="logprob")
        with pytest.raises(LensforgeError, match=re.escape(server.base_url) + ".*returned no log-probabilities"):
            rj.preflight()
        rj.close()
        rj = judge(server, mode="logprob", logprob_probe=False)
        rj.preflight()
        out = rj.score([render(ROWS[0]), render(ROWS[1])], ROWS[:2])
        assert all(math.isnan(r) for r in out.rewards) and out.items == [{}, {}]
        assert all("returned no log-probabilities" in f for f in out.failures)
        st = rj.stats()
        assert st["dropped_images"] == 2 and st["logprob_missing"] >= 2
        rj.close()
    # logprobs that hold neither yes nor no: dropped, with the answer in the reason
    with ChatServer(lambda call: Reply(content="Maybe", top_logprobs={"Maybe": -0.1, "Perhaps": -2.5})) as server:
        out = judge(server, mode="logprob").score([render(ROWS[0])], ROWS[:1])
    assert math.isnan(out.rewards[0]) and "neither 'yes' nor 'no'" in out.failures[0] and "Maybe" in out.failures[0]


def test_item_weights_and_the_global_item_in_the_aggregate():
    row = {"id": "w", "prompt": "a red circle", "category": "c",
           "rubric": [{"id": "a", "question": "Is there a circle?", "weight": 3},
                      {"id": "b", "question": "Is it red?", "weight": 1}]}
    answers = {"a": "yes", "b": "no", GID: "no"}

    def handler(call):
        keys = json.loads("[" + re.search(r"exactly: (.*)\. No other", call.first_user_text()).group(1) + "]")
        return {k: answers[k] for k in keys}

    img = render(ROWS[0])
    with ChatServer(handler) as server:
        def reward(**kw):
            rj = judge(server, **kw)
            out = rj.score([img], [row])
            rj.close()
            assert out.failures == [None]
            return out

        out = reward()
        assert out.items[0] == {"a": 1.0, "b": 0.0, GID: 0.0}
        assert out.rewards[0] == pytest.approx(3 / 5)
        assert reward(global_weight=3.0).rewards[0] == pytest.approx(3 / 7)
        assert reward(item_weights=False).rewards[0] == pytest.approx(1 / 3)
        off = reward(global_item=False)
        assert off.items[0] == {"a": 1.0, "b": 0.0} and off.rewards[0] == pytest.approx(3 / 4)
        assert GID not in server.calls[-1].first_user_text()
        # without the prompt as context the rubric is still there
        reward(include_prompt=False)
        assert "a red circle" not in server.calls[-1].first_user_text()
        assert "Is there a circle?" in server.calls[-1].first_user_text()
        # json_mode asks the server for a JSON object
        reward(json_mode=True)
        assert server.calls[-1].body["response_format"] == {"type": "json_object"}
    # a row that already carries the global item keeps its own question and weight
    own = dict(row, rubric=row["rubric"] + [{"id": GID, "question": "Is it clean?", "weight": 4}])
    with ChatServer(handler) as server:
        out = judge(server, global_weight=1.0).score([img], [own])
        assert "Is it clean?" in server.calls[0].first_user_text()
    assert out.rewards[0] == pytest.approx(3 / 8)


# ---------------------------------------------------------------------------------------------
# failures: retried, then dropped and counted, never 0, never raised


def test_429_with_retry_after_waits_and_succeeds(server):
    server.push(Reply.error(429, "slow down", retry_after=0.3))
    rj = judge(server, endpoint={"concurrency": 1})
    out = rj.score([render(ROWS[0])], ROWS[:1])
    assert out.failures == [None] and out.rewards[0] >= 0.99
    assert server.num_calls == 2 and server.calls[1].time - server.calls[0].time >= 0.3
    st = rj.stats()
    assert st["rate_limited"] == 1 and st["retries"] == 1 and st["failures"] == 0 and st["dropped_images"] == 0
    rj.close()


def test_5xx_until_retries_are_exhausted_drops_that_image_and_scores_the_others(server):
    doomed = ROWS[1]["prompt"]
    answer = server.handler

    def handler(call):
        if f'prompt: "{doomed}"' in call.first_user_text():
            return Reply.error(503, "overloaded")
        return answer(call)

    server.handler = handler
    rj = judge(server, endpoint={"max_retries": 2})
    imgs = [render(r) for r in ROWS[:3]]
    out = rj.score(imgs, ROWS[:3])
    assert math.isnan(out.rewards[1]) and out.items[1] == {}
    assert "503" in out.failures[1] and server.base_url in out.failures[1] and "after 3 attempts" in out.failures[1]
    assert out.failures[0] is None and out.failures[2] is None and out.rewards[0] >= 0.99 and out.rewards[2] >= 0.99
    st = rj.stats()
    assert st["server_errors"] == 3 and st["failures"] == 1 and st["dropped_images"] == 1 and st["scored_images"] == 2
    rj.close()


def test_malformed_json_is_reasked_then_succeeds(server):
    server.push(Reply(content="Sure! The image looks great, everything is there."),
                Reply.json({it["id"]: "maybe" for it in ROWS[0]["rubric"]} | {GID: "yes"}))
    rj = judge(server, endpoint={"concurrency": 1})
    out = rj.score([render(ROWS[0])], ROWS[:1])
    assert out.failures == [None] and out.rewards[0] >= 0.99 and out.details[0]["reasks"] == 2
    assert server.num_calls == 3
    second, third = server.calls[1].messages, server.calls[2].messages
    assert second[-1]["content"].startswith(REASK_MESSAGE.split("{")[0]) and "not valid JSON" in second[-1]["content"]
    assert 'every value must be "yes" or "no"' in third[-1]["content"] and '"maybe"' in third[-1]["content"]
    assert rj.stats()["reasks"] == 2
    rj.close()


def test_malformed_json_exhausting_the_reasks_drops_the_image(server):
    first = ROWS[0]["rubric"][0]["id"]
    server.handler = lambda call: {first: "yes"}  # always leaves items out
    rj = judge(server, endpoint={"json_reasks": 1})
    out = rj.score([render(ROWS[0]), render(ROWS[1])], ROWS[:2])
    assert all(math.isnan(r) for r in out.rewards)
    assert "judge invalid_answer" in out.failures[0] and "missing item ids" in out.failures[0] and GID in out.failures[0]
    st = rj.stats()
    assert st["invalid_answers"] == 2 and st["dropped_images"] == 2 and st["requests"] == 4 and st["reasks"] == 2
    rj.close()


def test_timeout_is_retried_then_succeeds_or_drops(server):
    server.push(Reply(content="late", delay_s=1.5))
    rj = judge(server, endpoint={"timeout_s": 0.5, "max_retries": 1, "concurrency": 1})
    out = rj.score([render(ROWS[0])], ROWS[:1])
    assert out.failures == [None] and out.rewards[0] >= 0.99 and rj.stats()["timeouts"] == 1
    server.push(Reply(content="late", delay_s=1.5), Reply(content="late", delay_s=1.5))
    out = rj.score([render(ROWS[0])], ROWS[:1])
    assert math.isnan(out.rewards[0]) and out.failures[0].startswith("judge timeout:")
    assert "no answer within 0.5 s" in out.failures[0]
    assert rj.stats()["timeouts"] == 3 and rj.stats()["dropped_images"] == 1
    rj.close()


def test_cache_hit_on_a_second_run_makes_no_request(server, tmp_path):
    imgs = [render(r) for r in ROWS[:4]]
    cache = str(tmp_path / "cache")
    for mode in ("yes_no", "logprob"):
        first = judge(server, mode=mode, logprob_probe=False, endpoint={"cache_dir": cache})
        a = first.score(imgs, ROWS[:4])
        first.close()
        n = server.num_calls
        again = judge(server, mode=mode, logprob_probe=False, endpoint={"cache_dir": cache})  # a resumed run
        b = again.score(imgs, ROWS[:4])
        st = again.stats()
        again.close()
        assert server.num_calls == n  # zero requests on the server
        assert b.rewards == a.rewards and b.items == a.items and b.failures == a.failures
        assert all(d["cached"] for d in b.details) and not any(d["cached"] for d in a.details)
        assert st["requests"] == 0 and st["cache_hits"] == st["results"] > 0 and st["prompt_tokens"] == 0


def test_the_api_key_is_never_logged_returned_or_cached(tmp_path, caplog, monkeypatch):
    caplog.set_level("DEBUG")
    monkeypatch.setenv(KEY_VAR, SECRET)
    cache = tmp_path / "cache"
    with ChatServer(VerifierJudge(ROWS), api_key=SECRET) as server:
        doomed = ROWS[2]["prompt"]
        answer = server.handler
        server.handler = lambda call: (Reply.error(503, f"overloaded for {SECRET}")
                                       if f'prompt: "{doomed}"' in call.first_user_text() else answer(call))
        rj = judge(server, endpoint={"api_key_env": KEY_VAR, "cache_dir": str(cache)})
        rj.preflight()
        out = rj.score([render(r) for r in ROWS[:3]], ROWS[:3])
        assert {k.lower(): v for k, v in server.calls[0].headers.items()}["authorization"] == f"Bearer {SECRET}"  # the key was used …
        texts = [repr(out), json.dumps(out.failures), json.dumps(out.details), json.dumps(rj.stats()),
                 repr(rj.config), repr(rj.client)]
        rj.close()
        assert out.failures[0] is None and out.failures[2] is not None and "***" in out.failures[2]
        # a wrong key: the server quotes it back; the error names the variable, not the value
        monkeypatch.setenv(KEY_VAR, SECRET + "-wrong")
        bad = judge(server, endpoint={"api_key_env": KEY_VAR})
        with pytest.raises(LensforgeError) as e:
            bad.preflight()
        texts.append(str(e.value))
        out = bad.score([render(ROWS[0])], ROWS[:1])
        texts += [repr(out)]
        bad.close()
        assert f"${KEY_VAR}" in str(e.value) and "rejected the API key" in out.failures[0]
    # … and is nowhere else
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files
    texts += [p.read_text() for p in files] + [caplog.text]
    for t in texts:
        assert SECRET not in t
    # the variable is required when named
    monkeypatch.delenv(KEY_VAR)
    with pytest.raises(LensforgeError, match=f"environment variable {KEY_VAR} is not set"):
        RubricJudgeReward.from_params(endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": KEY_VAR})


# ---------------------------------------------------------------------------------------------
# rows, images, config


def test_check_rows_rejects_what_cannot_be_judged_and_score_never_crashes(server):
    rj = judge(server)
    good = ROWS[0]
    bad = [dict(good, id="empty", rubric=[]),
           dict(good, id="noq", rubric=[{"id": "a", "question": " ", "weight": 1}]),
           dict(good, id="dup", rubric=[{"id": "a", "question": "A?", "weight": 1}, {"id": "a", "question": "B?", "weight": 1}]),
           dict(good, id="w0", rubric=[{"id": "a", "question": "A?", "weight": 0}]),
           dict(good, id="noprompt", prompt="")]
    problems = rj.check_rows([good, *bad])
    text = "\n".join(problems)
    assert len(problems) == 5 and "row empty: empty rubric" in text and "row noq: rubric[0] has no 'question'" in text
    assert "duplicate item id 'a'" in text and "'weight' must be a number > 0" in text and "row noprompt: no 'prompt'" in text
    assert judge(server, include_prompt=False).check_rows([bad[-1]]) == []
    # scored anyway: those images are NaN with the reason, a broken image too, the good one is scored
    images = [render(good)] + [render(good)] * len(bad) + [torch.zeros(5, 8, 8)]
    out = rj.score(images, [good, *bad, good])
    assert out.failures[0] is None and out.rewards[0] >= 0.99
    assert all(math.isnan(r) for r in out.rewards[1:]) and "empty rubric" in out.failures[1]
    assert "cannot be sent to the judge" in out.failures[-1]
    assert server.num_calls == 1 and rj.stats()["dropped_images"] == len(bad) + 1
    with pytest.raises(LensforgeError, match="2 images for 1 rows"):
        rj.score(images[:2], [good])
    rj.close()


def test_config_from_dotted_params_and_bad_values(server):
    rj = RubricJudgeReward.from_params(**{"endpoint.base_url": server.base_url, "endpoint.model": "m",
                                          "endpoint.rpm": 600, "mode": "scale"})
    assert rj.config.endpoint.base_url == server.base_url and rj.config.endpoint.rpm == 600.0
    assert rj.config.mode == "scale" and rj.config.global_item is True
    rj.close()
    with pytest.raises(LensforgeError, match="did you mean 'mode'"):
        RubricJudgeReward.from_params(**{"endpoint.base_url": server.base_url, "endpoint.model": "m", "mdoe": "x"})
    with pytest.raises(LensforgeError, match="endpoint.model: missing required value"):
        RubricJudgeReward.from_params(**{"endpoint.base_url": server.base_url})
    with pytest.raises(LensforgeError, match="must be one of 'yes_no', 'scale', 'logprob'"):
        judge(server, mode="likert")
    with pytest.raises(LensforgeError, match="scale_max: must be >= 2"):
        judge(server, mode="scale", scale_max=1)
    with pytest.raises(LensforgeError, match="base_url must start with http"):
        RubricJudgeReward.from_params(endpoint={"base_url": "localhost:8000", "model": "m"})
    with pytest.raises(LensforgeError, match="global_weight"):
        judge(server, global_weight=0)


def test_the_readme_recipe_node_validates_and_typos_are_named():
    import yaml

    from lensforge.recipe.plugin_config import validate_plugin_node

    text = (REPO / "lensforge" / "llm" / "README.md").read_text()
    section = text[text.index("## The rubric judge"):]
    node = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])["stage"]["reward"]
    problems: list = []
    ref = validate_plugin_node("reward", node, "stage.reward", problems, origin=lambda key: "rl.yaml")
    assert problems == [] and ref.name == "rubric_judge"
    assert ref.config.endpoint.model == "Qwen/Qwen2.5-VL-7B-Instruct" and ref.config.endpoint.concurrency == 32
    node["endpoint"]["rmp"] = 10
    node["scale_max"] = 0
    problems = []
    validate_plugin_node("reward", node, "stage.reward", problems, origin=lambda key: "rl.yaml")
    text = "\n".join(map(str, problems))
    assert "rl.yaml -> stage.reward.endpoint.rmp: unknown key (did you mean 'rpm'?)" in text
    assert "stage.reward.scale_max" in text


def test_preflight_names_an_unreachable_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    rj = RubricJudgeReward.from_params(endpoint={"base_url": url, "model": "m", "timeout_s": 2.0})
    with pytest.raises(LensforgeError, match=r"rubric_judge reward: cannot reach " + re.escape(url)) as e:
        rj.preflight()
    assert "\n" not in str(e.value)
    rj.close()


# ---------------------------------------------------------------------------------------------
# lensforge eval … --reward rubric_judge, end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_run")
    assert main(["fit", str(REPO / "recipes" / "tiny" / "smoke.yaml"), f"output_dir={root / 'run'}",
                 "trainer.max_steps=2", "sampling.every_n_steps=0", "sampling.num_prompts=0",
                 "trainer.progress_bar=false"]) == 0
    prompts = root / "prompts.jsonl"
    assert main(["data", "prompts", "synthetic:4", str(prompts), "--seed", "5"]) == 0
    return root / "run", prompts


def test_lensforge_eval_with_the_judge_end_to_end(tiny_run, tmp_path, capsys, monkeypatch):
    run, prompts = tiny_run
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    monkeypatch.setenv(KEY_VAR, SECRET)
    out, cache = tmp_path / "ev", tmp_path / "cache"
    with ChatServer(VerifierJudge(rows), api_key=SECRET) as server:
        args = ["eval", str(run), "--suite", str(prompts), "--reward", "rubric_judge",
                "--reward-arg", f"endpoint.base_url={server.base_url}", "--reward-arg", f"endpoint.model={server.model}",
                "--reward-arg", f"endpoint.api_key_env={KEY_VAR}", "--reward-arg", f"endpoint.cache_dir={cache}",
                "--reward-arg", "endpoint.backoff_s=0.01",
                "--num-prompts", "2", "--steps", "1", "--no-progress", "--out", str(out)]
        assert main(args) == 0
        printed = capsys.readouterr()
        n = server.num_calls
        assert server.handler_errors == []
    res = json.loads((out / "results.json").read_text())
    recs = res["images"]
    # run + untrained + blank + uniform noise, 2 prompts each; every image judged
    assert len(recs) == 8 and n == 8
    assert all(r["reward"] is not None and 0.0 <= r["reward"] <= 1.0 for r in recs)
    assert all(GID in r["items"] for r in recs)
    assert "reward stats:" in printed.out and "requests 8" in printed.out and "dropped_images 0" in printed.out
    # the judge's counters are kept: in results.json and in MLflow next to the target's scores
    assert res["settings"]["reward_stats"]["requests"] == 8
    from mlflow.tracking import MlflowClient

    line = next(ln for ln in printed.out.splitlines() if ln.startswith("MLflow: "))
    db, run_id = re.match(r"MLflow: .*?: (\S+) run (\S+)$", line).groups()
    metrics = MlflowClient(f"sqlite:///{db}").get_run(run_id).data.metrics
    assert any("/reward_stats/requests" in k and v == 8 for k, v in metrics.items()), sorted(metrics)
    # the key is in no output, log, MLflow store or cache file
    for folder in (out, run, cache):
        for p in folder.rglob("*"):
            if p.is_file():
                assert SECRET.encode() not in p.read_bytes(), p
    assert SECRET not in printed.out + printed.err


def test_lensforge_eval_with_an_unreachable_judge_exits_2_naming_the_url(tiny_run, capsys):
    run, prompts = tiny_run
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(["eval", str(run), "--suite", str(prompts), "--reward", "rubric_judge",
                 "--reward-arg", f"endpoint.base_url={url}", "--reward-arg", "endpoint.model=m",
                 "--num-prompts", "2", "--steps", "1", "--no-progress", "--out", "/nonexistent/never-written"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("lensforge: error:")]
    assert len(lines) == 1 and url in lines[0] and "cannot reach" in lines[0], err
