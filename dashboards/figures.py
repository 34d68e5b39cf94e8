"""The report's figures, drawn with matplotlib and saved as SVG (sharp at any zoom, no network).

Each function takes DataFrames already computed by ``dashboards.analysis`` (or read from the export) and a
path; none computes statistics. Methods keep one colour across figures (the order of ``methods``)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scikit_posthocs as sp  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9})  # text stays text in the SVG
BASELINE_STYLE = dict(color="black", linestyle="--", linewidth=1, label="majority class")
KIND_ORDER = ["embeddings", "attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out", "layernorm", "pooler",
              "bias", "other"]


def fmt_p(p: float | None) -> str:
    """p-values as a reader wants them: ``p < 1e-3`` below a thousandth, two significant digits otherwise."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "p n/a"
    return "p < 1e-3" if p < 1e-3 else f"p = {p:.2g}"


def colours(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _save(fig, path: Path) -> None:
    with warnings.catch_warnings():  # a crowded figure keeps its default margins: fine, and no console noise
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.tight_layout()
    fig.savefig(path, format="svg", bbox_inches="tight")  # a legend beside the axes is never cut off
    plt.close(fig)


def _baseline(ax, score: float) -> None:
    """The majority-class line at ``score`` (×100). One far off the data (STS-B's 0, scores near 85) stretched the
    axis until the data shared one strip: where the data would fill less than a quarter of the axis, the axis keeps
    the data's range and the panel says where the line is."""
    y, (low, high) = 100 * score, ax.get_ylim()
    if high - low >= 0.25 * (max(high, y) - min(low, y)):
        ax.axhline(y, **BASELINE_STYLE)
        return
    below, room = y < low, 0.1 * (high - low)  # a strip free of data for the note
    ax.set_ylim(low - room if below else low, high if below else high + room)
    ax.text(0.01, 0.01 if below else 0.99, f"majority class {y:.1f}, {'below' if below else 'above'} the axis",
            transform=ax.transAxes, fontsize=7, va="bottom" if below else "top")


def _legend_below(fig, axes) -> None:
    """One legend for all panels, below them: inside a panel it covered the data (a collapse's points at the
    majority line, ten methods' curves in a 3-inch panel). ``_save``'s tight box keeps it whole."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.tight_layout()
        fig.legend(list(entries.values()), list(entries), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(entries), 6), fontsize=7, frameon=False)


def _task_axes(n: int, width: float = 3.2, height: float = 3.0):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def seeds_figure(df: pd.DataFrame, methods: list[str], baselines: dict[str, float], path: Path) -> None:
    """Every seed's test score per method, one panel per task: a box (quartiles) and the points themselves."""
    tasks = sorted(df["task"].unique())
    col = colours(methods)
    fig, axes = _task_axes(len(tasks))
    rng = np.random.default_rng(0)
    for ax, task in zip(axes, tasks):
        part = df[df["task"] == task]
        present = [m for m in methods if m in set(part["method"])]
        data = [100 * part.loc[part["method"] == m, "test_score"].to_numpy() for m in present]
        ax.boxplot(data, positions=range(len(present)), widths=0.5, showfliers=False,
                   medianprops={"color": "grey"})
        for i, (m, ys) in enumerate(zip(present, data)):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(ys)), ys, s=14, color=col[m], zorder=3)
        if task in baselines:
            _baseline(ax, baselines[task])
        ax.set_xticks(range(len(present)), present, rotation=45, ha="right")
        ax.set(title=f"{task} (n = {len(part)} trials)", ylabel="test score ×100")
    _legend_below(fig, axes)
    _save(fig, path)


def curves_figure(curves: pd.DataFrame, methods: list[str], baselines: dict[str, float], path: Path) -> None:
    """Dev score against step, one thin line per trial, one colour per method, one panel per task."""
    ev = curves[curves["kind"] == "eval"].dropna(subset=["dev_score"])
    tasks = sorted(ev["task"].unique())
    col = colours(methods + sorted(set(ev["method"]) - set(methods)))
    fig, axes = _task_axes(len(tasks))
    for ax, task in zip(axes, tasks):
        part = ev[ev["task"] == task]
        for m, by_method in part.groupby("method"):
            for i, (_, trial) in enumerate(by_method.groupby("trial_key")):
                trial = trial.sort_values("step")
                ax.plot(trial["step"], 100 * trial["dev_score"], color=col[m], alpha=0.7, linewidth=1,
                        label=m if i == 0 else None)
        if task in baselines:
            _baseline(ax, baselines[task])
        ax.set(title=task, xlabel="step", ylabel="dev score ×100")
    _legend_below(fig, axes)
    _save(fig, path)


