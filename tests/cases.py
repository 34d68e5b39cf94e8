"""One table of cases over all ten methods: settings that make a 12-step trial on the tiny BERT exercise each
method (a projection or re-selection inside the budget, a burn-in that fits). Adding a method means adding a
row here; the invariant, resume, budget and artifact tests draw from it."""
from trainables.methods import METHODS

METHOD_CASES: dict[str, dict] = {
    "full": {"lr": 1e-3},
    "random": {"lr": 1e-2},
    "mixout": {"lr": 1e-3},
    "bitfit": {"lr": 1e-2},
    "magprune": {"lr": 1e-2, "scope": "per_tensor"},
    "adapter": {"lr": 1e-2},
    "lora": {"lr": 1e-2},
    "diffprune": {"lr": 1e-2, "burnin": 4, "reproject_every": 4},
    "childprune": {"lr": 1e-2, "reselect_every": 6, "fisher_batches": 2},
    "sam": {"lr": 1e-2, "burnin": 2},
}
MASK_METHODS = [m for m in METHOD_CASES if METHODS[m].masked_optimizer or m == "diffprune"]
assert set(METHOD_CASES) == set(METHODS), "every registered method needs a row in METHOD_CASES"
