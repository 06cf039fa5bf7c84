#!/usr/bin/env bash
# Builds llama.cpp's llama-perplexity (and, with arguments, other tools such as llama-quantize and
# llama-imatrix) from the llama.cpp tree vendored in llama-cpp-python's source distribution, the same
# version the Python package runs. Used by CI so that `validate`'s KLD is cross-checked against
# llama-perplexity --kl-divergence instead of skipping (about 5 minutes on 2 cores); the benchmarks use
# llama-quantize/llama-imatrix for the with-imatrix comparison. Prints the bin directory.
#   bash scripts/build_llama_tools.sh [target ...]      (default: llama-perplexity)
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP_PYTHON_VERSION=0.3.36
src=.cache/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp
build=.cache/llama-tools/build
targets=("${@:-llama-perplexity}")
if [ ! -f "$src/CMakeLists.txt" ]; then
  echo "llama.cpp source missing at $src: run scripts/setup.sh first" >&2
  exit 1
fi
mkdir -p "$build"
if ! command -v cmake >/dev/null 2>&1; then
  . .venv/bin/activate
  python -m pip install -q cmake
fi
# Without Intel AMX, as llama-cpp-python in setup.sh: ggml's AMX buffer segfaults on AMX CPUs (llama.cpp #20824).
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > "$build.configure.log" 2>&1 \
  || { cat "$build.configure.log" >&2; exit 1; }
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)" > "$build.build.log" 2>&1 \
  || { tail -50 "$build.build.log" >&2; exit 1; }
echo "$(pwd)/$build/bin"
