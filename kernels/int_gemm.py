"""Integer matmuls for quantized layers: ``zoo::int_conv2d`` (implicit GEMM) and :func:`int_linear`.

Operands (the layout :mod:`zoo.blocks.quant` stores):

- activations ``q`` (B, H, W, C) int8, channels last, with one fp32 scale per pixel ``a_scale`` (B, H, W)
  (a linear layer's (M, K) input is the 1 x M image of a 1 x 1 convolution);
- weights (N, KH, KW, C) int8 (8 bit, symmetric) or (N, KH, KW, ceil(C / 2)) uint8 (4 bit: channel
  2i in the low nibble, 2i + 1 in the high one, each an unsigned value 0..15 read as ``nibble - zero``
  with ``zero = 8`` for symmetric weights, whose codes span the whole -8..7);
- ``w_scale`` (N, S) fp16/fp32 and, for asymmetric 4-bit weights, ``w_zero`` (N, S) uint8, where
  ``S = 1`` (one scale per output channel) or ``S = KH * KW * C / group_size`` (a scale per tap and
  group of ``group_size`` input channels, index ``tap * (C / group_size) + c // group_size``).

Every (tap, group) segment accumulates exactly in int32, then the fp32 epilogue adds
``acc * a_scale[pixel read by the tap] * w_scale[n, segment]`` in tap-major, group-minor order, then
the bias, and casts to ``out_dtype``. Per-pixel activation scales differ between the taps of a
convolution, which is why segments are per tap. Out-of-image taps (zero padding) contribute nothing.
"""
from __future__ import annotations

from typing import Optional

import torch

from .dispatch import kernel_op

INT4_SYMMETRIC_ZERO = 8


# --------------------------------------------------------------------------------------------------
# int4 packing (the on-disk and in-memory layout)
# --------------------------------------------------------------------------------------------------
def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Pack unsigned 4-bit values (..., C) in 0..15 into (..., ceil(C / 2)) uint8, low nibble first."""
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 15):
        raise ValueError("pack_int4 takes unsigned 4-bit values in 0..15")
    return pack_nibbles(values)


def pack_nibbles(values: torch.Tensor) -> torch.Tensor:
    """:func:`pack_int4` without the range check (for values known to be nibbles; traceable by torch.compile)."""
    v = values.to(torch.uint8)
    if v.shape[-1] % 2:
        v = torch.nn.functional.pad(v, (0, 1))  # a zero high nibble for an odd channel count
    return v[..., 0::2] | (v[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, channels: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: (..., ceil(C / 2)) uint8 -> (..., C) values 0..15 in ``dtype``."""
    out = torch.empty(*packed.shape[:-1], 2 * packed.shape[-1], dtype=dtype, device=packed.device)
    out[..., 0::2] = packed & 0xF  # written in place: no stacked temporary
    out[..., 1::2] = packed >> 4
    return out[..., :channels]


