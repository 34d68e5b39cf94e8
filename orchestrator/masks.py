"""Where each trial's budget went, across a sweep: ``masks.parquet`` (anatomy: one row per trial × layer ×
module kind) and ``mask_overlap.csv`` (Jaccard overlap of the stored masks between methods, per task and seed).

Mask files are the trials' own (``trainables.anatomy.save_mask``); the driver keeps one per finished trial in
``SWEEP_DIR/masks/<trial_key>.safetensors`` and the export copies them beside ``trials.parquet``.
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trainables.anatomy import MASK_FILE, jaccard, load_mask

MASKS_DIR = "masks"
OVERLAP_FILE = "mask_overlap.csv"  # in the analysis folder, where the report reads it
ANATOMY_SCHEMA = pa.schema(
    [("trial_key", pa.string()), ("method", pa.string()), ("task", pa.string()), ("seed", pa.int64()),
     ("sparsity", pa.float64()), ("perturbation", pa.int64()), ("layer", pa.string()), ("kind", pa.string()),
     ("count", pa.int64())])
OVERLAP_COLUMNS = ["task", "seed", "sparsity", "perturbation", "method_a", "method_b", "jaccard", "n_a", "n_b",
                   "intersection"]


def mask_path(sweep_dir: Path, trial_key: str) -> Path:
    return Path(sweep_dir) / MASKS_DIR / f"{trial_key}.safetensors"


def keep_mask(sweep_dir: Path, trial_key: str, final_dir: str | Path) -> Path | None:
    """Copy a finished trial's mask (if its method has one) into the sweep folder; returns the copy."""
    src = Path(final_dir) / MASK_FILE
    if not src.is_file():
        return None
    dst = mask_path(sweep_dir, trial_key)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return dst


def anatomy_rows(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        base = {"trial_key": r["trial_key"], "method": r.get("variant") or r["method"], "task": r["task"],
                "seed": r.get("seed"), "sparsity": r.get("sparsity"), "perturbation": r.get("perturbation")}
        rows += [{**base, "layer": str(a["layer"]), "kind": a["kind"], "count": int(a["count"])}
                 for a in r.get("mask_anatomy") or []]
    return rows


def write_anatomy(results: Iterable[dict[str, Any]], out: Path) -> Path:
    path = Path(out) / "masks.parquet"
    pq.write_table(pa.Table.from_pylist(anatomy_rows(results), schema=ANATOMY_SCHEMA), path)
    return path


def copy_masks(sweep_dir: Path, keys: Iterable[str], out: Path) -> int:
    """Copy the stored masks of these trials to ``out/masks/``; returns how many there were. Mask files already
    there of other trials (an earlier export into the same folder) are removed: the overlap reads them by key."""
    stored = [src for src in (mask_path(sweep_dir, key) for key in keys) if src.is_file()]
    if (Path(out) / MASKS_DIR).resolve() == (Path(sweep_dir) / MASKS_DIR).resolve():
        return len(stored)  # `export --out SWEEP_DIR`: the masks are where they go, and the sweep's own
    names = {src.name for src in stored}
    for old in (Path(out) / MASKS_DIR).glob("*.safetensors"):
        if old.name not in names:
            old.unlink()
    if stored:
        (Path(out) / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    for src in stored:
        shutil.copyfile(src, Path(out) / MASKS_DIR / src.name)
    return len(stored)


def overlap_table(trials: pd.DataFrame, mask_dir: Path) -> pd.DataFrame:
    """Jaccard overlap between every two methods' masks of the same (task, seed, sparsity, perturbation)."""
    from dashboards.analysis import current  # here: the trial workers import this module (keep_mask)

    trials = current(trials)
    finished = trials[trials["status"] == "FINISHED"]
    rows = []
    for (task, seed, p, k), part in finished.groupby(["task", "seed", "sparsity", "perturbation"], dropna=False):
        masks = {}
        for key, method in zip(part["trial_key"], part["method"]):
            path = Path(mask_dir) / f"{key}.safetensors"
            if path.is_file():
                masks[method] = load_mask(path)
        for a, b in itertools.combinations(sorted(masks), 2):
            j, na, nb, inter = jaccard(masks[a], masks[b])
            rows.append({"task": task, "seed": seed, "sparsity": p, "perturbation": k, "method_a": a, "method_b": b,
                         "jaccard": j, "n_a": na, "n_b": nb, "intersection": inter})
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def write_overlap(trials_file: Path, out: Path) -> Path | None:
    """``mask_overlap.csv`` from the masks stored beside a trials table; None when there are none."""
    mask_dir = Path(trials_file).parent / MASKS_DIR
    if not mask_dir.is_dir():
        return None
    table = overlap_table(pd.read_parquet(trials_file), mask_dir)
    path = Path(out) / OVERLAP_FILE
    table.to_csv(path, index=False)
    return path
