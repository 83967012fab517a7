#!/usr/bin/env bash
# GPU readiness check (issue 17 item 6): one script, one GPU, under 8 minutes.
#
#     bash benchmarks/device_check.sh [PYTHON]        # default: $PYTHON, else python3
#
# Stages, each under its own `timeout`, each recorded (exit status, wall time, output tail)
# in benchmarks/results/device/device_check.json, which is rewritten after every stage so a
# run cut short keeps what it finished; a failed stage never stops the next one:
#   setup       torch, CUDA and the imports the stages need (a venv only if they fail)
#   tests       pytest -m cuda tests/ (tests/test_cuda.py): solvers, likelihood, generators,
#               bf16 training, the on-device non-finite check, load_model(device="cuda")
#   bench       scoresde bench --quick --device cuda  -> accuracy_vs_nfe.{json,md}
#   overhead_float32, overhead_bfloat16
#               benchmarks/overhead.py on CUDA (bfloat16: the networks under autocast, as
#               Trainer(bf16=True); float32 weights and samples)
#   train       200 steps of the digits U-Net: scoresde train ... --device cuda --bf16
#   train_sample  load_model(<its checkpoint>, device="cuda") and 10 sampling steps
#   torchrun    scoresde train under torchrun, 1 process, NCCL (NCCL_DEBUG=INFO shows it)
#
# Assumptions (the GPU machine has no internet):
#   - PYTHON already has torch with CUDA and the dependencies of pyproject.toml (plus pytest
#     and matplotlib); the repository is put first on PYTHONPATH, so scoresde needs no install
#     and the CLI runs as `python -m scoresde`.
#   - Only if that import check fails: a venv with --system-site-packages (so the installed
#     torch is kept) in $TMPDIR, and `pip install --no-build-isolation -e ".[dev,plot]"`,
#     which succeeds offline only if what is missing is already in a local pip cache or wheel
#     directory (PIP_FIND_LINKS); its failure is recorded and the stages run anyway.
#   - `scoresde train` (scoresde/cli/train.py) takes --data --net --steps --batch-size --device
#     --bf16 --seed --out --ckpt-every; without it the train stages fail, recorded.
#
# Environment: DEVICE_CHECK_BUDGET_S (default 470: total seconds; a stage's timeout is cut to
# what is left, and a stage with under 10 s left is skipped), DEVICE_CHECK_STAGES (space-
# separated stage names to run, default all), OUT (if set, the results are copied to
# $OUT/benchmarks/results/device after every stage).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${1:-${PYTHON:-python3}}"
RESULTS="benchmarks/results/device"
JSON="$RESULTS/device_check.json"
LOGS="$RESULTS/logs"
BUDGET_S="${DEVICE_CHECK_BUDGET_S:-470}"
STAGES="${DEVICE_CHECK_STAGES:-setup tests bench overhead_float32 overhead_bfloat16 train train_sample torchrun}"
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")"  # checkpoints and bench caches
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# the JSON bookkeeping needs only the standard library; it must work even if $PY is broken
JSON_PY="$(command -v python3 || echo "$PY")"

# this script's own outputs, removed so a run never mixes with an earlier one
rm -rf "$JSON" "$LOGS" "$RESULTS/pytest_cuda.xml" "$RESULTS"/accuracy_vs_nfe.* "$RESULTS/overhead_float32" \
    "$RESULTS/overhead_bfloat16" "$RESULTS/train" "$RESULTS/torchrun"
mkdir -p "$LOGS"

"$JSON_PY" - "$JSON" "$PY" "$BUDGET_S" "$STAGES" <<'EOF'
import datetime, json, platform, sys
path, py, budget, stages = sys.argv[1:]
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
doc = dict(script="benchmarks/device_check.sh", started=now, updated=now, finished=False, host=platform.node(),
           python=py, budget_s=int(budget), stages_planned=stages.split(), env=None, stages=[])
open(path, "w").write(json.dumps(doc, indent=1) + "\n")
EOF

