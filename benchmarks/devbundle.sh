#!/usr/bin/env bash
# What a GPU machine without package access needs to run this project's sweeps, built here and unpacked there.
# Run `bash benchmarks/devbundle.sh --help` for the verbs, the size limits and why the MLflow part exists.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash benchmarks/devbundle.sh build  [DIR]    # here, once (~4 min on 2 cores); DIR defaults to .devbundle
       bash benchmarks/devbundle.sh unpack [DIR]    # on the GPU machine, before anything else
       bash benchmarks/devbundle.sh mlflow DIR      # only DIR/mlflow.tar.xz (what devbundle_check.sh uses)
       bash benchmarks/devbundle.sh check-wheels [DIR]   # DIR/whl: the pydantic pair matches (build runs it)
       bash benchmarks/devbundle.sh stub-dashboard RAY  # RAY: a ray package folder (build runs it on the bundle's)

The GPU machine (Python 3.12, x86-64, no network) has torch, transformers, peft, pandas, pyarrow, scipy,
statsmodels, scikit-learn, but not Ray, MLflow or MLflow's SQLite store (SQLAlchemy, Alembic, Mako).

build    runs ../shared/device/bundle.sh DIR --with-model --with-data (Ray stripped, ~19 MB; MiniLM-L6 in bf16,
         ~33 MB; the task data, ~1.4 MB; Ray's missing needs incl. pydantic as wheels in DIR/whl), then adds
         DIR/mlflow.tar.xz: mlflow-skinny and what its SQLite tracking store imports (SQLAlchemy, Alembic, Mako,
         sqlparse, OpenTelemetry, cryptography and cffi; FastAPI and Starlette, which `import mlflow` needs) and
         scikit-posthocs (a sweep's end analyses with it), each pinned to the version installed in the project's
         venv, so that an mlflow.db written on either side has the schema the other expects. It leaves out what
         a SQLite store never imports: databricks-sdk (an empty `databricks` namespace folder stands in, for one
         find_spec probe), google-auth, pyasn1, greenlet, uvicorn; benchmarks/devbundle_check.sh shows it on CPU.
         bundle.sh's --with-mlflow is not used: it lacks SQLAlchemy/Alembic/Mako and its wheels are too big.
unpack   runs DIR/unpack.sh (Ray, wheels, model to /tmp/minilm-l6, data to /tmp/data) and extracts
         DIR/mlflow.tar.xz into /tmp/site; then:  export PYTHONPATH=/tmp/site:REPO
check-wheels  checks DIR/whl (build does too): one wheel each of pydantic, pydantic-core, annotated-types,
         typing-inspection, typing-extensions (build replaces bundle.sh's newest ones by the venv's versions),
         and pydantic's "Requires-Dist: pydantic-core==X" is the pydantic-core shipped
stub-dashboard  replaces RAY/dashboard/client/build (the web UI's files, 0.8 MiB of the bundle's xz) by a page
         saying it was left out, an empty static/ and the favicon: what Ray's dashboard needs to start (on Linux
         it refuses to start without the folder). The GPU machine lacks the dashboard's Python needs
         (aiohttp_cors), so no dashboard starts there at all; on a machine with them, Jobs and the state API (the
         dashboard's Python side) still work: devbundle_check.sh shows both.
mlflow   builds only DIR/mlflow.tar.xz (for devbundle_check.sh, with DEVBUNDLE_PYTHON_VERSION=3.11 on a machine
         that has no Python 3.12).

Size: a device call carries the working tree and the carried paths, at most 64 MiB in all. build fails (exit 1)
when the bundle plus the repository's tracked files come to more than 62 MiB, leaving room for a sweep's state
(spec, identity, records) to travel with it.

Environment:
  DEVBUNDLE_PIN_PYTHON      the python whose installed versions are pinned (default REPO/.venv/bin/python)
  DEVBUNDLE_PYTHON_VERSION  the target Python of the wheels (default 3.12, the GPU machine's; 3.11 only for
                            the CPU check)
  DEVBUNDLE_SHARED          the shared folder holding device/bundle.sh and data/ (default REPO/../shared)
  DEVBUNDLE_TASKS           the tasks whose data travels (default "CB COPA WSC RTE": what issues 19 and 20 run;
                            the seven tasks would take 0.8 MiB more of the 64)
EOF
}

root=$(cd "$(dirname "$0")/.." && pwd)
verb=${1:-}
case $verb in
  -h|--help|help) usage; exit 0;;
  build|unpack) dir=${2:-.devbundle};;
  check-wheels) dir=${2:-.devbundle};;
  stub-dashboard) dir=${2:?usage: devbundle.sh stub-dashboard RAY_PACKAGE_DIR};;
  mlflow) dir=${2:?usage: devbundle.sh mlflow DIR};;
  *) echo "unknown verb '${verb}'; valid: build, unpack, mlflow, check-wheels, stub-dashboard, --help" >&2; exit 2;;
