"""What the Triton kernel tests (tests/kernels/test_*.py, and the few other tests that launch kernels)
share: the device their kernels run on, the skip marker for machines that cannot run them, the
tolerances of a kernel against its reference, and the pair of opcheck tests every kernel file has.

Imported as ``from kernel_testing import ...``: in pytest's default ``prepend`` import mode the folder of
tests/conftest.py, tests/, is on ``sys.path`` for every test below it (no test folder has an
``__init__.py``). The ``triton_mode`` fixture is in conftest.py.
"""
from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch

from zoo.kernels.dispatch import _interpreting, _triton_importable


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


def forward_and_grads(fn: Callable, inputs: list, seed: int = 1) -> tuple:
    """``fn``'s output for leaf copies of ``inputs`` (None entries passed through) and the gradient of
    every tensor input for a fixed random upstream gradient. A tuple output is reduced to its first element."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return out, torch.autograd.grad(out, [t for t in leaves if t is not None], grad)


# every kernel test file's opcheck cases by module: tests/gpu_compile_check.py drives them to compile
# each Triton kernel for a GPU on a machine without one
OPCHECK_CASES: dict[str, Callable[[str], list[tuple]]] = {}


# the opchecks of inference-only ops without an autograd formula (the integer layers): no input requires
# grad (one that did would make the aot_dispatch checks differentiate through int8 outputs); the static aot
# check is added to torch's defaults
INFERENCE_ONLY_OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static",
                           "test_aot_dispatch_dynamic")


def opcheck_all(cases: list[tuple], **options) -> None:
    """``torch.library.opcheck`` of every (op overload, args) or (op overload, args, kwargs) case;
    ``options`` (e.g. ``test_utils``) go to each call."""
    for case in cases:
        torch.library.opcheck(*case, **options)


def opcheck_tests(cases: Callable[[str], list[tuple]], *, test_utils: Optional[tuple[str, ...]] = None,
                  triton_test_utils: Optional[tuple[str, ...]] = None,
                  triton_cases: Optional[Callable[[str], list[tuple]]] = None) -> tuple[Callable, Callable]:
    """The two opcheck tests of a kernel test file: every case of ``cases(device)`` on the reference path
    (CPU, ``ZOO_KERNELS=torch``) and on the Triton path (its device). Bind them to module-level names that
    start with ``test_`` so pytest collects them::

        test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_cases)

    ``test_utils`` goes to every opcheck (``triton_test_utils`` overrides it on the Triton path), and
    ``triton_cases`` gives the Triton path fewer cases where the interpreter is slow. ``cases`` is also
    registered in ``OPCHECK_CASES``.
    """
    OPCHECK_CASES[cases.__module__] = cases
    options = {} if test_utils is None else {"test_utils": test_utils}
    triton_options = options if triton_test_utils is None else {"test_utils": triton_test_utils}

    def test_opcheck_reference_path(monkeypatch):
        monkeypatch.setenv("ZOO_KERNELS", "torch")
        opcheck_all(cases("cpu"), **options)

    @needs_triton
    def test_opcheck_triton_path(triton_mode):
        opcheck_all((triton_cases or cases)(DEVICE), **triton_options)

    return test_opcheck_reference_path, test_opcheck_triton_path
