#!/usr/bin/env python
"""Lens's three ablations at toy scale (issue 19): train the arms, score them side by side, write the doc.

    python tools/ablations.py all [--seeds 0,1]            # every ablation -> docs/ablations.md
    python tools/ablations.py captions --seeds 0,1,2       # one ablation (captions | resolutions | encoder)
    python tools/ablations.py all --dry-run                # print the commands, run nothing
    python tools/ablations.py all --smoke                  # 8 steps an arm, 4 prompts: the plumbing, in a temp folder
    python tools/ablations.py all --jobs 1                 # one command at a time (default: min(cores, 4))

Each arm is a recipe under ``recipes/ablations/`` (one change against ``baseline.yaml``, which is the
shared arm of all three ablations and is trained once per seed). For every arm and seed the tool runs
``lensforge fit RECIPE seed=S`` (a run whose ``summary.json`` shows it reached ``trainer.max_steps`` is
skipped; an interrupted one resumes from its last checkpoint, as ``lensforge fit`` does), then per
ablation and seed ``lensforge eval`` with every arm as a target, so all arms see the same prompts, sizes
and sampler seeds:

* ``dense``: the validation suite (held-out dense captions of the multi-object world) on **every kept
  checkpoint** of every arm: the final step fills the table, the earlier ones the learning curves
  (``all`` scores every arm of every ablation in one eval, ``eval/dense_s<seed>``; one ablation run alone
  writes ``eval/<name>/dense_s<seed>``; the doc reads the newer of the two);
* ``short``: short GenEval-style prompts stating 1-2 facts each (``lensforge data prompts``), each
  scored on the facts it states; ``short_reasoner``: the same through ``--reasoner synthetic_world``;
* ``ar_sweep`` (resolutions): held-out prompts at Lens's nine aspect ratios x 0.5-2x the 64-px base,
  cells split into sizes some arm trained on and sizes no arm trained on.

Every command runs with ``OMP_NUM_THREADS=1`` (unless set), so ``--jobs N`` runs N of them side by side,
one core each; the numbers do not depend on N (same threads, same seeds), only the wall time does.
An eval whose ``results.json`` already lists the same targets is skipped too, so re-running the same
command after an interruption continues where it stopped. The doc (``docs/ablations.md``, figures in
``docs/img/ablations/``) holds per ablation: the table (mean over training seeds, the seed spread
max-min, each seed's value), the learning curves (PNG), a grid of samples, and a plain verdict on
Lens's claim: the difference between the claimed-better arm and the others against the seed spread.
The doc always has all three sections: running one ablation rewrites its section and keeps the
others as earlier runs left them.
Under each verdict a ``<!-- reading:NAME -->`` block holds what a person wrote about the result; the
tool carries it over when it rewrites the doc.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "ablations"


@dataclass
class Ablation:
    name: str
    title: str
    claim: str
    arms: dict[str, str]
    """arm label -> recipe stem under recipes/ablations/ (the first arm is the one Lens says is better)."""
    suites: list[str]
    """Suites of the table; ``dense`` also gives the learning curves."""
    headline: str
    """The suite the verdict is read from."""
    notes: list[str] = field(default_factory=list)


ABLATIONS: dict[str, Ablation] = {
    "captions": Ablation(
        "captions", "Dense vs short vs mixed captions",
        "training on dense (~100-word) captions beats short or mixed captions, for detailed and for short prompts",
        {"dense": "baseline", "short": "captions_short", "mix": "captions_mix"},
        ["dense", "short", "short_reasoner"], "dense",
        ["Same images (world seed 0), same 12 images a step, same steps; only the caption each image trains on differs."],
    ),
    "resolutions": Ablation(
        "resolutions", "Packed mixed resolutions vs one fixed size vs per-size buckets",
        "mixing resolutions and aspect ratios in every batch generalises to formats never trained on",
        {"mixed": "baseline", "fixed": "resolution_fixed", "buckets": "resolution_buckets"},
        ["dense", "ar_sweep"], "ar_sweep_unseen",
        ["Same captions and steps, 12 images a step; `fixed` trains 64x64 only (16 image tokens a sample), "
         "`mixed` and `buckets` the same 13 sizes (17.7 on average), `buckets` one size per batch."],
    ),
    "encoder": Ablation(
        "encoder", "MiniLM features vs weaker text encoders",
        "a stronger language encoder converges faster and follows prompts better",
        {"minilm": "baseline", "shallow": "encoder_shallow", "embeddings": "encoder_embeddings"},
        ["dense", "short"], "dense",
        ["`minilm`: hidden states 3 and 6 of the packaged all-MiniLM-L6-v2; `shallow`: hidden state 1 only (one "
         "block of context); `embeddings`: hidden state 0 (word-piece + position embeddings, no context). No "
         "stronger encoder fits the CPU budget offline (GPT-OSS is 20B), so the ladder goes down, not up."],
    ),
}

#: short-prompt categories (the multi-object world's facts; no glyphs, counts or formats)
SHORT_CATEGORIES = "single_object,color,shape,size,position,relation,background"


@dataclass
class Settings:
    seeds: list[int]
    runs: Path
    out: Path
    doc: Path
    img: Path
    overrides: list[str]
    dense_prompts: int
    short_prompts: int
    sweep_prompts: int
    eval_steps: int | None
    dry_run: bool
    smoke: bool
    jobs: int = 1
    commands: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# running commands


def lensforge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from lensforge.cli import main; sys.exit(main())", *args]


def shown(args: list[str]) -> str:
    """The command as a person would type it in the repo root: paths under it relative, and a run of a
    folder's checkpoints as the shell glob ``…/checkpoints/step-*.ckpt`` (they sort in step order)."""
    words: list[str] = []
    run_of: str | None = None
    for a in args:
        key, eq, value = a.partition("=") if not a.startswith("-") and "=" in a else ("", "", a)
        if value.startswith(str(REPO) + os.sep):
            a = key + eq + os.path.relpath(value, REPO)
        p = Path(a)
        if p.suffix == ".ckpt" and p.parent.name == "checkpoints" and p.name.startswith("step-"):
            if run_of == str(p.parent):
                continue
            run_of = str(p.parent)
            words.append(shlex.quote(run_of) + "/step-*.ckpt")
            continue
        run_of = None
        words.append(shlex.quote(a))
    return "lensforge " + " ".join(words)