copy_out() {
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT/benchmarks/results/device" && cp -a "$RESULTS/." "$OUT/benchmarks/results/device/"
    fi
}

# record NAME RC WALL LIMIT LOG COMMAND: append one stage to the JSON (and copy it out)
record() {
    "$JSON_PY" - "$JSON" "$@" <<'EOF'
import datetime, json, re, sys
path, name, rc, wall, limit, log, command = sys.argv[1:]
doc = json.load(open(path))
try:
    text = open(log, errors="replace").read()
except OSError:
    text = ""
rc = int(rc)
status = {0: "passed", 124: "timeout", 137: "timeout", -1: "skipped"}.get(rc, "failed")
stage = dict(name=name, status=status, rc=None if rc < 0 else rc, wall_s=round(float(wall), 2),
             timeout_s=int(limit), command=command, log=log, tail=text[-4000:])
if name == "setup":  # its last line is the environment, as JSON
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                doc["env"] = json.loads(line)
            except ValueError:
                pass
            break
if name == "tests":  # pytest's last line: "3 failed, 30 passed, 2 skipped, 946 deselected in 41.2s"
    lines = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error|deselected)", l)]
    counts = {}
    if lines:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1]):
            counts["errors" if what.startswith("error") else what] = int(n)
    stage["pytest"] = counts or None
    # on a GPU every cuda test must run: all skipped means torch saw no CUDA device
    if status == "passed" and (counts.get("skipped", 0) or not counts.get("passed")):
        stage["status"] = "failed"
        stage["note"] = "tests skipped or none passed: CUDA was not available to pytest"
if name == "torchrun":
    stage["nccl_initialized"] = "NCCL INFO" in text
doc["stages"].append(stage)
doc["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
open(path, "w").write(json.dumps(doc, indent=1) + "\n")
print(f"[device_check] {name}: {stage['status']} (rc {stage['rc']}, {stage['wall_s']} s of {limit} s)")
EOF
    copy_out
}

# keep_run NAME: the small files of the run folder $WORK/NAME (config.toml, loss.csv, plots;
# not the checkpoint) in $RESULTS/NAME
keep_run() {
    wanted "$1" || return 0
    mkdir -p "$RESULTS/$1"
    find "$WORK/$1" -maxdepth 1 -type f ! -name '*.pt' -size -1000k -exec cp {} "$RESULTS/$1/" \; 2>/dev/null
    copy_out
}

wanted() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# stage NAME TIMEOUT_S COMMAND...: run it under timeout, log it, record it
stage() {
    local name="$1" limit="$2"
    shift 2
    wanted "$name" || return 0
    local left=$((BUDGET_S - ($(date +%s) - START)))
    local log="$LOGS/$name.log"
    if [ "$left" -lt 10 ]; then
        echo "skipped: the budget of ${BUDGET_S} s is spent" >"$log"
        record "$name" -1 0 0 "$log" "$*"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    echo "[device_check] $name (timeout ${limit} s): $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    record "$name" "$rc" "$(awk "BEGIN { print $t1 - $t0 }")" "$limit" "$log" "$*"
    return "$rc"
}

cat >"$WORK/env_check.py" <<'EOF'
import json, platform, sys
import torch
info = dict(python=sys.version.split()[0], executable=sys.executable, torch=torch.__version__,
            cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
            devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            machine=platform.machine())
missing = []
for name in ("scoresde", "torchsde", "torchdiffeq", "scipy", "safetensors", "tqdm", "pytest", "matplotlib"):
    try:
        __import__(name)
    except Exception as err:
        missing.append(f"{name} ({type(err).__name__}: {err})")
info["missing"] = missing
print(json.dumps(info))
sys.exit(1 if missing or not info["cuda_available"] else 0)
EOF

