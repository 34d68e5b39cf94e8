"""Tune's storage as each node sees it: the check the driver runs on every node of a cluster before a sweep."""
from orchestrator.storage import ExperimentStore, read_check


def test_a_node_that_reads_the_drivers_file_passes_and_the_file_is_removed(tmp_path):
    store = ExperimentStore(str(tmp_path / "tune"))
    name, token = store.write_check()
    assert read_check(store.root, name, token) is None
    store.remove(name)
    assert list((tmp_path / "tune").iterdir()) == [] and store.experiments() == []


def test_a_node_without_the_storage_says_why():
    """Each node runs this as a Ray task (tests/reliability/test_cluster.py passes through it); a node whose
    /shared is a local folder finds no file there."""
    why = read_check("/nonexistent/tune-root", ".storage-check-abc", "abc")
    assert why is not None and why.startswith("FileNotFoundError: ") and "/nonexistent/tune-root" in why


def test_a_node_that_sees_another_folder_by_that_name_says_so(tmp_path):
    store = ExperimentStore(str(tmp_path))
    name, _ = store.write_check()
    assert read_check(store.root, name, "another token") == ("reads another file there: not the storage the driver "
                                                             "writes to")
