"""Audit round 2 (issue 11): one weight-decay rule, DiffPruning/ChildPruning keep to the budget in what they
train, select and report, and θ0 is exactly what the checkpoint holds."""
import json
from pathlib import Path

import pytest
import torch

from tests.cases import METHOD_CASES
from trainables.loop import Trainer
from trainables.masking import backbone_parameters, budget
from trainables.methods import get_method
from trainables.methods.diffprune import gated_diffs


class FallingDev(Trainer):
    """Dev scores that only get worse during training: early stopping's "best" is the first state it may
    take. The final scores are real evaluations."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fake_dev = True

    def evaluate(self, data):
        if self.fake_dev and data is self.splits.dev:
            return {"score": 1.0 - self.step / 1000}
        return super().evaluate(data)

    def result(self):
        self.fake_dev = False
        return super().result()


def _decay_of(opt, param) -> float:
    return next(g["weight_decay"] for g in opt.param_groups if any(p is param for p in g["params"]))


def test_diffprune_never_decays_its_gates(tiny_trial):
    tr = Trainer(tiny_trial("diffprune", method_params={"burnin": 4}, training={"weight_decay": 0.1}))
    tr.setup()
    gates = gated_diffs(tr.model)
    assert gates
    for g in gates.values():
        assert _decay_of(tr.dense_opt, g.log_alpha) == 0.0
        assert _decay_of(tr.dense_opt, g.w) == (0.1 if g.w.ndim >= 2 else 0.0)


def test_diffprune_dropped_entries_return_to_theta0_and_hold_no_state(tiny_trial):
    cfg = tiny_trial("diffprune", method_params={"burnin": 4, "reproject_every": 4, "lr": 1e-2},
                     training={"max_steps": 14, "eval_every": 2, "weight_decay": 0.1})
    tr = Trainer(cfg)
    tr.setup()
    tr.train()
    assert len(tr.method.projections) == 3  # steps 4, 8, 12; two more steps after the last one
    for name, g in gated_diffs(tr.model).items():
        dropped = ~g.mask
        assert int((g.w.detach()[dropped] != 0).sum()) == 0, name
        for p in (g.w, g.log_alpha):
            st = tr.dense_opt.state[p]
            assert int((st["exp_avg"][dropped] != 0).sum()) == 0, name
            assert int((st["exp_avg_sq"][dropped] != 0).sum()) == 0, name


def test_diffprune_gates_learn_at_their_own_rate(tiny_trial):
    """Guo et al.'s code trains the gates' log α with its own AdamW at lr 0.1: at the diff's learning rate the
    expected-L0 gradient (λσ' ≈ 1e-10, under Adam's ε) moved log α by a few hundredths in thousands of steps, and
    the projection ranked gates that had hardly left their common start."""
    cfg = tiny_trial("diffprune", method_params={"burnin": 50, "lr": 1e-3, "alpha_lr": 0.1},
                     training={"max_steps": 100, "warmup_ratio": 0.0})
    tr = Trainer(cfg)
    tr.setup()
    gates = gated_diffs(tr.model)
    before = {n: g.log_alpha.detach().clone() for n, g in gates.items()}
    tr.train(until=1)
    moved = torch.cat([(g.log_alpha.detach() - before[n]).abs().reshape(-1) for n, g in gates.items()])
    diff = torch.cat([g.w.detach().abs().reshape(-1) for g in gates.values()])
    # w = 0 at the first step, so only the L0 term reaches a gate; Adam's step lr·g/(|g|+ε) is then 1.6% of the
    # gates' rate: 1.6e-3 at 0.1, where the diff's rate (1e-3) gave 1.6e-5
    assert float(moved.min()) > 1e-3 and float(moved.max()) <= 0.1 + 1e-6
    assert float(diff.max()) <= 1e-3 + 1e-6  # the diff at its own


def test_diffprune_reprojection_follows_gates_that_keep_learning(tiny_trial):
    """After a projection the kept gates went on with a deterministic gate that sits at 1 for log α > ln 11, so
    they got no gradient: once burn-in's Adam momentum had died out, every re-projection flipped nothing."""
    cfg = tiny_trial("diffprune", method_params={"burnin": 4, "reproject_every": 10, "lr": 1e-2},
                     training={"max_steps": 44, "eval_every": 44})
    tr = Trainer(cfg)
    tr.setup()
    tr.train()
    flips = [p.flipped for p in tr.method.projections]
    assert [p.step for p in tr.method.projections] == [4, 14, 24, 34, 44]
    assert all(f > 0 for f in flips[1:]), flips
    budget_k = tr.method.k_budget
    assert all(f <= 2 * budget_k for f in flips[1:])  # a swap of kept entries, never more than the mask


