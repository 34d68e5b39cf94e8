"""Bad input fails before anything starts, names what is wrong, and writes nothing."""
import shutil

import pytest
import torch

from tests.sweeps import cli, write_spec


def _expect_refusal(tmp_path, spec, *needles):
    out = cli("run", str(spec), timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()  # no sweep folder, no tracking store, no records


def test_data_folder_missing_a_task_file(tmp_path, tiny_model, data_dir):
    shutil.copytree(data_dir / "CB", tmp_path / "data" / "CB")
    (tmp_path / "data" / "CB" / "val.jsonl").unlink()
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    _expect_refusal(tmp_path, spec, "missing task file", "CB/val.jsonl")


def test_task_file_with_a_malformed_row(tmp_path, tiny_model, data_dir):
    shutil.copytree(data_dir / "CB", tmp_path / "data" / "CB")
    path = tmp_path / "data" / "CB" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[9] = '{"premise": "p", "label": "entailment", "idx": 9}'
    path.write_text("\n".join(lines) + "\n")
    spec = write_spec(tmp_path, tiny_model, tmp_path / "data")
    _expect_refusal(tmp_path, spec, "train.jsonl:10: missing field 'hypothesis'")


def test_model_path_that_does_not_exist(tmp_path, data_dir):
    spec = write_spec(tmp_path, str(tmp_path / "no-model"), data_dir)
    _expect_refusal(tmp_path, spec, "does not exist")


def test_unreachable_ray_address(tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, ray={"address": "127.0.0.1:9"})
    _expect_refusal(tmp_path, spec, "cannot reach the Ray cluster at '127.0.0.1:9'")


def test_unreachable_tracking_uri(tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, tracking_uri="http://127.0.0.1:9")
    _expect_refusal(tmp_path, spec, "tracking store 'http://127.0.0.1:9' is unreachable")


@pytest.mark.parametrize("text,needle", [("name: [unclosed\n", "malformed YAML"),
                                         ("name: t\ngrid: {methods: [sam], tasks: [CB]}\nbogus: 1\n", "bogus: unknown key"),
                                         ("name: t\ngrid: {methods: [sam], tasks: [CB], seeds: x}\n", "grid.seeds")])
def test_bad_spec_files(tmp_path, text, needle):
    (tmp_path / "s.yaml").write_text(text)
    out = cli("validate", str(tmp_path / "s.yaml"), timeout=60)
    assert out.returncode == 2 and needle in out.stderr


def test_checkpoints_are_loaded_without_unpickling_code(tmp_path, tiny_trial):
    from trainables import run_trial

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "ck").mkdir()
    torch.save({"model": Evil()}, tmp_path / "ck" / "state.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        run_trial(tiny_trial("sam", method_params={"burnin": 1}), resume_dir=str(tmp_path / "ck"))


def test_trial_keys_cannot_escape_the_records_folder(tmp_path):
    from orchestrator import records

    with pytest.raises(ValueError, match="invalid trial key"):
        records.write(tmp_path, "../../etc/x", {})
