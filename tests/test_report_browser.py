"""The report of a small sweep, opened in headless Chromium: what a reader needs is on the page (baseline row, n
per cell, seeds, curves, CD diagram, seeds-enough figure, pairwise table, mask figures), every figure loads and
the console has no errors; and a sweep without the optional inputs gets notes instead of figures."""
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from dashboards.report import build_report
from trainables.anatomy import save_mask
from tests.test_analysis import hand_made

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
MAJORITY = {"CB": 0.5, "RTE": 0.527}


def _curves(trials):
    rows = []
    for r in trials[trials["status"] == "FINISHED"].itertuples():
        for step in (50, 100, 150, 200):
            rows.append({"trial_key": r.trial_key, "method": r.method, "task": r.task, "seed": r.seed, "kind": "eval",
                         "step": step, "dev_score": r.test_score * step / 200, "train_loss": 1.0 - step / 400})
    # a projection of a trial of the report's group (a trial outside it has no place in its figures)
    key = trials.query("method == 'sam' and task == 'CB' and seed == 0")["trial_key"].iloc[0]
    rows.append({"trial_key": key, "method": "sam", "task": "CB", "seed": 0, "kind": "projection",
                 "step": 100, "flipped": 120, "loss_before": 0.75, "loss_after": 0.9})
    return pd.DataFrame(rows)


def _masks(trials):
    """masks.parquet as the export writes it (issue 11): counts per (trial, layer, module kind)."""
    rows = []
    for r in trials[trials["method"].isin(["sam", "lora"]) & (trials["status"] == "FINISHED")].itertuples():
        for layer, kind, count in [("0", "attn.q", 30), ("1", "ffn.in", 50), ("pooler", "pooler", 20)] \
                if r.method == "sam" else [("0", "attn.q", 50), ("0", "attn.v", 50)]:
            rows.append({"trial_key": r.trial_key, "method": r.method, "task": r.task, "seed": r.seed,
                         "sparsity": r.sparsity, "perturbation": r.perturbation, "layer": layer, "kind": kind,
                         "count": count})
    return pd.DataFrame(rows).astype({"count": "int64"})


