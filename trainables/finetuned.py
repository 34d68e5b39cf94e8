"""A finished trial's model as a delta from its base model, and back.

A delta (``model/delta.safetensors`` + ``model/meta.json``) holds what the trial trained, after the method's
``finalize``: the head whole, the masked entries' values and indices, or the method's dense tensors (BitFit's
biases, LoRA's factors, adapters; all of the backbone for full and Mixout). Kilobytes to a few MB for the
sparse methods instead of the whole model. :func:`load_finetuned` rebuilds base + delta into a ready model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from . import checkpoint as ckpt
from .masking import backbone_parameters, head_parameters
from .models import TaskModel, load_pretrained, load_tokenizer, resolve_model

DELTA_DIR = "model"
SAVED_MODEL, SAVED_META = "model.safetensors", "finetuned.json"


def save_delta(folder: Path, dense: dict[str, torch.Tensor], masked: dict[str, torch.Tensor],
               mask: dict[str, torch.Tensor] | None, meta: dict[str, Any]) -> Path:
    values = ckpt.gather(dense, masked, mask)
    values.update({f"mask/{n}": ckpt.compact(i) for n, i in (mask or {}).items()})
    meta = {**meta, "format": ckpt.DELTA_FORMAT, "has_mask": mask is not None,
            "mask_size": sum(int(i.numel()) for i in (mask or {}).values())}
    return ckpt.write_folder(folder, {ckpt.DELTA: values}, {ckpt.DELTA_META: meta}, crc_into=ckpt.DELTA_META)


class OutputInUse(ValueError):
    """The folder given for a model already holds something else."""


def check_out(out: str | Path, trial_key: str | None, force: bool = False) -> None:
    """Refuse to write trial ``trial_key``'s model into a folder that holds anything but that trial's model:
    another trial's model (or other files) would be overwritten or mixed with it. Reloading the same trial
    into its folder may overwrite; ``force`` writes anyway."""
    out = Path(out)
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    held = out / SAVED_META
    if held.is_file():
        try:
            meta = json.loads(held.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("trial_key") == trial_key:
            return
        what = (f"the model of another trial ({meta.get('variant') or meta.get('method')} on {meta.get('task')}, "
                f"seed {meta.get('seed')}, trial {meta.get('trial_key')})" if meta else f"an unreadable {SAVED_META}")
    else:
        names = sorted(p.name for p in out.iterdir())
        what = f"files that are not a fine-tuned model ({', '.join(names[:3])}{', ...' * (len(names) > 3)})"
    raise OutputInUse(f"--out {str(out)!r} already holds {what}; give another --out (an empty or new folder), or "
                      f"pass --force to write trial {trial_key}'s model there anyway")


def read_meta(folder: str | Path) -> tuple[Path, bool, dict[str, Any]]:
    """(the folder that holds the model, whether it is a saved ready folder, its meta) from a delta folder, an
    artifact folder holding ``model/``, or a folder :func:`save_finetuned` wrote."""
    folder = Path(folder)
    if (folder / DELTA_DIR / ckpt.DELTA_META).is_file():  # an artifact folder that holds model/
        folder = folder / DELTA_DIR
    saved = (folder / SAVED_META).is_file()
    meta_file = folder / (SAVED_META if saved else ckpt.DELTA_META)
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder}: no fine-tuned model here (expected {ckpt.DELTA_META} and {ckpt.DELTA}, "
                                f"or {SAVED_META})")
    return folder, saved, json.loads(meta_file.read_text())


def load_finetuned(folder: str | Path, model: str | None = None) -> tuple[TaskModel, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, meta) from a delta folder (or a folder :func:`save_finetuned` wrote).
    ``model`` overrides where the base model is found (same weights, checked by hash)."""
    from .methods import get_method

    folder, saved, meta = read_meta(folder)
    path = resolve_model(model or meta["model"])
    tokenizer = load_tokenizer(str(folder) if saved else path, words=meta["kind"] == "span_pair")
    torch.manual_seed(meta["seed"])
    backbone, fresh = load_pretrained(path)
    net = TaskModel(backbone, meta["kind"], meta["num_labels"], fresh)
    theta0 = {n: p.detach().to("cpu", copy=True) for n, p in backbone_parameters(net).items()}
    ckpt.check_base(meta["base_hash"], ckpt.base_hash(theta0), f"fine-tuned model {folder}")
    cls = get_method(meta["method"])
    method = cls(cls.Params.model_validate(meta["method_params"]), meta["sparsity"], meta["seed"])
    if cls.changes_structure:
        method.prepare(net)
    if saved:
        net.load_state_dict(load_file(str(folder / SAVED_MODEL)))
    else:
        ckpt.check_crc(folder, meta, "model delta", "download it again (`peft-sweep load RUN_ID`); if MLflow's copy "
                       "is damaged too, rerun the trial")
        values = load_file(str(folder / ckpt.DELTA))
        mask = {k[5:]: v.long() for k, v in values.items() if k.startswith("mask/")} if meta["has_mask"] else None
        dense = {**head_parameters(net), **dict(method.dense_parameters(net))}
        ckpt.scatter({k: v for k, v in values.items() if not k.startswith("mask/")}, dense,
                     backbone_parameters(net), mask, theta0)
    return net.eval(), tokenizer, meta


def save_finetuned(net: TaskModel, tokenizer, meta: dict[str, Any], out: str | Path, force: bool = False) -> Path:
    """A ready-to-use folder: the whole model's weights, the backbone's config, the tokenizer and the meta.
    A folder that holds another model is refused (:func:`check_out`) unless ``force``."""
    from safetensors.torch import save_file

    check_out(out, meta.get("trial_key"), force)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / SAVED_MODEL))
    net.backbone.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / SAVED_META).write_text(json.dumps({k: v for k, v in meta.items() if k != "crc32"}, indent=1))  # the delta's
    return out
