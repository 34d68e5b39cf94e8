"""Sweep specs: every shipped file validates; every kind of bad value fails naming the field."""
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.spec import SpecError, load_spec, spec_from_dict
from trainables.config import trial_key

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "runtime_env.yaml")
BASE = {"name": "t", "grid": {"methods": ["sam", "full"], "tasks": ["CB"], "seeds": [0, 1]}}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates_and_opens_with_its_command(path):
    spec = load_spec(path)
    assert spec.trials()
    head = path.read_text().splitlines()[:5]
    assert head[0].startswith("# Run") and any("Cost" in line for line in head)
    stated = [int(n) for n in re.findall(r"(\d+)(?: [\w-]+)? trials", " ".join(head))]
    assert len(spec.trials()) in stated, f"the header states {stated} trials; the spec has {len(spec.trials())}"


def test_paper_grids_have_the_papers_sizes():
    main = load_spec(ROOT / "configs/paper/main.yaml").trials()
    assert len([t for t in main if t.variant is None]) == 700  # the paper's 10 methods x 7 tasks x 10 seeds
    assert {t.label for t in main if t.variant} == {"sam-global"} and len(main) == 770
    sparsity = load_spec(ROOT / "configs/paper/sparsity.yaml")
    assert sorted(sparsity.grid.sparsities) == [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]


@pytest.mark.parametrize("name", ["main", "perturbation", "sparsity", "small"])
def test_paper_configs_select_per_tensor_as_the_authors_code_did(name):
    """The authors' code ranked each tensor alone for every budgeted method (SAM, MagPruning, ChildPruning, and
    DiffPruning's projection: src/runner.py's torch.topk per parameter); only the `-global` variants differ."""
    for trial in load_spec(ROOT / f"configs/paper/{name}.yaml").trials():
        if trial.method in ("sam", "magprune", "childprune", "diffprune"):
            want = "global" if trial.label.endswith("-global") else "per_tensor"
            assert trial.params().scope == want, (name, trial.label)


def _bad(change: dict, *, path: tuple = ()) -> str:
    import copy

    data = copy.deepcopy(BASE)
    node = data
    for p in path:
        node = node.setdefault(p, {})
    node.update(change)
    with pytest.raises(SpecError) as err:
        spec_from_dict(data)
    return str(err.value)


