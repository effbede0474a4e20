"""Triton kernels of the channel-attention excitations (:mod:`zoo.kernels.channel_excite`).

Imported lazily, on the first launch, so a machine without Triton never imports it; ``TRITON_INTERPRET=1``
must be set before *triton* is imported (see :mod:`zoo.kernels._triton_channel_gate`).

- MLP (SE, CA, FcaNet): one program per sample. It sums ``W1 s`` over tiles of (BLOCK_R, BLOCK_C) into
  the hidden vector (all R in registers), adds b1, rounds to the weights' dtype as the layer's output
  would be, applies ReLU or SiLU, then walks the C outputs tile by tile: ``sigmoid(W2 h + b2)``. The
  weights (2 C R values) are read once per sample, from L2 after the first. Bottlenecks wider than
  MAX_R (not seen in these models: R = C / 16) run the PyTorch reference.
- ECA's conv: a program per (sample, block of channels); each output reads its k neighbours (masked
  at the edges: the zero padding) and the k taps.

Arithmetic in fp32 (fp64 for fp64 inputs). Block sizes are untimed (no GPU was available to tune them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_common import accumulator, interpreter_checked
from .channel_excite import excite_mlp_reference

_INTERPRET = interpreter_checked()

# Module attributes so the tests can shrink them and exercise the tile loops.
TILE = 4096  # BLOCK_R * BLOCK_C of an MLP tile
MAX_R = 1024  # widest bottleneck kept in registers
BLOCK_C_CONV = 256

_CONFIGS = [triton.Config({}, num_warps=4)] if _INTERPRET else [triton.Config({}, num_warps=w) for w in (2, 4, 8)]


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def mlp_gate_row(s_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, row, C, R,
                 HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """One gate row: ``out[row:row + C] = sigmoid(W2 act(W1 s + b1) + b2)`` with ``s = s_ptr[row:row + C]``
    rounded to the weights' (out's) dtype first, as the block casts the pooled vector to its layers' dtype.
    Shared by the excitation kernel and the fused squeeze-excite kernel (:mod:`zoo.kernels._triton_squeeze_excite`)."""
    dtype = out_ptr.dtype.element_ty
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    hidden = tl.zeros((BLOCK_R,), dtype=ACC)
    for start in range(0, C, BLOCK_C):
        offs_c = start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        s = tl.load(s_ptr + row + offs_c, mask=mask_c, other=0.0).to(dtype).to(ACC)
        w1 = tl.load(w1_ptr + offs_r[:, None] * C + offs_c[None, :], mask=mask_r[:, None] & mask_c[None, :],
                     other=0.0).to(ACC)  # (BLOCK_R, BLOCK_C) of W1 (R, C)
        hidden += tl.sum(w1 * s[None, :], axis=1)
    if HAS_B1:
        hidden += tl.load(b1_ptr + offs_r, mask=mask_r, other=0.0).to(ACC)
    hidden = hidden.to(dtype).to(ACC)  # the first layer's output, in the layers' dtype
    if SILU:
        hidden = hidden * _sigmoid(hidden)
    else:
        hidden = tl.maximum(hidden, 0.0)
    hidden = tl.where(mask_r, hidden.to(dtype).to(ACC), 0.0)
    for start in range(0, C, BLOCK_C):
        offs_c = start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        w2 = tl.load(w2_ptr + offs_c[:, None] * R + offs_r[None, :], mask=mask_c[:, None] & mask_r[None, :],
                     other=0.0).to(ACC)  # (BLOCK_C, BLOCK_R) of W2 (C, R)
        logit = tl.sum(w2 * hidden[None, :], axis=1)
        if HAS_B2:
            logit += tl.load(b2_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
        gate = _sigmoid(logit.to(dtype).to(ACC))
        tl.store(out_ptr + row + offs_c, gate.to(dtype), mask=mask_c)


@triton.autotune(configs=_CONFIGS, key=["C", "R", "BLOCK_R", "BLOCK_C"])
@triton.jit
def _mlp_kernel(s_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, C, R,
                HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    mlp_gate_row(s_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, tl.program_id(0).to(tl.int64) * C, C, R,
                 HAS_B1, HAS_B2, SILU, ACC, BLOCK_R, BLOCK_C)


def mlp_blocks(c: int, r: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C) of :func:`mlp_gate_row`: the whole bottleneck, and C in tiles of TILE elements."""
    block_r = triton.next_power_of_2(r)
    return block_r, max(1, min(triton.next_power_of_2(c), TILE // block_r))


def conv_blocks(c: int, k: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_K) of :func:`conv_gate_block`: channels in blocks of up to BLOCK_C_CONV, all k taps."""
    return min(BLOCK_C_CONV, triton.next_power_of_2(c)), triton.next_power_of_2(k)


def excite_mlp(s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
               b2: torch.Tensor | None, act: str) -> torch.Tensor:
    """The kernel behind ``zoo::excite_mlp`` (contiguous inputs of one dtype; checked by the op)."""
    b, c = s.shape
    r = w1.shape[0]
    if r > MAX_R:
        return excite_mlp_reference(s, w1, b1, w2, b2, act)
    out = torch.empty_like(s)
    if out.numel() == 0:
        return out
    block_r, block_c = mlp_blocks(c, r)
    _mlp_kernel[(b,)](s, w1, b1 if b1 is not None else s, w2, b2 if b2 is not None else s, out, c, r,
                      HAS_B1=b1 is not None, HAS_B2=b2 is not None, SILU=act == "silu", ACC=accumulator(s.dtype),
                      BLOCK_R=block_r, BLOCK_C=block_c)
    return out


@triton.jit
def conv_gate_block(s_ptr, w_ptr, out_ptr, row, offs_c, C, K, PAD, ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """The gates of channels ``offs_c`` of one row: ``sigmoid(sum_j w[j] s[c + j - PAD])``, s rounded to
    the taps' (out's) dtype. Shared with the fused squeeze-excite kernel."""
    dtype = out_ptr.dtype.element_ty
    offs_k = tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    mask_k = offs_k < K
    taps = tl.load(w_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
    src = offs_c[:, None] + offs_k[None, :] - PAD  # (BLOCK_C, BLOCK_K): the neighbours of each channel
    inside = mask_c[:, None] & mask_k[None, :] & (src >= 0) & (src < C)  # outside: the zero padding
    window = tl.load(s_ptr + row + src, mask=inside, other=0.0).to(dtype).to(ACC)
    logit = tl.sum(window * taps[None, :], axis=1)
    gate = _sigmoid(logit.to(dtype).to(ACC))
    tl.store(out_ptr + row + offs_c, gate.to(dtype), mask=mask_c)


@triton.autotune(configs=_CONFIGS, key=["C", "K", "BLOCK_C", "BLOCK_K"])
@triton.jit
def _conv_kernel(s_ptr, w_ptr, out_ptr, C, K, PAD, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    conv_gate_block(s_ptr, w_ptr, out_ptr, tl.program_id(0).to(tl.int64) * C, offs_c, C, K, PAD, ACC, BLOCK_K)


def excite_conv(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The kernel behind ``zoo::excite_conv`` (contiguous inputs of one dtype, odd k; checked by the op)."""
    b, c = s.shape
    k = weight.numel()
    out = torch.empty_like(s)
    if out.numel() == 0:
        return out
    block_c, block_k = conv_blocks(c, k)
    _conv_kernel[(b, triton.cdiv(c, block_c))](s, weight, out, c, k, (k - 1) // 2, ACC=accumulator(s.dtype),
                                               BLOCK_C=block_c, BLOCK_K=block_k)
    return out
