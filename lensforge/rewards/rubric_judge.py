"""The ``rubric_judge`` reward: a vision-language judge over an OpenAI-compatible chat-completions API.

Each image is judged against its prompt-set row's rubric — the row's own yes/no items plus, by default,
Lens's global structural-integrity item (:data:`~lensforge.data.prompt_sets.GLOBAL_STRUCTURAL_ITEM`) —
by any server that speaks chat completions with image inputs (vLLM, SGLang, Ollama, llama.cpp,
OpenAI, Azure). All HTTP goes through :class:`lensforge.llm.LLMClient` (concurrency, requests- and
tokens-per-minute limits, retries with backoff and jitter honouring ``Retry-After``, strict JSON with
re-asks, the on-disk response cache, token and latency counters, the API key read from an environment
variable and never written anywhere). Pointing it at a server: ``lensforge/llm/README.md`` ("The
rubric judge").

Modes (``mode``)
----------------
``yes_no`` (default)
    One request per image: the image as a PNG data URL and every item in one message
    (:data:`YES_NO_PROMPT`); the answer must be the JSON object ``{item_id: "yes" | "no"}`` with every
    item id (JSON ``true``/``false`` are accepted too; extra keys are ignored). Item score: yes = 1, no = 0.
``scale``
    Like ``yes_no`` (:data:`SCALE_PROMPT`), the answer ``{item_id: 1..N}`` (``N = scale_max``; a number
    in range, also as a numeric string); item score ``(s − 1) / (N − 1)``.
``logprob``
    One request per (image, item) (:data:`LOGPROB_PROMPT`) with ``max_tokens = 1`` and
    ``top_logprobs``; item score = P(yes) / (P(yes) + P(no)) over the first token's alternatives
    (case and leading-space variants summed: :meth:`lensforge.llm.ChatResult.yes_probability`). Needs
    a server that returns log-probabilities (vLLM, SGLang, llama.cpp, OpenAI's non-reasoning models;
    not Ollama's OpenAI endpoint nor OpenAI's reasoning models). **Both** ways a server can lack them
    are handled: :meth:`RubricJudgeReward.preflight` sends one short text probe and raises a
    :class:`~lensforge.errors.LensforgeError` naming the URL when the answer carries no
    log-probabilities (``logprob_probe: false`` skips it); and an answer without them at scoring time
    (or without "yes"/"no" among the alternatives) drops that image with the reason, like any failed
    judgement. There is no re-ask in this mode: a one-token answer at temperature 0 would not change.

Reward = the weighted mean of the item scores, ``Σ w_i s_i / Σ w_i``: the row items' ``weight``
(``item_weights: false`` = all 1) and ``global_weight`` for the global item. The output's ``items``
hold every item's score (the global item under its id, ``global_structural_integrity``).

Failures: a request that fails for good (retries exhausted on 429/5xx/timeouts, a key rejected) or an
answer still malformed after the client's re-asks, an image that cannot be encoded, a row that cannot
be judged — the image gets reward ``NaN`` and the reason in ``failures`` (the RL stage drops it from its
group and counts it; evaluation reports it). Never a silent 0 — the flaw of Flow-Factory's judges
(research note §3.3), which return 0.0 after failures and so bias a group's advantages — and never an
exception for one bad image. An image is scored only when **every** item was judged (a reward over a
subset of the items would mean something else).

What is Lens's and what is ours
-------------------------------
From Lens (research note ``post_training.md`` §1.1): the reward is a VLM judge (Lens used
GPT-4.1-mini) reading the image and the prompt's rubric — up to ten prompt-specific yes/no items
written for each prompt — plus **one global structural-integrity item** appended to every rubric.
Not known from any source read, so **our choices**: the wording of the judge prompts below and of the
global item; sending the prompt text as context (``include_prompt``); one request per image with a
JSON object answer; yes = 1 / no = 0; the weighted mean (item weights, ``global_weight``) as the
aggregation (RubricRL, Lens's likely precursor, mentions prompt-adaptive weighting); the ``scale`` and
``logprob`` modes (the latter after Flow-Factory's ``vllm_evaluate`` judge, normalised over yes + no
like its ``sigmoid(logp(yes) − logp(no))``); dropping instead of scoring 0.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from lensforge.data.prompt_sets import GLOBAL_STRUCTURAL_ITEM
from lensforge.errors import LensforgeError
from lensforge.interfaces.reward import Reward, RewardOutput
from lensforge.llm import ChatRequest, EndpointConfig, LLMClient, image_part, user_message
from lensforge.recipe.plugin_config import PositiveFloat, PositiveInt

log = logging.getLogger("lensforge.rewards.rubric_judge")

#: The system message of every judge request (all modes).
JUDGE_SYSTEM_PROMPT = (
    "You are a meticulous, impartial judge of AI-generated images. You check one image against a rubric: "
    "a list of items, each a question about the image. Judge only what is actually visible in the image, "
    "never what the prompt asked for but the image does not show; when an item's subject is missing, the "
    "item is not satisfied. Be strict: an item is satisfied only when it clearly holds."
)

#: Context line naming the generation prompt (``include_prompt: true``); ``{prompt}`` is the row's prompt.
PROMPT_CONTEXT = 'The image was generated for this prompt: "{prompt}"\n\n'

#: ``yes_no`` mode, one request per image. ``{context}``: :data:`PROMPT_CONTEXT` or empty; ``{items}``:
#: one ``- ID: QUESTION`` line per item; ``{keys}``: the item ids as JSON strings, comma-separated.
YES_NO_PROMPT = (
    "{context}Check the image against each rubric item:\n{items}\n\n"
    'Answer with only a JSON object that maps every item id to "yes" (the item clearly holds in the image) '
    'or "no" (it does not, or you cannot tell). The keys must be exactly: {keys}. No other text.'
)

#: ``scale`` mode, one request per image; as :data:`YES_NO_PROMPT`, ``{n}`` = ``scale_max``.
SCALE_PROMPT = (
    "{context}Rate how well the image satisfies each rubric item, on an integer scale from 1 (not at all) "
    "to {n} (fully and clearly):\n{items}\n\n"
    "Answer with only a JSON object that maps every item id to an integer from 1 to {n}. "
    "The keys must be exactly: {keys}. No other text."
)

#: ``logprob`` mode, one request per (image, item); ``{question}`` is the item's question.
LOGPROB_PROMPT = "{context}Question about the image: {question}\nAnswer with a single word: yes or no."

#: Text-only request :meth:`RubricJudgeReward.preflight` sends in ``logprob`` mode to see that the
#: server returns log-probabilities.
LOGPROB_PROBE = "Answer with a single word, yes or no: is two plus two equal to four?"


@dataclass(frozen=True)
class _Item:
    id: str
    question: str
    weight: float


def _nest_dotted(params: dict[str, Any]) -> dict[str, Any]:
    """``{"endpoint.base_url": u}`` → ``{"endpoint": {"base_url": u}}`` (for ``--reward-arg a.b=v``)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            cur = node.get(p)
            if cur is None:
                cur = node[p] = {}
            elif not isinstance(cur, dict):
                raise LensforgeError(f"rubric_judge: '{key}' sets a field inside '{p}', which is not a mapping")
            node = cur
        last = parts[-1]
        if isinstance(node.get(last), dict) and isinstance(value, dict):
            node[last] = {**value, **node[last]}
        else:
            node[last] = value
    return out