# ---- setup: a venv only if the imports fail -----------------------------------------------------
if wanted setup; then
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    if ! stage setup 25 "$PY" "$WORK/env_check.py" \
        && grep -q '"missing": \[".\|ModuleNotFoundError' "$LOGS/setup.log"; then
        VENV="${TMPDIR:-/tmp}/scoresde-device-venv"
        STAGES="$STAGES setup_install setup_recheck"
        stage setup_install 90 bash -c "{ [ -x '$VENV/bin/python' ] || '$PY' -m venv --system-site-packages '$VENV'; } \
            && '$VENV/bin/python' -m pip install --no-build-isolation --no-input -e '.[dev,plot]'"
        if [ -x "$VENV/bin/python" ]; then
            PY="$VENV/bin/python"
            stage setup_recheck 30 "$PY" "$WORK/env_check.py"
        fi
    fi
fi

# ---- 1. the cuda tests ----------------------------------------------------------------------------
stage tests 130 "$PY" -m pytest -q -m cuda tests/ -p no:cacheprovider --durations=10 \
    --junitxml="$RESULTS/pytest_cuda.xml"

# ---- 2. scoresde bench --quick on CUDA --------------------------------------------------------------
stage bench 110 "$PY" -m scoresde bench --quick --device cuda --out "$WORK/bench" --no-progress
keep_bench() {
    for f in "$WORK"/bench/accuracy_vs_nfe.json "$WORK"/bench/accuracy_vs_nfe.md; do
        [ -f "$f" ] && cp "$f" "$RESULTS/"
    done
    copy_out
}
wanted bench && keep_bench

# ---- 3. sampling overhead on CUDA, float32 and bf16 autocast -------------------------------------------
stage overhead_float32 35 "$PY" benchmarks/overhead.py --device cuda --dtype float32 --steps 20 --repeats 3 \
    --warmup 2 --out "$RESULTS/overhead_float32"
stage overhead_bfloat16 30 "$PY" benchmarks/overhead.py --device cuda --dtype bfloat16 --nets mlp unet --steps 20 \
    --repeats 3 --warmup 2 --out "$RESULTS/overhead_bfloat16"

# ---- 4. 200 training steps of the digits U-Net on CUDA (bf16) --------------------------------------------
stage train 50 "$PY" -m scoresde train --data digits --net unet --steps 200 --batch-size 128 --device cuda --bf16 \
    --seed 0 --out "$WORK/train" --ckpt-every 100 --no-progress
keep_run train
cat >"$WORK/sample_check.py" <<'EOF'
import json, sys, time
from pathlib import Path
import torch
import scoresde as sd
ckpts = sorted(Path(sys.argv[1]).rglob("*.pt"), key=lambda p: p.stat().st_mtime)
if not ckpts:
    sys.exit(f"no checkpoint (*.pt) under {sys.argv[1]}")
model = sd.load_model(ckpts[-1], device="cuda")
start = time.perf_counter()
out = sd.sample(model, shape=(64, 1, 8, 8), steps=10, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
print(json.dumps(dict(checkpoint=ckpts[-1].name, device=str(out.x.device), finite=bool(torch.isfinite(out.x).all()),
                      nfe=out.nfe, seconds=time.perf_counter() - start, std=float(out.x.std()))))
sys.exit(0 if out.x.is_cuda and bool(torch.isfinite(out.x).all()) else 1)
EOF
stage train_sample 20 "$PY" "$WORK/sample_check.py" "$WORK/train"

# ---- 5. scoresde train under torchrun: one process, NCCL -------------------------------------------------
stage torchrun 50 env NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node=1 -m scoresde train --data digits --net unet --steps 100 --batch-size 128 --device cuda \
    --seed 0 --out "$WORK/torchrun" --ckpt-every 50 --no-progress
keep_run torchrun

# ---- done ---------------------------------------------------------------------------------------------
"$JSON_PY" - "$JSON" "$(($(date +%s) - START))" <<'EOF'
import json, sys
path, elapsed = sys.argv[1:]
doc = json.load(open(path))
doc.update(finished=True, elapsed_s=int(elapsed),
           summary={s["name"]: s["status"] for s in doc["stages"]})
open(path, "w").write(json.dumps(doc, indent=1) + "\n")
print(json.dumps(doc["summary"]))
EOF
copy_out
rm -rf "$WORK"
