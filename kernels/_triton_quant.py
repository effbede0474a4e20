"""Triton kernels of the integer path: per-token int8 activation quantization and the implicit-GEMM
int8 / int4 convolution (a linear layer is its 1 x 1 case).

Imported lazily, on the first launch, by :mod:`kernels.quant_act` and :mod:`kernels.int_gemm`, so a
machine without Triton never imports it. ``TRITON_INTERPRET=1`` must be set before *triton* is
imported (see :mod:`kernels._triton_gate`); a mismatch is reported on import with that advice.

Both kernels repeat their reference's arithmetic in the same order, so that under the interpreter
the int8 codes, the int32 accumulators and even the float outputs equal the reference bit for bit;
compiled for a GPU, the float outputs may differ in their last bits where the compiler contracts
the epilogue's multiply-add into an FMA:

- ``quantize_act``: ``(x - shift) * multiplier`` in fp32, ``amax / 127`` and ``v / scale`` with
  correctly rounded division (``tl.div_rn``: a plain ``/`` compiles to an approximate division on
  NVIDIA GPUs), then round half to even written with floor and compares (no libdevice ``rint``, which
  the interpreter lacks);
- ``int_conv2d``: one int32 ``tl.dot`` accumulator per (tap, group) segment, then
  ``total += acc * a_scale[pixel] * w_scale[n, segment]`` in tap-major, group-minor order, then the bias.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# no import cycle: kernels.int_gemm and kernels.quant_act import this module lazily
from ._triton_common import interpreter_checked
from .int_gemm import INT4_SYMMETRIC_ZERO, output_size
from .quant_act import QMAX

_INTERPRET = interpreter_checked()

_QMAX = tl.constexpr(float(QMAX))  # module constants a kernel reads must be constexpr
_ZERO4 = tl.constexpr(INT4_SYMMETRIC_ZERO)
# Module attributes so the tests can shrink them and exercise the K loops on tiny shapes.
QUANT_TILE = 4096  # elements per quantize_act program and step
MAX_BLOCK_K_QUANT = 1024  # longest slice of a row quantize_act reads at once
MAX_BLOCK_C = 128  # input channels per tl.dot step of int_conv2d
MIN_BLOCK_C = 16 if _INTERPRET else 32  # tl.dot needs K >= 16; int8 MMA instructions take K = 32


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


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
    """int8 (..., K) codes and fp32 (...) scales of a contiguous ``x`` (..., K); see :mod:`kernels.quant_act`."""
    k = x.shape[-1]
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    m = scale.numel()  # tokens: x is (M, K) row-major
    if m == 0:
        return q, scale
    block_k = min(_pow2(k), MAX_BLOCK_K_QUANT)
    block_m = min(_pow2(m), max(1, QUANT_TILE // block_k))

    def fp32(t: torch.Tensor | None) -> torch.Tensor:  # the reference's .float(), once, on the host
        return scale if t is None else t.float().contiguous()

    _quantize_kernel[(triton.cdiv(m, block_m),)](
        x, fp32(shift), fp32(multiplier), fp32(static_scale), q, scale, m, k,
        m if static_scale is None or static_scale.numel() == 1 else m // static_scale.numel(),
        HAS_SHIFT=shift is not None, HAS_MULT=multiplier is not None, STATIC=static_scale is not None,
        BLOCK_M=block_m, BLOCK_K=block_k, num_warps=4 if block_m * block_k <= 2048 else 8)
    return q, scale


# ----------------------------------------------------------------------------------------------
# int_conv2d: implicit GEMM over M = B * Ho * Wo output pixels and N output channels
# ----------------------------------------------------------------------------------------------
def _conv_configs() -> list[triton.Config]:
    """One config in the interpreter (it cannot autotune more); on GPU decode-like thin tiles (a
    memory-bound weight stream) and square tiles for large M (compute-bound)."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4)]
    shapes = [(16, 32, 4, 4), (16, 64, 4, 4), (16, 128, 4, 3), (32, 64, 4, 4), (64, 64, 4, 4),
              (64, 128, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 256, 8, 3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in shapes]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Skip row tiles far taller than M (a decode GEMM of 1..16 tokens) so autotuning stays short."""
    tallest = max(16, _pow2(named_args["M"]))
    return [c for c in configs if c.kwargs["BLOCK_M"] <= tallest] or configs[:1]


@triton.jit
def _chunk_dot(acc, x_rows, inside, w_base, zero, c_lo, c_start, c_end, mask_n,
               WEIGHT_BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc += q[pixels, c_lo : c_lo + BLOCK_K] @ w[c_lo : c_lo + BLOCK_K, n] over channels in [c_start, c_end)."""
    ch = c_lo + tl.arange(0, BLOCK_K)  # input channels of this chunk
    mask_k = (ch >= c_start) & (ch < c_end)
    x = tl.load(x_rows[:, None] + ch[None, :], mask=inside[:, None] & mask_k[None, :], other=0)
    if WEIGHT_BITS == 8:
        w = tl.load(w_base[None, :] + ch[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0)
    else:
        # c_lo is even: byte i of the chunk holds channels c_lo + 2i (low nibble) and c_lo + 2i + 1 (high).
        # One contiguous (BLOCK_K / 2, BLOCK_N) load, unpacked in registers and interleaved along K;
        # channels outside [c_start, c_end) meet x = 0, so their nibbles need no masking.
        byte_idx = c_lo // 2 + tl.arange(0, BLOCK_K // 2)
        byte = tl.load(w_base[None, :] + byte_idx[:, None], mask=(2 * byte_idx < c_end)[:, None] & mask_n[None, :],
                       other=0).to(tl.int32)
        low = (byte & 0xF) - zero[None, :]
        high = (byte >> 4) - zero[None, :]
        pairs = tl.permute(tl.join(low, high), (0, 2, 1))  # (BLOCK_K / 2, 2, BLOCK_N): channel c_lo + 2i + j
        w = tl.reshape(pairs, (BLOCK_K, BLOCK_N)).to(tl.int8)
    return tl.dot(x, w, acc=acc, out_dtype=tl.int32)


@triton.autotune(configs=_conv_configs(), key=["M_BUCKET", "N", "C", "TAPS", "G", "WEIGHT_BITS", "ACC_ONLY"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _int_conv2d_kernel(q_ptr, a_ptr, w_ptr, ws_ptr, wz_ptr, bias_ptr, out_ptr,
                       M, N, C, H, W, HO, WO, KW, SH, SW, PH, PW, TAPS, G, GROUPS, W_ROW, S, SEG_STEP, M_BUCKET,
                       WEIGHT_BITS: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                       ACC_ONLY: tl.constexpr, ONE_CHUNK: tl.constexpr, MID_BYTE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    ow = offs_m % WO  # output pixel m = (b * HO + oh) * WO + ow
    oh = (offs_m // WO) % HO
    bb = (offs_m // (WO * HO)).to(tl.int64)
    w_rows = w_ptr + offs_n.to(tl.int64) * (TAPS * W_ROW)  # weight (N, TAPS, W_ROW) row of each n
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # one flat loop over (tap, group) segments: with one chunk per segment (group_size <= BLOCK_K) it is
    # the innermost loop, which the GPU compiler software-pipelines
    for seg in range(TAPS * GROUPS):
        tap = seg // GROUPS
        c_seg = (seg % GROUPS) * G  # first input channel of the segment
        ih = oh * SH - PH + tap // KW
        iw = ow * SW - PW + tap % KW
        inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # zero padding reads nothing
        pix = (bb * H + ih) * W + iw  # (BLOCK_M,) index into (B, H, W)
        x_rows = q_ptr + pix * C  # (BLOCK_M,) pointers to the pixels' channel vectors
        w_base = w_rows + tap * W_ROW  # (BLOCK_N,) pointers to the tap's weights
        zero = tl.full((BLOCK_N,), _ZERO4, dtype=tl.int32)
        if HAS_ZERO:
            zero = tl.load(wz_ptr + offs_n * S + seg * SEG_STEP, mask=mask_n, other=0).to(tl.int32)
        c_first = c_seg  # int4 chunks start on a byte: odd groups step back to an even channel, in a
        if MID_BYTE:  # constexpr branch so that even groups keep the alignment the loads vectorize on
            c_first = c_seg - c_seg % 2
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        if ONE_CHUNK:
            acc = _chunk_dot(acc, x_rows, inside, w_base, zero, c_first, c_seg, c_seg + G, mask_n,
                             WEIGHT_BITS, BLOCK_K, BLOCK_N)
        else:
            for c_lo in range(c_first, c_seg + G, BLOCK_K):
                acc = _chunk_dot(acc, x_rows, inside, w_base, zero, c_lo, c_seg, c_seg + G, mask_n,
                                 WEIGHT_BITS, BLOCK_K, BLOCK_N)
        mask_out = mask_m[:, None] & mask_n[None, :]
        if ACC_ONLY:  # the raw segment accumulator, (M, N, TAPS * GROUPS) int32
            cell = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
            tl.store(out_ptr + cell * (TAPS * GROUPS) + seg, acc, mask=mask_out)
        else:
            a = tl.load(a_ptr + pix, mask=inside, other=0.0).to(tl.float32)
            ws = tl.load(ws_ptr + offs_n * S + seg * SEG_STEP, mask=mask_n, other=0.0).to(tl.float32)
            total += acc.to(tl.float32) * a[:, None] * ws[None, :]
    if not ACC_ONLY:
        if HAS_BIAS:
            total += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        tl.store(out, total.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _launch(q: torch.Tensor, a_scale: torch.Tensor | None, weight: torch.Tensor, w_scale: torch.Tensor | None,
            w_zero: torch.Tensor | None, bias: torch.Tensor | None, stride: tuple[int, int],
            padding: tuple[int, int], weight_bits: int, group_size: int | None,
            out_dtype: torch.dtype | None) -> torch.Tensor:
    """Run the kernel: the (B, Ho, Wo, N) output, or with ``out_dtype=None`` the raw int32
    accumulators (B, Ho, Wo, N, segments). Operands as :func:`kernels.int_gemm.check_int_conv2d` takes them."""
    q, weight = q.contiguous(), weight.contiguous()
    b, h, w, c = q.shape
    n, kh, kw, w_row = weight.shape
    g = group_size or c
    groups = c // g
    ho, wo = output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1])
    m = b * ho * wo
    acc_only = out_dtype is None
    segments = kh * kw * groups
    if acc_only:
        out = torch.empty(b, ho, wo, n, segments, dtype=torch.int32, device=q.device)
    else:
        # the interpreter's fp32 -> bf16 cast truncates: it writes fp32 and PyTorch rounds (as the reference)
        store = torch.float32 if _INTERPRET and out_dtype == torch.bfloat16 else out_dtype
        out = torch.empty(b, ho, wo, n, dtype=store, device=q.device)
    if out.numel() == 0:
        return out if acc_only else out.to(out_dtype)
    table = w_scale if w_scale is not None else w_zero  # (N, S) per-segment tables, S = 1 or segments
    s = table.shape[1] if table is not None else 1
    mid_byte = weight_bits == 4 and g % 2 == 1  # int4 groups that start in the middle of a byte
    span = g + mid_byte  # channels a segment's chunks cover
    block_k = max(MIN_BLOCK_C, min(MAX_BLOCK_C, _pow2(span)))
    dummy = out  # stands in for absent tensors; never read

    def grid(meta):
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"])

    _int_conv2d_kernel[grid](
        q, dummy if a_scale is None else a_scale.contiguous(), weight,
        dummy if w_scale is None else w_scale.contiguous(), dummy if w_zero is None else w_zero.contiguous(),
        dummy if bias is None else bias.contiguous(), out,
        m, n, c, h, w, ho, wo, kw, stride[0], stride[1], padding[0], padding[1], kh * kw, g, groups, w_row,
        s, 1 if s > 1 else 0, min(_pow2(m), 4096),
        WEIGHT_BITS=weight_bits, HAS_ZERO=w_zero is not None, HAS_BIAS=bias is not None, ACC_ONLY=acc_only,
        ONE_CHUNK=block_k >= span, MID_BYTE=mid_byte, BLOCK_K=block_k)
    return out if acc_only or out.dtype == out_dtype else out.to(out_dtype)


def int_conv2d(q: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
               w_zero: torch.Tensor | None, bias: torch.Tensor | None, stride: tuple[int, int],
               padding: tuple[int, int], weight_bits: int, group_size: int | None,
               out_dtype: torch.dtype) -> torch.Tensor:
    """Quantized convolution (B, H, W, C) int8 -> (B, Ho, Wo, N) ``out_dtype``; see :mod:`kernels.int_gemm`."""
    return _launch(q, a_scale, weight, w_scale, w_zero, bias, stride, padding, weight_bits, group_size, out_dtype)


def int_conv2d_accumulators(q: torch.Tensor, weight: torch.Tensor, w_zero: torch.Tensor | None,
                            stride: tuple[int, int], padding: tuple[int, int], weight_bits: int,
                            group_size: int | None) -> torch.Tensor:
    """The kernel's int32 accumulator of every (tap, group) segment, (B, Ho, Wo, N, KH * KW * groups):
    the same kernel with its epilogue replaced by a store, for bit-exact comparison with
    :func:`kernels.int_gemm.int_conv2d_accumulators_reference`."""
    return _launch(q, None, weight, None, w_zero, None, tuple(stride), tuple(padding), weight_bits, group_size, None)
