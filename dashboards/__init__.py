"""The report: Parquet → DataFrames (``analysis``, pure statistics) → figures (``figures``) → static HTML (``report``).
Nothing here imports ``orchestrator`` or training code."""