def _as_dict(row: Any) -> dict[str, Any]:
    if isinstance(row, dict):
        return row
    to_dict = getattr(row, "to_dict", None)
    return to_dict() if callable(to_dict) else {}


def _yes_no(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().strip(".!").strip().lower()
        if v in ("yes", "no"):
            return v == "yes"
    return None


def _scale_value(value: Any, n: int) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value) and 1 <= value <= n:
        return float(value)
    return None


class _AnswerValidator:
    """Checks a JSON answer of the ``yes_no`` / ``scale`` modes; returns ``{"scores", "answers"}``."""

    def __init__(self, ids: list[str], mode: str, scale_max: int):
        self.ids, self.mode, self.n = ids, mode, scale_max

    def __call__(self, obj: Any) -> dict[str, Any]:
        want = '"yes" or "no"' if self.mode == "yes_no" else f"an integer from 1 to {self.n}"
        if not isinstance(obj, dict):
            raise ValueError(f"the answer must be a JSON object mapping each item id to {want}, "
                             f"got a JSON {type(obj).__name__}")
        got = {str(k).strip(): v for k, v in obj.items()}
        missing = [i for i in self.ids if i not in got]
        scores: dict[str, float] = {}
        answers: dict[str, Any] = {}
        bad = []
        for i in self.ids:
            if i not in got:
                continue
            if self.mode == "yes_no":
                yn = _yes_no(got[i])
                if yn is None:
                    bad.append(f"{json.dumps(i)}: {json.dumps(got[i])[:40]}")
                    continue
                scores[i], answers[i] = (1.0 if yn else 0.0), ("yes" if yn else "no")
            else:
                s = _scale_value(got[i], self.n)
                if s is None:
                    bad.append(f"{json.dumps(i)}: {json.dumps(got[i])[:40]}")
                    continue
                scores[i], answers[i] = (s - 1.0) / (self.n - 1.0), s
        problems = []
        if missing:
            problems.append("missing item ids " + ", ".join(json.dumps(i) for i in missing))
        if bad:
            problems.append(f"every value must be {want}, got " + "; ".join(bad))
        if problems:
            raise ValueError("; ".join(problems))
        return {"scores": scores, "answers": answers}


