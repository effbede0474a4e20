"""Activation quantization for integer matmuls: ``zoo::quantize_act``.

One pass over the activations that applies the calibrated per-channel shift and multiplier
(SmoothQuant / Outlier Suppression+ scales that could not be folded into the previous layer) and
quantizes to int8, symmetric, with one scale per token (dynamic) or given scales: one for the whole
tensor (a static, calibrated scale) or one per image (a convolution's per-image dynamic scale, which
the layer computes first):

    v = (x - shift) * multiplier                      # fp32
    scale = max|v| / 127 over the last dim (dynamic; 1 where the row is all zero) | static_scale
    q = clamp(round_half_even(v / scale), -127, 127)  # int8

Tokens are rows of a linear layer's input and pixels (over channels) of a convolution's
channels-last input. The Triton kernel performs the same fp32 operations in the same order, so under
the interpreter it gives the same ``q`` bit for bit.
"""
from __future__ import annotations

from typing import Optional

import torch

from .dispatch import kernel_op

QMAX = 127


def _check(x: torch.Tensor, multiplier: Optional[torch.Tensor], shift: Optional[torch.Tensor],
           static_scale: Optional[torch.Tensor]) -> None:
    if not x.is_floating_point():
        raise TypeError(f"quantize_act expects floating-point activations; got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"quantize_act expects activations of shape (..., K) with K > 0; got {tuple(x.shape)}")
    k = x.shape[-1]
    for name, t in (("multiplier", multiplier), ("shift", shift)):
        if t is not None and tuple(t.shape) != (k,):
            raise ValueError(f"quantize_act: {name} must have shape ({k},) for activations of shape "
                             f"{tuple(x.shape)}; got {tuple(t.shape)}")
    if static_scale is not None and static_scale.numel() != 1 and (x.ndim < 2 or static_scale.shape != x.shape[:1]):
        raise ValueError(f"quantize_act: static_scale must hold one value, or one per image ({x.shape[0]},) for "
                         f"activations of shape {tuple(x.shape)}; got shape {tuple(static_scale.shape)}")


def round_half_even(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties to even (IEEE ``rint``; ``torch.round`` does the same)."""
    return torch.round(v)


def quantize_act_reference(x: torch.Tensor, multiplier: Optional[torch.Tensor] = None,
                           shift: Optional[torch.Tensor] = None,
                           static_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (..., K) to int8 (..., K) with fp32 scales (...).

    ``static_scale``: one value, or one per leading index (B,) shared by that image's tokens."""
    v = x.float()
    if shift is not None:
        v = v - shift.float()
    if multiplier is not None:
        v = v * multiplier.float()
    if static_scale is None:
        amax = v.abs().amax(dim=-1)
        scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    else:
        given = static_scale.float()
        # one value, or one per image: (B,) -> (B, 1, ..., 1) over the image's token dims
        given = given.view((-1,) + (1,) * (v.ndim - 2)) if given.numel() > 1 else given.reshape(())
        scale = given.expand(v.shape[:-1]).clone(memory_format=torch.contiguous_format)
    q = round_half_even(v / scale.unsqueeze(-1)).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


_quantize_act = kernel_op("quantize_act")(quantize_act_reference)


_quantize_act.register_triton_lazy("zoo.kernels._triton_quant_act", "quantize_act")  # imported on first launch


@torch.library.custom_op("zoo::quantize_act", mutates_args=())
def _quantize_act_op(x: torch.Tensor, multiplier: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                     static_scale: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_act(x.contiguous(), multiplier, shift, static_scale)


@_quantize_act_op.register_fake
def _(x, multiplier, shift, static_scale):
    return (torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device))


def quantize_act(x: torch.Tensor, multiplier: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                 static_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 activations and their scales; see the module docstring. Not differentiable (inference)."""
    _check(x, multiplier, shift, static_scale)
    if torch.compiler.is_compiling():  # one node in the graph
        return _quantize_act_op(x, multiplier, shift, static_scale)
    return _quantize_act(x.contiguous(), multiplier, shift, static_scale)  # eager: no custom-op dispatch (~100 us)
