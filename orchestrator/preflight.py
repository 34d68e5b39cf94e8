"""Preflight: the checks of a valid spec against the world (paths, resources, model, task data, the Hub, the
cluster address), run before anything starts or is written.

Each check reads only (but for a probe folder made and removed where an output folder does not exist yet), runs
in seconds, and fails with one line that names the field, the value and what
would be valid; `validate` and `run` run the same checks, so `validate` saying "valid" means `run` starts.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from trainables.config import DataConfig
from trainables.models import EMBEDDED, ModelError, load_tokenizer, resolve_model
from trainables.tasks import HUB_TIMEOUT_S, DataError, check_hub, load_task, resolve_data_dir

from .spec import ClusterError, SpecError, SweepSpec

SWEEP_FILES = {"spec.yaml", "identity.json", "driver.json", "STOP", "mlflow.db", "mlartifacts", "records", "tune", "masks",
               "export", "report", "analysis", "terminated.log"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")
MAX_TRIALS = 5000  # a bigger grid is more often a typo (seeds: range of 1000) than a plan: ask for --yes
CONNECT_TIMEOUT_S = 5.0


def preflight(spec: SweepSpec) -> None:
    """Everything a run needs, cheapest first, before Ray or the tracking store is touched."""
    check_paths(spec)
    check_resources(spec)
    check_cache(spec.data)
    path = check_model(spec.model, spec.training.max_seq_length)
    check_method_fits(spec, path)
    check_data(spec.data, spec.grid.tasks)


def check_size(spec: SweepSpec, yes: bool) -> int:
    n = spec.size()
    if n > MAX_TRIALS and not yes:
        raise SpecError(f"grid: {n} trials (methods x tasks x seeds x sparsities x perturbations) is over "
                        f"{MAX_TRIALS}; check grid.seeds and friends, or pass --yes to run them all")
    return n


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: Path, field: str) -> None:
    """``path`` is (or can be made as) a folder we may write in; leaves nothing behind."""
    if path.exists() and not path.is_dir():
        raise SpecError(f"{field} {str(path)!r} is a file, not a folder; give a folder path")
    probe = _nearest_existing(path)
    if not probe.is_dir():
        raise SpecError(f"{field} {str(path)!r}: {str(probe)!r} is a file, so the folder cannot be made")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError(f"{field} {str(path)!r}: no permission to write in {str(probe)!r}")
    if probe != path:  # root passes the permission check where no folder can be made (/proc): try one
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".peft-sweep-probe-", dir=probe))
        except OSError as exc:
            raise SpecError(f"{field} {str(path)!r}: no folder can be made in {str(probe)!r} "
                            f"({exc.strerror or exc})") from None


def check_paths(spec: SweepSpec) -> None:
    """output_dir, the sweep folder, Tune's storage and a SQLite tracking file are (or can become) folders."""
    check_writable_dir(Path(spec.output_dir).expanduser(), "output_dir")
    sweep_dir = spec.sweep_dir
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise SpecError(f"name {spec.name!r}: {str(sweep_dir)!r} is a file; choose another name or output_dir")
    if sweep_dir.is_dir() and not (sweep_dir / "spec.yaml").is_file():
        others = sorted(p.name for p in sweep_dir.iterdir() if p.name not in SWEEP_FILES)
        if others:
            raise SpecError(f"name {spec.name!r}: {str(sweep_dir)!r} already holds other files ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}) and is no sweep folder; choose another name "
                            "or output_dir")
    if spec.ray.storage_path and "://" not in spec.ray.storage_path:
        check_writable_dir(Path(spec.ray.storage_path).expanduser(), "ray.storage_path")
    uri = spec.resolved_tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if db.is_dir():
            raise SpecError(f"tracking_uri {uri!r} names a folder; give a file, e.g. sqlite:///{db / 'mlflow.db'}")
        check_writable_dir(db.parent, "tracking_uri folder")