def record(args: list[str], st: Settings) -> None:
    """Note a command for the doc's Commands section (in plan order, whether it runs or is skipped)."""
    st.commands.append(shown(args))


def execute(args: list[str], st: Settings, log: Path | None = None) -> None:
    print(("[dry-run] " if st.dry_run else "$ ") + shown(args), flush=True)
    if st.dry_run:
        return
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            rc = subprocess.call(lensforge_cmd(*args), cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    else:
        rc = subprocess.call(lensforge_cmd(*args), cwd=REPO, env=env)
    print(f"  ({time.time() - t0:.0f} s, exit {rc}) {args[0]} " + (log.stem if log is not None else ""), flush=True)
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {shown(args)}" + (f"; log: {log}" if log else ""))


def in_parallel(tasks: list[Callable[[], None]], jobs: int) -> None:
    """Run the thunks ``tasks`` (each starts one subprocess), ``jobs`` at a time, in order of the list.

    The first failure stops the queue: commands not yet started are dropped, running ones finish (each
    is resumable), then the failure is raised.
    """
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            t()
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(t) for t in tasks]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            pool.shutdown(wait=True, cancel_futures=True)
            raise failed[0].exception()


# ---------------------------------------------------------------------------------------------
# training


def recipe_path(stem: str) -> Path:
    return RECIPES / f"{stem}.yaml"


def load(stem: str, overrides: list[str]) -> Any:
    from lensforge.recipe import load_recipe

    return load_recipe(str(recipe_path(stem)), overrides).config


def run_dir(stem: str, seed: int, st: Settings) -> Path:
    return st.runs / f"{stem}_s{seed}"


def fit_overrides(stem: str, seed: int, st: Settings) -> list[str]:
    return [f"seed={seed}", f"output_dir={run_dir(stem, seed, st)}", *st.overrides]


def finished(stem: str, seed: int, st: Settings) -> bool:
    summary = run_dir(stem, seed, st) / "summary.json"
    if not summary.is_file():
        return False
    cfg = load(stem, fit_overrides(stem, seed, st))
    return int(json.loads(summary.read_text()).get("global_step", -1)) >= int(cfg.trainer.max_steps)


