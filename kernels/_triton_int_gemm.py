"""Triton kernel of ``zoo::int_conv2d``: the implicit-GEMM int8 / int4 convolution (a linear layer is
its 1 x 1 case).

Imported lazily, on the first launch, by :mod:`zoo.kernels.int_gemm`, so a machine without Triton never
imports it. ``TRITON_INTERPRET=1`` must be set before *triton* is imported (see
:mod:`zoo.kernels._triton_channel_gate`); a mismatch is reported on import with that advice.

The kernel repeats its reference's arithmetic in the same order, so that under the interpreter the
int32 accumulators and even the float outputs equal the reference bit for bit; compiled for a GPU, the
float outputs may differ in their last bits where the compiler contracts the epilogue's multiply-add
into an FMA: one int32 ``tl.dot`` accumulator per (tap, group) segment, then
``total += acc * a_scale[pixel] * w_scale[n, segment]`` in tap-major, group-minor order, then the bias.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# no import cycle: kernels.int_gemm imports this module lazily
from ._triton_common import interpreter_checked, pow2
from .int_gemm import INT4_SYMMETRIC_ZERO, output_size

_INTERPRET = interpreter_checked()

_ZERO4 = tl.constexpr(INT4_SYMMETRIC_ZERO)  # module constants a kernel reads must be constexpr
# Module attributes so the tests can shrink them and exercise the K loops on tiny shapes.
MAX_BLOCK_C = 128  # input channels per tl.dot step of int_conv2d
MIN_BLOCK_C = 16 if _INTERPRET else 32  # tl.dot needs K >= 16; int8 MMA instructions take K = 32


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
    tallest = max(16, pow2(named_args["M"]))
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
    accumulators (B, Ho, Wo, N, segments). Operands as :func:`zoo.kernels.int_gemm.check_int_conv2d` takes them."""
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
    block_k = max(MIN_BLOCK_C, min(MAX_BLOCK_C, pow2(span)))
    dummy = out  # stands in for absent tensors; never read

    def grid(meta):
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"])

    _int_conv2d_kernel[grid](
        q, dummy if a_scale is None else a_scale.contiguous(), weight,
        dummy if w_scale is None else w_scale.contiguous(), dummy if w_zero is None else w_zero.contiguous(),
        dummy if bias is None else bias.contiguous(), out,
        m, n, c, h, w, ho, wo, kw, stride[0], stride[1], padding[0], padding[1], kh * kw, g, groups, w_row,
        s, 1 if s > 1 else 0, min(pow2(m), 4096),
        WEIGHT_BITS=weight_bits, HAS_ZERO=w_zero is not None, HAS_BIAS=bias is not None, ACC_ONLY=acc_only,
        ONE_CHUNK=block_k >= span, MID_BYTE=mid_byte, BLOCK_K=block_k)
    return out if acc_only or out.dtype == out_dtype else out.to(out_dtype)


def int_conv2d(q: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
               w_zero: torch.Tensor | None, bias: torch.Tensor | None, stride: tuple[int, int],
               padding: tuple[int, int], weight_bits: int, group_size: int | None,
               out_dtype: torch.dtype) -> torch.Tensor:
    """Quantized convolution (B, H, W, C) int8 -> (B, Ho, Wo, N) ``out_dtype``; see :mod:`zoo.kernels.int_gemm`."""
    return _launch(q, a_scale, weight, w_scale, w_zero, bias, stride, padding, weight_bits, group_size, out_dtype)


def int_conv2d_accumulators(q: torch.Tensor, weight: torch.Tensor, w_zero: torch.Tensor | None,
                            stride: tuple[int, int], padding: tuple[int, int], weight_bits: int,
                            group_size: int | None) -> torch.Tensor:
    """The kernel's int32 accumulator of every (tap, group) segment, (B, Ho, Wo, N, KH * KW * groups):
    the same kernel with its epilogue replaced by a store, for bit-exact comparison with
    :func:`zoo.kernels.int_gemm.int_conv2d_accumulators_reference`."""
    return _launch(q, None, weight, None, w_zero, None, tuple(stride), tuple(padding), weight_bits, group_size, None)
