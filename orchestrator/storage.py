"""Where a sweep's Tune experiments live, on any filesystem Tune itself writes to.

Layout: ``<root>/exp-NNN/`` per Tune experiment, where ``root`` is ``<ray.storage_path>/<sweep name>`` (one
namespace per sweep, so sweeps sharing a storage path never restore each other) or ``SWEEP_DIR/tune``. Beside
Tune's own state each experiment holds ``trial_keys.json`` (which trials it runs), ``dropped_keys.json`` (those
a drain removed before they started) and, once it ended, a done marker. Everything goes through pyarrow's
filesystems, as Tune's storage does, so ``s3://``/``gs://`` roots restore exactly as local ones (an S3-compatible
endpoint is taken from ``AWS_ENDPOINT_URL``, as pyarrow does).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.fs as pafs

DONE_MARKER = "SWEEP_EXPERIMENT_DONE"
KEYS_FILE = "trial_keys.json"
DROPPED_FILE = "dropped_keys.json"  # trials a drain removed before they started (see tune_runner.Drain)
CHECKPOINT_FOLDER = re.compile(r"checkpoint_(\d+)")  # Tune's names for a trial's checkpoint folders


def checkpoint_folders(fs: pafs.FileSystem, trial_path: str) -> dict[str, int]:
    """A trial folder's checkpoint folders (Tune's ``checkpoint_N``) by name, each with its N."""
    found = fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    return {e.base_name: int(m[1]) for e in found
            if e.type == pafs.FileType.Directory and (m := CHECKPOINT_FOLDER.fullmatch(e.base_name))}


def is_uri(path: str) -> bool:
    return "://" in path


def tune_root(storage_path: str | None, sweep_name: str, sweep_dir: Path) -> str:
    """The sweep's namespace under the storage root, as a URI or an absolute path."""
    if not storage_path:
        return str(sweep_dir / "tune")
    if is_uri(storage_path):
        return f"{storage_path.rstrip('/')}/{sweep_name}"
    return str(Path(storage_path).expanduser().resolve() / sweep_name)


STORAGE_CHECK = ".storage-check-"  # the prefix of the file a driver leaves for a moment for the nodes to read


def read_check(root: str, name: str, token: str) -> str | None:
    """Run on a node: None if it reads ``token`` from the file ``name`` the driver wrote under Tune's root, else
    why not. A node that cannot reach the storage fails each trial it runs at its first checkpoint (Ray checks
    that every worker reaches it) and retries them all to FAILED."""
    try:
        store = ExperimentStore(root)
        with store.fs.open_input_stream(f"{store.path.rstrip('/')}/{name}") as f:
            got = f.read().decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - whatever it is, the node cannot use this storage
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
    return None if got == token else "reads another file there: not the storage the driver writes to"


class ExperimentStore:
    """The experiments of one sweep under its Tune root."""

    def __init__(self, root: str):
        self.root = root
        self.fs, self.path = pafs.FileSystem.from_uri(root if is_uri(root) else str(Path(root).resolve()))

    def write_check(self) -> tuple[str, str]:
        """A file with a random token under the root, for ``read_check`` on each node: (its name, the token)."""
        import uuid

        token = uuid.uuid4().hex
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path.rstrip('/')}/{STORAGE_CHECK}{token}") as out:
            out.write(token.encode())
        return f"{STORAGE_CHECK}{token}", token

    def remove(self, name: str) -> None:
        self.fs.delete_file(f"{self.path.rstrip('/')}/{name}")

    def uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def experiments(self) -> list[str]:
        """Names of the experiments, oldest first."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("exp-"))

    def next_name(self) -> str:
        numbers = [int(n[4:]) for n in self.experiments() if n[4:].isdigit()]
        return f"exp-{max(numbers, default=0) + 1:03d}"

    def _file(self, name: str, file: str) -> str:
        return f"{self.path.rstrip('/')}/{name}/{file}"

    def write_keys(self, name: str, keys: list[str]) -> None:
        self.fs.create_dir(f"{self.path.rstrip('/')}/{name}", recursive=True)
        with self.fs.open_output_stream(self._file(name, KEYS_FILE)) as out:
            out.write(json.dumps(sorted(keys)).encode())

    def keys(self, name: str) -> set[str]:
        with self.fs.open_input_stream(self._file(name, KEYS_FILE)) as f:
            return set(json.loads(f.read().decode()))

    def drop(self, name: str, keys: list[str]) -> None:
        """``keys`` were removed from experiment ``name`` before they started: not its to resume or count."""
        known = self.dropped(name)  # read before the stream below empties the file
        with self.fs.open_output_stream(self._file(name, DROPPED_FILE)) as out:
            out.write(json.dumps(sorted(known | set(keys))).encode())

    def dropped(self, name: str) -> set[str]:
        path = self._file(name, DROPPED_FILE)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return set()
        with self.fs.open_input_stream(path) as f:
            return set(json.loads(f.read().decode()))

    def is_done(self, name: str) -> bool:
        return self.fs.get_file_info(self._file(name, DONE_MARKER)).type != pafs.FileType.NotFound

    def mark_done(self, name: str) -> None:
        with self.fs.open_output_stream(self._file(name, DONE_MARKER)) as out:
            out.write(b"")

    def unfinished(self) -> list[str]:
        """Experiments a driver left before they ended (it died or was stopped), oldest first."""
        return [n for n in self.experiments() if not self.is_done(n)
                and self.fs.get_file_info(self._file(n, KEYS_FILE)).type != pafs.FileType.NotFound]

    def final_folder(self, key: str, marker: str) -> str | None:
        """The newest checkpoint folder of trial ``key`` that holds ``marker`` (its final result file), as a path
        on ``self.fs``: where a finished trial's model delta lies, since Tune keeps a trial's last checkpoint.
        Trial folders end in ``-<key>`` (tune_runner's trial names)."""
        for name in reversed(self.experiments()):
            found = self.fs.get_file_info(pafs.FileSelector(f"{self.path.rstrip('/')}/{name}", allow_not_found=True))
            for trial in found:
                if trial.type != pafs.FileType.Directory or not trial.base_name.endswith(f"-{key}"):
                    continue
                numbered = checkpoint_folders(self.fs, trial.path)
                for folder in sorted(numbered, key=numbered.get, reverse=True):
                    if self.fs.get_file_info(f"{trial.path}/{folder}/{marker}").type == pafs.FileType.File:
                        return f"{trial.path}/{folder}"
        return None

    def download(self, path: str, dst: Path) -> Path:
        """A folder of this store (``path`` on ``self.fs``) copied to the local ``dst``."""
        dst.mkdir(parents=True, exist_ok=True)  # pyarrow copies a folder's files into one that exists
        pafs.copy_files(path, str(dst), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return dst
