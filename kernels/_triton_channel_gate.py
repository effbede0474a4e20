"""Triton kernels of the channel gate: pooling (mean or weighted), rescale (+ residual + ReLU), backward.

Imported lazily, on the first launch, by :mod:`zoo.kernels.channel_gate`, so a machine without Triton never
imports it. ``TRITON_INTERPRET=1`` has to be set before *triton* is imported, and torch imports triton
itself when ``torch._dynamo`` loads (the first call of any custom op with autograd, or ``torch.compile``):
set it when the process starts (tests/conftest.py does). A mismatch is reported on import
(:mod:`zoo.kernels._triton_common`) with that advice instead of Triton's own obscure error.

Every kernel sees a 4-D tensor as (B, C, HW) through three strides, so one kernel serves NCHW
(HW contiguous) and channels_last (C contiguous); only the tile shape changes with the layout.
Arithmetic is in fp32 (fp64 for fp64 inputs); loads and stores keep the tensors' own dtypes.

Reductions over HW (the pooled vector, and the gate's gradient) run one program per (batch,
channel block, HW split). With one split the program writes the result; with several (too few
(batch, channel block) pairs to fill the GPU) each writes a partial row and one small PyTorch sum
over (B, splits, C) finishes the job, which keeps the result deterministic (no atomics).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._triton_common import accumulator, interpreter_checked
from .channel_gate import _acc_dtype

_INTERPRET = interpreter_checked()

# Tile budget (elements per program per step) and the number of programs a reduction aims for.
# Module attributes so tests can shrink them to exercise HW splits and many tiles on tiny shapes.
TILE = 4096
MIN_PROGRAMS = 1024
MAX_BLOCK_C_CHANNELS_LAST = 128
MAX_BLOCK_HW = 1024

# The interpreter cannot run @triton.autotune with more than one config (docs/DESIGN.md).
_CONFIGS = [triton.Config({}, num_warps=4)] if _INTERPRET else [
    triton.Config({}, num_warps=w) for w in (2, 4, 8)]


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _block_along(n: int, most: int) -> int:
    """A power-of-two block for an axis of ``n``: the largest (up to ``most``) that pads the axis by at
    most 1/8, e.g. 256 for 3136 = 56 x 56 (1024 would leave the last tile 6% full); when none of
    16 and up does (49 = 7 x 7), the whole axis up to ``most``."""
    first = min(_pow2(n), most)
    block = first
    while block >= 16:
        if triton.cdiv(n, block) * block <= n + n // 8:
            return block
        block //= 2
    return first


def _tiles(c: int, hw: int, channels_fast: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): the contiguous axis gets the long side of the tile."""
    if channels_fast:
        block_c = _block_along(c, min(MAX_BLOCK_C_CHANNELS_LAST, TILE))
        block_hw = min(_pow2(hw), max(1, TILE // block_c))
    else:
        block_hw = _block_along(hw, min(MAX_BLOCK_HW, TILE))
        block_c = min(_pow2(c), max(1, TILE // block_hw))
    return block_c, block_hw


def _bchw_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(stride_b, stride_c, stride_hw) of a (B, C, H, W) tensor whose H and W collapse into one axis."""
    _, _, h, w = t.shape
    return t.stride(0), t.stride(1), (t.stride(3) if w > 1 else t.stride(2))


def _collapsible(t: torch.Tensor) -> bool:
    _, _, h, w = t.shape
    return h == 1 or w == 1 or t.stride(2) == w * t.stride(3)


def as_readable(t: torch.Tensor) -> torch.Tensor:
    """``t`` if its H and W collapse into one strided axis (NCHW, channels_last, expanded), else a copy."""
    return t if _collapsible(t) else t.contiguous()


def as_dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it is dense (NCHW or channels_last), else an NCHW copy: outputs are allocated like it."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def _channels_fast(t: torch.Tensor) -> bool:
    sb, sc, shw = _bchw_strides(t)
    return t.shape[1] > 1 and sc == 1 and shw != 1


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _splits(b: int, n_cblocks: int, hw: int, block_hw: int, device: torch.device) -> tuple[int, int]:
    """(number of HW splits, HW elements per split) so the reduction fills the machine."""
    chunks = triton.cdiv(hw, block_hw)
    target = max(MIN_PROGRAMS, 4 * _num_sms(device))
    splits = max(1, min(chunks, target // max(b * n_cblocks, 1)))
    per_split = triton.cdiv(chunks, splits) * block_hw
    return triton.cdiv(hw, per_split), per_split


# ----------------------------------------------------------------------------------------------
# pooling: out[b, c] = sum_hw x[b, c, hw] * (w[c // channels_per_filter, hw] or 1) / divisor
# ----------------------------------------------------------------------------------------------
@triton.jit
def pool_program(x_ptr, w_ptr, part_ptr, C, HW, n_cblocks, hw_per_split, divisor, sxb, sxc, sxhw, swc, swhw,
                 channels_per_filter, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_HW: tl.constexpr):
    """This program's share of the pooling: for its block of channels, the sum over its HW split of x
    (times the filter with HAS_WEIGHT) / divisor, stored as row (b, split) of the (B, splits, C) partial
    sums; returns b. The pooling kernel and the fused squeeze-excite kernel
    (:mod:`zoo.kernels._triton_squeeze_excite`) are this and what follows it."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // n_cblocks
    offs_c = (pid % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    hw_lo = split * hw_per_split
    hw_hi = tl.minimum(hw_lo + hw_per_split, HW)
    x_rows = x_ptr + b.to(tl.int64) * sxb + offs_c[:, None].to(tl.int64) * sxc
    w_rows = w_ptr + (offs_c[:, None] // channels_per_filter).to(tl.int64) * swc
    acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=ACC)
    for start in range(hw_lo, hw_hi, BLOCK_HW):
        offs_hw = start + tl.arange(0, BLOCK_HW)
        mask = mask_c[:, None] & (offs_hw[None, :] < hw_hi)
        v = tl.load(x_rows + offs_hw[None, :].to(tl.int64) * sxhw, mask=mask, other=0.0).to(ACC)
        if HAS_WEIGHT:
            v = v * tl.load(w_rows + offs_hw[None, :] * swhw, mask=mask, other=0.0).to(ACC)
        acc += v
    row = b.to(tl.int64) * tl.num_programs(1) + split
    tl.store(part_ptr + row * C + offs_c, tl.sum(acc, axis=1) / divisor, mask=mask_c)
    return b


@triton.autotune(configs=_CONFIGS, key=["C", "HW", "BLOCK_C", "BLOCK_HW"])
@triton.jit
def _pool_fwd_kernel(x_ptr, w_ptr, part_ptr, C, HW, n_cblocks, hw_per_split, divisor,
                     sxb, sxc, sxhw, swc, swhw, channels_per_filter,
                     HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    pool_program(x_ptr, w_ptr, part_ptr, C, HW, n_cblocks, hw_per_split, divisor, sxb, sxc, sxhw, swc, swhw,
                 channels_per_filter, HAS_WEIGHT, ACC, BLOCK_C, BLOCK_HW)


def _filter_rows(weight: torch.Tensor | None, c: int, hw: int, channels_fast: bool,
                 placeholder: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(filter as (G, HW), its channel stride, its HW stride, channels per filter) for the kernels."""
    if weight is None:
        return placeholder, 0, 0, 1  # never read
    groups = weight.shape[0]
    # read in the same order as the map: (G, HW) row-major for NCHW, (HW, G) for channels_last
    w2 = weight.reshape(groups, hw)
    w2 = w2.t().contiguous().t() if channels_fast else w2.contiguous()
    return w2, w2.stride(0), w2.stride(1), c // groups


class PoolPlan(NamedTuple):
    """How :func:`pool` (and the fused squeeze-excite kernel) split a map: tiles, programs, the filter."""
    block_c: int
    block_hw: int
    n_cblocks: int  # channel blocks per sample
    splits: int  # HW splits per (sample, channel block)
    per_split: int  # HW elements per split
    filter_rows: torch.Tensor  # (G, HW) as the kernel reads it (x itself when there is no filter)
    filter_strides: tuple[int, int]  # (channel row, HW)
    channels_per_filter: int
    divisor: int  # H * W for the mean, 1 for a weighted sum


def plan_pool(x: torch.Tensor, weight: torch.Tensor | None) -> PoolPlan:
    """The plan for a readable (B, C, H, W) map with at least one element."""
    b, c, h, w = x.shape
    hw = h * w
    channels_fast = _channels_fast(x)
    block_c, block_hw = _tiles(c, hw, channels_fast)
    n_cblocks = triton.cdiv(c, block_c)
    splits, per_split = _splits(b, n_cblocks, hw, block_hw, x.device)
    w2, swc, swhw, per_filter = _filter_rows(weight, c, hw, channels_fast, x)
    return PoolPlan(block_c, block_hw, n_cblocks, splits, per_split, w2, (swc, swhw), per_filter,
                    hw if weight is None else 1)


def pool(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) fp32 (fp64 for fp64 x): mean over H x W, or the weighted sum with ``weight`` (C or G, H, W)."""
    x = as_readable(x)
    b, c, h, w = x.shape
    acc = _acc_dtype(x.dtype)
    if b * c == 0 or h * w == 0:  # an empty map: the sum is 0 and the mean NaN, as in PyTorch
        return torch.full((b, c), 0.0 if weight is not None else float("nan"), dtype=acc, device=x.device)
    plan = plan_pool(x, weight)
    part = torch.empty(b, plan.splits, c, dtype=acc, device=x.device)
    _pool_fwd_kernel[(b * plan.n_cblocks, plan.splits)](
        x, plan.filter_rows, part, c, h * w, plan.n_cblocks, plan.per_split, plan.divisor,
        *_bchw_strides(x), *plan.filter_strides, plan.channels_per_filter,
        HAS_WEIGHT=weight is not None, ACC=accumulator(x.dtype), BLOCK_C=plan.block_c, BLOCK_HW=plan.block_hw)
    return part[:, 0] if plan.splits == 1 else part.sum(dim=1)


# ----------------------------------------------------------------------------------------------
# pooling backward: grad_x[b, c, hw] = grad[b, c] * (w[c // channels_per_filter, hw] or 1) / divisor
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=_CONFIGS, key=["C", "HW", "BLOCK_C", "BLOCK_HW"])
@triton.jit
def _pool_bwd_kernel(g_ptr, w_ptr, gx_ptr, C, HW, divisor, sob, soc, sohw, swc, swhw, channels_per_filter,
                     HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    offs_hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_hw[None, :] < HW)
    g = tl.load(g_ptr + b * C + offs_c, mask=mask_c, other=0.0).to(ACC) / divisor
    v = tl.broadcast_to(g[:, None], (BLOCK_C, BLOCK_HW))
    if HAS_WEIGHT:
        w_rows = w_ptr + (offs_c[:, None] // channels_per_filter) * swc
        v = v * tl.load(w_rows + offs_hw[None, :] * swhw, mask=mask, other=0.0).to(ACC)
    out = gx_ptr + b * sob + offs_c[:, None].to(tl.int64) * soc + offs_hw[None, :].to(tl.int64) * sohw
    tl.store(out, v.to(gx_ptr.dtype.element_ty), mask=mask)


def pool_backward(grad: torch.Tensor, weight: torch.Tensor | None, height: int, width: int,
                  dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """The gradient of :func:`pool` with respect to x, (B, C, H, W) in ``dtype`` and x's memory format."""
    b, c = grad.shape
    hw = height * width
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gx = torch.empty(b, c, height, width, dtype=dtype, device=grad.device, memory_format=fmt)
    if gx.numel() == 0:
        return gx
    grad = grad.contiguous()
    channels_fast = _channels_fast(gx)
    block_c, block_hw = _tiles(c, hw, channels_fast)
    w2, swc, swhw, per_filter = _filter_rows(weight, c, hw, channels_fast, grad)
    grid = (triton.cdiv(hw, block_hw), triton.cdiv(c, block_c), b)
    _pool_bwd_kernel[grid](grad, w2, gx, c, hw, hw if weight is None else 1, *_bchw_strides(gx), swc, swhw,
                           per_filter,
                           HAS_WEIGHT=weight is not None, ACC=accumulator(grad.dtype),
                           BLOCK_C=block_c, BLOCK_HW=block_hw)
    return gx


# ----------------------------------------------------------------------------------------------
# rescale: out = [relu](x * gate[b, c] [+ shortcut])
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=_CONFIGS, key=["C", "HW", "BLOCK_C", "BLOCK_HW"])
@triton.jit
def _scale_fwd_kernel(x_ptr, gate_ptr, sc_ptr, out_ptr, C, HW, sxb, sxc, sxhw, ssb, ssc, sshw,
                      HAS_SHORTCUT: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    offs_hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    mask_c = offs_c < C
    mask = mask_c[:, None] & (offs_hw[None, :] < HW)
    g = tl.load(gate_ptr + b * C + offs_c, mask=mask_c, other=0.0).to(ACC)  # already in x's dtype
    c64 = offs_c[:, None].to(tl.int64)
    hw64 = offs_hw[None, :].to(tl.int64)
    x_off = b * sxb + c64 * sxc + hw64 * sxhw  # out is allocated with x's strides
    y = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(ACC) * g[:, None]
    if HAS_SHORTCUT:
        y += tl.load(sc_ptr + b * ssb + c64 * ssc + hw64 * sshw, mask=mask, other=0.0).to(ACC)
    if RELU:
        y = tl.where(y < 0, 0.0, y)  # keeps NaN, as torch.relu does
    tl.store(out_ptr + x_off, y.to(out_ptr.dtype.element_ty), mask=mask)


def channel_scale(x: torch.Tensor, gate: torch.Tensor, shortcut: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """[relu](x * gate[:, :, None, None] [+ shortcut]) in one pass, written once in x's layout and dtype."""
    x = as_dense(x)
    out = torch.empty_like(x)
    b, c, h, w = x.shape
    hw = h * w
    if out.numel() == 0:
        return out
    # the reference multiplies by the gate rounded to x's dtype; PyTorch rounds it (the interpreter's
    # in-kernel fp32 -> bf16 cast truncates instead of rounding to nearest)
    gate = gate.to(x.dtype).contiguous()
    if shortcut is not None:
        shortcut = as_readable(shortcut)
    block_c, block_hw = _tiles(c, hw, _channels_fast(x))
    grid = (triton.cdiv(hw, block_hw), triton.cdiv(c, block_c), b)
    s_strides = _bchw_strides(shortcut) if shortcut is not None else (0, 0, 0)
    _scale_fwd_kernel[grid](x, gate, shortcut if shortcut is not None else x, out, c, hw,
                            *_bchw_strides(x), *s_strides,
                            HAS_SHORTCUT=shortcut is not None, RELU=relu, ACC=accumulator(x.dtype),
                            BLOCK_C=block_c, BLOCK_HW=block_hw)
    return out


# ----------------------------------------------------------------------------------------------
# rescale backward, one pass over the map:
#   gm = grad * (out > 0) if relu else grad
#   grad_x = gm * gate;  grad_shortcut = gm;  grad_gate[b, c] = sum_hw gm * x
# ----------------------------------------------------------------------------------------------
@triton.autotune(configs=_CONFIGS, key=["C", "HW", "BLOCK_C", "BLOCK_HW"])
@triton.jit
def _scale_bwd_kernel(go_ptr, x_ptr, gate_ptr, out_ptr, gx_ptr, gs_ptr, part_ptr,
                      C, HW, n_cblocks, hw_per_split,
                      sgb, sgc, sghw, sxb, sxc, sxhw, sob, soc, sohw,
                      RELU: tl.constexpr, NEED_X: tl.constexpr, NEED_GATE: tl.constexpr,
                      NEED_SHORTCUT: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // n_cblocks).to(tl.int64)
    offs_c = (pid % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    c64 = offs_c[:, None].to(tl.int64)
    hw_lo = split * hw_per_split
    hw_hi = tl.minimum(hw_lo + hw_per_split, HW)
    g = tl.load(gate_ptr + b * C + offs_c, mask=mask_c, other=0.0).to(ACC)  # already in x's dtype
    acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=ACC)
    for start in range(hw_lo, hw_hi, BLOCK_HW):
        offs_hw = start + tl.arange(0, BLOCK_HW)
        hw64 = offs_hw[None, :].to(tl.int64)
        mask = mask_c[:, None] & (offs_hw[None, :] < hw_hi)
        go = tl.load(go_ptr + b * sgb + c64 * sgc + hw64 * sghw, mask=mask, other=0.0).to(ACC)
        if RELU:
            o = tl.load(out_ptr + b * sob + c64 * soc + hw64 * sohw, mask=mask, other=0.0)
            go = tl.where(o > 0, go, 0.0)
        x_off = b * sxb + c64 * sxc + hw64 * sxhw  # grad_x and grad_shortcut are allocated like x
        if NEED_SHORTCUT:
            tl.store(gs_ptr + x_off, go.to(gs_ptr.dtype.element_ty), mask=mask)
        if NEED_X:
            tl.store(gx_ptr + x_off, (go * g[:, None]).to(gx_ptr.dtype.element_ty), mask=mask)
        if NEED_GATE:
            acc += go * tl.load(x_ptr + x_off, mask=mask, other=0.0).to(ACC)
    if NEED_GATE:
        row = b * tl.num_programs(1) + split
        tl.store(part_ptr + row * C + offs_c, tl.sum(acc, axis=1), mask=mask_c)


def channel_scale_backward(grad: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor | None,
                           need_x: bool, need_gate: bool, need_shortcut: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_gate, grad_shortcut) of :func:`channel_scale`; ``out`` is the saved output when relu.

    A gradient that is not needed comes back as an empty tensor and is never computed."""
    x = as_dense(x)
    b, c, h, w = x.shape
    hw = h * w
    grad = as_readable(grad)
    if out is not None:
        out = as_readable(out)
    gate_c = gate.to(x.dtype).contiguous()  # rounded as in the forward
    acc = _acc_dtype(x.dtype)
    gx = torch.empty_like(x) if need_x else x.new_empty(0)
    gs = torch.empty_like(x) if need_shortcut else x.new_empty(0)
    channels_fast = _channels_fast(x)
    block_c, block_hw = _tiles(c, hw, channels_fast)
    n_cblocks = triton.cdiv(c, block_c)
    splits, per_split = _splits(b, n_cblocks, hw, block_hw, x.device) if hw else (1, 1)
    part = torch.zeros(b, splits, c, dtype=acc, device=x.device) if need_gate else x.new_empty(0, dtype=acc)
    if x.numel() > 0 and (need_x or need_gate or need_shortcut):
        # outputs that are not needed are never touched (their code is compiled out); x stands in
        _scale_bwd_kernel[(b * n_cblocks, splits)](
            grad, x, gate_c, out if out is not None else grad, gx if need_x else x, gs if need_shortcut else x,
            part if need_gate else x, c, hw, n_cblocks, per_split,
            *_bchw_strides(grad), *_bchw_strides(x), *(_bchw_strides(out) if out is not None else (0, 0, 0)),
            RELU=out is not None, NEED_X=need_x, NEED_GATE=need_gate, NEED_SHORTCUT=need_shortcut,
            ACC=accumulator(x.dtype), BLOCK_C=block_c, BLOCK_HW=block_hw)
    if need_gate:
        gg = (part[:, 0] if splits == 1 else part.sum(dim=1)).to(gate.dtype)
    else:
        gg = gate.new_empty(0)
    return gx, gg, gs
