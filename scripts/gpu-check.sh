#!/usr/bin/env bash
# One command for a GPU machine: set up, check correctness, measure; a one-screen summary at the end.
#
#   scripts/gpu-wheels.sh          # once, HERE (with a package registry): the wheels the GPU image lacks
#   scripts/gpu-check.sh           # on the GPU machine, from the repository root (no registry needed)
#   scripts/gpu-check.sh --dry-run # print the plan and check the files it needs (what a machine
#                                  # without a CUDA device does anyway); exit 0 when all is in place
#
# It uses the python3 and the CUDA torch it finds (the project's pins do not apply there), installs
# the wheels in .whl/ and the project without dependencies, then runs these stages, each in its own
# time box, all of them within GPU_CHECK_BUDGET_S (default 480 s = 8 minutes):
#
#   setup             wheels from .whl/ and the project (pip --no-index --no-deps)
#   env               GPU, torch / CUDA, optional runtimes; the GPU paths import without pyzmq
#   parity            bf16 on the GPU vs fp32 on the CPU, both generations, tiny and small
#   cuda-graph        CUDA-graph replay equals eager: the denoise loop, and the whole call in two graphs
#                     (prefix = vision + prefill, fused denoise) with no host sync in a replayed call
#   bench             bench_inference.py --mode gpu at the Wall-OSS-0.5 shape (random weights, 3 views
#                     at 448x336, 10 steps): torch eager, torch + denoise graph, torch with prefix and
#                     denoise graphs (cuda_graph), and onnxruntime-CUDA / TensorRT when present
#   onnxruntime-cuda  the exported graphs on onnxruntime's CUDA provider   (skipped without onnxruntime-gpu)
#   tensorrt          engines built and verified against torch fp32        (skipped without tensorrt)
#   bench-compile     optional: the same point with torch.compile'd modules inside the CUDA graphs
#                     (cuda_graph_compile); its failure or time-out is reported, not fatal
#
# Results: benchmarks/results/gpu_check_<gpu>.json (stages), gpu_env_<gpu>.json (the machine),
# inference_gpu_<gpu>.json / .png (the benchmark); copied to $OUT as well when that folder exists.
# Exit status: 0 when no stage failed or ran out of time (skipped stages are not failures), else 1.
# GPU_CHECK_STAGES="bench" runs only the named stages; GPU_CHECK_BUDGET_S changes the 480 s budget.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
RESULTS=${GPU_CHECK_RESULTS:-benchmarks/results}
SITE=${GPU_CHECK_SITE:-/tmp/wall-runtime-site}
LOGS=${GPU_CHECK_LOGS:-/tmp/wall-runtime-gpu-check}
BENCH_REPEATS=${GPU_CHECK_BENCH_REPEATS:-20}
SELECTED=${GPU_CHECK_STAGES:-}          # run only these stages (names, space-separated), e.g. "bench"
FORCE_RUN=${GPU_CHECK_FORCE_RUN:-0}     # run even without a CUDA device (tests of this script)

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      sed -n '2,30p' "$0"
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (use --dry-run or nothing)" >&2
      exit 2
      ;;
  esac
done

NEEDED_FILES=(
  pyproject.toml
  scripts/gpu_env.py
  tests/conftest.py
  tests/test_gpu_parity.py
  tests/test_gpu_cuda_graph.py
  tests/test_gpu_onnxruntime.py
  tests/test_gpu_tensorrt.py
  benchmarks/bench_inference.py
)

# ------------------------------------------------------------------------------------------ the plan
# name | time box (s) | condition (a shell test; empty = always) | why it is skipped | command
PYTEST="$PYTHON -m pytest -q -p no:cacheprovider -m gpu"
STAGES=(
  "setup|60|||\
if ls .whl/*.whl >/dev/null 2>&1; then $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl; fi \
&& $PYTHON -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e ."
  "env|45|||$PYTHON scripts/gpu_env.py --json $RESULTS/gpu_env_\$GPU_SLUG.json"
  "parity|120|||$PYTEST tests/test_gpu_parity.py"
  "cuda-graph|120|||$PYTEST tests/test_gpu_cuda_graph.py"
  "bench|300|||$PYTHON benchmarks/bench_inference.py --mode gpu --repeats $BENCH_REPEATS --warmup 3 --points 3x10 \
--backends torch torch_cuda_graph cuda_graph onnxruntime tensorrt --strict --out $RESULTS --tag \$GPU_SLUG --workdir /tmp/wall-runtime-bench"
  "onnxruntime-cuda|90|$PYTHON -c 'import onnxruntime,sys; sys.exit(\"CUDAExecutionProvider\" not in onnxruntime.get_available_providers())'|\
onnxruntime has no CUDA execution provider (onnxruntime-gpu is not installed)|$PYTEST tests/test_gpu_onnxruntime.py"
  "tensorrt|180|$PYTHON -c 'import tensorrt'|TensorRT's Python package is not installed|$PYTEST tests/test_gpu_tensorrt.py"
  "bench-compile|150|||$PYTHON benchmarks/bench_inference.py --mode gpu --repeats 10 --warmup 2 --points 3x10 \
--backends cuda_graph_compile --skip-strategies --strict --out $RESULTS --tag \${GPU_SLUG}_compile --workdir /tmp/wall-runtime-bench"
)
# optional: a failure or a time-out is reported but does not fail the check; run only with half its box left
OPTIONAL=" bench-compile "

