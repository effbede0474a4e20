"""Triton kernels of ``zoo::moc_ffn_decode_int``: the quantized MoC FFN's two row-gathering projections.

Imported lazily, on the first launch, by :mod:`zoo.kernels.moc_int`; the per-token requantization between
them is ``quantize_act``'s own kernel. Both kernels repeat their reference's integer arithmetic exactly
(int32 accumulators per segment, then the fp32 epilogue in segment order):

- ``_up_kernel``, a program per (token, block of selected channels): the selected rows of the packed Wu
  (int4 unpacked in registers: byte ``c // 2``, low nibble for even c), dotted with the token's int8
  codes one segment at a time, the epilogue ``acc * a_scale * up_scale[row, segment]``, the bias, then
  v = SiLU(gate) * u * multiplier. The dot products are ``tl.sum`` over a (BLOCK_K, BLOCK_D) tile: each
  row belongs to a different channel, so there is no shared operand for ``tl.dot``.
- ``_down_partial_kernel``, a program per (token, block of output features, chunk of the selected
  channels): for each of its channels (ascending) ``qd[t, k] * Wd^T[idx[t, k], n-block]`` (one
  contiguous packed row) into an int32 accumulator, handed over with an atomic add into the
  (T, groups, N) int32 buffer when the next channel lies in another group. Integer sums are exact in
  any order, so splitting K over programs (a decode step of one token still fills the GPU) changes
  nothing. ``_down_epilogue_kernel`` then sums ``acc * d_scale * scale`` over the groups in order.
  Traffic per token: K rows of Wu and of Wd^T, K / H of the dense integer layers'.

The SiLU uses ``exp``, which may differ from PyTorch's in the last bit, so v matches its reference to
rounding (and, rarely, a requantized code by one step); the down kernel's output equals its reference
bit for bit under the interpreter. Block sizes are fixed, not autotuned: no GPU was lent while writing
this, so they are untimed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_common import interpreter_checked
from .int_gemm import INT4_SYMMETRIC_ZERO

_INTERPRET = interpreter_checked()
_ZERO4 = tl.constexpr(INT4_SYMMETRIC_ZERO)

# Module attributes so the tests can shrink them and exercise every loop on tiny shapes.
UP_BLOCKS = (16, 32) if _INTERPRET else (16, 128)  # (BLOCK_K selected rows, BLOCK_D input channels)
DOWN_BLOCK_N = 32 if _INTERPRET else 128  # output features per down program
DOWN_K_CHUNK = 8 if _INTERPRET else 16  # selected channels per down program (split K: programs = T * N/128 * K/16)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def _up_kernel(q_ptr, a_ptr, g_ptr, idx_ptr, w_ptr, ws_ptr, wz_ptr, bias_ptr, mult_ptr, v_ptr, K, D, W_ROW, G, S,
               SEG_STEP, WEIGHT_BITS: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
               HAS_MULT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    ch = tl.load(idx_ptr + t * K + offs_k, mask=mask_k, other=0).to(tl.int64)  # (BLOCK_K,) selected channels
    a = tl.load(a_ptr + t)
    u = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for seg in range(S):  # segments of G input channels, each with its own int32 accumulator and scale
        zero = tl.full((BLOCK_K,), _ZERO4, dtype=tl.int32)
        if HAS_ZERO:
            zero = tl.load(wz_ptr + ch * S + seg * SEG_STEP, mask=mask_k, other=0).to(tl.int32)
        acc = tl.zeros((BLOCK_K,), dtype=tl.int32)
        for c0 in range(seg * G, seg * G + G, BLOCK_D):
            cols = c0 + tl.arange(0, BLOCK_D)
            mask_c = cols < seg * G + G
            x = tl.load(q_ptr + t * D + cols, mask=mask_c, other=0).to(tl.int32)  # (BLOCK_D,)
            mask = mask_k[:, None] & mask_c[None, :]
            if WEIGHT_BITS == 8:
                w = tl.load(w_ptr + ch[:, None] * W_ROW + cols[None, :], mask=mask, other=0).to(tl.int32)
            else:
                byte = tl.load(w_ptr + ch[:, None] * W_ROW + (cols // 2)[None, :], mask=mask, other=0).to(tl.int32)
                nibble = tl.where((cols % 2 == 0)[None, :], byte & 0xF, byte >> 4)
                w = nibble - zero[:, None]
            acc += tl.sum(w * x[None, :], axis=1)  # masked channels meet x = 0
        ws = tl.load(ws_ptr + ch * S + seg * SEG_STEP, mask=mask_k, other=0.0).to(tl.float32)
        u += acc.to(tl.float32) * a * ws
    if HAS_BIAS:
        u += tl.load(bias_ptr + ch, mask=mask_k, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + t * K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    v = g / (1.0 + tl.exp(-g)) * u  # SiLU(g) * u
    if HAS_MULT:
        v = v * tl.load(mult_ptr + ch, mask=mask_k, other=0.0).to(tl.float32)
    tl.store(v_ptr + t * K + offs_k, v, mask=mask_k)


@triton.jit
def _down_partial_kernel(qd_ptr, idx_ptr, w_ptr, wz_ptr, acc_ptr, K, N, W_ROW, G, S_ACC, SEG_STEP, K_CHUNK,
                         WEIGHT_BITS: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (t, n-block, k-chunk): its K_CHUNK selected channels' rows times their codes, added into the
    (T, groups, N) int32 accumulators with atomics (integer sums: exact in any order)."""
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k0 = tl.program_id(2) * K_CHUNK
    k1 = tl.minimum(k0 + K_CHUNK, K)
    acc = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for j in range(k0, k1):
        ch = tl.load(idx_ptr + t * K + j).to(tl.int64)
        seg = ch // G
        code = tl.load(qd_ptr + t * K + j).to(tl.int32)
        row = w_ptr + ch * W_ROW  # one contiguous row of Wd^T
        if WEIGHT_BITS == 8:
            w = tl.load(row + offs_n, mask=mask_n, other=0).to(tl.int32)
        else:
            byte = tl.load(row + offs_n // 2, mask=mask_n, other=0).to(tl.int32)
            nibble = tl.where(offs_n % 2 == 0, byte & 0xF, byte >> 4)
            if HAS_ZERO:
                w = nibble - tl.load(wz_ptr + seg * SEG_STEP * N + offs_n, mask=mask_n, other=0).to(tl.int32)
            else:
                w = nibble - _ZERO4
        acc += code * w
        # hand the group's sum over when the next selected channel (ascending) lies in another group
        nxt = tl.load(idx_ptr + t * K + tl.minimum(j + 1, k1 - 1)).to(tl.int64)
        if (j == k1 - 1) | (nxt // G != seg):
            tl.atomic_add(acc_ptr + (t * S_ACC + seg) * N + offs_n, acc, mask=mask_n)
            acc = tl.zeros((BLOCK_N,), dtype=tl.int32)


@triton.jit
def _down_epilogue_kernel(acc_ptr, a_ptr, ws_ptr, bias_ptr, y_ptr, N, S_ACC, SEG_STEP, HAS_BIAS: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    """y[t, n-block] = sum over groups, in order, of acc * a_scale[t] * scale[group, n] (+ bias)."""
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    a = tl.load(a_ptr + t)
    total = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for seg in range(S_ACC):  # untouched groups add zero, as in the reference
        acc = tl.load(acc_ptr + (t * S_ACC + seg) * N + offs_n, mask=mask_n, other=0)
        ws = tl.load(ws_ptr + seg * SEG_STEP * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        total += acc.to(tl.float32) * a * ws
    if HAS_BIAS:
        total += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + t * N + offs_n, total, mask=mask_n)


def moc_int_up(q: torch.Tensor, a_scale: torch.Tensor, gate_sel: torch.Tensor, idx: torch.Tensor,
               w_up: torch.Tensor, up_scale: torch.Tensor, up_zero: torch.Tensor | None, up_bias: torch.Tensor | None,
               up_bits: int, up_group: int | None, down_multiplier: torch.Tensor | None) -> torch.Tensor:
    """v (T, K) fp32; see :func:`zoo.kernels.moc_int.moc_int_up_reference`."""
    t, d = q.shape
    k = idx.shape[1]
    v = torch.empty(t, k, dtype=torch.float32, device=q.device)
    if v.numel() == 0:
        return v
    g = up_group or d
    block_k, block_d = UP_BLOCKS
    block_k, block_d = min(block_k, _pow2(k)), min(block_d, _pow2(g))
    scale = up_scale.contiguous()
    dummy = v  # stands in for absent tensors; never read
    _up_kernel[(t, triton.cdiv(k, block_k))](
        q.contiguous(), a_scale.contiguous(), gate_sel.contiguous(), idx.contiguous(), w_up.contiguous(), scale,
        dummy if up_zero is None else up_zero.contiguous(), dummy if up_bias is None else up_bias.contiguous(),
        dummy if down_multiplier is None else down_multiplier.contiguous(), v, k, d, w_up.shape[1], g,
        scale.shape[1], 1 if scale.shape[1] > 1 else 0, WEIGHT_BITS=up_bits, HAS_ZERO=up_zero is not None,
        HAS_BIAS=up_bias is not None, HAS_MULT=down_multiplier is not None, BLOCK_K=block_k, BLOCK_D=block_d)
    return v


def moc_int_down(qd: torch.Tensor, d_scale: torch.Tensor, idx: torch.Tensor, w_down_t: torch.Tensor,
                 down_scale_t: torch.Tensor, down_zero_t: torch.Tensor | None, down_bias: torch.Tensor | None,
                 down_bits: int, down_group: int | None, out_features: int) -> torch.Tensor:
    """y (T, N) fp32; see :func:`zoo.kernels.moc_int.moc_int_down_reference`."""
    t, k = idx.shape
    h, n = w_down_t.shape[0], out_features
    y = torch.zeros(t, n, dtype=torch.float32, device=qd.device)
    if y.numel() == 0:
        return y
    group = down_group or h
    groups = h // group
    acc = torch.zeros(t, groups, n, dtype=torch.int32, device=qd.device)  # exact int32 sums per group
    scale = down_scale_t.contiguous()
    seg_step = 1 if scale.shape[0] > 1 else 0
    block_n = min(DOWN_BLOCK_N, _pow2(n))
    if k:
        _down_partial_kernel[(t, triton.cdiv(n, block_n), triton.cdiv(k, DOWN_K_CHUNK))](
            qd.contiguous(), idx.contiguous(), w_down_t.contiguous(),
            acc if down_zero_t is None else down_zero_t.contiguous(), acc, k, n, w_down_t.shape[1], group, groups,
            seg_step, DOWN_K_CHUNK, WEIGHT_BITS=down_bits, HAS_ZERO=down_zero_t is not None, BLOCK_N=block_n)
    _down_epilogue_kernel[(t, triton.cdiv(n, block_n))](
        acc, d_scale.contiguous(), scale, y if down_bias is None else down_bias.contiguous(), y, n, groups, seg_step,
        HAS_BIAS=down_bias is not None, BLOCK_N=block_n)
    return y
