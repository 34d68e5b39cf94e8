"""masks.parquet and mask_overlap.csv on hand-built masks whose overlaps are known."""
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.masks import MASKS_DIR, keep_mask, write_anatomy, write_overlap
from trainables.anatomy import anatomy, jaccard, save_mask


def test_jaccard_of_two_known_masks(tmp_path):
    a = {"x": torch.tensor([0, 1, 2, 3]), "y": torch.tensor([7])}
    b = {"x": torch.tensor([2, 3, 4, 5]), "y": torch.tensor([7]), "z": torch.tensor([1])}
    assert jaccard(a, b) == (pytest.approx(3 / 8), 5, 6, 3)
    assert jaccard(a, a)[0] == 1.0


def test_overlap_table_pairs_methods_within_task_and_seed(tmp_path):
    rows = []
    sets = {"sam": [0, 1, 2, 3], "sam-global": [2, 3, 4, 5], "random": [10, 11, 12, 13]}
    for seed in (0, 1):
        for method, idx in sets.items():
            key = f"{method}-{seed}"
            keep_mask(tmp_path, key, save_mask({"backbone.w": torch.tensor(idx)}, tmp_path / "trial" / key).parent)
            rows.append({"trial_key": key, "method": method, "task": "CB", "seed": seed, "sparsity": 0.005,
                         "perturbation": None, "status": "FINISHED"})
    rows.append({"trial_key": "full-0", "method": "full", "task": "CB", "seed": 0, "sparsity": None,
                 "perturbation": None, "status": "FINISHED"})  # no mask file: not in the table
    assert len(list((tmp_path / MASKS_DIR).iterdir())) == 6
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    path = write_overlap(tmp_path / "trials.parquet", tmp_path)
    table = pd.read_csv(path)
    assert len(table) == 6  # 3 pairs x 2 seeds
    j = table.set_index(["seed", "method_a", "method_b"])["jaccard"]
    assert j[(0, "sam", "sam-global")] == pytest.approx(2 / 6)
    assert j[(1, "random", "sam")] == 0.0


def test_anatomy_parquet_has_a_row_per_layer_and_kind():
    counts = {"backbone.encoder.layer.0.attention.self.query.weight": 5,
              "backbone.encoder.layer.0.attention.self.query.bias": 2,
              "backbone.encoder.layer.1.output.dense.weight": 3, "backbone.pooler.dense.weight": 7}
    rows = anatomy(counts)
    assert {(r["layer"], r["kind"]): r["count"] for r in rows} == {
        ("0", "attn.q"): 5, ("0", "bias"): 2, ("1", "ffn.out"): 3, ("pooler", "pooler"): 7}


def test_write_anatomy_uses_the_variant_label(tmp_path):
    result = {"trial_key": "k", "method": "sam", "variant": "sam-global", "task": "CB", "seed": 0,
              "sparsity": 0.005, "perturbation": None,
              "mask_anatomy": [{"layer": "pooler", "kind": "pooler", "count": 9}]}
    table = pq.read_table(write_anatomy([result], tmp_path)).to_pylist()
    assert table == [{"trial_key": "k", "method": "sam-global", "task": "CB", "seed": 0, "sparsity": 0.005,
                      "perturbation": None, "layer": "pooler", "kind": "pooler", "count": 9}]


def test_an_export_into_a_used_folder_keeps_only_this_sweeps_masks(tmp_path):
    """The export's masks/ kept the mask files of an earlier export into the same --out (another sweep's, or a
    trial's whose mask this run did not store): the overlap reads masks by trial key from there."""
    from orchestrator.masks import copy_masks

    sweep, out = tmp_path / "sweep", tmp_path / "out"
    keep_mask(sweep, "sam-0", save_mask({"backbone.w": torch.tensor([0, 1])}, tmp_path / "trial" / "sam-0").parent)
    (out / MASKS_DIR).mkdir(parents=True)
    (out / MASKS_DIR / "old-0.safetensors").write_bytes(b"of an earlier export")
    (out / MASKS_DIR / "full-0.safetensors").write_bytes(b"stored by an earlier run of this trial, not by this one")
    (out / MASKS_DIR / "readme.txt").write_text("mine")
    assert copy_masks(sweep, ["sam-0", "full-0"], out) == 1
    assert sorted(p.name for p in (out / MASKS_DIR).iterdir()) == ["readme.txt", "sam-0.safetensors"]


def test_an_export_into_the_sweep_folder_itself_keeps_its_stored_masks(tmp_path):
    """`export --out SWEEP_DIR`: out/masks is the sweep's own masks folder; the cleaning above deleted every stored
    mask without a result in this export, then copied each file onto itself."""
    from orchestrator.masks import copy_masks

    sweep = tmp_path / "sweep"
    for key in ("sam-0", "sam-1"):
        keep_mask(sweep, key, save_mask({"backbone.w": torch.tensor([0, 1])}, tmp_path / "trial" / key).parent)
    assert copy_masks(sweep, ["sam-0"], sweep) == 1
    assert sorted(p.name for p in (sweep / MASKS_DIR).iterdir()) == ["sam-0.safetensors", "sam-1.safetensors"]