field() { # field N "a|b|c" -> the Nth field (the command, field 5, may hold '|' itself)
  local n=$1 line=$2
  if [ "$n" -ge 5 ]; then
    cut -d'|' -f5- <<<"$line"
  else
    cut -d'|' -f"$n" <<<"$line"
  fi
}

missing=0
for f in "${NEEDED_FILES[@]}"; do
  if [ ! -f "$f" ]; then
    echo "missing: $f" >&2
    missing=1
  fi
done

has_cuda=0
if [ "$DRY_RUN" -eq 0 ] && [ "$FORCE_RUN" = 1 ]; then
  has_cuda=1
elif [ "$DRY_RUN" -eq 0 ] && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  has_cuda=1
fi

if [ "$has_cuda" -eq 0 ]; then
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "gpu-check: dry run (asked for)"
  else
    echo "gpu-check: no CUDA device visible to $PYTHON's torch: dry run, nothing is executed"
  fi
  echo "plan, ${BUDGET} s in all (GPU_CHECK_BUDGET_S), each stage in its own time box:"
  i=0
  for stage in "${STAGES[@]}"; do
    i=$((i + 1))
    name=$(field 1 "$stage")
    box=$(field 2 "$stage")
    cond=$(field 3 "$stage")
    why=$(field 4 "$stage")
    cmd=$(field 5 "$stage")
    printf '%d. %-17s time box %4s s\n' "$i" "$name" "$box"
    [ -n "$cond" ] && printf '     runs only if: %s\n     else skipped: %s\n' "$cond" "$why"
    printf '     $ %s\n' "$cmd"
  done
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "wheels to install: $(cd .whl && ls -- *.whl | tr '\n' ' ')"
  else
    echo "note: .whl/ holds no wheels; run scripts/gpu-wheels.sh here before the GPU call (and carry .whl)"
  fi
  if [ "$missing" -ne 0 ]; then
    echo "gpu-check: files the plan needs are missing (above)" >&2
    exit 1
  fi
  echo "all files the plan needs are present"
  exit 0
fi

if [ "$missing" -ne 0 ]; then
  echo "gpu-check: files the plan needs are missing (above)" >&2
  exit 1
fi

