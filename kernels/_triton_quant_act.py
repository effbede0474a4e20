"""Triton kernel of ``zoo::quantize_act``: per-token int8 activation quantization.

Imported lazily, on the first launch, by :mod:`zoo.kernels.quant_act`, so a machine without Triton never
imports it. ``TRITON_INTERPRET=1`` must be set before *triton* is imported (see
:mod:`zoo.kernels._triton_channel_gate`); a mismatch is reported on import with that advice.

The kernel repeats its reference's arithmetic in the same order, so that the int8 codes and the fp32
scales equal the reference's bit for bit: ``(x - shift) * multiplier`` in fp32, ``amax / 127`` and
``v / scale`` with correctly rounded division (``tl.div_rn``: a plain ``/`` compiles to an approximate
division on NVIDIA GPUs), then round half to even written with floor and compares (no libdevice
``rint``, which the interpreter lacks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# no import cycle: kernels.quant_act imports this module lazily
from ._triton_common import interpreter_checked, pow2
from .quant_act import QMAX

_INTERPRET = interpreter_checked()

_QMAX = tl.constexpr(float(QMAX))  # module constants a kernel reads must be constexpr
# Module attributes so the tests can shrink them and exercise the K loop on tiny shapes.
QUANT_TILE = 4096  # elements per quantize_act program and step
MAX_BLOCK_K_QUANT = 1024  # longest slice of a row quantize_act reads at once


# ----------------------------------------------------------------------------------------------
# quantize_act: q = clamp(round_half_even((x - shift) * multiplier / scale), -127, 127)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _shifted(x_ptr, sh_ptr, mu_ptr, rows, offs_k, mask, K, HAS_SHIFT: tl.constexpr, HAS_MULT: tl.constexpr):
    """(x - shift) * multiplier in fp32 for a (rows, offs_k) tile; 0 where masked."""
    v = tl.load(x_ptr + rows[:, None] * K + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        v = v - tl.load(sh_ptr + offs_k, mask=offs_k < K, other=0.0)[None, :]
    if HAS_MULT:
        v = v * tl.load(mu_ptr + offs_k, mask=offs_k < K, other=0.0)[None, :]
    return v


@triton.jit
def _round_half_even_clamped(v):
    """int32 round-half-to-even of v, clamped to +-127 first (the same as clamping after rounding,
    since 127 is an integer, and it keeps the int32 conversion in range). v - floor(v) is exact in
    binary floating point, so the tie test is exact (floor(v + 0.5) is not: 0.49999997 + 0.5 rounds to 1)."""
    v = tl.minimum(tl.maximum(v, -_QMAX), _QMAX)
    r = tl.floor(v)
    frac = v - r
    ri = r.to(tl.int32)
    up = (frac > 0.5) | ((frac == 0.5) & ((ri & 1) == 1))
    return ri + up.to(tl.int32)


@triton.jit
def _quantize_kernel(x_ptr, sh_ptr, mu_ptr, st_ptr, q_ptr, s_ptr, M, K, ROWS_PER_SCALE,
                     HAS_SHIFT: tl.constexpr, HAS_MULT: tl.constexpr, STATIC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < M
    rows = rows.to(tl.int64)
    if STATIC:
        scale = tl.load(st_ptr + rows // ROWS_PER_SCALE, mask=mask_m, other=1.0)  # one per tensor or image
    else:  # first pass: the row's amax
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask = mask_m[:, None] & (offs_k[None, :] < K)
            v = _shifted(x_ptr, sh_ptr, mu_ptr, rows, offs_k, mask, K, HAS_SHIFT, HAS_MULT)
            amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1))
        scale = tl.where(amax > 0, tl.div_rn(amax, _QMAX), 1.0)
    tl.store(s_ptr + rows, scale, mask=mask_m)
    for k0 in range(0, K, BLOCK_K):  # second pass (a re-read from cache): quantize
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = mask_m[:, None] & (offs_k[None, :] < K)
        v = _shifted(x_ptr, sh_ptr, mu_ptr, rows, offs_k, mask, K, HAS_SHIFT, HAS_MULT)
        q = _round_half_even_clamped(tl.div_rn(v, scale[:, None]))
        tl.store(q_ptr + rows[:, None] * K + offs_k[None, :], q.to(tl.int8), mask=mask)


def quantize_act(x: torch.Tensor, multiplier: torch.Tensor | None, shift: torch.Tensor | None,
                 static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 (..., K) codes and fp32 (...) scales of a contiguous ``x`` (..., K); see :mod:`zoo.kernels.quant_act`."""
    k = x.shape[-1]
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    m = scale.numel()  # tokens: x is (M, K) row-major
    if m == 0:
        return q, scale
    block_k = min(pow2(k), MAX_BLOCK_K_QUANT)
    block_m = min(pow2(m), max(1, QUANT_TILE // block_k))

    def fp32(t: torch.Tensor | None) -> torch.Tensor:  # the reference's .float(), once, on the host
        return scale if t is None else t.float().contiguous()

    _quantize_kernel[(triton.cdiv(m, block_m),)](
        x, fp32(shift), fp32(multiplier), fp32(static_scale), q, scale, m, k,
        m if static_scale is None or static_scale.numel() == 1 else m // static_scale.numel(),
        HAS_SHIFT=shift is not None, HAS_MULT=multiplier is not None, STATIC=static_scale is not None,
        BLOCK_M=block_m, BLOCK_K=block_k, num_warps=4 if block_m * block_k <= 2048 else 8)
    return q, scale
