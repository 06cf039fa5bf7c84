#!/usr/bin/env bash
# One command for a GPU machine without network: installs what was carried, runs the GPU tests, the throughput
# benchmark and --device cuda conversions against the torch path; every result lands in benchmarks/results/gpu_check/
# (and in $OUT when set). Budget: 8 minutes on an H100/H200 from a bare machine (each stage has its own timeout).
#
#   scripts/gpu_check.sh --make-bundle   # here, with a package index: gpu_bundle/ = wheels + libggml-base.so (~5 MiB)
#   scripts/gpu_check.sh                 # on the GPU machine (Python 3.12, torch, CuPy, transformers; no gguf,
#                                        # no llama-cpp-python, no network): carry gpu_bundle/ along with the tree
#   scripts/gpu_check.sh --dry-run       # anywhere: checks the bundle and every CPU-side part (the conversion stage
#                                        # with the kernels emulated on the CPU); GPU stages are SKIPPED, and it says so
#
# gpu_bundle/ (or $HQQ2GGUF_GPU_BUNDLE) is git-ignored: the pure-Python wheels gguf needs and the tests import
# (pytest, click, requests...), sentencepiece/protobuf for the tiny models' tokenizers (cp312), and llama.cpp's
# libggml-base.so (llama.cpp's baseline blocks; this build has no AVX/AMX code, so it runs on any x86-64 CPU).
# Wheels go to a private --target directory on PYTHONPATH, installed only where the machine lacks the module.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BUNDLE=${HQQ2GGUF_GPU_BUNDLE:-$REPO/gpu_bundle}
RESULTS=${HQQ2GGUF_GPU_CHECK_RESULTS:-$REPO/benchmarks/results/gpu_check}
PY=${PYTHON:-python3}
# module:wheel-name pairs the check needs; a wheel is installed only when its module does not import
NEEDED="gguf:gguf click:click requests:requests urllib3:urllib3 idna:idna certifi:certifi \
charset_normalizer:charset_normalizer sentencepiece:sentencepiece google.protobuf:protobuf pytest:pytest \
pluggy:pluggy iniconfig:iniconfig packaging:packaging"

make_bundle() {
  mkdir -p "$BUNDLE"
  # shellcheck disable=SC2046
  "$PY" -m pip download --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any -d "$BUNDLE" \
    gguf==0.19.0 $(for p in $NEEDED; do [ "${p#*:}" = gguf ] || echo "${p#*:}"; done) || return 1
  lib=$("$PY" -c "from hqq2gguf import ggml_ref; print(ggml_ref.library_path())") || return 1
  cp "$lib" "$BUNDLE/libggml-base.so"
  du -sh "$BUNDLE"
}

DRY=0
case "${1:-}" in
  --make-bundle) make_bundle; exit $? ;;
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--make-bundle|--dry-run]" >&2; exit 2 ;;
esac

mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.md
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
START=$(date +%s)
SECONDS=0
FAILED=0
echo "# scripts/gpu_check.sh $(date -u +%FT%TZ)$([ $DRY = 1 ] && echo ' (dry run: GPU stages skipped)')" > "$SUMMARY"
echo "" >> "$SUMMARY"; echo "| stage | result | seconds |" >> "$SUMMARY"; echo "|---|---|---|" >> "$SUMMARY"

record() { echo "| $1 | $2 | $3 |" >> "$SUMMARY"; echo "== $1: $2 ($3 s)"; }

BUDGET=${HQQ2GGUF_GPU_CHECK_BUDGET:-460}  # seconds for all stages: 8 minutes with start-up and copies to spare

# stage NAME SECONDS CMD...: run with a timeout (never past the budget), record the outcome
stage() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if [ $left -lt 20 ]; then record "$name" "SKIPPED: the ${BUDGET}s budget is spent" 0; FAILED=1; return; fi
  [ $limit -gt $left ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  if declare -F "$1" >/dev/null; then "$@"; rc=$?  # a function of this script (quick, local work)
  else timeout --kill-after=10 "$limit" "$@"; rc=$?; fi
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then record "$name" ok "$took"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" "TIMED OUT after ${limit}s" "$took"; FAILED=1
  else record "$name" "FAILED (exit $rc)" "$took"; FAILED=1; fi
}

skip() { record "$1" "SKIPPED: $2" 0; }

