"""Pipelines: several stage recipes run in order, each starting from the previous one's output.

A **pipeline recipe** is a YAML file with a top-level ``pipeline:`` list (``lensforge fit`` and
``lensforge validate`` recognise it by that key)::

    name: tiny_lens
    output_dir: runs/${name}          # stage i writes to <output_dir>/<id> unless its entry sets output_dir
    tracking: {experiment: lensforge} # one parent MLflow run here, one nested run per stage
    pipeline:
      - recipe: pretrain.yaml         # a stage: a recipe file (relative to this one) …
      - recipe: rl.yaml               #   … init_from = the previous stage's output folder
        trainer: {max_steps: 100}     #   … plus any recipe keys layered on top of it
      - id: turbo                     # the stage's id (default: its stage plugin's name)
        extends: [distill.yaml]       # an inline stage is a recipe layer like any other

Each entry is a recipe **layer** written inside the pipeline file: ``recipe: X`` is ``extends: [X]``, the
other keys override X's, and ``extends`` paths are relative to the pipeline file. The pipeline sets each
stage's ``output_dir`` (``<output_dir>/<id>``), ``init_from`` (the previous stage's output; the first stage
keeps its own) and ``tracking`` (the pipeline's store and experiment) unless the entry sets
``output_dir``/``init_from`` itself. Command-line overrides go to every stage (``trainer.max_steps=10``),
to one stage (``rl.trainer.max_steps=10``) or to the pipeline (``name``, ``output_dir``, ``tracking.*``).

``lensforge validate`` loads every stage (schema, plugins, cross checks; ``--portable`` skips the machine
checks) and reports all problems of all stages at once; ``lensforge fit`` does the same and runs each
stage's preflight before the first one starts, then runs the stages through their own ``run``
(:mod:`lensforge.stages.harness`). Re-running the same command after a crash skips finished stages (their
``summary.json`` reached ``trainer.max_steps``) and resumes the one that was running from its newest
checkpoint (``resume: auto``), so a killed pipeline finishes with the weights of an uninterrupted one.
``<output_dir>/pipeline.json`` records each stage's state; a finished stage whose input checkpoint is no
longer what the stage before it ends with is refused (remove its folder to redo it).

This module imports no torch at import time (``lensforge validate`` stays fast).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensforge.errors import LensforgeError, Problem, RecipeError
from lensforge.recipe.schema import RecipeConfig, TrackingConfig

log = logging.getLogger("lensforge.pipeline")

PIPELINE_KEY = "pipeline"
STATE_FILE = "pipeline.json"
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(kw_only=True)
class PipelineConfig:
    """The pipeline file's own keys (besides ``pipeline``, the list of stages)."""

    name: str = "pipeline"
    """Name of the pipeline (its parent MLflow run)."""
    output_dir: str = "runs/${name}"
    """Folder of the pipeline: its state, log, MLflow store and one sub-folder per stage."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow of the parent run; every stage logs its nested run to the same store and experiment."""
    description: str = ""
    """Free text (recorded with the parent run)."""


@dataclass
class PipelineStage:
    """One validated stage of a pipeline."""

    index: int
    id: str
    recipe: Any  # lensforge.recipe.load.Recipe
    init_from_previous: bool  # init_from is the previous stage's output (set by the pipeline)

    @property
    def out(self) -> Path:
        return Path(self.recipe.config.output_dir).expanduser().resolve()


@dataclass
class Pipeline:
    """A validated pipeline recipe."""

    path: str
    config: PipelineConfig
    stages: list[PipelineStage]
    overrides: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.output_dir).expanduser().resolve()


# ------------------------------------------------------------------------------------------ loading


def is_pipeline_file(path: str | Path) -> bool:
    """Whether ``path`` is a YAML mapping with a top-level ``pipeline:`` key (read cheaply, no validation)."""
    import yaml

    p = Path(path)
    if not p.is_file() or p.suffix not in (".yaml", ".yml"):
        return False
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and PIPELINE_KEY in data


