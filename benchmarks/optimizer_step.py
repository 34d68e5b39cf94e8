"""The optimizer step alone: MaskedAdamW (SAM's p = 0.005 of the backbone) against dense AdamW over the same
parameters (fused on CUDA, foreach on CPU), on MiniLM-L6's parameter shapes. Prints one JSON line per case
with ms per step and the ratio to dense AdamW, measured in the same run.

  python benchmarks/optimizer_step.py                      # MiniLM-L6 shapes, 200 steps
  python benchmarks/optimizer_step.py --model roberta-base-shape
  python benchmarks/optimizer_step.py --smoke              # CPU, seconds (CI)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.masking import MaskedAdamW, budget, select_top  # noqa: E402


def shapes(model: str) -> dict[str, torch.Size]:
    """The backbone's parameter shapes, from its config alone (no weights read)."""
    from transformers import AutoConfig, AutoModel, BertConfig

    from trainables.models import resolve_model

    if model == "roberta-base-shape":
        cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         vocab_size=50265, max_position_embeddings=514)
    elif model == "tiny":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    else:
        cfg = AutoConfig.from_pretrained(resolve_model(model))
    with torch.device("meta"):
        net = AutoModel.from_config(cfg)
    return {f"backbone.{n}": p.shape for n, p in net.named_parameters()}


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--sparsity", type=float, default=0.005)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.model, args.steps, args.warmup = "tiny", 3, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    named = {n: torch.nn.Parameter(torch.randn(s, generator=g).to(device)) for n, s in shapes(args.model).items()}
    for prm in named.values():
        prm.grad = torch.randn(prm.shape, generator=g).to(device)
    m = sum(prm.numel() for prm in named.values())
    index = select_top({n: torch.rand(prm.shape, generator=g) for n, prm in named.items()},
                       budget(m, args.sparsity), "global")
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    dense = torch.optim.AdamW(list(named.values()), lr=1e-5, weight_decay=0.01, **kind)
    masked = MaskedAdamW([(n, prm, index[n]) for n, prm in named.items()], lr=1e-5, weight_decay=0.01)
    info = {"model": args.model, "device": str(device), "tensors": len(named), "params": m,
            "selected": masked.selected(), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "torch": torch.__version__}
    base = timed(dense.step, args.steps, args.warmup, device)
    print(json.dumps({**info, "case": f"dense_adamw_{next(iter(kind))}", "ms_per_step": base, "ratio": 1.0}),
          flush=True)
    ms = timed(masked.step, args.steps, args.warmup, device)
    print(json.dumps({**info, "case": "masked_adamw", "ms_per_step": ms, "ratio": ms / base}), flush=True)


if __name__ == "__main__":
    main()