def _sweep(tmp_path, with_masks=True):
    trials = hand_made([{"method": "sam", "task": "CB", "seed": s, "sparsity": 0.05, "perturbation": None,
                         "status": "FINISHED", "test_score": 0.5 + s / 50, "train_score": 0.9} for s in range(3)])
    trials["sweep"] = "browser"
    trials["model"] = "minilm-l6"
    trials["trial_key"] = [f"{i:012x}" for i in range(len(trials))]
    trials["mlflow_run_id"] = [f"run{i:04d}" for i in range(len(trials))]
    trials["majority_test_score"] = trials["task"].map(MAJORITY)
    trials["majority_dev_score"] = trials["task"].map(MAJORITY)
    trials["error"] = None
    trials.loc[trials["status"] == "FAILED", "error"] = "RuntimeError: CUDA out of memory <script>x</script>"
    export = tmp_path / "sweep" / "export"
    export.mkdir(parents=True)
    trials.to_parquet(export / "trials.parquet")
    _curves(trials).to_parquet(export / "curves.parquet")
    (tmp_path / "sweep" / "spec.yaml").write_text("name: browser\ngrid:\n  seeds: [0, 1, 2]\n")
    if with_masks:
        _masks(trials).to_parquet(export / "masks.parquet")
        (tmp_path / "sweep" / "analysis").mkdir()
        pd.DataFrame([{"task": t, "seed": s, "method_a": "lora", "method_b": "sam", "jaccard": 0.1 + s / 100,
                       "n_a": 100, "n_b": 100, "intersection": 18 + 2 * s} for t in ("CB", "RTE") for s in range(3)]) \
            .to_csv(tmp_path / "sweep" / "analysis" / "mask_overlap.csv", index=False)
    return export


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    export = _sweep(tmp_path)
    return build_report(export / "trials.parquet", export / "curves.parquet", tmp_path / "report",
                        tracking_uri=f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")


FIGURES = ["cd", "seeds", "seeds-enough", "curves", "ranks", "sparsity", "projection", "anatomy", "overlap"]


def test_report_files(report):
    folder = report.parent
    assert {p.name for p in folder.iterdir()} >= {"index.html", "ranks.svg", "sparsity.svg", "projection.svg",
                                                  "cd.svg", "seeds.svg", "seeds_enough.svg", "curves.svg",
                                                  "anatomy.svg", "overlap.svg"}
    page = report.read_text()
    assert "&lt;script&gt;x&lt;/script&gt;" in page  # error text is escaped, not run
    assert not re.search(r"""(src|href)=["']?https?://(?!127\.0\.0\.1)""", page)  # nothing fetched from afar
    assert 'href="http://127.0.0.1:5000/#/runs/run0000"' in page  # MLflow links per run
    assert "name: browser" in page  # the spec found by the export layout
    assert "missing-" not in page  # every figure had its input
    # 2 tasks as blocks: Friedman cannot reject (p ≥ 0.11 for any ranking), so Nemenyi separates no pair
    assert "Friedman&#x27;s test does not reject at α = 0.05 (p = 0.27), so no post-hoc test" in page


def test_missing_inputs_are_explained(tmp_path):
    export = _sweep(tmp_path, with_masks=False)
    trials = pd.read_parquet(export / "trials.parquet").drop(columns=["majority_test_score"])
    trials = trials[trials["sparsity"].isna() | (trials["sparsity"] == 0.005)]
    trials.to_parquet(export / "trials.parquet")
    (export / "curves.parquet").unlink()
    page = build_report(export / "trials.parquet", None, tmp_path / "report").read_text()
    for fig in ("baseline", "curves", "sparsity", "projection", "anatomy", "overlap"):
        assert f'id="missing-{fig}"' in page, fig
    assert 'id="baseline-row"' not in page and "majority_test_score" in page
    assert "Fig. 3a needs several" in page and "needs diffprune or childprune" in page


def test_report_in_headless_chromium(report, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium (.ci/run installs Debian's package)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", "--user-data-dir=" + str(tmp_path / "profile")]
    # the page alone, as MLflow's artifact viewer shows it (from a blob: URL): its figures travel inside it
    alone = tmp_path / "alone" / "index.html"
    alone.parent.mkdir()
    shutil.copy(report, alone)
    dom = subprocess.run(args + ["--dump-dom", alone.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-images-loaded="true"' in html  # every figure decoded with a width
    table = re.search(r'<table id="main-table">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    header = re.findall(r"<th>(.*?)</th>", rows[0])
    assert header == ["method", "CB", "RTE", "AVG"]
    names = [re.search(r"<th>(.*?)(<details|</th>)", r).group(1) for r in rows[1:]]
    assert names == ["sam", "full", "lora", "bitfit", "majority class"]  # by AVG mean, baseline last
    baseline = re.search(r'<tr class="baseline" id="baseline-row">(.*?)</tr>', table, re.S).group(1)
    assert re.findall(r"<td>(.*?)</td>", baseline) == ["50.00", "52.70", "51.35"]
    sam_cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[1], re.S)
    assert "85.00 ± 1.00" in sam_cells[0] and '<span class="n">n=3</span>' in sam_cells[0]
    assert "[84.0, 86.0]" in sam_cells[0]  # bootstrap interval of the mean
    assert 'class="b1"' in rows[1]  # four methods: best three marked
    for fig in FIGURES:
        assert re.search(rf'<figure id="fig-{fig}"><img src="data:image/svg\+xml;base64,', html), fig
    assert re.search(r'<p id="friedman">Friedman over 2 tasks as blocks: χ² = 3\.95', html)
    pairs = re.search(r'<table id="pair-summary">(.*?)</table>', html, re.S).group(1)
    pair_rows = [re.findall(r"<t[hd]>(.*?)</t[hd]>", r) for r in re.findall(r"<tr>(.*?)</tr>", pairs, re.S)]
    assert pair_rows[0] == ["wins/ties/losses", "sam", "full", "lora", "bitfit"]
    assert pair_rows[1] == ["sam", "—", "0/2/0", "0/2/0", "0/2/0"]  # 3 seeds, 6 pairs per task: nothing survives Holm
    assert '<table id="paired-tests">' in html
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and
                      re.search(r"error|uncaught", line, re.I)]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    subprocess.run(args + ["--window-size=1200,1800", f"--screenshot={shot}", report.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.stat().st_size > 20_000


def test_two_methods_two_seeds_get_notes_not_errors(tmp_path):
    """The smallest sweep (as the quickstart test runs): no Friedman, no seeds-enough, no Spearman; the page
    says why and still shows the table and the seeds."""
    trials = pd.DataFrame([{"method": m, "task": "CB", "seed": s, "sparsity": 0.01 if m == "sam" else None,
                            "perturbation": None, "status": "FINISHED", "test_score": 0.5 + s / 10 + (m == "sam") / 20,
                            "train_score": 0.9} for m in ("sam", "bitfit") for s in range(2)])
    trials.loc[len(trials)] = {**trials.iloc[0].to_dict(), "seed": 7, "status": "FAILED", "test_score": None}
    trials.to_parquet(tmp_path / "trials.parquet")  # no trial_key or error column: hand-made, not an export
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    assert "Friedman&#x27;s test not computable: needs ≥3 methods" in page
    assert 'id="missing-seeds-enough"' in page and "needs ≥3 seeds" in page
    assert '<figure id="fig-seeds">' in page and "No best-three shading" in page
    assert "Failed or unfinished trials (1)" in page


def test_pair_matrix_reads_from_both_sides(tmp_path):
    """The wins/ties/losses matrix: row a, column c holds a's record against c; row c, column a the mirror."""
    import numpy as np

    from tests.test_analysis import trials_from

    c1, c2 = np.array([0.50, 0.52, 0.48, 0.51]), np.array([0.60, 0.62, 0.58, 0.61])
    scores = {("a", "T1"): c1 + [0.05, 0.08, 0.02, 0.06], ("b", "T1"): c1 + [0.03, 0.10, 0.00, 0.06],
              ("c", "T1"): c1, ("a", "T2"): c2 + [0.10, 0.11, 0.10, 0.12], ("b", "T2"): c2 + [0.00, 0.01, -0.01, 0.00],
              ("c", "T2"): c2}  # as in test_holm_changes_a_decision_and_pairs_count_it: a beats c on T2 only
    trials_from({k: list(v) for k, v in scores.items()}).to_parquet(tmp_path / "trials.parquet")
    page = build_report(tmp_path / "trials.parquet", None, tmp_path / "report").read_text()
    pairs = re.search(r'<table id="pair-summary">(.*?)</table>', page, re.S).group(1)
    rows = {r[0]: r[1:] for r in (re.findall(r"<t[hd]>(.*?)</t[hd]>", r) for r in re.findall(r"<tr>(.*?)</tr>", pairs))}
    order = rows["wins/ties/losses"]
    assert rows["a"][order.index("c")] == "1/1/0" and rows["c"][order.index("a")] == "0/1/1"


def test_one_seed_sweep_reads_its_neighbours_and_notes_what_it_cannot_draw(tmp_path):
    """One seed per cell (a first look at a sweep): no std, so no Fig. 3b but a note saying why; the masks
    note names the method that kept masks; curves.parquet beside the trials file is read like masks.parquet."""
    trials = pd.DataFrame([{"method": m, "task": "CB", "seed": 0, "sparsity": 0.01 if m == "sam" else None,
                            "perturbation": None, "status": "FINISHED", "test_score": 0.55 + (m == "sam") / 20,
                            "train_score": 0.9, "trial_key": f"{i:012x}"} for i, m in enumerate(("sam", "bitfit"))])
    folder = tmp_path / "export"
    folder.mkdir()
    trials.to_parquet(folder / "trials.parquet")
    _curves(trials).to_parquet(folder / "curves.parquet")
    _masks(trials).to_parquet(folder / "masks.parquet")
    save_mask({"w": torch.tensor([1, 5])}, tmp_path / "sam-trial")  # the export's copy of sam's stored mask
    (folder / "masks").mkdir()
    (tmp_path / "sam-trial" / "mask.safetensors").rename(folder / "masks" / f"{trials['trial_key'][0]}.safetensors")
    (tmp_path / "analysis").mkdir()
    pd.DataFrame(columns=["task", "seed", "method_a", "method_b", "jaccard", "n_a", "n_b", "intersection"]) \
        .to_csv(tmp_path / "analysis" / "mask_overlap.csv", index=False)
    index = build_report(folder / "trials.parquet", None, tmp_path / "report")
    page = index.read_text()
    assert 'id="missing-ranks"' in page and "needs ≥2 seeds" in page and not (index.parent / "ranks.svg").exists()
    assert 'id="missing-overlap"' in page and "only sam stored masks" in page
    assert '<figure id="fig-curves">' in page  # found beside trials.parquet