class RubricJudgeReward(Reward):
    """A VLM judge over an OpenAI-compatible chat-completions API, rubric item by item (see the module docstring)."""

    @dataclass(kw_only=True)
    class Config:
        endpoint: EndpointConfig
        """The judge's endpoint: base_url, model, api_key_env (the variable's NAME), concurrency, rpm, tpm, retries, cache_dir."""
        mode: Literal["yes_no", "scale", "logprob"] = "yes_no"
        """yes_no: a JSON yes/no per item; scale: a JSON 1..scale_max per item; logprob: P(yes) per item from top_logprobs."""
        scale_max: PositiveInt = 5
        """Top of the 1..N scale of mode scale (at least 2); item score (s - 1) / (N - 1)."""
        global_item: bool = True
        """Append Lens's global structural-integrity item to every row's rubric."""
        global_weight: PositiveFloat = 1.0
        """Weight of the global item in the weighted mean of the item scores."""
        item_weights: bool = True
        """Use each rubric item's weight (False: every prompt-specific item weighs 1)."""
        include_prompt: bool = True
        """Show the judge the generation prompt as context (the rubric items are always shown)."""
        top_logprobs: PositiveInt = 20
        """Mode logprob: alternatives asked for the answer's first token (OpenAI allows at most 20)."""
        logprob_probe: bool = True
        """Mode logprob: preflight sends one short text request and fails when no log-probabilities come back."""
        json_mode: bool = False
        """Send response_format {type: json_object} (OpenAI, vLLM, SGLang support it) with the yes_no / scale requests."""
        image_detail: Literal["auto", "low", "high"] | None = None
        """OpenAI's image detail level for the image part (None = not sent; other servers ignore it)."""
        progress: bool = False
        """Show a progress bar per scored batch on stderr."""

    @classmethod
    def from_params(cls, **params: Any) -> "RubricJudgeReward":
        """Build from keyword parameters; dotted keys (``endpoint.base_url=…``, as ``--reward-arg`` passes them) nest."""
        return super().from_params(**_nest_dotted(params))

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out = [("endpoint", p) for p in config.endpoint.problems()]
        if config.mode == "scale" and config.scale_max < 2:
            out.append(("scale_max", f"must be >= 2 for mode scale, got {config.scale_max}"))
        return out

    def __init__(self, config: Config):
        super().__init__(config)
        problems = self.check_config(config)
        if problems:
            raise LensforgeError("rubric_judge reward: " + "; ".join(f"{k}: {m}" for k, m in problems))
        self.client = LLMClient(config.endpoint)  # a missing key variable is a LensforgeError naming it
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("images", "scored_images", "dropped_images", "items_judged",
                                      "logprob_missing"), 0)
        log.info("rubric_judge: mode %s, %s", config.mode, config.endpoint.describe())

    # -- rows --------------------------------------------------------------------------------------

    def _row_problems(self, row: dict[str, Any]) -> list[str]:
        rid = row.get("id")
        out = []
        if self.config.include_prompt and not (isinstance(row.get("prompt"), str) and row["prompt"].strip()):
            out.append(f"row {rid}: no 'prompt' text to show the judge (or set include_prompt: false)")
        rubric = row.get("rubric")
        if not isinstance(rubric, list) or not rubric:
            out.append(f"row {rid}: empty rubric (the judge needs at least one rubric item)")
            return out
        seen = set()
        for i, it in enumerate(rubric):
            where = f"row {rid}: rubric[{i}]"
            if not isinstance(it, dict):
                out.append(f"{where} is not an object")
                continue
            iid, q, w = it.get("id"), it.get("question"), it.get("weight", 1.0)
            if not (isinstance(iid, str) and iid.strip()):
                out.append(f"{where} has no 'id'")
            elif iid.strip() in seen:
                out.append(f"{where}: duplicate item id {iid!r}")
            else:
                seen.add(iid.strip())
            if not (isinstance(q, str) and q.strip()):
                out.append(f"{where} has no 'question' for the judge")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                out.append(f"{where}: 'weight' must be a number > 0, got {w!r}")
        return out

    def check_rows(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        return [p for r in rows for p in self._row_problems(_as_dict(r))]

    def _items(self, row: dict[str, Any]) -> list[_Item]:
        cfg = self.config
        items = [_Item(id=it["id"].strip(), question=" ".join(it["question"].split()),
                       weight=float(it.get("weight", 1.0)) if cfg.item_weights else 1.0) for it in row["rubric"]]
        g = GLOBAL_STRUCTURAL_ITEM
        if cfg.global_item and all(it.id != g.id for it in items):
            items.append(_Item(id=g.id, question=g.question, weight=float(cfg.global_weight)))
        return items

    # -- messages ------------------------------------------------------------------------------------

    def _context(self, row: dict[str, Any]) -> str:
        if not self.config.include_prompt:
            return ""
        return PROMPT_CONTEXT.format(prompt=" ".join(str(row["prompt"]).split()))

    def _messages(self, image: dict[str, Any], text: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, user_message(image, text)]

    def rubric_text(self, row: dict[str, Any]) -> str:
        """The text of a ``yes_no`` / ``scale`` request for ``row`` (the image part goes before it)."""
        items = self._items(row)
        lines = "\n".join(f"- {it.id}: {it.question}" for it in items)
        keys = ", ".join(json.dumps(it.id) for it in items)
        template = YES_NO_PROMPT if self.config.mode == "yes_no" else SCALE_PROMPT
        return template.format(context=self._context(row), items=lines, keys=keys, n=self.config.scale_max)

    def question_text(self, row: dict[str, Any], item: _Item) -> str:
        """The text of a ``logprob`` request for one item."""
        return LOGPROB_PROMPT.format(context=self._context(row), question=item.question)

    def _encode(self, images: Sequence[Any]) -> list[tuple[dict[str, Any] | None, str | None]]:
        """PNG data-URL parts, encoded on a few threads (Pillow's encoder releases the GIL)."""
        detail = self.config.image_detail

        def one(img: Any) -> tuple[dict[str, Any] | None, str | None]:
            try:
                return image_part(img, detail=detail), None
            except (TypeError, ValueError) as e:
                return None, f"the image cannot be sent to the judge: {e}"

        if len(images) <= 1:
            return [one(img) for img in images]
        workers = max(1, min(8, len(images), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge-png") as pool:
            return list(pool.map(one, images))

    # -- scoring -------------------------------------------------------------------------------------

    def score(self, images: Sequence[Any], rows: Sequence[dict[str, Any]]) -> RewardOutput:
        if len(images) != len(rows):
            raise LensforgeError(f"rubric_judge reward: {len(images)} images for {len(rows)} rows")
        cfg = self.config
        n = len(images)
        rows = [_as_dict(r) for r in rows]
        failures: list[str | None] = [None] * n
        item_lists: list[list[_Item]] = [[] for _ in range(n)]
        for i, row in enumerate(rows):
            probs = self._row_problems(row)
            if probs:
                failures[i] = "; ".join(probs)
            else:
                item_lists[i] = self._items(row)
        todo = [i for i in range(n) if failures[i] is None]
        parts: dict[int, dict[str, Any]] = {}
        for i, (part, err) in zip(todo, self._encode([images[i] for i in todo])):
            if err is not None:
                failures[i] = err
            else:
                parts[i] = part  # type: ignore[assignment]
        progress = "judge" if cfg.progress else None
        scores: list[dict[str, float]] = [{} for _ in range(n)]
        details: list[dict[str, Any]] = [{} for _ in range(n)]
        if cfg.mode == "logprob":
            self._score_logprob(rows, item_lists, parts, scores, details, failures, progress)
        else:
            self._score_json(rows, item_lists, parts, scores, details, failures, progress)

        rewards: list[float] = []
        for i in range(n):
            if failures[i] is None:
                items = item_lists[i]
                total = sum(it.weight for it in items)
                rewards.append(float(sum(it.weight * scores[i][it.id] for it in items) / total))
            else:
                rewards.append(math.nan)
                scores[i] = {}
        dropped = [f for f in failures if f is not None]
        with self._lock:
            self._counts["images"] += n
            self._counts["scored_images"] += n - len(dropped)
            self._counts["dropped_images"] += len(dropped)
            self._counts["items_judged"] += sum(len(s) for s in scores)
        if dropped:
            log.warning("rubric_judge: %d of %d image(s) not scored (NaN, dropped and counted); first reason: %s",
                        len(dropped), n, dropped[0])
        return RewardOutput(rewards=rewards, items=scores, failures=failures, details=details)

    def _score_json(self, rows, item_lists, parts, scores, details, failures, progress) -> None:
        cfg = self.config
        idx = sorted(parts)
        requests, validators = [], []
        for i in idx:
            requests.append(ChatRequest(
                messages=self._messages(parts[i], self.rubric_text(rows[i])),
                response_format={"type": "json_object"} if cfg.json_mode else None))
            validators.append(_AnswerValidator([it.id for it in item_lists[i]], cfg.mode, cfg.scale_max))
        results = self.client.chat_json(requests, validators, progress=progress) if requests else []
        for i, res in zip(idx, results):
            details[i] = {"cached": res.cached, "reasks": res.reasks, "attempts": res.attempts}
            if res.ok:
                scores[i] = dict(res.value["scores"])
                details[i]["answers"] = dict(res.value["answers"])
            else:
                failures[i] = f"judge {res.error.kind}: {res.error.message}"

    def _score_logprob(self, rows, item_lists, parts, scores, details, failures, progress) -> None:
        cfg = self.config
        keys: list[tuple[int, _Item]] = []
        requests = []
        for i in sorted(parts):
            for it in item_lists[i]:
                keys.append((i, it))
                requests.append(ChatRequest(messages=self._messages(parts[i], self.question_text(rows[i], it)),
                                            max_tokens=1, top_logprobs=cfg.top_logprobs))
        results = self.client.chat(requests, progress=progress) if requests else []
        for (i, it), res in zip(keys, results):
            d = details[i]
            d.setdefault("answers", {})
            d["cached"] = d.get("cached", True) and res.cached
            d["attempts"] = d.get("attempts", 0) + res.attempts
            if failures[i] is not None:
                continue
            if not res.ok:
                failures[i] = f"judge {res.error.kind} on item {it.id}: {res.error.message}"
                continue
            p = res.yes_probability()
            if p is None:
                if res.top_logprobs is None:
                    with self._lock:
                        self._counts["logprob_missing"] += 1
                    failures[i] = (f"item {it.id}: {cfg.endpoint.url} returned no log-probabilities (mode logprob "
                                   f"needs a server that serves logprobs/top_logprobs; or use mode yes_no)")
                else:
                    failures[i] = (f"item {it.id}: neither 'yes' nor 'no' among the answer's top "
                                   f"{len(res.top_logprobs)} tokens (answered {str(res.text)[:20]!r})")
                continue
            scores[i][it.id] = float(p)
            d["answers"][it.id] = res.text

    # -- contract --------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """The endpoint answers (``GET /models``); in mode logprob (with ``logprob_probe``) it returns log-probabilities.

        Raises :class:`LensforgeError` naming the URL otherwise (the CLI exits 2).
        """
        cfg = self.config
        try:
            self.client.preflight()
        except LensforgeError as e:
            raise LensforgeError(f"rubric_judge reward: {e}") from None
        if cfg.mode != "logprob" or not cfg.logprob_probe:
            return
        probe = ChatRequest(messages=[user_message(LOGPROB_PROBE)], max_tokens=1, top_logprobs=cfg.top_logprobs)
        res = self.client.chat([probe])[0]
        if not res.ok:
            raise LensforgeError(f"rubric_judge reward: the logprob probe failed: {res.error.message}")
        if res.top_logprobs is None:
            raise LensforgeError(
                f"rubric_judge reward: {cfg.endpoint.url} ({cfg.endpoint.model}) returned no log-probabilities; "
                f"mode logprob needs a server that serves logprobs/top_logprobs (vLLM, SGLang, llama.cpp, OpenAI "
                f"non-reasoning models) — use mode yes_no with this one")

    def stats(self) -> dict[str, float]:
        """For MLflow: ``images``, ``scored_images``, ``dropped_images``, ``items_judged``, ``logprob_missing``,
        and the client's counters (``requests``, ``failures`` = requests failed for good, ``retries``,
        ``rate_limited``, ``timeouts``, ``server_errors``, ``invalid_answers``, ``reasks``, ``cache_hits``,
        ``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``latency_mean_s``, ``latency_p95_s`` …)."""
        out = dict(self.client.stats())
        out["failures"] = out.pop("failed", 0.0)
        with self._lock:
            out.update({k: float(v) for k, v in self._counts.items()})
        return out

    def reset_stats(self) -> None:
        """Zero the counters (e.g. per RL step)."""
        self.client.reset_stats()
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def close(self) -> None:
        self.client.close()


__all__ = ["JUDGE_SYSTEM_PROMPT", "LOGPROB_PROMPT", "LOGPROB_PROBE", "PROMPT_CONTEXT", "RubricJudgeReward",
           "SCALE_PROMPT", "YES_NO_PROMPT"]
