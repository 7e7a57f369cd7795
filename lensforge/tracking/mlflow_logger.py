"""MLflow wiring: a Lightning logger over an embedded SQLite store (default) or a server.

* Default store: ``sqlite:///<abs output_dir>/mlflow.db`` with artifacts under
  ``<output_dir>/mlartifacts`` — MLflow 3 refuses a bare ``./mlruns`` file store, and this keeps
  each run folder self-contained (``mlflow ui --backend-store-uri sqlite:///…/mlflow.db``).
* ``tracking.tracking_uri`` points at a team server instead (``http://mlflow.example:5000``).
* The run is created lazily on global rank 0 only (after Lightning launched its processes). Its
  id is written to ``<output_dir>/mlflow_run_id`` so that a resumed run (re-running the same
  ``lensforge fit`` after a crash) continues the same MLflow run.
* Logged: the resolved recipe (params, flattened, plus a YAML artifact), each plugin's
  provenance, the git revision, metrics, sample grids and checkpoint locations (files and
  sharded folders alike, as tags and a ``checkpoints.json`` artifact).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lensforge.fileio import atomic_write_text

log = logging.getLogger("lensforge.tracking")

RUN_ID_FILE = "mlflow_run_id"
_PARAM_MAX = 6000


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """The embedded store of a run folder."""
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{"a.b.c": value}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """``<sha>[-dirty]`` of the git checkout containing ``path`` (None outside a checkout or without commits)."""
    cwd = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class MLflowTracker(Logger):
    """Lightning logger + the run-level records lensforge keeps (recipe, provenance, images, checkpoints)."""

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike,
        experiment: str = "lensforge",
        run_name: str = "run",
        tracking_uri: str | None = None,
        resume: bool = False,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ):
        super().__init__()
        self.output_dir = Path(output_dir).resolve()
        self.tracking_uri = tracking_uri or default_tracking_uri(self.output_dir)
        self.embedded = tracking_uri is None
        self.experiment_name = experiment
        self.run_name = run_name
        self.resume = resume
        self._params = dict(params or {})
        self._tags = dict(tags or {})
        self._artifacts = dict(artifacts or {})  # artifact name -> text content
        self._client: Any = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._checkpoints: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ Logger API

    @property
    def name(self) -> str:
        return self.experiment_name

    @property
    def version(self) -> str | None:
        return self._run_id

    @property
    def save_dir(self) -> str:
        return str(self.output_dir)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    @rank_zero_only
    def experiment(self) -> Any:
        """The MlflowClient (the run is created on first use)."""
        self._ensure_run()
        return self._client

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's hyper-parameters: the recipe is logged as params already; others are added."""
        self._ensure_run()
        extra = flatten(dict(params)) if isinstance(params, Mapping) else {}
        extra = {k: v for k, v in extra.items() if not k.startswith("recipe")}
        self._log_params(extra)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        self._ensure_run()
        ts = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            try:
                items.append(Metric(key=k.replace("@", "_"), value=float(v), timestamp=ts, step=int(step or 0)))
            except (TypeError, ValueError):
                continue
        # asynchronous: the SQLite/HTTP round trip runs off the training loop (flushed in finalize)
        for i in range(0, len(items), 900):
            self._client.log_batch(self._run_id, metrics=items[i : i + 900], synchronous=False)

    @rank_zero_only
    def flush(self) -> None:
        """Write every metric logged with ``synchronous=False`` (flush *this* client's store:
        ``mlflow.flush_async_logging()`` would open the default store, creating ./mlflow.db)."""
        if self._client is None:
            return
        store = getattr(getattr(self._client, "_tracking_client", None), "store", None)
        if store is not None and hasattr(store, "flush_async_logging"):
            store.flush_async_logging()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._run_id is None:
            return
        state = {"success": "FINISHED", "failed": "FAILED", "finished": "FINISHED"}.get(status, "FINISHED")
        self.flush()
        self._client.set_terminated(self._run_id, state)

    # ------------------------------------------------------------------ lensforge records

    @rank_zero_only
    def log_image(self, image: Any, artifact_file: str) -> None:
        """Log a PIL image as an artifact (e.g. ``samples/step_0000100.png``)."""
        self._ensure_run()
        self._client.log_image(self._run_id, image, artifact_file=artifact_file)

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        self._ensure_run()
        self._client.log_text(self._run_id, text, artifact_file)

    @rank_zero_only
    def set_tag(self, key: str, value: str) -> None:
        self._ensure_run()
        self._client.set_tag(self._run_id, key, str(value)[:5000])

    @rank_zero_only
    def record_checkpoint(self, path: str | os.PathLike, step: int, *, log_file: bool = False) -> None:
        """Record a checkpoint location (file or sharded folder) as a tag and in ``checkpoints.json``."""
        self._ensure_run()
        p = Path(path).resolve()
        entry = {"step": int(step), "path": str(p), "sharded_folder": p.is_dir(), "time": time.time()}
        self._checkpoints.append(entry)
        self._client.set_tag(self._run_id, "lensforge.last_checkpoint", str(p))
        self._client.log_text(self._run_id, json.dumps(self._checkpoints, indent=1), "checkpoints.json")
        if log_file and p.is_file():
            self._client.log_artifact(self._run_id, str(p), artifact_path="checkpoints")

    # ------------------------------------------------------------------ internals

    def _ensure_run(self) -> None:
        if self._run_id is not None:
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self._client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            kwargs = {}
            if self.embedded:
                kwargs["artifact_location"] = (self.output_dir / "mlartifacts").as_uri()
            self._experiment_id = self._client.create_experiment(self.experiment_name, **kwargs)
        else:
            self._experiment_id = exp.experiment_id
        id_file = self.output_dir / RUN_ID_FILE
        if self.resume and id_file.exists():
            rid = id_file.read_text().strip()
            try:
                run = self._client.get_run(rid)
                self._run_id = run.info.run_id
                self._client.update_run(self._run_id, status="RUNNING")
                log.info("MLflow: continuing run %s (%s)", self._run_id, self.tracking_uri)
            except mlflow.exceptions.MlflowException:
                log.warning("MLflow: run %s from %s not found in %s; starting a new run", rid, id_file, self.tracking_uri)
        new = self._run_id is None
        if new:
            run = self._client.create_run(self._experiment_id, run_name=self.run_name, tags=dict(self._tags))
            self._run_id = run.info.run_id
            atomic_write_text(id_file, self._run_id + "\n")
            log.info("MLflow: new run %s in experiment '%s' (%s)", self._run_id, self.experiment_name, self.tracking_uri)
            self._log_params(self._params)
        else:
            for k, v in self._tags.items():
                self._client.set_tag(self._run_id, k, str(v)[:5000])
        for name, text in self._artifacts.items():
            self._client.log_text(self._run_id, text, name)

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, (json.dumps(v) if not isinstance(v, str) else v)[:_PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 90):
            try:
                self._client.log_batch(self._run_id, params=items[i : i + 90])
            except Exception as e:  # params are immutable in MLflow: a changed value on resume is not fatal
                log.warning("MLflow: could not log some params (%s)", str(e).splitlines()[0][:200])


__all__ = ["MLflowTracker", "default_tracking_uri", "flatten", "git_revision"]