def check_resources(spec: SweepSpec) -> None:
    """A trial that asks for more than a local Ray has stays PENDING forever: refuse it now. (On a cluster
    the check runs right after connecting, in tune_runner.)"""
    ray = sys.modules.get("ray")  # not imported here: only a Ray this process already runs counts
    if spec.ray_address or (ray is not None and ray.is_initialized()):
        return  # tune_runner checks the resources of a cluster (or an already started Ray) once connected
    res = spec.resources
    if res.gpu_per_trial > 0:
        if spec.ray.num_gpus is not None:
            gpus, source = spec.ray.num_gpus, f"ray.num_gpus is {spec.ray.num_gpus:g}"
        else:
            import torch

            gpus = torch.cuda.device_count()
            source = f"this machine has {gpus} GPU(s)"
        if res.gpu_per_trial > gpus:
            hint = "" if spec.ray.num_gpus is not None else \
                "; to only validate a GPU spec here: --set ray.num_gpus=1 (logical GPUs)"
            raise SpecError(f"resources.gpu_per_trial {res.gpu_per_trial:g}: {source}, so no trial could start; "
                            "set gpu_per_trial: 0 (CPU), run on a GPU machine, or give ray.address of a GPU "
                            f"cluster{hint}")
    cpus = spec.ray.num_cpus or os.cpu_count() or 1
    if res.cpu_per_trial > cpus:
        raise SpecError(f"resources.cpu_per_trial {res.cpu_per_trial:g}: the local Ray has {cpus} CPU(s) "
                        f"({'ray.num_cpus' if spec.ray.num_cpus else 'this machine'}), so no trial could start; "
                        f"use at most {cpus}")


def check_cache(data: DataConfig) -> None:
    from trainables.data import CACHE_ENV, cache_root

    field = "data.cache_dir" if data.cache_dir else (f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "cache dir")
    check_writable_dir(cache_root(data), field)


