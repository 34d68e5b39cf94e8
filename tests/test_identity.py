"""A sweep's identity: a changed spec is refused unless it only grows the grid; the code version without git."""
import shutil

import pytest
import yaml

from orchestrator import identity
from orchestrator.spec import SpecError, spec_from_dict
from tests.sweeps import write_spec


def _spec(tmp_path, tiny_model, data_dir, **overrides):
    path = write_spec(tmp_path, tiny_model, data_dir, **overrides)
    return spec_from_dict(yaml.safe_load(path.read_text()), str(path))


def test_result_changes_are_named_and_growth_or_paths_are_not(tmp_path, tiny_model, data_dir):
    base = _spec(tmp_path, tiny_model, data_dir)
    assert identity.changes(base, base) == []
    grown = _spec(tmp_path, tiny_model, data_dir, grid={"methods": ["sam", "bitfit", "lora"], "tasks": ["CB", "RTE"],
                                                        "seeds": [0, 1, 2]})
    assert identity.changes(base, grown) == []
    moved = _spec(tmp_path, tiny_model, data_dir, output_dir=str(tmp_path / "elsewhere"), max_failures=5,
                  resources={"max_concurrent": 1}, ray={"num_cpus": 1}, data={"dir": str(data_dir), "cache_dir": "c"})
    assert identity.changes(base, moved) == [] and identity.fingerprint(moved) == identity.fingerprint(base)
    saving = _spec(tmp_path, tiny_model, data_dir, training__checkpoint_every=5)  # how often, not what is learnt
    assert identity.changes(base, saving) == [] and identity.fingerprint(saving) == identity.fingerprint(base)
    copied = _spec(tmp_path, tiny_model, data_dir, data={"dir": str(tmp_path / "copy")})  # other files, maybe
    assert identity.changes(base, copied) == [f"data.dir: {str(data_dir.resolve())!r} -> {str(tmp_path / 'copy')!r}"
                                              " (this sweep folder recorded no hashes of its task files to compare)"]
    changed = _spec(tmp_path, tiny_model, data_dir, training__max_steps=7, methods={"sam": {"burnin": 3, "lr": 1e-2},
                                                                                    "bitfit": {"lr": 1e-2}})
    assert identity.changes(base, changed) == ["methods.sam.burnin: 2 -> 3", "training.max_steps: 6 -> 7"]
    assert identity.fingerprint(changed) != identity.fingerprint(base)
    shrunk = _spec(tmp_path, tiny_model, data_dir, grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]})
    assert identity.changes(base, shrunk) == ["grid.methods drops bitfit"]


def test_a_new_row_with_its_own_settings_and_written_out_defaults_are_growth(tmp_path, tiny_model, data_dir):
    base = _spec(tmp_path, tiny_model, data_dir)
    grown = _spec(tmp_path, tiny_model, data_dir,
                  grid={"methods": ["sam", "bitfit", "lora", "sam-global"], "tasks": ["CB"], "seeds": [0, 1]},
                  methods={"sam": {"burnin": 2, "lr": 1e-2, "scope": "global"}, "bitfit": {"lr": 1e-2},
                           "lora": {"lr": 5e-4}},  # sam's scope written out at its default
                  variants={"sam-global": {"method": "sam", "scope": "global"}})
    assert identity.changes(base, grown) == []
    scoped = _spec(tmp_path, tiny_model, data_dir, methods={"sam": {"burnin": 2, "lr": 1e-2, "scope": "per_tensor"},
                                                            "bitfit": {"lr": 1e-2}})
    assert identity.changes(base, scoped) == ["methods.sam.scope: 'global' -> 'per_tensor'"]


