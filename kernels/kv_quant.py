"""KIVI-style KV-cache quantization: ``zoo::kv_quantize`` and ``zoo::kv_dequantize``.

KIVI (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024) stores
keys and values in 2 or 4 bits with asymmetric min-max scales over groups of consecutive elements:
keys per channel (a group is ``group_size`` consecutive *tokens* of one channel, so ``axis`` is the
token axis: the outlier channels of keys get their own scale) and values per token (a group is
``group_size`` consecutive *channels* of one token: ``axis`` is the channel axis). For one group
``g`` of a tensor ``x`` in float32, float16 or bfloat16, with ``qmax = 2**bits - 1``:

    zero  = min(g)                                     # stored in x's dtype: exact, it is an element of x
    scale = round_to(x.dtype, (max(g) - min(g)) / qmax)  # fp32 math, rounded to nearest even
    code  = clamp(round_half_even((g - zero) / scale), 0, qmax)   # fp32; scale 0 (constant group): code 0
    dequantized = code * scale + zero                  # fp32, then rounded to the requested dtype

Rounding is half to even (``torch.round``), so every element is within ``scale / 2`` of its
dequantized value (up to the rounding of the scale to x's dtype), a constant group comes back exactly,
and values already on a group's grid round-trip exactly.

Layout of :class:`KVQuantized` for ``x`` of shape ``S`` quantized along ``axis``:

- ``codes``: uint8 of shape ``S[:-1] + (ceil(S[-1] / (8 // bits)),)``: the codes packed along the last
  dim, ``8 // bits`` per byte, element ``j`` in byte ``j // (8 // bits)`` at bit ``(j % (8 // bits)) * bits``
  (low bits first, as :func:`zoo.kernels.pack_int4`); the padding codes of a last dim that is not a multiple
  are 0;
- ``scale``, ``zero``: x's dtype, shape ``S`` with ``S[axis]`` replaced by ``S[axis] // group_size``.

``S[axis]`` must be a multiple of ``group_size``: a KV cache quantizes whole groups and keeps the
remainder (the most recent tokens) in full precision, as KIVI does.

The Triton kernels perform the same fp32 operations in the same order (correctly rounded division),
so they give the same codes, scales and zeros bit for bit (``zoo.kernels._triton_kv_quant``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .dispatch import kernel_op

BITS = (2, 4, 8)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class KVQuantized:
    """A tensor quantized by :func:`kv_quantize`; see the module docstring for the layout."""

    codes: torch.Tensor  # uint8, shape[:-1] + (ceil(shape[-1] / (8 // bits)),)
    scale: torch.Tensor  # dtype, shape with shape[axis] -> shape[axis] // group_size
    zero: torch.Tensor  # dtype, same shape as scale: the group minimum
    bits: int
    group_size: int
    axis: int  # non-negative
    shape: torch.Size
    dtype: torch.dtype

    def nbytes(self) -> int:
        """Bytes held: packed codes, scales and zeros."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero))

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return kv_dequantize(self, dtype)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @staticmethod
    def cat(parts: Sequence[KVQuantized], dim: int) -> KVQuantized:
        """Concatenate quantized tensors along ``dim`` (a KV cache appending groups of tokens).

        The parts must share bits, group size, axis and dtype; along the packed last dim every part but
        the last must fill whole bytes.
        """
        if not parts:
            raise ValueError("KVQuantized.cat needs at least one part")
        first = parts[0]
        ndim = len(first.shape)
        d = dim % ndim if -ndim <= dim < ndim else None
        if d is None:
            raise ValueError(f"KVQuantized.cat: dim {dim} is out of range for {ndim}-d tensors")
        for p in parts[1:]:
            if (p.bits, p.group_size, p.axis, p.dtype) != (first.bits, first.group_size, first.axis, first.dtype):
                raise ValueError("KVQuantized.cat: parts differ in bits, group_size, axis or dtype: "
                                 f"{(first.bits, first.group_size, first.axis, first.dtype)} vs "
                                 f"{(p.bits, p.group_size, p.axis, p.dtype)}")
            if tuple(p.shape[:d]) + tuple(p.shape[d + 1:]) != tuple(first.shape[:d]) + tuple(first.shape[d + 1:]):
                raise ValueError(f"KVQuantized.cat: shapes {tuple(first.shape)} and {tuple(p.shape)} differ "
                                 f"outside dim {d}")
        per_byte = 8 // first.bits
        if d == ndim - 1 and any(p.shape[-1] % per_byte for p in parts[:-1]):
            raise ValueError(f"KVQuantized.cat along the packed last dim needs every part but the last to have "
                             f"a multiple of {per_byte} elements there; got {[p.shape[-1] for p in parts]}")
        shape = list(first.shape)
        shape[d] = sum(p.shape[d] for p in parts)
        return KVQuantized(torch.cat([p.codes for p in parts], d), torch.cat([p.scale for p in parts], d),
                           torch.cat([p.zero for p in parts], d), first.bits, first.group_size, first.axis,
                           torch.Size(shape), first.dtype)


