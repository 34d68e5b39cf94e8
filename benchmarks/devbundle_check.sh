#!/usr/bin/env bash
# CPU check of the bundle's MLflow part (benchmarks/devbundle.sh) in an environment like the GPU machine's:
# a fresh venv with only packages that machine has (plus Ray and pydantic installed normally, standing in for
# the bundle's Ray part, its dashboard UI stubbed the same way), the MLflow tree on PYTHONPATH, and none of the
# MLflow stack installed. It proves
#  (a) import mlflow; MlflowClient on sqlite:///... creates an experiment and a run, logs params, metrics and an
#      artifact, and reads them back;
#  (b) this project's own sweep runs there: `python -m orchestrator run` on a 2-trial spec (tiny random-init
#      BERT, CB, num_cpus 2) up to its "best on average" line;
#  (c) the project's own venv reads that sweep's mlflow.db (the pinned versions share the schema);
#  (d) on a stubbed Ray a head with its dashboard starts and its Jobs API answers (sweeps never start the
#      dashboard locally, and the GPU machine lacks the dashboard's needs; a machine with ray[default] would);
# and logs each lookup of what the bundle leaves out (databricks.sdk/.agents, google.auth, pyasn1, greenlet,
# uvicorn, datasets) from every process that inherits PYTHONPATH, and which of the tree's packages the processes
# that exit normally had loaded.
# This machine has no Python 3.12, so the tree is built for 3.11 through the same code path
# (DEVBUNDLE_PYTHON_VERSION=3.11): same versions and files, but for cffi's compiled backend (cp311 here;
# cryptography is abi3, SQLAlchemy goes without its optional .so). Not in CI. Takes 2-3 min (122-183 s
# measured) with the venv made already, on 2 shared CPU cores; a first run installs the venv from the local
# index first (a few minutes more).
#
# usage: bash benchmarks/devbundle_check.sh [WORK_DIR]     (default /tmp/devbundle-check)
#   CHECK_VENV             the venv to use or make (default /tmp/devbundle-check-venv)
#   DEVBUNDLE_PIN_PYTHON   the project's venv (versions to pin, and to make the tiny model; default REPO/.venv)
#   PEFT_SWEEP_DATA_DIR    the task data (default REPO/../shared/data)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/devbundle-check}
venv=${CHECK_VENV:-/tmp/devbundle-check-venv}
host_py=${DEVBUNDLE_PIN_PYTHON:-$root/.venv/bin/python}
export DEVBUNDLE_PIN_PYTHON=$host_py
data=${PEFT_SWEEP_DATA_DIR:-$root/../shared/data}
[ -d "$data/CB" ] || { echo "no task data at $data (set PEFT_SWEEP_DATA_DIR)" >&2; exit 2; }
data=$(cd "$data" && pwd)
rm -rf "$work"; mkdir -p "$work"; work=$(cd "$work" && pwd)
t0=$SECONDS

# The GPU machine's packages that a sweep touches (KINDS.md), never the MLflow stack; torch pinned, CPU build.
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 transformers peft pandas pyarrow scipy pyyaml requests protobuf click \
    cloudpickle anyio packaging rich matplotlib safetensors tokenizers psutil msgpack filelock jinja2 aiohttp grpcio \
    scikit-learn statsmodels seaborn fsspec typing-extensions zipp markupsafe ray==2.60.0 pydantic jsonschema tensorboardX
fi
py=$venv/bin/python
# the bundle's Ray has the dashboard's web UI replaced by a stub (devbundle.sh stub-dashboard): so has this one
bash "$root/benchmarks/devbundle.sh" stub-dashboard "$("$py" -c 'import os, ray; print(os.path.dirname(ray.__file__))')"
"$py" - <<'PY'
from importlib.metadata import PackageNotFoundError, version
present = []
for name in ["mlflow", "mlflow-skinny", "mlflow-tracing", "sqlalchemy", "alembic", "mako", "sqlparse", "cachetools",
             "python-dotenv", "importlib-metadata", "opentelemetry-api", "opentelemetry-sdk", "gitpython",
             "databricks-sdk", "google-auth", "pyasn1", "greenlet", "fastapi", "starlette", "uvicorn", "datasets",
             "scikit-posthocs", "cryptography", "cffi"]:
    try:
        present.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
