#!/usr/bin/env bash
# Compile every CUDA source in cuda/ with nvcc (syntax and type check; no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${CUDA_ARCH:-sm_90}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in cuda/*.cu; do
  echo "nvcc $f"
  nvcc -std=c++17 -O3 -arch="$arch" -c "$f" -o "$out/$(basename "$f" .cu).o"
done