@pytest.mark.parametrize("change,path,expect", [
    ({"methods": ["sam", "prefix"]}, ("grid",), "unknown method 'prefix'; valid methods: full"),
    ({"tasks": ["QNLI"]}, ("grid",), "unknown task 'QNLI'"),
    ({"sparsities": [1.5]}, ("grid",), "grid.sparsities: sparsity 1.5 is outside (0, 1)"),
    ({"seeds": [-1]}, ("grid",), "grid.seeds: seed -1 is negative"),
    ({"gpu_per_trial": 1.5}, ("resources",), "resources.gpu_per_trial: gpu_per_trial 1.5: a trial trains on one"),
    ({"gpu_per_trial": 2}, ("resources",), "resources.gpu_per_trial: gpu_per_trial 2: a trial trains on one device"),
    ({"max_stepz": 3}, ("training",), "training.max_stepz: unknown key"),
    ({"max_steps": "many"}, ("training",), "training.max_steps: Input should be a valid integer"),
    ({"lr": -1}, ("training",), "training.lr: Input should be greater than 0"),
    ({"name": "../escape"}, (), "name: name '../escape' must be letters"),
    ({"sam": {"burnin": 0}}, ("methods",), "methods.sam: burnin: Input should be greater than 0"),
    ({"sam": {"nonsense": 1}}, ("methods",), "methods.sam: nonsense: unknown key"),
    ({"dora": {}}, ("methods",), "methods.dora: unknown method"),
])
def test_bad_values_fail_naming_the_field(change, path, expect):
    assert expect in _bad(change, path=path)


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ngrid:\n  methods: [sam\n  tasks: [CB]\n")
    with pytest.raises(SpecError) as err:
        load_spec(p)
    # PyYAML notices the unclosed "[" of line 3 on line 4; the message points back to where it was opened
    assert str(err.value).endswith("bad.yaml:4:8: malformed YAML (expected ',' or ']', but got ':'; while parsing "
                                   "a flow sequence begun at line 3, column 12)"), err.value
    p.write_text("!!python/object/apply:os.system ['echo owned']\n")  # the safe loader refuses to build objects
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(p)


def test_set_overrides_are_typed_and_validated(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(BASE))
    spec = load_spec(p, ["training.max_steps=7", "methods.sam.lr=1e-3", "grid.seeds=[3, 4]"])
    assert spec.training.max_steps == 7 and spec.methods["sam"]["lr"] == 0.001 and spec.grid.seeds == [3, 4]
    with pytest.raises(SpecError, match="training.patience"):
        load_spec(p, ["training.patience=0"])


def test_grid_expansion_rules_and_stable_keys():
    spec = spec_from_dict({**BASE, "grid": {**BASE["grid"], "sparsities": [0.01, 0.02], "perturbations": [0, 1]}})
    trials = spec.trials()
    # full has no sparsity axis: 2 seeds x 2 splits; sam: 2 seeds x 2 splits x 2 sparsities
    assert sum(t.method == "full" for t in trials) == 4 and sum(t.method == "sam" for t in trials) == 8
    assert all(t.sparsity is None for t in trials if t.method == "full")
    keys = [t.key for t in trials]
    assert len(set(keys)) == len(keys) and all(len(k) == 12 for k in keys)
    again = spec_from_dict({**BASE, "grid": {**BASE["grid"], "sparsities": [0.01, 0.02], "perturbations": [0, 1]},
                            "data": {"dir": "/elsewhere"}, "training": {"checkpoint_every": 3}})
    assert [t.key for t in again.trials()] == keys  # where data lives and how often to checkpoint: same trials
    t = trials[0]
    assert trial_key(t.model_copy(update={"seed": 99})) != t.key


def test_yaml_refuses_duplicate_keys_alias_bombs_and_python_tags(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\ngrid: {methods: [sam], tasks: [CB]}\ngrid: {methods: [full], tasks: [RTE]}\n")
    with pytest.raises(SpecError, match=r"s\.yaml:3:1: malformed YAML \(duplicate key 'grid'"):
        load_spec(p)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + prev] * 9)}]\n" for prev, n in zip("abcdefg", "bcdefgh"))
    p.write_text(bomb + "name: *h\n")
    with pytest.raises(SpecError, match="expands to more than 100000 values through aliases"):
        load_spec(p)
    p.write_text("name: &n t\ngrid: {methods: [sam], tasks: [CB]}\ntracking_uri: null\nmethods: {sam: {burnin: 2}}\n"
                 "training: {<<: {max_steps: 10, eval_every: 5}, max_steps: 12}\n")  # anchors and merges are fine
    assert load_spec(p).training.max_steps == 12 and load_spec(p).training.eval_every == 5
    with pytest.raises(SpecError, match=r"--set name=!!python/name:os.system:1:1: malformed YAML"):
        load_spec(p, ["name=!!python/name:os.system"])
    with pytest.raises(SpecError, match=r"--set grid.seeds=\[0, 1:1:6: malformed YAML"):
        load_spec(p, ["grid.seeds=[0, 1"])
    with pytest.raises(SpecError, match="empty file"):
        p.write_text("")
        load_spec(p)


@pytest.mark.parametrize("change,path,expect", [
    ({"perturbations": []}, ("grid",), "grid.perturbations: an empty list gives 0 trials"),
    ({"seeds": [True]}, ("grid",), "grid.seeds.0: Input should be a valid integer (got True)"),
    ({"seeds": ["3"]}, ("grid",), "grid.seeds.0: Input should be a valid integer (got '3')"),
    ({"perturbations": [0.5]}, ("grid",), "grid.perturbations.0: Input should be a valid integer"),
    ({"tracking_uri": "ftp://host/x"}, (), "tracking_uri 'ftp://host/x': unsupported scheme"),
    ({"tracking_uri": "/some/folder"}, (), "tracking_uri '/some/folder' is a path; a SQLite store is sqlite:////some/folder"),
])
def test_more_bad_values_fail_naming_the_field(change, path, expect):
    assert expect in _bad(change, path=path)


@pytest.mark.parametrize("change,expect", [
    ({"tasks": ["CB", "cb"]}, "grid.tasks: tasks ['CB', 'CB'] name CB twice; list each once"),
    ({"sparsities": [0.005, 0.005]}, "grid.sparsities: sparsities [0.005, 0.005] name 0.005 twice; list each once"),
    ({"perturbations": [0, 1, 0]}, "grid.perturbations: perturbations [0, 1, 0] name 0 twice; list each once"),
])
def test_a_grid_axis_that_names_a_value_twice_is_refused_as_seeds_are(change, expect):
    """They were merged without a word, so the trial count said less than the list."""
    assert expect in _bad(change, path=("grid",))