def _route_overrides(overrides: list[str], stage_ids: list[str]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """``(the pipeline's, every stage's, {stage id: its own})`` from ``key=value`` overrides."""
    own_keys = {f.name for f in dataclasses.fields(PipelineConfig)}
    mine: list[str] = []
    common: list[str] = []
    per: dict[str, list[str]] = {s: [] for s in stage_ids}
    for o in overrides:
        key = o.partition("=")[0].strip()
        head, _, rest = key.partition(".")
        if head in per and rest:
            per[head].append(o.strip()[len(head) + 1:])
        elif head in own_keys:
            mine.append(o)
        else:
            common.append(o)
    return mine, common, per


def _stage_layer(entry: Any, where: str, base: Path, shown: str, problems: list[Problem]) -> tuple[str | None, dict[str, Any]] | None:
    """``(declared id, recipe layer)`` of a stage entry (``recipe: X`` becomes ``extends: [X, …]``), None if broken."""
    if not isinstance(entry, dict):
        problems.append(Problem(where, f"a stage must be a mapping ({{recipe: FILE, …}}), got {entry!r}", shown))
        return None
    layer = copy.deepcopy(entry)
    sid = layer.pop("id", None)
    rec = layer.pop("recipe", None)
    ext = layer.pop("extends", [])
    ext = [ext] if isinstance(ext, str) else list(ext or [])
    if rec is not None:
        if not isinstance(rec, str):
            problems.append(Problem(f"{where}.recipe", f"expected a recipe file path, got {rec!r}", shown))
            return None
        target = base / rec
        if not target.is_file():
            problems.append(Problem(f"{where}.recipe", f"recipe '{rec}' not found (looked for {target})", shown))
            return None
        ext = [rec, *ext]
    if not ext and "stage" not in layer:
        problems.append(Problem(where, "a stage needs a recipe (recipe: FILE) or an inline recipe (extends: […], stage: …)",
                                shown))
        return None
    layer["extends"] = ext
    return (None if sid is None else str(sid)), layer


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Load and validate a pipeline recipe and every stage in it; raise :class:`RecipeError` listing every
    problem of every stage (each against the file that set the key; the pipeline file's keys as
    ``FILE (pipeline[i] ID)``)."""
    import yaml
    from omegaconf import OmegaConf

    from lensforge.recipe.load import load_recipe, plugin_paths
    from lensforge.recipe.loader import load_layers, merge, parse_overrides
    from lensforge.recipe.plugin_config import validate_dataclass

    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise RecipeError([Problem("", "pipeline file not found", shown)])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError([Problem("<yaml>", f"invalid YAML: {str(e).splitlines()[0]}", shown)]) from None
    problems: list[Problem] = []
    entries = raw.pop(PIPELINE_KEY, None)
    if "extends" in raw:
        problems.append(Problem("extends", "a pipeline file extends nothing; its stages do (recipe: / extends:)", shown))
        raw.pop("extends")
    if not isinstance(entries, list) or not entries:
        problems.append(Problem(PIPELINE_KEY, "must be a non-empty list of stages ({recipe: FILE, …} or inline recipes)",
                                shown))
        entries = []
    # 1. each stage's layer and id (declared, else its stage plugin's name, read without validating)
    layers: list[tuple[int, str, dict[str, Any]]] = []
    for i, entry in enumerate(entries):
        got = _stage_layer(entry, f"{PIPELINE_KEY}[{i}]", path.parent, shown, problems)
        if got is None:
            continue
        sid, layer = got
        if sid is None:
            merged = load_layers(path, [], plugin_paths(), inline=layer).data
            node = merged.get("stage")
            sid = str(node.get("name") if isinstance(node, dict) else node or "pretrain")
        where = f"{PIPELINE_KEY}[{i}].id"
        if not _ID.match(sid) or sid in {f.name for f in dataclasses.fields(RecipeConfig)} | {
                f.name for f in dataclasses.fields(PipelineConfig)}:
            problems.append(Problem(where, f"stage id '{sid}' must be lower_snake_case and not a recipe key (set id: …)",
                                    shown))
            continue
        if any(sid == other for _, other, _ in layers):
            problems.append(Problem(where, f"two stages are called '{sid}'; give one of them another id: …", shown))
            continue
        layers.append((i, sid, layer))
    # 2. the pipeline's own keys
    mine, common, per = _route_overrides(list(overrides or []), [sid for _, sid, _ in layers])
    own = copy.deepcopy(raw)
    if mine:
        own = merge(own, parse_overrides(mine, problems), set(), {}, "<command line>")
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(own), resolve=True)
    except Exception as e:  # noqa: BLE001 - an interpolation error is a recipe problem
        problems.append(Problem("", f"cannot resolve the pipeline's keys: {str(e).splitlines()[0]}", shown))
        resolved = {}
    config = validate_dataclass(PipelineConfig, resolved, "", problems, origin=lambda k: shown)
    if config is None:
        raise RecipeError(problems)
    out = Path(config.output_dir).expanduser().resolve()
    tracking = {"enabled": config.tracking.enabled, "experiment": config.tracking.experiment,
                "tracking_uri": config.tracking.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"}
    # 3. every stage, chained
    stages: list[PipelineStage] = []
    previous_out: str | None = None
    stage_problems: dict[tuple[str, str, str | None], list[str]] = {}  # one problem, the stages that have it
    for n, (i, sid, layer) in enumerate(layers):
        layer = copy.deepcopy(layer)
        layer["tracking"] = {**(layer.get("tracking") or {}), **tracking}
        layer.setdefault("output_dir", str(out / sid))
        init_prev = n > 0 and "init_from" not in layer
        if init_prev:
            layer["init_from"] = previous_out or str(out / layers[n - 1][1])
        label = f"{shown} ({PIPELINE_KEY}[{i}] {sid})"
        try:
            recipe = load_recipe(path, common + per.get(sid, []), inline=layer, display=label)
        except RecipeError as e:
            for prob in e.problems:
                stage_problems.setdefault((prob.key, prob.message, prob.file), []).append(sid)
            previous_out = str(layer["output_dir"])
            continue
        st = PipelineStage(index=i, id=sid, recipe=recipe, init_from_previous=init_prev)
        stages.append(st)
        previous_out = str(st.out)
    seen_out: dict[Path, str] = {}
    for st in stages:
        if st.out in seen_out:
            problems.append(Problem(f"{PIPELINE_KEY}[{st.index}].output_dir",
                                    f"stages '{seen_out[st.out]}' and '{st.id}' both write to {st.out}", shown))
        seen_out[st.out] = st.id
    for (key, msg, file), sids in stage_problems.items():  # an override every stage rejects is reported once
        problems.append(Problem(key, f"{msg} [stage{'s' if len(sids) > 1 else ''} {', '.join(sids)}]", file))
    if problems:
        raise RecipeError(problems)
    return Pipeline(path=shown, config=config, stages=stages, overrides=list(overrides or []))


# ------------------------------------------------------------------------------------------ state


def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished_summary(stage: PipelineStage) -> dict[str, Any] | None:
    """The stage's ``summary.json`` when it finished (reached ``trainer.max_steps``), else None."""
    s = _read_json(stage.out / "summary.json")
    if s is None:
        return None
    step = s.get("global_step")
    if isinstance(step, int) and step < int(stage.recipe.config.trainer.max_steps):
        return None
    return s


def _write_state(pipe: Pipeline, state: dict[str, Any]) -> None:
    from lensforge.fileio import atomic_write_text

    atomic_write_text(pipe.out / STATE_FILE, json.dumps(state, indent=1, default=str))


# ------------------------------------------------------------------------------------------ running


def preflight(pipe: Pipeline) -> list[str]:
    """Every stage's machine checks before the first starts; an ``init_from`` the pipeline will produce (the
    previous stage's output) is not expected to exist yet."""
    reasons: list[str] = []
    for st in pipe.stages:
        cfg = st.recipe.config
        found = list(cfg.stage.cls.preflight(st.recipe))
        found += [r for r in st.recipe.environment_problems() if not any(f.startswith(r.split(":", 1)[0] + ":") for f in found)]
        if st.init_from_previous and not Path(cfg.init_from).exists():
            found = [r for r in found if not r.startswith("init_from:")]
        reasons += [f"stage {st.id}: {r}" for r in found]
    return reasons


def run_pipeline(pipe: Pipeline) -> dict[str, Any]:
    """Run the stages in order (skipping finished ones), with one parent MLflow run (see the module docstring)."""
    from lensforge.stages.harness import nested_under, setup_logging
    from lensforge.tracking.mlflow_logger import MLflowTracker

    out = pipe.out
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    reasons = preflight(pipe)
    if reasons:
        raise LensforgeError(f"this machine cannot run {pipe.path}:\n" + "\n".join(f"  - {r}" for r in reasons))
    state = _read_json(out / STATE_FILE) or {}
    entries: dict[str, Any] = dict(state.get("stages") or {})
    tracker = None
    cfg = pipe.config
    if cfg.tracking.enabled:
        params = {"pipeline.path": pipe.path, "pipeline.stages": [s.id for s in pipe.stages],
                  **{f"pipeline.{s.id}.recipe": s.recipe.files[1] if len(s.recipe.files) > 1 else s.recipe.path
                     for s in pipe.stages}}
        tracker = MLflowTracker(output_dir=out, experiment=cfg.tracking.experiment, run_name=cfg.name,
                                tracking_uri=cfg.tracking.tracking_uri, resume=(out / "mlflow_run_id").exists(),
                                params=params, tags={"lensforge.pipeline": pipe.path, "lensforge.kind": "pipeline",
                                                     "mlflow.note.content": cfg.description or f"pipeline {pipe.path}"})
        tracker.set_tag("lensforge.pipeline.status", "running")
    log.info("pipeline %s: %d stage(s) %s -> %s", pipe.path, len(pipe.stages), " → ".join(s.id for s in pipe.stages), out)
    started = time.time()
    summaries: dict[str, Any] = {}
    previous_ckpt: str | None = None
    try:
        for st in pipe.stages:
            done = finished_summary(st)
            rec = entries.get(st.id) or {}
            if done is not None:
                if st.init_from_previous and rec.get("init_checkpoint") and previous_ckpt and rec["init_checkpoint"] != previous_ckpt:
                    raise LensforgeError(
                        f"stage {st.id} finished from {rec['init_checkpoint']}, but the stage before it now ends at "
                        f"{previous_ckpt}; remove {st.out} to redo it from there")
                log.info("pipeline: stage %s finished earlier (step %s, %s); skipped", st.id, done.get("global_step"), st.out)
                summaries[st.id] = done
                previous_ckpt = done.get("checkpoint") or previous_ckpt
                continue
            setup_logging(out)
            reasons = [r for r in st.recipe.config.stage.cls.preflight(st.recipe)]
            if reasons:
                raise LensforgeError(f"this machine cannot run stage {st.id} of {pipe.path}:\n"
                                     + "\n".join(f"  - {r}" for r in reasons))
            entries[st.id] = {"status": "running", "output_dir": str(st.out), "started": time.time(),
                              "init_from": st.recipe.config.init_from,
                              "init_checkpoint": previous_ckpt if st.init_from_previous else None}
            _write_state(pipe, {"path": pipe.path, "stages": entries})
            log.info("pipeline: stage %s (%d/%d) -> %s", st.id, pipe.stages.index(st) + 1, len(pipe.stages), st.out)
            with nested_under(tracker.run_id if tracker is not None else None, **{"lensforge.pipeline_stage": st.id}):
                summary = st.recipe.config.stage.cls.run(st.recipe) or {}
            setup_logging(out)
            summaries[st.id] = summary
            entries[st.id].update({"status": "finished", "finished": time.time(), "checkpoint": summary.get("checkpoint")})
            _write_state(pipe, {"path": pipe.path, "stages": entries})
            previous_ckpt = summary.get("checkpoint") or previous_ckpt
            if tracker is not None:
                m = {f"{st.id}/wall_seconds": summary.get("wall_seconds"), f"{st.id}/global_step": summary.get("global_step"),
                     f"{st.id}/verifier_score": summary.get("verifier_score"),
                     f"{st.id}/held_out_reward": summary.get("held_out_reward")}
                tracker.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float))},
                                    step=pipe.stages.index(st))
                if summary.get("mlflow_run_id"):
                    tracker.set_tag(f"lensforge.stage_run.{st.id}", summary["mlflow_run_id"])
    except BaseException:
        if tracker is not None:
            tracker.set_tag("lensforge.pipeline.status", "failed")
            tracker.finalize("failed")
        raise
    result = {"pipeline": pipe.path, "output_dir": str(out), "wall_seconds": time.time() - started,
              "stages": [{"id": s.id, "output_dir": str(s.out), "checkpoint": summaries.get(s.id, {}).get("checkpoint"),
                          "global_step": summaries.get(s.id, {}).get("global_step"),
                          "mlflow_run_id": summaries.get(s.id, {}).get("mlflow_run_id")} for s in pipe.stages],
              "final_checkpoint": previous_ckpt,
              "mlflow_run_id": tracker.run_id if tracker is not None else None}
    from lensforge.fileio import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(result, indent=1, default=str))
    if tracker is not None:
        tracker.set_tag("lensforge.pipeline.status", "finished")
        tracker.finalize("success")
    log.info("pipeline %s finished: final checkpoint %s", pipe.path, previous_ckpt)
    return result


__all__ = ["Pipeline", "PipelineConfig", "PipelineStage", "finished_summary", "is_pipeline_file", "load_pipeline",
           "preflight", "run_pipeline"]
