"""A static report (index.html + SVG figures) that opens from disk: no server, nothing fetched.

Processing comes from ``dashboards.analysis`` and drawing from ``dashboards.figures``; this module only lays out
HTML. Optional inputs are looked for by the export's layout (``SWEEP_DIR/export/trials.parquet``): the sweep's
``spec.yaml`` and ``analysis/mask_overlap.csv`` one folder up, ``masks.parquet`` and the mask files (``masks/``)
beside the trials; a figure whose input is missing is replaced by a one-line note saying why. The MLflow store is
not in the trials file: the caller passes its URI for the links to the runs."""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import shlex
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from . import figures, paper
from .analysis import (MIN_PAIRED, UNSCORED, Analysis, analyze, averaged, current, jsonable, mark_unscored,
                       one_seed_tasks, rows_of, scored, spearman_pairs, status_counts, trials_in)
from .answer import answer, not_ranked_line
from .figures import fmt_p

NO_SPEC = "not found (give SWEEP_DIR, or a trials.parquet inside SWEEP_DIR/export)"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui --port 5000` serves a SQLite or file store
# every figure a report may draw: a reused --out loses the ones of an earlier report first (a figure this one
# does not draw stayed there, beside a page saying it is not drawn); nothing else in the folder is touched
FIGURE_FILES = ("cd.svg", "seeds.svg", "seeds_enough.svg", "curves.svg", "ranks.svg", "sparsity.svg",
                "projection.svg", "anatomy.svg", "overlap.svg")
MASKS_DIR = "masks"  # the export's copies of the stored masks, <trial_key>.safetensors beside trials.parquet
# Lets a headless browser (and a curious reader) see that every figure loaded: <body data-images-loaded="true">
CHECK_IMAGES = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                "document.body.dataset.imagesLoaded=String(i.length>0&&i.every(x=>x.complete&&x.naturalWidth>0));});"
                "</script>")
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.b1{font-weight:bold;background:#e6f2e6}.b2{background:#eef6ee}
.b3{background:#f5faf5}figure{display:block;margin:1em 0}figure img{max-width:100%}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}.ci,.n{color:#666;font-size:80%}
tr.baseline{font-style:italic;background:#fafafa}.missing{color:#8a5a00}.below{color:#b00020}.collapsed{color:#b00020;font-size:80%}
td.unfinished,tr.unfinished td{color:#b00020}details{margin:.5em 0}table.trials td,table.trials th{text-align:left}"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _missing(fig_id: str, why: str) -> str:
    return f'<p class="missing" id="missing-{fig_id}">Not drawn: {_esc(why)}</p>'


def _figure(fig_id: str, svg: Path, caption: str) -> str:
    """The figure in the page itself (a data: URI; the .svg stays beside it for whoever wants the file): MLflow's
    artifact viewer shows index.html alone, from a blob: URL in a sandboxed frame, where "seeds.svg" resolves
    to nothing. An <img> rather than inline <svg>: matplotlib's SVGs reuse element ids, which would clash."""
    data = base64.b64encode(svg.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{fig_id}"><img src="data:image/svg+xml;base64,{data}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _baselines(trials: pd.DataFrame, split: str) -> dict[str, float]:
    """Majority-class score per task (same labels for every trial of a task; a mean over perturbation splits)."""
    col = f"majority_{split}_score"
    if col not in trials:
        return {}
    return trials.dropna(subset=[col]).groupby("task")[col].mean().to_dict()


def _code_version() -> str:
    try:
        version = metadata.version("peft-sweep")
    except metadata.PackageNotFoundError:
        version = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"peft-sweep {version}" + (f", git {commit}" if commit else "")


def mlflow_command(relative: bool = True) -> str:
    """How to call this environment's MLflow CLI from a shell here: ``mlflow`` where PATH finds it, else its path
    (``make demo``'s .venv is not activated, so a bare ``mlflow`` was not found): relative to the working folder
    for the console, absolute (``relative=False``) for a page read from anywhere."""
    import os
    import shutil
    import sys

    mine = Path(sys.executable).parent / "mlflow"  # not resolved: a venv's python is a link out of the venv
    found = shutil.which("mlflow")
    if not mine.is_file() or (found and Path(found).resolve() == mine.resolve()):
        return "mlflow"
    if relative and mine.absolute().is_relative_to(Path.cwd()):
        return os.path.relpath(mine)
    return str(mine.absolute())


def mlflow_ui(tracking_uri: str | None, experiment_id: str | None = None) -> tuple[str | None, str]:
    """Where the sweep's runs can be browsed, and the sentence that says so (HTML), with a link to the sweep's
    runs table where the experiment is known. A server (http/https) is its own UI; any other store (SQLite, a
    folder) needs a local ``mlflow ui`` on it; None: the store is unknown (a trials file given without its
    sweep), so there is nothing to link to."""
    if tracking_uri is None:
        return None, ("MLflow run ids are listed under each method name, not linked: this report was built from a "
                      "trials file without its sweep, so it does not know the tracking store (build it with "
                      "<code>peft-sweep report SWEEP_DIR</code> to link them).")
    server = tracking_uri.startswith(("http://", "https://"))
    base = tracking_uri.rstrip("/") if server else LOCAL_UI
    table = (f' The <a id="mlflow-runs" href="{_esc(runs_table(base, experiment_id))}">sweep\'s runs table</a> lists '
             "the trials under the sweep's run (expand its row); that run holds this report, the analysis files "
             "and the answer as metrics and tags." if experiment_id else "")
    if server:
        return base, f"Method names link to their MLflow runs on the sweep's tracking server {_esc(base)}.{table}"
    store = tracking_uri
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):  # relative to where it ran
        store = f"sqlite:///{Path(store.removeprefix('sqlite:///')).absolute()}"
    command = f"{mlflow_command(relative=False)} ui --backend-store-uri {shlex.quote(store)} --port 5000"
    return LOCAL_UI, (f"Method names link to their MLflow runs at {LOCAL_UI} (start it with "
                      f"<code>{_esc(command)}</code>).{table}")


TRAINING_VIEW = "?workflowType=machine_learning"  # MLflow 3.18's training view (orchestrator.tracking's RUNS_VIEW)


def runs_table(mlflow_url: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's training view."""
    return f"{mlflow_url}/#/experiments/{experiment_id}/runs{TRAINING_VIEW}"


def run_page(mlflow_url: str, run_id: str, experiment_id: str | None) -> str:
    """MLflow's page of one run, in its training view. MLflow 3.18 opens ``#/runs/<id>`` in its GenAI view
    ("Evaluations"), whatever the experiment's kind tag says; the experiment's path with ``workflowType`` opens
    the training view, as orchestrator.tracking's RUNS_VIEW does for the runs table. A trials file exported
    before it had ``mlflow_experiment_id`` gets the short form, which still finds the run."""
    experiment_id = experiment_text(experiment_id)
    if experiment_id is None:
        return f"{mlflow_url}/#/runs/{run_id}"
    return f"{mlflow_url}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def experiment_text(value: Any) -> str | None:
    """An experiment id as MLflow writes it ("7"), from a column the export writes as text but a hand-made or
    re-saved file may hold as numbers (7.0 where a value is missing); None for a missing or empty one."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() or None


def _runs_links(trials: pd.DataFrame, method: str, mlflow_url: str | None) -> str:
    """One link per trial of the method to MLflow's run page; the bare run ids where the UI is unknown."""
    if "mlflow_run_id" not in trials:
        return ""
    runs = trials[(trials["method"] == method) & trials["mlflow_run_id"].notna()]
    if runs.empty:
        return ""
    links = " ".join(
        f'<a href="{_esc(run_page(mlflow_url, r.mlflow_run_id, getattr(r, "mlflow_experiment_id", None)))}">'
        f'{_esc(r.task)} s{r.seed}</a>' if mlflow_url
        else f"{_esc(r.task)} s{r.seed}: <code>{_esc(r.mlflow_run_id)}</code>"
        for r in runs.sort_values(["task", "seed"]).itertuples())
    return f'<details class="runs"><summary>MLflow runs ({len(runs)})</summary>{links}</details>'


def _trial_list(table_id: str, trials: pd.DataFrame) -> str:
    return (f'<table id="{table_id}" class="trials"><tr><th>trial</th><th>status</th><th>error</th></tr>' + "".join(
        f"<tr><td>{_esc(r.method)}/{_esc(r.task)} s{r.seed} {_esc(getattr(r, 'trial_key', ''))}</td>"
        f"<td>{_esc(r.status)}</td><td>{_error_html(getattr(r, 'error', None))}</td></tr>"
        for r in trials.itertuples()) + "</table>")


def unfinished_cells(trials: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(method, task) -> "0 of N finished (k FAILED)"`` (HTML) for each cell of the grid without a finished trial:
    the analysis sees finished trials only, so such a cell (or a whole method) would vanish from Table 1."""
    out = {}
    for (method, task), part in trials.groupby(["method", "task"], sort=True):
        if len(scored(part)):
            continue
        counts = mark_unscored(part)["status"].fillna("no status").value_counts().sort_index()
        out[(method, task)] = (f"0 of {len(part)} {'scored' if UNSCORED in counts else 'finished'} ("
                               + ", ".join(f"{n} {_esc(s)}" for s, n in counts.items()) + ")")  # HTML-safe
    return out


def _unfinished_note(unfinished: dict[tuple[str, str], str], ranked: list[str]) -> str:
    """The sentence under Table 1 naming what it lacks, so a reader sees that a row or a cell is missing."""
    if not unfinished:
        return ""
    items = []
    for method in dict.fromkeys(m for m, _ in unfinished):
        cells = "; ".join(f"{_esc(t)}: {v}" for (m, t), v in unfinished.items() if m == method)
        items.append(f"<b>{_esc(method)}</b> ({cells}): " + ("its AVG covers its other tasks only" if method in ranked
                                                             else "not ranked, tested or drawn"))
    return ('<p class="missing" id="unfinished">No finished trial, so missing from the analysis: '
            + "; ".join(items) + ".</p>")


def _group_caption(label: dict) -> str:
    """Table 1's group in words: its sparsity and its split (the analysis labels it with None and "none")."""
    sparsity = (f"sparsity {label['sparsity']:g}" if label["sparsity"] is not None
                else "no sparsity (no finished trial of a method that chooses a share of entries)")
    split = ("the standard split" if label["perturbation"] == "none" else
             "perturbed splits " + ", ".join(map(str, label.get("splits", []))) + " pooled")
    return f"Table 1: {sparsity}; {split}"


def ranked(table: pd.DataFrame) -> list[str]:
    """One group's methods in Table 1's order: best average first among those with every task, then the rest."""
    complete, lacking = averaged(table)
    rest = table[(table["task"] == "AVG") & table["method"].isin(lacking)].sort_values(["mean", "method"],
                                                                                      ascending=[False, True])
    return list(complete["method"]) + list(rest["method"])


def _table_html(table: pd.DataFrame, baselines: dict[str, float],
                trials: pd.DataFrame, mlflow_url: str | None, unfinished: dict[tuple[str, str], str]) -> str:
    """``trials``: the group's trials, finished or not (for the links); ``unfinished``: cells without a finished
    trial, shown as "0 of N finished" (a method with no finished trial at all gets a row of them, unranked)."""
    tasks = [t for t in dict.fromkeys([*table["task"], *(t for _, t in sorted(unfinished))]) if t != "AVG"] + ["AVG"]
    methods = ranked(table)
    mark = len(methods) > 3  # "best three" means nothing with three methods or fewer
    cell = {(r.method, r.task): r for r in table.itertuples()}
    complete, lacking = averaged(table)
    one_seed = one_seed_tasks(table)  # why an AVG has no std, as the answer says it
    # each column's places, ties sharing one (two at 82.00 are both first); an average over fewer tasks competes
    # with none
    place = {t: dict(zip(part["method"], part["mean"].rank(ascending=False, method="min")))
             for t, part in [*table[table["task"] != "AVG"].groupby("task"), ("AVG", complete)]}
    rows = ["<tr><th>method</th>" + "".join(f"<th>{_esc(t)}</th>" for t in tasks) + "</tr>"]
    # red below the majority class; for AVG below the majority row's AVG (-inf: no baseline, nothing is red)
    avg_base = (sum(baselines[t] for t in tasks[:-1]) / (len(tasks) - 1)
                if tasks[:-1] and all(t in baselines for t in tasks[:-1]) else -math.inf)
    for m in methods:
        tds = []
        for t in tasks:
            r = cell.get((m, t))
            at = place.get(t, {}).get(m)
            cls = f' class="b{int(at)}"' if mark and at is not None and at <= 3 else ""
            if r is None:
                tds.append(f'<td class="unfinished">{unfinished[(m, t)]}</td>' if (m, t) in unfinished
                           else f"<td{cls}></td>")
                continue
            text = f"{100 * r.mean:.2f} ± {100 * r.std:.2f}" if pd.notna(r.std) else f"{100 * r.mean:.2f}"
            if r.mean < (avg_base if t == "AVG" else baselines.get(t, -math.inf)):
                text = f'<span class="below" title="below the majority-class baseline">{text}</span>'
            ci = (f'<br><span class="ci">[{100 * r.mean_ci_low:.1f}, {100 * r.mean_ci_high:.1f}]</span>'
                  if pd.notna(r.mean_ci_low) else "<br>")
            one = getattr(r, "n_one_class", None)
            one = (f' <span class="collapsed" title="seeds whose every test prediction was one class">{int(one)} '
                   "one-class</span>" if pd.notna(one) and one > 0 else "")
            alone = one_seed.get(m, [])  # one seed on every task: the header's n per cell says it
            if t == "AVG" and m not in lacking and 0 < len(alone) < r.n_tasks:
                ci = f'<br><span class="n">no std: one seed on {_esc(", ".join(alone))}</span>'
            if m in lacking and t == "AVG":
                ci = f'<br><span class="n">over {int(r.n_tasks)} of {len(tasks) - 1} tasks: not ranked</span>'
            tds.append(f'<td{cls}>{text}{ci} <span class="n">n={int(r.n)}</span>{one}</td>')
        rows.append(f"<tr><th>{_esc(m)}{_runs_links(trials, m, mlflow_url)}</th>{''.join(tds)}</tr>")
    for m in dict.fromkeys(m for m, _ in unfinished if m not in methods):
        tds = "".join(f"<td>{unfinished.get((m, t), '')}</td>" for t in tasks[:-1]) + "<td>not ranked</td>"
        rows.append(f'<tr class="unfinished"><th>{_esc(m)}{_runs_links(trials, m, mlflow_url)}</th>{tds}</tr>')
    if baselines:
        base = [f"{100 * baselines[t]:.2f}" if t in baselines else "" for t in tasks[:-1]]
        avg = (f"{100 * sum(baselines[t] for t in tasks[:-1]) / (len(tasks) - 1):.2f}"
               if all(t in baselines for t in tasks[:-1]) else "")
        rows.append('<tr class="baseline" id="baseline-row"><th>majority class</th>'
                    + "".join(f"<td>{b}</td>" for b in base + [avg]) + "</tr>")
    return '<table id="main-table">' + "".join(rows) + "</table>" + _unfinished_note(unfinished, methods)


def _published_html(comparison: paper.Comparison) -> str:
    """Ours beside the published table on the tasks both hold, then the claims answered (as claims.md says)."""
    c = comparison.claims
    rows = ["<tr><th>method</th>" + "".join(f"<th>{_esc(x)}</th>" for x in c["tasks"] + ["AVG"]) + "</tr>"]
    for method, cells in paper.table_cells(comparison):
        tds = "".join(f"<td>{ours}" + (f' <span class="n">{few}</span>' if few else "")
                      + (f'<br><span class="ci">paper {theirs}</span>' if theirs else "") + "</td>"
                      for ours, few, theirs in cells)
        rows.append(f"<tr><th>{_esc(method)}</th>{tds}</tr>")
    return ('<section id="published"><h2>Beside the published table</h2>'
            f'<p>{_esc(paper.caption(c))}</p><table id="published-table">' + "".join(rows) + "</table><ul>"
            + "".join(f"<li><b>{_esc(title)}</b> {_esc(text)}.</li>" for title, text in paper.answers(c))
            + "</ul></section>")


def _error_html(error: Any) -> str:
    """The error's own line first (the tracked error opens with it), the traceback folded under it: the last
    1,500 characters used to start mid-filename."""
    text = "" if error is None or (isinstance(error, float) and pd.isna(error)) else str(error).strip()
    if not text:
        return ""
    first, _, rest = text.partition("\n")
    if first.startswith("Traceback"):  # a local record's raw traceback: its error is its last line
        first, rest = text.splitlines()[-1], text
    return f"<b>{_esc(first)}</b>" + (f"<details><summary>traceback</summary><pre>{_esc(rest[-4000:])}</pre></details>"
                                     if rest.strip() else "")


def _pairs_html(res: Analysis, main: dict, methods: list[str]) -> str:
    pairs = rows_of(res.pairs, main)
    tests = rows_of(res.tests, main)
    alpha = main["holm"]["alpha"]
    out = [f"<p>Each cell: the tasks on which the row's method beats / ties / loses to the column's method. A win is "
           f"a Holm-corrected paired t-test p &lt; {alpha} with a positive mean of the paired differences (seeds "
           "both methods finished); Holm corrects over all method pairs of one task. A pair with fewer than "
           f"{MIN_PAIRED} paired seeds, or with identical differences, has no test: a tie.</p>"]
    wtl = {}
    for r in pairs.itertuples():
        wtl[(r.method_a, r.method_b)] = f"{r.wins}/{r.ties}/{r.losses}"
        wtl[(r.method_b, r.method_a)] = f"{r.losses}/{r.ties}/{r.wins}"
    out.append('<table id="pair-summary"><tr><th>wins/ties/losses</th>'
               + "".join(f"<th>{_esc(m)}</th>" for m in methods) + "</tr>")
    for a in methods:
        out.append(f"<tr><th>{_esc(a)}</th>" + "".join(
            f"<td>{wtl.get((a, b), '—' if a == b else '')}</td>" for b in methods) + "</tr>")
    out.append("</table>")

    def p(v):
        return "" if v is None or pd.isna(v) else fmt_p(float(v)).removeprefix("p = ")

    out.append(f'<details><summary>every paired test ({len(tests)})</summary><table id="paired-tests"><tr><th>task</th>'
               "<th>a</th><th>b</th><th>n</th><th>mean a − b ×100</th><th>t-test p</th><th>Holm</th>"
               "<th>Wilcoxon p</th><th>Holm</th></tr>")
    out += [f"<tr><td>{_esc(r.task)}</td><td>{_esc(r.method_a)}</td><td>{_esc(r.method_b)}</td><td>{r.n}</td>"
            f"<td>{'' if pd.isna(r.mean_diff) else f'{100 * r.mean_diff:+.2f}'}</td><td>{p(r.t_p_value)}</td>"
            f"<td>{p(r.t_p_holm)}</td>"
            f"<td>{p(r.wilcoxon_p_value)}</td><td>{p(r.wilcoxon_p_holm)}</td></tr>" for r in tests.itertuples()]
    out.append("</table></details>")
    return "".join(out)


def _why_no_overlap(trials: pd.DataFrame, trials_path: Path, overlap_path: Path, have_overlap: bool) -> str:
    """Why the mask-overlap figure is not drawn, from the mask files themselves (the export copies each finished
    trial's stored mask to MASKS_DIR beside the trials; only methods that choose their entries store one)."""
    mask_dir = trials_path.parent / MASKS_DIR
    keys = {p.stem for p in mask_dir.glob("*.safetensors")}
    stored = sorted(set(trials.loc[trials["trial_key"].isin(keys), "method"])) if "trial_key" in trials else []
    if not stored:
        return (f"no mask files in {mask_dir}: only finished trials of methods that choose their entries store a "
                "mask, and the overlap compares the masks of two such methods.")
    if len(stored) == 1:
        return (f"the overlap compares the masks of two methods; only {stored[0]} stored masks here "
                f"({len(keys)} in {mask_dir}).")
    if not have_overlap:
        return (f"no {overlap_path.name} in {overlap_path.parent}; peft-sweep analyze --trials {trials_path} "
                f"writes it from the masks of {', '.join(stored)} in {mask_dir}.")
    return (f"{', '.join(stored)} stored masks, but no two of them share a (task, seed, sparsity, perturbation "
            "split), and the overlap compares masks within one.")


def sweep_dir_of(trials_path: Path) -> Path | None:
    """The sweep folder of a file in SWEEP_DIR/export; None for a trials file elsewhere."""
    trials_path = Path(trials_path)
    return trials_path.parent.parent if trials_path.parent.name == "export" else None


def analysis_dir_of(trials_path: Path) -> Path:
    """Where the analysis of a trials file lives: SWEEP_DIR/analysis for an export, else beside the file
    (``peft-sweep analyze`` writes there by default, the report reads there)."""
    sweep_dir = sweep_dir_of(trials_path)
    return sweep_dir / "analysis" if sweep_dir else Path(trials_path).parent


def _clear_figures(out: Path) -> None:
    for name in FIGURE_FILES:
        (out / name).unlink(missing_ok=True)


def _nothing_scored_page(trials: pd.DataFrame, out: Path) -> Path:
    """The report of trials none of which has a score yet (all failed, or none finished): what became of each,
    rather than no report."""
    _clear_figures(out)
    ours = current(trials)
    sweeps = ", ".join(map(str, trials["sweep"].dropna().unique())) if "sweep" in trials else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>PEFT sweep report</title><style>{CSS}</style>"
            f"</head><body><h1>PEFT sweep report: {_esc(sweeps or 'trials')}</h1>"
            f"<p>No trial has a test score yet ({_esc(status_counts(ours))}): the tables, statistics and figures "
            "come once one finishes.</p>"
            f"<h2>Failed or unfinished trials ({len(ours)})</h2>{_trial_list('failed', mark_unscored(ours))}"
            "</body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index


def build_report(trials_path: Path, curves_path: Path | None, out: Path, *, analysis_dir: Path | None = None,
                 spec_path: Path | None = None, tracking_uri: str | None = None,
                 analysis: Analysis | None = None, published: pd.DataFrame | None = None) -> Path:
    """``tracking_uri``: the sweep's MLflow store, for the links to its runs (None: not known, no links);
    ``published``: a published table (``paper.read_published``) to show ours beside, with the claims answered."""
    trials_path, out = Path(trials_path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sweep_dir = sweep_dir_of(trials_path)
    analysis_dir = analysis_dir or analysis_dir_of(trials_path)
    spec_path = spec_path or (sweep_dir / "spec.yaml" if sweep_dir else None)
    trials = pd.read_parquet(trials_path)
    curves_path = curves_path or trials_path.parent / "curves.parquet"  # beside the trials, as masks.parquet
    curves = pd.read_parquet(curves_path) if Path(curves_path).is_file() else None
    if analysis is None and scored(current(trials)).empty:
        return _nothing_scored_page(trials, out)
    res = analysis or analyze(trials)  # the caller's, when it has analysed these trials already
    _clear_figures(out)  # only now: a report that fails before this leaves the earlier one whole
    summary, main = res.summary, res.summary["groups"][0]
    in_group = trials_in(trials, main)
    perturbed = main["perturbation"] == "perturbed"  # a cell's replicates are seeds × perturbation splits
    runs = "runs (seeds × perturbation splits)" if perturbed else "seeds"
    finished = scored(in_group)
    if curves is not None and "trial_key" in trials and "trial_key" in curves:  # the figures show what the table
        curves = curves[curves["trial_key"].isin(set(in_group["trial_key"]))]  # does: this group, current grid
    main_table = rows_of(res.table, main)
    methods = ranked(main_table)
    test_base, dev_base = _baselines(finished, "test"), _baselines(finished, "dev")
    n_per_cell = sorted(set(main_table.loc[main_table["task"] != "AVG", "n"].astype(int)))
    sweeps = ", ".join(map(str, trials["sweep"].dropna().unique())) if "sweep" in trials else ""
    models = ", ".join(map(str, trials["model"].dropna().unique())) if "model" in trials else "not recorded"
    spec = spec_path.read_text() if spec_path and spec_path.is_file() else None
    experiments = ({experiment_text(e) for e in trials["mlflow_experiment_id"]} - {None}
                   if "mlflow_experiment_id" in trials else set())
    mlflow_url, browse = mlflow_ui(tracking_uri, experiments.pop() if len(experiments) == 1 else None)
    if "mlflow_run_id" not in trials or trials["mlflow_run_id"].isna().all():
        browse = "No MLflow run ids in this trials file, so no links to the runs."

    said = answer(res, trials)["lines"]  # as `run` and `analyze` print it: the page alone carries the conclusion
    parts = [f"<h1>PEFT sweep report: {_esc(sweeps or 'trials')}</h1>",
             '<section id="answer"><h2>The answer</h2><ul>' + "".join(f"<li>{_esc(line)}</li>" for line in said)
             + "</ul></section>",
             '<section id="about"><h2>What the numbers are</h2><ul>'
             f"<li>{summary['n_finished']} of {summary['n_trials']} trials FINISHED with a test score"
             + (f" ({len(summary['unscored'])} more FINISHED without one, left out: listed at the end)"
                if summary.get("unscored") else "")
             + (f" ({summary['n_not_in_grid']} more no longer in the grid, left out: listed at the end)"
                if summary.get("n_not_in_grid") else "")
             + (f", over {len(summary['groups'])} groups; the table and statistics below are of the first, "
                f"{main['n_trials']} of them" if len(summary["groups"]) > 1 else "")
             + f"; model: {_esc(models)}.</li>"
             f"<li>Each cell: mean ± std (ddof = 1) of the test score ×100 over its <b>n</b> {runs} "
             f"(n per cell here: {', '.join(map(str, n_per_cell))}), then the 95% bootstrap interval of the mean "
             "in brackets. The test set is the task's original dev set (the paper's protocol).</li>"
             "<li>AVG: the mean of the task means ± the mean of the task stds (the paper's AVG), not the std of "
             "an average.</li>"
             + ("<li>Shading marks the best three per column.</li>" if len(methods) > 3 else
                "<li>No best-three shading: three methods or fewer compete.</li>")
             + "<li>Red: below the task's majority-class score. <i>k one-class</i>: k of the cell's seeds predicted "
               "one class (or choice) for every test example; where that is all of them, the cell has collapsed: "
               "its std is the label distribution's, and its method is not ranked on stability. Where only some "
               "did, the cell keeps its std: failed seeds are instability.</li>"
             f"<li>Spec: {_esc(spec_path) if spec else NO_SPEC}; "
             f"built {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by {_esc(_code_version())}.</li>"
             f'<li id="mlflow">{browse}</li></ul>'
             + (f"<details><summary>spec.yaml</summary><pre>{_esc(spec)}</pre></details>" if spec else "")
             + "</section>",
             f"<h2>{_esc(_group_caption(main))}</h2>",
             _table_html(main_table, test_base, in_group, mlflow_url, unfinished_cells(in_group))]
    if not test_base:
        parts.append(_missing("baseline", "trials.parquet has no majority_test_score column (the export adds it "
                                          "from each trial's result), so the majority-class row is absent."))
    if published is not None:
        parts.append(_published_html(paper.compare(trials, res, published)))

    parts.append("<h2>Which differences are real</h2>")
    fr, nem = main["friedman"], main["nemenyi"]
    if fr["statistic"] is not None:
        dropped = (f' ({", ".join(map(_esc, fr["dropped_blocks"]))} left out: not every method has a score there)'
                   if fr.get("dropped_blocks") else "")
        parts.append(f'<p id="friedman">Friedman over {fr["n_blocks"]} tasks as blocks{dropped}: '
                     f'χ² = {fr["statistic"]:.2f} (df {fr["df"]}), {fmt_p(fr["p_value"])}. Over {main["friedman_task_seed"]["n_blocks"]} '
                     f"(task, {'seed, split' if perturbed else 'seed'}) blocks: "
                     + (f'χ² = {main["friedman_task_seed"]["statistic"]:.2f}, '
                        f'{fmt_p(main["friedman_task_seed"]["p_value"])} (blocks of one task are not independent).'
                        if main["friedman_task_seed"]["statistic"] is not None else "not computable.") + "</p>")
        rejects = fr["p_value"] < nem["alpha"]  # Nemenyi is post-hoc: it separates pairs once Friedman rejects
        figures.cd_figure(fr["average_ranks"], nem["p_values"] if rejects else {}, nem["cd"], nem["alpha"], methods,
                          out / "cd.svg")
        parts.append(_figure("cd", out / "cd.svg", "Critical-difference diagram: average rank over tasks (1 = best); "
                                             + (f"methods joined by a bar are not separated by Nemenyi's test at "
                                                f"α = {nem['alpha']}; CD = {nem['cd']:.2f} ranks" if rejects else
                                                f"Friedman's test does not reject at α = {nem['alpha']} "
                                                f"({fmt_p(fr['p_value'])}), so no post-hoc test: one bar joins "
                                                "every method, no pair is declared different over tasks")))
    else:
        parts.append(_missing("cd", f"Friedman's test not computable: {fr['reason']}."))
    parts.append(_pairs_html(res, main, methods))

    parts.append("<h2>The seeds</h2>")
    figures.seeds_figure(finished, methods, test_base, out / "seeds.svg")
    parts.append(_figure("seeds", out / "seeds.svg", "Every seed's test score per method (box: quartiles)"))
    seeds = rows_of(res.seeds, main)
    left_out = main["seeds_enough"].get("left_out") or {}
    if len(seeds):
        figures.seeds_enough_figure(seeds, main["seeds_enough"]["kendall_tau"], methods, out / "seeds_enough.svg")
        parts.append(_figure("seeds-enough", out / "seeds_enough.svg", "Stability rank vs number of seeds used" + (
            "; " + not_ranked_line(left_out) if left_out else "")))
    else:
        parts.append(_missing("seeds-enough", main["seeds_enough"].get("reason", "no data")))

    parts.append("<h2>Learning curves</h2>")
    if curves is not None and (curves["kind"] == "eval").any():
        figures.curves_figure(curves, methods, dev_base, out / "curves.svg")
        parts.append(_figure("curves", out / "curves.svg", "Dev score vs step, one line per trial"))
    else:
        parts.append(_missing("curves", "no curves.parquet with evaluation rows (from --curves, or beside the trials "
                                        "file)."))

    parts.append("<h2>Stability vs performance (Fig. 3b)</h2>")
    if main_table.loc[main_table["task"] != "AVG", "std"].notna().any():
        figures.rank_figure(spearman_pairs(main_table), main["spearman"], methods, out / "ranks.svg")
        parts.append(_figure("ranks", out / "ranks.svg", "stability rank vs performance rank per (method, task)"))
    else:
        parts.append(_missing("ranks", "a stability rank is the rank of a std over seeds, so Fig. 3b needs ≥2 seeds "
                                       f"per (method, task); this sweep has n = {', '.join(map(str, n_per_cell))}."))
    parts.append("<h2>Sparsity sweep (Fig. 3a)</h2>")
    sweep_rows = rows_of(res.sparsity, {"sparsity": None, "perturbation": main["perturbation"]})
    if sweep_rows["sparsity"].nunique() > 1:  # finished trials of the current grid at several sparsities
        figures.sparsity_figure(sweep_rows, test_base, methods, out / "sparsity.svg")
        parts.append(_figure("sparsity", out / "sparsity.svg", "score vs sparsity, for the methods that take one (the others "
                                                         "have one score at every p: Table 1)"))
    else:
        parts.append(_missing("sparsity", "the sweep has one sparsity; Fig. 3a needs several."))
    parts.append("<h2>Projection discontinuity (Fig. 4)</h2>")
    projected = curves[curves["kind"] == "projection"]["trial_key"].unique() if curves is not None else []
    if len(projected):
        label = figures.projection_figure(curves, projected[0], out / "projection.svg")
        parts.append(_figure("projection", out / "projection.svg", f"projection discontinuity: {label}"))
    else:
        parts.append(_missing("projection", "no projections recorded; Fig. 4 needs diffprune or childprune trials "
                                            "(and curves.parquet)."))

    parts.append("<h2>Where the masks go</h2>")
    masks_path = trials_path.parent / "masks.parquet"
    masks = pd.read_parquet(masks_path) if masks_path.is_file() else None
    if masks is not None and masks.empty:
        parts.append(_missing("anatomy", "no finished trial in this sweep kept a mask (the methods that select "
                                         "entries do)."))
    elif masks is not None:
        if "trial_key" in masks and "trial_key" in in_group:
            masks = masks[masks["trial_key"].isin(set(in_group["trial_key"]))]
        figures.anatomy_figure(masks, methods, out / "anatomy.svg")
        parts.append(_figure("anatomy", out / "anatomy.svg", "share of the budget per module kind, mean over trials"))
    else:
        parts.append(_missing("anatomy", f"no masks.parquet beside {trials_path.name} (the export writes it for "
                                         "sweeps of subset methods)."))
    overlap_path = Path(analysis_dir) / "mask_overlap.csv"
    overlap = pd.read_csv(overlap_path) if overlap_path.is_file() else None
    if overlap is not None and {"sparsity", "perturbation"} <= set(overlap):  # (current grid already) the group's
        same = overlap["sparsity"].isna() | (overlap["sparsity"] == main["sparsity"]) \
            if main["sparsity"] is not None else overlap["sparsity"].isna()
        overlap = overlap[same & (overlap["perturbation"].notna() == (main["perturbation"] == "perturbed"))]
    compared = set(overlap["method_a"]) | set(overlap["method_b"]) if overlap is not None else set()
    if len(compared) >= 2:
        figures.overlap_figure(overlap, methods, out / "overlap.svg")
        parts.append(_figure("overlap", out / "overlap.svg", "mean Jaccard overlap between methods' masks"))
    else:
        parts.append(_missing("overlap", _why_no_overlap(trials, trials_path, overlap_path, overlap is not None)))
    ours = current(trials)
    failed = mark_unscored(ours).loc[ours.index.difference(scored(ours).index)]
    parts.append(f"<h2>Failed or unfinished trials ({len(failed)})</h2>")  # UNSCORED among them
    if len(failed):
        parts.append(_trial_list("failed", failed))
    gone = trials.loc[trials.index.difference(ours.index)]
    if len(gone):
        parts.append(f"<details id=\"not-in-grid\"><summary>Trials no longer in the sweep's grid ({len(gone)})"
                     "</summary><p>Left out of every table and figure: their row was fixed or dropped after it "
                     "failed, or a <code>run --force</code> with other settings replaced them. Their records and "
                     "MLflow runs are kept.</p>" + _trial_list("gone", gone) + "</details>")
    keys = ("spearman", "friedman", "group")
    parts.append(f"<h2>Summary</h2><pre>{_esc(json.dumps({k: summary[k] for k in keys}, indent=1, ensure_ascii=False))}"
                 "</pre>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>PEFT sweep report</title><style>{CSS}</style>"
            f"{CHECK_IMAGES}</head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    index.write_text(page)
    res.table.to_csv(out / "table.csv", index=False)
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2, ensure_ascii=False, allow_nan=False))
    return index
