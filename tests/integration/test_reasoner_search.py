"""`lensforge reasoner search` end to end on CPU: a real DiT, the verifier, a real HTTP chat-completions server;
and the reasoner in front of `lensforge sample` / `lensforge eval`.

No instruct LLM can run here, so **the server's answers are scripted** (lensforge.testing.chat_server on
127.0.0.1, started by the test): as the *reasoner* it rewrites a short prompt with the synthetic world's
parser and keeps the position / background phrases only when the system prompt it was given asks for
them (so candidate system prompts really change the rewrites, the images and the scores); one prompt
gets an answer that is only a <think> block (an empty rewrite, counted); as the *proposer* it answers the
first request with prose (re-asked), then JSON whose entries include a number and an empty string
(malformed: counted and skipped) and a copy of the parent (a duplicate). Everything else is real: the
smoke run's DiT generates every image, the verifier scores it, the budget, the history, MLflow, resume.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from lensforge.cli import main
from lensforge.reasoners.search import PROPOSER_SYSTEM
from lensforge.testing.chat_server import ChatServer

from _procs import kill9_when

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "tiny" / "smoke.yaml"
TINY_WORLD = {"shapes": ["circle", "square", "triangle"], "colors": ["red", "green", "blue", "yellow"],
              "sizes": ["huge"], "backgrounds": ["flat"], "max_objects": 1, "dense_words": [10, 16]}
WORLD_ARGS = ["shapes=[circle,square,triangle]", "colors=[red,green,blue,yellow]", "sizes=[huge]", "backgrounds=[flat]",
              "max_objects=1"]
_FINAL = "<|channel|>analysis<|message|>The user wants one shape.<|end|><|start|>assistant<|channel|>final<|message|>{}<|return|>"


def _parent_of(text: str) -> str:
    return re.search(r"The system prompt to improve \(score [^)]*\):\n<system_prompt>\n(.*?)\n</system_prompt>",
                     text, re.S).group(1)


class ScriptedLLM:
    """The scripted reasoner + proposer (see the module docstring); deterministic in the request alone."""

    def __init__(self, empty_for: str):
        from lensforge.reasoners.prompts import load_system_prompt
        from lensforge.reasoners.synthetic_world import SyntheticWorldReasoner

        self.rewriter = SyntheticWorldReasoner(SyntheticWorldReasoner.Config(world=TINY_WORLD))
        self.empty_for = empty_for
        self.initial = load_system_prompt()

    def __call__(self, call):
        system = call.messages[0]["content"]
        if system == PROPOSER_SYSTEM:
            parent = _parent_of(call.first_user_text())
            if len(call.messages) == 2 and parent == self.initial:
                return "Here are some better system prompts: be more specific!"  # not JSON: re-asked
            return {"analysis": "The rewrites leave out facts the image model needs.",
                    "prompts": [parent + " Always state the background.", parent + " Always give each position.",
                                42, "", parent]}
        prompt = call.last_user_text()
        if prompt == self.empty_for:
            return "<think>a shape, maybe</think>"
        caption = self.rewriter.rewrite([prompt])[0].text
        if "background" not in system:
            caption = re.sub(r" on a plain [a-z -]+ background", "", caption)
        if "position" not in system:
            caption = re.sub(r" in the (upper|middle|lower|top|bottom|centre)[a-z ]*?(?= on|\.)", "", caption)
        return _FINAL.format(caption)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    # the run names a reasoner in its recipe (sampling.reasoner): `lensforge sample` uses it by default
    assert main(["fit", str(SMOKE), f"output_dir={root / 'run'}", "trainer.max_steps=2", "sampling.every_n_steps=0",
                 "sampling.num_prompts=0", "trainer.progress_bar=false", "sampling.reasoner.name=synthetic_world"]) == 0
    prompts = root / "short.jsonl"
    assert main(["data", "prompts", "synthetic:24", str(prompts), "--seed", "1", "--categories",
                 "single_object,color,shape,position,background", "--world", *WORLD_ARGS]) == 0
    from lensforge.data.prompt_sets import load_prompt_set
    from lensforge.reasoners.search import stratified

    dev, _ = load_prompt_set(prompts).split(0, 0.5)
    empty_for = stratified(dev.rows, 4)[1].prompt
    server = ChatServer(ScriptedLLM(empty_for), model="scripted").start()
    yield root, prompts, server, empty_for
    server.close()


def _recipe(root: Path, prompts: Path, server: ChatServer, name: str, **stage) -> Path:
    import yaml

    node = {"name": "reasoner_search", "prompts": str(prompts),
            "reasoner": {"name": "openai_compatible", "max_tokens": 512,
                         "endpoint": {"base_url": server.base_url, "model": "scripted", "max_retries": 0}},
            "proposer": {"base_url": server.base_url, "model": "scripted", "temperature": 1.0, "max_retries": 0},
            "dev_prompts": 4, "held_out_prompts": 3, "rounds": 2, "proposals_per_round": 2, "beam_size": 2,
            "worst_examples": 2, "max_images": 18, "max_llm_calls": 40}
    node.update(stage)
    doc = {"extends": [str(SMOKE)], "name": name, "output_dir": str(root / name), "init_from": str(root / "run"),
           "stage": node, "sampling": {"steps": 2}, "trainer": {"progress_bar": False}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "search" / "history.jsonl").read_text().splitlines()]


def _candidates(events: list[dict]) -> list[tuple]:
    return [(e["id"], e["parent"], e["system_prompt"], e["status"], e["dev_score"]) for e in events
            if e["event"] == "candidate"]


def test_search_end_to_end_with_budget(setup, capsys):
    root, prompts, server, empty_for = setup
    recipe = _recipe(root, prompts, server, "full")
    calls_before = server.num_calls
    assert main(["reasoner", "search", str(recipe), "--no-progress"]) == 0
    text = capsys.readouterr().out
    out = root / "full"
    summary = json.loads((out / "summary.json").read_text())
    events = _history(out)
    cands = [e for e in events if e["event"] == "candidate"]

    # the budget: initial + two candidates fit; the next one would eat the held-out report's reserve
    assert summary["stop_reason"] == "max_images"
    assert [c["id"] for c in cands] == ["c0000", "c0001", "c0002"]
    assert summary["images"] <= 18 and summary["llm_calls"] <= 40
    assert summary["images"] == sum(e.get("images", 0) for e in events)

    # proposals parsed: the prose answer was re-asked, 42 and "" counted as malformed and skipped, the copy of the parent a duplicate
    props = [e for e in events if e["event"] == "proposals"]
    assert props[0]["reasks"] == 1 and props[0]["parent"] == "c0000"
    assert [m["why"] for m in props[0]["malformed"]] == ["not a string (int)", "empty"]
    assert props[0]["duplicates"] == 1 and len(props[0]["candidates"]) == 2 and props[0]["surplus"] == 0
    assert all(len(p["candidates"]) <= p["asked"] for p in props)  # never more than was asked for
    assert summary["proposals_malformed"] == 2 * len(props) and "malformed" in text

    # candidates scored with real DiT images and the verifier, under their own system prompts
    initial = cands[0]
    assert initial["origin"] == "initial" and initial["parent"] is None
    assert "Always state the background." in cands[1]["system_prompt"] and cands[1]["parent"] == "c0000"
    assert cands[1]["lineage"] == ["c0000", "c0001"]
    for c in cands:
        assert c["status"] == "scored" and c["images"] == 4 and c["scored_images"] == 4
        assert all(0.0 <= ex["reward"] <= 1.0 for ex in c["examples"])
        assert c["dev_score"] == pytest.approx(sum(ex["reward"] for ex in c["examples"]) / 4)
    seen_systems = {call.messages[0]["content"] for call in server.calls[calls_before:]}
    assert {c["system_prompt"] for c in cands} <= seen_systems
    # the rewrites the DiT got: without "background" in the system prompt the phrase was left out
    ex0 = {ex["id"]: ex for ex in initial["examples"]}
    ex1 = {ex["id"]: ex for ex in cands[1]["examples"]}
    some = next(i for i in ex0 if ex0[i]["rewrite_ok"])
    assert "background" not in ex0[some]["rewrite"] and "background" in ex1[some]["rewrite"]
    # the empty rewrite (a <think> block only) was counted and fell back to the prompt
    assert initial["rewrite_failures"] == 1
    bad = next(ex for ex in initial["examples"] if not ex["rewrite_ok"])
    assert bad["prompt"] == empty_for and bad["rewrite"] == empty_for and bad["rewrite_error"] == "empty rewrite"

    # the best kept: the highest dev score (ties: the earliest), written as a system-prompt file
    best = sorted(cands, key=lambda c: (-c["dev_score"], c["id"]))[0]
    assert summary["best"] == best["id"]
    best_file = Path(summary["best_system_prompt_file"])
    assert best_file.read_text().strip() == best["system_prompt"]
    # ... that the reasoner plugins accept
    from lensforge.reasoners.use import build_reasoner

    r = build_reasoner("openai_compatible", [f"endpoint.base_url={server.base_url}", "endpoint.model=scripted"],
                       system_prompt_file=str(best_file))
    assert r.system_prompt == best["system_prompt"]
    r.close()

    # held-out report: initial and best on the held-out split
    held = [e for e in events if e["event"] == "held_out"]
    assert {h["candidate"] for h in held} == {"c0000", best["id"]}
    assert all(h["images"] == 3 for h in held)
    assert summary["held_out"]["initial"] is not None and summary["held_out"]["best"] is not None
    assert "held-out (3 prompts x 1 seed(s))" in text

    # MLflow: a metric per candidate, each candidate's record (lineage) and the history as artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run_id = summary["mlflow_run_id"]
    assert len(client.get_metric_history(run_id, "search/candidate_dev_score")) == 3
    arts = {a.path for a in client.list_artifacts(run_id, "search/candidates")}
    assert arts == {f"search/candidates/c000{i}.json" for i in range(3)}
    assert "search/history.jsonl" in {a.path for a in client.list_artifacts(run_id, "search")}

    # running it again resumes a finished search: no new images, the same result
    n = server.num_calls
    assert main(["reasoner", "search", str(recipe), "--no-progress"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["best"] == summary["best"] and again["images"] == summary["images"] and server.num_calls == n


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_same_search(setup, tmp_path):
    root, prompts, server, _ = setup
    ref_recipe = _recipe(root, prompts, server, "ref", rounds=1, max_images=0, max_llm_calls=0)
    assert main(["reasoner", "search", str(ref_recipe), "--no-progress"]) == 0
    reference = _history(root / "ref")

    recipe = _recipe(root, prompts, server, "killed", rounds=1, max_images=0, max_llm_calls=0)
    hist = root / "killed" / "search" / "history.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    kill9_when([sys.executable, "-m", "lensforge.cli", "reasoner", "search", str(recipe), "--no-progress"],
               lambda: hist.is_file() and sum('"event": "candidate"' in ln for ln in hist.read_text().splitlines()) >= 2,
               env=env, timeout=240, cwd=str(REPO))
    before = _history(root / "killed")
    assert sum(e["event"] == "candidate" for e in before) == 2 and not any(e["event"] == "end" for e in before)
    assert main(["reasoner", "search", str(recipe), "--no-progress"]) == 0
    after = _history(root / "killed")
    assert any(e["event"] == "resume" for e in after)
    assert _candidates(after) == _candidates(reference)
    assert [e["event"] for e in after if e["event"] == "proposals"] == ["proposals"]  # not asked again
    s_ref = json.loads((root / "ref" / "summary.json").read_text())
    s = json.loads((root / "killed" / "summary.json").read_text())
    for k in ("best", "best_dev_score", "held_out", "images", "candidates"):
        assert s[k] == s_ref[k], k
    # the same MLflow run continued
    assert s["mlflow_run_id"] == (root / "killed" / "mlflow_run_id").read_text().strip()


def test_bad_input_exits_2_with_one_clear_message(setup, tmp_path, capsys):
    root, prompts, server, _ = setup
    # a missing system-prompt file
    r = _recipe(root, prompts, server, "bad1", initial_system_prompt=str(tmp_path / "nope.txt"))
    assert main(["reasoner", "search", str(r)]) == 2
    err = capsys.readouterr().err
    assert "nope.txt' does not exist" in err and "Traceback" not in err
    # an unreachable endpoint (nothing listens on the port of a closed server)
    dead = ChatServer().start()
    url = dead.base_url
    dead.close()
    r = _recipe(root, prompts, server, "bad2", proposer={"base_url": url, "model": "m", "max_retries": 0, "timeout_s": 5})
    assert main(["reasoner", "search", str(r), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach {url}" in err and "Traceback" not in err
    # a reasoner naming a text encoder it cannot share (the model's is hf_encoder)
    r = _recipe(root, prompts, server, "bad3", reasoner={"name": "transformers_lm", "share_text_encoder": True})
    assert main(["reasoner", "search", str(r)]) == 2
    assert "can share weights only with the gpt_oss text encoder" in capsys.readouterr().err
    # a reasoner without a system prompt: nothing to search
    r = _recipe(root, prompts, server, "bad4", reasoner={"name": "synthetic_world"})
    assert main(["validate", str(r)]) == 2
    assert "does not use a system prompt" in capsys.readouterr().err
    # a budget that cannot even pay for the initial prompt and the held-out report
    r = _recipe(root, prompts, server, "bad5", max_images=5)
    assert main(["reasoner", "search", str(r)]) == 2
    assert "max_images 5 cannot cover" in capsys.readouterr().err
    # not a search recipe
    assert main(["reasoner", "search", str(SMOKE)]) == 2
    assert "stage is 'pretrain'" in capsys.readouterr().err


def test_sample_and_eval_store_the_rewritten_prompt(setup, tmp_path, capsys):
    root, prompts, server, _ = setup
    run = str(root / "run")
    # sample: the recipe's sampling.reasoner (synthetic_world, the run's training world) rewrites by default
    assert main(["sample", run, "a photo of a blue circle.", "a dog", "--steps", "1", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert "1 with words it could not parse" in capsys.readouterr().out
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    first, second = meta["images"]
    assert first["prompt"] == "a photo of a blue circle." and first["model_prompt"].startswith("A huge blue circle in the ")
    assert second["model_prompt"].endswith("Also mentioned: dog.")
    assert meta["reasoner"]["plugin"] == "synthetic_world" and meta["reasoner"]["rewrites"][1]["notes"]["unparsed"] == ["dog"]
    assert main(["sample", run, "blue circle", "--steps", "1", "--out", str(tmp_path / "s2"), "--no-progress",
                 "--no-reasoner"]) == 0
    assert "model_prompt" not in json.loads((tmp_path / "s2" / "samples.json").read_text())["images"][0]
    # an LLM reasoner over HTTP, chosen on the command line
    assert main(["sample", run, "blue circle", "--steps", "1", "--out", str(tmp_path / "s3"), "--no-progress",
                 "--reasoner", "openai_compatible", "--reasoner-arg", f"endpoint.base_url={server.base_url}",
                 "--reasoner-arg", "endpoint.model=scripted"]) == 0
    img = json.loads((tmp_path / "s3" / "samples.json").read_text())["images"][0]
    assert img["model_prompt"].startswith("A huge blue circle")

    # eval with and without the reasoner on the same prompts and seeds
    out_plain, out_rw = tmp_path / "plain", tmp_path / "rw"
    common = ["--suite", str(prompts), "--steps", "1", "--num-prompts", "4", "--no-progress", "--no-baseline"]
    assert main(["eval", run, *common, "--out", str(out_plain)]) == 0
    assert main(["eval", run, *common, "--out", str(out_rw), "--reasoner", "synthetic_world"]) == 0
    text = capsys.readouterr().out
    assert "prompts rewritten by synthetic_world" in text
    plain = json.loads((out_plain / "results.json").read_text())
    rw = json.loads((out_rw / "results.json").read_text())
    assert [r["prompt"] for r in plain["images"]] == [r["prompt"] for r in rw["images"]]
    assert all("model_prompt" not in r for r in plain["images"])
    assert all(r["model_prompt"].startswith("A huge ") for r in rw["images"])
    assert rw["settings"]["reasoner"]["plugin"] == "synthetic_world" and rw["settings"]["reasoner"]["failed"] == 0
    rewrites = json.loads((out_rw / "rewrites.json").read_text())
    assert {r["prompt"] for r in rewrites} == {r["prompt"] for r in rw["images"]}
    # ... and in MLflow (the run's own MLflow run receives the evaluation)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'run' / 'mlflow.db'}")
    run_id = (root / "run" / "mlflow_run_id").read_text().strip()
    logged = {a.path for a in client.list_artifacts(run_id, "eval/short")}  # eval/<suite>, the prompt file's stem
    assert {"eval/short/rewrites.json", "eval/short/results.json"} <= logged
    # bad input: reasoner arguments without a reasoner, an unreachable endpoint
    assert main(["eval", run, *common, "--out", str(tmp_path / "x"), "--reasoner-arg", "seed=1"]) == 2
    assert "need a reasoner" in capsys.readouterr().err
    dead = ChatServer().start()
    url = dead.base_url
    dead.close()
    assert main(["eval", run, *common, "--out", str(tmp_path / "y"), "--reasoner", "openai_compatible",
                 "--reasoner-arg", f"endpoint.base_url={url}", "--reasoner-arg", "endpoint.model=m"]) == 2
    assert f"cannot reach {url}" in capsys.readouterr().err


def test_failing_endpoints_are_counted_and_reported_not_crashing(setup, capsys):
    from lensforge.testing.chat_server import Reply

    root, prompts, server, empty_for = setup
    scripted = ScriptedLLM(empty_for)
    # the proposer answers HTTP 500 to everything: the round gets no proposals, the search ends cleanly
    with ChatServer(lambda call: Reply.error(500, "proposer down") if call.messages[0]["content"] == PROPOSER_SYSTEM
                    else scripted(call), model="scripted") as flaky:
        r = _recipe(root, prompts, flaky, "flaky", rounds=1, max_images=0, max_llm_calls=0)
        assert main(["reasoner", "search", str(r), "--no-progress"]) == 0
        s = json.loads((root / "flaky" / "summary.json").read_text())
        assert s["stop_reason"] == "no_proposals" and s["proposer_failed_requests"] == 1 and s["candidates"] == 1
        assert s["held_out"]["initial"] is not None and s["best"] == "c0000"
        assert "1 failed" in capsys.readouterr().out
    # every rewrite fails: nothing can be scored -> exit 3, outputs written, the reason recorded
    with ChatServer(lambda call: Reply.error(500, "overloaded"), model="scripted") as down:
        r = _recipe(root, prompts, down, "down")
        assert main(["reasoner", "search", str(r), "--no-progress"]) == 3
        s = json.loads((root / "down" / "summary.json").read_text())
        assert s["stop_reason"] == "initial_failed" and s["images"] == 0
        [c] = [e for e in _history(root / "down") if e["event"] == "candidate"]
        assert c["status"] == "failed" and c["rewrite_failures"] == 4 and "overloaded" in c["reason"]
        assert (root / "down" / "best_system_prompt.txt").is_file()
    capsys.readouterr()


MAIN_RUN = REPO / "runs" / "tiny_pretrain"


@pytest.mark.slow
@pytest.mark.skipif(not (MAIN_RUN / "summary.json").is_file(), reason="needs the main job's run (lensforge fit recipes/tiny/pretrain.yaml)")
def test_search_on_the_main_jobs_model_keeps_the_best(setup, tmp_path, capsys):
    """The same scripted endpoint on the trained tiny model: rewrites with and without the background / position
    phrases give different images and scores, and the search keeps the best (numbers in docs/reasoner.md)."""
    root, prompts, server, _ = setup
    big = tmp_path / "short.jsonl"
    assert main(["data", "prompts", "synthetic:64", str(big), "--seed", "2", "--categories",
                 "single_object,color,shape,size,position,background", "--world", *WORLD_ARGS]) == 0
    r = _recipe(tmp_path, big, server, "real", dev_prompts=12, held_out_prompts=24, rounds=2, proposals_per_round=2,
                max_images=0, max_llm_calls=0)
    doc = __import__("yaml").safe_load(r.read_text())
    doc["init_from"] = str(MAIN_RUN)
    doc["extends"] = [str(REPO / "recipes" / "tiny" / "pretrain.yaml")]
    doc["sampling"] = {"steps": 20}
    r.write_text(__import__("yaml").safe_dump(doc))
    assert main(["reasoner", "search", str(r), "--no-progress"]) == 0
    print(capsys.readouterr().out)
    cands = [e for e in _history(tmp_path / "real") if e["event"] == "candidate" and e["status"] == "scored"]
    scores = [c["dev_score"] for c in cands]
    assert len(set(scores)) > 1, scores
    s = json.loads((tmp_path / "real" / "summary.json").read_text())
    assert s["best_dev_score"] == max(scores) and s["held_out"]["best"] is not None
