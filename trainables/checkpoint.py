"""Checkpoints and fine-tuned model deltas that hold what trains, never θ0.

Every method here is θ = θ0 + MΔθ: a checkpoint stores the trained tensors (dense ones whole, masked ones as
their selected values), the mask, the optimizer moments of what trains, and the loop's counters; θ0 is
rebuilt from the base model and checked by :func:`base_hash`. Tensors go to safetensors (safe to load,
mmap-able, the Hugging Face format), everything else to a small JSON. Folders are written beside their final
name and renamed into place, so a reader never sees half a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS, META = "state.safetensors", "state.json"
DELTA, DELTA_META = "delta.safetensors", "meta.json"
# 2: equal integer tensors written once (``dedupe``; meta "aliases"). Code that reads only 1 would take a format-2
# checkpoint for whole and miss the aliased tensors: it refuses the number instead
FORMAT, READS = 2, (1, 2)
DELTA_FORMAT = 1  # model deltas (finetuned.py) are not deduplicated


class CheckpointError(ValueError):
    """A checkpoint or delta that does not belong to this base model or this code."""


def base_hash(theta0: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and bytes of θ0: a resumed trial or a loaded delta must start from the
    same pretrained weights, or its sparse values mean nothing."""
    h = hashlib.sha256()
    for name in sorted(theta0):
        t = theta0[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_base(stored: str | None, actual: str, what: str) -> None:
    if stored is not None and stored != actual:
        raise CheckpointError(f"{what} was trained from other base weights (base hash {stored[:12]}…, this model "
                              f"has {actual[:12]}…): use the model it was trained from")


# --- trained tensors -----------------------------------------------------------------------------------------
def gather(dense: dict[str, torch.Tensor], masked: dict[str, torch.Tensor],
           mask: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """CPU copies of what trains: ``dense/<name>`` whole, ``sparse/<name>`` at the mask's flat indices."""
    out = {f"dense/{n}": p.detach().to("cpu", copy=True).contiguous() for n, p in dense.items()}
    for n, idx in (mask or {}).items():
        if idx.numel():
            out[f"sparse/{n}"] = masked[n].detach().reshape(-1)[idx.to(masked[n].device)].cpu().contiguous()
    return out


@torch.no_grad()
def scatter(values: dict[str, torch.Tensor], dense: dict[str, torch.Tensor], masked: dict[str, torch.Tensor],
            mask: dict[str, torch.Tensor] | None, theta0: dict[str, torch.Tensor]) -> None:
    """Write :func:`gather`'s values back; masked tensors are θ0 everywhere else."""
    for key, v in values.items():
        kind, name = key.split("/", 1)
        if kind == "dense":
            if name not in dense:
                raise CheckpointError(f"checkpoint holds {name!r}, which this model does not train")
            dense[name].copy_(v.to(dense[name].device, dense[name].dtype))
    for name, idx in (mask or {}).items():
        p = masked[name]
        p.copy_(theta0[name].to(p.device, p.dtype))
        if idx.numel():
            p.view(-1)[idx.to(p.device)] = values[f"sparse/{name}"].to(p.device, p.dtype)


# --- optimizer moments of entry-trained tensors ------------------------------------------------------------
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def gather_moments(state_dict: dict[str, Any], names: list[str],
                   index: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A torch optimizer's state_dict with the moments of ``index``'s tensors at their flat entries only
    (``names``: the optimizer's parameters in state_dict order). Elsewhere they are zero: nothing trains there."""
    state = {}
    for i, st in state_dict["state"].items():
        idx = index.get(names[i])
        state[i] = {k: v.detach().reshape(-1)[idx.to(v.device)] if idx is not None and k in MOMENTS else v
                    for k, v in st.items()}
    return {"state": state, "param_groups": state_dict["param_groups"]}


def scatter_moments(state_dict: dict[str, Any], names: list[str], index: dict[str, torch.Tensor],
                    params: dict[str, torch.Tensor]) -> dict[str, Any]:
    """:func:`gather_moments` undone: whole moments, zero outside the entries, for ``load_state_dict``."""
    state = {}
    for i, st in state_dict["state"].items():
        idx = index.get(names[i])
        state[i] = {}
        for k, v in st.items():
            if idx is not None and k in MOMENTS:
                like = params[names[i]]
                whole = torch.zeros(like.numel(), dtype=v.dtype)
                whole[idx] = v
                v = whole.view(like.shape)
            state[i][k] = v
    return {"state": state, "param_groups": state_dict["param_groups"]}


# --- the whole trial state -----------------------------------------------------------------------------------
@dataclass
class TrialState:
    """Everything a checkpoint holds, used by both save and restore."""
    trial_key: str
    base_hash: str
    step: int
    best_score: float
    best_step: int
    bad_evals: int
    curve: list[dict[str, float]]
    projections: list[dict[str, float]]
    trained: dict[str, torch.Tensor]  # gather() of the current model
    mask: dict[str, torch.Tensor] | None
    best: dict[str, torch.Tensor] | None  # gather() of the best model so far
    best_mask: dict[str, torch.Tensor] | None
    dense_opt: dict[str, Any]  # torch optimizer state_dicts
    sparse_opt: dict[str, Any] | None
    rng: torch.Tensor
    cuda_rng: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        tensors: dict[str, torch.Tensor] = {"rng": self.rng}
        if self.cuda_rng is not None:
            tensors["cuda_rng"] = self.cuda_rng
        for prefix, part in (("now", self.trained), ("best", self.best), ("mask", self.mask),
                             ("best_mask", self.best_mask)):
            tensors.update({f"{prefix}/{k}": compact(v) for k, v in (part or {}).items()})
        opt_meta = {}
        for prefix, sd in (("dense_opt", self.dense_opt), ("sparse_opt", self.sparse_opt)):
            if sd is None:
                continue
            for i, st in sd["state"].items():
                for k, v in st.items():
                    tensors[f"{prefix}/{i}/{k}"] = compact(v)
            opt_meta[prefix] = sd["param_groups"]
        aliases = dedupe(tensors)
        meta = {"format": FORMAT, "trial_key": self.trial_key, "base_hash": self.base_hash, "step": self.step,
                "best_score": self.best_score, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "curve": self.curve, "projections": self.projections, "optimizers": opt_meta,
                "has": {"mask": self.mask is not None, "best": self.best is not None,
                        "best_mask": self.best_mask is not None}, "extra": self.extra, "aliases": aliases}
        return write_folder(folder, {TENSORS: tensors}, {META: meta}, crc_into=META)

    @classmethod
    def load(cls, folder: str | Path) -> "TrialState":
        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / TENSORS).is_file():
            raise FileNotFoundError(f"no checkpoint in {folder} (expected {META} and {TENSORS})")
        meta = json.loads((folder / META).read_text())
        if meta.get("format") not in READS:
            raise CheckpointError(f"checkpoint {folder} has format {meta.get('format')}; this code reads "
                                  f"{' or '.join(map(str, READS))}")
        check_crc(folder, meta, "checkpoint", "the trial cannot resume from it: `peft-sweep rerun-failed SWEEP_DIR` "
                  "starts it over")
        tensors = load_file(str(folder / TENSORS))
        tensors.update({key: tensors[same] for key, same in meta.get("aliases", {}).items()})

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}

        def optimizer(prefix: str) -> dict[str, Any] | None:
            if prefix not in meta["optimizers"]:
                return None
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in part(prefix).items():
                i, name = k.split("/", 1)
                state.setdefault(int(i), {})[name] = v
            return {"state": state, "param_groups": meta["optimizers"][prefix]}

        has = meta["has"]
        return cls(trial_key=meta["trial_key"], base_hash=meta["base_hash"], step=meta["step"],
                   best_score=meta["best_score"], best_step=meta["best_step"], bad_evals=meta["bad_evals"],
                   curve=meta["curve"], projections=meta["projections"], trained=part("now"),
                   mask={k: v.long() for k, v in part("mask").items()} if has["mask"] else None,
                   best=part("best") if has["best"] else None,
                   best_mask={k: v.long() for k, v in part("best_mask").items()} if has["best_mask"] else None,
                   dense_opt=optimizer("dense_opt"), sparse_opt=optimizer("sparse_opt"), rng=tensors["rng"],
                   cuda_rng=tensors.get("cuda_rng"), extra=meta.get("extra", {}))


def compact(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy (a mask shares storage with MaskedAdamW's index; safetensors refuses shared tensors), with
    flat indices as int32 where they fit: half the bytes. Readers cast indices back to int64."""
    t = t.detach().cpu().clone()
    if t.dtype == torch.int64 and (t.numel() == 0 or int(t.abs().max()) < 2**31):
        t = t.to(torch.int32)
    return t.contiguous()


def dedupe(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Drop integer tensors equal to one kept (a fixed mask is the current mask, the best state's and
    MaskedAdamW's index: three copies, 2.6 of a MiniLM checkpoint's 6.2 MiB at p = 0.005); returns the dropped
    keys -> the key kept. safetensors refuses tensors that share memory, so equal ones are not stored twice by it."""
    kept: dict[tuple, str] = {}
    aliases = {}
    for key in list(tensors):
        t = tensors[key]
        if t.is_floating_point() or not t.numel() or key == "rng":
            continue
        sig = (t.dtype, tuple(t.shape), zlib.crc32(t.numpy().tobytes()))
        if sig in kept and torch.equal(tensors[kept[sig]], t):
            aliases[key] = kept[sig]
            del tensors[key]
        else:
            kept.setdefault(sig, key)
    return aliases


def crc32(path: Path) -> str:
    """CRC32 of a file, read in 64 MiB pieces: ~5 GB/s here, a fraction of writing the file (sha256: 1.8 GB/s)."""
    crc = 0
    with open(path, "rb") as f:
        while piece := f.read(64 * 2**20):
            crc = zlib.crc32(piece, crc)
    return f"{crc:08x}"


def check_crc(folder: Path, meta: dict[str, Any], what: str, then: str) -> None:
    """Refuse a tensor file whose CRC32 is not the one written: safetensors loads a flipped byte, or a file
    rewritten without a tensor, and training resumed from it without a word (the head from a fresh init, Adam
    from zero, the best state replaced by the last). Folders written before the CRC was recorded are read as
    they are."""
    for name, written in (meta.get("crc32") or {}).items():
        if (got := crc32(folder / name)) != written:
            raise CheckpointError(f"{what} {folder} is damaged: {name} has CRC32 {got}, it was written with "
                                  f"{written}; {then}")


def write_folder(folder: str | Path, tensor_files: dict[str, dict[str, torch.Tensor]],
                 json_files: dict[str, Any], crc_into: str | None = None) -> Path:
    """Write the files into ``<folder>.tmp`` and rename it into place (atomic on one filesystem). ``crc_into``:
    the JSON file (a dict) that records each tensor file's CRC32 under ``crc32``, for ``check_crc``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, tensors in tensor_files.items():
        save_file(tensors, str(tmp / name))
    if crc_into is not None:
        json_files = {**json_files, crc_into: {**json_files[crc_into],
                                               "crc32": {name: crc32(tmp / name) for name in tensor_files}}}
    for name, obj in json_files.items():
        (tmp / name).write_text(json.dumps(obj, indent=1, default=str))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
