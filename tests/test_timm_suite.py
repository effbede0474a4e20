"""timm's own tests/test_models.py, run on zoo's classifiers (tools/timm_suite.py): no failure but the
known gaps that script names. The test file comes from timm's source distribution for the installed
version (pip download, cached); a machine that cannot fetch it skips, saying so."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_timms_model_tests_pass_on_zoo_models():
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "timm_suite.py")], capture_output=True, text=True,
                         timeout=900)
    if "could not download timm" in run.stdout + run.stderr:
        pytest.skip("timm's source distribution could not be fetched (offline): " + run.stderr.strip()[-200:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    total = next(line for line in run.stdout.splitlines() if line.startswith("total:"))
    passed = int(total.split()[1])
    assert passed >= 70, total  # 76 on timm 1.0.31: forward, backward, FX, cfgs, features, intermediates, pruning