def check_model(model: str, max_seq_length: int | None = None) -> str:
    """The model resolves, a local folder carries its tokenizer (transformers would otherwise build an empty
    one and train on [UNK]s), and max_seq_length fits its position embeddings."""
    path = resolve_model(model)
    local = Path(path)
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"model {model!r}: the folder has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, "
                         "...); save the tokenizer next to config.json")
    if not local.is_dir():
        check_hub_model(model, path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        cause = str(exc).splitlines()[0]
        if local.is_dir():
            raise ModelError(f"cannot load the config of model {model!r}: {cause}") from None
        raise ModelError(f"cannot load model {model!r} from the Hugging Face Hub; without Hub access give a local "
                         f"folder (model: /path/to/{model.split('/')[-1]}) or set HF_HUB_OFFLINE=1 (local HF cache "
                         f"only, no retries): {cause}") from None
    positions = getattr(config, "max_position_embeddings", None)
    if positions and config.model_type in ("roberta", "xlm-roberta", "camembert", "longformer"):
        positions -= 2  # these offset positions by padding_idx + 1
    if positions and max_seq_length and max_seq_length > positions:
        raise SpecError(f"training.max_seq_length {max_seq_length} is beyond the {positions} positions of model "
                        f"{model!r}; use at most {positions}")
    load_tokenizer(path)
    return path


def check_hub_model(model: str, repo: str, timeout: float = HUB_TIMEOUT_S) -> None:
    """A Hub id on a machine without the Hub: one metadata call with a short timeout, so the run fails in seconds
    (transformers retries for half a minute, and every trial would again). Offline mode (HF_HUB_OFFLINE=1) reads
    the local HF cache and is left to transformers."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        return
    try:
        HfApi().model_info(repo, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - whatever the reason, the Hub cannot serve this model now
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        cached = isinstance(try_to_load_from_cache(repo, "config.json"), str)
        raise ModelError(f"model {model!r}: the Hugging Face Hub cannot serve it ({reason}); "
                         + ("it is in the local HF cache: set HF_HUB_OFFLINE=1 to use that copy" if cached else
                            f"give a local folder (model: /path/to/{model.split('/')[-1]}), set HF_HUB_OFFLINE=1 "
                            "where the local HF cache holds it, or use the model packed with this tool: "
                            f"{', '.join(sorted(EMBEDDED))}")) from None


def check_method_fits(spec: SweepSpec, path: str) -> None:
    """A LoRA rank or an adapter bottleneck the budget cannot hold, or a sparsity whose budget ⌊m·p⌋ is 0, would
    fail every trial of its row at setup, on the cluster; found here instead, with the model loaded once (only for
    a grid with a method that takes a sparsity)."""
    from trainables.methods import get_method

    cases = {}
    for t in spec.trials():
        if get_method(t.method).uses_sparsity:
            cases.setdefault((t.label, t.sparsity), t)
    if not cases:
        return
    from trainables.models import TaskModel, load_pretrained

    backbone, fresh = load_pretrained(path)
    model = TaskModel(backbone, "classification", 2, fresh)
    for (row, sparsity), t in cases.items():
        try:
            get_method(t.method)(t.params(), sparsity, t.seed).fit(model)
        except ValueError as exc:
            raise SpecError(f"grid row {row!r} at sparsity {sparsity}: {exc}") from None


def check_data(data: DataConfig, tasks: list[str]) -> None:
    """Read every task file in full (a bad row fails here with file:line), or try the Hub when no folder is set."""
    folder = resolve_data_dir(data.dir)
    for task in tasks:
        if folder is not None:
            load_task(task, folder)
        else:
            check_hub(task)


def check_ray_address(address: str | None) -> None:
    """ray.init on an address where nobody listens, or where something that is not Ray listens, can hang for
    minutes: knock (TCP), then complete a gRPC handshake with the GCS, each with a short timeout."""
    import socket

    if not address or address == "auto":
        return
    refuse_ray_client(address)
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # the handshake below is plaintext; ray.init checks a TLS cluster
    import grpc

    channel = grpc.insecure_channel(f"{host or '127.0.0.1'}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: it accepts TCP but gives no gRPC "
                           f"handshake within {CONNECT_TIMEOUT_S:g} s, so it is no Ray head (GCS) port; give the "
                           "address `ray start --head` printed") from None
    finally:
        channel.close()


def refuse_ray_client(address: str | None, from_env: bool = False) -> None:
    """Tune under Ray Client (ray://) runs its driver loop in an actor on the head (ray/tune/tuner.py): the
    callback would write the records on the head's disk, and `peft-sweep stop` signal a process with no handler."""
    if address and address.startswith("ray://"):
        raise ClusterError(f"the Ray address {address!r}{' (from $RAY_ADDRESS)' if from_env else ''} is a Ray Client "
                           "address: Tune would run the sweep's loop on the head, away from its records and `stop`; "
                           "use `ray job submit` (README: On a multi-GPU cluster) or, on a cluster machine, the GCS "
                           "address HEAD:6379")


def check_cluster_paths(spec: SweepSpec, address: str | None) -> None:
    """With a cluster, a relative path resolves wherever the driver happens to run; under `ray job submit`
    that is the job's temporary working dir, deleted with the job, and the sweep's records with it. A Ray Client
    address is refused first: no path would make it work."""
    refuse_ray_client(address, from_env=address is not None and not spec.ray.address)
    if not address:
        return
    uri = spec.tracking_uri or ""
    sqlite = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    for field, value in (("output_dir", spec.output_dir), ("ray.storage_path", spec.ray.storage_path),
                         ("tracking_uri", sqlite)):
        if value and "://" not in value and not Path(value).expanduser().is_absolute():
            raise SpecError(f"{field} {value!r} is relative, and the sweep runs on the Ray cluster at {address!r}: "
                            "under `ray job submit` it would land in the job's temporary working dir and be lost; "
                            "give an absolute path on storage that outlives the job (e.g. NFS)"
                            + (", or a URI" if field != "output_dir" else ""))


PACKAGES = ("ray", "torch", "transformers", "peft")


def node_versions() -> dict[str, str]:
    """Release versions without local tags (a CPU build's torch 2.x+cpu runs the same code as 2.x+cu124), and
    this project as the hash of its source (a node may run it from the job's working dir, uninstalled)."""
    from importlib.metadata import PackageNotFoundError, version

    from .identity import source_digest

    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg).split("+", 1)[0]
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return {**out, "peft-sweep source": source_digest()}


def node_lacks(spec: SweepSpec) -> list[str]:
    """What the node this runs on lacks for the sweep (run there as a Ray task): the data folder and task files (or
    the Hub's datasets), a writable token cache, the model. Reads only; seconds."""
    from trainables.tasks import get_task, task_files

    lacks = []
    try:
        folder = resolve_data_dir(spec.data.dir)
        for task in spec.grid.tasks:
            if folder is not None:
                task_files(get_task(task), folder)
            else:  # the Hub, as this node reaches it: a node without it failed every trial it ran
                check_hub(task)
    except DataError as exc:
        lacks.append(str(exc))
    try:
        check_cache(spec.data)
    except SpecError as exc:
        lacks.append(str(exc))
    try:
        check_model(spec.model)
    except (ModelError, SpecError, OSError) as exc:
        lacks.append(str(exc).splitlines()[0])
    return lacks


def node_data(spec: SweepSpec) -> dict[str, str]:
    """The sha256 of each task's files in the data folder as this node sees it ({} for the Hub or a folder it
    lacks, which node_lacks reports): a node's stale copy would be read silently, since each node keys its token
    cache on its own files."""
    from .identity import task_hash

    try:
        folder = resolve_data_dir(spec.data.dir)
        return {task: task_hash(task, str(folder)) for task in spec.grid.tasks} if folder is not None else {}
    except DataError:
        return {}


def node_report(spec: SweepSpec) -> dict[str, object]:
    """Run on each node; never raises, so one broken node becomes a line of the table, not a traceback."""
    import socket

    try:
        return {"host": socket.gethostname(), "versions": node_versions(), "lacks": node_lacks(spec),
                "data": node_data(spec)}
    except Exception as exc:  # noqa: BLE001 - whatever breaks here would break a trial on that node
        return {"host": socket.gethostname(), "versions": {}, "lacks": [f"{type(exc).__name__}: {exc}"], "data": {}}


def nodes_problems(reports: dict[str, dict], driver: dict[str, str], data: dict[str, str] | None = None) -> list[str]:
    """One line per node and problem: what it lacks, each package version that differs from the driver's, and
    each task whose files differ from the driver's (``data``: node_data on the driver)."""
    lines = []
    for node, rep in sorted(reports.items()):
        lines += [f"{node}: {lack}" for lack in rep["lacks"]]
        lines += [f"{node}: {pkg} {rep['versions'].get(pkg)} (driver: {want})" for pkg, want in driver.items()
                  if rep["versions"] and rep["versions"].get(pkg) != want]
        seen = rep.get("data") or {}
        lines += [f"{node}: the {task} files differ from the driver's (sha256 {seen[task][:12]}, driver: "
                  f"{want[:12]}); copy the driver's data folder there" for task, want in (data or {}).items()
                  if task in seen and seen[task] != want]
    return lines


@contextlib.contextmanager
def undo_on_error(folder: Path) -> Iterator[None]:
    """Remove ``folder`` (and the parents made for it) if the block fails: a refused run leaves nothing."""
    top = folder
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    made = not top.exists()
    try:
        yield
    except BaseException:
        if made:
            shutil.rmtree(top, ignore_errors=True)
        raise


__all__ = ["DataError", "check_cluster_paths", "check_data", "check_model", "check_paths", "check_ray_address",
           "check_resources", "node_data", "node_report", "node_versions", "nodes_problems",
           "check_size", "preflight", "undo_on_error"]
