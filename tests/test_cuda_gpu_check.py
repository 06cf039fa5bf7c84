"""scripts/gpu_check.sh where it can be tried without a GPU: its syntax, and its refusal to pass without one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_gpu_check_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the no-GPU path cannot be provoked here")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils timeout missing")
def test_gpu_check_without_a_gpu_says_so_and_fails(tmp_path: Path) -> None:
    """Without a usable GPU every GPU stage is SKIPPED with the reason, and the exit status is 3, never 0."""
    env = dict(os.environ, PYTHON=sys.executable, HQQ2GGUF_GPU_CHECK_RESULTS=str(tmp_path / "results"),
               OUT=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NO GPU CHECK WAS RUN: no CUDA device" in done.stdout
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert summary.count("SKIPPED: no usable GPU (no CUDA device") == 4
    assert (tmp_path / "out" / "gpu_check" / "summary.md").read_text() == summary  # copied to $OUT
