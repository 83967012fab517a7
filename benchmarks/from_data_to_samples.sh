#!/usr/bin/env bash
# The README's "From data to samples" commands, run in order and timed: train the shipped digits
# config, sample it (guided and unguided, against held-out digits), its bits/dim, a tuned
# schedule and sampling with it, and a small benchmark of the trained model.
#
#   bash benchmarks/from_data_to_samples.sh [OUT]      # default OUT=out/digits_quick
#
# Writes benchmarks/results/from_data_to_samples.json: per command its wall seconds, exit status
# and the last lines it printed (plus the thread count and load average at the start), and
# the sha256 of the trained checkpoint (a second run on the same machine and thread count gives
# the same file).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/digits_quick}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
RESULTS=benchmarks/results/from_data_to_samples.json
LOG=$(mktemp -d)
C=$OUT/checkpoint.pt
commands=(
  "$PY -m scoresde train --config benchmarks/configs/digits_quick.toml --out $OUT"
  "$PY -m scoresde sample --ckpt $C --solver dpm++2m --steps 20 --samples 100 --label 3 --guidance-scale 2 --out $OUT/samples"
  "$PY -m scoresde sample --ckpt $C --solver dpm++2m --steps 20 --samples 500 --data digits --out $OUT/samples"
  "$PY -m scoresde nll --ckpt $C --data digits --samples 100 --trace hutchinson"
  "$PY -m scoresde schedule optimize --ckpt $C --solver dpm++2m --nfe 10 --calibration 64 --out $OUT/dpm2m_10.json"
  "$PY -m scoresde sample --ckpt $C --schedule-file $OUT/dpm2m_10.json --samples 500 --data digits --out $OUT/samples"
  "$PY -m scoresde bench --ckpt $C --problems digits --solvers dpm++2m unipc ipndm --nfe 5 10 20 --samples 250 --metrics rmse sliced_w2 --tolerances 1 --no-progress --out $OUT/bench"
)
rm -rf "$OUT"
echo "[]" > "$LOG/runs.json"
load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
for cmd in "${commands[@]}"; do
  echo "### $cmd"
  start=$(date +%s.%N)
  $cmd > "$LOG/out.txt" 2>&1
  rc=$?
  end=$(date +%s.%N)
  tail -6 "$LOG/out.txt"
  "$PY" - "$LOG/runs.json" "$cmd" "$rc" "$start" "$end" "$LOG/out.txt" <<'EOF'
import json, sys
path, cmd, rc, start, end, out = sys.argv[1:]
runs = json.load(open(path))
tail = open(out, errors="replace").read().strip().splitlines()[-6:]
runs.append(dict(command=cmd, rc=int(rc), seconds=round(float(end) - float(start), 1), output_tail=tail))
json.dump(runs, open(path, "w"), indent=1)
EOF
done
"$PY" - "$LOG/runs.json" "$C" "$RESULTS" "$load" <<'EOF'
import hashlib, json, os, pathlib, sys
runs, ckpt, results, load = sys.argv[1:]
digest = hashlib.sha256(open(ckpt, "rb").read()).hexdigest() if os.path.exists(ckpt) else None
out = dict(omp_num_threads=os.environ.get("OMP_NUM_THREADS"), load_average_at_start=load,
           checkpoint_sha256=digest, runs=json.load(open(runs)))
pathlib.Path(results).write_text(json.dumps(out, indent=1))
print(f"wrote {results}")
EOF
