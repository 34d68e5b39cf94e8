import json

import pytest

from trainables.config import DataConfig
from trainables.data import protocol_indices
from trainables.tasks import TASKS, DataError, load_task

ORIGINAL = {"CoLA": (8551, 1043), "STS-B": (5749, 1500), "MRPC": (3668, 408), "RTE": (2490, 277),
            "CB": (250, 56), "COPA": (400, 100), "WSC": (554, 104)}


@pytest.mark.parametrize("task", list(TASKS))
def test_original_files_load_with_official_counts(task, data_dir):
    train, dev = load_task(task, data_dir)
    assert (len(train), len(dev)) == ORIGINAL[task]
    labels = {r["label"] for r in train}
    if TASKS[task].kind == "regression":
        assert min(labels) >= 0 and max(labels) <= 5
    else:
        assert labels == set(range(len(TASKS[task].labels)))


def test_protocol_sizes_from_the_cli(data_dir, capsys):
    from orchestrator.cli import main

    assert main(["tasks", "--data-dir", str(data_dir), "--json"]) == 0
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    for task, (n_train, n_dev) in ORIGINAL.items():
        dev = round(n_train * 0.1)
        assert (rows[task]["train"], rows[task]["dev"], rows[task]["test"]) == (n_train - dev, dev, n_dev)
        assert rows[task]["train_perturbed"] == (n_train - dev) - round((n_train - dev) * 0.1)


def test_quirks_bom_and_unbalanced_quotes(data_dir):
    mrpc, _ = load_task("MRPC", data_dir)
    assert mrpc[0]["text_a"].startswith("Amrozi accused")  # the BOM did not eat the header
    _, stsb_dev = load_task("STS-B", data_dir)
    assert any('"' in r["text_a"] + r["text_b"] for r in stsb_dev)


def _copy_task(tmp_path, data_dir, task):
    import shutil

    shutil.copytree(data_dir / task, tmp_path / task)
    return tmp_path


def test_malformed_jsonl_row_names_file_and_line(tmp_path, data_dir):
    folder = _copy_task(tmp_path, data_dir, "CB")
    lines = (folder / "CB" / "train.jsonl").read_text().splitlines()
    lines[4] = '{"premise": "x", "hypothesis": "y", "label": "maybe", "idx": 4}'
    (folder / "CB" / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:5: label 'maybe' is not one of"):
        load_task("CB", folder)
    lines[4] = "{not json"
    (folder / "CB" / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:5: not a JSON object"):
        load_task("CB", folder)


def test_malformed_tsv_row_names_file_and_line(tmp_path, data_dir):
    folder = _copy_task(tmp_path, data_dir, "RTE")
    lines = (folder / "RTE" / "dev.tsv").read_text().splitlines()
    lines[3] = "3\tonly two columns"
    (folder / "RTE" / "dev.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"dev\.tsv:4: expected 4 tab-separated columns"):
        load_task("RTE", folder)


def test_missing_file_and_unknown_task(tmp_path, data_dir):
    folder = _copy_task(tmp_path, data_dir, "CB")
    (folder / "CB" / "val.jsonl").unlink()
    with pytest.raises(DataError, match=r"missing task file .*CB/val\.jsonl"):
        load_task("CB", folder)
    with pytest.raises(ValueError, match="unknown task 'QNLI'; valid tasks: CoLA"):
        load_task("QNLI", folder)
    with pytest.raises(DataError, match="does not exist"):
        load_task("CB", tmp_path / "nowhere")


HUB_ROWS = {  # one row per task as the Hub serves it (column names of nyu-mll/glue and aps/super_glue)
    "cola": {"sentence": "The book was read .", "label": 1, "idx": 0},
    "stsb": {"sentence1": "a", "sentence2": "b", "label": 3.2, "idx": 0},
    "mrpc": {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0},
    "rte": {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0},
    "cb": {"premise": "p", "hypothesis": "h", "label": 2, "idx": 0},
    "copa": {"premise": "p", "choice1": "c1", "choice2": "c2", "question": "effect", "label": 1, "idx": 0},
    "wsc.fixed": {"text": "Mark told Pete he lied .", "span1_index": 0, "span2_index": 3, "span1_text": "Mark",
                  "span2_text": "he", "label": 1, "idx": 0},
}
FROM_HUB = {
    "CoLA": {"text_a": "The book was read .", "label": 1},
    "STS-B": {"text_a": "a", "text_b": "b", "label": 3.2},
    "MRPC": {"text_a": "a", "text_b": "b", "label": 1},
    "RTE": {"text_a": "a", "text_b": "b", "label": 1},
    "CB": {"text_a": "p", "text_b": "h", "label": 2},
    "COPA": {"premise": "p", "question": "effect", "choices": ["c1", "c2"], "label": 1},
    "WSC": {"words": "Mark told Pete he lied .".split(), "span1": [0, 1], "span2": [3, 4], "label": 1},
}


@pytest.mark.parametrize("task", list(TASKS))
def test_hub_path_with_the_hub_call_faked(task, monkeypatch):
    """No hub here: fake datasets.load_dataset and check each task row's mapping onto our records."""
    import datasets

    calls = []

    def fake_load_dataset(name, config):
        calls.append((name, config))
        return {"train": [HUB_ROWS[config]], "validation": [HUB_ROWS[config]]}

    monkeypatch.delenv("PEFT_SWEEP_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    train, dev = load_task(task, None)
    assert train == [FROM_HUB[task]] and dev == train
    assert calls == [TASKS[task].hub]


def test_every_task_is_one_row_of_the_table():
    """Task knowledge lives in the table: no code outside it asks which task it has."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "trainables").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n for n in (node.left, *node.comparators)
                         if isinstance(n, ast.Attribute) and n.attr == "name"
                         or isinstance(n, ast.Name) and n.id in ("task_name", "name")]
                texts = [c.value for n in (node.left, *node.comparators)
                         for c in ([n] if isinstance(n, ast.Constant) else getattr(n, "elts", []))
                         if isinstance(c, ast.Constant) and c.value in TASKS]
                assert not (names and texts), f"{path.name}:{node.lineno} branches on the task's name"
    assert TASKS["COPA"].questions == {"cause": "What was the cause of this?", "effect": "What happened as a result?"}


def test_split_is_fixed_by_split_seed_and_perturbations_differ():
    cfg = DataConfig()
    tr, dv = protocol_indices(1000, cfg, None)
    assert len(dv) == 100 and len(tr) == 900 and not set(tr) & set(dv)
    assert all((a == b).all() for a, b in zip((tr, dv), protocol_indices(1000, cfg, None)))
    p0, dv0 = protocol_indices(1000, cfg, 0)
    p1, _ = protocol_indices(1000, cfg, 1)
    assert (dv0 == dv).all() and len(p0) == 810 and set(p0) <= set(tr) and set(p0) != set(p1)
    other, _ = protocol_indices(1000, DataConfig(split_seed=7), None)
    assert set(other) != set(tr)
