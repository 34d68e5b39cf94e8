"""Training throughput of our trainable against a plain PyTorch loop, measured in the same run.

Prints one JSON line per case: samples/s, peak GPU memory, and the ratio to the plain loop. Only training
steps are timed (no dev evaluation, no best-state copy: see ``train_steps``), on synthetic fixed-length
batches whose split lives on the device as a real trial's does; each case's Trainer is freed before the next
case's peak memory is measured. peak_mem_gib is the timed steps' peak (stats reset after setup: model,
optimizer state, mask and data are then allocated); peak_mem_incl_setup_gib also covers setup (SAM's burn-in),
as a real trial's peak_gpu_mem_mb does. The plain
loop is what a careful engineer writes by hand: same model, same batch, same precision, AdamW (fused
on CUDA), no data loading at all (a fixed batch on the device). Also prints the share of a real CB
trial's wall time spent outside training steps.

  python benchmarks/trial_throughput.py --model minilm-l6 --batch-size 32 --seq-len 128 --steps 100
  python benchmarks/trial_throughput.py --model roberta-base-shape ...      # random init, RoBERTa-base shapes
  python benchmarks/trial_throughput.py --smoke                             # CPU, tiny, seconds (CI)
  python benchmarks/trial_throughput.py --model /tmp/minilm-l6 --profile    # a model folder; profile full/sam steps
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables import TrialConfig  # noqa: E402
from trainables.data import Encoded, Splits  # noqa: E402
from trainables.loop import Trainer, release_memory  # noqa: E402
from trainables.models import TaskModel, load_backbone, resolve_model  # noqa: E402


SHAPES = ("roberta-base-shape", "tiny", "tiny-roberta-vocab")
SMOKE_SHAPE = {"roberta-base-shape": "tiny-roberta-vocab"}  # --smoke: RoBERTa-base's vocabulary and positions


def model_folder(name: str, tmp: Path, tokenizer_from: str = "minilm-l6") -> str:
    """A model path: the embedded MiniLM or any model folder as is, or a random-init model of RoBERTa-base's
    or a tiny shape (with the tokenizer of ``tokenizer_from``)."""
    if name not in SHAPES:
        return resolve_model(name)
    import shutil

    from transformers import BertConfig, BertModel

    shapes = {"roberta-base-shape": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                         intermediate_size=3072, vocab_size=50265),
              "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           vocab_size=30522),
              "tiny-roberta-vocab": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=50265)}[name]
    folder = tmp / name
    BertModel(BertConfig(max_position_embeddings=514, **shapes)).save_pretrained(folder)
    src = Path(resolve_model(tokenizer_from))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / f, folder / f)
    return str(folder)


def synthetic(n: int, seq_len: int, vocab: int) -> Encoded:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1000, min(vocab, 30000), (n * seq_len,), generator=g, dtype=torch.int32)
    starts = torch.arange(n, dtype=torch.int64) * seq_len
    bounds = torch.stack([starts, starts + seq_len], -1).view(n, 1, 2)
    return Encoded(tokens, None, bounds, torch.randint(0, 3, (n,), generator=g).float(), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(path: str, args, device) -> dict:
    release_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = TaskModel(load_backbone(path), "classification", 3).to(device)
    model.train()  # from_pretrained leaves the backbone in eval mode: no dropout, which our Trainer's steps pay for
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if device.type == "cuda" else {}))
    ids = torch.randint(1000, 30000, (args.batch_size, args.seq_len), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    labels = torch.randint(0, 3, (args.batch_size,), device=device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        with amp():
            loss = model.loss(model(batch), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    out = {"samples_per_s": args.steps * args.batch_size / (time.perf_counter() - t0), **peak(device)}
    out["peak_mem_incl_setup_gib"] = out["peak_mem_gib"]  # its setup is the model load: in the same window
    del model, opt, loss
    release_memory()
    return out


def peak(device) -> dict:
    return {"peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def train_steps(tr: Trainer, n: int) -> None:
    """``n`` more training steps of ``tr``: Trainer.train's own step code with no evaluation point (dev
    evaluation, best-state copy, checkpoint) between them; ``max_steps`` stays where the config put it (the
    learning-rate schedule), beyond the steps run here, and ``eval_every`` beyond those."""
    tc = tr.cfg.training
    stop_at = tr.step + n
    if stop_at >= tc.max_steps or tc.eval_every <= stop_at:
        raise ValueError(f"{n} steps from step {tr.step}: max_steps ({tc.max_steps}) and eval_every "
                         f"({tc.eval_every}) must lie beyond them")
    tr.train(until=stop_at)
    if tr.step != stop_at:
        raise RuntimeError(f"Trainer.train stopped at step {tr.step}, not {stop_at}")


def profile_step(tr: Trainer, device) -> str:
    """torch.profiler's top-ops table of one more training step of ``tr`` (no evaluation in it)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        train_steps(tr, 1)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


