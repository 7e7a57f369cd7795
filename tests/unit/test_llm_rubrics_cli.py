"""``lensforge data rubrics`` end to end against a scripted chat-completions server on 127.0.0.1.

No instruct LLM runs here, so the server's answers are scripted: it writes a rubric from the words of
the prompt it receives (one question per word after "a"/"an"), which is enough to check the command's
plumbing — request, strict JSON, re-asks, failures, cache, output format.
"""

from __future__ import annotations

import json
import socket

import pytest

from lensforge.cli import main
from lensforge.data.prompt_sets import load_prompt_set
from lensforge.data.rubric_writer import DEFAULT_CATEGORIES, make_validator, prompt_id
from lensforge.testing.chat_server import ChatServer, Reply

PROMPTS = ["a red cat on a blue chair", "a bowl of ramen with two eggs", "a neon sign that says OPEN",
           "a castle floating above clouds"]
CATEGORY = {"cat": "animals", "ramen": "food", "sign": "text_rendering", "castle": "fictional_worlds"}


def scripted_writer(call):
    prompt = call.first_user_text().removeprefix("Prompt: ").strip()
    assert "rubric" in call.messages[0]["content"]  # the system prompt went along
    cat = next(c for k, c in CATEGORY.items() if k in prompt)
    words = [w for w in prompt.split() if w not in ("a", "an", "of", "on", "with", "that", "says", "above")]
    return {"category": cat, "rubric": [{"question": f"Does the image show {w}?", "weight": 3 if i == 0 else 1}
                                        for i, w in enumerate(words)]}


@pytest.fixture
def prompts_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(PROMPTS[:2] + ["", PROMPTS[2], PROMPTS[0], PROMPTS[3]]) + "\n", encoding="utf-8")
    return p


def run(server_url, prompts, out, *extra):
    return main(["data", "rubrics", str(prompts), str(out), "--base-url", server_url, "--model", "test-model",
                 *extra])


def test_rubrics_end_to_end_with_reask_429_and_cache(tmp_path, prompts_file, capsys):
    out, cache = tmp_path / "rubrics.jsonl", tmp_path / "cache"
    with ChatServer(scripted_writer) as server:
        # the first request is rate-limited, the next answers prose instead of JSON (re-asked)
        server.push(Reply.error(429, retry_after=0.05), Reply(content="Here is a rubric: category animals."))
        rc = run(server.base_url, prompts_file, out, "--cache", str(cache), "--max-items", "6")
        printed = capsys.readouterr()
        assert rc == 0, printed.err
        assert server.num_calls == 4 + 2  # four prompts (the repeat kept once) + the 429 + the re-ask
        ps = load_prompt_set(out)
        assert [r.prompt for r in ps] == [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]]
        assert [r.id for r in ps] == [prompt_id(p) for p in PROMPTS]
        assert ps.category_counts() == {"animals": 1, "fictional_worlds": 1, "food": 1, "text_rendering": 1}
        cat = ps.by_id(prompt_id(PROMPTS[0]))
        assert [it.id for it in cat.rubric] == ["r1", "r2", "r3", "r4"]
        assert cat.rubric[0].question == "Does the image show red?" and cat.rubric[0].weight == 3
        assert cat.meta["rubric_model"] == "test-model"
        assert "wrote 4 rows" in printed.out and "1 repeated prompt" in printed.out
        # a re-run reads every answer from the cache
        before = out.read_text()
        assert run(server.base_url, prompts_file, out, "--cache", str(cache), "--max-items", "6",
                   "--no-progress") == 0
        assert server.num_calls == 6 and out.read_text() == before
        assert server.handler_errors == []
        assert "cache hits 4" in capsys.readouterr().out


def test_some_prompts_fail_exit_3_and_failed_list(tmp_path, prompts_file, capsys):
    out = tmp_path / "r.jsonl"

    def writer(call):
        if "ramen" in call.first_user_text():
            return {"category": "not-a-category", "rubric": []}  # invalid every time
        return scripted_writer(call)

    with ChatServer(writer) as server:
        rc = run(server.base_url, prompts_file, out, "--reasks", "1", "--no-progress")
        assert server.num_calls == 3 + 2
    printed = capsys.readouterr()
    assert rc == 3
    assert len(load_prompt_set(out)) == 3
    failed = out.with_name("r.jsonl.failed.txt")
    assert failed.read_text().splitlines() == [PROMPTS[1]]
    assert f"{prompts_file}:2:" in printed.err and "still invalid after 1 re-ask" in printed.err
    assert "'category' must be one of" in printed.err