esac
limit_mib=62
# mlflow-skinny holds every file of mlflow-tracing (checked for 3.17.2), so that one is not packed.
pkgs=(mlflow-skinny sqlalchemy alembic mako sqlparse cachetools python-dotenv importlib-metadata
      opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
      gitpython gitdb smmap fastapi starlette cryptography cffi pycparser scikit-posthocs)

pins() {  # NAME==VERSION for each of pkgs, as installed in the pinning python
  local py=${DEVBUNDLE_PIN_PYTHON:-$root/.venv/bin/python}
  [ -x "$py" ] || { echo "no python at $py to read versions from: set DEVBUNDLE_PIN_PYTHON" >&2; exit 2; }
  "$py" - "$@" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
missing = []
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"not installed in {sys.executable}, so no version to pin: {', '.join(missing)}")
PY
}

build_mlflow() {  # DIR/mlflow.tar.xz: the packages' wheels unpacked (no __pycache__) as one tar.xz
  local out=$1 pyver=${DEVBUNDLE_PYTHON_VERSION:-3.12}
  local -a spec
  spec=($(pins "${pkgs[@]}")) || exit 1
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/w" "${spec[@]}"
  mkdir "$tmp/site"
  for w in "$tmp"/w/*.whl; do (cd "$tmp/site" && python3 -m zipfile -e "$w" .); done
  find "$tmp/site" -name __pycache__ -type d -prune -exec rm -rf {} +
  # SQLAlchemy's compiled speedups (8 .so, 1.8 MB of the xz) are optional: each has its pure-Python source
  # beside it, which SQLAlchemy falls back to. Without them the tree's only compiled code is cryptography's
  # abi3 module (the same wheel for 3.11 and 3.12) and cffi's backend: the CPU check runs the GPU machine's files
  # but for that one cffi module.
  find "$tmp/site/sqlalchemy" -name '*.so' -delete
  find "$tmp/site" -name '*.so' -exec strip --strip-unneeded {} \;
  # `import mlflow` runs importlib.util.find_spec("databricks.agents") (mlflow/genai/scorers/validation.py),
  # which raises unless some `databricks` package exists: an empty namespace folder makes it answer None,
  # without databricks-sdk (and google-auth, pyasn1 that it needs), which a SQLite store never imports.
  mkdir -p "$tmp/site/databricks"
  mkdir -p "$out"
  tar -C "$tmp/site" -cf - . | xz -T0 -9 > "$out/mlflow.tar.xz"
  echo "mlflow.tar.xz ($pyver): ${spec[*]}"
}

stub_dashboard() {  # RAY/dashboard/client/build: a page saying the UI was left out, the favicon, an empty static/
  local build=$1/dashboard/client/build
  [ -f "$build/index.html" ] || { echo "no dashboard build in $1 (not a ray package folder?)" >&2; exit 2; }
  find "$build" -mindepth 1 -maxdepth 1 ! -name favicon.ico -exec rm -rf {} +
  mkdir "$build/static"
  echo '<!doctype html><title>Ray</title><p>The dashboard web UI was left out of this bundle' \
       '(peft-sweep benchmarks/devbundle.sh stub-dashboard); Jobs and the state API are not in the web UI.' \
       > "$build/index.html"
}

slim_ray() {  # DIR/ray.tar.xz from bundle.sh, packed again without the dashboard's web UI
  local out=$1
  slim_tmp=$(mktemp -d)
  trap 'rm -rf "$slim_tmp" "$out/ray.tar.xz.new"' EXIT  # a failure leaves neither (size_report counts every file)
  tar -C "$slim_tmp" -xJf "$out/ray.tar.xz"
  stub_dashboard "$slim_tmp/ray"
  tar -C "$slim_tmp" -cf - . | xz -T0 -9 > "$out/ray.tar.xz.new"
  mv "$out/ray.tar.xz.new" "$out/ray.tar.xz"
  rm -rf "$slim_tmp"
  trap - EXIT
}

size_report() {  # bytes by part, the total with the tracked tree; fails above the limit
  local out=$1 part total=0 n tracked
  for part in ray.tar.xz minilm-l6 data.tar.xz whl mlflow.tar.xz unpack.sh; do
    n=$(find "$out/$part" -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s+0}')
    printf '%-14s %10d bytes  %6.2f MiB\n' "$part" "$n" "$(awk -v n="$n" 'BEGIN {print n/1048576}')"
  done
  total=$(find "$out" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  tracked=$(git -C "$root" ls-files -z | (cd "$root" && xargs -0 stat -c %s 2>/dev/null) | awk '{s+=$1} END {print s+0}')
  printf '%-14s %10d bytes  %6.2f MiB\n' "bundle" "$total" "$(awk -v n="$total" 'BEGIN {print n/1048576}')"
  printf '%-14s %10d bytes  %6.2f MiB\n' "tracked tree" "$tracked" "$(awk -v n="$tracked" 'BEGIN {print n/1048576}')"
  n=$((total + tracked))
  printf '%-14s %10d bytes  %6.2f MiB (limit %d MiB of the 64 MiB a device call carries)\n' "together" "$n" \
    "$(awk -v n="$n" 'BEGIN {print n/1048576}')" "$limit_mib"
  if ((n > limit_mib * 1048576)); then
    echo "the bundle and the tracked tree come to $n bytes, over $limit_mib MiB: no room left for a sweep's" \
         "state in a device call's 64 MiB" >&2
    exit 1
  fi
}

# Ray's pydantic and what it needs, which bundle.sh downloads at their newest: pinned to the venv instead (pydantic
# pins pydantic-core exactly and refuses another at import; a pydantic-core release can precede the pydantic that
# pins it), with typing-extensions (pydantic 2.14 needs >= 4.16; the GPU image's is older or unknown).
pinned_whl=(pydantic pydantic-core annotated-types typing-inspection typing-extensions)

pin_wheels() {  # replace DIR's wheels of pinned_whl by the pinned versions' (cp312 or the target Python)
  local whl=$1 pyver=${DEVBUNDLE_PYTHON_VERSION:-3.12} n
  local -a spec
  spec=($(pins "${pinned_whl[@]}")) || exit 1
  for n in "${pinned_whl[@]}"; do rm -f "$whl/${n//-/_}"-*.whl; done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$whl" "${spec[@]}"
  echo "whl/ pinned: ${spec[*]}"
}

check_wheels() {  # DIR/whl: one wheel of each pinned package, and pydantic's exact pydantic-core pin is the one shipped
  DEVBUNDLE_PINNED="${pinned_whl[*]}" python3 - "$1" <<'PY'
import os, re, sys, zipfile
from pathlib import Path
whl = Path(sys.argv[1])
wheels = {}
for w in sorted(whl.glob("*.whl")):
    name, version = w.name.split("-")[:2]
    wheels.setdefault(re.sub(r"[-_.]+", "-", name).lower(), []).append((version, w))
problems = []
for name in os.environ["DEVBUNDLE_PINNED"].split():
    if len(wheels.get(name, [])) != 1:
        problems.append(f"{len(wheels.get(name, []))} wheels of {name} in {whl} (need exactly one)")
if not problems:
    (_, pyd), = wheels["pydantic"]
    (core, _), = wheels["pydantic-core"]
    with zipfile.ZipFile(pyd) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    pins = re.findall(r"^Requires-Dist: pydantic[-_]core\s*==\s*([^\s;,]+)", meta, flags=re.M | re.I)
    if pins != [core]:
        problems.append(f"{pyd.name} requires pydantic-core=={pins[0] if pins else '?'}, but the bundle ships "
                        f"pydantic-core {core}: `import pydantic` would raise SystemError on the GPU machine")
if problems:
    sys.exit("bad wheel set: " + "; ".join(problems))
print(f"wheels ok: pydantic {wheels['pydantic'][0][0]} with pydantic-core {wheels['pydantic-core'][0][0]}")
PY
}

case $verb in
  build)
    cd "$root"
    pin_py=${DEVBUNDLE_PIN_PYTHON:-$root/.venv/bin/python}
    export DEVBUNDLE_PIN_PYTHON=$pin_py
    # bundle.sh runs `python3` for Ray's version and the model's bf16 copy: let that be the pinning venv's
    shared=${DEVBUNDLE_SHARED:-$root/../shared}
    [ -f "$shared/device/bundle.sh" ] \
      || { echo "no $shared/device/bundle.sh (set DEVBUNDLE_SHARED to the shared folder)" >&2; exit 2; }
    # bundle.sh's xz refuses to overwrite, and stale wheels in whl/ would be installed beside new ones
    rm -rf "${dir:?}"/{ray.tar.xz,ray.tar.xz.new,minilm-l6,data.tar.xz,whl,mlflow.tar.xz,unpack.sh}
    RAY_VERSION=$(pins ray | cut -d= -f3) PATH="$(dirname "$pin_py"):$PATH" \
      bash "$shared/device/bundle.sh" "$dir" --with-model --with-data
    slim_ray "$dir"
    # the data of the tasks the GPU issues run only (all seven come to 1.3 MiB, these four to 0.6)
    tasks=(${DEVBUNDLE_TASKS:-CB COPA WSC RTE})
    tar -C "$shared" -cf - data/MANIFEST.md "${tasks[@]/#/data/}" | xz -T0 -9 > "$dir/data.tar.xz"
    pin_wheels "$dir/whl"
    check_wheels "$dir/whl"
    build_mlflow "$dir"
    size_report "$dir";;
  mlflow)
    build_mlflow "$dir";;
  check-wheels)
    check_wheels "$dir/whl";;
  stub-dashboard)
    stub_dashboard "$dir";;
  unpack)
    [ -f "$dir/unpack.sh" ] && [ -f "$dir/mlflow.tar.xz" ] \
      || { echo "no bundle in $dir (build it with: bash benchmarks/devbundle.sh build $dir)" >&2; exit 2; }
    bash "$dir/unpack.sh" "$(cd "$dir" && pwd)"
    tar -C /tmp/site -xJf "$dir/mlflow.tar.xz"
    echo "unpacked MLflow and its SQLite store into /tmp/site; now: export PYTHONPATH=/tmp/site:$root";;
esac
