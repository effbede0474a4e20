"""What the Triton kernel tests (tests/test_kernels_*.py) share: the device their kernels run on, the
skip marker for machines that cannot run them, and the tolerances of a kernel against its reference.

Imported as ``from kernel_testing import ...``: pytest puts tests/ on ``sys.path`` (the default
``prepend`` import mode, tests/ has no ``__init__.py``). The ``triton_mode`` fixture is in conftest.py.
"""
from __future__ import annotations

import pytest
import torch

from kernels.dispatch import _interpreting, _triton_importable


def triton_device() -> str | None:
    """Where Triton kernels run here: "cuda", "cpu" (TRITON_INTERPRET=1, set by conftest without a GPU),
    or None (no Triton)."""
    if not _triton_importable():
        return None
    if _interpreting():
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


DEVICE = triton_device()
needs_triton = pytest.mark.skipif(DEVICE is None, reason="needs Triton and CUDA, or TRITON_INTERPRET=1")

# kernel vs reference, per dtype of the compared tensors (a test file with other needs keeps its own)
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 2e-2, "rtol": 1e-2},
       torch.float16: {"atol": 2e-3, "rtol": 1e-3}, torch.float64: {"atol": 1e-12, "rtol": 1e-12}}


def opcheck_all(cases: list[tuple], **options) -> None:
    """``torch.library.opcheck`` of every (op overload, args) or (op overload, args, kwargs) case;
    ``options`` (e.g. ``test_utils``) go to each call."""
    for case in cases:
        torch.library.opcheck(*case, **options)
