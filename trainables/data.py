"""The paper's protocol (train/dev split, perturbation splits, dev = test) over a tokenised cache.

Tokenisation happens once per (task data, tokenizer, max length) and is stored on disk; trials read the
cache and only pad and stack in the training loop.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .tasks import Task, get_task, load_task, resolve_data_dir, task_files

CACHE_ENV = "PEFT_SWEEP_CACHE_DIR"
CACHE_FORMAT = 2  # 2: COPA questions as jiant writes them (Task.questions)


@dataclass
class Encoded:
    """One split, tokenised and flat: sequence j of example i is ``tokens[bounds[i, j, 0]:bounds[i, j, 1]]``.
    Every example has the same number of sequences (2 for COPA: one per choice; else 1).

    The tensors may live on the training device (:meth:`to`); the sequence lengths stay on the host, so
    that choosing a batch's width never waits for the device."""
    tokens: torch.Tensor  # (total,) int32
    types: torch.Tensor | None  # (total,) int8 token type ids, aligned with tokens
    bounds: torch.Tensor  # (n, n_seq, 2) int64
    labels: torch.Tensor  # (n,) float32 (class index or regression target)
    spans: torch.Tensor | None  # (n, 2, 2) token [start, end) of span1 and span2 (WSC)
    host_lengths: np.ndarray | None = field(default=None, repr=False, compare=False)  # (n, n_seq), set by to()

    def __len__(self) -> int:
        return self.bounds.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def subset(self, idx: np.ndarray) -> "Encoded":
        idx_np = np.asarray(idx, dtype=np.int64)
        idx = torch.as_tensor(idx_np).to(self.device)
        return Encoded(self.tokens, self.types, self.bounds[idx], self.labels[idx],
                       None if self.spans is None else self.spans[idx],
                       None if self.host_lengths is None else self.host_lengths[idx_np])

    def seq_lengths(self) -> np.ndarray:
        """(n, n_seq) token count of every sequence, on the host."""
        if self.host_lengths is not None:
            return self.host_lengths
        return (self.bounds[..., 1] - self.bounds[..., 0]).cpu().numpy()

    def lengths(self) -> np.ndarray:
        """Longest sequence of each example (what its batch is padded to)."""
        return self.seq_lengths().max(-1)

    def to(self, device: torch.device) -> "Encoded":
        """The split on ``device`` (one copy per tensor), its lengths kept on the host: batches are then
        indexed and padded on the device (:func:`collate`), with no host work and no copy per step."""
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return Encoded(move(self.tokens), move(self.types), move(self.bounds), move(self.labels), move(self.spans),
                       self.seq_lengths())

    def to_state(self) -> dict:
        return {"tokens": self.tokens, "types": self.types, "bounds": self.bounds, "labels": self.labels,
                "spans": self.spans}


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        import json

        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # set by the last call, not part of what the tokenizer is
        state.pop("padding", None)
        blob = json.dumps(state, sort_keys=True)
    else:
        blob = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}|{blob}".encode()).hexdigest()


def source_fingerprint(task: Task, data_dir: Path | None) -> str:
    """What a task's examples are: the sha256 of its original files (the token cache's key; a sweep's identity
    compares it when its data folder moves), or its Hub dataset."""
    if data_dir is None:
        return "hub:" + "/".join(task.hub)
    h = hashlib.sha256()
    for p in task_files(task, data_dir):
        h.update(p.read_bytes())
    return h.hexdigest()


