"""Sparse checkpoints and model deltas (issue 13): they hold what trains, never θ0, and load back exactly."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.cases import METHOD_CASES
from tests.sweeps import ROOT
from trainables import run_trial
from trainables.checkpoint import META, TENSORS, CheckpointError, TrialState
from trainables.data import collate
from trainables.loop import FINAL_DIR, Trainer
from trainables.masking import budget
from trainables.models import TaskModel


def _checkpoint(tiny_trial, method, folder):
    run_trial(tiny_trial(method, method_params=METHOD_CASES[method], training={"max_steps": 4}),
              checkpoint_dir=str(folder))
    return folder / "step-0000004"


def test_a_mask_checkpoint_holds_the_selected_entries_not_the_model(tiny_trial, tmp_path):
    sam = _checkpoint(tiny_trial, "sam", tmp_path / "sam")
    full = _checkpoint(tiny_trial, "full", tmp_path / "full")
    tensors = load_file(str(sam / TENSORS))
    assert not any(k.startswith(("now/dense/backbone.", "best/dense/backbone.")) for k in tensors)
    m = sum(v.numel() for k, v in load_file(str(full / TENSORS)).items() if k.startswith("now/dense/backbone."))
    k = budget(m, 0.01)
    assert sum(v.numel() for key, v in tensors.items() if key.startswith("now/sparse/")) == k
    assert sum(v.numel() for v in TrialState.load(sam).mask.values()) == k  # equal masks are stored once
    sam_bytes = (sam / TENSORS).stat().st_size
    full_bytes = (full / TENSORS).stat().st_size
    assert sam_bytes < 0.1 * full_bytes, (sam_bytes, full_bytes)


def test_a_mask_checkpoint_stores_its_mask_once(tiny_trial, tmp_path):
    """The current mask, the best state's mask and MaskedAdamW's index are one mask for a fixed-mask method: it was
    stored three times (2.6 of a MiniLM checkpoint's 6.2 MiB at p = 0.005). Loaded, each is there again."""
    sam = _checkpoint(tiny_trial, "sam", tmp_path / "sam")
    state = TrialState.load(sam)
    distinct = {tuple(m.tolist()) for m in state.mask.values() if m.numel()}  # two LayerNorms: arange(n) twice
    stored = sum(v.numel() for key, v in load_file(str(sam / TENSORS)).items()
                 if not v.is_floating_point() and key != "rng")
    assert distinct and stored == sum(map(len, distinct)), (stored, sum(map(len, distinct)))
    assert state.best_mask is not None and state.best_mask.keys() == state.mask.keys()
    assert all(torch.equal(state.best_mask[n], state.mask[n]) for n in state.mask)
    index = [st["index"] for st in state.sparse_opt["state"].values()]
    assert index and all(any(torch.equal(i.long(), m) for m in state.mask.values()) for i in index)
    # format 2: code that reads only format 1 refuses it rather than miss the aliased tensors
    meta = json.loads((sam / META).read_text())
    assert meta["format"] == 2 and meta["aliases"]
    (sam / META).write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(CheckpointError, match="has format 3; this code reads 1 or 2"):
        TrialState.load(sam)


@pytest.mark.parametrize("damage", ["flipped byte", "tensor left out"])
def test_a_damaged_checkpoint_is_refused_not_resumed_from(damage, tiny_trial, tmp_path):
    """A byte flipped in the tensors, or a tensor missing (the head, a moment, the best state), resumed without a
    word: the head from its fresh initialisation, Adam from zero, the best state replaced by the last."""
    ckpt = _checkpoint(tiny_trial, "sam", tmp_path / "sam")
    path = ckpt / TENSORS
    if damage == "flipped byte":
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        tensors = load_file(str(path))
        save_file({k: v for k, v in tensors.items() if not k.startswith("now/dense/head.")}, str(path))
    cfg = tiny_trial("sam", method_params=METHOD_CASES["sam"], training={"max_steps": 4})
    with pytest.raises(CheckpointError, match=r"is damaged: state\.safetensors has CRC32 [0-9a-f]{8}, it was "
                                              r"written with [0-9a-f]{8}"):
        run_trial(cfg, resume_dir=str(ckpt))


def test_a_damaged_model_delta_is_refused_not_loaded(tiny_trial, tmp_path):
    from trainables import load_finetuned

    run_trial(tiny_trial("sam", method_params=METHOD_CASES["sam"], training={"max_steps": 4}),
              checkpoint_dir=str(tmp_path))
    delta = tmp_path / FINAL_DIR / "model" / "delta.safetensors"
    data = bytearray(delta.read_bytes())
    data[-5] ^= 0xFF
    delta.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is damaged: delta\.safetensors has CRC32"):
        load_finetuned(tmp_path / FINAL_DIR / "model")


def test_resume_refuses_other_base_weights(tiny_model, tiny_trial, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    cfg = tiny_trial("sam", method_params=METHOD_CASES["sam"], training={"max_steps": 4}).model_copy(
        update={"model": str(model)})
    run_trial(cfg, checkpoint_dir=str(tmp_path / "c"))
    weights = load_file(str(model / "model.safetensors"))
    weights["encoder.layer.0.output.dense.weight"] += 1e-3
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="other base weights"):
        run_trial(cfg, resume_dir=str(tmp_path / "c" / "step-0000004"))


PREDICT = """
import json, sys
import torch
from trainables import load_finetuned
from trainables.config import DataConfig
from trainables.data import build_splits, collate
from trainables.models import TaskModel
net, tok, meta = load_finetuned(sys.argv[1])
splits = build_splits(meta["task"], tok, meta["max_seq_length"], DataConfig(dir=sys.argv[2]), None)
with torch.inference_mode():
    logits = net(collate(splits.test, list(range(len(splits.test))), tok.pad_token_id or 0, torch.device("cpu")))
print(json.dumps({"preds": TaskModel.predictions(net.kind, logits).tolist(), "logits": logits.tolist()}))
"""


@pytest.mark.parametrize("method", ["sam", "diffprune", "lora", "adapter", "mixout"])
def test_the_delta_rebuilds_the_scored_model_in_a_fresh_process(method, tiny_trial, data_dir, tmp_path):
    tr = Trainer(tiny_trial(method, method_params=METHOD_CASES[method], training={"max_steps": 8}),
                 checkpoint_dir=str(tmp_path))
    result = tr.run()
    test = tr.splits.test
    with torch.inference_mode():
        logits = tr.model.eval()(collate(test, list(range(len(test))), tr.pad_id, torch.device("cpu")))
    out = subprocess.run([sys.executable, "-c", PREDICT, str(tmp_path / FINAL_DIR), str(data_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["logits"] == logits.tolist()  # bit-identical, not close
    preds = np.asarray(loaded["preds"])
    assert preds.tolist() == TaskModel.predictions(tr.model.kind, logits).tolist()
    delta = tmp_path / FINAL_DIR / "model"
    meta = json.loads((delta / "meta.json").read_text())
    assert meta["method"] == method and meta["base_hash"] == tr.base_hash
    assert meta["trainable_params"] == result["trainable_params"]


def test_masked_adamw_keeps_indices_past_float32_precision():
    from trainables.masking import MaskedAdamW

    p = torch.nn.Parameter(torch.zeros(2**24 + 8))
    idx = torch.tensor([3, 2**24 + 1, 2**24 + 7])  # 2**24 + 1 is not a float32
    opt = MaskedAdamW([("w", p, idx)], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    again = MaskedAdamW([("w", p, torch.empty(0, dtype=torch.long))], lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert again.state[p]["index"].tolist() == idx.tolist()


def test_peft_sweep_load_rebuilds_a_run_from_mlflow(tiny_trial, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main
    from trainables import load_finetuned

    tr = Trainer(tiny_trial("sam", method_params=METHOD_CASES["sam"], training={"max_steps": 4}),
                 checkpoint_dir=str(tmp_path / "trial"))
    tr.run()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("load-test", artifact_location=str(tmp_path / "art")))
    client.log_artifacts(run.info.run_id, str(tmp_path / "trial" / FINAL_DIR / "model"), "model")
    assert main(["load", run.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 0
    net, _, meta = load_finetuned(tmp_path / "out")
    test = tr.splits.test
    batch = collate(test, list(range(len(test))), tr.pad_id, torch.device("cpu"))
    with torch.inference_mode():
        assert torch.equal(net(batch), tr.model.eval()(batch))
    assert meta["method"] == "sam"
    assert main(["load", "0" * 32, "--tracking-uri", uri, "--out", str(tmp_path / "x")]) == 2


GATE = (".w", ".log_alpha")  # DiffPruning's tensors per backbone tensor


@pytest.mark.parametrize("reproject", [None, 2])
def test_a_diffprune_checkpoint_after_projection_holds_the_mask_entries(reproject, tiny_trial, tmp_path):
    params = {"lr": 1e-2, "burnin": 2, "reproject_every": reproject}
    run_trial(tiny_trial("diffprune", method_params=params, training={"max_steps": 4}), checkpoint_dir=str(tmp_path))
    tensors = load_file(str(tmp_path / "step-0000004" / TENSORS))
    full = _checkpoint(tiny_trial, "full", tmp_path / "full")
    k = sum(v.numel() for key, v in tensors.items() if key.startswith("mask/"))
    for part in ("now", "best"):
        gates = {key: v for key, v in tensors.items() if key.startswith(f"{part}/") and key.endswith(GATE)}
        assert gates and all(key.startswith(f"{part}/sparse/") for key in gates if key.endswith(".w"))
        assert sum(v.numel() for key, v in gates.items() if key.endswith(".w")) == k
    head = sum(v.numel() for key, v in tensors.items()
               if key.startswith("now/dense/") and not key.endswith(GATE))
    moments = sum(v.numel() for key, v in tensors.items() if key.endswith(("/exp_avg", "/exp_avg_sq")))
    assert moments == 2 * (2 * k + head)  # w's and log_alpha's at the mask's k entries, the head's whole
    ratio = (tmp_path / "step-0000004" / TENSORS).stat().st_size / (full / TENSORS).stat().st_size
    # a re-projection ranks every entry by its gate: those outside the mask keep theirs, m floats (full: 4m)
    assert ratio < (0.05 if reproject is None else 0.3), ratio
    print(f"diffprune reproject={reproject}: {ratio:.4f} of full's checkpoint bytes")


def test_load_records_the_lr_used_and_keeps_another_trials_model(tiny_trial, tmp_path, capsys):
    """A method's default lr is filled in (not "lr": null); --out holding another model is refused."""
    from orchestrator.cli import main
    from trainables.methods import get_method

    folders = {}
    for method in ("bitfit", "sam"):  # no lr set anywhere: each method's default
        folders[method] = tmp_path / method
        result = run_trial(tiny_trial(method, method_params={"burnin": 1} if method == "sam" else {},
                                      training={"max_steps": 2, "eval_every": 2}),
                           checkpoint_dir=str(folders[method]))
        assert result["lr"] == get_method(method).default_lr
    out = tmp_path / "out"
    assert main(["load", str(folders["bitfit"] / FINAL_DIR), "--out", str(out)]) == 0
    meta = json.loads((out / "finetuned.json").read_text())
    assert meta["method_params"]["lr"] == get_method("bitfit").default_lr
    assert main(["load", str(folders["bitfit"] / FINAL_DIR), "--out", str(out)]) == 0  # the same trial again
    capsys.readouterr()
    assert main(["load", str(folders["sam"] / FINAL_DIR), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and f"bitfit on CB, seed 0, trial {meta['trial_key']}" in err and "--force" in err
    assert json.loads((out / "finetuned.json").read_text())["method"] == "bitfit"  # untouched
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert main(["load", str(folders["sam"] / FINAL_DIR), "--out", str(tmp_path / "notes")]) == 2
    assert "holds files that are not a fine-tuned model (a.txt)" in capsys.readouterr().err
    assert main(["load", str(folders["sam"] / FINAL_DIR), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "finetuned.json").read_text())["method"] == "sam"


def test_a_checkpoint_from_the_other_device_kind_resumes_with_this_devices_optimizer(tiny_trial, tmp_path):
    """A GPU writes fused AdamW's groups (``fused: True``) into its checkpoints; torch's load_state_dict takes a
    saved group's flags as they are, so a resume elsewhere ran the other device's kind of AdamW from then on."""
    folder = _checkpoint(tiny_trial, "full", tmp_path / "full")
    meta = json.loads((folder / META).read_text())
    for group in meta["optimizers"]["dense_opt"]:
        group["fused"] = True  # as a CUDA trial writes it
    (folder / META).write_text(json.dumps(meta))
    trainer = Trainer(tiny_trial("full", method_params=METHOD_CASES["full"], training={"max_steps": 4}),
                      resume_dir=str(folder))
    trainer.setup()
    assert trainer.resumed_from == 4
    assert {g["fused"] for g in trainer.dense_opt.param_groups} == {None}  # what AdamW is on this CPU


def test_load_reads_a_moved_sweep_folders_artifacts_where_they_are_now(tiny_trial, tmp_path, capsys):
    """A sweep written on a cluster's /shared/runs is read on a laptop under another path: its store still names
    the old artifact folder. `load` (read-only) used to call the run "not a finished trial of this tool"."""
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main

    run_trial(tiny_trial("sam", method_params=METHOD_CASES["sam"], training={"max_steps": 4}),
              checkpoint_dir=str(tmp_path / "trial"))
    sweep = tmp_path / "shared" / "s"
    sweep.mkdir(parents=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("s", artifact_location=(sweep / "mlartifacts").as_uri()))
    client.log_artifacts(run.info.run_id, str(tmp_path / "trial" / FINAL_DIR / "model"), "model")
    moved = tmp_path / "laptop" / "s"
    moved.parent.mkdir()
    shutil.move(sweep, moved)
    uri = f"sqlite:///{moved / 'mlflow.db'}"
    assert main(["load", run.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "finetuned.json").is_file()
    shutil.rmtree(moved / "mlartifacts")  # gone here and at the recorded path: say where it was looked for
    assert main(["load", run.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert f"{sweep / 'mlartifacts'}" in err and "does not exist" in err, err