# ------------------------------------------------------------------------------------------ the run
mkdir -p "$RESULTS" "$LOGS"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
GPU_NAME=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null) || GPU_NAME="no GPU"
GPU_SLUG=$(tr '[:upper:]' '[:lower:]' <<<"$GPU_NAME" | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
export GPU_SLUG
STATUS_FILE="$LOGS/stages.tsv"
: >"$STATUS_FILE"
echo "gpu-check on $GPU_NAME ($(hostname)), budget ${BUDGET} s, logs in $LOGS"

start_all=$SECONDS
for stage in "${STAGES[@]}"; do
  name=$(field 1 "$stage")
  box=$(field 2 "$stage")
  cond=$(field 3 "$stage")
  why=$(field 4 "$stage")
  cmd=$(field 5 "$stage")
  cmd=${cmd//\$GPU_SLUG/$GPU_SLUG}
  log="$LOGS/$name.log"
  if [ -n "$SELECTED" ] && [[ " $SELECTED " != *" $name "* ]]; then
    continue
  fi
  if [ -n "$cond" ] && ! bash -c "$cond" >/dev/null 2>&1; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$why" >>"$STATUS_FILE"
    echo "[$name] skipped: $why"
    continue
  fi
  left=$((BUDGET - (SECONDS - start_all)))
  optional=0
  [[ "$OPTIONAL" == *" $name "* ]] && optional=1
  if [ "$optional" -eq 1 ] && [ "$left" -lt $((box / 2)) ]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "optional; only ${left} s of the budget left" >>"$STATUS_FILE"
    echo "[$name] skipped: optional, only ${left} s left"
    continue
  fi
  [ "$box" -gt "$left" ] && box=$left
  if [ "$box" -lt 10 ]; then
    printf '%s\ttimeout\t0\t%s\n' "$name" "no time left in the ${BUDGET} s budget" >>"$STATUS_FILE"
    echo "[$name] not run: the budget is spent"
    continue
  fi
  echo "[$name] (time box ${box} s) \$ $cmd"
  t0=$SECONDS
  timeout --kill-after=15 "$box" bash -c "$cmd" >"$log" 2>&1
  rc=$?
  took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    status=passed
    note=$(grep -E '[0-9]+ (passed|skipped|failed|deselected)' "$log" | tail -1)
    if [[ "$cmd" == *"-m pytest"* ]] && [[ "$note" != *" passed"* ]]; then
      status=failed # on a GPU these tests must run: all of them skipped is a failure, not a pass
      note="no test ran: $note"
    fi
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout
    note="stopped after its ${box} s time box"
  else
    status=failed
    note=$(grep -vE '^\s*$' "$log" | tail -1 | cut -c1-160)
  fi
  [ "$optional" -eq 1 ] && [ "$status" != passed ] && status="$status-optional"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "${note//$'\t'/ }" >>"$STATUS_FILE"
  echo "[$name] $status in ${took} s"
  if [ "$status" != passed ]; then
    tail -n 15 "$log" | sed "s/^/    [$name] /"
  fi
done

# ------------------------------------------------------------------------------------------ summary
"$PYTHON" - "$STATUS_FILE" "$RESULTS/gpu_check_$GPU_SLUG.json" "$GPU_NAME" "$BUDGET" "$((SECONDS - start_all))" <<'EOF'
import json, sys, time
from pathlib import Path

status_file, out, gpu, budget, took = sys.argv[1:]
stages = []
for line in Path(status_file).read_text().splitlines():
    name, status, seconds, note = (line.split("\t") + [""] * 4)[:4]
    stages.append({"stage": name, "status": status, "seconds": int(seconds), "note": note})
bench = Path(out).parent / f"inference_gpu_{Path(out).stem.removeprefix('gpu_check_')}.json"
record = {
    "gpu": gpu,
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "budget_s": int(budget),
    "took_s": int(took),
    "passed": all(s["status"] in ("passed", "skipped") or s["status"].endswith("-optional") for s in stages),
    "stages": stages,
}
Path(out).write_text(json.dumps(record, indent=2) + "\n")
print(f"\n== gpu-check on {gpu}: {'PASSED' if record['passed'] else 'FAILED'} in {took} s (budget {budget} s) ==")
for s in stages:
    print(f"  {s['stage']:<17} {s['status']:<8} {s['seconds']:>4} s  {s['note'][:90]}")
if bench.exists():
    r = json.loads(bench.read_text())
    print(f"  bench ({r['config']}), p50 ms per Policy.infer:")
    for row in r.get("backends", []):
        if "error" in row:
            print(f"    {row['backend']:<17} error: {row['error'][:80]}")
            continue
        st = row["stages"]
        parts = ", ".join(f"{k} {st[k]['p50']:.1f}" for k in ("vision", "prefill", "prefix", "denoise") if k in st)
        print(f"    {row['backend']:<17} total {st['total']['p50']:.1f} (p99 {st['total']['p99']:.1f}): {parts}")
    for name, why in r.get("skipped_backends", {}).items():
        print(f"    {name:<17} skipped: {why}")
    s = r.get("strategies", {})
    for name in ("full_recompute", "python_loop", "fused_torch", "fused_cuda_graph"):
        if name in s:
            print(f"    denoise {name:<17} p50 {s[name]['denoise']['p50']:.1f} ms, max abs vs loop {s[name]['max_abs_vs_python_loop']:.1e}")
print(f"  results: {out}" + (f", {bench}" if bench.exists() else ""))
sys.exit(0 if record["passed"] else 1)
EOF
rc=$?

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$RESULTS"/gpu_check_"$GPU_SLUG".json "$RESULTS"/gpu_env_"$GPU_SLUG".json "$OUT"/ 2>/dev/null
  cp "$RESULTS"/inference_gpu_"$GPU_SLUG".json "$RESULTS"/inference_gpu_"$GPU_SLUG".png "$OUT"/ 2>/dev/null
  cp "$RESULTS"/inference_gpu_"$GPU_SLUG"_compile.json "$RESULTS"/inference_gpu_"$GPU_SLUG"_compile.png "$OUT"/ 2>/dev/null
  tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$LOGS" . 2>/dev/null
fi
exit $rc
