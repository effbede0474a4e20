"""Triton kernels of ``zoo::adaln_modulate`` (LayerNorm without affine, then a per-sample scale and shift)
and its backward.

Imported lazily, on the first launch, by :mod:`zoo.kernels.adaln`, so a machine without Triton never imports it.
``TRITON_INTERPRET=1`` must be set before *triton* is imported (see :mod:`zoo.kernels._triton_channel_gate`).

Notation: x (B, L, C) as M = B * L rows of C channels, scale and shift (B, C); row m belongs to sample
m // L. A tile is BLOCK_M whole rows (BLOCK_C = C rounded up to a power of two), so the row statistics
are register reductions; BLOCK_M shrinks as C grows (about 4096 fp32 values per tile).

- forward: one program per tile: mean, biased variance, ``(x - mean) * rstd * (1 + scale[b]) + shift[b]``
  in fp32 (fp64 for fp64 x), one store, and each row's mean and rstd for the backward.
- backward: a program owns a range of rows of one sample: for each tile it recomputes
  ``xhat = (x - mean) * rstd`` from the saved statistics, writes ``grad_x = rstd * (g_hat - mean(g_hat) - xhat * mean(g_hat * xhat))`` with
  ``g_hat = grad * (1 + scale[b])``, and sums ``grad * xhat`` and ``grad`` over its rows in registers.
  The per-range partials go to an fp32 buffer that one PyTorch sum finishes: deterministic, no atomics.

Rows wider than MAX_C channels (they would not fit in registers) run the PyTorch reference.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._triton_common import accumulator, interpreter_checked

_INTERPRET = interpreter_checked()

# Module attributes so the tests can shrink them and exercise the row loop and the partial sums.
MAX_C = 16384  # widest row kept in registers
TILE_ELEMENTS = 4096  # BLOCK_M * BLOCK_C of a tile on the GPU
MIN_PROGRAMS = 1  # the backward splits each sample's rows until it has this many programs (times the SMs)
_16BIT = (torch.float16, torch.bfloat16)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _warps() -> list[triton.Config]:
    """One config in the interpreter (it cannot autotune more); a few warp counts on the GPU."""
    if _INTERPRET:
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in (2, 4, 8, 16)]


def _tile(c: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(c)
    block_m = 2 if _INTERPRET else max(1, min(64, TILE_ELEMENTS // block_c))
    return block_m, block_c


@triton.jit
def _row_stats(x, mask_c, C, eps):
    """Per-row mean, mean-centred x (zero on padded columns) and rstd of a (BLOCK_M, BLOCK_C) tile."""
    mean = tl.sum(x, axis=1) / C
    centred = tl.where(mask_c[None, :], x - mean[:, None], 0.0)
    var = tl.sum(centred * centred, axis=1) / C  # two passes over registers: no cancellation
    return mean, centred, 1.0 / tl.sqrt(var + eps)


@triton.autotune(_warps(), key=["BLOCK_C", "BLOCK_M", "M_BUCKET"])
@triton.jit
def _forward_kernel(x_ptr, scale_ptr, shift_ptr, out_ptr, mean_ptr, rstd_ptr, M, L, C, eps, M_BUCKET,
                    ACC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask_m = offs_m < M
    mask = mask_m[:, None] & mask_c[None, :]
    x = tl.load(x_ptr + offs_m[:, None] * C + offs_c[None, :], mask=mask, other=0.0).to(ACC)
    mean, centred, rstd = _row_stats(x, mask_c, C, eps)
    tl.store(mean_ptr + offs_m, mean, mask=mask_m)
    tl.store(rstd_ptr + offs_m, rstd, mask=mask_m)
    per_sample = (offs_m // L)[:, None] * C + offs_c[None, :]  # (BLOCK_M, BLOCK_C) into (B, C)
    scale = tl.load(scale_ptr + per_sample, mask=mask, other=0.0).to(ACC)
    shift = tl.load(shift_ptr + per_sample, mask=mask, other=0.0).to(ACC)
    y = centred * rstd[:, None] * (1.0 + scale) + shift
    tl.store(out_ptr + offs_m[:, None] * C + offs_c[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    # the interpreter's fp32 -> bf16 cast truncates: it writes fp32 and PyTorch rounds (as the reference)
    return torch.float32 if _INTERPRET and dtype in _16BIT else dtype


def adaln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (B, L, C) in x's dtype, mean and rstd (B, L); see :func:`zoo.kernels.adaln.adaln_modulate_reference`."""
    b, l, c = x.shape
    if c > MAX_C:
        from .adaln import adaln_modulate_reference

        return adaln_modulate_reference(x, scale, shift, eps)
    x, scale, shift = x.contiguous(), scale.contiguous(), shift.contiguous()
    out = torch.empty(b, l, c, dtype=_out_dtype(x.dtype), device=x.device)
    stats = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean = torch.empty(b, l, dtype=stats, device=x.device)
    rstd = torch.empty(b, l, dtype=stats, device=x.device)
    m = b * l
    if m == 0:
        return out.to(x.dtype), mean, rstd
    block_m, block_c = _tile(c)
    _forward_kernel[(triton.cdiv(m, block_m),)](x, scale, shift, out, mean, rstd, m, l, c, eps,
                                                min(triton.next_power_of_2(m), 1 << 20), ACC=accumulator(x.dtype),
                                                BLOCK_M=block_m, BLOCK_C=block_c)
    return out.to(x.dtype), mean, rstd


