"""Triton kernels of ``zoo::channel_patch_embed`` (ChannelViT's per-channel patch embedding) and its backward.

Imported lazily, on the first launch, by :mod:`zoo.kernels.patch_embed`, so a machine without Triton never
imports it. ``TRITON_INTERPRET=1`` must be set before *triton* is imported (see :mod:`zoo.kernels._triton_channel_gate`);
a mismatch is reported on import with that advice.

Notation: x (B, C, H, W), weight (D, p, p), K = p * p, N = (H // p) * (W // p) patches per channel image,
M = B * C * N tokens. Token m = (b * C + c) * N + n reads the patch whose top-left pixel is
(p * (n // GW), p * (n % GW)) of image b * C + c, GW = W // p; column k of the GEMM is pixel (k // p, k % p)
of the patch. The kernels compute these offsets instead of materializing an im2col buffer.

- forward: one program per (BLOCK_M tokens, BLOCK_D features) tile: ``acc = patches @ weight^T`` over K in
  BLOCK_K steps (fp32 accumulator, fp64 for fp64 inputs), then ``+ bias + channel_embed[b, c] + pos_embed[n]``
  and one store of the (M, D) tokens. The weight and embeddings are cast to x's dtype on the host first,
  as the reference does (the interpreter's in-kernel fp32 -> bf16 cast truncates instead of rounding).
- grad_x = grad (M, D) @ weight (D, K), scattered back to pixels: every pixel belongs to at most one
  patch, so plain stores suffice; pixels beyond the last whole patch get zeros.
- grad_weight, grad_channel_embed, grad_pos (bias = the sum of grad_channel_embed) in one pass over
  grad: a program owns BLOCK_N patch positions, BLOCK_D features and a range of channel images, so it
  finishes grad_pos over that range in registers, writes the channel-image sums of its positions, and
  accumulates grad^T @ patches. Partial results go to fp32 buffers that one PyTorch sum finishes: the
  result is deterministic (no atomics), as in :mod:`zoo.kernels._triton_channel_gate`.

The backward works in fp32 whatever the dtype, as the reference does. On GPU, 16-bit operands go to the
tensor cores as they are (products of 16-bit values are exact in fp32); a 16-bit grad times the fp32
weight uses ``tf32x3`` (fp32-accurate); fp32 GEMMs are IEEE unless ``torch.backends.cuda.matmul.allow_tf32``,
and IEEE (or fp64) ``tl.dot`` runs on the FMA units, which get their own, smaller tiles. The tiles were
chosen by compiling every config for sm_90 (registers, no spills); they have not been timed on a GPU yet.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._triton_common import accumulator, interpreter_checked

_INTERPRET = interpreter_checked()

# Module attributes so the tests can shrink them and exercise the loops and splits on tiny shapes.
MAX_BLOCK_K = 64  # patch pixels per tl.dot step of the forward, and per grad_x tile
MIN_PROGRAMS = 1  # the parameter-gradient pass splits the channel images until it has this many programs
MIN_IMAGES_PER_SPLIT = 16  # ...but gives each split at least this many: a split writes a (D, K) fp32 partial
_16BIT = (torch.float16, torch.bfloat16)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _configs(tiles: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """One config in the interpreter (it cannot autotune more); the given (BLOCK_M, BLOCK_D, warps, stages) on GPU."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_D": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_D": d}, num_warps=w, num_stages=s) for m, d, w, s in tiles]