# ---- 1. install what was carried
SITE=${TMPDIR:-/tmp}/hqq2gguf-gpu-site
install_bundle() {
  [ -d "$BUNDLE" ] || { echo "no bundle at $BUNDLE: run scripts/gpu_check.sh --make-bundle where there is an index"; return 1; }
  [ -f "$BUNDLE/libggml-base.so" ] || { echo "$BUNDLE/libggml-base.so is missing"; return 1; }
  rm -rf "$SITE"; mkdir -p "$SITE"
  local wheels=()
  for p in $NEEDED; do
    "$PY" -c "import ${p%%:*}" 2>/dev/null && continue
    local w; w=$(ls "$BUNDLE"/"${p#*:}"-*.whl 2>/dev/null | head -1)
    [ -n "$w" ] || { echo "module ${p%%:*} missing and no ${p#*:} wheel in $BUNDLE"; return 1; }
    wheels+=("$w")
  done
  if [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}" || return 1
  fi
  echo "installed into $SITE: ${wheels[*]:-nothing (all present)}"
  PYTHONPATH=$SITE "$PY" -c "import gguf, click, pytest, sentencepiece; print('imports ok: gguf', gguf.__file__)"
}
stage "install carried wheels" 120 install_bundle
export PYTHONPATH=$REPO:$REPO/tests:$REPO/benchmarks:$SITE${PYTHONPATH:+:$PYTHONPATH}
export HQQ2GGUF_LIBGGML_BASE=$BUNDLE/libggml-base.so
"$PY" - > "$RESULTS/environment.txt" 2>&1 <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
try:
    import cupy; print("cupy", cupy.__version__)
except Exception as exc:
    print("cupy unavailable:", exc)
EOF
command -v nvidia-smi >/dev/null && nvidia-smi >> "$RESULTS/environment.txt" 2>&1
cat "$RESULTS/environment.txt"

# ---- 2. is there a GPU the kernels can use? (compiles both kernel families: NVRTC's first compile happens here)
if [ $DRY = 1 ]; then REASON="dry run"
else
  REASON=$(timeout 240 "$PY" -c "from hqq2gguf.cuda import cuda_unusable_reason as r; print(r() or '')" 2>&1 | tail -1)
  [ $? -eq 0 ] || REASON="probing the GPU and compiling the kernels failed or took over 240 s: $REASON"
  echo "== GPU probe and NVRTC compile ($SECONDS s so far): ${REASON:-usable}"
fi

# ---- 3. GPU tests, throughput, end to end, conversions
if [ -z "$REASON" ]; then
  stage "GPU tests (pytest -m gpu)" 150 env HQQ2GGUF_REQUIRE_CUDA=1 "$PY" -m pytest tests/test_cuda.py \
    tests/test_cuda_host.py -m gpu -q -p no:cacheprovider --junitxml="$RESULTS/gpu_tests.xml"
  stage "throughput per type (2048 x 4096)" 90 "$PY" benchmarks/cuda_throughput.py --rows 2048 --layers 0 \
    --torch-rows 16 --results "$RESULTS"
  stage "conversions: --device cuda vs torch" 90 "$PY" scripts/gpu_check_convert.py --results "$RESULTS"
  stage "end to end: 8B-shaped, 1 layer, Q4_K" 120 "$PY" benchmarks/cuda_throughput.py --types Q4_K --rows 256 \
    --torch-rows 4 --layers 1 --results "$RESULTS/end_to_end"
else
  for s in "GPU tests (pytest -m gpu)" "throughput per type (2048 x 4096)" "end to end: 8B-shaped, 1 layer, Q4_K"; do
    skip "$s" "no usable GPU ($REASON)"
  done
  if [ $DRY = 1 ]; then
    stage "conversions: --device cuda vs torch (EMULATED kernels)" 600 "$PY" scripts/gpu_check_convert.py \
      --emulate --rows 64 --results "$RESULTS"
  else
    skip "conversions: --device cuda vs torch" "no usable GPU ($REASON)"
  fi
fi

TOTAL=$(( $(date +%s) - START ))
echo "" >> "$SUMMARY"; echo "total ${TOTAL} s" >> "$SUMMARY"
# the device tool returns at most 8 files: every result in one archive, the summary and the log beside it
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/gpu_check" && tar czf "$OUT/gpu_check/gpu_check.tar.gz" -C "$RESULTS" . \
    && cp "$SUMMARY" "$RESULTS/gpu_check.log" "$OUT/gpu_check/"
fi
echo "== results in $RESULTS${OUT:+ and $OUT/gpu_check}"; cat "$SUMMARY"
if [ -n "$REASON" ] && [ $DRY = 0 ]; then
  echo "NO GPU CHECK WAS RUN: $REASON"; exit 3
fi
exit $FAILED