def test_unreachable_endpoint_exits_2_naming_the_url(tmp_path, prompts_file, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r.jsonl"
    rc = run(f"http://127.0.0.1:{port}/v1", prompts_file, out)
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lensforge: error: cannot reach") and f"127.0.0.1:{port}/v1" in lines[0]
    assert "Traceback" not in err


def test_no_prompt_succeeds_exits_2_and_writes_nothing(tmp_path, prompts_file, capsys):
    out = tmp_path / "r.jsonl"
    with ChatServer(lambda call: Reply.error(500, "model crashed")) as server:
        rc = run(server.base_url, prompts_file, out, "--max-retries", "0", "--no-progress")
        url = server.base_url
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "no prompt got a rubric (4 failed" in err and url in err and "HTTP 500" in err


def test_api_key_from_environment_never_written(tmp_path, prompts_file, capsys, monkeypatch, caplog):
    secret = "sk-cli-test-0d9e8f7a6b5c"
    monkeypatch.setenv("LENSFORGE_TEST_RUBRIC_KEY", secret)
    out, cache = tmp_path / "r.jsonl", tmp_path / "cache"
    caplog.set_level("DEBUG")
    with ChatServer(scripted_writer, api_key=secret) as server:
        rc = run(server.base_url, prompts_file, out, "--api-key-env", "LENSFORGE_TEST_RUBRIC_KEY",
                 "--cache", str(cache), "--no-progress")
    printed = capsys.readouterr()
    assert rc == 0
    written = [out.read_text()] + [p.read_text() for p in cache.rglob("*") if p.is_file()]
    assert all(secret not in t for t in written + [printed.out, printed.err, caplog.text])
    monkeypatch.delenv("LENSFORGE_TEST_RUBRIC_KEY")
    rc = run("http://127.0.0.1:9/v1", prompts_file, tmp_path / "x.jsonl", "--api-key-env", "LENSFORGE_TEST_RUBRIC_KEY")
    assert rc == 2 and "environment variable LENSFORGE_TEST_RUBRIC_KEY is not set" in capsys.readouterr().err


def test_bad_input_exits_2(tmp_path, capsys):
    rc = run("http://127.0.0.1:9/v1", tmp_path / "missing.txt", tmp_path / "o.jsonl")
    assert rc == 2 and "missing.txt: no such file" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a cat\n")
    rc = run("http://127.0.0.1:9/v1", tmp_path / "p.txt", tmp_path / "o.jsonl", "--max-items", "0")
    assert rc == 2 and "--max-items must be >= 1" in capsys.readouterr().err
    rc = run("localhost:8000", tmp_path / "p.txt", tmp_path / "o.jsonl")
    assert rc == 2 and "base_url must start with http" in capsys.readouterr().err


def test_validator_rules():
    v = make_validator(DEFAULT_CATEGORIES, max_items=2)
    got = v({"category": "Fictional Worlds", "rubric": [{"question": " Is it  big? ", "weight": "2"}]})
    assert got["category"] == "fictional_worlds" and got["rubric"][0].question == "Is it big?"
    assert got["rubric"][0].weight == 2 and got["rubric"][0].id == "r1"
    bad = [
        ([], "JSON object"),
        ({"category": "cars", "rubric": [{"question": "q?", "weight": 1}]}, "must be one of"),
        ({"category": "food", "rubric": []}, "non-empty list"),
        ({"category": "food", "rubric": [{"question": "a?", "weight": 1}] * 3}, "at most 2"),
        ({"category": "food", "rubric": [{"question": "a?", "weight": 1}, {"question": "A?", "weight": 1}]}, "repeats"),
        ({"category": "food", "rubric": [{"question": "a?", "weight": 0}]}, "weight"),
        ({"category": "food", "rubric": [{"weight": 1}]}, "no 'question'"),
    ]
    for obj, text in bad:
        with pytest.raises(ValueError, match=text):
            v(obj)
    assert json.loads(json.dumps(DEFAULT_CATEGORIES)) and len(DEFAULT_CATEGORIES) == 10
