"""The training-free search over a reasoner's system prompt (``lensforge reasoner search RECIPE``).

Lens improved its reasoner's system prompt with "a training-free system prompt search"; the paper gives
no details. This loop composes the standard pieces (research/post_training.md §5):

* **score** a system prompt on the *dev* split of a prompt set: the reasoner rewrites every dev prompt
  under it, the DiT generates each rewrite (every seed), a reward plugin scores each image against its
  row; the candidate's score is the mean reward (images a reward could not score are left out and
  counted; a candidate whose rewrites failed too often is recorded as failed, not scored);
* **propose** (OPRO + ProTeGi): for each member of the beam, a proposer LLM is shown the task, the best
  (system prompt, score) pairs so far (OPRO's history), the member itself and its worst-scoring dev
  examples with the rubric items they failed (ProTeGi's errors), and asked — strict JSON — for a short
  diagnosis and revised system prompts. Malformed entries (not a string, empty, too long) and duplicates
  of prompts already tried are counted and skipped; an answer that is not the JSON asked for is re-asked
  (``proposer.json_reasks``) and then counted as a failed request;
* **keep** the ``beam_size`` best-scoring prompts as the next round's parents;
* **stop** after ``rounds``, or on a budget — LLM calls, images, wall time — checked *before* each
  proposer request and each candidate, so a budget is never exceeded; the held-out report's images and
  calls are reserved from the budget up front; ``patience`` rounds without improvement also stop it;
* **report**: the initial and the best system prompt are scored on the *held-out* split.

Everything is recorded as it happens in ``<output_dir>/search/history.jsonl`` (one JSON event per line,
flushed and fsynced: ``start``, ``candidate`` — id, round, parent, system prompt, dev score, per-example
rewrites, rewards and failed items —, ``proposals``, ``round``, ``held_out``, ``end``) and in the run's
MLflow run (metrics per candidate and round, each candidate's text and lineage as an artifact). The
history **is** the search state: re-running the same command after a crash or ``kill -9`` reads it back
and continues where it stopped (the candidate being scored when it died is scored again; proposals
already received are not asked again; LLM answers come from the run's response cache). The best system
prompt is written as a plain-text file every reasoner accepts as ``system_prompt_file``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lensforge.errors import LensforgeError
from lensforge.interfaces.stage import Stage
from lensforge.reasoners.search_schema import ReasonerSearchSchema
from lensforge.reasoners.use import training_world

log = logging.getLogger("lensforge.reasoner.search")

HISTORY = "history.jsonl"
#: Stop reasons that mean the search could not do its work (``lensforge reasoner search`` exits 3).
FAILED_STOPS = ("initial_failed", "reasoner_failing", "no_scored_candidates")
#: A rubric item scoring below this counts as failed when shown to the proposer.
FAILED_ITEM = 0.5

PROPOSER_SYSTEM = (
    "You are an expert prompt engineer. You improve the system prompt of a prompt rewriter: an LLM that turns a "
    "user's short request into the prompt a text-to-image model is given. You judge system prompts only by how "
    "well the images generated from their rewrites satisfy the user's request."
)


# ----------------------------------------------------------------------------------------------- history


class History:
    """The append-only event log of a search, which is also its resumable state."""

    def __init__(self, path: Path):
        self.path = path
        self.events: list[dict[str, Any]] = []
        if path.is_file():
            raw = path.read_bytes()
            keep = raw[: raw.rfind(b"\n") + 1]  # a line cut by kill -9 is dropped
            if len(keep) != len(raw):
                log.warning("search: dropping an unfinished last line of %s (the run was killed while writing it)", path)
                with open(path, "r+b") as f:
                    f.truncate(len(keep))
            for line in keep.decode("utf-8").splitlines():
                if line.strip():
                    self.events.append(json.loads(line))

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.events.append(event)
        return event

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]


@dataclass
class Candidate:
    """One system prompt the search has tried (or will)."""

    id: str
    system_prompt: str
    round: int
    parent: str | None
    origin: str
    """``initial`` or ``proposer``."""
    status: str = "proposed"
    """``proposed`` → ``scored`` | ``failed``."""
    dev_score: float | None = None
    record: dict[str, Any] = field(default_factory=dict)


def norm_text(text: str) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------- helpers


def stratified(rows: Sequence[Any], n: int | None) -> list[Any]:
    """At most ``n`` rows taken round-robin over categories (file order within each); all when ``n`` is None."""
    if n is None or n >= len(rows):
        return list(rows)
    groups: dict[str, list[Any]] = {}
    for r in rows:
        groups.setdefault(r.category, []).append(r)
    out: list[Any] = []
    while len(out) < n:
        for g in groups.values():
            if g and len(out) < n:
                out.append(g.pop(0))
    order = {id(r): i for i, r in enumerate(rows)}
    return sorted(out, key=lambda r: order[id(r)])


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()[:16]


def load_search_models(cfg: Any) -> tuple[Any, Any, Any]:
    """``(dit, vae, text_encoder)`` of the recipe's ``model`` with the weights of ``init_from`` (EMA when stored)."""
    import torch

    from lensforge.export import init_from_path

    weights = init_from_path(cfg.init_from)
    sd = weights.get("dit") or weights.get("transformer")
    if not sd:
        raise LensforgeError(f"init_from: '{cfg.init_from}' has no DiT weights")
    dit = cfg.model.dit.build()
    missing, unexpected = dit.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise LensforgeError(f"init_from: '{cfg.init_from}' does not match the recipe's model.dit: {len(missing)} missing "
                             f"keys (e.g. {list(missing)[:3]}), {len(unexpected)} unexpected (e.g. {list(unexpected)[:3]})")
    vae = cfg.model.vae.build()
    te = cfg.model.text_encoder.build()
    for m, name in ((vae, "vae"), (te, "text_encoder")):
        if weights.get(name):
            m.load_state_dict(weights[name], strict=True)
        m.requires_grad_(False)
        m.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dit.to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    vae.to(device)
    te.to(device)
    return dit, vae, te


