"""The training loop: seeded determinism, resume equality, early stopping with best-state reload."""
import json
import math
import time

import pytest
import torch

from safetensors.torch import load_file

from trainables import run_trial
from trainables.checkpoint import TENSORS
from tests.cases import METHOD_CASES
from trainables.loop import InjectedFault, TrainingDiverged


def _scores(r):
    return r["test_score"], r["dev_score"], r["train_score"], [c["dev_score"] for c in r["curve"]]


def test_same_trial_twice_gives_identical_scores(tiny_trial):
    cfg = tiny_trial("sam", method_params={"burnin": 2, "lr": 1e-2})
    assert _scores(run_trial(cfg)) == _scores(run_trial(cfg))


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_resumed_trial_ends_like_an_uninterrupted_one(method, tiny_trial, tmp_path):
    cfg = tiny_trial(method, method_params=METHOD_CASES[method])
    whole = run_trial(cfg, checkpoint_dir=str(tmp_path / "a"))
    checkpoints = sorted(p for p in (tmp_path / "a").iterdir() if p.name.startswith("step-"))
    assert [c.name for c in checkpoints] == ["step-0000004", "step-0000008", "step-0000012"]
    resumed = run_trial(cfg, checkpoint_dir=str(tmp_path / "b"), resume_dir=str(checkpoints[0]))
    assert resumed["resumed_from_step"] == 4
    assert _scores(resumed) == _scores(whole)
    assert resumed["curve"] == whole["curve"]  # train losses too: scores alone let a drifting resume through
    # bit-exact: the last checkpoint's every tensor (model, moments, mask, best state) as the straight run's (the
    # clipping norm summed the masked gradients in another order after a resume: 2.5126185 against 2.5126188)
    later, straight = load_file(str(tmp_path / "b" / "step-0000012" / TENSORS)), load_file(str(checkpoints[-1] / TENSORS))
    assert later.keys() == straight.keys()
    assert [k for k in straight if not torch.equal(later[k], straight[k])] == []
    assert resumed["changed_params"] == whole["changed_params"]
    assert resumed["projections"] == whole["projections"]
    assert resumed["mask_anatomy"] == whole["mask_anatomy"]


def test_a_fault_interrupts_and_a_resume_finishes(tiny_trial, tmp_path):
    cfg = tiny_trial("sam", method_params={"burnin": 2}, fault={"fail_at_step": 6, "marker_dir": str(tmp_path / "m")})
    with pytest.raises(InjectedFault, match="step 6"):
        run_trial(cfg, checkpoint_dir=str(tmp_path / "c"))
    r = run_trial(cfg, resume_dir=str(tmp_path / "c" / "step-0000004"))  # the marker lets this attempt through
    assert r["status"] == "FINISHED" and r["steps"] == 12


def test_early_stopping_reloads_the_best_state(tiny_trial):
    # lr so small that the dev score never improves after the first evaluation
    cfg = tiny_trial("full", method_params={"lr": 1e-12}, training={"max_steps": 400, "eval_every": 4, "patience": 2})
    r = run_trial(cfg)
    assert r["steps"] == 12 and r["best_step"] == 4
    assert r["dev_score"] == pytest.approx(r["curve"][0]["dev_score"])


def test_a_resume_from_the_evaluation_that_stopped_the_trial_ends_there(tiny_trial, tmp_path):
    """The checkpoint of the evaluation that ran out of patience is saved before the stop is acted on; a trial
    restored from it (its worker lost before the final report) trained on past the stop, to another best."""
    cfg = tiny_trial("full", method_params={"lr": 1e-12}, training={"max_steps": 400, "eval_every": 4, "patience": 2})
    whole = run_trial(cfg, checkpoint_dir=str(tmp_path / "a"))
    assert whole["steps"] == 12
    resumed = run_trial(cfg, resume_dir=str(tmp_path / "a" / "step-0000012"))
    assert (resumed["steps"], resumed["best_step"]) == (12, 4) and resumed["curve"] == whole["curve"]
    assert _scores(resumed) == _scores(whole)


def test_a_trial_that_diverges_after_an_evaluation_ends_with_its_best_state_at_once(tiny_trial):
    """A nan loss leaves nan weights for good: every later evaluation would score the majority class and never
    be the best, so the protocol's result is the best state before it; training stops there."""
    cfg = tiny_trial("full", training={"max_steps": 400, "eval_every": 4, "patience": 50},
                     fault={"nan_loss_at_step": 6})
    r = run_trial(cfg)
    assert (r["steps"], r["best_step"], r["diverged_at_step"]) == (8, 4, 8)
    assert [p["step"] for p in r["curve"]] == [4]  # the diverged evaluation is not a point of the curve
    assert all(math.isfinite(r[f"{s}_score"]) for s in ("dev", "test", "train"))
    assert r["dev_score"] == pytest.approx(r["curve"][0]["dev_score"])
    json.loads(json.dumps(r, allow_nan=False))  # valid JSON: no nan anywhere


def test_a_trial_that_diverges_before_any_evaluation_fails_naming_the_step_and_lr(tiny_trial):
    cfg = tiny_trial("bitfit", method_params={"lr": 0.5}, training={"max_steps": 40, "eval_every": 4},
                     fault={"nan_loss_at_step": 2})
    with pytest.raises(TrainingDiverged, match=r"nan or infinite by the evaluation at step 4, .*learning rate 0\.5"):
        run_trial(cfg)


