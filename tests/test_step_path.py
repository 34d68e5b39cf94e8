"""The training step's hot path: MaskedAdamW in multi-tensor ops, batches built on the device, padded widths."""
import numpy as np
import pytest
import torch

from trainables.config import DataConfig
from trainables.data import build_splits, collate
from trainables.masking import MaskedAdamW
from trainables.models import load_tokenizer, resolve_model
from trainables.optim import decays


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("minilm-l6"))


def reference_step(params, states, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    """The per-tensor loop MaskedAdamW used to run (about ten launches per tensor): the oracle."""
    for name, p in params:
        st = states[name]
        if p.grad is None or st["index"].numel() == 0:
            continue
        st["step"] += 1
        t = st["step"]
        idx = st["index"]
        g = p.grad.reshape(-1).index_select(0, idx).float()
        st["m"].mul_(betas[0]).add_(g, alpha=1 - betas[0])
        st["v"].mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        denom = (st["v"] / (1 - betas[1] ** t)).sqrt_().add_(eps)
        val = p.detach().view(-1).index_select(0, idx).float()
        val.mul_(1 - lr * (wd if decays(name, p) else 0.0))
        val.addcdiv_(st["m"], denom, value=-lr / (1 - betas[0] ** t))
        p.detach().view(-1).index_copy_(0, idx, val.to(p.dtype))


def test_masked_adamw_matches_the_per_tensor_loop_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    shapes = {"layer.weight": (16, 8), "layer.bias": (16,), "LayerNorm.weight": (16,), "emb.weight": (40, 8),
              "empty.weight": (4, 4)}
    ours = {n: torch.nn.Parameter(torch.randn(s, generator=g)) for n, s in shapes.items()}
    ref = {n: torch.nn.Parameter(p.detach().clone()) for n, p in ours.items()}
    index = {n: torch.sort(torch.randperm(p.numel(), generator=g)[: p.numel() // 3]).values for n, p in ours.items()}
    index["empty.weight"] = torch.empty(0, dtype=torch.long)
    opt = MaskedAdamW([(n, ours[n], index[n]) for n in shapes], lr=0.05, weight_decay=0.3)
    states = {n: {"index": index[n], "step": 0, "m": torch.zeros(len(index[n])), "v": torch.zeros(len(index[n]))}
              for n in shapes}
    for step in range(6):
        for n in shapes:
            grad = torch.randn(shapes[n], generator=g)
            ours[n].grad, ref[n].grad = grad.clone(), grad.clone()
        if step == 2:  # a reselection restarts one tensor's moments and step count: bias corrections differ
            ours["emb.weight"].grad = ref["emb.weight"].grad = None
        if step == 3:
            new = torch.arange(0, 320, 7)
            opt.set_index(ours["emb.weight"], new)
            states["emb.weight"] = {"index": new, "step": 0, "m": torch.zeros(len(new)), "v": torch.zeros(len(new))}
        opt.step()
        reference_step(list(ref.items()), states, lr=0.05, wd=0.3)
        for n in shapes:
            assert torch.equal(ours[n].detach(), ref[n].detach()), (step, n)
    for n in shapes:
        if index[n].numel():
            assert torch.equal(opt.state[ours[n]]["exp_avg"], states[n]["m"]), n
    untouched = torch.ones(shapes["layer.weight"], dtype=torch.bool).view(-1)
    untouched[index["layer.weight"]] = False
    assert untouched.any()


def loop_collate(data, idx, pad_id):
    """The per-example Python loop collate used to be: the oracle for the vectorised one."""
    bounds = data.bounds[torch.as_tensor(idx)]
    n, n_seq = bounds.shape[:2]
    width = int((bounds[..., 1] - bounds[..., 0]).max())
    ids = torch.full((n, n_seq, width), pad_id, dtype=torch.int64)
    mask = torch.zeros((n, n_seq, width), dtype=torch.int64)
    types = torch.zeros((n, n_seq, width), dtype=torch.int64)
    for i in range(n):
        for j in range(n_seq):
            a, b = int(bounds[i, j, 0]), int(bounds[i, j, 1])
            ids[i, j, : b - a], mask[i, j, : b - a] = data.tokens[a:b], 1
            if data.types is not None:
                types[i, j, : b - a] = data.types[a:b]
    return ids, mask, types


def test_device_collate_equals_the_loop_and_pads_to_a_multiple(data_dir, tokenizer, tmp_path):
    for task in ("CB", "COPA", "WSC"):
        splits = build_splits(task, tokenizer, 128, DataConfig(dir=str(data_dir), cache_dir=str(tmp_path)), None)
        idx = np.array([4, 0, 9, 2, 7])
        ids, mask, types = loop_collate(splits.train, idx, tokenizer.pad_token_id)
        on_device = splits.train.to(torch.device("cpu"))
        assert on_device.host_lengths is not None
        for data, index in ((splits.train, None), (on_device, torch.as_tensor(idx))):
            batch = collate(data, idx, tokenizer.pad_token_id, torch.device("cpu"), index=index)
            squeeze = (lambda t: t[:, 0]) if ids.shape[1] == 1 else (lambda t: t)  # noqa: E731
            assert torch.equal(batch["input_ids"], squeeze(ids)) and torch.equal(batch["attention_mask"], squeeze(mask))
            if "token_type_ids" in batch:
                assert torch.equal(batch["token_type_ids"], squeeze(types))
            assert torch.equal(batch["labels"], splits.train.labels[torch.as_tensor(idx)])
        padded = collate(on_device, idx, tokenizer.pad_token_id, torch.device("cpu"), pad_to_multiple=8)
        width = padded["input_ids"].shape[-1]
        assert width % 8 == 0 and ids.shape[-1] <= width < ids.shape[-1] + 8
        assert torch.equal(padded["attention_mask"][..., : ids.shape[-1]], squeeze(mask))
        assert not padded["attention_mask"][..., ids.shape[-1]:].any()


def test_padding_to_a_multiple_does_not_change_predictions(tiny_model, data_dir, tokenizer, tmp_path):
    from trainables.models import TaskModel, load_backbone

    torch.manual_seed(0)
    model = TaskModel(load_backbone(tiny_model), "classification", 3).eval()
    splits = build_splits("CB", tokenizer, 128, DataConfig(dir=str(data_dir), cache_dir=str(tmp_path)), None)
    idx = np.arange(24)
    with torch.no_grad():
        exact = model(collate(splits.train, idx, tokenizer.pad_token_id, torch.device("cpu")))
        padded = model(collate(splits.train, idx, tokenizer.pad_token_id, torch.device("cpu"), pad_to_multiple=8))
    torch.testing.assert_close(padded, exact, rtol=1e-5, atol=1e-5)
    assert torch.equal(padded.argmax(-1), exact.argmax(-1))


class _CountKernels:
    """Counts the device ops (aten calls on non-scalar tensors; views are free) of a block."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                tensors = [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
                if func.overloadpacket.__name__ != "view" and any(t.dim() > 0 for t in tensors):
                    outer.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self.mode = 0, Mode()


def test_masked_adamw_launches_three_kernels_per_tensor_not_ten():
    n = 20
    ps = [torch.nn.Parameter(torch.randn(30, 8)) for _ in range(n)]
    opt = MaskedAdamW([(f"l{i}.weight", p, torch.arange(0, 200, 3)) for i, p in enumerate(ps)], lr=0.1,
                      weight_decay=0.1)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    count = _CountKernels()
    with count.mode:
        opt.step()
    assert count.n <= 3 * n + 10, count.n  # gather grad, gather value, scatter value; the rest multi-tensor


class _Evaluation(Exception):
    pass


@pytest.fixture
def on_meta_device(monkeypatch):
    """Trials run their model, data, masks and optimizer state on the meta device, which holds no values: any
    host sync in the training step (``.item()``, ``float()``, ``bool()`` of a device tensor) raises there. On a
    GPU each such sync stalls the host until the queue drains, per call. The step stops at the first evaluation
    (which reads its scores on the host by design); selections rank random scores on the host, as the real ones
    rank scores copied there once per selection."""
    import transformers.masking_utils

    import trainables.loop
    import trainables.masking
    import trainables.methods.base
    import trainables.methods.childprune
    import trainables.methods.diffprune

    real = trainables.masking.select_top

    def select_top(scores, k, scope):
        return real({n: torch.rand(s.shape) for n, s in scores.items()}, k, scope)

    for module in (trainables.masking, trainables.methods.base, trainables.methods.childprune,
                   trainables.methods.diffprune):
        monkeypatch.setattr(module, "select_top", select_top)
    monkeypatch.setattr(trainables.loop, "pick_device", lambda: torch.device("meta"))
    # transformers' own check of the padding mask (one sync per forward, ours and a plain loop's alike)
    monkeypatch.setattr(transformers.masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: False)

    def evaluation(self, lr):
        raise _Evaluation

    monkeypatch.setattr(trainables.loop.Trainer, "_evaluation_point", evaluation)


# selections and projections read a probe loss on the host (once each, by design): SAM's comes inside the six
# steps, DiffPruning's and ChildPruning's re-selection after them
STEP_PARAMS = {"sam": {"burnin": 2}, "diffprune": {"burnin": 10}, "childprune": {"reselect_every": 100}}


@pytest.mark.parametrize("method", ["full", "random", "mixout", "bitfit", "magprune", "adapter", "lora",
                                    "diffprune", "childprune", "sam"])
def test_a_training_step_never_waits_for_the_device(method, on_meta_device, tiny_trial):
    from trainables.loop import Trainer

    trainer = Trainer(tiny_trial(method, method_params=STEP_PARAMS.get(method, {}),
                                 training={"max_steps": 12, "eval_every": 6, "checkpoint_every": 0}))
    trainer.setup()
    assert trainer.device.type == "meta"
    with pytest.raises(_Evaluation):  # six steps without a sync
        trainer.train()
    assert trainer.step == 6


class _CountDispatches(_CountKernels):
    """Every aten call but views, 0-d host tensors included (a step counter held as a tensor costs dispatches)."""

    def __init__(self):
        super().__init__()
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ != "view":
                    outer.n += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


@pytest.mark.parametrize("method", ["full", "sam"])
def test_clipping_and_the_masked_step_dispatch_a_few_ops_per_masked_tensor_and_none_per_dense_one(method,
                                                                                                    tiny_trial):
    """A MiniLM step on a GPU is bound by the host's kernel launches: clipping used to run three ops per dense
    tensor and four per masked one (its whole gradient scaled although only the selected entries train), and the
    masked step gathered each gradient again. (The dense AdamW is one fused kernel on CUDA, not counted here.)"""
    from trainables.loop import Trainer

    trainer = Trainer(tiny_trial(method, method_params=STEP_PARAMS.get(method, {})))
    trainer.setup()
    batch = trainer.train_batch(0)
    trainer.model.loss(trainer.forward(batch), batch["labels"]).backward()
    masked = [p for p, st in trainer.sparse_opt.state.items() if st["index"].numel()] if trainer.sparse_opt else []
    assert len(trainer.dense_params if method == "full" else masked) >= 20
    count = _CountDispatches()
    with count.mode:
        trainer.clip_gradients()
        if trainer.sparse_opt is not None:
            trainer.sparse_opt.step()
    assert count.n <= 3 * len(masked) + 40, (count.n, len(masked), len(trainer.dense_params))