def test_diffprune_reprojection_swaps_what_learning_moves_not_what_the_penalty_drifts(tiny_trial):
    """From a review: after a projection the L0 penalty went on over the kept gates only, while the gates outside
    stayed frozen. Adam scales the penalty's tiny gradient up to a step of about alpha_lr's size, so the kept
    gates sank below the frozen ones and each re-projection swapped some 70% of the mask (13,966 to 14,480 flips
    of a 10,113-entry mask; 192 falling to 26 without the penalty), resetting the diffs it had learned. With the
    penalty off after the first projection, burn-in's momentum still did it once (17,358 flips, then 78)."""
    cfg = tiny_trial("diffprune", method_params={"burnin": 20, "reproject_every": 10, "lr": 2e-3,
                                                 "scope": "per_tensor"},
                     training={"max_steps": 50, "eval_every": 50})
    tr = Trainer(cfg)
    tr.setup()
    tr.train()
    flips = [p.flipped for p in tr.method.projections][1:]
    assert len(flips) == 3 and sum(flips) > 0, flips  # learning still moves the mask...
    assert max(flips) < 0.1 * 2 * tr.method.k_budget, (flips, tr.method.k_budget)  # ...and nothing else does


def test_diffprune_best_state_is_never_a_dense_one(tiny_trial):
    cfg = tiny_trial("diffprune", method_params={"burnin": 6, "lr": 1e-2},
                     training={"max_steps": 12, "eval_every": 2, "patience": 100})
    tr = FallingDev(cfg)
    r = tr.run()
    assert r["best_step"] >= 6  # the first state that obeys the budget
    assert r["changed_params"] <= r["trainable_params"] == budget(r["eligible_params"], 0.01)


@pytest.mark.parametrize("method,params", [
    ("childprune", {"reselect_every": 2, "fisher_batches": 2, "lr": 1e-2}),
    ("diffprune", {"burnin": 2, "reproject_every": 2, "lr": 1e-2}),
])
def test_reported_mask_is_the_mask_of_the_scored_model(method, params, tiny_trial):
    cfg = tiny_trial(method, method_params=params, training={"max_steps": 12, "eval_every": 2, "patience": 100})
    tr = FallingDev(cfg)
    r = tr.run()
    assert r["best_step"] == 2 and len(r["projections"]) >= 5
    assert r["changed_outside_mask"] == 0
    outside = 0
    for name, p in backbone_parameters(tr.model).items():
        changed = (p.detach().cpu() != tr.theta0[name]).reshape(-1)
        changed[tr.method.mask[name]] = False
        outside += int(changed.sum())
    assert outside == 0