def with_synthetic_train(tr: Trainer, args, device) -> None:
    """Replace the trial's train split by fixed-length synthetic examples, moved to the device once as a real
    trial's splits are (Trainer._setup_data): a step then indexes and pads on the device, no host copy."""
    data = synthetic(args.batch_size * 64, args.seq_len, 30000).to(device)
    tr.splits = Splits(data, tr.splits.dev, tr.splits.test)
    tr.train_lengths = data.lengths()
    tr.batches_per_epoch = 64


def ours(path: str, method: str, args, device, data_dir: str, profile: bool = False) -> dict:
    """Our Trainer's training steps alone (timed: ``args.steps`` after ``args.warmup``). Peak memory: of the
    training steps (reset after setup: model, optimizer state and mask are what is then allocated), and including
    setup (SAM's burn-in, what a real trial's peak_gpu_mem_mb holds)."""
    params = {"full": {}, "sam": {"burnin": 4}, "lora": {}, "random": {}, "bitfit": {}}[method]
    n_steps = args.warmup + args.steps + 1  # + 1 profiled step
    cfg = TrialConfig(task="CB", method=method, model=path, sparsity=0.005 if method not in ("full", "bitfit") else None,
                      data={"dir": data_dir}, method_params=params,
                      training={"batch_size": args.batch_size, "max_steps": n_steps + 1, "eval_every": n_steps + 2,
                                "max_seq_length": args.seq_len, "checkpoint_every": 0})
    release_memory()  # the earlier cases' Trainers (reference cycles) and cached blocks: not in this peak
    tr = Trainer(cfg)
    tr.setup()  # resets the peak memory stats first
    setup_peak = peak(device)["peak_mem_gib"]
    with_synthetic_train(tr, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_steps(tr, args.warmup)  # warm-up steps (allocator, kernels)
    sync(device)
    if profile:  # a pass of its own, after every timed case: a profiler that ran could slow the launches after it
        out = {"profile": profile_step(tr, device)}
    else:
        t0 = time.perf_counter()
        train_steps(tr, args.steps)
        sync(device)
        out = {"samples_per_s": args.steps * args.batch_size / (time.perf_counter() - t0), **peak(device)}
        out["peak_mem_incl_setup_gib"] = max(setup_peak, out["peak_mem_gib"]) if setup_peak is not None else None
    del tr
    release_memory()
    return out


def overhead_on_cb(path: str, args, data_dir: str) -> dict:
    """Share of a real CB trial's wall time outside training steps (start-up, model, data, evaluation)."""
    from trainables import run_trial

    cfg = TrialConfig(task="CB", method="sam", model=path, sparsity=0.005, data={"dir": data_dir},
                      method_params={"burnin": 8},
                      training={"batch_size": args.batch_size, "max_steps": args.cb_steps, "eval_every": 50,
                                "patience": 100, "max_seq_length": args.seq_len, "checkpoint_every": 0})
    r = run_trial(cfg)
    return {"wall_s": r["wall_s"], "train_s": r["train_s"], "setup_s": r["setup_s"], "eval_s": r["eval_s"],
            "outside_training_share": 1 - r["train_s"] / r["wall_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6",
                   help="minilm-l6, a model folder, or a random-init shape: " + ", ".join(SHAPES))
    p.add_argument("--tokenizer-from", default="minilm-l6", help="model (alias or folder) whose tokenizer the "
                   "random-init shapes use")
    p.add_argument("--profile", action="store_true", help="after the timed cases, torch.profiler's top-ops table "
                   "of one full and one sam step (lines profile_full, profile_sam)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--methods", default="full,sam,lora")
    p.add_argument("--cb-steps", type=int, default=300, help="length of the real CB trial for the overhead share "
                   "(0: skip it)")
    p.add_argument("--data-dir", default=os.environ.get("PEFT_SWEEP_DATA_DIR", "../shared/data"))
    p.add_argument("--smoke", action="store_true", help="tiny CPU settings for CI: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.model = SMOKE_SHAPE.get(args.model, "tiny")
        args.batch_size, args.seq_len, args.steps, args.warmup = 4, 16, 3, 1
        args.cb_steps = min(args.cb_steps, 4)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base_info = {"model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len, "device": str(device),
                 "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                 "peak_mem_scope": "peak_mem_gib: training steps (reset after setup); peak_mem_incl_setup_gib: "
                                   "from setup's start, as a trial's peak_gpu_mem_mb"}
    with tempfile.TemporaryDirectory() as tmp:
        path = model_folder(args.model, Path(tmp), args.tokenizer_from)
        failed = []  # the cases that printed an error instead of figures
        base = guarded({**base_info, "case": "plain_pytorch"}, lambda: plain_loop(path, args, device), failed)
        if base is not None:
            print(json.dumps({**base_info, "case": "plain_pytorch", **base, "ratio": 1.0}), flush=True)
        for method in args.methods.split(","):
            r = guarded({**base_info, "case": f"ours_{method}"},
                        lambda: ours(path, method, args, device, args.data_dir), failed)
            if r is None:
                continue
            plain_peak, plain_rate = (base or {}).get("peak_mem_gib"), (base or {}).get("samples_per_s")
            print(json.dumps({**base_info, "case": f"ours_{method}", **r,
                              "ratio": r["samples_per_s"] / plain_rate if plain_rate else None,
                              "mem_ratio": r["peak_mem_gib"] / plain_peak if r["peak_mem_gib"] and plain_peak else None}),
                  flush=True)
        if args.cb_steps:
            r = guarded({**base_info, "case": "cb_trial_overhead"},
                        lambda: overhead_on_cb(path, args, args.data_dir), failed)
            if r is not None:
                print(json.dumps({**base_info, "case": "cb_trial_overhead", **r}), flush=True)
        # last: a profiler that ran may slow what is timed after it (CUPTI on a GPU)
        for method in [m for m in ("full", "sam") if args.profile and m in args.methods.split(",")]:
            r = guarded({**base_info, "case": f"profile_{method}"},
                        lambda: ours(path, method, args, device, args.data_dir, profile=True), failed)
            if r is not None:
                print(json.dumps({**base_info, "case": f"profile_{method}", **r}), flush=True)
    sys.exit(1 if failed else 0)


def guarded(label: dict, measure, failed: list):
    """One case's figures, or None: a case that fails (LoRA through a peft the GPU image has never run) prints
    ``label`` with its error as its line, goes into ``failed``, and the script goes on to the next case, so one
    failure does not lose the step's later figures; the script then exits 1, so the suite records its stderr.
    sweep_packing.py guards its settings with it too."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - any failure of one case
        import traceback

        traceback.print_exc()
        failed.append(label)
        print(json.dumps({**label, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
        release_memory()
        return None


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
