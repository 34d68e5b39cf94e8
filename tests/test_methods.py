"""One matrix over the methods' invariants, on a tiny random BERT. The methods and their settings come
from the case table (tests/cases.py): a new method is a new row there."""
import math

import pytest
import torch

from tests.cases import METHOD_CASES
from trainables.loop import Trainer
from trainables.masking import MaskedAdamW, backbone_parameters, budget, select_top
from trainables.methods import METHODS, get_method, register
from trainables.methods.base import Method
from trainables.models import TaskModel, load_backbone

# what the rows say about each method, read from the method classes and the row's own settings
MASKED_OPTIMIZER = [m for m in METHOD_CASES if METHODS[m].masked_optimizer]
PROJECTING = [m for m in METHOD_CASES if {"reproject_every", "reselect_every"} & set(METHOD_CASES[m])]


def frozen_entries_moved(param: torch.Tensor, theta0: torch.Tensor, selected: torch.Tensor) -> int:
    """How many unselected entries differ from θ0 in any bit (compared as integers, so -0.0 != 0.0)."""
    now = param.detach().cpu().reshape(-1).view(torch.int32)
    before = theta0.reshape(-1).view(torch.int32)
    frozen = torch.ones_like(now, dtype=torch.bool)
    frozen[selected] = False
    return int((now[frozen] != before[frozen]).sum())


def test_the_bit_check_sees_one_flipped_bit():
    t0 = torch.randn(100)
    p = t0.clone()
    p.view(torch.int32)[7] ^= 1  # the lowest mantissa bit of one frozen entry
    assert frozen_entries_moved(p, t0, torch.tensor([3])) == 1
    assert frozen_entries_moved(t0.clone(), t0, torch.tensor([3])) == 0


def test_the_table_knows_its_kinds():
    """The lists the matrix runs over are read from the table; they must not come out empty."""
    assert {"random", "magprune", "sam", "childprune"} <= set(MASKED_OPTIMIZER)
    assert set(PROJECTING) == {"diffprune", "childprune"}


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
@pytest.mark.parametrize("method", MASKED_OPTIMIZER)
def test_mask_methods_train_exactly_the_budget(method, scope, tiny_trial):
    cfg = tiny_trial(method, method_params={**METHOD_CASES[method], "scope": scope}, training={"weight_decay": 0.1})
    tr = Trainer(cfg)
    tr.setup()
    tr.train()
    m = sum(t.numel() for t in tr.theta0.values())
    k = budget(m, cfg.sparsity)
    mask = tr.method.mask
    assert sum(i.numel() for i in mask.values()) == k == tr.method.trainable_count(tr.model)
    moved_total = 0
    for name, p in backbone_parameters(tr.model).items():
        sel = mask.get(name, torch.empty(0, dtype=torch.long))
        assert frozen_entries_moved(p, tr.theta0[name], sel) == 0, name
        st = tr.sparse_opt.state.get(p, {})
        # optimizer state exists only for the selected entries
        assert st.get("exp_avg", torch.empty(0)).numel() == sel.numel() == st.get("exp_avg_sq", torch.empty(0)).numel()
        moved_total += int((p.detach().cpu() != tr.theta0[name]).sum())
    assert 0 < moved_total <= k
    assert not any(p in tr.dense_opt.state for p in backbone_parameters(tr.model).values())
    result = tr.result()
    assert result["trainable_params"] == k and result["changed_params"] <= k
    if method in PROJECTING:  # re-selection inside the run moved the mask
        assert result["projections"] and result["projections"][0]["flipped"] > 0


