"""``python -m zoo check``: every family runs on inputs of its own kind; oversized models are skipped."""
from __future__ import annotations

import pytest

from zoo.__main__ import main


@pytest.mark.parametrize("pattern, shape", [
    ("rcan_tiny_x2", "(1, 3, 64, 64)"),     # images -> images (x2 of 32)
    ("moc_lm_tiny", "(1, 64, 257)"),        # token ids -> logits over the byte vocabulary
    ("vit_tiny", "(1, 192)"),               # images -> pooled features (no head)
])
def test_check_runs_each_family_on_its_inputs(pattern: str, shape: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", pattern, "--batch", "1", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert shape in out and "1 of 1 models built and ran" in out


def test_check_skips_models_above_the_parameter_limit(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "var_d30", "--max-params", "100"]) == 0  # built on meta only: no 8 GB allocation
    out = capsys.readouterr().out
    assert "2010.02" in out and "skipped: above --max-params 100M" in out and "0 of 1 models" in out


def test_check_unknown_pattern_fails(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "no_such_model*"]) == 1
    assert "no model matches" in capsys.readouterr().err
