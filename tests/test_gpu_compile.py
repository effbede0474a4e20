"""Every Triton kernel compiles for the H200 (sm_90) on this GPU-less machine: tests/gpu_compile_check.py in
a process of its own (the test session runs Triton's interpreter, which never compiles), with an empty
kernel cache so nothing is taken from an earlier run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.kernels.dispatch import _triton_importable

SCRIPT = Path(__file__).resolve().parent / "gpu_compile_check.py"


def _run(*args: str, tmp_path: Path, interpret: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ZOO_KERNELS")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=1500)


@pytest.mark.skipif(not _triton_importable(), reason="needs Triton")
def test_every_triton_kernel_compiles_for_sm90(tmp_path):
    kernels = _run("--list", tmp_path=tmp_path).stdout.split()
    assert len(kernels) >= 20 and "zoo.kernels._triton_squeeze_excite._squeeze_excite_kernel" in kernels
    done = _run("--arch", "90", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout
    assert "compiled for sm_90" in table
    for name in kernels:  # each kernel has a row, with at least one compiled variant
        row = next(line for line in table.splitlines() if line.startswith(name.removeprefix("zoo.kernels.") + " "))
        assert int(row.split("|")[1]) >= 1


@pytest.mark.skipif(not _triton_importable(), reason="needs Triton")
def test_the_check_refuses_to_run_under_the_interpreter(tmp_path):
    done = _run(tmp_path=tmp_path, interpret=True)
    assert done.returncode == 2 and "unset TRITON_INTERPRET" in done.stderr
