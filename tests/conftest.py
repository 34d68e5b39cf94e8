"""Shared fixtures: the real task files, a tiny random BERT with the embedded tokenizer, a cache dir."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PEFT_SWEEP_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
os.environ.setdefault("PEFT_SWEEP_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("PEFT_SWEEP_CACHE_DIR", str(ROOT / ".cache" / "tokens"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "CB" / "train.jsonl").is_file():
        pytest.fail(f"task data not found at {DATA_DIR}; set PEFT_SWEEP_DATA_DIR")
    return DATA_DIR


def make_tiny_model(folder: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A random-init BERT of the MiniLM vocabulary: real tokenizer, tiny and fast."""
    import torch
    from transformers import BertConfig, BertModel

    from trainables.models import resolve_model

    src = Path(resolve_model("minilm-l6"))
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / f, folder / f)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture
def tiny_trial(tiny_model, data_dir):
    """Build a TrialConfig on the tiny model with a short budget; keyword overrides on top."""
    from trainables import TrialConfig
    from trainables.methods import get_method

    def build(method="sam", task="CB", **kw):
        training = {"max_steps": 12, "eval_every": 4, "batch_size": 8, "eval_batch_size": 32, "patience": 100,
                    **kw.pop("training", {})}
        sparsity = kw.pop("sparsity", 0.01 if get_method(method).uses_sparsity else None)
        return TrialConfig(task=task, method=method, model=tiny_model, sparsity=sparsity,
                           data={"dir": str(data_dir)}, training=training, **kw)
    return build


def pytest_collection_modifyitems(items) -> None:
    """Slow tests (real sweeps, up to two minutes each) first, the quick ones after them, each in file order:
    under `make test`'s two workers the last tests handed out are then short and both workers end close together
    (in file order a two-minute sweep test near the end kept one worker busy while the other had nothing left)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
