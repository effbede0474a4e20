"""``python -m zoo``: ``check`` runs every family on inputs of its own kind and skips oversized models; the
commands' choices are the API's, and the README's shell line parses as written."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from zoo.__main__ import build_parser, main
from zoo.quant import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"


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


def _help(command: str, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes


def test_quantize_offers_every_method_of_the_api(capsys: pytest.CaptureFixture) -> None:
    text = _help("quantize", capsys)
    offered = re.search(r"--method \{([^}]*)\}", text).group(1).split(",")
    assert sorted(offered) == sorted(METHODS)
    assert re.search(r"usage: python -m zoo quantize .* model output", text), "required arguments in the usage"


def test_readme_shell_commands_parse() -> None:
    """Each command of the README's "From the shell" paragraph has its required arguments."""
    text = README.read_text()
    start = text.index("From the shell:")
    paragraph = text[start:text.index("\n\n", start)].replace("\n", " ")
    commands = re.findall(r"`(python -m zoo [^`]*)`", paragraph)
    assert len(commands) >= 8, commands
    parser = build_parser()
    for command in commands:
        if command.endswith("--help"):
            continue
        try:
            parser.parse_args(shlex.split(command)[3:])
        except SystemExit:
            pytest.fail(f"README: {command!r} does not parse")
    quantize_line = paragraph[paragraph.index("python -m zoo quantize"):]
    assert all(method in quantize_line for method in METHODS), "the README names every --method"
