"""Write a category and rubric items for arbitrary prompts with an LLM (``lensforge data rubrics``).

What Lens did with GPT-4.1 for Lens-RL-8K: for each prompt, a category from a taxonomy and up to ten
prompt-specific yes/no rubric items a VLM judge can answer by looking at the image. The global
structural-integrity item is **not** written into the file; judges append
:data:`~lensforge.data.prompt_sets.GLOBAL_STRUCTURAL_ITEM` when scoring.

Each prompt is one strict-JSON call through :class:`~lensforge.llm.LLMClient` (rate limits, retries,
cache, re-asks). The answer must be::

    {"category": "<one of the categories>",
     "rubric": [{"question": "Is the cat orange?", "weight": 3}, ...]}

with 1 … ``max_items`` distinct yes/no questions and weights 1 (minor detail), 2 (important) or 3
(essential). An answer that is not that JSON is re-asked (``json_reasks``); a prompt that still fails is
reported and counted, never written with an empty or made-up rubric.

Command-line outcome: exit 0 when every prompt got a rubric; exit 3 when some failed — the others are
written to OUT and the failed prompts to ``OUT.failed.txt`` (feed it back as PROMPTS.txt, or re-run the
same command with ``--cache`` so the successful ones cost nothing); exit 2 when none succeeded, the
endpoint is unreachable, or the input is bad (nothing is written).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lensforge.data.prompt_sets import PromptRow, RubricItem, load_prompt_set, write_prompt_set
from lensforge.errors import LensforgeError
from lensforge.fileio import atomic_write_text
from lensforge.llm import ChatRequest, EndpointConfig, LLMClient

log = logging.getLogger("lensforge.data")

#: Lens-RL-8K's taxonomy as far as it is published (people, animals, scenes, food, fictional worlds, UI
#: design, text-heavy …), completed to ten.
DEFAULT_CATEGORIES = ("people", "animals", "objects", "food", "scenes", "architecture", "fictional_worlds",
                      "ui_design", "text_rendering", "art_style")

#: Exit status when some prompts failed and the rest were written.
EXIT_PARTIAL = 3

SYSTEM_PROMPT = """\
You write evaluation rubrics for a text-to-image model. Given an image-generation prompt, you
1. choose the one category that fits the prompt best, from this list: {categories};
2. write between 1 and {max_items} rubric items. Each item is a yes/no question that a careful viewer can
   answer by looking only at the generated image, and that checks one specific thing the prompt asks for:
   an object or person being present, its count, colour, shape, size, material, pose or action, its
   position or relation to other things, the setting and background, lighting, style, and any text that
   must appear (quote it exactly). A faithful image answers "yes" to every question.
   Do not ask about things the prompt does not state or clearly imply, and do not ask about overall
   image quality (that is judged separately). Ask about the most important facts first.
   Give each item a weight: 3 = essential (the main subject), 2 = important, 1 = minor detail.

Answer with only a JSON object, no other text:
{{"category": "<category>", "rubric": [{{"question": "<yes/no question>", "weight": <1, 2 or 3>}}, ...]}}"""

USER_TEMPLATE = "Prompt: {prompt}"


def normalise_category(name: str) -> str:
    """``"Fictional Worlds"`` → ``"fictional_worlds"`` (lower case, runs of non-alphanumerics → ``_``)."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def prompt_id(prompt: str) -> str:
    """A stable row id from the prompt text (so ids, and the seeded split, survive reordering the file)."""
    return "p" + hashlib.sha256(prompt.strip().encode("utf-8")).hexdigest()[:12]