def rank_figure(pairs: pd.DataFrame, rho: dict, methods: list[str], path: Path) -> None:
    """Fig. 3b: stability rank against performance rank of the pairs ρ is computed on
    (``dashboards.analysis.spearman_pairs``), jittered so equal ranks do not overprint; colour per method, marker
    per task; integer ticks."""
    col = colours(methods)
    markers = dict(zip(sorted(pairs["task"].unique()), "osD^vP*Xph"))
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in pairs.itertuples():
        jx, jy = rng.uniform(-0.18, 0.18, 2)
        ax.scatter(r.stab_rank + jx, r.perf_rank + jy, color=col.get(r.method, "grey"), marker=markers[r.task],
                   s=30, alpha=0.85)
    for m in methods:
        ax.scatter([], [], color=col[m], marker="o", label=m)
    for t, mk in markers.items():
        ax.scatter([], [], color="grey", marker=mk, label=t)
    ranks = range(1, int(np.ceil(max(pairs["stab_rank"].max(), pairs["perf_rank"].max()))) + 1)
    if len(ranks) <= 12:  # ranks are integers (halves for ties): MaxNLocator falls back to fractions on 1-2 of them
        ax.set_xticks(ranks)
        ax.set_yticks(ranks)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    title = "stability rank vs performance rank"
    if rho.get("rho") is not None:
        # tasks of unequal size: ρ is of the ranks scaled within each task, which the plotted raw ranks are not
        scaled = " of ranks scaled (r − 0.5)/k per task" if pairs.groupby("task").size().nunique() > 1 else ""
        title += (f"\nSpearman ρ{scaled} = {rho['rho']:.2f} over n = {rho['n_pairs']} (method, task) pairs\n"
                  f"{fmt_p(rho['permutation_p_value'])} within-task permutation "
                  f"(scipy, pairs taken as independent: {fmt_p(rho['p_value'])})")
    elif rho.get("reason"):
        title += f"\nno Spearman ρ: {rho['reason']}"
    if rho.get("n_pairs_one_class"):  # a collapse is a small std with a low mean: it alone can pull ρ down
        rest = rho.get("without_one_class") or {}
        title += (f"\n{rho['n_pairs_one_class']} pair(s) hold a seed that predicted one class; without them "
                  + (f"ρ = {rest['rho']:.2f} over {rest['n_pairs']}, {fmt_p(rest['permutation_p_value'])}"
                     if rest.get("rho") is not None else "no ρ (too few pairs)"))
    ax.set(xlabel="stability rank (1 = smallest std)", ylabel="performance rank (1 = best mean)", title=title)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    _save(fig, path)


def sparsity_figure(sweep: pd.DataFrame, baselines: dict[str, float], methods: list[str],
                    path: Path) -> None:
    """Fig. 3a: test and train score (mean ± std over seeds) against sparsity, one row per task, for the methods
    that take a sparsity (the others have one score at every p), in their colours of the other figures."""
    tasks = sorted(sweep["task"].unique())
    col = colours(methods + sorted(set(sweep["method"]) - set(methods)))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for method, part in sweep[sweep["task"] == task].groupby("method"):
            part = part.sort_values("sparsity")
            for ax, c in zip(row, ("test_score", "train_score")):
                if f"{c}_mean" in part:
                    ax.errorbar(part["sparsity"], 100 * part[f"{c}_mean"], yerr=100 * part[f"{c}_std"].fillna(0),
                                label=method, marker="o", capsize=3, color=col[method])
        for ax, name in zip(row, ("test", "train")):
            if name == "test" and task in baselines:
                _baseline(ax, baselines[task])
            ax.set(xscale="log", xlabel="sparsity p", ylabel=f"{name} score ×100 (mean ± std)",
                   title=f"{task}: {name} vs sparsity")
    _legend_below(fig, list(axes.flat))
    _save(fig, path)


