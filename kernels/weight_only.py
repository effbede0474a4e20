"""Weight-only linear layers on the CPU's packed int8 / int4 GEMM kernels, for a few tokens at a time.

``w8a16`` / ``w4a16`` layers otherwise dequantize their weights on every call and run a float matmul: on
one decode token that costs some twenty times the fp32 layer. PyTorch ships the kernels gpt-fast and
torchao use for weight-only models on the CPU: ``aten._weight_int8pack_mm`` (int8 per output channel) and
``aten._weight_int4pack_mm_for_cpu`` (int4 in groups of 32 to 256, ``(q - 8) * scale + zero`` with a float
zero). They read the weights in their integer form, with bf16 activations and scales (the "16" of a16).
On this repository's CPU (``python benchmarks/weight_only.py``, ``benchmarks/RESULTS.md``) they run 1.5-2x
faster than the fp32 layer for 1-4 rows and as fast at 16, and beat dequantizing up to 16 rows (int8) and
64 (int4): so a ``QuantLinear`` sends a call here when it has at most :data:`MAX_ROWS` rows for its weight
width, on the CPU, where the kernels exist and the layer's layout fits them.

- :func:`linear` the packed call, :func:`linear_reference` the same arithmetic in plain PyTorch (dequantized
  weights and the activations rounded to bf16, the scales to bf16, an fp32 matmul): the test's oracle;
- :class:`PackedCache` packs a layer's buffers once and again only when one of them changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .int_gemm import INT4_SYMMETRIC_ZERO, unpack_int4
from .onednn_int8 import buffers_key

MAX_ROWS = {8: 16, 4: 64}  # weight bits -> the most rows a call sends to the packed kernel (then: dequantize)
INT4_GROUPS = (32, 64, 128, 256)  # the group sizes the int4 kernel takes
COMPUTE_DTYPE = torch.bfloat16


KERNEL_OPS = ("_weight_int8pack_mm", "_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu")


def unavailable_reason() -> Optional[str]:
    """None when this PyTorch has the kernels, else what is missing."""
    missing = [op for op in KERNEL_OPS if not hasattr(torch.ops.aten, op)]
    return f"this PyTorch lacks aten.{', aten.'.join(missing)}" if missing else None


def layout_reason(weight_bits: int, group_size: Optional[int], channels: int, outputs: int) -> Optional[str]:
    """None when a layer of this layout (``channels`` inputs, ``outputs`` outputs) fits the kernels, else why not."""
    if weight_bits == 8:
        return None if group_size is None else "8-bit weight groups (the int8 kernel takes one scale per channel)"
    group = group_size or channels
    if group not in INT4_GROUPS or channels % group:
        return f"int4 groups of {group} (the kernel takes {', '.join(map(str, INT4_GROUPS))})"
    if outputs % 16:
        return f"{outputs} outputs (the int4 kernel packs them in sixteens)"
    return None


@dataclass
class PackedWeight:
    """A layer's weights in the kernel's form: int8 (N, K) with (N,) scales, or int4 packed with its
    (K / group, N, 2) scales and float zeros."""

    values: torch.Tensor
    scales: torch.Tensor
    group: Optional[int]  # None: int8 per channel


def _int4_scale_and_zero(w_scale: torch.Tensor, w_zero: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The int4 kernel's fp32 (scale, float zero), each (N, S): ``(q - zero) * scale`` is
    ``(q - 8) * scale + (8 - zero) * scale``."""
    scale = w_scale.float()
    zero = torch.full_like(scale, INT4_SYMMETRIC_ZERO) if w_zero is None else w_zero.float()
    return scale, (INT4_SYMMETRIC_ZERO - zero) * scale


def pack(qweight: torch.Tensor, w_scale: torch.Tensor, w_zero: Optional[torch.Tensor], weight_bits: int,
         channels: int, group_size: Optional[int]) -> PackedWeight:
    """The kernel's form of a QuantLinear's buffers: qweight (N, 1, 1, K or K / 2), scales (N, S), zeros (N, S)."""
    n = qweight.shape[0]
    if weight_bits == 8:
        return PackedWeight(qweight.reshape(n, channels).contiguous(), w_scale[:, 0].to(COMPUTE_DTYPE), None)
    group = group_size or channels
    codes = unpack_int4(qweight.reshape(n, -1), channels, torch.int32)  # (N, K) nibbles 0..15
    scales_and_zeros = torch.stack(_int4_scale_and_zero(w_scale, w_zero), -1)  # (N, S, 2)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    return PackedWeight(packed, scales_and_zeros.transpose(0, 1).contiguous().to(COMPUTE_DTYPE), group)


def linear(x: torch.Tensor, weight: PackedWeight, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ W.T + bias`` for x (M, K), in x's dtype, through the packed kernel (bf16 inside)."""
    xb = x.to(COMPUTE_DTYPE)
    if weight.group is None:
        y = torch.ops.aten._weight_int8pack_mm(xb, weight.values, weight.scales)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, weight.values, weight.group, weight.scales)
    y = y.to(x.dtype)
    return y if bias is None else y.add_(bias.to(x.dtype))


def linear_reference(x: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor, w_zero: Optional[torch.Tensor],
                     weight_bits: int, channels: int, group_size: Optional[int],
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """What :func:`linear` computes, in plain PyTorch: the weights from their integers with the scales (and
    int4's float zeros) rounded to bf16, against the activations rounded to bf16, summed in fp32."""
    n = qweight.shape[0]
    if weight_bits == 8:
        weight = qweight.reshape(n, channels).float() * w_scale[:, :1].to(COMPUTE_DTYPE).float()
    else:
        group = group_size or channels
        codes = unpack_int4(qweight.reshape(n, -1), channels, torch.int32).float()  # (N, K)
        scale, float_zero = (t.to(COMPUTE_DTYPE).float() for t in _int4_scale_and_zero(w_scale, w_zero))  # (N, S)
        weight = ((codes - INT4_SYMMETRIC_ZERO) * scale.repeat_interleave(group, 1)
                  + float_zero.repeat_interleave(group, 1))  # (N, K)
    y = (x.to(COMPUTE_DTYPE).float() @ weight.T).to(COMPUTE_DTYPE).to(x.dtype)  # (M, N), rounded as the kernel does
    return y if bias is None else y + bias.to(x.dtype)


class PackedCache:
    """The packed weights of a layer, made on first use and again only when one of its buffers changed."""

    def __init__(self) -> None:
        self.key: Optional[tuple] = None
        self.weight: Optional[PackedWeight] = None

    def get(self, qweight: torch.Tensor, w_scale: torch.Tensor, w_zero: Optional[torch.Tensor], weight_bits: int,
            channels: int, group_size: Optional[int]) -> PackedWeight:
        key = buffers_key(qweight, w_scale, w_zero)
        if self.key != key:
            self.weight = pack(qweight, w_scale, w_zero, weight_bits, channels, group_size)
            self.key = key
        return self.weight


__all__ = ["MAX_ROWS", "PackedCache", "PackedWeight", "layout_reason", "linear", "linear_reference", "pack",
           "unavailable_reason"]
