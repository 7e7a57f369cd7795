"""Evaluation outputs: ``results.json``, ``summary.md``, PNG plots, sample grids, MLflow records."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from lensforge.eval.run import TargetResult
from lensforge.eval.suites import Suite
from lensforge.fileio import atomic_path, atomic_write_text

log = logging.getLogger("lensforge.eval")


def _f(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def summary_tables(suite: Suite, results: Sequence[TargetResult]) -> str:
    """The markdown tables: targets (and baselines) side by side."""
    cols = [r.label + (" (baseline)" if r.baseline else "") for r in results]
    head = "| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    lines = [f"# Evaluation: suite `{suite.name}`", ""] + [f"- {n}" for n in suite.notes] + [""]
    rows = [("mean reward", [r.summary.get("reward") for r in results]),
            ("images scored / failed", None)]
    t = head + "| sampling | " + " | ".join(r.sampling or "—" for r in results) + " |\n"
    for name, vals in rows:
        if vals is None:
            t += f"| {name} | " + " | ".join(f"{r.summary['scored']} / {r.summary['failed']}" for r in results) + " |\n"
        else:
            t += f"| **{name}** | " + " | ".join(_f(v) for v in vals) + " |\n"
    if suite.kind == "geneval":
        tags = sorted({k for r in results for k in ((r.summary.get("geneval") or {}).get("tags") or {})})
        t += "| **GenEval overall (strict)** | " + " | ".join(_f((r.summary.get("geneval") or {}).get("overall")) for r in results) + " |\n"
        for tag in tags:
            t += f"| GenEval {tag} | " + " | ".join(_f(((r.summary.get("geneval") or {}).get("tags") or {}).get(tag)) for r in results) + " |\n"
    if suite.kind == "ar_sweep":
        t += "| reward on trained sizes | " + " | ".join(_f(r.summary.get("trained_sizes_reward")) for r in results) + " |\n"
        t += "| reward on unseen sizes | " + " | ".join(_f(r.summary.get("unseen_sizes_reward")) for r in results) + " |\n"
    lines += ["## Scores", "", t]
    cats = sorted({c for r in results for c in r.summary.get("categories", {})})
    if len(cats) > 1:
        t = head + "".join(f"| {c} | " + " | ".join(_f(r.summary.get("categories", {}).get(c)) for r in results) + " |\n"
                           for c in cats)
        lines += ["## Mean reward per category", "", t]
    attrs = sorted({a for r in results for a in r.summary.get("attributes", {})})
    if attrs:
        t = head + "".join(f"| {a} | " + " | ".join(_f(r.summary.get("attributes", {}).get(a)) for r in results) + " |\n"
                           for a in attrs)
        lines += ["## Mean score per attribute / check kind", "", t]
    if suite.kind == "ar_sweep":
        for r in results:
            if r.baseline:
                continue
            sizes = r.summary.get("sizes", {})
            t = "| ratio \\ base | " + " | ".join(f"{b}" for b in suite.bases) + " |\n|---|" + "---|" * len(suite.bases) + "\n"
            for ratio in suite.ratios:
                cells = []
                for b in suite.bases:
                    h, w = suite.grid[(ratio, b)]
                    mark = "*" if (h, w) in suite.trained_sizes else ""
                    cells.append(f"{_f(sizes.get(f'{h}x{w}'))} ({h}x{w}{mark})")
                t += f"| {ratio} | " + " | ".join(cells) + " |\n"
            lines += [f"## `{r.label}`: mean reward by aspect ratio (W:H) and base resolution", "",
                      "(* = a size training batches held)", "", t]
    if suite.kind == "validation":
        for r in results:
            conf = r.summary.get("shape_confusion") or {}
            if r.baseline or not conf:
                continue
            got = sorted({g for v in conf.values() for g in v})
            t = "| prompted \\ detected | " + " | ".join(got) + " |\n|---|" + "---|" * len(got) + "\n"
            t += "".join(f"| {s} | " + " | ".join(str(conf[s].get(g, 0)) for g in got) + " |\n" for s in conf)
            lines += [f"## `{r.label}`: shape confusion (largest object of the prompted colour)", "", t]
    return "\n".join(lines).rstrip() + "\n"


def plot_categories(suite: Suite, results: Sequence[TargetResult], path: Path) -> Path | None:
    """Bars: mean reward per category (or GenEval tag / attribute), one bar per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "categories"
    groups = sorted({c for r in results for c in r.summary.get(key, {})})
    if len(groups) <= 1:
        key = "attributes"
        groups = sorted({c for r in results for c in r.summary.get(key, {})})
    if not groups:
        return None
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups) + 2), 4))
    for i, r in enumerate(results):
        vals = [r.summary.get(key, {}).get(g) or 0.0 for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], vals, width, label=r.label, alpha=0.5 if r.baseline else 1.0)
    ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean reward" if key == "categories" else "mean score")
    ax.set_title(f"{suite.name}: per {'category' if key == 'categories' else 'attribute'}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_ar_heatmap(suite: Suite, result: TargetResult, path: Path) -> Path:
    """Heatmap of mean reward, aspect ratio × base resolution (trained sizes outlined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = result.summary.get("sizes", {})
    grid = np.full((len(suite.bases), len(suite.ratios)), np.nan)
    for j, ratio in enumerate(suite.ratios):
        for i, b in enumerate(suite.bases):
            h, w = suite.grid[(ratio, b)]
            v = sizes.get(f"{h}x{w}")
            grid[i, j] = np.nan if v is None else v
    fig, ax = plt.subplots(figsize=(1.0 * len(suite.ratios) + 2, 0.8 * len(suite.bases) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    for j, ratio in enumerate(suite.ratios):
        for i, b in enumerate(suite.bases):
            h, w = suite.grid[(ratio, b)]
            trained = (h, w) in suite.trained_sizes
            ax.text(j, i, ("*" if trained else "") + ("—" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"),
                    ha="center", va="center", color="white" if (np.isnan(grid[i, j]) or grid[i, j] < 0.6) else "black",
                    fontsize=8, fontweight="bold" if trained else "normal")
    ax.set_xticks(range(len(suite.ratios)))
    ax.set_xticklabels(suite.ratios)
    ax.set_yticks(range(len(suite.bases)))
    ax.set_yticklabels([f"{b}px" for b in suite.bases])
    ax.set_xlabel("aspect ratio (W:H)")
    ax.set_ylabel("base resolution")
    ax.set_title(f"{result.label}: mean reward (* = trained size)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_outputs(out: Path, suite: Suite, results: Sequence[TargetResult], settings: dict[str, Any], *,
                  save_images: bool = True, grid_images: int = 64) -> dict[str, Path]:
    """``results.json``, ``summary.md``, plots, per-target grids and images under ``out``."""
    from lensforge.sampling.sampler import make_grid
    from lensforge.sampling.sampler import save_images as _save

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    records = []
    for r in results:
        folder = out / "images" / _safe(r.label)
        names = [f"{i:04d}" for i in range(len(r.scored))]
        if save_images and r.scored:
            _save([s.image for s in r.scored], folder, names)
        if r.scored:
            grid = make_grid([s.image for s in r.scored[:grid_images]])
            gp = out / f"grid_{_safe(r.label)}.png"
            with atomic_path(gp) as tmp:
                grid.save(tmp, format="PNG")
            paths[f"grid {r.label}"] = gp
        for i, s in enumerate(r.scored):
            rec = {"target": r.label, "baseline": r.baseline, "item": s.item.key, "id": s.item.row.get("id"),
                   "category": s.item.row.get("category"), "prompt": s.item.row.get("prompt"), "seed": s.item.seed,
                   "size": list(s.item.size), "reward": None if math.isnan(s.reward) else s.reward, "items": s.items,
                   "failure": s.failure, "details": _plain(s.details)}
            if s.prompt != s.item.row.get("prompt"):
                rec["model_prompt"] = s.prompt
            if save_images:
                rec["file"] = str((folder / f"{names[i]}.png").relative_to(out))
            records.append(rec)
    doc = {"suite": suite.name, "kind": suite.kind, "notes": suite.notes, "settings": settings,
           "summary": {r.label: _plain(r.summary) for r in results}, "images": records}
    paths["results"] = atomic_write_text(out / "results.json", json.dumps(doc, indent=1))
    paths["summary"] = atomic_write_text(out / "summary.md", summary_tables(suite, results))
    p = plot_categories(suite, results, out / "categories.png")
    if p is not None:
        paths["categories plot"] = p
    if suite.kind == "ar_sweep":
        for r in results:
            if not r.baseline:
                paths[f"heatmap {r.label}"] = plot_ar_heatmap(suite, r, out / f"ar_heatmap_{_safe(r.label)}.png")
    return paths


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item") and callable(v.item):
        return v.item()
    return v


def flat_metrics(suite: Suite, summary: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics ``eval/<suite>/…`` of one target's summary."""
    m: dict[str, float] = {}
    pre = f"eval/{suite.name}"
    if summary.get("reward") is not None:
        m[f"{pre}/reward"] = float(summary["reward"])
    m[f"{pre}/failed"] = float(summary.get("failed", 0))
    for k, v in (summary.get("categories") or {}).items():
        m[f"{pre}/category/{k}"] = float(v)
    for k, v in (summary.get("attributes") or {}).items():
        m[f"{pre}/attribute/{k}"] = float(v)
    g = summary.get("geneval")
    if g:
        m[f"{pre}/geneval_overall"] = float(g["overall"])
        for k, v in g["tags"].items():
            m[f"{pre}/geneval/{k}"] = float(v)
    for k in ("trained_sizes_reward", "unseen_sizes_reward"):
        if summary.get(k) is not None:
            m[f"{pre}/{k}"] = float(summary[k])
    return {k.replace(" ", "_"): v for k, v in m.items()}


def log_to_mlflow(out: Path, suite: Suite, results: Sequence[TargetResult], targets: Sequence[Any],
                  artifacts: dict[str, Path], reward_stats: dict[str, float] | None = None) -> list[str]:
    """Log each target's figures to its training run's MLflow store (embedded stores), or to a new run in
    ``<out>/mlflow.db``; returns where each went. ``reward_stats`` (the reward plugin's counters for the
    whole eval: a judge's calls, latency, tokens) go with every target as ``eval/<suite>/reward_stats/…``."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    where = []
    by_label = {t.label: t for t in targets}
    fallback: tuple[Any, str] | None = None
    for r in results:
        if r.baseline:
            continue
        t = by_label.get(r.label)
        client, run_id = None, None
        if t is not None and t.run_dir is not None and (t.run_dir / "mlflow.db").is_file() and (t.run_dir / "mlflow_run_id").is_file():
            client = MlflowClient(f"sqlite:///{(t.run_dir / 'mlflow.db').resolve()}")
            run_id = (t.run_dir / "mlflow_run_id").read_text().strip()
            try:
                client.get_run(run_id)
            except Exception:  # noqa: BLE001 - a run id that is not in the store: use the eval run
                client, run_id = None, None
        if client is None:
            if fallback is None:
                c = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
                exp = c.get_experiment_by_name("lensforge-eval")
                exp_id = exp.experiment_id if exp else c.create_experiment(
                    "lensforge-eval", artifact_location=(out / "mlartifacts").resolve().as_uri())
                run = c.create_run(exp_id, run_name=f"eval-{suite.name}")
                fallback = (c, run.info.run_id)
                for name, p in artifacts.items():
                    if p.suffix in (".md", ".json", ".png") and p.stat().st_size < 20_000_000:
                        c.log_artifact(run.info.run_id, str(p), artifact_path=f"eval/{suite.name}")
            client, run_id = fallback
            where.append(f"{r.label}: {out / 'mlflow.db'} run {run_id}")
        else:
            where.append(f"{r.label}: {t.run_dir / 'mlflow.db'} run {run_id}")
            for name, p in artifacts.items():
                if p.suffix in (".md", ".json") or (p.suffix == ".png" and (r.label in name or "plot" in name)):
                    client.log_artifact(run_id, str(p), artifact_path=f"eval/{suite.name}")
        step = int(getattr(t, "step", None) or 0) if t is not None else 0
        ts = int(time.time() * 1000)
        shared = fallback is not None and client is fallback[0]  # one eval run for several targets: suffix the label
        flat = flat_metrics(suite, r.summary)
        flat.update({f"eval/{suite.name}/reward_stats/{k.replace(' ', '_')}": float(v) for k, v in (reward_stats or {}).items()})
        metrics = [Metric(f"{k}/{_safe(r.label)}" if shared else k, v, ts, step) for k, v in flat.items()]
        for i in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[i:i + 900])
    if fallback is not None:
        fallback[0].set_terminated(fallback[1], "FINISHED")
    return where


__all__ = ["flat_metrics", "log_to_mlflow", "plot_ar_heatmap", "plot_categories", "summary_tables", "write_outputs"]
