#!/usr/bin/env bash
# The one prepared GPU check: build for sm_90, run the tests with the CUDA tests on,
# compute-sanitizer memcheck on the CUDA kernel tests, time every CUDA kernel against its
# PyTorch twin, the whole scoring engine, and end-to-end extraction on a LLaVA-1.5-7B-shaped
# model (random weights, made on the meta device, materialised on the GPU in bfloat16).
#
#   bash benchmarks/gpu_check.sh [--quick] [--cpu-dry-run] [--out DIR]
#
# Needs: one NVIDIA H100/H200, python3 with torch, transformers, pybind11, scikit-build-core,
# cmake and ninja installed; no network. Writes DIR/report.json (every step: status ok / failed /
# skipped, seconds, numbers), DIR/logs/*.log, DIR/tests*.xml, and prints a short table last.
# Bounds on an H200: <= 8 min, --quick <= 3 min. Every step runs under its own timeout, taken
# from what is left of the bound (but never below the step's floor), and a failed step does not
# stop the others. Exit code: 0 when no step failed, 1 otherwise, 2 for bad arguments or (not
# in a dry run) no GPU.
#
# --quick: N = 131,072 instead of 665,000, fewer samples and repetitions, the kernel test files
# instead of the whole suite, no sanitizer (torch's CUDA start under memcheck alone may take
# a minute).
# --cpu-dry-run (wins over --quick): no GPU needed. The build is replaced by a no-op that
# checks the build tools (the scalselect already installed is used); the tests are limited to
# the CUDA kernel tests, which skip without a GPU; the sanitizer is skipped; the kernel, engine
# and extraction timing code runs on tiny CPU tensors, and the full LLaVA-1.5-7B is built on
# the meta device only. tests/test_gpu_check.py runs it.
set -euo pipefail

