"""A static report (index.html + PNG figures) that opens from disk: no server, no network.

Processing comes from ``orchestrator.analysis``; this module only draws and writes HTML.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from orchestrator.analysis import analyze  # noqa: E402

# Lets a headless browser (and a curious reader) see that every figure loaded: <body data-images-loaded="true">
CHECK_IMAGES = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                "document.body.dataset.imagesLoaded=String(i.length>0&&i.every(x=>x.complete&&x.naturalWidth>0));});"
                "</script>")
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.b1{font-weight:bold;background:#e6f2e6}.b2{background:#eef6ee}
.b3{background:#f5faf5}figure{display:inline-block;margin:1em}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"""


def _table_html(table: pd.DataFrame, best: dict[str, list[str]]) -> str:
    tasks = [t for t in dict.fromkeys(table["task"]) if t != "AVG"] + ["AVG"]
    methods = list(dict.fromkeys(table["method"]))
    cell = {(r.method, r.task): r for r in table.itertuples()}
    avg_best = table[table["task"] == "AVG"].sort_values("mean", ascending=False)["method"].head(3).tolist()
    rows = ["<tr><th>method</th>" + "".join(f"<th>{html.escape(t)}</th>" for t in tasks) + "</tr>"]
    for m in methods:
        tds = []
        for t in tasks:
            r = cell.get((m, t))
            order = (avg_best if t == "AVG" else best.get(t, []))
            cls = f' class="b{order.index(m) + 1}"' if m in order else ""
            text = "" if r is None else f"{100 * r.mean:.2f} ± {100 * r.std:.2f}" if pd.notna(r.std) else \
                f"{100 * r.mean:.2f}"
            tds.append(f"<td{cls}>{text}</td>")
        rows.append(f"<tr><th>{html.escape(m)}</th>{''.join(tds)}</tr>")
    return '<table id="main-table">' + "".join(rows) + "</table>"


def _rank_figure(table: pd.DataFrame, rho: dict, path: Path) -> None:
    pairs = table[(table["task"] != "AVG") & table["std"].notna()]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(pairs["stab_rank"], pairs["perf_rank"], alpha=0.7)
    for r in pairs.itertuples():
        ax.annotate(f"{r.method}/{r.task}", (r.stab_rank, r.perf_rank), fontsize=6, alpha=0.6)
    title = "stability rank vs performance rank"
    if rho.get("rho") is not None:
        title += f"\nSpearman ρ = {rho['rho']:.3f}, p = {rho['p_value']:.2g} (n = {rho['n_pairs']})"
    ax.set(xlabel="stability rank (1 = smallest std)", ylabel="performance rank (1 = best mean)", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sparsity_figure(sweep: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (method, task), part in sweep.groupby(["method", "task"]):
        part = part.sort_values("sparsity")
        for ax, col in zip(axes, ("test_score", "train_score")):
            if f"{col}_mean" in part:
                ax.errorbar(part["sparsity"], part[f"{col}_mean"], yerr=part[f"{col}_std"], label=f"{method}/{task}",
                            marker="o", capsize=3)
    for ax, name in zip(axes, ("test", "train")):
        ax.set(xscale="log", xlabel="sparsity p", ylabel=f"{name} score (mean ± std)", title=f"{name} vs sparsity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _projection_figure(curves: pd.DataFrame, key: str, path: Path) -> str:
    part = curves[curves["trial_key"] == key]
    ev, pr = part[part["kind"] == "eval"].sort_values("step"), part[part["kind"] == "projection"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ev["step"], ev["train_loss"], marker=".", label="train loss (mean since last evaluation)")
    ax.scatter(pr["step"], pr["loss_before"], color="tab:orange", marker="v", label="loss before projection", zorder=3)
    ax.scatter(pr["step"], pr["loss_after"], color="tab:red", marker="^", label="loss after projection", zorder=3)
    first = part.iloc[0]
    ax.set(xlabel="step", ylabel="training loss", title=f"{first['method']}/{first['task']} seed {first['seed']}: "
                                                        "projection discontinuity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"{first['method']}/{first['task']} seed {first['seed']} ({key})"


def build_report(trials_path: Path, curves_path: Path | None, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = pd.read_parquet(trials_path)
    curves = pd.read_parquet(curves_path) if curves_path and Path(curves_path).is_file() else None
    table, summary, sweep, tests = analyze(trials)
    main = summary["groups"][0]
    main_table = table[(table["group_perturbation"] == main["perturbation"]) &
                       ((table["group_sparsity"] == main["sparsity"]) if main["sparsity"] is not None
                        else table["group_sparsity"].isna())]
    parts = [f"<h1>PEFT sweep report: {html.escape(', '.join(map(str, trials['sweep'].dropna().unique())) or 'trials')}</h1>",
             f"<p>{summary['n_finished']} of {summary['n_trials']} trials FINISHED. Test score = the original dev set; "
             "mean ± std over seeds, ×100. Best three per column marked.</p>",
             f"<h2>Table 1 (sparsity {main['sparsity']}, perturbation: {main['perturbation']})</h2>",
             _table_html(main_table, main["best"])]
    _rank_figure(main_table, main["spearman"], out / "ranks.png")
    parts.append('<h2>Stability vs performance (Fig. 3b)</h2><figure><img src="ranks.png" alt="rank correlation">'
                 "</figure>")
    if trials["sparsity"].dropna().nunique() > 1:
        _sparsity_figure(sweep, out / "sparsity.png")
        parts.append('<h2>Sparsity sweep (Fig. 3a)</h2><figure><img src="sparsity.png" alt="sparsity"></figure>')
    if curves is not None:
        projected = curves[curves["kind"] == "projection"]["trial_key"].unique()
        if len(projected):
            label = _projection_figure(curves, projected[0], out / "projection.png")
            parts.append(f"<h2>Projection discontinuity (Fig. 4): {html.escape(label)}</h2>"
                         '<figure><img src="projection.png" alt="projection"></figure>')
    failed = trials[trials["status"] != "FINISHED"]
    parts.append(f"<h2>Failed or unfinished trials ({len(failed)})</h2>")
    if len(failed):
        parts.append('<table id="failed"><tr><th>trial</th><th>status</th><th>error</th></tr>' + "".join(
            f"<tr><td>{html.escape(str(r.method))}/{html.escape(str(r.task))} s{r.seed} {r.trial_key}</td>"
            f"<td>{r.status}</td><td><pre>{html.escape(str(r.error or '')[-1500:])}</pre></td></tr>"
            for r in failed.itertuples()) + "</table>")
    parts.append(f"<h2>Summary</h2><pre>{html.escape(json.dumps({k: summary[k] for k in ('spearman', 'group')}, indent=1))}</pre>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>PEFT sweep report</title><style>{CSS}</style>"
            f"{CHECK_IMAGES}</head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    index.write_text(page)
    table.to_csv(out / "table.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return index