def train(stem: str, seed: int, st: Settings) -> Callable[[], None] | None:
    """Plan one arm's fit: record it, and return the thunk that runs it (None: the run is finished)."""
    args = ["fit", str(recipe_path(stem).relative_to(REPO)), *fit_overrides(stem, seed, st)]
    record(args, st)
    if finished(stem, seed, st):
        print(f"= {stem} seed {seed}: finished run at {run_dir(stem, seed, st)}, skipped", flush=True)
        return None
    return lambda: execute(args, st, log=st.out / "logs" / f"fit_{stem}_s{seed}.log")


def checkpoints(stem: str, seed: int, st: Settings) -> list[Path]:
    """The checkpoints a finished run keeps (every ``checkpoint.every_n_steps`` and the last step)."""
    cfg = load(stem, fit_overrides(stem, seed, st))
    every, last = int(cfg.checkpoint.every_n_steps), int(cfg.trainer.max_steps)
    steps = sorted({*range(every, last + 1, every), last}) if every > 0 else [last]
    steps = steps[-int(cfg.checkpoint.keep_last):]
    paths = [run_dir(stem, seed, st) / "checkpoints" / f"step-{s:07d}.ckpt" for s in steps]
    return paths if st.dry_run else [p for p in paths if p.is_file()]


# ---------------------------------------------------------------------------------------------
# evaluation


def world_args(cfg: Any) -> list[str]:
    """``--world KEY=VALUE …`` of the arms' shared world for ``lensforge data prompts``."""
    w = cfg.data.source.config
    out = []
    for k in ("shapes", "colors", "sizes", "backgrounds"):
        out.append(f"{k}=[{','.join(getattr(w, k))}]")
    out += [f"min_objects={w.min_objects}", f"max_objects={w.max_objects}"]
    return out


def short_prompt_file(st: Settings) -> Path:
    path = st.out / "prompts" / f"short_{st.short_prompts}.jsonl"
    args = ["data", "prompts", f"synthetic:{st.short_prompts}", str(path), "--seed", "1",
            "--categories", SHORT_CATEGORIES, "--world", *world_args(load("baseline", st.overrides))]
    if shown(args) in st.commands:
        return path
    record(args, st)  # rows without their own size are sampled at the recipe's 64x64
    if not path.exists():
        if not st.dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
        execute(args, st)
    return path


def suite_dir(ab: Ablation, suite: str, seed: int, st: Settings, every: bool = False) -> Path:
    """Where an eval writes. ``every``: the dense eval of ``all``, one eval of every arm of every ablation
    (``eval/dense_s<seed>``); one ablation's own evals (dense included) go under ``eval/<name>/``, so running
    one ablation never overwrites what ``all`` measured."""
    return st.out / "eval" / (f"dense_s{seed}" if every and suite == "dense" else f"{ab.name}/{suite}_s{seed}")


