"""The report: Parquet → DataFrames (``orchestrator.analysis``) → static HTML with PNG figures."""