assert not present, f"the check venv must not have these (the bundle brings them or leaves them out): {present}"
print("check venv: none of the MLflow stack installed; ray", version("ray"), "torch", version("torch"))
PY

DEVBUNDLE_PYTHON_VERSION=3.11 bash "$root/benchmarks/devbundle.sh" mlflow "$work/bundle" 2>&1 | grep -v 'is ignored'
mkdir "$work/site" && tar -C "$work/site" -xJf "$work/bundle/mlflow.tar.xz"

# A sitecustomize in every process of the check (Ray workers inherit PYTHONPATH): it logs, with the importer,
# each lookup of what the bundle leaves out, and at exit logs which of the tree's packages were loaded.
mkdir "$work/guard"
cat > "$work/guard/sitecustomize.py" <<'PY'
import atexit, json, os, sys, traceback
LEFT_OUT = ("databricks.sdk", "databricks.agents", "google.auth", "google.oauth2", "pyasn1", "pyasn1_modules", "greenlet", "uvicorn",
            "datasets")
LOG, SITE = os.environ["DEVBUNDLE_GUARD_LOG"], os.environ["DEVBUNDLE_GUARD_SITE"]

def _log(rec):
    with open(LOG, "a") as f:
        f.write(json.dumps(rec) + "\n")

class Guard:
    """Logs (never changes) each lookup of what the bundle leaves out: neither the venv nor the tree has it."""
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in LEFT_OUT):
            stack = [f"{fr.filename}:{fr.lineno}" for fr in traceback.extract_stack()[:-1]
                     if "importlib" not in fr.filename and "sitecustomize" not in fr.filename][-3:]
            _log({"pid": os.getpid(), "looked_up": name, "from": stack})
        return None

sys.meta_path.insert(0, Guard())

@atexit.register
def _loaded():
    top = sorted({m.split(".")[0] for m, mod in list(sys.modules.items())
                  if (getattr(mod, "__file__", None) or "").startswith(SITE)})
    _log({"pid": os.getpid(), "argv0": sys.argv[0][-60:], "loaded_from_bundle": top})
PY
export DEVBUNDLE_GUARD_LOG=$work/imports.jsonl DEVBUNDLE_GUARD_SITE=$work/site
export PYTHONPATH=$work/guard:$work/site:$root PEFT_SWEEP_DATA_DIR=$data PEFT_SWEEP_CACHE_DIR=$work/cache
export RAY_ADDRESS="" RAY_TMPDIR=$work/ray PYTHONUNBUFFERED=1
mkdir -p "$work/ray"

echo "== (a) MlflowClient on SQLite"
"$py" - "$work" <<'PY'
import sys, pathlib
import mlflow
from mlflow import MlflowClient
work = pathlib.Path(sys.argv[1])
assert mlflow.__file__.startswith(str(work / "site")), mlflow.__file__
uri = f"sqlite:///{work}/a/mlflow.db"
(work / "a").mkdir()
client = MlflowClient(uri)
exp = client.create_experiment("check", artifact_location=str(work / "a" / "artifacts"))
run = client.create_run(exp)
client.log_param(run.info.run_id, "method", "sam")
for step in range(3):
    client.log_metric(run.info.run_id, "acc", 0.5 + step / 10, step=step)
art = work / "a" / "note.txt"; art.write_text("hello")
client.log_artifact(run.info.run_id, str(art))
client.set_terminated(run.info.run_id)
got = client.get_run(run.info.run_id)
hist = [m.value for m in client.get_metric_history(run.info.run_id, "acc")]
arts = [a.path for a in client.list_artifacts(run.info.run_id)]
found = client.search_runs([exp], "params.method = 'sam'")
assert got.data.params == {"method": "sam"} and hist == [0.5, 0.6, 0.7] and arts == ["note.txt"], (got, hist, arts)
assert got.info.status == "FINISHED" and len(found) == 1
print(f"ok: mlflow {mlflow.__version__} from {pathlib.Path(mlflow.__file__).parent}; run {run.info.run_id} "
      f"params {got.data.params} acc {hist} artifacts {arts} status {got.info.status}")