def _check(x: torch.Tensor, bits: int, group_size: int, axis: int) -> int:
    """Validate the arguments; return the axis as a non-negative int."""
    if x.dtype not in DTYPES:
        raise TypeError(f"kv_quantize takes float32, float16 or bfloat16 tensors; got {x.dtype}")
    if bits not in BITS:
        raise ValueError(f"kv_quantize: bits must be one of {BITS}; got {bits}")
    if x.ndim == 0:
        raise ValueError("kv_quantize needs a tensor with at least one dim; got a scalar")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"kv_quantize: group_size must be a positive int; got {group_size!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"kv_quantize: axis {axis} is out of range for a {x.ndim}-d tensor of shape {tuple(x.shape)}")
    axis %= x.ndim
    if x.shape[axis] % group_size:
        n = x.shape[axis]
        raise ValueError(f"kv_quantize: dim {axis} of shape {tuple(x.shape)} has {n} elements, not a multiple of "
                         f"group_size={group_size}; quantize whole groups (x.narrow({axis}, 0, {n - n % group_size})) "
                         f"and keep the remaining {n % group_size} in full precision, as a KIVI cache does")
    return axis


def packed_size(last_dim: int, bits: int) -> int:
    """Bytes along the packed last dim for ``last_dim`` codes of ``bits`` bits."""
    return -(-last_dim // (8 // bits))


def stats_shape(shape: Sequence[int], group_size: int, axis: int) -> tuple[int, ...]:
    """Shape of ``scale`` and ``zero``: ``shape`` with ``shape[axis]`` divided by ``group_size``."""
    return tuple(shape[:axis]) + (shape[axis] // group_size,) + tuple(shape[axis + 1:])


def _grouped(t: torch.Tensor, group_size: int, axis: int) -> torch.Tensor:
    """(..., A, ...) -> (outer, A // group_size, group_size, inner), a view of a contiguous t."""
    outer, inner = math.prod(t.shape[:axis]), math.prod(t.shape[axis + 1:])
    return t.reshape(outer, t.shape[axis] // group_size, group_size, inner)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., D) uint8 codes below 2**bits -> (..., ceil(D / (8 // bits))) uint8, low bits first."""
    per_byte = 8 // bits
    if per_byte == 1:
        return codes.to(torch.uint8)
    d = codes.shape[-1]
    nb = packed_size(d, bits)
    padded = F.pad(codes.to(torch.int32), (0, nb * per_byte - d))  # zero codes past the last element
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int32) * bits
    return (padded.view(*codes.shape[:-1], nb, per_byte) << shifts).sum(-1).to(torch.uint8)  # (..., NB)


def unpack_codes(packed: torch.Tensor, bits: int, last_dim: int) -> torch.Tensor:
    """The inverse of :func:`pack_codes`: (..., NB) uint8 -> (..., last_dim) uint8."""
    per_byte = 8 // bits
    if per_byte == 1:
        return packed[..., :last_dim]
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32)[..., None] >> shifts) & (2**bits - 1)  # (..., NB, per_byte)
    return codes.flatten(-2)[..., :last_dim].to(torch.uint8)


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch; the CPU path)
# --------------------------------------------------------------------------------------------------
def kv_quantize_reference(x: torch.Tensor, bits: int, group_size: int, axis: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, zero) of contiguous ``x`` with a non-negative ``axis``; see the module docstring."""
    qmax = 2**bits - 1
    xg = _grouped(x, group_size, axis).float()  # (O, G, gs, I)
    zero = xg.amin(2)  # (O, G, I)
    scale = ((xg.amax(2) - zero) / qmax).to(x.dtype)
    s = scale.float()
    s = torch.where(s == 0, torch.ones_like(s), s)  # a constant group: every code 0, dequantized to its zero
    codes = torch.round((xg - zero[:, :, None]) / s[:, :, None]).clamp_(0, qmax).to(torch.uint8)
    stats = stats_shape(x.shape, group_size, axis)
    return pack_codes(codes.view(x.shape), bits), scale.view(stats), zero.to(x.dtype).view(stats)


def kv_dequantize_reference(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                            group_size: int, axis: int, last_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``code * scale + zero`` in fp32, rounded to ``dtype``; the shape is codes.shape[:-1] + (last_dim,)."""
    c = unpack_codes(codes, bits, last_dim)  # (S)
    cg = _grouped(c, group_size, axis).float()  # (O, G, gs, I)
    s = scale.reshape(cg.shape[0], cg.shape[1], 1, cg.shape[3]).float()
    z = zero.reshape(s.shape).float()
    return (cg * s + z).to(dtype).view(c.shape)


