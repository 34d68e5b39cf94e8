"""The seven tasks: how to read their original files (or the Hub) into plain example records.

Every loader returns ``list[dict]`` with a ``label`` plus the task's input fields, so the rest of the
pipeline (tokenisation, heads, metrics) never sees a file format.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .schema import did_you_mean

DATA_DIR_ENV = "PEFT_SWEEP_DATA_DIR"
# where each command takes a data folder from (run/validate have no --data-dir flag); the variable first, as a
# one-line error is cut at orchestrator.cli.MAX_LINE characters
WHERE = f"${DATA_DIR_ENV} or data.dir (--set data.dir=DIR; train-one, tasks: --data-dir)"


class DataError(ValueError):
    """A task file is missing or malformed; the message names the file, the line and what was expected."""


def _hub_as_is(task: Task, row: dict[str, Any]) -> dict[str, Any]:
    return row


@dataclass(frozen=True)
class Task:
    """One row of the task table: everything that differs between tasks, so adding a task adds a row."""
    name: str
    kind: str  # "classification" | "regression" | "multiple_choice" | "span_pair"
    metric: str  # name of the major metric
    labels: tuple[Any, ...]  # raw label values in class-index order; () for regression
    files: tuple[str, str]  # original (train, dev) file names in the local folder
    hub: tuple[str, str]  # (dataset id, config) on the Hugging Face Hub
    parse: Callable[[dict[str, str] | list[str] | dict[str, Any], str, int], dict[str, Any]]
    # a Hub row onto the column names of the original files, so that ``parse`` serves both sources
    from_hub: Callable[[Task, dict[str, Any]], dict[str, Any] | list[str]] = _hub_as_is
    header: bool = True  # a TSV file opens with a header line (CoLA's do not)
    # multiple choice: the text each ``question`` value stands for, appended to the premise (COPA: jiant's)
    questions: dict[str, str] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return max(len(self.labels), 1)


def _label_index(task_labels: tuple[Any, ...], value: Any, where: str) -> int:
    for i, lab in enumerate(task_labels):
        if value == lab or str(value) == str(lab):
            return i
    raise DataError(f"{where}: label {value!r} is not one of {list(task_labels)}")


def _need(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r} (expected fields: {sorted(row)})")
    return row[key]


# ---- per-task row parsers: (row, where, _) -> record ------------------------------------------

def _cola(row, where, _):
    if len(row) != 4:
        raise DataError(f"{where}: expected 4 tab-separated columns (source, label, mark, sentence), got {len(row)}")
    return {"text_a": row[3], "label": _label_index(TASKS["CoLA"].labels, row[1], where)}


def _stsb(row, where, _):
    text_a, text_b = _need(row, "sentence1", where), _need(row, "sentence2", where)
    try:
        score = float(_need(row, "score", where))
    except ValueError:
        raise DataError(f"{where}: score {row['score']!r} is not a number in [0, 5]") from None
    if not 0.0 <= score <= 5.0:
        raise DataError(f"{where}: score {score} is outside [0, 5]")
    return {"text_a": text_a, "text_b": text_b, "label": score}


def _mrpc(row, where, _):
    return {"text_a": _need(row, "#1 String", where), "text_b": _need(row, "#2 String", where),
            "label": _label_index(TASKS["MRPC"].labels, _need(row, "Quality", where), where)}


def _rte(row, where, _):
    return {"text_a": _need(row, "sentence1", where), "text_b": _need(row, "sentence2", where),
            "label": _label_index(TASKS["RTE"].labels, _need(row, "label", where), where)}


def _cb(row, where, _):
    return {"text_a": _need(row, "premise", where), "text_b": _need(row, "hypothesis", where),
            "label": _label_index(TASKS["CB"].labels, _need(row, "label", where), where)}


def _copa(row, where, _):
    question = _need(row, "question", where)
    if question not in TASKS["COPA"].questions:
        raise DataError(f"{where}: question {question!r} is not {' or '.join(map(repr, TASKS['COPA'].questions))}")
    return {"premise": _need(row, "premise", where), "question": question,
            "choices": [_need(row, "choice1", where), _need(row, "choice2", where)],
            "label": _label_index(TASKS["COPA"].labels, _need(row, "label", where), where)}


def _wsc(row, where, _):
    target = _need(row, "target", where)
    words = _need(row, "text", where).split()
    spans = []
    for s in ("span1", "span2"):
        start = int(_need(target, f"{s}_index", where))
        length = len(str(_need(target, f"{s}_text", where)).split())
        if not (0 <= start and start + length <= len(words)):
            raise DataError(f"{where}: {s} [{start}, {start + length}) is outside the text's {len(words)} words")
        spans.append([start, start + length])
    return {"words": words, "span1": spans[0], "span2": spans[1],
            "label": _label_index(TASKS["WSC"].labels, _need(row, "label", where), where)}


# ---- Hub rows onto the original files' columns: (task, row) -> what ``parse`` reads -------------

def _hub_cola(task, row):
    return ["hub", str(row["label"]), "", row["sentence"]]


def _hub_mrpc(task, row):
    return {"#1 String": row["sentence1"], "#2 String": row["sentence2"], "Quality": str(row["label"])}


def _hub_stsb(task, row):
    return {"sentence1": row["sentence1"], "sentence2": row["sentence2"], "score": str(row["label"])}


def _hub_label_name(task, row):  # the Hub has the class index, the files the class name
    return {**row, "label": task.labels[row["label"]]}


def _hub_wsc(task, row):
    return {"text": row["text"], "label": bool(row["label"]),
            "target": {k: row[k] for k in ("span1_index", "span2_index", "span1_text", "span2_text")}}


COPA_QUESTIONS = {"cause": "What was the cause of this?", "effect": "What happened as a result?"}  # jiant's text

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("CoLA", "classification", "mcc", ("0", "1"), ("train.tsv", "dev.tsv"), ("nyu-mll/glue", "cola"), _cola,
         from_hub=_hub_cola, header=False),
    Task("STS-B", "regression", "pearson_spearman", (), ("train.tsv", "dev.tsv"), ("nyu-mll/glue", "stsb"), _stsb,
         from_hub=_hub_stsb),
    Task("MRPC", "classification", "acc_f1", ("0", "1"), ("train.tsv", "dev.tsv"), ("nyu-mll/glue", "mrpc"), _mrpc,
         from_hub=_hub_mrpc),
    Task("RTE", "classification", "accuracy", ("entailment", "not_entailment"), ("train.tsv", "dev.tsv"),
         ("nyu-mll/glue", "rte"), _rte, from_hub=_hub_label_name),
    Task("CB", "classification", "acc_macro_f1", ("entailment", "contradiction", "neutral"),
         ("train.jsonl", "val.jsonl"), ("aps/super_glue", "cb"), _cb, from_hub=_hub_label_name),
    Task("COPA", "multiple_choice", "accuracy", (0, 1), ("train.jsonl", "val.jsonl"), ("aps/super_glue", "copa"), _copa,
         questions=COPA_QUESTIONS),
    Task("WSC", "span_pair", "accuracy", (False, True), ("train.jsonl", "val.jsonl"), ("aps/super_glue", "wsc.fixed"),
         _wsc, from_hub=_hub_wsc),
]}


def _fold(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def canonical_task(name: str) -> str:
    """The task's own spelling for any capitalisation or punctuation of it (``cb`` -> ``CB``, ``stsb`` -> ``STS-B``)."""
    for task in TASKS:
        if _fold(task) == _fold(name):
            return task
    raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS, _fold)}; valid tasks: {', '.join(TASKS)} "
                     "(any capitalisation)")


