"""Triton kernel of ``zoo::csam`` (HAN's channel-spatial attention), forward.

Imported lazily, on the first launch, so a machine without Triton never imports it; ``TRITON_INTERPRET=1``
must be set before *triton* is imported (see :mod:`zoo.kernels._triton_channel_gate`).

One program per (sample, channel, block of BLOCK_HW positions): it loads the 27 taps and the bias,
sums the 27 shifted reads of x (channel c - 1..c + 1, row h - 1..h + 1, column w - 1..w + 1, masked
outside the volume: the zero padding), and writes ``x * (1 + gamma * sigmoid(z))`` once. Neighbouring
programs read the same lines, so x comes from cache after the first read. Any strides (NCHW or
channels_last) through (B, C, H, W) strides; fp32 arithmetic (fp64 for fp64). Block size untimed
(no GPU was available to tune it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_common import accumulator, interpreter_checked
from .channel_gate import _empty_out

_INTERPRET = interpreter_checked()

BLOCK_HW = 256  # a module attribute so the tests can shrink it
_CONFIGS = [triton.Config({}, num_warps=4)] if _INTERPRET else [triton.Config({}, num_warps=w) for w in (2, 4, 8)]


@triton.autotune(configs=_CONFIGS, key=["C", "H", "W", "BLOCK"])
@triton.jit
def _csam_kernel(x_ptr, w_ptr, bias_ptr, gamma_ptr, out_ptr, C, H, W, sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                 ACC: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)  # b * C + c
    b = (plane // C).to(tl.int64)
    c = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    h = offs // W
    w = offs % W
    inside = offs < H * W
    x_plane = x_ptr + b * sxb
    logit = tl.zeros((BLOCK,), dtype=ACC) + tl.load(bias_ptr).to(ACC)
    for tap in tl.static_range(27):
        dc = tap // 9 - 1
        dh = (tap // 3) % 3 - 1
        dw = tap % 3 - 1
        cc = c + dc
        hh = h + dh
        ww = w + dw
        ok = inside & (cc >= 0) & (cc < C) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        ptr = x_plane + cc.to(tl.int64) * sxc + hh.to(tl.int64) * sxh + ww.to(tl.int64) * sxw
        logit += tl.load(w_ptr + tap).to(ACC) * tl.load(ptr, mask=ok, other=0.0).to(ACC)
    # HAN's arithmetic in x's dtype: the conv's output, the gate and gamma * gate are each rounded once
    dtype = out_ptr.dtype.element_ty
    logit = logit.to(dtype).to(ACC)
    gate = (1.0 / (1.0 + tl.exp(-logit))).to(dtype).to(ACC)
    scaled = (tl.load(gamma_ptr).to(ACC) * gate).to(dtype).to(ACC)
    x = tl.load(x_plane + c.to(tl.int64) * sxc + h.to(tl.int64) * sxh + w.to(tl.int64) * sxw, mask=inside,
                other=0.0).to(ACC)
    y = (x * scaled).to(dtype).to(ACC) + x
    out = out_ptr + b * sob + c.to(tl.int64) * soc + h.to(tl.int64) * soh + w.to(tl.int64) * sow
    tl.store(out, y.to(dtype), mask=inside)


def csam(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The kernel behind ``zoo::csam``: y in x's dtype, NCHW or channels_last as x (else NCHW)."""
    b, c, h, w = x.shape
    out = _empty_out(x)
    if out.numel() == 0:
        return out
    block = min(BLOCK_HW, triton.next_power_of_2(h * w))
    _csam_kernel[(b * c, triton.cdiv(h * w, block))](x, weight, bias, gamma, out, c, h, w, *x.stride(), *out.stride(),
                                                     ACC=accumulator(x.dtype), BLOCK=block)
    return out
