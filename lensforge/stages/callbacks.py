"""Training callbacks of the stages: periodic validation sampling, scored by a reward plugin.

The prompts, the packed generation and the scoring are :mod:`lensforge.eval`'s (the ``validation``
suite, ``sampling.reward`` from the registry — the synthetic world's ``verifier`` by default), so the
numbers during training are the ones ``lensforge eval RUN`` reports.
"""

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


def validation_suite(recipe_cfg: Any, num_prompts: int | None = None, seed: int | None = None) -> Any:
    """The validation prompts as an eval suite: ``sampling.prompts`` (no scenes: generated, not scored) or
    the data source's held-out prompts with their scenes (:func:`lensforge.eval.suites.build_suite`).

    ``num_prompts`` / ``seed`` replace ``sampling.num_prompts`` / ``sampling.seed``. Image ``i`` is seeded
    with ``sampling.seed + i``. None when there is nothing to sample.
    """
    from lensforge.eval.suites import Suite, build_suite, expand

    sc = recipe_cfg.sampling
    n = sc.num_prompts if num_prompts is None else num_prompts
    s = sc.seed if seed is None else seed
    size = (int(sc.height), int(sc.width))
    if sc.prompts:
        rows = [{"id": f"prompt/{i:03d}", "prompt": p, "category": "prompts", "rubric": []} for i, p in enumerate(sc.prompts)]
        return Suite("validation", expand(rows, [s], size), "validation", notes=["sampling.prompts"])
    if n <= 0 or not callable(getattr(recipe_cfg.data.source.cls, "eval_prompts", None)):
        log.info("validation sampling: no sampling.prompts and data source '%s' has no eval_prompts; sampling off",
                 recipe_cfg.data.source.name)
        return None
    return build_suite("validation", recipe_cfg, num_prompts=n, seeds=[s], size=size, prompt_seed=s)


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
        self.suite: Any = None
        self.reward: Any = None
        self._prepared = False
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

    def _prepare(self) -> None:
        if self.suite is not None or self._prepared:
            return
        self._prepared = True
        self.suite = validation_suite(self.recipe_cfg)
        if self.suite is None:
            return
        self.reward = self.cfg.reward.build()
        problems = self.reward.check_rows([it.row for it in self.suite.items])
        if problems:
            log.info("validation sampling: reward '%s' cannot score these prompts (%s); images are saved unscored",
                     self.cfg.reward.name, problems[0])
            self.reward = None

    def sample(self, trainer: L.Trainer, pl_module: Any, step: int) -> float | None:
        from lensforge.eval.run import generate_images, score_images
        from lensforge.sampling.sampler import make_grid, save_images

        self.last_step = step
        if not (trainer.is_global_zero or self.all_ranks):
            return None
        self._prepare()
        if self.suite is None or not self.suite.items:
            return None
        items = self.suite.items
        prompts = [str(it.row["prompt"]) for it in items]
        dit = pl_module.sampling_dit()
        ctx = trainer.precision_plugin.forward_context() if hasattr(trainer, "precision_plugin") else nullcontext()
        with ctx:
            images = generate_images(dit, pl_module.vae, pl_module.text_encoder, items, prompts, steps=self.cfg.steps,
                                     guidance_scale=self.cfg.guidance_scale, batch_size=len(items))
        if not trainer.is_global_zero:
            return None
        scores: list[dict[str, float] | None] = [None] * len(items)
        if self.reward is not None:
            for i, sc in enumerate(score_images(self.reward, items, images, prompts)):
                if sc.failure is None:
                    scores[i] = dict(sc.details.get("attributes") or {"overall": sc.reward, **sc.items})
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
            "reward": self.cfg.reward.name, "verifier_score_mean": mean, "verifier_attribute_means": means,
            "samples": [{"file": f"{i:02d}.png", "prompt": it.row["prompt"], "key": it.row["id"], "seed": it.seed,
                         "score": sc} for i, (it, sc) in enumerate(zip(items, scores))],
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


__all__ = ["ValidationSampling", "mean_scores", "validation_suite"]
