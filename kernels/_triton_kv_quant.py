"""Triton kernels of ``zoo::kv_quantize`` and ``zoo::kv_dequantize`` (KIVI-style KV-cache quantization).

Imported lazily, on the first launch, by :mod:`zoo.kernels.kv_quant`, so a machine without Triton never imports
it. ``TRITON_INTERPRET=1`` must be set before *triton* is imported (see :mod:`zoo.kernels._triton_channel_gate`).

Notation: x of shape S viewed as (O, A, I) around the quantized axis (O = prod S[:axis], A = S[axis],
I = prod S[axis+1:]), G = A // GS groups; scale and zero are (O, G, I) contiguous. The packed codes are
(R, NB) with R = prod S[:-1] rows and NB = ceil(D / PER_BYTE) bytes per row, D = S[-1].

- statistics: one program per BLOCK_N groups (n = (o * G + g) * I + i, the index of the group's scale),
  min and max over the group's GS elements in BLOCK_S steps (stride I in x: contiguous across n when the
  axis is not the last, contiguous along the group when it is), then ``scale = (max - min) / qmax``
  rounded to x's dtype (correctly rounded division, ``tl.div_rn``: a plain ``/`` is approximate on
  NVIDIA GPUs; bf16 rounding written with integer ops, because the interpreter's fp32 -> bf16 cast
  truncates) and ``zero = min``.
- codes: one program per (BLOCK_R rows, BLOCK_J bytes) tile; for each of the PER_BYTE codes of a byte
  (a static loop) it loads x, the element's scale and zero (a gather; the group index needs per-row
  integer math only), rounds half to even with floor and compares, and ORs the code into its bits.
- dequantization: the same tiles over the packed bytes, ``code * scale + zero`` in fp32.

Quantization reads x twice (statistics, then codes): a KV cache quantizes each group of tokens once, and
the two-pass form handles every axis, group size and ragged last dim with the same two kernels.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._triton_common import interpreter_checked

_INTERPRET = interpreter_checked()

_ROUND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # how the scale is rounded to x's dtype


def _configs(tiles: list[tuple[int, int, int]], names: tuple[str, str]) -> list[triton.Config]:
    """One config in the interpreter (it cannot autotune more); the given (block, block, warps) on GPU."""
    if _INTERPRET:
        return [triton.Config({names[0]: 16, names[1]: 16}, num_warps=4)]
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w) for a, b, w in tiles]


@triton.jit
def _round_to_storage(v, ROUND: tl.constexpr):
    """fp32 v rounded to nearest even in the storage dtype (0: fp32, 1: fp16, 2: bf16), as fp32."""
    if ROUND == 1:
        v = v.to(tl.float16).to(tl.float32)
    elif ROUND == 2:  # finite non-negative v: add half an ulp of bf16 (minus 1 unless the kept bit is odd)
        bits = v.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        v = bits.to(tl.float32, bitcast=True)
    return v


@triton.jit
def _round_half_even(v):
    """Round to the nearest integer, ties to even: floor and an exact tie test (v - floor(v) is exact)."""
    f = tl.floor(v)
    d = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)


# ----------------------------------------------------------------------------------------------
# statistics: scale and zero of each group
# ----------------------------------------------------------------------------------------------
@triton.autotune(_configs([(64, 32, 4), (128, 32, 4), (128, 64, 8), (256, 16, 8)], ("BLOCK_N", "BLOCK_S")),
                 key=["N_BUCKET", "GS", "INNER_BUCKET"])
@triton.jit
def _stats_kernel(x_ptr, scale_ptr, zero_ptr, N, INNER, GS, N_BUCKET, INNER_BUCKET, QMAX: tl.constexpr,
                  ROUND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # element (o, g * GS + s, i) of the (O, A, I) view sits at (o * G + g) * GS * I + s * I + i
    base = (offs_n // INNER) * GS * INNER + offs_n % INNER
    lo = tl.full((BLOCK_N,), float("inf"), tl.float32)
    hi = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    for s0 in range(0, GS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = mask_n[:, None] & (offs_s < GS)[None, :]
        v = tl.load(x_ptr + base[:, None] + offs_s[None, :].to(tl.int64) * INNER, mask=mask, other=0.0)
        v = v.to(tl.float32)
        lo = tl.minimum(lo, tl.min(tl.where(mask, v, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(mask, v, float("-inf")), axis=1))
    lo = tl.where(mask_n, lo, 0.0)  # rows past the end: keep inf - inf out of the math
    hi = tl.where(mask_n, hi, 0.0)
    scale = _round_to_storage(tl.div_rn(hi - lo, tl.full((BLOCK_N,), QMAX, tl.float32)), ROUND)
    # both values are exact in the storage dtype, so the store's cast does not round
    tl.store(scale_ptr + offs_n, scale.to(scale_ptr.dtype.element_ty), mask=mask_n)
    tl.store(zero_ptr + offs_n, lo.to(zero_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _group_index(offs_r, d, D, A, INNER, ROWS_PER_STEP, G, GS, LAST_AXIS: tl.constexpr):
    """(BLOCK_R, BLOCK_J) int64 index into scale/zero of the elements at rows offs_r, columns d."""
    if LAST_AXIS:  # groups run along the last dim: row r owns scales r * G .. r * G + G - 1
        idx = offs_r[:, None] * G + (d // GS)[None, :]
    else:  # a row is (o, a, i_hi) with I = ROWS_PER_STEP * D: integer division per row, not per element
        i_hi = offs_r % ROWS_PER_STEP
        a = (offs_r // ROWS_PER_STEP) % A
        o = offs_r // (ROWS_PER_STEP * A)
        idx = ((o * G + a // GS) * INNER + i_hi * D)[:, None] + d[None, :]
    return idx


# ----------------------------------------------------------------------------------------------
# codes: quantize with the stored scale and zero, pack PER_BYTE codes per byte along the last dim
# ----------------------------------------------------------------------------------------------
_TILE_KEY = ["R_BUCKET", "NB", "PER_BYTE", "LAST_AXIS"]


@triton.autotune(_configs([(32, 32, 4), (64, 32, 4), (64, 64, 8), (128, 16, 4)], ("BLOCK_R", "BLOCK_J")),
                 key=_TILE_KEY)
@triton.jit
def _codes_kernel(x_ptr, scale_ptr, zero_ptr, codes_ptr, R, D, NB, A, INNER, ROWS_PER_STEP, G, GS, R_BUCKET,
                  QMAX: tl.constexpr, BITS: tl.constexpr, PER_BYTE: tl.constexpr, LAST_AXIS: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_r = offs_r < R
    packed = tl.zeros((BLOCK_R, BLOCK_J), dtype=tl.int32)
    for k in tl.static_range(PER_BYTE):
        d = offs_j * PER_BYTE + k  # (BLOCK_J,) column of the code in bits k * BITS of byte j
        mask = mask_r[:, None] & (d < D)[None, :]
        grp = _group_index(offs_r, d, D, A, INNER, ROWS_PER_STEP, G, GS, LAST_AXIS)
        x = tl.load(x_ptr + offs_r[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + grp, mask=mask, other=1.0).to(tl.float32)
        zero = tl.load(zero_ptr + grp, mask=mask, other=0.0).to(tl.float32)
        scale = tl.where(scale == 0.0, 1.0, scale)  # a constant group: code 0
        code = _round_half_even(tl.div_rn(x - zero, scale))
        code = tl.minimum(tl.maximum(code, 0.0), QMAX)
        code = tl.where(mask, code, 0.0).to(tl.int32)  # padding past the last element: code 0
        packed = packed | (code << (k * BITS))
    mask = mask_r[:, None] & (offs_j < NB)[None, :]
    tl.store(codes_ptr + offs_r[:, None] * NB + offs_j[None, :], packed.to(tl.uint8), mask=mask)


# ----------------------------------------------------------------------------------------------
# dequantization: code * scale + zero
# ----------------------------------------------------------------------------------------------
@triton.autotune(_configs([(32, 32, 4), (64, 32, 4), (64, 64, 8), (128, 16, 4)], ("BLOCK_R", "BLOCK_J")),
                 key=_TILE_KEY)
@triton.jit
def _dequant_kernel(codes_ptr, scale_ptr, zero_ptr, out_ptr, R, D, NB, A, INNER, ROWS_PER_STEP, G, GS, R_BUCKET,
                    BITS: tl.constexpr, PER_BYTE: tl.constexpr, LAST_AXIS: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_r = offs_r < R
    mask_b = mask_r[:, None] & (offs_j < NB)[None, :]
    packed = tl.load(codes_ptr + offs_r[:, None] * NB + offs_j[None, :], mask=mask_b, other=0).to(tl.int32)
    for k in tl.static_range(PER_BYTE):
        d = offs_j * PER_BYTE + k
        mask = mask_r[:, None] & (d < D)[None, :]
        grp = _group_index(offs_r, d, D, A, INNER, ROWS_PER_STEP, G, GS, LAST_AXIS)
        scale = tl.load(scale_ptr + grp, mask=mask, other=0.0).to(tl.float32)
        zero = tl.load(zero_ptr + grp, mask=mask, other=0.0).to(tl.float32)
        code = ((packed >> (k * BITS)) & ((1 << BITS) - 1)).to(tl.float32)
        tl.store(out_ptr + offs_r[:, None] * D + d[None, :], (code * scale + zero).to(out_ptr.dtype.element_ty),
                 mask=mask)


def _pow2_bucket(n: int) -> int:
    return min(triton.next_power_of_2(max(int(n), 1)), 1 << 20)


def _geometry(shape: tuple[int, ...], group_size: int, axis: int) -> dict:
    """Sizes the kernels index with; see the module docstring."""
    d = shape[-1]
    inner = math.prod(shape[axis + 1:])
    return {"R": math.prod(shape[:-1]), "D": d, "A": shape[axis], "INNER": inner,
            "ROWS_PER_STEP": max(inner // max(d, 1), 1), "G": shape[axis] // group_size, "GS": group_size,
            "LAST_AXIS": axis == len(shape) - 1}


def kv_quantize(x: torch.Tensor, bits: int, group_size: int, axis: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, zero) of contiguous x; see :func:`zoo.kernels.kv_quant.kv_quantize_reference`."""
    x = x.contiguous()
    shape = tuple(x.shape)
    geo = _geometry(shape, group_size, axis)
    per_byte = 8 // bits
    nb = -(-geo["D"] // per_byte)
    stats = shape[:axis] + (geo["G"],) + shape[axis + 1:]
    scale = torch.empty(stats, dtype=x.dtype, device=x.device)
    zero = torch.empty(stats, dtype=x.dtype, device=x.device)
    codes = torch.empty((*shape[:-1], nb), dtype=torch.uint8, device=x.device)
    if x.numel() == 0:
        return codes, scale, zero
    n = scale.numel()
    _stats_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        x, scale, zero, n, geo["INNER"], group_size, _pow2_bucket(n), _pow2_bucket(geo["INNER"]),
        QMAX=2**bits - 1, ROUND=_ROUND[x.dtype])
    r = geo["R"]
    _codes_kernel[lambda meta: (triton.cdiv(r, meta["BLOCK_R"]), triton.cdiv(nb, meta["BLOCK_J"]))](
        x, scale, zero, codes, r, geo["D"], nb, geo["A"], geo["INNER"], geo["ROWS_PER_STEP"], geo["G"], group_size,
        _pow2_bucket(r), QMAX=2**bits - 1, BITS=bits, PER_BYTE=per_byte, LAST_AXIS=geo["LAST_AXIS"])
    return codes, scale, zero


def kv_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                  axis: int, last_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """(S) tensor in dtype; see :func:`zoo.kernels.kv_quant.kv_dequantize_reference`."""
    codes, scale, zero = codes.contiguous(), scale.contiguous(), zero.contiguous()
    shape = (*codes.shape[:-1], last_dim)
    geo = _geometry(shape, group_size, axis)
    # the interpreter's fp32 -> bf16 cast truncates: it writes fp32 and PyTorch rounds (as the reference)
    store = torch.float32 if _INTERPRET and dtype == torch.bfloat16 else dtype
    out = torch.empty(shape, dtype=store, device=codes.device)
    if out.numel() == 0:
        return out.to(dtype)
    per_byte, nb, r = 8 // bits, codes.shape[-1], geo["R"]
    _dequant_kernel[lambda meta: (triton.cdiv(r, meta["BLOCK_R"]), triton.cdiv(nb, meta["BLOCK_J"]))](
        codes, scale, zero, out, r, last_dim, nb, geo["A"], geo["INNER"], geo["ROWS_PER_STEP"], geo["G"], group_size,
        _pow2_bucket(r), BITS=bits, PER_BYTE=per_byte, LAST_AXIS=geo["LAST_AXIS"])
    return out.to(dtype)