def projection_figure(curves: pd.DataFrame, key: str, path: Path) -> str:
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
    _save(fig, path)
    return f"{first['method']}/{first['task']} seed {first['seed']} ({key})"


def cd_figure(ranks: dict[str, float], p_values: dict[str, dict[str, float]], cd: float, alpha: float,
              methods: list[str], path: Path) -> None:
    """Critical-difference diagram (scikit-posthocs): average ranks on the axis, methods that Nemenyi's test
    does not separate at α joined by a bar; the CD is drawn above the axis. No ``p_values``: no pair separated
    (Friedman did not reject, so no post-hoc test)."""
    names = list(ranks)
    sig = pd.DataFrame(1.0, index=names, columns=names)
    for a, row in p_values.items():
        for b, p in row.items():
            sig.loc[a, b] = p
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.3 * len(names)))
    col = colours(methods + sorted(set(names) - set(methods)))
    sp.critical_difference_diagram(pd.Series(ranks), sig, cd=cd, alpha=alpha, ax=ax,
                                   color_palette={m: col[m] for m in names},
                                   label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}")
    _save(fig, path)


def seeds_enough_figure(seeds: pd.DataFrame, taus: dict[str, float | None], methods: list[str], path: Path) -> None:
    """Stability rank (of the AVG std) of each method against the number of seeds used; band: 10-90% of seed
    subsets. Title: Kendall's τ with the all-seed ranking at each n."""
    col = colours(methods)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, part in seeds.groupby("method"):
        part = part.sort_values("n_seeds")
        ax.plot(part["n_seeds"], part["mean_rank"], marker="o", color=col.get(m, "grey"), label=m)
        ax.fill_between(part["n_seeds"], part["rank_p10"], part["rank_p90"], color=col.get(m, "grey"), alpha=0.12)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.invert_yaxis()
    tau = ", ".join(f"{n}: {t:.2f}" for n, t in taus.items() if t is not None)
    ax.set(xlabel="seeds used", ylabel="stability rank (1 = smallest AVG std)",
           title=f"has the stability ranking settled?\nKendall τ with all seeds — {tau}")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    _save(fig, path)


def anatomy_figure(masks: pd.DataFrame, methods: list[str], path: Path) -> None:
    """Where each method puts its budget: share of the trial's mask per module kind, averaged over trials."""
    share = masks.groupby(["trial_key", "method", "kind"])["count"].sum()
    share = share / share.groupby(level="trial_key").transform("sum")
    mean = share.groupby(["method", "kind"]).mean().unstack("kind").fillna(0)
    mean = mean.reindex([m for m in methods if m in mean.index] + sorted(set(mean.index) - set(methods)))
    kinds = [k for k in KIND_ORDER if k in mean.columns] + sorted(set(mean.columns) - set(KIND_ORDER))
    cmap = plt.get_cmap("tab20")
    # tall enough for its legend (one line per module kind), not only for its bars
    fig, ax = plt.subplots(figsize=(7, max(0.8 + 0.35 * len(mean), 0.4 + 0.16 * len(kinds))))
    left = np.zeros(len(mean))
    for i, k in enumerate(kinds):
        ax.barh(mean.index, 100 * mean[k], left=left, color=cmap(i), label=k)
        left += 100 * mean[k].to_numpy()
    ax.invert_yaxis()
    ax.set(xlabel="share of the trainable budget (%)", xlim=(0, 100), title="mask anatomy by module kind")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    _save(fig, path)


def overlap_figure(overlap: pd.DataFrame, methods: list[str], path: Path) -> None:
    """Mean Jaccard overlap |A∩B|/|A∪B| of two methods' masks over (task, seed), as a heat map."""
    both = pd.concat([overlap, overlap.rename(columns={"method_a": "method_b", "method_b": "method_a"})])
    mean = both.groupby(["method_a", "method_b"])["jaccard"].mean().unstack("method_b")
    names = [m for m in methods if m in mean.index] + sorted(set(mean.index) - set(methods))
    mean = mean.reindex(index=names, columns=names)
    for m in names:
        mean.loc[m, m] = 1.0
    fig, ax = plt.subplots(figsize=(2.5 + 0.8 * len(names), 2 + 0.7 * len(names)))
    im = ax.imshow(mean.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            v = mean.iat[i, j]
            if pd.notna(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("mean Jaccard overlap of masks")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)
