"""Two settings of one method side by side in one sweep (issue 11 item 9): each its own row, its own keys."""
import pytest

from orchestrator.spec import SpecError, spec_from_dict


def _spec(**extra):
    return spec_from_dict({"name": "v", "grid": {"methods": ["sam", "sam-global", "full"], "tasks": ["CB"],
                                                  "seeds": [0, 1]},
                           "methods": {"sam": {"scope": "per_tensor", "lr": 1e-3}},
                           "variants": {"sam-global": {"method": "sam", "scope": "global"}}, **extra})


def test_a_variant_is_its_own_row_with_the_methods_settings_underneath():
    trials = _spec().trials()
    assert len(trials) == 6
    by_label = {t.label: t for t in trials if t.seed == 0}
    assert set(by_label) == {"sam", "sam-global", "full"}
    assert by_label["sam-global"].method == "sam" and by_label["sam-global"].variant == "sam-global"
    assert by_label["sam-global"].params().scope == "global" and by_label["sam-global"].params().lr == 1e-3
    assert by_label["sam"].params().scope == "per_tensor" and by_label["sam"].variant is None
    assert len({t.key for t in trials}) == 6


def test_plain_methods_keep_their_keys_when_variants_are_added():
    plain = spec_from_dict({"name": "v", "grid": {"methods": ["sam", "full"], "tasks": ["CB"], "seeds": [0, 1]},
                            "methods": {"sam": {"scope": "per_tensor", "lr": 1e-3}}})
    with_variant = {t.key for t in _spec().trials() if t.variant is None}
    assert {t.key for t in plain.trials()} == with_variant


def test_same_settings_under_a_variant_name_are_a_separate_trial():
    spec = spec_from_dict({"name": "v", "grid": {"methods": ["sam", "sam2"], "tasks": ["CB"]},
                           "variants": {"sam2": {"method": "sam"}}})
    assert len({t.key for t in spec.trials()}) == 2


@pytest.mark.parametrize("variants,grid,message", [
    ({"sam": {"method": "sam"}}, ["sam"], "variants.sam: a variant needs its own name"),
    ({"x": {"method": "nope"}}, ["x"], "variants.x.method: 'nope' is not a method"),
    ({"x": {"method": "sam", "scope": "everywhere"}}, ["x"], "variants.x: scope"),
    ({"x": {"method": "sam", "rank": 4}}, ["x"], "variants.x: rank: unknown key"),
    ({}, ["sam-global"], "grid.methods: unknown method 'sam-global'"),
    ({"dp": {"method": "diffprune", "burnin": 5000}}, ["dp"], "methods.diffprune.burnin (5000) is beyond"),
])
def test_bad_variants_are_refused_with_the_field_and_value(variants, grid, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_from_dict({"name": "v", "grid": {"methods": grid, "tasks": ["CB"]}, "variants": variants,
                        "training": {"max_steps": 100}})