def node_fingerprint(ref: Any) -> dict[str, Any]:
    """A plugin node without what may change between sessions of one search (an endpoint's URL, key variable,
    limits and cache): its name, its settings and, for an endpoint, the model, temperature and extra fields."""
    d = ref.to_dict()
    ep = d.get("endpoint")
    if isinstance(ep, dict):
        d["endpoint"] = {k: ep.get(k) for k in ("model", "temperature", "max_tokens", "extra_body")}
    return d


def with_cache_dir(ref: Any, cache_dir: Path) -> Any:
    """Build a plugin node, giving its ``endpoint`` the run's response cache when it names none."""
    ep = getattr(ref.config, "endpoint", None)
    if dataclasses.is_dataclass(ep) and getattr(ep, "cache_dir", "x") is None:
        return ref.build(endpoint=dataclasses.replace(ep, cache_dir=str(cache_dir)))
    return ref.build()


def proposal_messages(parent: Candidate, best: Sequence[Candidate], examples: Sequence[dict[str, Any]], k: int,
                      task_notes: str, max_chars: int) -> list[dict[str, str]]:
    """The proposer's conversation for ``k`` revisions of ``parent`` (OPRO history + ProTeGi errors)."""
    lines = [
        "The rewriter LLM receives a SYSTEM PROMPT and one short user request. Its answer is given to a "
        "text-to-image model, and the generated image is checked against the request's rubric (yes/no items). "
        "A system prompt's score is the mean rubric score over a set of requests (0 = nothing right, 1 = all "
        "right).",
    ]
    if task_notes.strip():
        lines += ["", "About the image model: " + task_notes.strip()]
    if best:
        lines += ["", "System prompts tried so far, with their scores (best last):"]
        for c in sorted(best, key=lambda c: (c.dev_score or 0.0, c.id)):
            lines += [f"<system_prompt score={c.dev_score:.3f}>", c.system_prompt, "</system_prompt>"]
    lines += ["", f"The system prompt to improve (score {parent.dev_score:.3f}):", "<system_prompt>",
              parent.system_prompt, "</system_prompt>", "",
              "Examples where it did worst (the request, the rewrite the image model got, the image's score and the "
              "rubric items the image failed):"]
    for i, ex in enumerate(examples, 1):
        failed = "; ".join(f"{it['question']} ({it['score']:.2f})" for it in ex.get("failed_items", [])) or "(none listed)"
        rw = ex["rewrite"] if ex.get("rewrite_ok", True) else f"(no usable rewrite: {ex.get('rewrite_error')}; the request was used as is)"
        lines += [f"{i}. request: {ex['prompt']}", f"   rewrite: {rw}",
                  f"   score: {ex['reward']:.3f}" if ex.get("reward") is not None else "   score: (not scored)",
                  f"   failed items: {failed}"]
    lines += ["", f"First diagnose in one or two sentences why the rewrites failed these items. Then write {k} "
              f"revised system prompt{'s' if k != 1 else ''} that fix those failures while keeping what works. Each "
              f"must be complete and self-contained (at most {max_chars} characters), and they must differ from each "
              "other and from every system prompt above.",
              'Answer with JSON only: {"analysis": "<diagnosis>", "prompts": ["<system prompt 1>", …]}']
    return [{"role": "system", "content": PROPOSER_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def _check_proposal_answer(obj: Any) -> dict[str, Any]:
    """Validator of the proposer's JSON (the list itself is checked entry by entry afterwards)."""
    if not isinstance(obj, dict):
        raise ValueError('the answer must be a JSON object {"analysis": …, "prompts": [...]}')
    prompts = obj.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise ValueError('"prompts" must be a non-empty list of system prompts (strings)')
    return obj


# ----------------------------------------------------------------------------------------------- the search


class Search:
    """One search run (see the module docstring); :meth:`run` returns the summary."""

    def __init__(self, recipe: Any, *, progress: bool | None = None):
        from lensforge.data.prompt_sets import load_prompt_set
        from lensforge.reasoners.prompts import load_system_prompt
        from lensforge.stages.harness import open_run

        self.recipe = recipe
        cfg = self.cfg = recipe.config
        sc = self.sc = cfg.stage.config
        ps = load_prompt_set(os.path.expanduser(sc.prompts))
        dev, held = ps.split(sc.split_seed, sc.held_out_fraction)
        self.dev = stratified(dev.rows, sc.dev_prompts)
        self.held = stratified(held.rows, sc.held_out_prompts)
        if not self.dev or not self.held:
            raise LensforgeError(f"prompt set {sc.prompts}: the split (held_out_fraction {sc.held_out_fraction}, seed "
                                 f"{sc.split_seed}) leaves {len(dev)} dev and {len(held)} held-out prompts; both must be "
                                 "non-empty (use more prompts)")
        self.size = (int(cfg.sampling.height), int(cfg.sampling.width))
        self.steps, self.guidance = int(cfg.sampling.steps), float(cfg.sampling.guidance_scale)
        self.seeds = [int(s) for s in sc.seeds]
        reasoner_cls = sc.reasoner.cls
        if not getattr(reasoner_cls, "uses_system_prompt", True):
            raise LensforgeError(f"reasoner '{sc.reasoner.name}' does not use a system prompt: nothing to search")
        initial_file = sc.initial_system_prompt or getattr(sc.reasoner.config, "system_prompt_file", None)
        self.initial_prompt = load_system_prompt(initial_file)
        self.reward = sc.reward.build()
        problems = self.reward.check_rows([r.to_dict() for r in [*self.dev, *self.held]])
        if problems:
            more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise LensforgeError(f"reward '{sc.reward.name}' cannot score prompt set {sc.prompts}:\n  "
                                 + "\n  ".join(problems[:10]) + more)
        self.cost_images = len(self.dev) * len(self.seeds)
        self.cost_calls = len({r.prompt for r in self.dev})
        self.reserve_images = 2 * len(self.held) * len(self.seeds)
        self.reserve_calls = 2 * len({r.prompt for r in self.held})
        self._check_budget_fits()
        self.fingerprint = _fingerprint({
            "prompts": _file_sha(sc.prompts), "dev": [r.id for r in self.dev], "held": [r.id for r in self.held],
            "seeds": self.seeds, "reward": node_fingerprint(sc.reward), "reasoner": node_fingerprint(sc.reasoner),
            "initial": norm_text(self.initial_prompt), "init_from": str(cfg.init_from), "size": self.size,
            "steps": self.steps, "guidance": self.guidance, "model": cfg.model.dit.to_dict()})
        self.run = open_run(recipe)
        self.sdir = self.run.out / "search"
        if cfg.resume == "never" and (self.sdir / HISTORY).exists():
            old = self.run.out / f"search.{time.strftime('%Y%m%d-%H%M%S')}"
            (self.sdir).rename(old)
            log.info("search: resume: never — the previous search moved to %s", old)
        self.history = History(self.sdir / HISTORY)
        starts = self.history.of("start")
        if starts and starts[0].get("fingerprint") != self.fingerprint:
            raise LensforgeError(
                f"{self.sdir / HISTORY} belongs to a search with other settings (prompt set, split, seeds, reward, "
                "reasoner, initial prompt, model or sampler changed); use another output_dir, or resume: never to "
                "start over (the old search folder is kept)")
        if starts and self.run.tracker is not None:
            self.run.tracker.resume = True  # continue the same MLflow run
        self.progress = cfg.trainer.progress_bar if progress is None else progress
        self.cache_dir = self.sdir / "llm_cache"

    # -- budget --------------------------------------------------------------------------------------

    def _check_budget_fits(self) -> None:
        sc = self.sc
        if sc.max_images and sc.max_images < self.cost_images + self.reserve_images:
            raise LensforgeError(f"max_images {sc.max_images} cannot cover scoring the initial system prompt "
                                 f"({self.cost_images} images) and the held-out report ({self.reserve_images}); raise it "
                                 "or use fewer prompts/seeds")
        if sc.max_llm_calls and sc.max_llm_calls < self.cost_calls + self.reserve_calls:
            raise LensforgeError(f"max_llm_calls {sc.max_llm_calls} cannot cover the initial system prompt's rewrites "
                                 f"({self.cost_calls}) and the held-out report ({self.reserve_calls}); raise it")

    def spent(self) -> dict[str, float]:
        """Images, LLM calls and seconds recorded in the history so far."""
        images = sum(int(e.get("images", 0)) for e in self.history.events)
        calls = sum(int(e.get("llm_calls", 0)) for e in self.history.events)
        wall = max([float(e.get("elapsed_s", 0.0)) for e in self.history.events] or [0.0])
        return {"images": images, "llm_calls": calls, "wall_s": wall}

    def elapsed(self) -> float:
        return self._wall0 + (time.monotonic() - self._t0)

    def budget_stop(self, images: int, calls: int, *, search_phase: bool = True) -> str | None:
        """Why spending ``images`` and ``calls`` more would break the budget (None when it fits)."""
        sc, s = self.sc, self.spent()
        reserve_i = self.reserve_images if search_phase else 0
        reserve_c = self.reserve_calls if search_phase else 0
        if sc.max_images and s["images"] + images + reserve_i > sc.max_images:
            return "max_images"
        if sc.max_llm_calls and s["llm_calls"] + calls + reserve_c > sc.max_llm_calls:
            return "max_llm_calls"
        if search_phase and sc.max_wall_s and self.elapsed() >= sc.max_wall_s:
            return "max_wall_s"
        return None

    # -- scoring -------------------------------------------------------------------------------------

    def evaluate(self, system_prompt: str, rows: Sequence[Any]) -> dict[str, Any]:
        """Rewrite ``rows`` under ``system_prompt``, generate, score: the candidate record's measurements."""
        from lensforge.eval.run import generate_images, score_images
        from lensforge.eval.suites import expand

        unique = list(dict.fromkeys(r.prompt for r in rows))
        rewrites = {rw.prompt: rw for rw in self.reasoner.rewrite(unique, system_prompt=system_prompt)}
        failed = [rw for rw in rewrites.values() if not rw.ok]
        out: dict[str, Any] = {"llm_calls": len(unique), "rewrite_failures": len(failed), "images": 0}
        if failed:
            out["rewrite_errors"] = sorted({str(rw.error) for rw in failed})[:5]
        if len(failed) > self.sc.max_failed_rewrites * len(unique):
            out["status"] = "failed"
            out["reason"] = (f"{len(failed)} of {len(unique)} rewrites failed (more than max_failed_rewrites "
                             f"{self.sc.max_failed_rewrites:g}): {out['rewrite_errors'][0]}")
            return out
        row_dicts = [r.to_dict() for r in rows]
        items = expand(row_dicts, self.seeds, self.size)
        prompts = [rewrites[it.row["prompt"]].text for it in items]
        images = generate_images(self.dit, self.vae, self.te, items, prompts, steps=self.steps,
                                 guidance_scale=self.guidance, batch_size=self.sc.batch_size)
        scored = score_images(self.reward, items, images, prompts)
        out["images"] = len(images)
        ok = [s.reward for s in scored if s.failure is None and not math.isnan(s.reward)]
        out["scored_images"], out["unscored_images"] = len(ok), len(scored) - len(ok)
        if not ok:
            out["status"] = "failed"
            out["reason"] = f"the reward scored none of the {len(scored)} images: {scored[0].failure}"
            return out
        out["status"] = "scored"
        out["score"] = float(sum(ok) / len(ok))
        cats: dict[str, list[float]] = {}
        examples = []
        for s in scored:
            row = s.item.row
            questions = {it["id"]: it["question"] for it in row.get("rubric", [])}
            rw = rewrites[row["prompt"]]
            reward = None if s.failure is not None or math.isnan(s.reward) else float(s.reward)
            if reward is not None:
                cats.setdefault(str(row.get("category")), []).append(reward)
            examples.append({
                "id": row["id"], "seed": s.item.seed, "prompt": row["prompt"], "rewrite": rw.text, "rewrite_ok": rw.ok,
                **({"rewrite_error": rw.error} if not rw.ok else {}),
                "reward": reward, **({"failure": s.failure} if s.failure else {}),
                "failed_items": [{"id": k, "question": questions.get(k, k), "score": round(float(v), 4)}
                                 for k, v in sorted(s.items.items()) if float(v) < FAILED_ITEM],
            })
        out["categories"] = {c: float(sum(v) / len(v)) for c, v in sorted(cats.items())}
        out["examples"] = examples
        return out

    # -- the loop ------------------------------------------------------------------------------------

    def _restore(self) -> None:
        self.candidates: dict[str, Candidate] = {}
        for e in self.history.events:
            if e.get("event") == "proposals":
                for c in e.get("candidates", []):
                    self.candidates[c["id"]] = Candidate(id=c["id"], system_prompt=c["system_prompt"], round=e["round"],
                                                         parent=e.get("parent"), origin="proposer")
            elif e.get("event") == "candidate":
                c = self.candidates.get(e["id"]) or Candidate(id=e["id"], system_prompt=e["system_prompt"],
                                                              round=e["round"], parent=e.get("parent"),
                                                              origin=e.get("origin", "proposer"))
                c.status = e["status"]
                c.dev_score = e.get("dev_score")
                c.record = e
                self.candidates[c.id] = c

    def _new_id(self) -> str:
        return f"c{len(self.candidates):04d}"

    def beam(self) -> list[Candidate]:
        scored = [c for c in self.candidates.values() if c.status == "scored"]
        return sorted(scored, key=lambda c: (-(c.dev_score or 0.0), c.id))[: self.sc.beam_size]

    def parents(self, rnd: int) -> list[Candidate]:
        """The beam a round proposes from: as it stood when the previous round ended (so a resumed round asks
        the same parents the interrupted one did)."""
        if rnd == 1:
            return [c for c in self.candidates.values() if c.origin == "initial" and c.status == "scored"]
        prev = [e for e in self.history.of("round") if e["round"] == rnd - 1]
        return [self.candidates[i] for i in prev[-1]["beam"]] if prev else self.beam()

    def best(self) -> Candidate | None:
        b = self.beam()
        return b[0] if b else None

    def lineage(self, cid: str) -> list[str]:
        chain, cur = [], self.candidates.get(cid)
        while cur is not None:
            chain.append(cur.id)
            cur = self.candidates.get(cur.parent) if cur.parent else None
        return chain[::-1]

    def _event(self, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S"))
        event["elapsed_s"] = round(self.elapsed(), 3)
        return self.history.append(event)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run.tracker is not None:
            self.run.tracker.log_metrics(metrics, step=step)

    def score_candidate(self, c: Candidate) -> None:
        t = time.monotonic()
        res = self.evaluate(c.system_prompt, self.dev)
        c.status = res.pop("status")
        c.dev_score = res.pop("score", None)
        rec = {"event": "candidate", "id": c.id, "round": c.round, "parent": c.parent, "origin": c.origin,
               "lineage": self.lineage(c.id), "prompt_id": _prompt_sha(c.system_prompt), "system_prompt": c.system_prompt,
               "status": c.status, "dev_score": c.dev_score, "seconds": round(time.monotonic() - t, 3), **res}
        c.record = self._event(rec)
        index = int(c.id[1:])
        s = self.spent()
        metrics = {"search/images": s["images"], "search/llm_calls": s["llm_calls"]}
        if c.dev_score is not None:
            metrics["search/candidate_dev_score"] = c.dev_score
        self._log_metrics(metrics, index)
        if self.run.tracker is not None:
            self.run.tracker.log_text(json.dumps({k: v for k, v in rec.items() if k != "examples"}, indent=1,
                                                 ensure_ascii=False), f"search/candidates/{c.id}.json")
        log.info("search: %s (round %d, parent %s): %s", c.id, c.round, c.parent or "-",
                 f"dev score {c.dev_score:.4f}" if c.dev_score is not None else f"failed: {rec.get('reason')}")

    def propose(self, rnd: int, parent: Candidate, k: int) -> None:
        """Ask the proposer for ``k`` revisions of ``parent``; record what came back (valid, malformed, duplicate)."""
        from lensforge.llm.client import ChatRequest

        examples = [ex for ex in parent.record.get("examples", [])]
        examples.sort(key=lambda ex: (ex["reward"] if ex.get("reward") is not None else -1.0, ex["id"]))
        shown = [c for c in sorted((c for c in self.candidates.values() if c.status == "scored"),
                                   key=lambda c: (-(c.dev_score or 0.0), c.id))[: self.sc.history_shown]
                 if c.id != parent.id]
        messages = proposal_messages(parent, shown, examples[: self.sc.worst_examples], k, self.sc.task_notes,
                                     self.sc.max_prompt_chars)
        [res] = self.proposer.chat_json([ChatRequest(messages=messages)], _check_proposal_answer)
        event: dict[str, Any] = {"event": "proposals", "round": rnd, "parent": parent.id, "asked": k, "llm_calls": 1,
                                 "candidates": [], "malformed": [], "duplicates": 0, "surplus": 0, "reasks": res.reasks}
        if res.error is not None:
            event["error"] = res.error.message
            event["malformed"].append({"why": f"unusable answer: {res.error.message}", "value": (res.text or "")[:500]})
        else:
            event["analysis"] = str(res.value.get("analysis", ""))[:2000]
            seen = {norm_text(c.system_prompt) for c in self.candidates.values()}
            for p in res.value["prompts"]:
                if not isinstance(p, str):
                    event["malformed"].append({"why": f"not a string ({type(p).__name__})", "value": json.dumps(p)[:200]})
                    continue
                text = p.strip()
                if not text:
                    event["malformed"].append({"why": "empty", "value": p})
                elif len(text) > self.sc.max_prompt_chars:
                    event["malformed"].append({"why": f"{len(text)} characters (max_prompt_chars {self.sc.max_prompt_chars})",
                                               "value": text[:200] + "…"})
                elif norm_text(text) in seen:
                    event["duplicates"] += 1
                elif len(event["candidates"]) >= k:
                    event["surplus"] += 1  # more than asked for: the first k are kept
                else:
                    seen.add(norm_text(text))
                    cid = self._new_id()
                    self.candidates[cid] = Candidate(id=cid, system_prompt=text, round=rnd, parent=parent.id,
                                                     origin="proposer")
                    event["candidates"].append({"id": cid, "system_prompt": text})
        self._event(event)
        n_bad = len(event["malformed"])
        log.info("search: round %d, proposer on %s: %d new, %d malformed (skipped), %d duplicate%s", rnd, parent.id,
                 len(event["candidates"]), n_bad, event["duplicates"], f" — {event['error']}" if "error" in event else "")

    def _setup_models(self) -> None:
        from lensforge.llm.client import LLMClient

        sc = self.sc
        self.dit, self.vae, self.te = load_search_models(self.cfg)
        self.reasoner = with_cache_dir(sc.reasoner, self.cache_dir)
        self.reasoner.setup(text_encoder=self.te, world=training_world(self.cfg))
        proposer_cfg = sc.proposer if sc.proposer.cache_dir else dataclasses.replace(sc.proposer, cache_dir=str(self.cache_dir))
        self.proposer = LLMClient(proposer_cfg)
        self.reasoner.preflight()
        self.proposer.preflight()
        self.reward.preflight()
        log.info("search: reasoner %s; proposer %s; reward %s; %d dev / %d held-out prompts x %d seed(s) at %dx%d, "
                 "%d steps, CFG %g", self.reasoner.describe(), proposer_cfg.describe(), sc.reward.name, len(self.dev),
                 len(self.held), len(self.seeds), self.size[0], self.size[1], self.steps, self.guidance)

    def run_loop(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        sc = self.sc
        self._restore()
        spent = self.spent()
        self._wall0, self._t0 = spent["wall_s"], time.monotonic()
        self._setup_models()  # an unreachable endpoint or a model that does not match fails here, before any record
        if not self.history.of("start"):
            self._event({"event": "start", "fingerprint": self.fingerprint, "dev_ids": [r.id for r in self.dev],
                         "held_out_ids": [r.id for r in self.held], "seeds": self.seeds, "size": list(self.size),
                         "steps": self.steps, "guidance_scale": self.guidance,
                         "budget": {"rounds": sc.rounds, "max_llm_calls": sc.max_llm_calls, "max_images": sc.max_images,
                                    "max_wall_s": sc.max_wall_s}})
        else:
            self._event({"event": "resume", "candidates_done": sum(c.status != "proposed" for c in self.candidates.values())})
            log.info("search: resuming %s (%d candidates scored, %d images, %d LLM calls so far)", self.history.path,
                     sum(c.status == "scored" for c in self.candidates.values()), spent["images"], spent["llm_calls"])
        total = 1 + sc.rounds * sc.proposals_per_round
        bar = tqdm(total=total, desc="reasoner search", unit="cand", dynamic_ncols=True, disable=not self.progress)
        bar.update(sum(c.status != "proposed" for c in self.candidates.values()))

        def tick() -> None:
            s, b = self.spent(), self.best()
            bar.set_postfix(best=f"{b.dev_score:.3f}" if b else "-", images=s["images"], calls=s["llm_calls"],
                            refresh=False)
            bar.update(1)

        stop: str | None = None
        consecutive_failures = 0
        try:
            initial = next((c for c in self.candidates.values() if c.origin == "initial"), None)
            if initial is None:
                initial = Candidate(id=self._new_id(), system_prompt=self.initial_prompt, round=0, parent=None,
                                    origin="initial")
                self.candidates[initial.id] = initial
            if initial.status == "proposed":
                stop = self.budget_stop(self.cost_images, self.cost_calls)
                if stop is None:
                    self.score_candidate(initial)
                    tick()
            if initial.status == "failed":
                stop = "initial_failed"
            done_rounds = {e["round"] for e in self.history.of("round")}
            best_so_far = initial.dev_score
            stale = 0
            for e in self.history.of("round"):  # patience carries over a resume
                b_score = e.get("best_dev_score")
                stale = stale + 1 if b_score is not None and best_so_far is not None and b_score <= best_so_far else 0
                best_so_far = b_score if b_score is not None else best_so_far
            if sc.patience and stale >= sc.patience:
                stop = stop or "patience"
            for rnd in range(1, sc.rounds + 1):
                if stop:
                    break
                if rnd in done_rounds:
                    continue
                parents = self.parents(rnd)
                if not parents:
                    stop = "no_scored_candidates"
                    break
                asked = {e["parent"] for e in self.history.of("proposals") if e["round"] == rnd}
                share = [sc.proposals_per_round // len(parents) + (j < sc.proposals_per_round % len(parents))
                         for j in range(len(parents))]
                for parent, k in zip(parents, share):
                    if k == 0 or parent.id in asked:
                        continue
                    stop = self.budget_stop(0, 1)
                    if stop:
                        break
                    self.propose(rnd, parent, k)
                if stop:
                    break
                for c in sorted((c for c in self.candidates.values() if c.round == rnd and c.status == "proposed"),
                                key=lambda c: c.id):
                    stop = self.budget_stop(self.cost_images, self.cost_calls)
                    if stop:
                        break
                    self.score_candidate(c)
                    tick()
                    consecutive_failures = consecutive_failures + 1 if c.status == "failed" else 0
                    if consecutive_failures >= 3:
                        stop = "reasoner_failing"
                        break
                if stop:
                    break
                b = self.best()
                round_cands = [c for c in self.candidates.values() if c.round == rnd]
                self._event({"event": "round", "round": rnd, "beam": [c.id for c in self.beam()],
                             "best": b.id if b else None, "best_dev_score": b.dev_score if b else None,
                             "new": len(round_cands), "scored": sum(c.status == "scored" for c in round_cands)})
                if b is not None:
                    self._log_metrics({"search/best_dev_score": b.dev_score,
                                       "search/beam_mean": sum(c.dev_score for c in self.beam()) / len(self.beam())}, rnd)
                if not round_cands:
                    stop = "no_proposals"
                    break
                if b is not None and best_so_far is not None and b.dev_score <= best_so_far:
                    stale += 1
                else:
                    stale = 0
                best_so_far = b.dev_score if b else best_so_far
                if sc.patience and stale >= sc.patience:
                    stop = "patience"
                    break
            stop = stop or "rounds"
        finally:
            bar.close()
        return self.finish(stop)

    def held_out(self, c: Candidate) -> dict[str, Any] | None:
        """The held-out measurements of ``c`` (from the history, or computed now)."""
        for e in self.history.of("held_out"):
            if e["candidate"] == c.id:
                return e
        if self.budget_stop(len(self.held) * len(self.seeds), len({r.prompt for r in self.held}), search_phase=False):
            log.warning("search: no budget left for the held-out score of %s", c.id)
            return None
        res = self.evaluate(c.system_prompt, self.held)
        rec = {"event": "held_out", "candidate": c.id, "status": res.pop("status"), "score": res.pop("score", None),
               **{k: v for k, v in res.items()}}
        return self._event(rec)

    def finish(self, stop: str) -> dict[str, Any]:
        from lensforge.fileio import atomic_write_text

        sc, out = self.sc, self.run.out
        initial = next(c for c in self.candidates.values() if c.origin == "initial")
        best = self.best() or initial
        report = {"initial": self.held_out(initial)}
        if best.id != initial.id:
            report["best"] = self.held_out(best)
        else:
            report["best"] = report["initial"]
        h_init = (report["initial"] or {}).get("score")
        h_best = (report["best"] or {}).get("score")
        path = Path(sc.output_file).expanduser() if sc.output_file else out / "best_system_prompt.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, best.system_prompt.strip() + "\n")
        s = self.spent()
        proposals = self.history.of("proposals")
        summary = {
            "output_dir": str(out), "stage": "reasoner_search", "stop_reason": stop,
            "best_system_prompt_file": str(path), "best": best.id, "best_lineage": self.lineage(best.id),
            "best_dev_score": best.dev_score, "initial_dev_score": initial.dev_score,
            "held_out": {"prompts": len(self.held), "seeds": len(self.seeds), "initial": h_init, "best": h_best,
                         "gain": None if h_init is None or h_best is None else h_best - h_init,
                         "initial_categories": (report["initial"] or {}).get("categories"),
                         "best_categories": (report["best"] or {}).get("categories")},
            "dev_prompts": len(self.dev), "candidates": len(self.candidates),
            "scored": sum(c.status == "scored" for c in self.candidates.values()),
            "failed": sum(c.status == "failed" for c in self.candidates.values()),
            "rounds_done": len(self.history.of("round")),
            "proposer_requests": len(proposals), "proposer_failed_requests": sum("error" in e for e in proposals),
            "proposals_malformed": sum(len(e.get("malformed", [])) for e in proposals),
            "proposals_duplicate": sum(int(e.get("duplicates", 0)) for e in proposals),
            "images": s["images"], "llm_calls": s["llm_calls"], "wall_seconds": round(self.elapsed(), 1),
            "budget": {"rounds": sc.rounds, "max_llm_calls": sc.max_llm_calls, "max_images": sc.max_images,
                       "max_wall_s": sc.max_wall_s},
            "history": str(self.history.path),
            "mlflow_run_id": self.run.tracker.run_id if self.run.tracker is not None else None,
        }
        atomic_write_text(path.with_suffix(".json"), json.dumps({
            "system_prompt_file": str(path), "candidate": best.id, "lineage": self.lineage(best.id),
            "dev_score": best.dev_score, "held_out_score": h_best, "initial_held_out_score": h_init,
            "run": str(out), "prompts": sc.prompts, "reward": sc.reward.name, "reasoner": sc.reasoner.name}, indent=1))
        self._event({"event": "end", "stop_reason": stop, "best": best.id, "best_dev_score": best.dev_score,
                     "held_out_initial": h_init, "held_out_best": h_best})
        tracker = self.run.tracker
        if tracker is not None:
            m = {"search/best_dev_score_final": best.dev_score or 0.0, "search/images": s["images"],
                 "search/llm_calls": s["llm_calls"], "search/proposals_malformed": summary["proposals_malformed"]}
            if h_init is not None:
                m["search/held_out/initial"] = h_init
            if h_best is not None:
                m["search/held_out/best"] = h_best
            if summary["held_out"]["gain"] is not None:
                m["search/held_out/gain"] = summary["held_out"]["gain"]
            m.update({f"reasoner/{k}": v for k, v in self.reasoner.stats().items()})
            m.update({f"proposer/{k}": v for k, v in self.proposer.stats().items()})
            self._log_metrics(m, len(self.history.of("round")))
            tracker.set_tag("search.best", best.id)
            tracker.set_tag("search.stop_reason", stop)
            tracker.log_text(best.system_prompt, "search/best_system_prompt.txt")
            tracker.log_text(self.history.path.read_text(encoding="utf-8"), "search/history.jsonl")
        self.run.write_summary(summary)
        self.run.finish("failed" if stop in FAILED_STOPS else "success")
        self.reasoner.close()
        self.proposer.close()
        self.reward.close()
        self.summary = summary
        return summary


def _prompt_sha(text: str) -> str:
    from lensforge.reasoners.prompts import prompt_id

    return prompt_id(text)


def run_search(recipe: Any, *, progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) the search of a validated ``reasoner_search`` recipe; returns its summary."""
    return Search(recipe, progress=progress).run_loop()


def format_report(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: the stop reason, the best prompt, dev and held-out scores, the budget spent."""
    h = summary["held_out"]

    def f(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}"

    gain = "" if h["gain"] is None else f" ({h['gain']:+.4f})"
    lines = [
        f"search stopped: {summary['stop_reason']} after {summary['rounds_done']} round(s), {summary['candidates']} "
        f"candidates ({summary['scored']} scored, {summary['failed']} failed)",
        f"proposals: {summary['proposer_requests']} request(s), {summary['proposer_failed_requests']} failed, "
        f"{summary['proposals_malformed']} malformed and {summary['proposals_duplicate']} duplicate(s) skipped",
        f"dev ({summary['dev_prompts']} prompts): initial {f(summary['initial_dev_score'])} -> best "
        f"{f(summary['best_dev_score'])} ({summary['best']}, lineage {' > '.join(summary['best_lineage'])})",
        f"held-out ({h['prompts']} prompts x {h['seeds']} seed(s)): initial {f(h['initial'])} -> best {f(h['best'])}{gain}",
        f"spent: {summary['images']} images, {summary['llm_calls']} LLM calls, {summary['wall_seconds']:.0f} s",
        f"best system prompt: {summary['best_system_prompt_file']}",
        f"history: {summary['history']}",
    ]
    return "\n".join(lines) + "\n"


class ReasonerSearchStage(ReasonerSearchSchema, Stage):
    """Training-free search over a reasoner's system prompt, scored by a reward on generated images."""

    @classmethod
    def run(cls, recipe: Any) -> Any:
        return run_search(recipe)


__all__ = ["History", "ReasonerSearchStage", "Search", "format_report", "load_search_models", "node_fingerprint",
           "proposal_messages", "run_search", "stratified"]
