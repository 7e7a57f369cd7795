"""Evaluation (``lensforge eval``): targets, suites, generation + scoring, reports.

* :mod:`.targets` — run folders, checkpoints and exported folders as models to score;
* :mod:`.suites` — ``validation``, ``geneval_synth``, ``ar_sweep`` and prompt-set files;
* :mod:`.run` — packed generation of a suite's images, scoring with a reward plugin, summaries, the noise baseline;
* :mod:`.report` — ``results.json``, ``summary.md``, plots, grids, MLflow.

Validation sampling during training uses the same functions (:mod:`lensforge.stages.callbacks`).
"""
