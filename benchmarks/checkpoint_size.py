"""Bytes and seconds of one checkpoint and of the final model delta, for every method, against `full`.

Each method trains 2 steps on CB (burn-ins shortened so that every method has selected or projected by
then), writes one checkpoint and its final delta; the delta is loaded back (`load_finetuned`) and must give the
scored model's test logits exactly. Bytes do not depend on the machine.

  python benchmarks/checkpoint_size.py                      # MiniLM-L6, p = 0.005 (the README's table)
  python benchmarks/checkpoint_size.py --smoke              # tiny random BERT, seconds (CI)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables import TrialConfig, load_finetuned  # noqa: E402
from trainables.data import collate  # noqa: E402
from trainables.loop import FINAL_DIR, Trainer  # noqa: E402
from trainables.methods import METHODS, get_method  # noqa: E402

QUICK = {"sam": {"burnin": 2}, "diffprune": {"burnin": 1}, "childprune": {"fisher_batches": 2, "reselect_every": 1}}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tiny_model(folder: Path) -> str:
    import shutil

    from transformers import BertConfig, BertModel

    from trainables.models import resolve_model

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    src = Path(resolve_model("minilm-l6"))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / f, folder / f)
    return str(folder)


def measure(method: str, model: str, sparsity: float, tmp: Path) -> dict:
    cfg = TrialConfig(task="CB", method=method, model=model, seed=0,
                      sparsity=sparsity if get_method(method).uses_sparsity else None,
                      method_params=QUICK.get(method, {}),
                      training={"max_steps": 2, "eval_every": 2, "batch_size": 8})
    tr = Trainer(cfg, checkpoint_dir=str(tmp / method))
    tr.run()
    ckpt = tmp / method / "step-0000002"
    delta = tmp / method / FINAL_DIR / "model"
    test = tr.splits.test
    batch = collate(test, list(range(len(test))), tr.pad_id, torch.device("cpu"))
    with torch.inference_mode():
        scored = tr.model.eval()(batch)
    t0 = time.perf_counter()
    net, _, _ = load_finetuned(delta)
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        exact = torch.equal(net(batch), scored)
    return {"method": method, "checkpoint_bytes": folder_bytes(ckpt), "checkpoint_s": tr.timers["checkpoint_s"],
            "delta_bytes": folder_bytes(delta), "delta_load_s": round(load_s, 3), "round_trip_exact": exact}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--sparsity", type=float, default=0.005)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--smoke", action="store_true", help="a tiny random BERT: checks the script, not the sizes")
    args = ap.parse_args(argv)
    methods = ["full"] + [m for m in args.methods if m != "full"]
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny") if args.smoke else args.model
        rows = [measure(m, model, 0.01 if args.smoke else args.sparsity, Path(tmp)) for m in methods]
    full = rows[0]
    for r in rows:
        r["checkpoint_ratio"] = round(r["checkpoint_bytes"] / full["checkpoint_bytes"], 4)
        r["delta_ratio"] = round(r["delta_bytes"] / full["delta_bytes"], 4)
        print(json.dumps(r), flush=True)
    print("\n| method | checkpoint | × full | write s | delta | × full | round trip |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['checkpoint_bytes'] / 1e6:.2f} MB | {r['checkpoint_ratio']:.4f} | "
              f"{r['checkpoint_s']:.2f} | {r['delta_bytes'] / 1e6:.3f} MB | {r['delta_ratio']:.4f} | "
              f"{'exact' if r['round_trip_exact'] else 'DIFFERS'} |")
    return 0 if all(r["round_trip_exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
