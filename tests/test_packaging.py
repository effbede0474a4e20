"""The distribution (issue 21): the wheel holds every package under one import name each, its base
requirements leave Triton to torch and the one-call packages to extras, and a missing extra is named."""
from __future__ import annotations

import email
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import zoo
from zoo.extras import MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = ("pyproject.toml", "README.md", "zoo", "kernels", "blocks")
EXTRA_ONLY = ("triton", "scikit-learn", "scikit-image", "matplotlib", "tensorboard")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in SOURCES:  # a copy: setuptools builds in the source tree (build/, *.egg-info)
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, text=True)
    (path,) = out.glob("channelzoo-*.whl")
    return path


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name)).get_all("Requires-Dist")


def test_every_package_folder_is_in_the_distribution():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    folders = {str(path.parent.relative_to(ROOT)) for path in (ROOT / "zoo").rglob("*.py")}
    expected = {folder.replace("/", ".") for folder in folders} | set(mapped)
    assert expected <= listed, f"add {sorted(expected - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert mapped == {"zoo.kernels": "kernels", "zoo.blocks": "blocks"}


def test_the_wheel_imports_outside_the_repository(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    top = {name.split("/")[0] for name in names if not name.startswith("channelzoo-")}
    assert top == {"zoo"}, f"only zoo is a top-level import name; the wheel has {sorted(top)}"
    assert "zoo/py.typed" in names and "zoo/kernels/dispatch.py" in names and "zoo/blocks/se.py" in names
    assert any(name.startswith("zoo/weights/") and name.endswith(".safetensors") for name in names)
    code = ("import zoo, torch; m = zoo.create('rcan_tiny_x2', pretrained=True).eval(); "
            "print(zoo.__file__); print(tuple(m(torch.rand(1, 3, 8, 8)).shape))")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    file, shape = run.stdout.strip().splitlines()[-2:]
    assert file.startswith(str(tmp_path / "site")) and shape == "(1, 3, 16, 16)"


def test_base_requirements_leave_triton_to_torch_and_heavy_packages_to_extras(wheel):
    base = [req for req in _requirements(wheel) if "extra ==" not in req]
    offenders = [req for req in base if req.split(";")[0].split(">")[0].split("=")[0].strip().lower() in EXTRA_ONLY]
    assert not offenders, f"move {offenders} behind an extra"
    assert any(req.startswith("torch>=2.5") for req in base)  # scaled_dot_product_attention(enable_gqa=...)
    assert any(req.startswith("huggingface_hub>=0.25") for req in base)  # huggingface_hub.errors


def test_one_version_string():
    assert importlib.metadata.version("channelzoo") == zoo.__version__


def test_kernels_and_blocks_have_one_import_name():
    for folder in ("kernels", "blocks"):
        run = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode != 0 and f"import zoo.{folder}, not {folder}" in run.stderr, run.stderr


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were not installed
    with pytest.raises(MissingExtraError, match=r'built-in digits .* pip install "channelzoo\[train\]"'):
        from zoo.data.classification import DigitsDataModule
        DigitsDataModule()
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(MissingExtraError, match=r'photographs .* pip install "channelzoo\[train\]"'):
        from zoo.data.super_resolution import SRSampleDataModule
        SRSampleDataModule()


def test_a_broken_installed_package_is_not_called_missing(monkeypatch, tmp_path):
    (tmp_path / "zoo_test_broken.py").write_text("import zoo_test_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("zoo_test_broken", "train", "x")
    assert not isinstance(info.value, MissingExtraError) and info.value.name == "zoo_test_absent_dependency"


def test_the_minimums_check_pins_every_lower_bound():
    spec = importlib.util.spec_from_file_location("check_minimums", ROOT / "tools" / "check_minimums.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    pins = dict(pin.split("==") for pin in tool.minimum_pins())
    assert pins["jsonargparse"] == "4.48"  # a requirement with extras keeps its bound
    assert pins["lightning"] == "2.5.2" and pins["timm"] == "1.0.21"  # LightningCLI(load_from_checkpoint_support=)
    assert "torch" not in pins and "torchvision" not in pins  # gigabytes: bounds from the APIs called
    bounded = {req.split(">=")[0].split("[")[0] for req in PYPROJECT["project"]["dependencies"] if ">=" in req}
    assert set(pins) == bounded - {"torch"}, (pins, bounded)
