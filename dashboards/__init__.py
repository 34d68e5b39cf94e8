"""The report: Parquet → DataFrames (``analysis``, pure statistics) → figures (``figures``) → HTML (``report``).
Nothing here imports ``orchestrator`` or training code."""
