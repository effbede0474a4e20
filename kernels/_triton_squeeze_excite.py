"""Triton kernel of the fused squeeze and excitation (:mod:`zoo.kernels.squeeze_excite`): one launch from
the feature map to the gate.

The map is pooled as :func:`zoo.kernels._triton_channel_gate.pool` pools it, one program per (sample, channel
block, HW split), each writing its partial sums to a (B, splits, C) scratch. Then each program bumps
its sample's counter, and the program that finds itself last for that sample (the others are done:
their sums are written) adds the partial sums in split order into the pooled vector s, writes it
(the backward needs it), and runs the excitation on it: the MLP row of SE / CA / FcaNet or ECA's
1-D conv, the same code as the excitation kernels (:mod:`zoo.kernels._triton_channel_excite`). So the pooling
keeps every program it would have alone, and the tiny excitation costs no launch of its own.

Ordering: a program's threads write their sums, meet at a barrier, then one thread increments the
counter with acquire-release semantics at GPU scope (the split-K "semaphore" of CUTLASS); the last
program reads the scratch with L1 bypassed (``.cg``), since another program on its SM may have cached
a line of it. The result does not depend on which program comes last: s is summed in split order.
Each launch gets zeroed counters (autotuning's repeated runs too: ``reset_to_zero``).

Imported lazily, on the first launch; ``TRITON_INTERPRET=1`` must be set before *triton* is imported
(see :mod:`zoo.kernels._triton_channel_gate`). The interpreter runs programs one after another, so it checks the
arithmetic and the bookkeeping, not the cross-program ordering (a GPU check).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _triton_channel_excite as excite  # its tile sizes, read at launch (tests shrink them)
from ._triton_common import accumulator, interpreter_checked
from ._triton_channel_excite import conv_gate_block, mlp_gate_row
from ._triton_channel_gate import _bchw_strides, as_readable, plan_pool, pool, pool_program
from .channel_excite import excite_conv_reference, excite_mlp_reference
from .channel_gate import _acc_dtype

_INTERPRET = interpreter_checked()

BLOCK_S = 1024  # channels per step when the last program sums the partial rows into s

_CONFIGS = [triton.Config({}, num_warps=4)] if _INTERPRET else [triton.Config({}, num_warps=w) for w in (2, 4, 8)]


@triton.autotune(configs=_CONFIGS, key=["C", "HW", "R", "K", "BLOCK_C", "BLOCK_HW"], reset_to_zero=["count_ptr"])
@triton.jit
def _squeeze_excite_kernel(x_ptr, f_ptr, part_ptr, count_ptr, s_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, gate_ptr,
                           C, HW, R, K, n_cblocks, hw_per_split, divisor, sxb, sxc, sxhw, sfc, sfhw,
                           channels_per_filter,
                           HAS_FILTER: tl.constexpr, CONV: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
                           SILU: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                           BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_EC: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    b = pool_program(x_ptr, f_ptr, part_ptr, C, HW, n_cblocks, hw_per_split, divisor, sxb, sxc, sxhw, sfc, sfhw,
                     channels_per_filter, HAS_FILTER, ACC, BLOCK_C, BLOCK_HW)
    splits = tl.num_programs(1)
    part_rows = part_ptr + b.to(tl.int64) * splits * C  # (splits, C) of this sample
    tl.debug_barrier()  # every thread's sums are written before the program reports done
    done = tl.atomic_add(count_ptr + b, 1, sem="acq_rel")
    if done == n_cblocks * splits - 1:  # the sample's last program: the whole of s is in the scratch
        row = b.to(tl.int64) * C
        for start in range(0, C, BLOCK_S):
            offs_s = start + tl.arange(0, BLOCK_S)
            mask_s = offs_s < C
            s = tl.zeros((BLOCK_S,), dtype=ACC)
            for j in range(0, splits):
                s += tl.load(part_rows + j * C + offs_s, mask=mask_s, other=0.0, cache_modifier=".cg")
            tl.store(s_ptr + row + offs_s, s, mask=mask_s)
        tl.debug_barrier()  # s is whole before the excitation reads it
        if CONV:
            for start in range(0, C, BLOCK_EC):
                conv_gate_block(s_ptr, w1_ptr, gate_ptr, row, start + tl.arange(0, BLOCK_EC), C, K, (K - 1) // 2,
                                ACC, BLOCK_K)
        else:
            mlp_gate_row(s_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, gate_ptr, row, C, R, HAS_B1, HAS_B2, SILU, ACC,
                         BLOCK_R, BLOCK_EC)


def _launch(x: torch.Tensor, pool_filter: torch.Tensor | None, w1: torch.Tensor, b1, w2, b2, conv: bool,
            silu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    plan = plan_pool(x, pool_filter)
    s = torch.empty(b, c, dtype=_acc_dtype(x.dtype), device=x.device)
    gate = torch.empty(b, c, dtype=w1.dtype, device=x.device)
    part = torch.empty(b, plan.splits, c, dtype=s.dtype, device=x.device)
    count = torch.zeros(b, dtype=torch.int32, device=x.device)
    if conv:
        r, k = 1, w1.numel()
        block_r, (block_ec, block_k) = 1, excite.conv_blocks(c, k)
    else:
        r, k = w1.shape[0], 1
        (block_r, block_ec), block_k = excite.mlp_blocks(c, r), 1
    _squeeze_excite_kernel[(b * plan.n_cblocks, plan.splits)](
        x, plan.filter_rows, part, count, s, w1, b1 if b1 is not None else w1, w2 if w2 is not None else w1,
        b2 if b2 is not None else w1, gate, c, h * w, r, k, plan.n_cblocks, plan.per_split, plan.divisor,
        *_bchw_strides(x), *plan.filter_strides, plan.channels_per_filter,
        HAS_FILTER=pool_filter is not None, CONV=conv, HAS_B1=b1 is not None, HAS_B2=b2 is not None, SILU=silu,
        ACC=accumulator(x.dtype), BLOCK_C=plan.block_c, BLOCK_HW=plan.block_hw,
        BLOCK_S=min(BLOCK_S, triton.next_power_of_2(c)), BLOCK_R=block_r, BLOCK_EC=block_ec, BLOCK_K=block_k)
    return gate, s


def squeeze_excite_mlp(x: torch.Tensor, pool_filter: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor | None,
                       w2: torch.Tensor, b2: torch.Tensor | None, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel behind ``zoo::squeeze_excite_mlp`` (contiguous weights of one dtype; checked by the op)."""
    x = as_readable(x)
    b, c, h, w = x.shape
    if b * c == 0 or h * w == 0 or w1.shape[0] > excite.MAX_R:
        # nothing to launch for, or a bottleneck too wide for registers: the pool kernel, then the
        # excitation's reference as the tiny second step
        s = pool(x, pool_filter)
        return excite_mlp_reference(s.to(w1.dtype), w1, b1, w2, b2, act), s
    return _launch(x, pool_filter, w1, b1, w2, b2, conv=False, silu=act == "silu")


def squeeze_excite_conv(x: torch.Tensor, pool_filter: torch.Tensor | None,
                        taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel behind ``zoo::squeeze_excite_conv`` (contiguous odd taps; checked by the op)."""
    x = as_readable(x)
    b, c, h, w = x.shape
    if b * c == 0 or h * w == 0:
        s = pool(x, pool_filter)
        return excite_conv_reference(s.to(taps.dtype), taps), s
    return _launch(x, pool_filter, taps, None, None, None, conv=True, silu=False)
