#!/usr/bin/env bash
# A second environment, .venv-tf5, for the tests under transformers 5 (README, "transformers versions"): it sees
# every package of .venv (torch, llama-cpp-python, hqq2gguf itself; nothing is rebuilt) and overrides only
# transformers and what transformers 5 needs newer (huggingface-hub, tokenizers, safetensors). Run scripts/setup.sh
# first. Idempotent. Use: .venv-tf5/bin/python -m pytest tests/test_oracle_equivalence.py ...
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSFORMERS5_VERSION=5.25.0

[ -x .venv/bin/python ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
base=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv .venv-tf5
own=$(.venv-tf5/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# A .pth line starting with "import" runs at start-up: .venv's packages come after .venv-tf5's own.
echo "import site; site.addsitedir('${base}')" > "${own}/zz_base_venv.pth"
.venv-tf5/bin/python -m pip install -q --disable-pip-version-check "transformers==${TRANSFORMERS5_VERSION}" \
  2>&1 | grep -v "^WARNING: Location\|dependency resolver\|hqq2gguf 0.1.0 requires" || true
.venv-tf5/bin/python -c "import transformers, torch, llama_cpp, hqq2gguf; \
assert transformers.__version__ == '${TRANSFORMERS5_VERSION}', transformers.__version__; \
print('transformers', transformers.__version__, 'environment ready: .venv-tf5')"