def _fp32_precision() -> str:
    """fp32 GEMMs follow PyTorch's switch, so the kernel is as exact as the reference matmul."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, n))


@triton.jit
def _patch_starts(offs_m, N, GW, HW, W, P: tl.constexpr):
    """(BLOCK_M,) int64 offsets in x of each token's patch's top-left pixel."""
    n = offs_m % N
    return (offs_m // N).to(tl.int64) * HW + (n // GW) * P * W + (n % GW) * P


# ----------------------------------------------------------------------------------------------
# forward: tokens (M, D) = patches (M, K) @ weight^T (K, D) + bias + channel_embed[b, c] + pos_embed[n]
# ----------------------------------------------------------------------------------------------
@triton.jit
def _forward_kernel(x_ptr, wt_ptr, bias_ptr, ce_ptr, pos_ptr, out_ptr, M, D, N, GW, HW, W, M_BUCKET,
                    P: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    # P is a constexpr (one compile per patch size): the compiler then sees runs of P contiguous
    # pixels and vectorizes the gather into 16-byte (and cp.async) loads
    K: tl.constexpr = P * P
    pid = tl.program_id(0)
    n_dblocks = tl.cdiv(D, BLOCK_D)  # D fastest: the programs that share a patch tile run together (L2)
    offs_m = (pid // n_dblocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m, mask_d = offs_m < M, offs_d < D
    starts = _patch_starts(offs_m, N, GW, HW, W, P)  # (BLOCK_M,)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        pix = (offs_k // P) * W + offs_k % P  # (BLOCK_K,) offsets inside a patch
        a = tl.load(x_ptr + starts[:, None] + pix[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(wt_ptr + offs_k[:, None] * D + offs_d[None, :], mask=mask_k[:, None] & mask_d[None, :],
                    other=0.0)  # (BLOCK_K, BLOCK_D) of weight^T, in x's dtype
        if DOT_FP32:  # the interpreter's bf16 tl.dot is wrong; the upcast is exact
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc=acc, input_precision=PRECISION)
    mask = mask_m[:, None] & mask_d[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)[None, :]
    images = (offs_m // N).to(tl.int64)  # b * C + c
    acc += tl.load(ce_ptr + images[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(ACC)
    acc += tl.load(pos_ptr + (offs_m % N)[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(ACC)
    out = out_ptr + offs_m[:, None].to(tl.int64) * D + offs_d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


# Tiles for the tensor cores (16-bit or TF32 operands) and for the FMA units (IEEE fp32, fp64), where
# the large ones spill registers: two autotuners over the same kernel, picked on the host.
_KEY = ["M_BUCKET", "D", "P", "PRECISION"]
_forward_mma = triton.autotune(_configs([(64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3),
                                         (64, 256, 8, 3)]), key=_KEY)(_forward_kernel)
_forward_fma = triton.autotune(_configs([(32, 64, 4, 3), (32, 128, 4, 3), (64, 64, 8, 3), (64, 128, 8, 3),
                                         (128, 64, 8, 3)]), key=_KEY)(_forward_kernel)


def channel_patch_embed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        channel_embed: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*N, D) tokens in x's dtype; see :mod:`zoo.kernels.patch_embed`."""
    x = x.contiguous()
    b, c, h, w = x.shape
    d, p, _ = weight.shape
    gw, k = w // p, p * p
    n = (h // p) * gw
    m = b * c * n
    # the interpreter's fp32 -> bf16 cast truncates: it writes fp32 and PyTorch rounds (as the reference)
    store = torch.float32 if _INTERPRET and x.dtype in _16BIT else x.dtype
    out = torch.empty(b, c * n, d, dtype=store, device=x.device)
    if out.numel() == 0:
        return out.to(x.dtype)
    # the reference casts every operand to x's dtype before the math: do it once here (all are small)
    wt = weight.reshape(d, k).t().to(x.dtype).contiguous()  # (K, D): the tile loads run along D
    ce = channel_embed.to(x.dtype).contiguous()  # (B, C, D)
    pos = pos_embed.to(x.dtype).contiguous()  # (N, D)
    bias_c = bias.to(x.dtype).contiguous() if bias is not None else ce  # ce stands in; never read
    precision = "ieee" if x.dtype in _16BIT or x.dtype == torch.float64 else _fp32_precision()
    mma = x.dtype in _16BIT or precision != "ieee"
    kernel = _forward_mma if mma else _forward_fma

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(d, meta["BLOCK_D"]),)

    kernel[grid](x, wt, bias_c, ce, pos, out, m, d, n, gw, h * w, w, min(_pow2(m), 1 << 20), P=p,
                 HAS_BIAS=bias is not None, DOT_FP32=_INTERPRET and x.dtype in _16BIT, PRECISION=precision,
                 ACC=accumulator(x.dtype),
                 BLOCK_K=_clamp(_pow2(k), 16, MAX_BLOCK_K if mma else min(32, MAX_BLOCK_K)))
    return out.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# backward, grad_x: patches' gradient (M, K) = grad (M, D) @ weight (D, K), stored at the pixels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _grad_x_kernel(g_ptr, w_ptr, gx_ptr, M, D, N, GW, HW, W, M_BUCKET, P: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    K: tl.constexpr = P * P
    pid = tl.program_id(0)
    n_kblocks = tl.cdiv(K, BLOCK_K)
    offs_m = (pid // n_kblocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = (pid % n_kblocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m, mask_k = offs_m < M, offs_k < K
    rows = offs_m[:, None].to(tl.int64) * D
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        g = tl.load(g_ptr + rows + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        wk = tl.load(w_ptr + offs_d[:, None] * K + offs_k[None, :], mask=mask_d[:, None] & mask_k[None, :],
                     other=0.0)  # (BLOCK_D, BLOCK_K) fp32 weight
        acc = tl.dot(g.to(tl.float32), wk, acc=acc, input_precision=PRECISION)
    starts = _patch_starts(offs_m, N, GW, HW, W, P)
    pix = (offs_k // P) * W + offs_k % P
    tl.store(gx_ptr + starts[:, None] + pix[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_k[None, :])


_grad_x_mma = triton.autotune(_configs([(64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3),
                                        (128, 64, 8, 3)]), key=_KEY)(_grad_x_kernel)
_grad_x_fma = triton.autotune(_configs([(32, 64, 4, 3), (64, 32, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3)]),
                              key=_KEY)(_grad_x_kernel)


# ----------------------------------------------------------------------------------------------
# backward, parameters: one pass over grad for grad_weight, grad_channel_embed and grad_pos partials
# ----------------------------------------------------------------------------------------------
@triton.autotune([triton.Config({}, num_warps=4)] if _INTERPRET else [
    triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 2), (4, 3), (8, 2), (8, 3))],
    key=["BC", "N", "D", "P", "BLOCK_N", "BLOCK_D", "PRECISION"])
@triton.jit
def _grad_params_kernel(g_ptr, x_ptr, gw_ptr, gc_ptr, gp_ptr, BC, N, D, GW, HW, W, P: tl.constexpr,
                        DOT_NATIVE: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    K: tl.constexpr = P * P
    nblock, split = tl.program_id(0), tl.program_id(2)
    offs_n = nblock * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)  # the whole patch: grad is read once for all its pixels
    mask_n, mask_d, mask_k = offs_n < N, offs_d < D, offs_k < K
    mask_nd = mask_n[:, None] & mask_d[None, :]
    pixels = ((offs_n // GW) * P * W + (offs_n % GW) * P)[:, None] + ((offs_k // P) * W + offs_k % P)[None, :]
    per_split = tl.cdiv(BC, tl.num_programs(2))
    acc_w = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)  # grad_weight^T partial
    acc_p = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # grad_pos partial
    first = (split * per_split).to(tl.int64)
    for i in range(tl.minimum(per_split, BC - split * per_split)):
        img = first + i  # channel image b * C + c
        g = tl.load(g_ptr + (img * N + offs_n[:, None]) * D + offs_d[None, :], mask=mask_nd, other=0.0)
        a = tl.load(x_ptr + img * HW + pixels, mask=mask_n[:, None] & mask_k[None, :], other=0.0)  # (BLOCK_N, BLOCK_K)
        g32 = g.to(tl.float32)
        acc_p += g32
        tl.store(gc_ptr + (nblock * BC + img) * D + offs_d, tl.sum(g32, axis=0), mask=mask_d)
        if DOT_NATIVE:  # 16-bit grad and x on GPU: exact products on the tensor cores
            acc_w = tl.dot(tl.trans(g), a, acc=acc_w)
        else:
            acc_w = tl.dot(tl.trans(g32), a.to(tl.float32), acc=acc_w, input_precision=PRECISION)
    part = (split * tl.num_programs(0) + nblock).to(tl.int64)
    tl.store(gw_ptr + part * D * K + offs_d[:, None] * K + offs_k[None, :], acc_w,
             mask=mask_d[:, None] & mask_k[None, :])
    tl.store(gp_ptr + (split * N + offs_n[:, None]).to(tl.int64) * D + offs_d[None, :], acc_p, mask=mask_nd)


def _splits(images: int, programs: int, device: torch.device) -> int:
    """How many ranges of channel images the parameter pass splits into, so that it fills the GPU."""
    target = max(MIN_PROGRAMS, 2 * _num_sms(device))
    splits = _clamp(target // programs, 1, max(1, images // MIN_IMAGES_PER_SPLIT))
    return triton.cdiv(images, triton.cdiv(images, splits))  # no empty split


def channel_patch_embed_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (x, weight, bias, channel_embed, pos_embed): x's and weight's dtypes, then fp32 (D,),
    (B, C, D), (N, D); see :func:`zoo.kernels.patch_embed.channel_patch_embed_backward_reference`."""
    grad, x = grad.contiguous(), x.contiguous()
    b, c, h, w = x.shape
    d, p, _ = weight.shape
    gw_cols, k = w // p, p * p
    n = (h // p) * gw_cols
    bc, m = b * c, b * c * n
    f32 = {"dtype": torch.float32, "device": x.device}
    store = torch.float32 if _INTERPRET and x.dtype in _16BIT else x.dtype  # see channel_patch_embed
    whole = h % p == 0 and w % p == 0  # else the pixels past the last whole patch stay zero
    gx = (torch.empty if whole else torch.zeros)(b, c, h, w, dtype=store, device=x.device)
    if m == 0 or d == 0:
        return (gx.zero_().to(x.dtype), torch.zeros_like(weight), torch.zeros(d, **f32),
                torch.zeros(b, c, d, **f32), torch.zeros(n, d, **f32))

    # grad_x: a 16-bit grad is exact in TF32, and tf32x3 keeps the fp32 weight's precision
    precision = "tf32x3" if grad.dtype in _16BIT else _fp32_precision()
    block_k = _clamp(_pow2(k), 16, MAX_BLOCK_K)

    def grid_x(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, block_k),)

    (_grad_x_mma if precision != "ieee" else _grad_x_fma)[grid_x](
        grad, weight.reshape(d, k).float().contiguous(), gx, m, d, n, gw_cols, h * w, w, min(_pow2(m), 1 << 20),
        P=p, PRECISION=precision, BLOCK_K=block_k)

    # parameter pass: a (BLOCK_N, K) patch tile and a (BLOCK_D, K) accumulator live in registers, so
    # both shrink as the patch grows, and more on the FMA units, which hold their operands there too
    native = not _INTERPRET and grad.dtype == x.dtype and x.dtype in _16BIT
    precision = _fp32_precision()
    block_k = max(16, _pow2(k))
    if _INTERPRET:
        block_n = block_d = 16
    elif native or precision != "ieee":
        block_n, block_d = _clamp(8192 // block_k, 16, 64), _clamp(8192 // block_k, 16, min(128, _pow2(d)))
    else:
        block_n, block_d = _clamp(2048 // block_k, 16, 32), _clamp(8192 // block_k, 16, min(32, _pow2(d)))
    n_blocks, d_blocks = triton.cdiv(n, block_n), triton.cdiv(d, block_d)
    splits = _splits(bc, n_blocks * d_blocks, x.device)
    gw_part = torch.empty(splits * n_blocks, d, k, **f32)
    gc_part = torch.empty(n_blocks, b, c, d, **f32)
    gp_part = torch.empty(splits, n, d, **f32)
    _grad_params_kernel[(n_blocks, d_blocks, splits)](
        grad, x, gw_part, gc_part, gp_part, bc, n, d, gw_cols, h * w, w, P=p, DOT_NATIVE=native,
        PRECISION=precision, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_K=block_k)
    grad_weight = gw_part.sum(0) if gw_part.shape[0] > 1 else gw_part[0]  # (D, K)
    grad_ce = gc_part.sum(0) if n_blocks > 1 else gc_part[0]  # (B, C, D)
    grad_pos = gp_part.sum(0) if splits > 1 else gp_part[0]  # (N, D)
    return (gx.to(x.dtype), grad_weight.view(d, p, p).to(weight.dtype), grad_ce.sum((0, 1)), grad_ce, grad_pos)
