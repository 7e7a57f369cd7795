"""Training callbacks of the stages: periodic validation sampling scored by the data's verifier."""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lensforge.fileio import atomic_path, atomic_write_text

log = logging.getLogger("lensforge.sampling")


def eval_items(recipe_cfg: Any, num_prompts: int | None = None, seed: int | None = None) -> list[dict[str, Any]]:
    """The validation prompts: ``sampling.prompts`` or the data source's ``eval_prompts`` (with scenes).

    ``num_prompts`` / ``seed`` replace ``sampling.num_prompts`` / ``sampling.seed`` (scoring more
    held-out prompts after training, ``tools/eval_run.py``).
    Returns ``[{"prompt": str, "scene": dict | None, "key": str}]``.
    """
    sc = recipe_cfg.sampling
    n = sc.num_prompts if num_prompts is None else num_prompts
    if sc.prompts:
        return [{"prompt": p, "scene": None, "key": f"prompt/{i:03d}"} for i, p in enumerate(sc.prompts)]
    source = recipe_cfg.data.source.build()
    fn = getattr(source, "eval_prompts", None)
    if not callable(fn) or n <= 0:
        log.info("validation sampling: no sampling.prompts and data source '%s' has no eval_prompts; sampling off",
                 recipe_cfg.data.source.name)
        return []
    field = recipe_cfg.data.captions.field if recipe_cfg.data.captions.field in ("dense", "short") else "dense"
    items = []
    for i, ep in enumerate(fn(n, sc.seed if seed is None else seed, field)):
        items.append({"prompt": ep.prompt, "scene": getattr(ep, "scene", None), "key": getattr(ep, "key", f"eval/{i}")})
    return items


def verifier_scores(images: list[torch.Tensor], scenes: list[Any]) -> list[dict[str, float] | None]:
    """Per-attribute scores of each image against its scene (:func:`lensforge.data.verifier.verify`).

    Each entry is ``{"overall": …, "color": …, "shape": …, …}``, or None for a prompt without a scene.
    """
    if not any(s is not None for s in scenes):
        return [None] * len(images)
    from lensforge.data.verifier import verify

    out: list[dict[str, float] | None] = []
    for im, sc in zip(images, scenes):
        if sc is None:
            out.append(None)
            continue
        res = verify(im, sc)
        out.append(_score_of(res))
    return out


def _score_of(res: Any) -> dict[str, float]:
    if isinstance(res, (int, float)):
        return {"overall": float(res)}
    return {k: float(v) for k, v in dict(res).items() if isinstance(v, (int, float))}


def mean_scores(scores: list[dict[str, float] | None]) -> dict[str, float]:
    """Mean of each attribute over the prompts that have it."""
    acc: dict[str, list[float]] = {}
    for sc in scores:
        for k, v in (sc or {}).items():
            acc.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}


class ValidationSampling(Callback):
    """Every ``sampling.every_n_steps`` (and at the end): sample the eval prompts with the EMA DiT.

    Writes ``<output_dir>/samples/step_XXXXXXX/NN.png``, a grid ``samples/step_XXXXXXX.png`` and
    ``samples/step_XXXXXXX/results.json`` (prompts, seeds, verifier scores); logs the grid and
    ``val/verifier_score`` (mean ``overall`` over prompts with a scene) and the per-attribute means
    (``val/verifier_color``, ``val/verifier_shape`` …) to MLflow. Under FSDP2 every rank
    joins the forward passes (the weights are sharded); otherwise only rank 0 samples.
    """

    def __init__(self, recipe_cfg: Any, out_dir: str | os.PathLike, *, tracker: Any = None, all_ranks: bool = False):
        self.cfg = recipe_cfg.sampling
        self.recipe_cfg = recipe_cfg
        self.out_dir = Path(out_dir)
        self.tracker = tracker
        self.all_ranks = all_ranks
        self.items: list[dict[str, Any]] | None = None
        self.last_step: int | None = None
        self.last_score: float | None = None
        self.history: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.cfg.every_n_steps
        step = trainer.global_step
        if n and step > 0 and step % n == 0 and step != self.last_step:
            self.sample(trainer, pl_module, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.global_step != self.last_step:
            self.sample(trainer, pl_module, trainer.global_step)

    def sample(self, trainer: L.Trainer, pl_module: Any, step: int) -> float | None:
        from lensforge.sampling.sampler import generate, make_grid, save_images

        self.last_step = step
        if not (trainer.is_global_zero or self.all_ranks):
            return None
        if self.items is None:
            self.items = eval_items(self.recipe_cfg)
        if not self.items:
            return None
        prompts = [it["prompt"] for it in self.items]
        seeds = [self.cfg.seed + i for i in range(len(prompts))]
        sizes = [(self.cfg.height, self.cfg.width)] * len(prompts)
        dit = pl_module.sampling_dit()
        ctx = trainer.precision_plugin.forward_context() if hasattr(trainer, "precision_plugin") else nullcontext()
        with ctx:
            images = generate(dit, pl_module.vae, pl_module.text_encoder, prompts, sizes, steps=self.cfg.steps,
                              guidance_scale=self.cfg.guidance_scale, seeds=seeds,
                              progress=bool(self.recipe_cfg.trainer.progress_bar))
        if not trainer.is_global_zero:
            return None
        scores = verifier_scores(images, [it["scene"] for it in self.items])
        folder = self.out_dir / f"step_{step:07d}"
        save_images(images, folder, [f"{i:02d}" for i in range(len(images))])
        grid = make_grid(images)
        grid_path = self.out_dir / f"step_{step:07d}.png"
        with atomic_path(grid_path) as tmp:
            grid.save(tmp, format="PNG")
        means = mean_scores(scores)
        mean = means.get("overall")
        results = {
            "step": step, "ema": pl_module.sampling_dit() is not pl_module.dit, "steps": self.cfg.steps,
            "guidance_scale": self.cfg.guidance_scale, "size": [self.cfg.height, self.cfg.width],
            "verifier_score_mean": mean, "verifier_attribute_means": means,
            "samples": [{"file": f"{i:02d}.png", "prompt": it["prompt"], "key": it["key"], "seed": sd, "score": sc}
                        for i, (it, sd, sc) in enumerate(zip(self.items, seeds, scores))],
        }
        atomic_write_text(folder / "results.json", json.dumps(results, indent=1))
        self.last_score = mean
        self.history.append({"step": step, "verifier_score": mean, "verifier": means, "grid": str(grid_path)})
        log.info("validation samples at step %d -> %s%s", step, grid_path,
                 f" (verifier score {mean:.3f})" if mean is not None else "")
        if self.tracker is not None:
            try:
                self.tracker.log_image(grid, f"samples/step_{step:07d}.png")
                self.tracker.log_text(json.dumps(results, indent=1), f"samples/step_{step:07d}.json")
                if means:
                    metrics = {"val/verifier_score": means["overall"]} if "overall" in means else {}
                    metrics.update({f"val/verifier_{k}": v for k, v in means.items() if k != "overall"})
                    self.tracker.log_metrics(metrics, step=step)
            except Exception as e:  # tracking trouble must not stop training
                log.warning("could not log samples to MLflow: %s", e)
        return mean

    def summary(self) -> dict[str, Any]:
        """Entries for the run's ``summary.json``: the last verifier score and every sampling round."""
        return {"verifier_score": self.last_score, "samples": self.history}


__all__ = ["ValidationSampling", "eval_items", "verifier_scores"]
