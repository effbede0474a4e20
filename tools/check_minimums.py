"""Run the tests that exercise the base requirements with each requirement at its declared minimum.

    python tools/check_minimums.py                # install the minimums into a temporary folder, run the tests
    python tools/check_minimums.py --list         # only print the pins it would install

Every ``name>=version`` of pyproject.toml's ``dependencies`` is installed at exactly that version
(``pip install --no-deps --target``) into a folder put first on ``PYTHONPATH``, so the rest of the
environment stays as it is. torch and torchvision are the exceptions: their minimum wheels are
gigabytes, which CI does not download; their bounds come from the APIs the code calls (``enable_gqa``
in ``scaled_dot_product_attention``: torch 2.5). CI runs this after the test suite (``.ci/run``).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOT_INSTALLED = {"torch", "torchvision"}  # gigabytes each; see the module docstring
# the tests that touch each base requirement: timm (interop, ResNet parity), Lightning and jsonargparse
# (the training CLI and its checkpoints), torchmetrics (the tasks), safetensors and huggingface_hub (files and
# the hub), einops (the models). Found this way: timm 1.0.21 (PatchEmbed(device=)), lightning 2.5.2
# (LightningCLI(load_from_checkpoint_support=); 2.2-2.3 import pkg_resources), jsonargparse 4.48 (the errors reworded)
TESTS = ["tests/test_timm_interop.py", "tests/test_resnet_parity.py", "tests/test_hub.py", "tests/test_train.py",
         "tests/test_train_safety.py", "tests/test_cli.py", "tests/test_models.py"]
VERSIONS_OF = "import importlib.metadata as m, sys; print(*(m.version(name) for name in sys.argv[1:]))"
LOWER_BOUND = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")  # name, [extras], minimum


def minimum_pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==minimum`` for every base requirement with a lower bound, torch and torchvision excepted."""
    pins = []
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = LOWER_BOUND.match(requirement)
        if match and match.group(1).lower() not in NOT_INSTALLED:
            pins.append(f"{match.group(1)}=={match.group(3)}")  # no extras: --no-deps installs the package alone
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the pins and stop")
    args, pytest_args = parser.parse_known_args(argv)  # the rest goes to pytest (e.g. -x, -k name)
    pins = minimum_pins()
    print("minimum versions:", " ".join(pins))
    if args.list:
        return 0
    with tempfile.TemporaryDirectory(prefix="zoo-minimums-") as target:
        install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
                                  *pins])
        if install.returncode:
            print("a declared minimum is not installable (above: pip's error); raise it to a released version in "
                  "pyproject.toml", file=sys.stderr)
            return 1
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [target, os.environ.get("PYTHONPATH")])))
        names = [pin.split("==")[0] for pin in pins]
        found = subprocess.run([sys.executable, "-c", VERSIONS_OF, *names], env=env, capture_output=True, text=True,
                               check=True).stdout.split()
        wrong = [f"{pin} (found {version})" for pin, version in zip(pins, found)
                 if Version(version) != Version(pin.split("==")[1])]
        if wrong:
            print(f"the minimums did not take precedence over the environment: {wrong}", file=sys.stderr)
            return 1
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS,
                               *pytest_args], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