def test_rerun_with_a_changed_spec_is_refused_before_anything_runs(tmp_path, tiny_model, data_dir):
    from orchestrator import sweep

    first = _spec(tmp_path, tiny_model, data_dir)
    first.sweep_dir.mkdir(parents=True)
    (first.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(first.model_dump(mode="json")))  # as `run` leaves it
    changed = _spec(tmp_path, tiny_model, data_dir, training__lr=3e-3)
    with pytest.raises(SpecError, match=r"was run with another spec \(training.lr: None -> 0.003\).*new name.*--force"):
        sweep.run(changed)
    assert sorted(p.name for p in first.sweep_dir.iterdir()) == ["spec.yaml"]  # nothing written, no Ray started
    identity.check_rerun(first, changed, force=True)  # --force takes it


def test_the_data_folder_from_the_environment_is_recorded_and_a_switch_is_refused(tmp_path, tiny_model, data_dir,
                                                                                   monkeypatch):
    from benchmarks.synthetic_trials import fake_result
    from orchestrator import sweep
    from tests.tracking_fixtures import record_finished

    folder = str(data_dir.resolve())
    monkeypatch.setenv("PEFT_SWEEP_DATA_DIR", folder)
    spec = _spec(tmp_path, tiny_model, data_dir, data={"dir": None}, grid={"methods": ["bitfit"], "tasks": ["CB"],
                                                                           "seeds": [0]})
    for cfg in spec.trials():
        record_finished(spec, cfg, fake_result(cfg))  # all FINISHED: `run` writes the sweep folder, starts no Ray
    assert sweep.run(spec) == 0
    monkeypatch.delenv("PEFT_SWEEP_DATA_DIR")  # a later shell without the variable
    saved = sweep.load_sweep(spec.sweep_dir)
    assert saved.data.dir == folder and identity.data_folder(saved) == folder  # resume, rerun-failed: same files
    assert identity.changes(saved, saved) == [] and identity.unrecorded_data_note(saved, saved) is None
    with pytest.raises(SpecError, match=rf"data.dir: '{folder}' -> 'huggingface-hub'.*--force"):
        identity.check_rerun(saved, spec, force=False)  # the original spec now reads the Hub: refused
    monkeypatch.setenv("PEFT_SWEEP_DATA_DIR", str(tmp_path))  # a folder without the task files
    assert identity.changes(saved, spec) == [f"data.dir: other files for CB than the sweep ran on ({folder!r} -> "
                                             f"{str(tmp_path.resolve())!r})"]


def test_a_moved_data_folder_with_the_same_files_is_the_same_data_and_changed_files_are_named(tmp_path, tiny_model,
                                                                                             data_dir):
    from benchmarks.synthetic_trials import fake_result
    from orchestrator import sweep
    from tests.tracking_fixtures import record_finished

    first, other = tmp_path / "first", tmp_path / "other"
    shutil.copytree(data_dir / "CB", first / "CB")
    shutil.copytree(data_dir / "CB", other / "CB")  # another machine's copy
    spec = _spec(tmp_path, tiny_model, first, grid={"methods": ["bitfit"], "tasks": ["CB"], "seeds": [0]})
    for cfg in spec.trials():
        record_finished(spec, cfg, fake_result(cfg))
    assert sweep.run(spec) == 0  # records the data folder and its files' hashes
    saved = sweep.load_sweep(spec.sweep_dir)
    moved = _spec(tmp_path / "b", tiny_model, other, output_dir=str(tmp_path / "runs"))
    assert identity.changes(saved, moved) == []
    note = identity.moved_data_note(saved, moved)
    assert str(first) in note and str(other) in note and "CB" in note

    for folder in (other, first):  # one label changed: in the other folder, then in the recorded one itself
        train = folder / "CB" / "train.jsonl"
        train.write_text(train.read_text().replace("contradiction", "neutral", 1))
    assert identity.changes(saved, moved) == [f"data.dir: other files for CB than the sweep ran on ({str(first)!r} "
                                              f"-> {str(other)!r})"]
    assert identity.moved_data_note(saved, moved) is None
    assert identity.changes(saved, saved) == [f"data.dir: other files for CB than the sweep ran on (edited in place "
                                              f"in {str(first)!r})"]


