"""Shared fixtures. The parity vectors live in ../shared/vectors beside the checkout (or $ZOO_VECTORS)."""
from __future__ import annotations

import os
from pathlib import Path

# no test may reach the network: hub and URL sources must come from caches the tests build
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ZOO_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton's kernels are tested on the CPU through its interpreter, which has to be on before triton is
# imported (importing torch does not import it; torch._dynamo, loaded by the first custom-op call or
# torch.compile, does). A CUDA machine runs them compiled instead. In auto mode CPU tensors never
# reach Triton, so no other test changes behaviour.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]


def _vectors_dir() -> Path:
    return Path(os.environ.get("ZOO_VECTORS", ROOT.parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The vectors folder; skipped when absent unless ZOO_REQUIRE_VECTORS=1 (CI), where it fails."""
    path = _vectors_dir()
    if not path.is_dir():
        if os.environ.get("ZOO_REQUIRE_VECTORS") == "1":
            pytest.fail(f"parity vectors not found at {path}; set ZOO_VECTORS")
        pytest.skip(f"parity vectors not found at {path}")
    return path


def _set5_dir() -> Path:
    return Path(os.environ.get("ZOO_SET5", ROOT.parent / "shared" / "data" / "set5"))


@pytest.fixture(scope="session")
def set5() -> Path:
    """Set5 as shipped with RCAN (HR/, LR/, RCAN/ per scale); skipped when absent unless
    ZOO_REQUIRE_VECTORS=1 (CI), where it fails."""
    path = _set5_dir()
    if not (path / "HR").is_dir():
        if os.environ.get("ZOO_REQUIRE_VECTORS") == "1":
            pytest.fail(f"Set5 not found at {path}; set ZOO_SET5")
        pytest.skip(f"Set5 not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def triton_mode(monkeypatch):
    """ZOO_KERNELS=triton for one test: its kernel calls take the Triton path (see tests/kernel_testing.py)."""
    monkeypatch.setenv("ZOO_KERNELS", "triton")


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache for tests that place or download weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"
