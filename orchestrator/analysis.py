"""``peft-sweep analyze``: read ``trials.parquet``, write the analysis as CSV/Parquet/JSON.

The statistics themselves are pure and live in ``dashboards.analysis`` (the report uses them too, and
``dashboards`` must not import ``orchestrator``); this module only reads and writes files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dashboards.analysis import Analysis, analyze, jsonable
from dashboards.paper import Comparison, markdown

from .masks import OVERLAP_FILE, write_overlap

# written only with a comparison (--paper) or stored masks: an earlier analyze's copies in a reused --out would be
# taken for this sweep's (the report reads the mask overlap from there), so they go first, and a comparison that
# goes is said (a sweep's end rewrites SWEEP_DIR/analysis without one: its trials have changed since)
PAPER_FILES = ("paper_comparison.csv", "claims.json", "claims.md")
OPTIONAL_FILES = (*PAPER_FILES, OVERLAP_FILE)


def analyze_file(trials_path: str | Path, out: str | Path, result: Analysis | None = None,
                 comparison: Comparison | None = None) -> list[Path]:
    """Writes ``result`` (the analysis of ``trials_path``, computed here when not given) into ``out``, and with
    a ``comparison`` (``dashboards.paper.compare``) ours beside a published table and the paper's claims."""
    res = result or analyze(pd.read_parquet(trials_path))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gone = [name for name in PAPER_FILES if (out / name).is_file() and comparison is None]
    for name in OPTIONAL_FILES:
        (out / name).unlink(missing_ok=True)
    if gone:
        print(f"note: removed {', '.join(gone)} from {out}: an earlier `analyze --paper` wrote them from the trials "
              "as they were then; `peft-sweep analyze ... --paper CSV` writes them for these", flush=True)
    frames = {"table.csv": res.table, "sparsity.csv": res.sparsity, "paired_tests.csv": res.tests,
              "pair_summary.csv": res.pairs, "seeds_enough.csv": res.seeds}
    paths = []
    for name, frame in frames.items():
        frame.to_csv(out / name, index=False)
        paths.append(out / name)
    res.table.to_parquet(out / "table.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(jsonable(res.summary), indent=2, ensure_ascii=False,
                                                  allow_nan=False))
    paths += [out / "table.parquet", out / "summary.json"]
    if comparison is not None:
        comparison.table.to_csv(out / "paper_comparison.csv", index=False)
        (out / "claims.json").write_text(json.dumps(jsonable(comparison.claims), indent=2, ensure_ascii=False))
        (out / "claims.md").write_text(markdown(comparison))
        paths += [out / "paper_comparison.csv", out / "claims.json", out / "claims.md"]
    overlap = write_overlap(Path(trials_path), out)  # when the export holds the trials' masks
    return paths + ([overlap] if overlap else [])