usage() {
  sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

QUICK=0
DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --cpu-dry-run) DRY=1 ;;
    --out)
      if [ $# -lt 2 ] || [ -z "$2" ]; then echo "gpu_check.sh: --out needs a directory" >&2; exit 2; fi
      OUT=$2
      shift ;;
    --out=*) OUT=${1#--out=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
CHECK="$ROOT/benchmarks/gpu_check"  # a package, run as a folder (see its __main__.py)

if [ "$DRY" = 1 ]; then
  MODE=dry
  BOUND=120      # not a promise: the dry run takes ~20-30 s on the 2-core development VM
elif [ "$QUICK" = 1 ]; then
  MODE=quick
  BOUND=180
else
  MODE=full
  BOUND=480
fi
if [ "$MODE" != dry ] && ! nvidia-smi -L >/dev/null 2>&1 \
    && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  # without this, the build step would replace this machine's scalselect install for nothing
  echo "gpu_check.sh: no NVIDIA GPU found (nvidia-smi, torch.cuda); on a machine without one use --cpu-dry-run" >&2
  exit 2
fi
[ -n "$OUT" ] || OUT="$ROOT/out/gpu-check-$MODE-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT/logs" "$OUT/steps"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/steps/*.json "$OUT"/tests*.xml "$OUT/report.json"

# The installed scalselect, never the source tree (which has no compiled _C): no script
# directory or current directory at the front of sys.path (Python >= 3.11).
export PYTHONSAFEPATH=1
export PYTHONUNBUFFERED=1
CORES=$(nproc 2>/dev/null || echo 2)

# Per step: floor (the least timeout it gets) and cap (the most), in seconds. A step's timeout
# is what is left of the bound minus the floors of the steps after it, clamped to [floor, cap].
declare -A FLOOR CAP
case "$MODE" in
  full)
    # floors + 10 s of --kill-after each stay under the bound: 345 + 70 = 415 s worst case
    FLOOR=([build]=120 [tests]=60 [sanitizer]=30 [kernels]=30 [leverage]=30 [extraction]=60 [report]=15)
    CAP=([build]=240 [tests]=240 [sanitizer]=120 [kernels]=120 [leverage]=120 [extraction]=180 [report]=60) ;;
  quick)
    FLOOR=([build]=90 [tests]=30 [sanitizer]=0 [kernels]=20 [leverage]=20 [extraction]=40 [report]=15)
    CAP=([build]=120 [tests]=60 [sanitizer]=0 [kernels]=45 [leverage]=45 [extraction]=90 [report]=40) ;;
  dry)
    FLOOR=([build]=20 [tests]=20 [sanitizer]=0 [kernels]=30 [leverage]=30 [extraction]=60 [report]=15)
    CAP=([build]=30 [tests]=60 [sanitizer]=0 [kernels]=60 [leverage]=60 [extraction]=120 [report]=60) ;;
esac
ORDER=(build tests sanitizer kernels leverage extraction report)
START=$(date +%s)
# Stopped from outside (a device's time limit, Ctrl-C): still write the report of what ran.
trap 'echo "gpu_check.sh: stopped; writing the report of the steps that ran" >&2
      "$PY" "$CHECK" report --out "$OUT" --mode "$MODE" || true; exit 143' TERM INT

step_timeout() {  # NAME -> seconds
  local name=$1 reserve=0 after=0 s left t
  for s in "${ORDER[@]}"; do
    if [ "$after" = 1 ]; then reserve=$((reserve + FLOOR[$s])); fi
    if [ "$s" = "$name" ]; then after=1; fi
  done
  left=$((START + BOUND - $(date +%s) - reserve))
  t=$left
  if [ "$t" -gt "${CAP[$name]}" ]; then t=${CAP[$name]}; fi
  if [ "$t" -lt "${FLOOR[$name]}" ]; then t=${FLOOR[$name]}; fi
  echo "$t"
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.3f", (b - a) / 1000 }'; }

record() {  # NAME STATUS SECONDS RC TIMEOUT DETAIL LOG COMMAND [--junit FILE]...
  local name=$1 status=$2 secs=$3 rc=$4 tmo=$5 detail=$6 log=$7 cmd=$8
  shift 8
  local args=(record --out "$OUT" --name "$name" --status "$status" --detail "$detail")
  if [ -n "$secs" ]; then args+=(--seconds "$secs"); fi
  if [ -n "$rc" ]; then args+=(--rc "$rc"); fi
  if [ -n "$tmo" ]; then args+=(--timeout "$tmo"); fi
  if [ -n "$log" ]; then args+=(--log "$log"); fi
  if [ -n "$cmd" ]; then args+=(--command "$cmd"); fi
  "$PY" "$CHECK" "${args[@]}" "$@" || echo "gpu_check.sh: could not record step $name" >&2
  printf '[%s] %s%s%s\n' "$name" "$status" "${secs:+ in $secs s}" "${detail:+: $detail}"
}

why() {  # RC TIMEOUT -> words
  case "$1" in
    0) echo "ok" ;;
    124|137) echo "timed out after $2 s" ;;
    *) echo "exit code $1" ;;
  esac
}

# run_step NAME DETAIL [--junit FILE]... -- CMD... : CMD under the step's timeout, output to
# logs/NAME.log; the --junit files (relative to the out dir) are counted into the record.
run_step() {
  local name=$1 detail=$2
  shift 2
  local extra=()
  while [ "$1" != "--" ]; do extra+=("$1"); shift; done
  shift
  local t t0 rc=0 status=ok
  t=$(step_timeout "$name")
  t0=$(now_ms)
  echo "[$name] running (timeout $t s) ..."
  timeout --kill-after=10 "$t" "$@" >"$OUT/logs/$name.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then status=failed; detail="$(why "$rc" "$t"); $detail"; fi
  record "$name" "$status" "$(seconds_since "$t0")" "$rc" "$t" "$detail" "logs/$name.log" "$*" \
    ${extra[@]+"${extra[@]}"}
}

"$PY" -c 'import json, sys, time; print(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "epoch": time.time(), "bound_s": int(sys.argv[1]), "mode": sys.argv[2], "command": sys.argv[3]}))' \
  "$BOUND" "$MODE" "gpu_check.sh $*" >"$OUT/started.json"
echo "scalselect GPU check, mode $MODE (bound $BOUND s), output in $OUT"

# --- (a) build and install for sm_90 ------------------------------------------------------------
build_tools() {  # what the build needs, into the build log
  echo "python: $("$PY" --version 2>&1)"
  "$PY" -c 'import importlib.metadata as m
for p in ("scikit-build-core", "pybind11", "cmake", "ninja", "torch", "transformers"):
    try: print(p, m.version(p))
    except m.PackageNotFoundError: print(p, "NOT INSTALLED")' || true
  echo "cmake: $(cmake --version 2>/dev/null | head -n 1 || echo 'not on PATH')"
  echo "ninja: $(ninja --version 2>/dev/null || echo 'not on PATH')"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1 || echo 'not on PATH')"
  echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'none')"
}
installed_module() {
  "$PY" -c 'import scalselect, scalselect.kernels as k; print(scalselect.__file__); print(k.build_info())'
}
BUILD_CMD=(env SCALSELECT_CUDA=ON SCALSELECT_CUDA_ARCHITECTURES=90 "$PY" -m pip install --no-build-isolation
           --no-deps -v --config-settings=build-dir=build/gpu-check-sm90 .)
if [ "$MODE" = dry ]; then
  t0=$(now_ms)
  build_tools >"$OUT/logs/build.log" 2>&1 || true
  record build skipped "$(seconds_since "$t0")" "" "" \
    "dry run: not built (no-op: the installed scalselect is used, see machine.scalselect); checked the build tools (see log); on a GPU it runs: ${BUILD_CMD[*]}" \
    logs/build.log ""
else
  t=$(step_timeout build)
  t0=$(now_ms)
  rc=0
  echo "[build] running (timeout $t s) ..."
  {
    build_tools
    echo "+ ${BUILD_CMD[*]}"
    timeout --kill-after=10 "$t" "${BUILD_CMD[@]}"
  } >"$OUT/logs/build.log" 2>&1 || rc=$?
  detail="SCALSELECT_CUDA=ON, architectures 90, pip install --no-build-isolation --no-deps ."
  status=ok
  if [ "$rc" != 0 ]; then
    status=failed
    detail="$(why "$rc" "$t"); $detail"
  else
    info=$(installed_module 2>&1) || true
    printf 'installed: %s\n' "$info" >>"$OUT/logs/build.log"
    if [[ "$info" != *"'cuda': True"* || "$info" != *"sm_90"* ]]; then
      status=failed
      detail="installed, but the imported scalselect has no CUDA kernels for sm_90 (see log); $detail"
    fi
  fi
  record build "$status" "$(seconds_since "$t0")" "$rc" "$t" "$detail" logs/build.log "${BUILD_CMD[*]}"
fi

# --- (b) the test suite, CUDA tests on (they run when a GPU and the CUDA build are present) ------
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
if [ "$MODE" = dry ]; then
  run_step tests "dry run: only the CUDA kernel tests, which skip without a GPU" --junit tests.xml -- \
    "${PYTEST[@]}" -m cuda tests/kernels/test_kernels.py tests/kernels/test_extraction_kernels.py --junitxml="$OUT/tests.xml"
elif [ "$MODE" = quick ]; then
  run_step tests "quick: only the kernel test files (every CUDA test of the suite is in them)" \
    --junit tests.xml -- \
    "${PYTEST[@]}" tests/kernels/test_kernels.py tests/kernels/test_extraction_kernels.py --junitxml="$OUT/tests.xml"
else
  # The whole suite in two concurrent pytest processes (same tests as one `pytest -q`): the
  # distributed tests, which spend their time starting processes, and everything else.
  t=$(step_timeout tests)
  t0=$(now_ms)
  echo "[tests] running (timeout $t s) ..."
  heavy=()
  ignore=()
  for f in tests/*/test_distributed*.py; do
    if [ -e "$f" ]; then heavy+=("$f"); ignore+=("--ignore=$f"); fi
  done
  threads=$(( CORES / 2 > 0 ? CORES / 2 : 1 ))
  rc_a=0
  rc_b=0
  pids=()
  if [ "${#heavy[@]}" -gt 0 ]; then
    OMP_NUM_THREADS=$threads timeout --kill-after=10 "$t" "${PYTEST[@]}" "${heavy[@]}" \
      --junitxml="$OUT/tests-distributed.xml" >"$OUT/logs/tests-distributed.log" 2>&1 &
    pids+=($!)
  fi
  OMP_NUM_THREADS=$threads timeout --kill-after=10 "$t" "${PYTEST[@]}" ${ignore[@]+"${ignore[@]}"} \
    --junitxml="$OUT/tests-rest.xml" >"$OUT/logs/tests-rest.log" 2>&1 &
  pid_b=$!
  if [ "${#pids[@]}" -gt 0 ]; then wait "${pids[0]}" || rc_a=$?; fi
  wait "$pid_b" || rc_b=$?
  rc=$(( rc_a > rc_b ? rc_a : rc_b ))
  status=ok
  detail="whole suite (pytest -q) as 2 concurrent processes: ${heavy[*]:-no distributed tests} | the rest"
  if [ "$rc" != 0 ]; then
    status=failed
    detail="distributed: $(why "$rc_a" "$t"), rest: $(why "$rc_b" "$t"); $detail"
  fi
  junit=()
  if [ "${#heavy[@]}" -gt 0 ]; then junit+=(--junit tests-distributed.xml); fi
  junit+=(--junit tests-rest.xml)
  record tests "$status" "$(seconds_since "$t0")" "$rc" "$t" "$detail" "logs/tests-rest.log logs/tests-distributed.log" \
    "${PYTEST[*]} (2 groups)" "${junit[@]}"
fi

# --- (c) compute-sanitizer memcheck on the CUDA kernel tests -------------------------------------
SANITIZER=$(command -v compute-sanitizer || true)
if [ -z "$SANITIZER" ]; then
  for c in "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer; do
    if [ -x "$c" ]; then SANITIZER=$c; break; fi
  done
fi
if [ "$MODE" = dry ]; then
  record sanitizer skipped 0 "" "" "dry run: no GPU (compute-sanitizer: ${SANITIZER:-not found})" "" ""
elif [ "$MODE" = quick ]; then
  # torch's CUDA start under memcheck alone may take a minute: more than 3 minutes leave
  record sanitizer skipped 0 "" "" "--quick: memcheck runs in the full mode only (compute-sanitizer: ${SANITIZER:-not found})" "" ""
elif [ -z "$SANITIZER" ]; then
  record sanitizer skipped 0 "" "" "skipped: not found (compute-sanitizer is not on the PATH nor in CUDA_HOME/bin, /usr/local/cuda/bin)" "" ""
else
  # No caching allocator: every tensor is its own allocation, so an access past its end is seen.
  run_step sanitizer "memcheck (memory access errors; API errors not reported) on pytest -m cuda tests/kernels/test_kernels.py tests/kernels/test_extraction_kernels.py" \
    -- env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --target-processes all \
    --report-api-errors no --error-exitcode 3 --print-limit 50 \
    "${PYTEST[@]}" -m cuda tests/kernels/test_kernels.py tests/kernels/test_extraction_kernels.py
fi

# --- (d) kernels and the scoring engine, (e) extraction -------------------------------------------
run_step kernels "the four kernels vs their PyTorch twins ($MODE sizes)" -- "$PY" "$CHECK" step kernels --out "$OUT" --mode "$MODE"
run_step leverage "leverage_scores on an N x 4096 bfloat16 matrix made on the device ($MODE sizes)" -- \
  "$PY" "$CHECK" step leverage --out "$OUT" --mode "$MODE"
run_step extraction "LLaVA-1.5-7B shape on the meta device; fast path vs the reference way ($MODE sizes)" -- \
  "$PY" "$CHECK" step extraction --out "$OUT" --mode "$MODE"

# --- the report and the table, last ----------------------------------------------------------------
rc=0
timeout --kill-after=10 "$(step_timeout report)" "$PY" "$CHECK" report --out "$OUT" --mode "$MODE" || rc=$?
exit "$rc"