def test_masked_adamw_never_decays_layernorm_or_bias(tiny_trial):
    # magnitude on a random-init BERT: LayerNorm weights (1.0) are the largest entries, so they are selected
    tr = Trainer(tiny_trial("magprune", training={"weight_decay": 0.1}, method_params={"lr": 1e-2}))
    tr.setup()
    params = backbone_parameters(tr.model)
    picked = {n: i for n, i in tr.method.mask.items() if i.numel()}
    assert any("LayerNorm" in n for n in picked) and any(n.endswith(".weight") and "LayerNorm" not in n
                                                          and params[n].ndim >= 2 for n in picked)
    before = {n: params[n].detach().clone() for n in picked}
    for _ in range(20):  # zero gradients: only weight decay can move an entry
        for p in params.values():
            p.grad = torch.zeros_like(p)
        tr.sparse_opt.step()
    for n, idx in picked.items():
        moved = bool((params[n].detach().reshape(-1)[idx] != before[n].reshape(-1)[idx]).any())
        assert moved == (params[n].ndim >= 2 and "LayerNorm" not in n), n


def test_dense_and_masked_optimizers_share_one_decay_rule(tiny_trial):
    from trainables.optim import decays

    tr = Trainer(tiny_trial("full", training={"weight_decay": 0.1}))
    tr.setup()
    for name, p in backbone_parameters(tr.model).items():
        assert _decay_of(tr.dense_opt, p) == (0.1 if decays(name, p) else 0.0), name
    assert not decays("backbone.encoder.layer.0.output.LayerNorm.weight", torch.ones(4))
    assert not decays("backbone.encoder.layer.0.output.dense.bias", torch.ones(4))
    assert decays("backbone.encoder.layer.0.output.dense.weight", torch.ones(4, 4))


@pytest.fixture(scope="module")
def tiny_model_without_pooler(tmp_path_factory) -> str:
    from safetensors.torch import load_file, save_file

    from tests.conftest import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-no-pooler"))
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return str(folder)


def _checkpoint_entries(folder: str) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for k, t in load_file(Path(folder) / "model.safetensors").items()
               if not k.endswith("position_ids"))  # a buffer, not a parameter


@pytest.mark.parametrize("method", ["magprune", "bitfit"])
def test_theta0_is_what_the_checkpoint_holds(method, tiny_model_without_pooler, tiny_trial):
    cfg = tiny_trial(method, training={"max_steps": 4, "eval_every": 2}).model_copy(
        update={"model": tiny_model_without_pooler})
    tr = Trainer(cfg)
    tr.setup()
    pooler = [p for n, p in tr.model.backbone.named_parameters() if n.startswith("pooler.")]
    before = [p.detach().clone() for p in pooler]
    assert pooler and not any(n.startswith("backbone.pooler.") for n in backbone_parameters(tr.model))
    tr.train()
    r = tr.result()
    assert r["eligible_params"] == _checkpoint_entries(tiny_model_without_pooler)
    fresh = sum(p.numel() for p in pooler)
    assert r["head_params"] == sum(p.numel() for p in tr.model.head.parameters()) + fresh
    assert all(not torch.equal(p.detach(), b) for p, b in zip(pooler, before))  # the fresh pooler trains in full
    if method == "magprune":
        assert r["trainable_params"] == budget(r["eligible_params"], 0.01)