def read_prompts(path: str | os.PathLike) -> tuple[list[tuple[int, str]], int]:
    """``([(line, prompt), …], duplicates)`` from a text file, one prompt per line (blank lines skipped,
    repeated prompts kept once)."""
    p = Path(path)
    if not p.is_file():
        raise LensforgeError(f"prompts file {p}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise LensforgeError(f"prompts file {p}: not UTF-8 text ({e})") from None
    out, seen, dups = [], set(), 0
    for i, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text in seen:
            dups += 1
            continue
        seen.add(text)
        out.append((i, text))
    if not out:
        raise LensforgeError(f"prompts file {p}: no prompts (one per line expected)")
    return out, dups


def make_validator(categories: Sequence[str], max_items: int) -> Callable[[Any], dict[str, Any]]:
    """Checks one parsed answer; returns ``{"category": str, "rubric": [RubricItem, …]}`` or raises ``ValueError``."""
    allowed = {normalise_category(c): c for c in categories}

    def validate(obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object with 'category' and 'rubric', got a {type(obj).__name__}")
        cat = obj.get("category")
        if not isinstance(cat, str) or normalise_category(cat) not in allowed:
            raise ValueError(f"'category' must be one of {', '.join(categories)}; got {cat!r}")
        rubric = obj.get("rubric")
        if not isinstance(rubric, list) or not rubric:
            raise ValueError("'rubric' must be a non-empty list of {\"question\", \"weight\"} objects")
        if len(rubric) > max_items:
            raise ValueError(f"'rubric' has {len(rubric)} items; at most {max_items} are allowed")
        items, seen = [], set()
        for i, it in enumerate(rubric):
            if not isinstance(it, dict):
                raise ValueError(f"rubric item {i + 1} must be an object with 'question' and 'weight'")
            q = it.get("question")
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"rubric item {i + 1} has no 'question' text")
            q = " ".join(q.split())
            if q.lower() in seen:
                raise ValueError(f"rubric item {i + 1} repeats the question {q!r}")
            seen.add(q.lower())
            w = it.get("weight", None)
            if isinstance(w, str):
                try:
                    w = float(w)
                except ValueError:
                    pass
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w <= 0:
                raise ValueError(f"rubric item {i + 1} needs a 'weight' of 1, 2 or 3; got {it.get('weight')!r}")
            items.append(RubricItem(id=f"r{i + 1}", question=q, weight=int(w) if float(w).is_integer() else float(w)))
        return {"category": allowed[normalise_category(cat)], "rubric": items}

    return validate


def rubric_request(prompt: str, categories: Sequence[str], max_items: int, *,
                   json_mode: bool = False) -> ChatRequest:
    """The chat request asking for one prompt's category and rubric."""
    system = SYSTEM_PROMPT.format(categories=", ".join(categories), max_items=max_items)
    return ChatRequest(messages=[{"role": "system", "content": system},
                                 {"role": "user", "content": USER_TEMPLATE.format(prompt=prompt)}],
                       response_format={"type": "json_object"} if json_mode else None)


@dataclass
class RubricRun:
    """What :func:`write_rubrics` produced."""

    rows: list[PromptRow]
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    """``(line, prompt, why)`` for each prompt that got no rubric."""
    stats: dict[str, float] = field(default_factory=dict)


def write_rubrics(prompts: Sequence[tuple[int, str]], client: LLMClient, *,
                  categories: Sequence[str] = DEFAULT_CATEGORIES, max_items: int = 10, json_mode: bool = False,
                  progress: str | None = None) -> RubricRun:
    """Ask ``client`` for a category and rubric per prompt; rows in input order, failures counted."""
    if max_items < 1:
        raise LensforgeError(f"--max-items must be >= 1, got {max_items}")
    cats = list(dict.fromkeys(c.strip() for c in categories if c.strip()))
    if not cats:
        raise LensforgeError("--categories: no category given")
    requests = [rubric_request(p, cats, max_items, json_mode=json_mode) for _, p in prompts]
    results = client.chat_json(requests, make_validator(cats, max_items), progress=progress)
    run = RubricRun(rows=[])
    for (line, prompt), res in zip(prompts, results):
        if not res.ok:
            run.failures.append((line, prompt, res.error.message))
            continue
        run.rows.append(PromptRow(id=prompt_id(prompt), prompt=prompt, category=res.value["category"],
                                  rubric=res.value["rubric"],
                                  meta={"rubric_model": client.config.model, "source_line": line}))
    run.stats = client.stats()
    return run


# -- command line (``lensforge data rubrics``) ------------------------------------------------------------------

def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``lensforge data rubrics``."""
    p.add_argument("prompts", metavar="PROMPTS.txt", help="one prompt per line (blank lines skipped)")
    p.add_argument("out", metavar="OUT.jsonl", help="prompt set to write (one row per prompt)")
    p.add_argument("--base-url", required=True, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="model name as the server knows it")
    p.add_argument("--api-key-env", metavar="VAR", default=None,
                   help="environment variable holding the API key (default: none, for a local server)")
    p.add_argument("--categories", default=None,
                   help=f"comma-separated category list (default: {','.join(DEFAULT_CATEGORIES)})")
    p.add_argument("--max-items", type=int, default=10, help="most rubric items per prompt (default 10)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--rpm", type=float, default=0.0, help="requests-per-minute limit (default: none)")
    p.add_argument("--tpm", type=float, default=0.0, help="tokens-per-minute limit (default: none)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="response cache folder: a re-run pays only for prompts not answered yet")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--max-retries", type=int, default=5, help="retries per request on 429/5xx/timeouts (default 5)")
    p.add_argument("--reasks", type=int, default=2, help="re-asks of a malformed answer (default 2)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0)")
    p.add_argument("--max-tokens", type=int, default=None, help="completion-token cap (default: the server's)")
    p.add_argument("--json-mode", action="store_true",
                   help="send response_format={type: json_object} (where the server supports it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    """``lensforge data rubrics``: see the module docstring for the exit statuses."""
    out = Path(args.out)
    prompts, dups = read_prompts(args.prompts)
    categories = ([c for c in (s.strip() for s in args.categories.split(",")) if c]
                  if args.categories else list(DEFAULT_CATEGORIES))
    if args.max_items < 1:
        raise LensforgeError(f"--max-items must be >= 1, got {args.max_items}")
    if args.concurrency < 1:
        raise LensforgeError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.max_retries < 0 or args.reasks < 0:
        raise LensforgeError("--max-retries and --reasks must be >= 0")
    if args.rpm < 0 or args.tpm < 0 or args.timeout <= 0:
        raise LensforgeError("--rpm/--tpm must be >= 0 and --timeout > 0")
    cfg = EndpointConfig(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                         timeout_s=args.timeout, max_retries=args.max_retries, json_reasks=args.reasks,
                         temperature=args.temperature, max_tokens=args.max_tokens, concurrency=args.concurrency,
                         rpm=args.rpm, tpm=args.tpm, cache_dir=args.cache)
    if dups:
        print(f"{args.prompts}: {dups} repeated prompt{'s' if dups != 1 else ''} kept once")
    with LLMClient(cfg) as client:
        client.preflight()
        print(f"writing rubrics for {len(prompts)} prompts with {cfg.describe()}")
        run = write_rubrics(prompts, client, categories=categories, max_items=args.max_items,
                            json_mode=args.json_mode, progress=None if args.no_progress else "rubrics")
    failed_path = out.with_name(out.name + ".failed.txt")
    if not run.rows:
        first = "; ".join(f"line {ln}: {why}" for ln, _, why in run.failures[:3])
        raise LensforgeError(f"no prompt got a rubric ({len(run.failures)} failed; nothing written): {first}")
    write_prompt_set(out, run.rows)
    written = load_prompt_set(out)  # what we wrote must load back
    st = run.stats
    counts = ", ".join(f"{k} {v}" for k, v in written.category_counts().items())
    print(f"wrote {len(written)} rows to {out}  (categories: {counts})")
    print(f"items per prompt: mean {sum(len(r.rubric) for r in written) / len(written):.1f}; "
          f"tokens: {int(st.get('prompt_tokens', 0))} prompt + {int(st.get('completion_tokens', 0))} completion; "
          f"cache hits {int(st.get('cache_hits', 0))}; re-asks {int(st.get('reasks', 0))}; "
          f"retries {int(st.get('retries', 0))}")
    if run.failures:
        atomic_write_text(failed_path, "".join(p + "\n" for _, p, _ in run.failures))
        print(f"{len(run.failures)} prompt{'s' if len(run.failures) != 1 else ''} failed (listed in {failed_path}):",
              file=sys.stderr)
        for line, prompt, why in run.failures[:20]:
            short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            print(f"  {args.prompts}:{line}: {short!r}: {why}", file=sys.stderr)
        if len(run.failures) > 20:
            print(f"  … and {len(run.failures) - 20} more", file=sys.stderr)
        return EXIT_PARTIAL
    if failed_path.exists():  # a previous run's leftovers no longer apply
        failed_path.unlink()
    return 0


__all__ = ["DEFAULT_CATEGORIES", "EXIT_PARTIAL", "RubricRun", "SYSTEM_PROMPT", "add_cli_arguments",
           "make_validator", "normalise_category", "prompt_id", "read_prompts", "rubric_request", "run_cli",
           "write_rubrics"]
