#!/usr/bin/env bash
# The GPU checks of issue 9 (part 5) in one script: the tests that matter on an accelerator, then the side-by-side
# JAX / PyTorch benchmark. Everything it writes goes under $OUT (at most 8 files, no subfolders: what a lent machine
# sends back).
#
#   OUT=/some/dir bash benchmarks/gpu_suite.sh            # on a GPU: the full benchmark shapes
#   OUT=/tmp/suite bash benchmarks/gpu_suite.sh --quick   # tiny shapes (how it is checked on a CPU-only machine)
#
# Installs nothing. The lent GPU image has jax, flax, optax, orbax, torch, pytest and flatbuffers, but no grain or
# tensorboardX (both optional here: the data pipeline falls back to numpy, metrics to JSON only). Missing modules are
# listed in env.txt; wheels carried in ./.whl are installed (--no-index, into /tmp/site) only when a needed module is
# missing. Without a GPU (no nvidia-smi) it runs the same steps on the CPU. Each step has its own time limit, so one
# hanging step cannot eat the others' time (DISPATCH_LIMIT 90, PARITY_LIMIT 120, BENCH_LIMIT 270 seconds: 8
# minutes in all); the exit status is the number of failed steps. BENCH_ARGS adds flags to compare_torch.py.
#
# Files: env.txt (machine, versions, missing modules), tests_dispatch.log (einsum == gather dispatch, one-hot dispatch
# at highest precision), tests_parity.log (PyTorch parity and serving export at highest matmul precision, TF32 off),
# bench.log, compare_torch.json, compare_torch.md, summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d /tmp/gpu_suite.XXXXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
QUICK=""
[[ "${1:-}" == "--quick" ]] && QUICK="--quick"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  DEVICE=gpu; export JAX_PLATFORMS=cuda
else
  DEVICE=cpu; export JAX_PLATFORMS=cpu
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MOS_JAX_COMPILATION_CACHE="${MOS_JAX_COMPILATION_CACHE:-/tmp/mos_jax_jax_cache}"  # not under $OUT: 8 files
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0
T0=$SECONDS

step() {  # step NAME SECONDS LOGFILE COMMAND... : runs with a time limit, records status and time in summary.txt
  local name=$1 limit=$2 log=$3; shift 3
  local t=$SECONDS rc
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  [[ $rc -ne 0 ]] && FAILED=$((FAILED + 1))
  printf '%-10s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t))" "$(tail -n 1 "$log")" | tee -a "$SUMMARY"
}

# ---- environment: what is there, what is missing (nothing is downloaded)
{
  date -u; uname -a
  if [[ $DEVICE == gpu ]]; then nvidia-smi; fi
  echo "device=$DEVICE JAX_PLATFORMS=$JAX_PLATFORMS python=$($PY -c 'import sys; print(sys.version.split()[0])')"
  $PY - <<'EOF'
import importlib
need = ["numpy", "jax", "flax", "optax", "orbax.checkpoint", "pytest", "flatbuffers", "torch", "pandas", "pyarrow",
        "tqdm"]
optional = ["grain", "tensorboardX", "matplotlib"]
missing = []
for name in need + optional:
  try:
    m = importlib.import_module(name)
    print(f"{name} {getattr(m, '__version__', '?')}")
  except Exception as e:  # noqa: BLE001
    print(f"{name} MISSING ({type(e).__name__})")
    missing += [name] if name in need else []
print("missing required:", " ".join(missing) or "none")
import jax
print("jax devices:", jax.devices())
EOF
} >"$OUT/env.txt" 2>&1
if grep -q "^missing required: [^n]" "$OUT/env.txt" && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$OUT/env.txt" 2>&1 && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
echo "device=$DEVICE quick=${QUICK:-no} out=$OUT" | tee -a "$SUMMARY"

# ---- tests that matter on an accelerator (pytest -p no:cacheprovider: nothing written into the checkout)
PYTEST=($PY -m pytest -q -p no:cacheprovider -o addopts="")
step dispatch "${DISPATCH_LIMIT:-90}" "$OUT/tests_dispatch.log" "${PYTEST[@]}" tests/test_models_mos.py \
  tests/test_models_routing.py tests/test_moe.py tests/test_models_eval.py \
  -k "einsum_and_gather or dispatch or matches_loop or highest_precision"
PARITY=(tests/test_export.py)
[[ -f tests/test_torch_parity.py ]] && PARITY=(tests/test_torch_parity.py "${PARITY[@]}")
# Parity at GPU tolerance: float32 matmuls at full precision on both sides (no TF32 in XLA, cuBLAS or PyTorch).
step parity "${PARITY_LIMIT:-120}" "$OUT/tests_parity.log" \
  env JAX_DEFAULT_MATMUL_PRECISION=highest NVIDIA_TF32_OVERRIDE=0 "${PYTEST[@]}" "${PARITY[@]}"

# ---- the side-by-side benchmark (writes compare_torch.json / .md into $OUT)
# shellcheck disable=SC2086  # BENCH_ARGS: extra flags, word-split on purpose (e.g. "--cases sasrec_L200")
step bench "${BENCH_LIMIT:-270}" "$OUT/bench.log" $PY benchmarks/compare_torch.py --device="$DEVICE" $QUICK \
  --out="$OUT" --timeout=150 ${BENCH_ARGS:-}

echo "total ${SECONDS}s (started at ${T0}s), failed steps: $FAILED" | tee -a "$SUMMARY"
exit "$FAILED"