@triton.autotune(_warps(), key=["BLOCK_C", "BLOCK_M", "ROWS"])
@triton.jit
def _backward_kernel(g_ptr, x_ptr, scale_ptr, mean_ptr, rstd_ptr, gx_ptr, gs_ptr, gt_ptr, L, C, B, ROWS,
                     ACC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    b, split = tl.program_id(0), tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    scale = tl.load(scale_ptr + b.to(tl.int64) * C + offs_c, mask=mask_c, other=0.0).to(ACC)
    acc_scale = tl.zeros((BLOCK_C,), dtype=ACC)
    acc_shift = tl.zeros((BLOCK_C,), dtype=ACC)
    first = split * ROWS  # this program's rows of sample b: first .. first + ROWS - 1 (ROWS: multiple of BLOCK_M)
    for l0 in range(first, tl.minimum(first + ROWS, L), BLOCK_M):
        offs_l = l0 + tl.arange(0, BLOCK_M)
        mask_l = offs_l < L
        mask = mask_l[:, None] & mask_c[None, :]
        rows = b.to(tl.int64) * L + offs_l
        at = rows[:, None] * C + offs_c[None, :]
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(ACC)
        g = tl.load(g_ptr + at, mask=mask, other=0.0).to(ACC)
        mean = tl.load(mean_ptr + rows, mask=mask_l, other=0.0).to(ACC)
        rstd = tl.load(rstd_ptr + rows, mask=mask_l, other=0.0).to(ACC)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g_hat = g * (1.0 + scale)[None, :]  # zero on padded rows and columns
        mean_g = tl.sum(g_hat, axis=1) / C
        mean_gx = tl.sum(g_hat * xhat, axis=1) / C
        gx = rstd[:, None] * (g_hat - mean_g[:, None] - xhat * mean_gx[:, None])
        tl.store(gx_ptr + at, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        acc_scale += tl.sum(g * xhat, axis=0)
        acc_shift += tl.sum(g, axis=0)
    part = (split * B + b).to(tl.int64) * C + offs_c
    tl.store(gs_ptr + part, acc_scale, mask=mask_c)
    tl.store(gt_ptr + part, acc_shift, mask=mask_c)


def _splits(b: int, l: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(splits, rows per split) of each sample's L rows, so that B * splits programs fill the GPU."""
    target = max(MIN_PROGRAMS, 4 * _num_sms(device))
    tiles = triton.cdiv(l, block_m)
    splits = max(1, min(tiles, triton.cdiv(target, b)))
    rows = triton.cdiv(tiles, splits) * block_m
    return triton.cdiv(l, rows), rows


def adaln_modulate_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                            rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_scale, grad_shift); see :func:`zoo.kernels.adaln.adaln_modulate_backward_reference`."""
    b, l, c = x.shape
    if c > MAX_C:
        from .adaln import adaln_modulate_backward_reference

        return adaln_modulate_backward_reference(grad, x, scale, mean, rstd)
    grad, x, scale, mean, rstd = (t.contiguous() for t in (grad, x, scale, mean, rstd))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    gx = torch.empty(b, l, c, dtype=_out_dtype(x.dtype), device=x.device)
    if b * l == 0:
        zeros = torch.zeros(b, c, dtype=acc, device=x.device)
        return gx.to(x.dtype), zeros, zeros.clone()
    block_m, block_c = _tile(c)
    splits, rows = _splits(b, l, block_m, x.device)
    gs_part = torch.empty(splits, b, c, dtype=acc, device=x.device)
    gt_part = torch.empty(splits, b, c, dtype=acc, device=x.device)
    _backward_kernel[(b, splits)](grad, x, scale, mean, rstd, gx, gs_part, gt_part, l, c, b, rows,
                                  ACC=accumulator(x.dtype), BLOCK_M=block_m, BLOCK_C=block_c)
    grad_scale = gs_part.sum(0) if splits > 1 else gs_part[0]  # (B, C)
    grad_shift = gt_part.sum(0) if splits > 1 else gt_part[0]
    return gx.to(x.dtype), grad_scale, grad_shift
