"""What the ``kernels/_triton_*.py`` modules share: the check every one makes when it is imported (lazily, on a
kernel's first launch), the accumulator type, and the power-of-two block size."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def accumulator(dtype: torch.dtype):
    """The Triton type a kernel computes in for tensors of ``dtype``: fp64 for fp64, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def interpreter_checked() -> bool:
    """Whether Triton runs in its interpreter (``TRITON_INTERPRET=1``), after checking that triton was
    imported in that same mode.

    ``TRITON_INTERPRET`` is read once, when *triton* is imported, and torch imports triton itself when
    ``torch._dynamo`` loads (the first call of a custom op with autograd, or ``torch.compile``). A
    mismatch is reported here, with that advice, instead of Triton's own obscure error.
    """
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if interpret != (type(tl.sum).__name__ == "InterpretedFunction"):
        raise RuntimeError(
            f"TRITON_INTERPRET={'1' if interpret else 'unset'} now, but triton was imported "
            f"{'without' if interpret else 'with'} it (torch imports triton when torch._dynamo loads, e.g. at the "
            "first custom-op call): set TRITON_INTERPRET before Python starts, or before importing torch")
    return interpret


def pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``): a block size that covers an axis of ``n``."""
    return triton.next_power_of_2(max(int(n), 1))