def get_task(name: str) -> Task:
    return TASKS[canonical_task(name)]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Config value, else $PEFT_SWEEP_DATA_DIR, else None (the Hub)."""
    value = data_dir or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        raise DataError(f"data dir {str(path)!r} is a file; give the folder that holds one sub-folder per task "
                        f"(CB/, RTE/, ...) in {WHERE}")
    if not path.is_dir():
        raise DataError(f"data dir {str(path)!r} does not exist (set {WHERE})")
    return path.resolve()


def task_files(task: Task, data_dir: Path) -> list[Path]:
    paths = [data_dir / task.name / f for f in task.files]
    for p in paths:
        if not p.is_file():
            raise DataError(f"missing task file {p} (task {task.name} expects {task.files[0]} and {task.files[1]} "
                            f"in {data_dir / task.name})")
    return paths


def _read_file(task: Task, path: Path) -> list[dict[str, Any]]:
    try:
        records = _read_rows(task, path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); give the original task file"
                        ) from None
    if not records:
        raise DataError(f"{path}: no examples in the file; give the original {task.name} file")
    return records


def _read_rows(task: Task, path: Path) -> list[dict[str, Any]]:
    records = []
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not a JSON object ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                records.append(task.parse(row, where, lineno))
        return records
    # TSV: quoting disabled (unbalanced quotes in STS-B/RTE); utf-8-sig strips MRPC's byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not task.header:
            for lineno, row in enumerate(reader, 1):
                records.append(task.parse(row, f"{path}:{lineno}", lineno))
            return records
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file, expected a header line")
        for lineno, row in enumerate(reader, 2):
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} tab-separated columns "
                                f"({', '.join(header)}), got {len(row)}")
            records.append(task.parse(dict(zip(header, row)), f"{path}:{lineno}", lineno))
    return records


def load_task(name: str, data_dir: str | os.PathLike | None) -> tuple[list[dict], list[dict]]:
    """(original train, original dev) records, from the local folder if one is given, else the Hub."""
    task = get_task(name)
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        train_path, dev_path = task_files(task, folder)
        return _read_file(task, train_path), _read_file(task, dev_path)
    import datasets  # only on the Hub path: it is slow to import

    ds = datasets.load_dataset(*task.hub)
    out = []
    for split in ("train", "validation"):
        out.append([task.parse(task.from_hub(task, dict(r)), f"{task.hub[0]}/{task.hub[1]}[{split}][{i}]", i)
                    for i, r in enumerate(ds[split])])
    return out[0], out[1]


HUB_TIMEOUT_S = 5.0


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_DATASETS_OFFLINE", "").lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def check_hub(name: str, timeout: float = HUB_TIMEOUT_S) -> None:
    """Try the Hub path of a task now, so that a machine with neither task files nor the Hub fails in
    seconds before a sweep starts (not in every trial, after retries). Online: one metadata call with a short
    timeout; in offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): a load from the local datasets cache."""
    task = get_task(name)
    try:
        if _offline():
            import datasets

            datasets.load_dataset(*task.hub)
        else:
            from huggingface_hub import HfApi

            HfApi().dataset_info(task.hub[0], timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - whatever the reason, the Hub path cannot serve this task
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:80]
        raise DataError(f"task {task.name}: no data folder is set and the Hugging Face Hub dataset "
                        f"{'/'.join(task.hub)} cannot be loaded ({reason}); set {WHERE} "
                        f"to a folder of the original task files") from None