def test_a_sweep_folder_that_did_not_record_its_data_keeps_working_and_the_hub_is_recorded(tmp_path, tiny_model,
                                                                                          data_dir, monkeypatch):
    from orchestrator import sweep

    old = _spec(tmp_path, tiny_model, data_dir, data={"dir": None})
    old.sweep_dir.mkdir(parents=True)
    (old.sweep_dir / sweep.SPEC_FILE).write_text(yaml.safe_dump(old.model_dump(mode="json")))  # as before: null
    monkeypatch.setenv("PEFT_SWEEP_DATA_DIR", str(data_dir))
    previous, new = sweep.load_sweep(old.sweep_dir), identity.with_data_folder(old)
    assert new.data.dir == str(data_dir)  # as the variable gave it
    identity.check_rerun(previous, new, force=False)  # unknown: taken as what was read then, not refused
    assert str(data_dir.resolve()) in identity.unrecorded_data_note(previous, new)
    (old.sweep_dir / identity.IDENTITY_FILE).write_text('{"data": "huggingface-hub", "runs": []}')  # a Hub sweep
    assert identity.unrecorded_data_note(previous, new) is None
    assert identity.changes(previous, new) == [f"data.dir: 'huggingface-hub' -> {str(data_dir.resolve())!r}"]


def test_code_version_is_the_source_however_it_is_started(tmp_path, monkeypatch):
    """A `ray job submit` working dir has no .git: the same code must have the same version there as in the
    checkout (it used to be git:COMMIT in one and a source hash in the other: a false "the code changed")."""
    in_checkout = identity.code_version.__wrapped__()
    for pkg in identity.SOURCE_PACKAGES:
        shutil.copytree(identity.ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "README.md").write_text("docs and tests are not the code that runs")
    monkeypatch.setattr(identity, "ROOT", tmp_path)  # a copy without .git, as `ray job submit` ships it
    first = identity.code_version.__wrapped__()
    assert first == in_checkout and "+src." in first
    assert identity.git_commit.__wrapped__() is None
    (tmp_path / "trainables" / "loop.py").write_text((tmp_path / "trainables" / "loop.py").read_text() + "\n# x\n")
    assert identity.code_version.__wrapped__() != first


def test_a_row_that_never_finished_can_be_fixed_or_dropped(tmp_path, tiny_model, data_dir):
    """A variant with a broken setting (lr 1e38) fails on every trial: fixing it, or dropping it from the grid,
    mixes nothing, as none of its trials has a result. It used to be refused (or need --force: every trial
    rerun), so the broken row stayed in the grid and every later run retried it."""
    from orchestrator import records

    base = _spec(tmp_path, tiny_model, data_dir)
    for t in base.trials():
        records.update(base.sweep_dir, t.key, status="FINISHED" if t.method == "sam" else "FAILED",
                       trial={"method": t.method})
    fixed = _spec(tmp_path, tiny_model, data_dir, methods={"sam": {"burnin": 2, "lr": 1e-2}, "bitfit": {"lr": 5e-3}})
    dropped = _spec(tmp_path, tiny_model, data_dir, grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]})
    from orchestrator.sweep import finished_keys

    done = finished_keys(base.sweep_dir)
    for new in (fixed, dropped):
        identity.check_rerun(base, new, force=False, finished=done)
    assert identity.changes(base, fixed) == ["methods.bitfit.lr: 0.01 -> 0.005"]  # what changed, records aside
    touched = _spec(tmp_path, tiny_model, data_dir, methods={"sam": {"burnin": 3, "lr": 1e-2}, "bitfit": {"lr": 1e-2}})
    with pytest.raises(SpecError, match=r"methods.sam.burnin: 2 -> 3"):  # sam has results: still refused
        identity.check_rerun(base, touched, force=False, finished=done)
    no_sam = _spec(tmp_path, tiny_model, data_dir, grid={"methods": ["bitfit"], "tasks": ["CB"], "seeds": [0, 1]})
    with pytest.raises(SpecError, match=r"grid.methods drops sam"):
        identity.check_rerun(base, no_sam, force=False, finished=done)
