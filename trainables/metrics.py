"""Each task's major metric (as jiant computes it, which the paper used) plus its components."""
from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _pearson_spearman(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if np.std(preds) == 0 or np.std(labels) == 0:  # correlation undefined: score it as no correlation
        pearson = spearman = 0.0
    else:
        pearson = float(stats.pearsonr(preds, labels).statistic)
        spearman = float(stats.spearmanr(preds, labels).statistic)
    return {"pearson": pearson, "spearman": spearman, "score": (pearson + spearman) / 2}


def compute_metrics(metric: str, preds: np.ndarray, labels: np.ndarray, num_classes: int | None = None
                    ) -> dict[str, float]:
    """``preds`` are class indices (or real values for regression). Returns components and ``score``.
    ``num_classes``: the task's class count (``Task.num_labels``), which macro-F1 averages over."""
    if metric == "pearson_spearman":
        return _pearson_spearman(np.asarray(preds, dtype=float), np.asarray(labels, dtype=float))
    acc = float(accuracy_score(labels, preds))
    if metric == "accuracy":
        return {"accuracy": acc, "score": acc}
    if metric == "mcc":
        mcc = float(matthews_corrcoef(labels, preds))
        return {"mcc": mcc, "score": mcc}
    if metric == "acc_f1":
        f1 = float(f1_score(labels, preds, average="binary", zero_division=0))
        return {"accuracy": acc, "f1": f1, "score": (acc + f1) / 2}
    if metric == "acc_macro_f1":
        # Over all classes of the task (CB has 3), present in this split or not, as jiant does.
        if not num_classes:
            raise ValueError("metric 'acc_macro_f1' averages over the task's classes: give num_classes "
                             "(the task's num_labels)")
        f1 = float(f1_score(labels, preds, average="macro", labels=list(range(num_classes)), zero_division=0))
        return {"accuracy": acc, "macro_f1": f1, "score": (acc + f1) / 2}
    raise ValueError(f"unknown metric {metric!r}")


def majority_score(metric: str, labels: np.ndarray, num_classes: int | None = None) -> float:
    """The score of always predicting the most common label: the floor a trained model must beat."""
    labels = np.asarray(labels)
    if metric == "pearson_spearman":
        return 0.0
    values, counts = np.unique(labels, return_counts=True)
    return compute_metrics(metric, np.full_like(labels, values[np.argmax(counts)]), labels, num_classes)["score"]
