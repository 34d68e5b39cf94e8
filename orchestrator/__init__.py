"""Sweep spec → trial grid → Ray Tune → MLflow → Parquet → analysis. Ray lives in ``tune_runner``,
MLflow in ``tracking``."""