def test_a_divergence_names_the_methods_settings_beside_the_learning_rate(tiny_trial):
    """It blamed the (default) learning rate alone when an extreme diffprune l0_weight had caused it."""
    cfg = tiny_trial("diffprune", method_params={"burnin": 2, "l0_weight": 0.5},
                     training={"max_steps": 40, "eval_every": 4}, fault={"nan_loss_at_step": 2})
    with pytest.raises(TrainingDiverged, match=r'learning rate 0\.002; diffprune settings \{"burnin": 2, "l0_weight": '
                                               r'0\.5\}: a learning rate too high for diffprune is the usual cause, '
                                               r'else one of those settings\)'):
        run_trial(cfg)


def test_a_learning_rate_typo_is_caught_not_scored(tiny_model, data_dir, capsys):
    """lr 1e20 where 1e-2 was meant: it used to run, the loss went nan from the second step, and the trial ended
    FINISHED with the majority class's score, counted as a seed like any other (later: TrainingDiverged). A rate
    above 1 is now refused before anything runs; a divergence within range is caught as the test above shows."""
    from orchestrator.cli import main

    rc = main(["train-one", "--task", "CB", "--method", "bitfit", "--model", tiny_model, "--data-dir", str(data_dir),
               "--set", "training.max_steps=8", "--set", "training.eval_every=4", "--set", "methods.bitfit.lr=1e20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "lr: Input should be less than or equal to 1 (got 1e+20)" in err[-1], err[-3:]
    assert "Traceback" not in "\n".join(err)


def test_train_one_cli_prints_the_result_json(tiny_model, data_dir, capsys):
    from orchestrator.cli import main

    rc = main(["train-one", "--task", "CB", "--method", "sam", "--sparsity", "0.01", "--model", tiny_model,
               "--data-dir", str(data_dir), "--set", "training.max_steps=4", "--set", "training.eval_every=2",
               "--set", "methods.sam.burnin=2"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for field in ("trial_key", "method", "task", "seed", "sparsity", "perturbation", "status", "metric", "test_score",
                  "dev_score", "train_score", "steps", "wall_s", "eligible_params", "trainable_params",
                  "changed_params", "trial_ended_at", "peak_gpu_mem_mb", "peak_gpu_reserved_mb"):
        assert field in result, field
    assert result["steps"] == 4 and result["metric"] == "acc_macro_f1"
    assert result["peak_gpu_reserved_mb"] is None and abs(result["trial_ended_at"] - time.time()) < 60  # CPU, now


def test_train_one_rejects_bad_input_with_named_values(tiny_model, data_dir, capsys):
    from orchestrator.cli import main

    assert main(["train-one", "--task", "CB", "--method", "sam", "--sparsity", "1.5", "--model", tiny_model]) == 2
    assert "sparsity" in capsys.readouterr().err
    assert main(["train-one", "--task", "CB", "--method", "sam", "--sparsity", "0.1", "--model", tiny_model,
                 "--set", "training.max_stepz=3"]) == 2
    assert "training.max_stepz: unknown key" in capsys.readouterr().err
    # a sweep spec's key, or a training key without its section: the flag or the key to use (it once suggested
    # training.seeds, which does not exist)
    for key, hint in (("grid.seeds=[1]", "--set grid.seeds: unknown key; use --seed"),
                      ("max_steps=3", "--set max_steps: unknown key; use --set training.max_steps=...")):
        assert main(["train-one", "--task", "CB", "--method", "sam", "--model", tiny_model, "--set", key]) == 2
        assert hint in capsys.readouterr().err
    assert main(["train-one", "--task", "CB", "--method", "full", "--model", "./no/such/model"]) == 2
    assert "model path './no/such/model' does not exist" in capsys.readouterr().err


# (re-projection after a resume: METHOD_CASES' diffprune in the test above)
@pytest.mark.parametrize("params", [{"burnin": 6}, {"burnin": 2}], ids=["before-projection", "after-projection"])
def test_diffprune_resumes_bit_exactly_before_and_after_its_first_projection(params, tiny_trial, tmp_path):
    """Its checkpoint is dense during burn-in and holds the mask's entries after a projection (issue 13)."""
    from safetensors.torch import load_file

    from trainables.finetuned import DELTA_DIR
    from trainables.loop import FINAL_DIR

    cfg = tiny_trial("diffprune", method_params={"lr": 1e-2, **params})
    whole = run_trial(cfg, checkpoint_dir=str(tmp_path / "a"))
    resumed = run_trial(cfg, checkpoint_dir=str(tmp_path / "b"), resume_dir=str(tmp_path / "a" / "step-0000004"))
    assert resumed["resumed_from_step"] == 4
    assert _scores(resumed) == _scores(whole) and resumed["projections"] == whole["projections"]
    deltas = [load_file(str(tmp_path / run / FINAL_DIR / DELTA_DIR / "delta.safetensors")) for run in "ab"]
    assert deltas[0].keys() == deltas[1].keys()
    assert all(torch.equal(deltas[0][k], deltas[1][k]) for k in deltas[0])


def test_train_one_prints_strict_json():
    """STS-B's Pearson of constant predictions is nan: the line must still be JSON that jq and JavaScript read."""
    from orchestrator.cli import strict_json

    line = strict_json({"test_score": float("nan"), "curve": [{"train_loss": float("inf")}], "steps": 4})
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}")) == {
        "test_score": None, "curve": [{"train_loss": None}], "steps": 4}


@pytest.mark.parametrize("kind,n", [("regression", 1), ("classification", 3)])
def test_the_head_scores_in_fp32_under_autocast(tiny_model, kind, n):
    """From a GPU-path review: under bf16 autocast the head's Linear gave bf16 logits, so STS-B's predictions moved
    in steps of 2^-6 to 2^-5 (Pearson and Spearman off against a CPU run, more ties) and argmaxes tied more."""
    from trainables.models import TaskModel, load_backbone

    model = TaskModel(load_backbone(tiny_model), kind, n).eval()
    batch = {"input_ids": torch.randint(1000, 2000, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)
    assert logits.dtype == torch.float32