def results_file(ab: Ablation, suite: str, seed: int, st: Settings) -> Path | None:
    """The newest results.json holding ``ab``'s ``suite`` for ``seed`` (for dense: its own eval or that of ``all``)."""
    found = [d / "results.json" for d in {suite_dir(ab, suite, seed, st), suite_dir(ab, suite, seed, st, every=True)}
             if (d / "results.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def eval_targets(ab: Ablation | list[Ablation], seed: int, suite: str, st: Settings) -> list[str]:
    if suite == "dense":  # every kept checkpoint: the learning curves; the baseline arm first (its recipe picks the prompts)
        abls = ab if isinstance(ab, list) else [ab]
        stems = list(dict.fromkeys(s for a in abls for s in a.arms.values()))
        return [str(c) for stem in stems for c in checkpoints(stem, seed, st)]
    ab = ab[0] if isinstance(ab, list) else ab
    if suite == "ar_sweep":  # the fixed-size arm first: the sweep is built around its 64-px base
        stems = sorted(ab.arms.values(), key=lambda s: s != "resolution_fixed")
        return [str(run_dir(s, seed, st)) for s in stems]
    return [str(run_dir(s, seed, st)) for s in ab.arms.values()]


def evaluate(abls: list[Ablation], seed: int, suite: str, st: Settings) -> Callable[[], None] | None:
    """Plan one eval: record it, and return the thunk that runs it (None: its results are up to date)."""
    ab = abls[0]
    out = suite_dir(ab, suite, seed, st, every=len(abls) == len(ABLATIONS))
    targets = eval_targets(abls, seed, suite, st)
    args = ["eval", *targets, "--out", str(out), "--no-mlflow", "--no-progress", "--seeds", "0"]
    if st.eval_steps:
        args += ["--steps", str(st.eval_steps)]
    if suite == "dense":
        args += ["--suite", "validation", "--num-prompts", str(st.dense_prompts)]
    elif suite in ("short", "short_reasoner"):
        args += ["--suite", str(short_prompt_file(st)), "--no-baseline"]
        if suite == "short_reasoner":
            args += ["--reasoner", "synthetic_world"]
    elif suite == "ar_sweep":
        args += ["--suite", "ar_sweep", "--num-prompts", str(st.sweep_prompts), "--no-baseline"]
    else:
        raise SystemExit(f"unknown suite {suite}")
    record(args, st)
    res = out / "results.json"
    if res.is_file() and not st.dry_run:
        have = [str(Path(h).resolve()) for h in json.loads(res.read_text())["settings"]["targets"].values()]

        def done(t: str) -> bool:  # a run folder is reported as its newest checkpoint
            r = str(Path(t).resolve())
            newest = max((c.stat().st_mtime for c in Path(t).glob("**/*.ckpt")), default=0.0) if Path(t).is_dir() \
                else Path(t).stat().st_mtime
            return any(h == r or h.startswith(r + os.sep) for h in have) and newest < res.stat().st_mtime

        if targets and all(done(t) for t in targets):
            print(f"= eval {out.relative_to(st.out / 'eval')} seed {seed}: done at {out}, skipped", flush=True)
            return None
    return lambda: execute(args, st, log=st.out / "logs" / f"eval_{'_'.join(out.relative_to(st.out / 'eval').parts)}.log")


# ---------------------------------------------------------------------------------------------
# collecting


def arm_of(path: str, ab: Ablation) -> tuple[str, int | None] | None:
    """A target's path -> (arm label, checkpoint step or None for a run folder); None if not an arm of ``ab``.

    Run folders are ``<work>/<recipe stem>_s<seed>``, checkpoints ``<run folder>/checkpoints/step-N.ckpt``.
    """
    p = Path(path)
    run, step = (p.parent.parent.name, int(p.stem.split("-")[1])) if p.suffix == ".ckpt" else (p.name, None)
    stem = run.rsplit("_s", 1)[0]
    for label, s in ab.arms.items():
        if s == stem:
            return label, step
    return None


def collect(ab: Ablation, st: Settings) -> dict[str, Any]:
    """``{suite: {arm: {seed: value}}}``, curves ``{arm: {seed: {step: value}}}``, attributes, wall times."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    attrs: dict[str, dict[str, dict[int, float]]] = {}
    curves: dict[str, dict[int, dict[int, float]]] = {}
    images: dict[str, list[dict[str, Any]]] = {}
    baseline: dict[str, float] = {}
    for seed in st.seeds:
        for suite in ab.suites:
            res = results_file(ab, suite, seed, st)
            if res is None:
                continue
            data = json.loads(res.read_text())
            paths = data["settings"]["targets"]
            final = {}
            for target, summ in data["summary"].items():
                if target in ("untrained", "blank", "uniform noise"):
                    baseline[f"{suite}/{target}"] = float(summ["reward"])
                    continue
                who = arm_of(paths[target], ab) if target in paths else None
                if who is None:
                    continue
                arm, step = who
                # only the dense suite scores every checkpoint; the other suites name a run folder, which eval
                # reports as its newest checkpoint: that must not land on the dense curve
                if step is not None and suite == "dense":
                    curves.setdefault(arm, {}).setdefault(seed, {})[step] = float(summ["reward"])
                    if step >= final.get(arm, (-1, None))[0]:
                        final[arm] = (step, target, summ)
                else:
                    final[arm] = (0, target, summ)
            for arm, (_, target, summ) in final.items():
                table.setdefault(suite, {}).setdefault(arm, {})[seed] = float(summ["reward"])
                if suite == "dense":
                    for k, v in summ.get("attributes", {}).items():
                        attrs.setdefault(k, {}).setdefault(arm, {})[seed] = float(v)
                if seed == st.seeds[0]:
                    images.setdefault(suite, [])
                    images[suite] += [dict(im, arm=arm, folder=str(res.parent)) for im in data["images"]
                                      if im["target"] == target and im.get("file")]
            if suite == "ar_sweep":
                sweep_split(ab, seed, data, table, st)
    for arm, per_seed in curves.items():  # area under the learning curve: how fast an arm gets there
        for seed, c in per_seed.items():
            if len(c) > 1:
                table.setdefault("dense_curve", {}).setdefault(arm, {})[seed] = sum(c.values()) / len(c)
    walls: dict[str, list[float]] = {}
    for arm, stem in ab.arms.items():
        for seed in st.seeds:
            s = run_dir(stem, seed, st) / "summary.json"
            if s.is_file():
                walls.setdefault(arm, []).append(float(json.loads(s.read_text()).get("wall_seconds", 0.0)))
    return {"table": table, "attrs": attrs, "curves": curves, "images": images, "baseline": baseline, "walls": walls}


def trained_sizes(stem: str, st: Settings) -> set[tuple[int, int]]:
    from lensforge.data.resolution import ResolutionPolicy

    return ResolutionPolicy(load(stem, st.overrides).data.resolution).sizes


def sweep_split(ab: Ablation, seed: int, data: dict[str, Any], table: dict, st: Settings) -> None:
    """ar_sweep: mean reward per arm on the sizes no arm trained on, and on those only `mixed` trained on."""
    union: set[tuple[int, int]] = set()
    for stem in ab.arms.values():
        union |= trained_sizes(stem, st)
    fixed = trained_sizes(ab.arms["fixed"], st)
    paths = data["settings"]["targets"]
    for target in data["summary"]:
        if target not in paths:
            continue
        who = arm_of(paths[target], ab)
        if who is None:
            continue
        arm = who[0]
        unseen = [im["reward"] for im in data["images"] if im["target"] == target and tuple(im["size"]) not in union
                  and im.get("reward") is not None]
        mixed_only = [im["reward"] for im in data["images"] if im["target"] == target
                      and tuple(im["size"]) in union - fixed and im.get("reward") is not None]
        for key, vals in (("ar_sweep_unseen", unseen), ("ar_sweep_mixed_sizes", mixed_only)):
            if vals:
                table.setdefault(key, {}).setdefault(arm, {})[seed] = sum(vals) / len(vals)


# ---------------------------------------------------------------------------------------------
# the doc


def stats(vals: dict[int, float]) -> tuple[float, float]:
    v = list(vals.values())
    return sum(v) / len(v), (max(v) - min(v)) if len(v) > 1 else float("nan")


def fmt(vals: dict[int, float] | None) -> str:
    if not vals:
        return "—"
    m, spread = stats(vals)
    seeds = " / ".join(f"{vals[s]:.3f}" for s in sorted(vals))
    return f"**{m:.3f}**" + (f" ± {spread / 2:.3f} ({seeds})" if len(vals) > 1 else "")


def verdict(ab: Ablation, table: dict[str, dict[str, dict[int, float]]], suite: str | None = None) -> str:
    suite = suite or ab.headline
    rows = table.get(suite, {})
    best = next(iter(ab.arms))
    if best not in rows or len(rows) < 2:
        return "Not measured yet."
    mb, sb = stats(rows[best])
    parts = []
    agree = []
    for arm, vals in rows.items():
        if arm == best:
            continue
        m, s = stats(vals)
        diff = mb - m
        spread = max(x for x in (sb, s) if x == x) if (sb == sb or s == s) else float("nan")
        if spread != spread:
            strength = "one training seed: no spread to compare with"
            agree.append(None if diff == 0 else diff > 0)
        elif abs(diff) <= spread:
            strength = f"within the seed spread ({spread:.3f}): no measurable difference"
            agree.append(None)
        else:
            k = abs(diff) / spread if spread > 0 else float("inf")
            strength = f"{k:.1f}x the seed spread ({spread:.3f})"
            agree.append(diff > 0)
        parts.append(f"`{best}` − `{arm}` = {diff:+.3f} ({strength})")
    ups, downs = any(a is True for a in agree), any(a is False for a in agree)
    if ups and downs:
        head = "**Mixed**: the claimed-better arm wins against some arms and loses against others"
    elif ups:
        head = "**Agrees with Lens's claim**" if all(a is True for a in agree) else "**Partly agrees with Lens's claim**"
    elif downs:
        head = "**Disagrees with Lens's claim**" if all(a is False for a in agree) else \
            "**Partly disagrees with Lens's claim**"
    else:
        head = "**Inconclusive** (no difference beyond the seed spread)"
    return f"{head} on `{suite}`: " + "; ".join(parts) + "."


def plot_curves(ab: Ablation, curves: dict[str, dict[int, dict[int, float]]], path: Path) -> bool:
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for arm in ab.arms:
        per_seed = curves.get(arm)
        if not per_seed:
            continue
        steps = sorted({s for c in per_seed.values() for s in c})
        mean = [sum(c[s] for c in per_seed.values() if s in c) / sum(1 for c in per_seed.values() if s in c) for s in steps]
        lo = [min(c[s] for c in per_seed.values() if s in c) for s in steps]
        hi = [max(c[s] for c in per_seed.values() if s in c) for s in steps]
        (line,) = ax.plot(steps, mean, marker="o", label=arm)
        if len(per_seed) > 1:
            ax.fill_between(steps, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("verifier score (dense prompts)")
    ax.set_title(f"{ab.name}: learning curves (mean, min-max over seeds)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def make_grid(ab: Ablation, images: list[dict[str, Any]], path: Path, n: int = 8) -> bool:
    """One row per arm: its first ``n`` images of the suite (same prompts and sampler seeds in each column)."""
    from PIL import Image

    from lensforge.sampling.sampler import labelled_grid

    mixed = bool(images and images[0].get("size") and any(im["size"] != images[0]["size"] for im in images))
    if mixed:
        first = images[0]["id"]  # ar_sweep: the first prompt at every size, narrow to wide
        images = sorted((im for im in images if im["id"] == first), key=lambda im: (im["size"][1] / im["size"][0],
                                                                                     im["size"][0] * im["size"][1]))
        n = 12
    rows = []
    for arm in ab.arms:
        files = [Path(im["folder"]) / im["file"] for im in images if im["arm"] == arm][:n]
        tiles = [Image.open(p).convert("RGB") for p in files if p.is_file()]
        if tiles:
            rows.append((arm, tiles))
    if not rows:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # one scale for every size (sizes stay comparable) when the suite mixes sizes
    labelled_grid(rows, cell=96, label_w=90, pad=4, common_scale=mixed).save(path)
    return True

SUITE_TITLES = {
    "dense": "dense prompts (validation)", "short": "short prompts", "short_reasoner": "short prompts + synthetic_world reasoner",
    "ar_sweep": "ar_sweep (all cells)", "ar_sweep_unseen": "ar_sweep: sizes no arm trained on",
    "ar_sweep_mixed_sizes": "ar_sweep: sizes only mixed/buckets trained on",
    "dense_curve": "dense prompts, mean over the checkpoints (convergence)",
}


def machine() -> str:
    import torch

    return (f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()} {platform.release()}), "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def kept_readings(doc: Path) -> dict[str, list[str]]:
    """The hand-written ``<!-- reading:NAME … -->`` … ``<!-- /reading -->`` blocks of an existing doc, by ablation."""
    out: dict[str, list[str]] = {}
    name = None
    for line in doc.read_text().splitlines() if doc.is_file() else []:
        if line.startswith("<!-- reading:"):
            name = line[len("<!-- reading:"):].split()[0].rstrip("->")
            out[name] = []
        elif line.startswith("<!-- /reading"):
            name = None
        elif name is not None:
            out[name].append(line)
    return out


def write_doc(names: list[str], st: Settings) -> Path:
    rel = os.path.relpath(st.img, st.doc.parent)
    readings = kept_readings(st.doc)
    base_cfg = load("baseline", st.overrides)
    lines = [
        "# Lens's findings at toy scale: ablations",
        "",
        f"Written by `python tools/ablations.py {' '.join(names) if len(names) < len(ABLATIONS) else 'all'} "
        f"--seeds {','.join(map(str, st.seeds))}`" + (" **(smoke mode: a few steps an arm; the numbers mean nothing)**" if st.smoke else "")
        + f" on {_dt.date.today().isoformat()}; machine: {machine()}.",
        "",
        "Every arm is a recipe under `recipes/ablations/` that changes one thing against `baseline.yaml`: the tiny "
        "pre-training recipe (4-block width-96 `lens_mmdit`, `tiny_ae`, MiniLM) on the **multi-object world** "
        "(`recipes/ablations/_base/multi_world.yaml`: 1-3 objects of 4 colours x 3 shapes x 2 sizes, relations, flat "
        "and gradient backgrounds, a glyph word in one scene of five), 12 images a step, "
        f"{base_cfg.trainer.max_steps} steps. Scores are the synthetic world's verifier (0 = noise, 1 = every "
        f"stated fact drawn), {st.eval_steps or base_cfg.sampling.steps} sampler steps, CFG {base_cfg.sampling.guidance_scale:g}, "
        "EMA weights, sampler seed 0; the spread is over training "
        "seeds (`seed=`; the world and its images are the same for every seed). Table cells: **mean** ± half the "
        "max-min spread (each seed's value).",
        "",
        "<!-- reading:overview (hand-written, kept when the tool rewrites this doc) -->",
        *readings.get("overview", []), "<!-- /reading -->",
        "",
    ]
    for name in ABLATIONS:  # every section: one ablation's run updates its own and keeps the others
        ab = ABLATIONS[name]
        c = collect(ab, st)
        lines += [f"## {ab.title}", "", f"Lens's claim: {ab.claim}.", ""]
        lines += [f"{n}" for n in ab.notes] + [""]
        suites = [s for s in ab.suites if s in c["table"]] + [s for s in ("ar_sweep_unseen", "ar_sweep_mixed_sizes",
                                                                          "dense_curve") if s in c["table"]]
        lines += [f"**Verdict** ({SUITE_TITLES.get(ab.headline, ab.headline)}): {verdict(ab, c['table'])}", ""]
        lines += [f"<!-- reading:{name} (hand-written, kept when the tool rewrites this doc) -->",
                  *readings.get(name, []), "<!-- /reading -->", ""]
        others = [s for s in suites if s != ab.headline and s != "ar_sweep"]
        if others:
            lines += ["On the other measures:", ""] + [f"- {SUITE_TITLES.get(s, s)}: {verdict(ab, c['table'], s)}"
                                                       for s in others] + [""]
        if suites:
            lines += ["| arm | recipe | " + " | ".join(SUITE_TITLES.get(s, s) for s in suites) + " | train wall (s) |",
                      "|---|---|" + "---|" * len(suites) + "---|"]
            for arm, stem in ab.arms.items():
                walls = c["walls"].get(arm, [])
                wall = " / ".join(f"{w:.0f}" for w in walls) if walls else "—"
                lines.append(f"| `{arm}` | `{stem}.yaml` | " + " | ".join(fmt(c["table"][s].get(arm)) for s in suites)
                             + f" | {wall} |")
            base = {k: v for k, v in c["baseline"].items()}
            if base:
                lines += ["", "Noise baseline (dense prompts, seed " + str(st.seeds[0]) + "): " + ", ".join(
                    f"{k.split('/', 1)[1]} {v:.3f}" for k, v in base.items() if k.startswith("dense/")) + "."]
            lines.append("")
        if c["attrs"]:
            lines += ["Dense prompts, per attribute:", "", "| attribute | " + " | ".join(f"`{a}`" for a in ab.arms) + " |",
                      "|---|" + "---|" * len(ab.arms)]
            for k in sorted(c["attrs"]):
                lines.append(f"| {k} | " + " | ".join(fmt(c["attrs"][k].get(a)) for a in ab.arms) + " |")
            lines.append("")
        curve = st.img / f"curves_{name}.png"
        if plot_curves(ab, c["curves"], curve):
            lines += [f"![learning curves, {name}]({rel}/{curve.name})", ""]
        if "ar_sweep" in ab.suites and not st.dry_run:
            import shutil

            src = suite_dir(ab, "ar_sweep", st.seeds[0], st)
            for label, stem in ab.arms.items():
                hm = src / f"ar_heatmap_{stem}_s{st.seeds[0]}.png"
                if hm.is_file():
                    st.img.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(hm, st.img / f"ar_heatmap_{name}_{label}.png")
                    lines += [f"`{label}`, ar_sweep (seed {st.seeds[0]}; trained sizes marked for `fixed` only): "
                              f"![ar_sweep {label}]({rel}/ar_heatmap_{name}_{label}.png)", ""]
        for suite in ("dense", "short", "ar_sweep"):
            g = st.img / f"grid_{name}_{suite}.png"
            if make_grid(ab, c["images"].get(suite, []), g):
                lines += [f"Samples, {SUITE_TITLES[suite]} (seed {st.seeds[0]}; one row per arm, same prompt and "
                          f"sampler seed per column): ![grid {name} {suite}]({rel}/{g.name})", ""]
    lines += ["## Commands", ""]
    if len(names) < len(ABLATIONS):
        lines += [f"Of the last run (`{' '.join(names)}`); the other sections come from earlier runs. "
                  "`python tools/ablations.py all --dry-run` lists every command.", ""]
    lines += ["```bash"] + list(dict.fromkeys(st.commands)) + ["```", ""]
    st.doc.parent.mkdir(parents=True, exist_ok=True)
    st.doc.write_text("\n".join(lines))
    return st.doc


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="captions | resolutions | encoder | all")
    p.add_argument("--seeds", default="0,1", help="training seeds (default 0,1)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--smoke", action="store_true",
                   help="8 steps an arm, 4 prompts, 4 sampler steps, into a temporary folder (not docs/)")
    p.add_argument("--work", default=None, help="runs and evals go here (default runs/ablations; smoke: a temp folder)")
    p.add_argument("--doc", default=None, help="the doc to write (default docs/ablations.md; smoke: <work>/ablations.md)")
    p.add_argument("--dense-prompts", type=int, default=32)
    p.add_argument("--short-prompts", type=int, default=56)
    p.add_argument("--sweep-prompts", type=int, default=8)
    p.add_argument("--no-doc", action="store_true", help="train and evaluate only")
    p.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4),
                   help="commands side by side, one core each (default: min(cores, 4)); figures do not depend on it")
    p.add_argument("overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    names = list(ABLATIONS) if args.name == "all" else [args.name]
    if any(n not in ABLATIONS for n in names):
        p.error(f"unknown ablation '{args.name}': choose {', '.join(ABLATIONS)} or all")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = list(args.overrides) + [e for e in extra if "=" in e and not e.startswith("-")]
    if args.smoke:
        work = Path(args.work or tempfile.mkdtemp(prefix="ablations_smoke_")).resolve()
        overrides = ["trainer.max_steps=8", "checkpoint.every_n_steps=4", "sampling.num_prompts=2",
                     "sampling.steps=2", "optim.warmup_steps=2", *overrides]
        st = Settings(seeds, work / "runs", work, Path(args.doc or work / "ablations.md").resolve(), work / "img", overrides,
                      4, 7, 1, 4, args.dry_run, True)
    else:
        work = Path(args.work).resolve() if args.work else REPO / "runs" / "ablations"
        doc = Path(args.doc).resolve() if args.doc else REPO / "docs" / "ablations.md"
        st = Settings(seeds, work, work, doc, doc.parent / "img" / "ablations", overrides, args.dense_prompts,
                      args.short_prompts, args.sweep_prompts, None, args.dry_run, False)
    print(f"ablations {names}, seeds {seeds}, work folder {st.out}" + (" (smoke)" if st.smoke else ""), flush=True)
    t0 = time.time()
    st.jobs = max(1, int(args.jobs))
    stems = list(dict.fromkeys(stem for n in names for stem in ABLATIONS[n].arms.values()))
    jobs = 1 if st.dry_run else st.jobs
    # plan in a fixed order (the doc's Commands), run side by side
    fits = [train(stem, seed, st) for seed in seeds for stem in stems]
    in_parallel([t for t in fits if t is not None], jobs)
    if any(s in ("short", "short_reasoner") for n in names for s in ABLATIONS[n].suites):
        short_prompt_file(st)  # once, before the evals that share it
    evals = []
    for seed in seeds:
        evals.append(evaluate([ABLATIONS[n] for n in names], seed, "dense", st))
        evals += [evaluate([ABLATIONS[n]], seed, suite, st) for n in names for suite in ABLATIONS[n].suites
                  if suite != "dense"]
    in_parallel([t for t in evals if t is not None], jobs)
    if not st.dry_run and not args.no_doc:
        doc = write_doc(names, st)  # every ablation's section; those not run here from what earlier runs left
        print(f"wrote {doc} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