_quantize = kernel_op("kv_quantize")(kv_quantize_reference)
_dequantize = kernel_op("kv_dequantize")(kv_dequantize_reference)


# --------------------------------------------------------------------------------------------------
# custom ops (inference only: no autograd formula)
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::kv_quantize", mutates_args=())
def _kv_quantize_op(x: torch.Tensor, bits: int, group_size: int, axis: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _quantize(x.contiguous(), bits, group_size, axis)


@_kv_quantize_op.register_fake
def _(x, bits, group_size, axis):
    stats = stats_shape(x.shape, group_size, axis)
    codes = x.new_empty((*x.shape[:-1], packed_size(x.shape[-1], bits)), dtype=torch.uint8)
    return codes, x.new_empty(stats), x.new_empty(stats)


@torch.library.custom_op("zoo::kv_dequantize", mutates_args=())
def _kv_dequantize_op(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                      axis: int, last_dim: int, dtype: torch.dtype) -> torch.Tensor:
    return _dequantize(codes.contiguous(), scale.contiguous(), zero.contiguous(), bits, group_size, axis, last_dim,
                       dtype)


@_kv_dequantize_op.register_fake
def _(codes, scale, zero, bits, group_size, axis, last_dim, dtype):
    return codes.new_empty((*codes.shape[:-1], last_dim), dtype=dtype)


def kv_quantize(x: torch.Tensor, bits: int = 4, group_size: int = 32, axis: int = -1) -> KVQuantized:
    """Quantize ``x`` in groups of ``group_size`` consecutive elements along ``axis`` to ``bits`` bits.

    Keys of a (B, H, T, D) cache: ``axis=2`` (per channel); values: ``axis=-1`` (per token). Not
    differentiable (``x`` is detached). See the module docstring for the math and the layout.
    """
    axis = _check(x, bits, group_size, axis)
    codes, scale, zero = _kv_quantize_op(x.detach(), bits, group_size, axis)
    return KVQuantized(codes, scale, zero, bits, group_size, axis, x.shape, x.dtype)


def kv_dequantize(q: KVQuantized, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The tensor of ``q.shape`` that ``q`` stands for, in ``dtype`` (default: the quantized tensor's)."""
    dtype = q.dtype if dtype is None else dtype
    if dtype not in DTYPES:
        raise TypeError(f"kv_dequantize returns float32, float16 or bfloat16; got {dtype}")
    want = (*q.shape[:-1], packed_size(q.shape[-1], q.bits))
    if tuple(q.codes.shape) != want or q.codes.dtype != torch.uint8:
        raise ValueError(f"kv_dequantize: codes of shape {tuple(q.codes.shape)} ({q.codes.dtype}) do not fit a "
                         f"{q.bits}-bit tensor of shape {tuple(q.shape)}; expected uint8 {want}")
    stats = stats_shape(q.shape, q.group_size, q.axis)
    if tuple(q.scale.shape) != stats or tuple(q.zero.shape) != stats:
        raise ValueError(f"kv_dequantize: scale {tuple(q.scale.shape)} and zero {tuple(q.zero.shape)} must both be "
                         f"{stats} for groups of {q.group_size} along dim {q.axis} of {tuple(q.shape)}")
    return _kv_dequantize_op(q.codes, q.scale, q.zero, q.bits, q.group_size, q.axis, q.shape[-1], dtype)


# --------------------------------------------------------------------------------------------------
# Triton implementations (triton is imported on first use)
# --------------------------------------------------------------------------------------------------
_quantize.register_triton_lazy("zoo.kernels._triton_kv_quant", "kv_quantize")
_dequantize.register_triton_lazy("zoo.kernels._triton_kv_quant", "kv_dequantize")
