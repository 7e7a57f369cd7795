"""lensforge.llm against a real HTTP chat-completions server on 127.0.0.1 (lensforge.testing.chat_server).

Backoffs are tiny so every test takes well under a few seconds; waits that are the point of a test
(``Retry-After``, the rate limits) are measured from the server's arrival timestamps.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from lensforge.errors import LensforgeError
from lensforge.llm import (
    ChatRequest, EndpointConfig, EndpointError, LLMClient, image_part, parse_json_answer, user_message,
)
from lensforge.testing.chat_server import ChatServer, Reply

KEY_VAR = "LENSFORGE_TEST_LLM_KEY"
SECRET = "sk-test-5f1c9a0b7e3d4c2a8b6e"


def msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def config(server: ChatServer, **kw) -> EndpointConfig:
    base = dict(base_url=server.base_url, model=server.model, backoff_s=0.01, max_backoff_s=0.05,
                max_retries=3, timeout_s=5.0)
    base.update(kw)
    return EndpointConfig(**base)


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_success_preserves_order_and_reports_usage(server):
    server.handler = lambda call: Reply(content="echo " + call.last_user_text(), usage=(11, 3))
    with LLMClient(config(server, concurrency=4)) as llm:
        assert llm.preflight() == [server.model]
        results = llm.chat([msg(f"q{i}") for i in range(12)])
        st = llm.stats()
    assert [r.text for r in results] == [f"echo q{i}" for i in range(12)]
    assert [r.index for r in results] == list(range(12))
    assert all(r.ok and not r.cached and r.attempts == 1 and r.latency_s > 0 for r in results)
    assert results[0].usage.prompt_tokens == 11 and results[0].usage.completion_tokens == 3
    assert st["results"] == 12 and st["requests"] == 12 and st["failed"] == 0
    assert st["prompt_tokens"] == 12 * 11 and st["completion_tokens"] == 12 * 3 and st["total_tokens"] == 12 * 14
    assert 0 < st["latency_p50_s"] <= st["latency_p95_s"] <= st["latency_max_s"]
    # the request carried the config's model and temperature
    assert server.calls[0].model == server.model and server.calls[0].body["temperature"] == 0.0


def test_order_kept_when_answers_arrive_out_of_order(server):
    server.handler = lambda call: Reply(content=call.last_user_text(), delay_s=0.05 if call.last_user_text() == "0" else 0)
    with LLMClient(config(server, concurrency=3)) as llm:
        results = llm.chat([msg(str(i)) for i in range(5)])
    assert [r.text for r in results] == ["0", "1", "2", "3", "4"]


def test_logprobs_of_first_token_and_yes_probability(server):
    server.push(Reply(content="Yes", top_logprobs={"Yes": math.log(0.6), " yes": math.log(0.2), "No": math.log(0.1)}),
                Reply(content="Maybe", top_logprobs={"Maybe": -0.01}))
    with LLMClient(config(server, concurrency=1)) as llm:
        a, b = llm.chat([ChatRequest(messages=msg("is it red?"), top_logprobs=5, max_tokens=1),
                         ChatRequest(messages=msg("is it blue?"), top_logprobs=5, max_tokens=1)])
    assert server.calls[0].body["logprobs"] is True and server.calls[0].body["top_logprobs"] == 5
    assert server.calls[0].body["max_tokens"] == 1
    assert a.top_logprobs is not None and set(a.top_logprobs) == {"Yes", " yes", "No"}
    assert a.token_probability("yes") == pytest.approx(0.8)
    assert a.yes_probability() == pytest.approx(0.8 / 0.9)
    assert b.yes_probability() is None  # neither yes nor no: no score, not 0


def test_429_retry_after_is_honoured_then_succeeds(server):
    server.push(Reply.error(429, "slow down", retry_after=0.4), Reply(content="fine"))
    with LLMClient(config(server, max_retries=2)) as llm:
        (res,) = llm.chat([msg("hi")])
        st = llm.stats()
    assert res.ok and res.text == "fine" and res.attempts == 2
    gap = server.calls[1].time - server.calls[0].time
    assert gap >= 0.38, f"retried after {gap:.3f} s although Retry-After said 0.4 s (own backoff is 0.01 s)"
    assert st["rate_limited"] == 1 and st["retries"] == 1


def test_429_pauses_every_worker(server):
    # one 429 with Retry-After: requests sent by other workers after it wait too
    server.push(Reply.error(429, retry_after=0.3, delay_s=0.0))
    server.handler = lambda call: Reply(content="ok", delay_s=0.05)
    with LLMClient(config(server, concurrency=2)) as llm:
        results = llm.chat([msg(f"{i}") for i in range(4)])
    assert all(r.ok for r in results)
    t429 = server.calls[0].time
    later = [c.time - t429 for c in server.calls[2:]]
    assert all(d >= 0.28 for d in later), later


def test_5xx_until_retries_are_exhausted_names_the_url(server):
    server.handler = lambda call: Reply.error(503, "overloaded")
    with LLMClient(config(server, max_retries=2)) as llm:
        (res,) = llm.chat([msg("hi")])
        st = llm.stats()
    assert not res.ok and res.error.kind == "server" and res.error.status == 503 and res.attempts == 3
    assert server.num_calls == 3
    assert server.base_url in res.error.message and "503" in res.error.message and "3 attempts" in res.error.message
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1:\d+/v1.*503") as ei:
        res.raise_for_error()
    assert isinstance(ei.value, LensforgeError)
    assert st["failed"] == 1 and st["server_errors"] == 3 and st["retries"] == 2


def test_4xx_is_not_retried(server):
    server.handler = lambda call: Reply.error(400, "bad request: unknown field")
    with LLMClient(config(server)) as llm:
        (res,) = llm.chat([msg("hi")])
    assert server.num_calls == 1 and res.error.kind == "http" and "unknown field" in res.error.message


def test_timeout_is_retried_then_reported(server):
    server.push(Reply(content="late", delay_s=1.0), Reply(content="on time"))
    with LLMClient(config(server, timeout_s=0.25, max_retries=1)) as llm:
        (ok,) = llm.chat([msg("a")])
        server.handler = lambda call: Reply(content="late", delay_s=1.0)
        (bad,) = llm.chat([msg("b")])
        st = llm.stats()
    assert ok.ok and ok.text == "on time" and ok.attempts == 2
    assert bad.error.kind == "timeout" and bad.attempts == 2 and server.base_url in bad.error.message
    assert st["timeouts"] == 3


def _validate_answer(obj):
    if not isinstance(obj, dict) or obj.get("answer") not in ("yes", "no"):
        raise ValueError("'answer' must be \"yes\" or \"no\"")
    return obj["answer"]


def test_malformed_answer_is_reasked_then_succeeds(server):
    server.push(Reply(content="I think the answer is yes."), Reply(content='```json\n{"answer": "yes"}\n```'))
    with LLMClient(config(server)) as llm:
        (res,) = llm.chat_json([msg("Is it red? Answer as JSON.")], _validate_answer)
        st = llm.stats()
    assert res.ok and res.value == "yes" and res.reasks == 1 and res.attempts == 2
    second = server.calls[1].messages
    assert second[-2] == {"role": "assistant", "content": "I think the answer is yes."}
    assert second[-1]["role"] == "user" and "not valid JSON" in second[-1]["content"]
    assert st["reasks"] == 1 and st["failed"] == 0


def test_invalid_answer_exhausts_reasks_and_is_counted(server):
    server.handler = lambda call: Reply.json({"answer": "perhaps"})
    with LLMClient(config(server, json_reasks=2)) as llm:
        good_and_bad = llm.chat_json([msg("x")], _validate_answer)
        st = llm.stats()
    (res,) = good_and_bad
    assert not res.ok and res.error.kind == "invalid_answer" and res.reasks == 2 and server.num_calls == 3
    assert "must be" in res.error.message and server.base_url in res.error.message
    assert res.text == '{"answer": "perhaps"}'  # the last bad answer, for the record
    assert st["invalid_answers"] == 1 and st["failed"] == 1


def test_validator_bug_propagates(server):
    server.handler = lambda call: Reply.json({"a": 1})

    def buggy(obj):
        raise RuntimeError("bug in the caller's validator")

    with LLMClient(config(server)) as llm, pytest.raises(RuntimeError, match="bug in the caller"):
        llm.chat_json([msg("x")], buggy)


def test_cache_hit_makes_no_request_and_failures_are_not_cached(server, tmp_path):
    server.handler = lambda call: Reply.json({"answer": "yes"}, top_logprobs={"{": -0.1})
    cache = tmp_path / "cache"
    reqs = [ChatRequest(messages=[user_message("Is it red?", image_part(np.full((8, 8, 3), i, np.uint8)))],
                        top_logprobs=2) for i in range(3)]
    with LLMClient(config(server, cache_dir=str(cache))) as llm:
        first = llm.chat_json(reqs, _validate_answer)
    assert server.num_calls == 3 and not any(r.cached for r in first)
    with LLMClient(config(server, cache_dir=str(cache))) as llm:  # a resumed run
        again = llm.chat_json(reqs, _validate_answer)
        st = llm.stats()
    assert server.num_calls == 3, "a cached answer was paid for again"
    assert all(r.cached and r.ok and r.value == "yes" for r in again)
    assert [r.top_logprobs for r in again] == [r.top_logprobs for r in first]
    assert [r.usage for r in again] == [r.usage for r in first]
    assert st["cache_hits"] == 3 and st["requests"] == 0 and st["total_tokens"] == 0
    # a different image is a different request
    other = ChatRequest(messages=[user_message("Is it red?", image_part(np.full((8, 8, 3), 9, np.uint8)))],
                        top_logprobs=2)
    with LLMClient(config(server, cache_dir=str(cache))) as llm:
        llm.chat_json([other], _validate_answer)
    assert server.num_calls == 4
    # failures (HTTP and invalid answers) are not cached
    server.handler = lambda call: Reply.error(500, "down")
    with LLMClient(config(server, cache_dir=str(cache), max_retries=0)) as llm:
        (failed,) = llm.chat([msg("new question")])
    assert not failed.ok
    server.handler = lambda call: Reply(content="up again")
    with LLMClient(config(server, cache_dir=str(cache))) as llm:
        (res,) = llm.chat([msg("new question")])
    assert res.ok and not res.cached and res.text == "up again"
    n = server.num_calls
    server.handler = lambda call: Reply.json({"answer": "perhaps"})
    with LLMClient(config(server, cache_dir=str(cache), json_reasks=0)) as llm:
        (bad,) = llm.chat_json([msg("fresh")], _validate_answer)
    assert not bad.ok
    server.handler = lambda call: Reply.json({"answer": "no"})
    with LLMClient(config(server, cache_dir=str(cache), json_reasks=0)) as llm:
        (good,) = llm.chat_json([msg("fresh")], _validate_answer)
    assert good.ok and not good.cached and good.value == "no" and server.num_calls == n + 2


def test_cache_key_covers_model_url_and_params(server, tmp_path):
    server.handler = lambda call: Reply(content=f"t={call.body.get('temperature')}")
    cache = str(tmp_path / "c")
    with LLMClient(config(server, cache_dir=cache)) as llm:
        llm.chat([msg("same")])
        llm.chat([ChatRequest(messages=msg("same"), temperature=0.7)])
    with LLMClient(config(server, cache_dir=cache, model="other-model")) as llm:
        llm.chat([msg("same")])
    assert server.num_calls == 3
    with LLMClient(config(server, cache_dir=cache)) as llm:
        (a,) = llm.chat([msg("same")])
    assert a.cached and a.text == "t=0.0" and server.num_calls == 3


def test_requests_per_minute_limit(server):
    server.handler = lambda call: Reply(content="ok")
    rpm = 1200.0  # 20 per second, one second of burst
    with LLMClient(config(server, concurrency=8, rpm=rpm)) as llm:
        results = llm.chat([msg(str(i)) for i in range(30)])
        st = llm.stats()
    assert all(r.ok for r in results)
    times = sorted(c.time for c in server.calls)
    rate, burst = rpm / 60.0, max(1.0, rpm / 60.0)
    slack_s = 0.15  # arrival times carry thread-scheduling jitter on a busy 2-core machine
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = burst + rate * (times[j] - times[i] + slack_s) + 1
            assert j - i + 1 <= allowed, (i, j, times[j] - times[i])
    assert times[-1] - times[0] >= (30 - burst) / rate - 0.05
    assert st["rate_limit_wait_s"] > 0


def test_tokens_per_minute_limit(server):
    server.handler = lambda call: Reply(content="ok", usage=(150, 50))  # 200 tokens per call
    tpm = 60_000.0  # 1000 tokens per second
    with LLMClient(config(server, concurrency=4, tpm=tpm, max_tokens=50)) as llm:
        results = llm.chat([msg(str(i)) for i in range(12)])  # 2400 tokens
    assert all(r.ok for r in results)
    times = sorted(c.time for c in server.calls)
    # 2400 tokens at 1000/s with 1000 of burst: at least ~1.4 s minus the calls in flight before usage was known
    assert times[-1] - times[0] >= (2400 - 1000 - 4 * 200) / 1000.0 - 0.05


def test_api_key_never_leaks(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_VAR, SECRET)
    server.api_key = SECRET
    server.handler = lambda call: Reply.json({"answer": "yes"})
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache"
    cfg = config(server, api_key_env=KEY_VAR, cache_dir=str(cache))
    with LLMClient(cfg) as llm:
        llm.preflight()
        (res,) = llm.chat_json([msg("q")], _validate_answer)
        texts = [repr(llm), repr(cfg), json.dumps(llm.stats()), repr(res), cfg.describe()]
    assert res.ok and server.calls[-1].headers.get("authorization") == f"Bearer {SECRET}"
    # a server that rejects the key and quotes it back (as OpenAI's 401 does)
    server.api_key = "some-other-key"
    with LLMClient(cfg) as llm:
        with pytest.raises(EndpointError) as ei:
            llm.preflight()
        texts += [str(ei.value), repr(ei.value)]
        (rej,) = llm.chat([msg("q2")])
        texts += [rej.error.message, repr(rej)]
        with pytest.raises(EndpointError) as ei2:
            rej.raise_for_error()
        texts += [str(ei2.value)]
    assert f"${KEY_VAR}" in rej.error.message and rej.error.kind == "auth"
    # a 5xx message quoting the key is scrubbed too
    server.api_key = SECRET
    server.handler = lambda call: Reply.error(500, f"internal error while checking {SECRET}")
    with LLMClient(config(server, api_key_env=KEY_VAR, max_retries=0)) as llm:
        (err,) = llm.chat([msg("q3")])
    texts.append(err.error.message)
    assert "***" in err.error.message
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    texts += [p.read_text(encoding="utf-8") for p in cache.rglob("*") if p.is_file()]
    leaked = [t for t in texts if SECRET in t]
    assert leaked == [], leaked[:3]
    assert len(list(cache.rglob("*.json"))) == 1


def test_missing_key_variable_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv(KEY_VAR, raising=False)
    with pytest.raises(LensforgeError, match=f"environment variable {KEY_VAR} is not set.*{server.port}"):
        LLMClient(config(server, api_key_env=KEY_VAR))


def test_server_without_auth_needs_no_key(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.handler = lambda call: Reply(content="hi")
    with LLMClient(config(server)) as llm:
        llm.preflight()
        (r,) = llm.chat([msg("x")])
    assert r.ok


def test_preflight_unreachable_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with LLMClient(EndpointConfig(base_url=url, model="m")) as llm:
        with pytest.raises(EndpointError, match="cannot reach " + re.escape(url)):
            llm.preflight()
    with LLMClient(EndpointConfig(base_url=url, model="m", max_retries=1, backoff_s=0.01)) as llm:
        (r,) = llm.chat([msg("x")])
    assert r.error.kind == "connection" and url in r.error.message


def test_bad_config_is_reported():
    with pytest.raises(LensforgeError, match="base_url must start with http"):
        LLMClient(EndpointConfig(base_url="127.0.0.1:8000", model="m"))
    with pytest.raises(LensforgeError, match="NAME of an environment variable"):
        LLMClient(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="sk-abc def"))


def test_image_part_accepts_pil_array_and_tensor():
    import base64
    import io

    import torch
    from PIL import Image

    arr = (np.arange(4 * 6 * 3) % 256).astype(np.uint8).reshape(4, 6, 3)

    def decode(part):
        assert part["type"] == "image_url"
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))

    assert (decode(image_part(arr)) == arr).all()
    assert (decode(image_part(Image.fromarray(arr))) == arr).all()
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0  # [3,H,W] in [-1, 1]
    assert (decode(image_part(t)) == arr).all()
    assert image_part(t) == image_part(arr)  # same pixels, same bytes: same cache key
    assert image_part(arr, detail="low")["image_url"]["detail"] == "low"
    with pytest.raises(ValueError):
        image_part(arr.astype(np.float32))


def test_parse_json_answer_variants():
    assert parse_json_answer('{"a": 1}') == {"a": 1}
    assert parse_json_answer('Sure! Here it is:\n```json\n{"a": [1, 2]}\n```\nHope it helps.') == {"a": [1, 2]}
    assert parse_json_answer('The result is {"a": 2} as requested') == {"a": 2}
    for bad in ("", None, "no json here", "{broken"):
        with pytest.raises(ValueError):
            parse_json_answer(bad)


def test_stats_are_thread_safe_across_callers(server):
    server.handler = lambda call: Reply(content="ok", usage=(1, 1))
    with LLMClient(config(server, concurrency=4)) as llm:
        threads = [threading.Thread(target=llm.chat, args=([msg(str(i)) for i in range(10)],)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = llm.stats()
        llm.reset_stats()
        assert llm.stats()["results"] == 0
    assert st["results"] == 30 and st["prompt_tokens"] == 30


def test_importing_lensforge_llm_is_light():
    code = ("import sys, lensforge.llm, lensforge.data.prompt_sets, lensforge.data.rubric_writer\n"
            "print(sorted(m for m in ('torch', 'openai', 'numpy', 'PIL') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_endpoint_config_validates_inside_a_recipe():
    # a reward/reasoner plugin embeds EndpointConfig in its Config; recipe validation checks it
    from lensforge.recipe.plugin_config import validate_dataclass

    problems: list = []
    data = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "rpm": -1, "concurrency": 0, "api_key": "sk-x"}
    validate_dataclass(EndpointConfig, data, "judge", problems, origin=lambda key: "rl.yaml")
    text = "\n".join(str(p) for p in problems)
    assert "judge.api_key: unknown key (did you mean 'api_key_env'?)" in text
    assert "judge.rpm: must be >= 0" in text and "judge.concurrency: must be > 0" in text
    problems = []
    cfg = validate_dataclass(EndpointConfig, {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "K"}, "judge",
                             problems, origin=lambda key: "rl.yaml")
    assert problems == [] and cfg.api_key_env == "K" and cfg.rpm == 0