def weight_values(weight: torch.Tensor, w_zero: Optional[torch.Tensor], weight_bits: int, channels: int,
                  group_size: Optional[int], dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Signed integer weights (N, KH, KW, C) (``nibble - zero`` for 4 bit), as ``dtype`` (int32, or a float
    type, which holds these small integers exactly)."""
    if weight_bits == 8:
        return weight.to(dtype)
    values = unpack_int4(weight, channels, dtype)  # (N, KH, KW, C)
    if w_zero is None:
        return values.sub_(INT4_SYMMETRIC_ZERO)
    n, kh, kw, c = values.shape
    zero = _per_channel(w_zero.to(torch.int32), kh * kw, c, group_size)  # (N, KH*KW, C)
    return values - zero.view(n, kh, kw, c)


def _per_channel(table: torch.Tensor, taps: int, channels: int, group_size: Optional[int]) -> torch.Tensor:
    """Expand an (N, S) per-segment table to (N, taps, C)."""
    n, s = table.shape
    if s == 1:
        return table.view(n, 1, 1).expand(n, taps, channels)
    g = group_size or channels
    return table.view(n, taps, channels // g, 1).expand(n, taps, channels // g, g).reshape(n, taps, channels)


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def check_int_conv2d(q, a_scale, weight, w_scale, w_zero, bias, stride, padding, weight_bits, group_size):
    """Shape and dtype checks with errors that say what was expected."""
    if q.dtype != torch.int8 or q.ndim != 4:
        raise ValueError(f"int_conv2d expects int8 activations (B, H, W, C); got {q.dtype} {tuple(q.shape)}")
    b, h, w, c = q.shape
    if tuple(a_scale.shape) != (b, h, w):
        raise ValueError(f"int_conv2d: a_scale must be (B, H, W) = {(b, h, w)}; got {tuple(a_scale.shape)}")
    if weight_bits not in (4, 8):
        raise ValueError(f"int_conv2d: weight_bits must be 4 or 8; got {weight_bits}")
    want_dtype, want_c = (torch.int8, c) if weight_bits == 8 else (torch.uint8, (c + 1) // 2)
    if weight.dtype != want_dtype or weight.ndim != 4 or weight.shape[-1] != want_c:
        raise ValueError(f"int_conv2d: {weight_bits}-bit weights for {c} input channels are {want_dtype} "
                         f"(N, KH, KW, {want_c}); got {weight.dtype} {tuple(weight.shape)}")
    n, kh, kw, _ = weight.shape
    if group_size is not None and c % group_size:
        raise ValueError(f"int_conv2d: group_size={group_size} does not divide the {c} input channels")
    segments = kh * kw * (c // group_size) if group_size else 1
    if w_scale.shape not in ((n, 1), (n, segments)):
        allowed = f"({n}, 1)" + (f" or ({n}, {segments})" if segments > 1 else "")
        raise ValueError(f"int_conv2d: w_scale must be {allowed}; got {tuple(w_scale.shape)}")
    if w_zero is not None and (weight_bits != 4 or w_zero.shape != w_scale.shape or w_zero.dtype != torch.uint8):
        raise ValueError("int_conv2d: w_zero is for 4-bit weights, uint8, shaped like w_scale")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"int_conv2d: bias must be ({n},); got {tuple(bias.shape)}")
    if output_size(h, kh, stride[0], padding[0]) < 1 or output_size(w, kw, stride[1], padding[1]) < 1:
        raise ValueError(f"int_conv2d: a {kh}x{kw} kernel does not fit a {h}x{w} input with padding {padding}")


def _tap_input(q: torch.Tensor, i: int, j: int, out_hw: tuple[int, int], stride, padding) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels tap (i, j) reads for every output pixel, (B, Ho, Wo, C), and an in-image mask (Ho, Wo)."""
    b, h, w, c = q.shape
    ho, wo = out_hw
    rows = torch.arange(ho, device=q.device) * stride[0] - padding[0] + i
    cols = torch.arange(wo, device=q.device) * stride[1] - padding[1] + j
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    taken = q[:, rows.clamp(0, h - 1)][:, :, cols.clamp(0, w - 1)]  # (B, Ho, Wo, C)
    return taken, inside


# --------------------------------------------------------------------------------------------------
# references (exact int32 accumulation; the CPU path)
# --------------------------------------------------------------------------------------------------
def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of int32 (batched) matrices, exact. CUDA has no integer matmul ("addmm_cuda" not
    implemented for 'Int'); there fp64 is exact, since every partial sum of int8 x int8 products
    stays far below 2^53."""
    if a.is_cuda:
        return (a.double() @ b.double()).to(torch.int32)
    return a @ b


def int_conv2d_accumulators_reference(q: torch.Tensor, weight: torch.Tensor, w_zero: Optional[torch.Tensor],
                                      stride: tuple[int, int], padding: tuple[int, int], weight_bits: int,
                                      group_size: Optional[int]) -> torch.Tensor:
    """The int32 accumulator of every (tap, group) segment: (B, Ho, Wo, N, KH * KW * groups).

    Out-of-image taps read zeros. This is what the tests compare bit for bit with the kernel.
    """
    b, h, w, c = q.shape
    n, kh, kw, _ = weight.shape
    g = group_size or c
    values = weight_values(weight, w_zero, weight_bits, c, group_size)  # (N, KH, KW, C) int32
    ho, wo = output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1])
    segments = []
    for i in range(kh):
        for j in range(kw):
            taken, inside = _tap_input(q, i, j, (ho, wo), stride, padding)
            taken = taken.to(torch.int32) * inside[None, :, :, None]
            x_groups = taken.reshape(b * ho * wo, c // g, g).transpose(0, 1)  # (groups, M, g)
            w_groups = values[:, i, j].reshape(n, c // g, g).permute(1, 2, 0)  # (groups, g, N)
            segments.append(_int_matmul(x_groups, w_groups))  # (groups, M, N) exact int32
    acc = torch.cat(segments, dim=0)  # (taps * groups, M, N)
    return acc.permute(1, 2, 0).reshape(b, ho, wo, n, -1)


_FP32_EXACT = 2 ** 24  # every integer of smaller magnitude is an fp32 number


def _product_bound(weight_bits: int) -> int:
    """The largest |int8 activation x weight| product: weights up to 127 at 8 bits, 15 at 4 bits (codes
    minus a zero point)."""
    return 127 * (127 if weight_bits == 8 else 15)


def _chunks(length: int, weight_bits: int) -> int:
    """How many equal slices of ``length`` channels keep every partial sum of products below 2^24, so
    that an fp32 GEMM computes each slice's accumulator exactly; 0 when no divisor of ``length`` does."""
    per_channel = _product_bound(weight_bits)
    for pieces in range(1, length + 1):
        if length % pieces == 0 and length // pieces * per_channel < _FP32_EXACT:
            return pieces
    return 0


def _grouped_weights(weight: torch.Tensor, w_zero: Optional[torch.Tensor], weight_bits: int, channels: int,
                     group_size: Optional[int], dtype: torch.dtype) -> list[torch.Tensor]:
    """Signed weights in ``dtype`` as a list of (N, KH, KW, groups, L) parts whose dot products with the
    matching parts of the activations (:func:`_grouped_inputs`) add up to each group's accumulator.

    Packed int4 with even groups is not interleaved back into channel order (a strided copy that costs as
    much as the GEMM): its low nibbles (the even channels) and high nibbles (the odd ones) are two parts,
    converted as they lie. A dot product does not depend on the order of its terms, so the accumulators
    are the same integers."""
    n, kh, kw, _ = weight.shape
    g = group_size or channels
    groups = channels // g
    if weight_bits == 4 and g % 2 == 0:
        if w_zero is None:
            zero = INT4_SYMMETRIC_ZERO
        else:  # one zero point per (tap, group)
            zero = _per_channel(w_zero.to(dtype), kh * kw, groups, 1).view(n, kh, kw, groups, 1)
        return [(weight & 0xF).to(dtype).view(n, kh, kw, groups, g // 2).sub_(zero),  # even channels
                (weight >> 4).to(dtype).view(n, kh, kw, groups, g // 2).sub_(zero)]  # odd channels
    values = weight_values(weight, w_zero, weight_bits, channels, group_size, dtype)  # (N, KH, KW, C)
    return [values.reshape(n, kh, kw, groups, g)]


def _grouped_inputs(taken: torch.Tensor, groups: int, parts: int) -> list[torch.Tensor]:
    """(M, C) activations as ``parts`` (groups, M, L) tensors matching :func:`_grouped_weights`."""
    x = taken.view(taken.shape[0], groups, -1)  # (M, groups, g)
    if parts == 1:
        return [x.transpose(0, 1).contiguous()]
    return [x[..., 0::2].transpose(0, 1).contiguous(), x[..., 1::2].transpose(0, 1).contiguous()]  # even, odd


def segment_accumulators(x_parts: list[torch.Tensor], w_parts: list[torch.Tensor], weight_bits: int,
                          group: int) -> torch.Tensor:
    """Every segment's accumulator, exact, as fp32 (the int32 value rounded to fp32, as the kernel does):
    (groups, M, N) from the (groups, M, L) activation parts and (groups, L, N) weight parts.

    BLAS float GEMMs (an int32 matmul is a slow loop on the CPU) on slices short enough that fp32 holds
    every partial sum (:func:`_chunks`); the slices' results, exact integers, are added in fp32 while the
    segment's bound stays below 2^24 and in fp64 otherwise. fp64 throughout where fp32 matmuls may run
    at reduced precision (``torch.set_float32_matmul_precision``) or no slicing fits."""
    fp32_ok = torch.get_float32_matmul_precision() == "highest" and not x_parts[0].is_cuda
    total = torch.float32 if group * _product_bound(weight_bits) < _FP32_EXACT else torch.float64
    acc = None
    for x, w in zip(x_parts, w_parts):
        length = x.shape[-1]
        pieces = _chunks(length, weight_bits) if fp32_ok else 0
        dtype, step = (torch.float32, length // pieces) if pieces else (torch.float64, length)
        for start in range(0, length, step):
            product = torch.bmm(x[..., start:start + step].to(dtype), w[:, start:start + step].to(dtype))
            product = product.to(total)
            acc = product if acc is None else acc.add_(product)  # exact: integers below the type's limit
    return acc.float()


def int_conv2d_reference(q: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                         w_zero: Optional[torch.Tensor], bias: Optional[torch.Tensor], stride: tuple[int, int],
                         padding: tuple[int, int], weight_bits: int, group_size: Optional[int],
                         out_dtype: torch.dtype) -> torch.Tensor:
    """Quantized convolution: (B, H, W, C) int8 -> (B, Ho, Wo, N) ``out_dtype``; see the module docstring.

    The segments' integer accumulators come from batched float GEMMs that compute them exactly
    (:func:`segment_accumulators`), then go through the fp32 epilogue in segment order. They equal
    :func:`int_conv2d_accumulators_reference` (int32 arithmetic) bit for bit, as the tests check."""
    b, h, w, c = q.shape
    n, kh, kw, _ = weight.shape
    g = group_size or c
    groups = c // g
    parts = _grouped_weights(weight, w_zero, weight_bits, c, group_size, torch.float32)  # (N, KH, KW, groups, L)
    ho, wo = output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1])
    scale_w = w_scale.float()  # (N, S)
    out = torch.zeros(b * ho * wo, n, dtype=torch.float32, device=q.device)
    pointwise = (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
    for i in range(kh):
        for j in range(kw):
            if pointwise:  # a linear layer: every pixel reads itself
                taken, a_s = q.reshape(-1, c).float(), a_scale.reshape(-1)  # (M, C), (M,)
            else:
                taken, inside = _tap_input(q, i, j, (ho, wo), stride, padding)
                a_taken, _ = _tap_input(a_scale.unsqueeze(-1), i, j, (ho, wo), stride, padding)
                taken = (taken.float() * inside[None, :, :, None]).reshape(-1, c)  # (M, C)
                a_s = a_taken.reshape(-1)  # (M,)
            w_tap = [part[:, i, j].permute(1, 2, 0) for part in parts]  # (groups, L, N) each
            acc = segment_accumulators(_grouped_inputs(taken, groups, len(parts)), w_tap, weight_bits, g)
            first = (i * kw + j) * groups
            tap_scales = scale_w[:, first:first + groups] if scale_w.shape[1] > 1 else scale_w.expand(n, groups)
            terms = acc.mul_(a_s[None, :, None]).mul_(tap_scales.t().contiguous()[:, None, :])  # (groups, M, N)
            for k in range(groups):  # summed in segment order, as the kernel
                out += terms[k]
    if bias is not None:
        out += bias.float()
    return out.to(out_dtype).view(b, ho, wo, n)


_int_conv2d = kernel_op("int_conv2d")(int_conv2d_reference)


_int_conv2d.register_triton_lazy("zoo.kernels._triton_int_gemm", "int_conv2d")  # imported on first launch


@torch.library.custom_op("zoo::int_conv2d", mutates_args=())
def _int_conv2d_op(q: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                   w_zero: Optional[torch.Tensor], bias: Optional[torch.Tensor], stride: list[int],
                   padding: list[int], weight_bits: int, group_size: Optional[int],
                   out_dtype: torch.dtype) -> torch.Tensor:
    return _int_conv2d(q.contiguous(), a_scale.contiguous(), weight.contiguous(), w_scale.contiguous(),
                       None if w_zero is None else w_zero.contiguous(), bias, tuple(stride), tuple(padding),
                       weight_bits, group_size, out_dtype)


@_int_conv2d_op.register_fake
def _(q, a_scale, weight, w_scale, w_zero, bias, stride, padding, weight_bits, group_size, out_dtype):
    b, h, w, _ = q.shape
    n, kh, kw, _ = weight.shape
    ho, wo = output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1])
    return q.new_empty((b, ho, wo, n), dtype=out_dtype)


def int_conv2d(q: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
               w_zero: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0), weight_bits: int = 8,
               group_size: Optional[int] = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Quantized convolution (implicit GEMM): (B, H, W, C) int8 -> (B, Ho, Wo, N); not differentiable."""
    check_int_conv2d(q, a_scale, weight, w_scale, w_zero, bias, stride, padding, weight_bits, group_size)
    return _int_conv2d_op(q, a_scale, weight, w_scale, w_zero, bias, list(stride), list(padding), weight_bits,
                          group_size, out_dtype)


def int_linear(q: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
               w_zero: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, weight_bits: int = 8,
               group_size: Optional[int] = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Quantized linear layer: (M, K) int8 with (M,) scales, weights (N, K) or packed (N, ceil(K/2)) -> (M, N)."""
    m, k = q.shape
    out = int_conv2d(q.view(1, 1, m, k), a_scale.reshape(1, 1, m), weight.view(weight.shape[0], 1, 1, -1),
                     w_scale, w_zero, bias, (1, 1), (0, 0), weight_bits, group_size, out_dtype)
    return out.view(m, -1)