def test_nan_is_refused_and_an_infinite_clip_norm_is_kept():
    """A NaN passed validation, was written to spec.yaml as null, and made the sweep folder unreadable to every
    command after the run failed on it. `max_grad_norm: .inf` (no clipping) is a setting: refusing infinity too
    locked out saved specs that hold it."""
    import copy

    bad = {**copy.deepcopy(BASE), "methods": {"diffprune": {"alpha_init": float("nan")}}}
    with pytest.raises(SpecError, match=r"methods\.diffprune\.alpha_init: \.nan is not a number; give a value"):
        spec_from_dict(bad)
    assert spec_from_dict({**BASE, "training": {"max_grad_norm": float("inf")}}).training.max_grad_norm == float("inf")
    old = {**BASE, "training": {"warmup_ratio": float("nan")}}
    with pytest.raises(SpecError, match=r"training\.warmup_ratio: \.nan"):
        spec_from_dict(old)


def test_task_names_in_any_capitalisation_and_a_cheap_trial_count():
    spec = spec_from_dict({**BASE, "grid": {**BASE["grid"], "tasks": ["cb", "stsb", "CoLA"]}})
    assert spec.grid.tasks == ["CB", "STS-B", "CoLA"]
    assert spec.size() == 3 * 2 * 2  # sam: one sparsity; full: none
    for uri in ("sqlite:///x.db", "http://h:5000", "postgresql+psycopg2://u@h/db", "databricks"):
        assert spec_from_dict({**BASE, "tracking_uri": uri}).tracking_uri == uri
    big = spec_from_dict({**BASE, "grid": {**BASE["grid"], "seeds": list(range(50_000)), "sparsities": [0.1, 0.2]}})
    assert big.size() == 50_000 * 3


@pytest.mark.parametrize("change,path,expect", [
    ({"trainig": {"max_steps": 10}}, (), "trainig: unknown key; did you mean 'training'?; valid keys: name, model"),
    ({"max_stepz": 3}, ("training",), "training.max_stepz: unknown key; did you mean 'max_steps'?; valid keys: "),
    ({"sam": {"burn_in": 8}}, ("methods",), "methods.sam: burn_in: unknown key; did you mean 'burnin'?; valid keys"),
    ({"methods": ["sam", "Lora", "prefix"]}, ("grid",),
     "unknown methods 'Lora' (did you mean 'lora'?), 'prefix'; valid methods: full"),
    ({"lorra": {"lr": 1e-3}}, ("methods",), "methods.lorra: unknown method; did you mean 'lora'?; valid methods: full"),
    ({"tasks": ["CBB"]}, ("grid",), "unknown task 'CBB'; did you mean 'CB'?; valid tasks: CoLA"),
    ({"tasks": ["sts_b2"]}, ("grid",), "unknown task 'sts_b2'; did you mean 'STS-B'?"),  # near after folding
    ({"x": {"method": "loraa"}}, ("variants",), "variants.x.method: 'loraa' is not a method; did you mean 'lora'?"),
    ({"output_dir": "s3://bucket/runs"}, (), "output_dir 's3://bucket/runs' is a URI: the sweep folder is a "
     "filesystem path (NFS on a cluster); checkpoints may go to a URI with ray.storage_path"),
    ({"seeds": [0, 0, 1]}, ("grid",), "grid.seeds: seeds [0, 0, 1] name 0 twice; list each once"),
    ({"methods": ["sam", "full", "sam"]}, ("grid",), "grid.methods: methods ['sam', 'full', 'sam'] name sam twice"),
    ({"methods": ["full"], "sparsities": [0.01]}, ("grid",),
     "grid.sparsities [0.01]: no method in grid.methods (full) takes a sparsity"),
    ({"samg": {"method": "sam", "scope": "global"}}, ("variants",),
     "variants samg: defined but not in grid.methods (sam, full); add them there, or remove them (on the command "
     "line --set 'variants={}' drops every variant)"),
    ({"samg": {"method:sam": None, "scope": "global"}}, ("variants",),
     "variants.samg: no 'method' key (got keys 'method:sam', 'scope')"),
])
def test_spec_errors_name_the_valid_choices(change, path, expect):
    message = _bad(change, path=path)
    assert expect in message
    assert message.count("(got") <= 1 and "(got {'name'" not in message  # no dump of the whole spec