def test_masked_adamw_touches_only_the_index():
    p = torch.nn.Parameter(torch.randn(10, 10))
    t0 = p.detach().clone()
    idx = torch.tensor([0, 5, 99])
    opt = MaskedAdamW([("w", p, idx)], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    changed = (p.detach() != t0).reshape(-1).nonzero().flatten()
    assert changed.tolist() == [0, 5, 99]
    assert opt.state[p]["exp_avg"].shape == (3,)


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_select_top_gives_exactly_k(scope):
    g = torch.Generator().manual_seed(0)
    scores = {f"t{i}": torch.rand(n, generator=g) for i, n in enumerate([7, 13, 1, 101, 3])}
    for k in (0, 1, 5, 17, 125):
        sel = select_top(scores, k, scope)
        assert sum(v.numel() for v in sel.values()) == k
        assert all(len(set(v.tolist())) == v.numel() for v in sel.values())
    top = select_top(scores, 10, "global")
    flat = torch.cat(list(scores.values()))
    chosen = torch.cat([scores[n][i] for n, i in top.items()])
    assert chosen.min() >= torch.topk(flat, 10).values.min()


def _outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_equivalent_model_at_init_and_in_eval(method, tiny_model):
    """Every method starts from θ0: after ``prepare`` the model computes what the pretrained one does."""
    torch.manual_seed(0)
    plain = TaskModel(load_backbone(tiny_model), "classification", 3)
    torch.manual_seed(0)
    wrapped = TaskModel(load_backbone(tiny_model), "classification", 3)
    wrapped.head.load_state_dict(plain.head.state_dict())
    cls = get_method(method)
    cls(cls.Params(**METHOD_CASES[method]), 0.05 if cls.uses_sparsity else None, 0).prepare(wrapped)
    batch = {"input_ids": torch.randint(0, 30000, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
    torch.testing.assert_close(_outputs(wrapped, batch), _outputs(plain, batch), rtol=1e-5, atol=1e-6)
    if method == "mixout":  # in training mode the weights are mixed: outputs move
        wrapped.train()
        for mod in wrapped.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        with torch.no_grad():
            for p in backbone_parameters(wrapped).values():
                p.add_(0.1)  # trained weights differ from θ0, so mixing back to θ0 changes them
            assert not torch.allclose(wrapped(batch), _outputs(wrapped, batch))


@pytest.mark.parametrize("method", PROJECTING)
def test_projection_methods_end_within_budget(method, tiny_trial):
    r = Trainer(tiny_trial(method, method_params=METHOD_CASES[method])).run()
    k = budget(r["eligible_params"], 0.01)
    assert r["trainable_params"] == k and 0 < r["changed_params"] <= k
    assert len(r["projections"]) >= 2 and r["projections"][0]["flipped"] > 0


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_every_method_runs_and_reports_counts(method, tiny_trial):
    r = Trainer(tiny_trial(method, method_params=METHOD_CASES[method],
                           training={"max_steps": 4, "eval_every": 2})).run()
    assert r["status"] == "FINISHED" and r["eligible_params"] > 0
    assert 1 / 3 <= r["test_top_class_share"] <= 1  # CB: three classes; 1.0 would be a one-class collapse
    assert 0 < r["trainable_params"] <= r["eligible_params"]
    assert r["changed_params"] <= r["trainable_params"] or method in ("full", "mixout")
    if method == "bitfit":
        assert r["trainable_params"] == sum(t.numel() for n, t in backbone_parameters(
            TaskModel(load_backbone(r["model"]), "classification", 3)).items() if n.endswith(".bias"))


def _shapes(name):
    from transformers import AutoModel, BertConfig, RobertaConfig

    cfg = {"roberta-base": RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
           "minilm-l6": BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                   intermediate_size=1536)}[name]
    with torch.device("meta"):
        return AutoModel.from_config(cfg)


@pytest.mark.parametrize("model", ["roberta-base", "minilm-l6"])
@pytest.mark.parametrize("p", [0.005, 0.01])
def test_same_budget_rule_for_adapter_and_lora(model, p):
    from trainables.methods.adapter import bottleneck_for_budget, ffn_outputs
    from trainables.methods.lora import rank_for_budget, target_layers

    backbone = _shapes(model)
    m = sum(t.numel() for t in backbone.parameters())
    k = budget(m, p)
    r = bottleneck_for_budget(backbone, k)
    layers = ffn_outputs(backbone)
    d = layers[0][1].out_features
    count = lambda r: len(layers) * (2 * d * r + r + d)  # noqa: E731
    assert count(r) <= k < count(r + 1)
    rank = rank_for_budget(backbone, k)
    per_rank = sum(mod.in_features + mod.out_features for mod in target_layers(backbone))
    assert rank * per_rank <= k < (rank + 1) * per_rank
    assert len(target_layers(backbone)) == 6 * backbone.config.num_hidden_layers
    if model == "roberta-base":
        assert m == 124645632 and k == math.floor(m * p)


def test_registry_refuses_a_duplicate_name():
    class Again(Method):
        name = "sam"

    with pytest.raises(ValueError, match="already registered"):
        register(Again)


@pytest.mark.parametrize("method,param", [("lora", "rank"), ("adapter", "bottleneck")])
def test_an_explicit_size_above_the_budget_is_refused(method, param, tiny_model):
    """A rank or bottleneck the user sets must stay within ⌊m·p⌋: a trial labelled p must train at most p."""
    from trainables.methods.adapter import bottleneck_for_budget
    from trainables.methods.lora import rank_for_budget

    cls, size_for_budget = get_method(method), {"lora": rank_for_budget, "adapter": bottleneck_for_budget}[method]
    model = TaskModel(load_backbone(tiny_model), "classification", 3)
    fits = size_for_budget(model.backbone, budget(sum(p.numel() for p in backbone_parameters(model).values()), 0.05))
    ok = cls(cls.Params(**{param: fits}), 0.05, 0)
    ok.prepare(model)  # the largest size within the budget is accepted
    with pytest.raises(ValueError, match=rf"{param} {fits + 1}.*⌊m·p⌋.*{param} ≤ {fits}"):
        cls(cls.Params(**{param: fits + 1}), 0.05, 0).prepare(TaskModel(load_backbone(tiny_model), "classification", 3))


def test_the_backbone_runs_torchs_own_layers_not_hub_kernels(tiny_model):
    """transformers 5.25 kernelizes by default where the `kernels` package is installed (it comes with it):
    layers swapped for code from the Hub at train(), other numerics than the paper's, and a crash on the meta
    device. Loaded with use_kernels=False, train() leaves the modules as they were."""
    backbone = load_backbone(tiny_model)
    before = {n: type(m) for n, m in backbone.named_modules()}
    backbone.train()
    assert not getattr(backbone, "use_kernels", False)
    assert {n: type(m) for n, m in backbone.named_modules()} == before


def test_a_reselection_keeps_the_moments_of_entries_that_stay_selected():
    """ChildPruning re-selects during training: what stays selected goes on with its Adam state (as ChildTuning's
    dense AdamW over masked gradients), what joins starts from zero."""
    p = torch.nn.Parameter(torch.randn(20))
    opt = MaskedAdamW([("w", p, torch.tensor([9, 1, 7, 4]))], lr=0.1)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    st = opt.state[p]
    avg, sq = (dict(zip(st["index"].tolist(), st[k].tolist())) for k in ("exp_avg", "exp_avg_sq"))
    opt.reselect(p, torch.tensor([2, 4, 9, 15]))
    st = opt.state[p]
    assert st["step"] == 3 and st["index"].tolist() == [2, 4, 9, 15]
    assert st["exp_avg"].tolist() == [0.0, avg[4], avg[9], 0.0]
    assert st["exp_avg_sq"].tolist() == [0.0, sq[4], sq[9], 0.0]
    p.grad = torch.randn_like(p)
    opt.step()  # the new selection trains, with step 4's bias correction
    assert opt.state[p]["step"] == 4


def test_deterministic_kernels_are_switched_per_trial_and_keep_old_keys(tiny_trial):
    """training.deterministic turns torch's deterministic kernels on for the trial (and off again for the next
    trial of a reused worker process); trials without it keep the keys they had before the setting existed."""
    import warnings

    from trainables.config import TrialConfig, trial_key

    # keys computed before the setting existed (cf0826c): a sweep begun then resumes its trials, not new ones
    assert trial_key(TrialConfig(task="CB", method="sam", sparsity=0.005, seed=3)) == "a4fc8c150e65"
    assert trial_key(TrialConfig(task="RTE", method="full")) == "2f1aadb39fdc"
    assert trial_key(TrialConfig(task="RTE", method="full", training={"deterministic": True})) != "2f1aadb39fdc"
    training = {"max_steps": 4, "eval_every": 2}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", ".*deterministic")  # torch's warning for a kernel without such a version
            on = Trainer(tiny_trial("sam", method_params=METHOD_CASES["sam"],
                                    training={**training, "deterministic": True})).run()
        assert on["status"] == "FINISHED" and on["deterministic"] is True
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()  # CPU: the fused-attention switches are left alone
    finally:
        off = Trainer(tiny_trial("sam", method_params=METHOD_CASES["sam"], training=training)).run()
    assert off["deterministic"] is False and not torch.are_deterministic_algorithms_enabled()
    assert on["test_score"] == off["test_score"]  # on CPU the kernels were deterministic already


def test_deterministic_kernels_switch_fused_attention_off_on_cuda_and_back(monkeypatch):
    """With warn_only, torch leaves the fused SDPA kernels' atomic backward on and only warns: on CUDA the
    setting turns them off (the math kernel runs), and off turns them on again for the next trial. The switches
    are plain process flags: set here as a CUDA machine would (no GPU here)."""
    from trainables.loop import deterministic_kernels

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        deterministic_kernels(True)
        assert not (torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled()
                    or torch.backends.cuda.cudnn_sdp_enabled())
    finally:
        deterministic_kernels(False)
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() and not torch.are_deterministic_algorithms_enabled()