def test_copa_asks_jiants_questions(data_dir, tmp_path):
    from trainables.config import DataConfig
    from trainables.data import build_splits
    from trainables.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("minilm-l6"))
    splits = build_splits("COPA", tok, 128, DataConfig(dir=str(data_dir), cache_dir=str(tmp_path)), None)
    texts = [tok.decode(splits.test.tokens[int(a):int(b)]) for a, b in splits.test.bounds[:20, 0].tolist()]
    assert any("what was the cause of this?" in t for t in texts)
    assert any("what happened as a result?" in t for t in texts)


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_mask_anatomy_sums_to_the_budget_and_the_mask_is_saved(method, tiny_trial, tmp_path):
    from trainables import run_trial
    from trainables.anatomy import KINDS, MASK_FILE, load_mask
    from trainables.loop import FINAL_DIR, RESULT_FILE

    from trainables.loop import EvalPoint, TrialEnd

    events = []
    r = run_trial(tiny_trial(method, method_params=METHOD_CASES[method], training={"max_steps": 8}), events.append,
                  checkpoint_dir=str(tmp_path))
    assert all(isinstance(e, EvalPoint) for e in events[:-1]) and isinstance(events[-1], TrialEnd)
    assert events[-1].result == r
    rows = r["mask_anatomy"]
    assert sum(row["count"] for row in rows) == r["trainable_params"] > 0
    assert all(row["kind"] in KINDS and row["kind"] != "other" for row in rows), rows
    final = tmp_path / FINAL_DIR
    assert events[-1].final_dir == str(final) and (final / RESULT_FILE).is_file()
    if r["changed_outside_mask"] is None:  # dense methods have no mask to store
        assert method in ("full", "mixout", "bitfit", "adapter", "lora") and not (final / MASK_FILE).exists()
        return
    assert r["changed_outside_mask"] == 0
    mask = load_mask(final / MASK_FILE)
    assert sum(t.numel() for t in mask.values()) == r["trainable_params"]
    # a trial restarted after it finished reports the stored result instead of training again
    again = run_trial(tiny_trial(method, method_params=METHOD_CASES[method], training={"max_steps": 8}),
                      resume_dir=str(final))
    assert again == json.loads((final / RESULT_FILE).read_text())


def test_global_selection_can_concentrate_where_per_tensor_spreads(tiny_trial):
    from trainables import run_trial

    layernorm = {}
    for scope in ("global", "per_tensor"):
        r = run_trial(tiny_trial("magprune", method_params={"scope": scope}, training={"max_steps": 2,
                                                                                        "eval_every": 2}))
        layernorm[scope] = sum(row["count"] for row in r["mask_anatomy"] if row["kind"] == "layernorm")
    # on a random-init BERT the LayerNorm scales (1.0) dominate |θ0|: global magnitude takes all of them,
    # per-tensor selection gives LayerNorm only its share of the budget
    assert layernorm["global"] > 10 * layernorm["per_tensor"] > 0


@pytest.mark.parametrize("unit", ["neuron", "weight"])
def test_mixout_mixes_whole_neurons_and_replaces_the_backbones_dropout(tiny_model, unit):
    """From a review: mixout mixed each weight alone (Lee et al.'s "mixconnect") and kept dropout on beside it.
    Lee et al. define mixout(u) as replacing all outgoing parameters of a randomly chosen neuron by u's, as their
    code does (one Bernoulli draw per input column, repeated down the rows), and use it instead of dropout."""
    from trainables.methods.mixout import MixLinear
    from trainables.models import TaskModel, load_backbone

    model = TaskModel(load_backbone(tiny_model), "classification", 3)
    method = get_method("mixout")(get_method("mixout").Params(q=0.5, unit=unit), None, 0)
    method.prepare(model)
    model.train()
    assert all(m.p == 0 for m in model.backbone.modules() if isinstance(m, torch.nn.Dropout))
    layer = next(m for m in model.backbone.modules() if isinstance(m, MixLinear))
    with torch.no_grad():
        layer.weight.add_(1.0)  # trained away from θ0 everywhere
    torch.manual_seed(0)
    mixed = layer.mixed_weight()
    kept = torch.isclose(mixed, (layer.weight - 0.5 * layer.target) / 0.5)
    back = torch.isclose(mixed, (layer.target - 0.5 * layer.target) / 0.5)
    assert bool((kept | back).all()) and 0.2 < kept.float().mean() < 0.8
    whole_columns = bool((kept.all(dim=0) | back.all(dim=0)).all())
    assert whole_columns == (unit == "neuron")

    kept_dropout = TaskModel(load_backbone(tiny_model), "classification", 3)
    get_method("mixout")(get_method("mixout").Params(keep_dropout=True), None, 0).prepare(kept_dropout)
    assert any(m.p > 0 for m in kept_dropout.backbone.modules() if isinstance(m, torch.nn.Dropout))