def test_the_fault_suites_key_is_in_no_hint():
    message = _bad({"trainig": {"max_steps": 10}}, path=())
    assert ("valid keys: name, model, data, grid, training, methods, variants, resources, max_failures, "
            "tracking_uri, output_dir, ray (got") in message, message  # no 'fault'


def test_model_level_errors_do_not_repeat_the_whole_input():
    message = _bad({"sam": {"scope": "perTensor"}}, path=("methods",))
    assert message.endswith("methods.sam: scope: Input should be 'global' or 'per_tensor' (got 'perTensor')")
    message = _bad({"samg": {"method:sam": None, "scope": "global"}}, path=("variants",))
    assert "write 'method: sam', with a space after the colon" in message


def test_a_saved_spec_is_not_rejudged_for_settings_that_do_nothing():
    data = {**BASE, "grid": {**BASE["grid"], "seeds": [0, 0]}, "variants": {"samg": {"method": "sam"}}}
    with pytest.raises(SpecError):
        spec_from_dict(data)
    assert spec_from_dict(data, saved=True).grid.seeds == [0, 0]  # an older sweep folder still opens


@pytest.mark.parametrize("uri", ["sqlite://runs/x.db", "sqlite:/runs/x.db", "sqlite:///"])
def test_a_sqlite_uri_without_its_third_slash_is_refused_with_the_right_form(uri):
    """sqlite://runs/x.db (two slashes) used to pass `validate` and fail only at `run`, as an "unreachable" store."""
    assert "a SQLite URI is sqlite:///relative/path.db or sqlite:////absolute/path.db" in _bad({"tracking_uri": uri})


def test_a_scalar_seed_count_and_a_per_method_sparsity_get_advice_that_runs():
    """`seeds: 3` was told "write a list, e.g. [3]" (seed 3 alone; and [-3] for -3, refused next);
    `methods.sam.sparsity` was an unknown key with no word of grid.sparsities."""
    with pytest.raises(SpecError, match=r"\[3\] runs seed 3 alone, \[0, 1, 2\] runs 3 seeds"):
        spec_from_dict({**BASE, "grid": {**BASE["grid"], "seeds": 3}})
    with pytest.raises(SpecError, match=r"integers >= 0\), e\.g\. \[0, 1, 2\]"):
        spec_from_dict({**BASE, "grid": {**BASE["grid"], "seeds": -3}})
    for odd in (True, 1):  # a bool is no count; one seed is [0] or [1] as meant
        with pytest.raises(SpecError, match=r"write a list of seeds \(integers >= 0\), e\.g\. \[0, 1, 2\]"):
            spec_from_dict({**BASE, "grid": {**BASE["grid"], "seeds": odd}})
    with pytest.raises(SpecError, match=r"sparsity: unknown key; a sparsity is a grid axis: grid\.sparsities"):
        spec_from_dict({**BASE, "methods": {"sam": {"sparsity": 0.01}}})


def test_a_variant_name_used_without_its_definition_is_told_where_to_define_it():
    """`sam-global`, a variant in the paper configs, was "unknown method" with no word of variants."""
    with pytest.raises(SpecError, match=r"unknown method 'sam-global'; valid methods: .*; to name a setting of sam "
                                        r"'sam-global', define it under variants: \{sam-global: \{method: sam, "):
        spec_from_dict({**BASE, "grid": {**BASE["grid"], "methods": ["sam-global"]}})
    with pytest.raises(SpecError) as err:  # a typo of a defined variant: the did-you-mean, not "define it"
        spec_from_dict({**BASE, "grid": {**BASE["grid"], "methods": ["sam-globl"]},
                        "variants": {"sam-global": {"method": "sam", "scope": "global"}}})
    assert "did you mean 'sam-global'?" in str(err.value) and "define it under variants" not in str(err.value)


def test_every_bad_setting_is_named_at_once_grid_and_methods_alike():
    """A bad grid value hid the bad methods.* settings (a model check, run only once every field is valid), and
    the first bad method hid the next: three rounds of fixing for three slips."""
    with pytest.raises(SpecError) as err:
        spec_from_dict({**BASE, "grid": {**BASE["grid"], "sparsities": [5]},
                        "methods": {"sam": {"scope": "pertensor"}, "lora": {"rank": -2}}})
    assert "grid.sparsities: sparsity 5.0 is outside (0, 1)" in str(err.value)
    assert "methods.sam: scope: Input should be 'global' or 'per_tensor' (got 'pertensor')" in str(err.value)
    assert "methods.lora: rank: Input should be greater than 0 (got -2)" in str(err.value)