def _encode(task: Task, records: list[dict], tokenizer, max_len: int) -> Encoded:
    spans = []
    if task.kind == "span_pair":
        enc = tokenizer([r["words"] for r in records], is_split_into_words=True, truncation=True, max_length=max_len)
        for i, r in enumerate(records):
            word_ids = enc.word_ids(i)
            pair = []
            for s, e in (r["span1"], r["span2"]):
                toks = [t for t, w in enumerate(word_ids) if w is not None and s <= w < e]
                pair.append([toks[0], toks[-1] + 1] if toks else [0, 1])  # truncated away: fall back to [CLS]
            spans.append(pair)
        seqs = [[x] for x in enc["input_ids"]]
        tts = [[x] for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
    elif task.kind == "multiple_choice":
        firsts = [f"{r['premise']} {task.questions[r['question']]}" for r in records for _ in r["choices"]]
        seconds = [c for r in records for c in r["choices"]]
        enc = tokenizer(firsts, seconds, truncation=True, max_length=max_len)
        n = len(records[0]["choices"]) if records else 2
        seqs = [enc["input_ids"][i:i + n] for i in range(0, len(firsts), n)]
        tts = [enc["token_type_ids"][i:i + n] for i in range(0, len(firsts), n)] if "token_type_ids" in enc else None
    else:
        args = [[r["text_a"] for r in records]]
        if "text_b" in records[0]:
            args.append([r["text_b"] for r in records])
        enc = tokenizer(*args, truncation=True, max_length=max_len)
        seqs = [[x] for x in enc["input_ids"]]
        tts = [[x] for x in enc["token_type_ids"]] if "token_type_ids" in enc else None

    flat_ids = [seq for group in seqs for seq in group]
    lens = torch.tensor([len(x) for x in flat_ids], dtype=torch.int64)
    ends = lens.cumsum(0)
    bounds = torch.stack([ends - lens, ends], -1).view(len(records), -1, 2)
    tokens = torch.tensor([t for x in flat_ids for t in x], dtype=torch.int32)
    types = None if tts is None else torch.tensor([t for g in tts for x in g for t in x], dtype=torch.int8)
    labels = torch.tensor([float(r["label"]) for r in records], dtype=torch.float32)
    return Encoded(tokens, types, bounds, labels, torch.tensor(spans, dtype=torch.int64) if spans else None)


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft-sweep").expanduser()


def load_encoded(task_name: str, tokenizer, max_len: int, cfg: DataConfig) -> tuple[Encoded, Encoded]:
    """(original train, original dev) tokenised; built once and then read from the cache."""
    task = get_task(task_name)
    data_dir = resolve_data_dir(cfg.dir)
    key = hashlib.sha256("|".join([str(CACHE_FORMAT), task.name, source_fingerprint(task, data_dir),
                                    _tokenizer_fingerprint(tokenizer), str(max_len)]).encode()).hexdigest()[:20]
    path = cache_root(cfg) / f"{task.name}-{key}.pt"
    if path.is_file():
        state = torch.load(path, weights_only=True)
        return Encoded(**state["train"]), Encoded(**state["dev"])
    train_records, dev_records = load_task(task.name, data_dir)
    train, dev = (_encode(task, r, tokenizer, max_len) for r in (train_records, dev_records))
    path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename: concurrent trials building the same cache never read a half-written file
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"train": train.to_state(), "dev": dev.to_state()}, tmp)
    os.replace(tmp, path)
    return train, dev


def protocol_indices(n_train: int, cfg: DataConfig, perturbation: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, dev indices) into the original train set. The split seed, not the training seed,
    fixes them; perturbation split k further drops a random ``perturb_fraction`` of the train part."""
    perm = np.random.default_rng(cfg.split_seed).permutation(n_train)
    n_dev = int(round(n_train * cfg.dev_fraction))
    dev, train = np.sort(perm[:n_dev]), np.sort(perm[n_dev:])
    if perturbation is not None:
        rng = np.random.default_rng([cfg.split_seed, 1_000_003, perturbation])
        n_keep = len(train) - int(round(len(train) * cfg.perturb_fraction))
        train = np.sort(rng.choice(train, size=n_keep, replace=False))
    return train, dev


@dataclass
class Splits:
    train: Encoded
    dev: Encoded
    test: Encoded


def build_splits(task_name: str, tokenizer, max_len: int, cfg: DataConfig, perturbation: int | None) -> Splits:
    orig_train, orig_dev = load_encoded(task_name, tokenizer, max_len, cfg)
    train_idx, dev_idx = protocol_indices(len(orig_train), cfg, perturbation)
    return Splits(orig_train.subset(train_idx), orig_train.subset(dev_idx), orig_dev)


def round_up(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple


def collate(data: Encoded, idx: list[int] | np.ndarray, pad_id: int, device: torch.device,
            pad_to_multiple: int = 1, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence, rounded up to ``pad_to_multiple`` (few shapes for
    ``torch.compile``; the padding is masked), on ``data``'s device, then move it to ``device`` (a no-op
    when ``data`` lives there already). ``index``: the same indices as a tensor on ``data``'s device,
    which spares their copy. Gathers with a handful of tensor ops, no Python loop over examples."""
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be ≥ 1, got {pad_to_multiple}")
    idx_np = np.asarray(idx, dtype=np.int64)
    sel = torch.as_tensor(idx_np).to(data.device) if index is None else index
    width = round_up(int(data.seq_lengths()[idx_np].max()), pad_to_multiple)  # host lengths: no device sync
    bounds = data.bounds[sel]  # (n, n_seq, 2)
    n_seq = bounds.shape[1]
    offsets = torch.arange(width, dtype=torch.int64, device=data.device)
    valid = offsets < (bounds[..., 1] - bounds[..., 0]).unsqueeze(-1)  # (n, n_seq, width)
    pos = (bounds[..., 0].unsqueeze(-1) + offsets).clamp_(max=max(data.tokens.numel() - 1, 0))
    pos = pos.view(-1)  # index_select, not tokens[pos]: advanced indexing with a 3-D index is ~1000x slower on CPU
    ids = torch.where(valid, data.tokens.index_select(0, pos).view(valid.shape).long(), pad_id)
    squeeze = (lambda t: t[:, 0]) if n_seq == 1 else (lambda t: t)  # noqa: E731
    batch = {"input_ids": squeeze(ids), "attention_mask": squeeze(valid.long()), "labels": data.labels[sel]}
    if data.types is not None:
        types = data.types.index_select(0, pos).view(valid.shape).long()
        batch["token_type_ids"] = squeeze(torch.where(valid, types, 0))
    if data.spans is not None:
        spans = data.spans[sel]
        batch["span1"], batch["span2"] = spans[:, 0], spans[:, 1]
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
