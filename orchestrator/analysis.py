"""``peft-sweep analyze``: read ``trials.parquet``, write the analysis as CSV/Parquet/JSON.

The statistics themselves are pure and live in ``dashboards.analysis`` (the report uses them too, and
``dashboards`` must not import ``orchestrator``); this module only reads and writes files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dashboards.analysis import Analysis, analyze
from dashboards.paper import compare, jsonable, markdown, read_published

from .masks import write_overlap


def analyze_file(trials_path: str | Path, out: str | Path, result: Analysis | None = None,
                 published: str | Path | None = None) -> list[Path]:
    """Writes ``result`` (the analysis of ``trials_path``, computed here when not given) into ``out``; with a
    ``published`` table (CSV: method, task, mean, std ×100) also ours beside it and the paper's claims answered."""
    trials = pd.read_parquet(trials_path) if result is None or published else None
    res = result or analyze(trials)
    comparison = compare(trials, res, read_published(published)) if published else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = {"table.csv": res.table, "sparsity.csv": res.sparsity, "paired_tests.csv": res.tests,
              "pair_summary.csv": res.pairs, "seeds_enough.csv": res.seeds}
    paths = []
    for name, frame in frames.items():
        frame.to_csv(out / name, index=False)
        paths.append(out / name)
    res.table.to_parquet(out / "table.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(res.summary, indent=2, ensure_ascii=False))
    paths += [out / "table.parquet", out / "summary.json"]
    if comparison is not None:
        comparison.table.to_csv(out / "paper_comparison.csv", index=False)
        (out / "claims.json").write_text(json.dumps(jsonable(comparison.claims), indent=2, ensure_ascii=False))
        (out / "claims.md").write_text(markdown(comparison))
        paths += [out / "paper_comparison.csv", out / "claims.json", out / "claims.md"]
    overlap = write_overlap(Path(trials_path), out)  # when the export holds the trials' masks
    return paths + ([overlap] if overlap else [])
