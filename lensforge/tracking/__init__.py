"""Experiment tracking: MLflow with an embedded SQLite store per run, or a server (:mod:`.mlflow_logger`)."""