PY

echo "== (b) a 2-trial sweep through python -m orchestrator run"
# The tiny model and the spec come from the tests' helpers, run with the project's venv (pytest is there).
(cd "$root" && PYTHONPATH=$root "$host_py" - "$work" "$data" <<'PY'
import sys
from pathlib import Path
from tests.conftest import make_tiny_model
from tests.sweeps import write_spec
work, data = Path(sys.argv[1]), Path(sys.argv[2])
model = make_tiny_model(work / "tiny-bert")
print(write_spec(work / "sweep", str(model), data, grid__seeds=[0]))
PY
)
(cd "$root" && timeout 900 "$py" -m orchestrator run "$work/sweep/spec.yaml" 2>&1 | tee "$work/sweep.log" | tail -15)
grep -q "best on average" "$work/sweep.log" || { echo "FAILED: no 'best on average' line (see $work/sweep.log)" >&2; exit 1; }

echo "== (c) the project's venv reads the sweep's mlflow.db (same schema on both sides)"
db=$(find "$work/sweep" -name mlflow.db | head -1)
env -u PYTHONPATH "$host_py" - "$db" <<'PY' 2>&1 | grep -v ' INFO '
import sys
import mlflow
from mlflow import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}")
runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
assert runs and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
print(f"ok: mlflow {mlflow.__version__} from {mlflow.__file__} reads {len(runs)} FINISHED runs")
PY

echo "== (d) the stubbed dashboard starts and serves the Jobs API (the project's venv, a stubbed copy of its Ray)"
# The check venv, like the GPU machine, lacks the dashboard's own needs (aiohttp_cors): no dashboard starts there
# at all. The project's venv has them (ray[default]); a copy of its Ray, stubbed, goes first on PYTHONPATH.
ray_pkg=$("$host_py" -c 'import os, ray; print(os.path.dirname(ray.__file__))')
mkdir "$work/raycopy" && cp -r "$ray_pkg" "$work/raycopy/ray"
bash "$root/benchmarks/devbundle.sh" stub-dashboard "$work/raycopy/ray"
env PYTHONPATH="$work/raycopy" "$host_py" - "$work/raycopy" <<'PY' 2>&1 | grep -v -e ' INFO ' -e 'Started a local Ray'
import socket, sys, urllib.request
import ray
from ray.job_submission import JobSubmissionClient
assert ray.__file__.startswith(sys.argv[1]), ray.__file__
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
ctx = ray.init(num_cpus=1, include_dashboard=True, dashboard_port=port, logging_level="ERROR")
url = "http://" + ctx.dashboard_url
jobs = JobSubmissionClient(url).list_jobs()
page = urllib.request.urlopen(url + "/").read().decode()
assert "left out of this bundle" in page, page[:200]
print(f"ok: dashboard of {ray.__file__} at {url} answers list_jobs ({len(jobs)} jobs) and serves the stub page")
ray.shutdown()
PY
rm -rf "$work/raycopy"

echo "== lookups of what the bundle leaves out (none of it is there; the lookups must fail gracefully)"
"$py" - "$work/imports.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
refused = {}
for r in recs:
    if "looked_up" in r:
        refused.setdefault(r["looked_up"], set()).add(" <- ".join(reversed(r["from"])))
for name, where in sorted(refused.items()):
    print(f"looked up {name}: {len(where)} distinct caller(s); e.g. {sorted(where)[0]}")
if not refused:
    print("no process looked up anything the bundle leaves out")
loaded = sorted({m for r in recs for m in r.get("loaded_from_bundle", [])})
print(f"packages of the MLflow tree loaded by some process ({sum('loaded_from_bundle' in r for r in recs)} "
      f"processes logged): {', '.join(loaded)}")
PY
echo "devbundle_check: ok in $((SECONDS - t0)) s"
