"""Calibration methods: the per-input-channel scale ``s`` and shift ``z`` of each layer.

Every method rewrites a layer ``y = W x + b`` into the same function of easier-to-quantize tensors,

    y = (W * s) ((x - z) / s) + (b + W z)

(``s`` multiplies the weight's input channels, ``z`` moves into the bias) and then quantizes
``W * s`` and ``(x - z) / s``:

- ``rtn``: no rewrite (s = 1, z = 0), round to nearest;
- ``smoothquant`` (Xiao et al., 2023): ``s_j = max|X_j|^a / max|W_j|^(1-a)`` migrates activation
  outliers into the weights;
- ``os+`` (Outlier Suppression+, Wei et al., 2023): ``z_j`` centres each channel's range
  (``(max_j + min_j) / 2``), then ``s_j = max(1, max|X_j - z_j| / t)`` with the threshold ``t``
  searched to minimise the layer's output error;
- ``awq`` (Lin et al., 2024): ``s_j = mean|X_j|^a`` (normalised), ``a`` searched on a grid to minimise
  the layer's output error with quantized weights (and activations when they are quantized);
- ``gptq`` (Frantar et al., 2023; :mod:`zoo.quant.gptq`): no rewrite of the activations; the weights are
  rounded column by column, each column's error moved onto the columns not yet rounded;
- ``repq`` (RepQ-ViT, Li et al., 2023): for layers that read a LayerNorm's output, per-channel
  activation quantization reparameterized to a per-layer one: ``z_j`` centres each channel
  (``(max_j + min_j) / 2``) and ``s_j = r_j / mean(r)`` equalises the channel ranges ``r_j``, both
  folded into the LayerNorm's affine and the next linear layer; other layers are left to RTN.

Each method is called as ``method(layer, stats, spec, group_size, alpha=, producer=)``, ``producer``
being the module whose output the layer reads directly (None when unknown or behind a non-linearity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from zoo.blocks.quant import act_scope, dequantize_weight, fake_quantize_activation, quantize_weight

from .calibrate import LayerStats

METHODS: dict[str, Callable] = {}
GRID = 20


@dataclass
class Transform:
    """What a method decided for one layer: activations ``(x - shift) / scale``; and, for a method that rounds
    the weights itself (GPTQ), the weights (N, KH, KW, C) to store and the (scale, zero) grid they lie on."""

    scale: Optional[torch.Tensor] = None
    shift: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    grid: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None


def register_method(name: str):
    def wrap(fn):
        METHODS[name] = fn
        return fn
    return wrap


def weight_nhwc(layer: nn.Module) -> torch.Tensor:
    """A layer's float weight as (N, KH, KW, C)."""
    if isinstance(layer, nn.Conv2d):
        return layer.weight.detach().float().permute(0, 2, 3, 1)
    return layer.weight.detach().float()[:, None, None, :]


def input_columns(layer: nn.Module, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """The layer's inputs as rows against its flattened weight's columns, (tokens, K): a conv's im2col patches in
    the (KH, KW, C) order of :func:`weight_nhwc` or, with ``channels_last=False``, in the (C, KH, KW) order of
    ``conv.weight.reshape(N, -1)``; a linear layer's tokens."""
    if not isinstance(layer, nn.Conv2d):
        return x.reshape(-1, x.shape[-1])  # (..., K) -> (tokens, K)
    kh, kw = layer.kernel_size
    cols = F.unfold(x, (kh, kw), layer.dilation, layer.padding, layer.stride)  # (B, C*KH*KW, L), C outermost
    b, k, positions = cols.shape
    if not channels_last:
        return cols.transpose(1, 2).reshape(b * positions, k)  # (B*L, C*KH*KW)
    cols = cols.view(b, layer.in_channels, kh * kw, positions)  # (B, C, KH*KW, L)
    return cols.permute(0, 3, 2, 1).reshape(b * positions, k)  # (B*L, KH*KW*C)


def shift_allowed(layer: nn.Module) -> bool:
    """A shift moves exactly into the bias only where no zero padding is read (the padded zeros
    would become ``-z``)."""
    return isinstance(layer, nn.Linear) or all(p == 0 for p in layer.padding)


def _channel_view(t: torch.Tensor, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    return t.view(1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else t


def _run(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight.permute(0, 3, 1, 2), bias, layer.stride, layer.padding)
    return F.linear(x, weight.flatten(1), bias)


class SimulatedLayer:
    """A layer's output when quantized under ``spec`` after ``transform``, emulated in float.

    The weights are quantized and dequantized once; calling it on inputs (the layer's own layout)
    applies the transform, fake-quantizes the activations as the integer path scales them and runs the
    float op. :func:`layer_error` and :func:`zoo.quant.analyze` (one layer quantized inside the float
    model) both use it, so the two measure the same thing.
    """

    @torch.no_grad()
    def __init__(self, layer: nn.Module, spec, group_size: Optional[int], transform: Transform) -> None:
        self.layer, self.spec, self.transform = layer, spec, transform
        weight = weight_nhwc(layer) if transform.weight is None else transform.weight  # (N, KH, KW, C)
        bias = None if layer.bias is None else layer.bias.detach().float()
        if transform.shift is not None:
            correction = (weight * transform.shift).sum((1, 2, 3))  # W z, summed over taps
            bias = correction if bias is None else bias + correction
        if transform.scale is not None:
            weight = weight * transform.scale
        q = quantize_weight(weight, spec.weight_bits, group_size, spec.weight_symmetric, spec.fp8, transform.grid)
        self.weight = dequantize_weight(q.values, q.scale, q.zero, spec.weight_bits, weight.shape[-1], group_size,
                                        spec.fp8)
        self.bias = bias

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer, t = self.layer, self.transform
        dtype = x.dtype
        x = x.float()
        if t.shift is not None:
            x = x - _channel_view(t.shift.to(x.device), x, layer)
        if t.scale is not None:
            x = x / _channel_view(t.scale.to(x.device), x, layer)
        if not self.spec.weight_only:
            conv = isinstance(layer, nn.Conv2d)
            tokens = x.permute(0, 2, 3, 1) if conv else x  # (B, H, W, C) or (..., K)
            tokens = fake_quantize_activation(tokens, 8, self.spec.fp8, act_scope(self.spec, layer) == "image")
            x = tokens.permute(0, 3, 1, 2) if conv else tokens
        bias = None if self.bias is None else self.bias.to(x.device)
        return _run(layer, x, self.weight.to(x.device), bias).to(dtype)


def layer_reference(layer: nn.Module, sample: torch.Tensor) -> torch.Tensor:
    """The float layer's output on ``sample``."""
    return _run(layer, sample, weight_nhwc(layer), None if layer.bias is None else layer.bias.detach().float())


@torch.no_grad()
def layer_error(layer: nn.Module, sample: torch.Tensor, spec, group_size: Optional[int], transform: Transform,
                reference: Optional[torch.Tensor] = None) -> float:
    """Mean squared error of the quantized, transformed layer against the float one on ``sample``."""
    if reference is None:
        reference = layer_reference(layer, sample)
    return float((SimulatedLayer(layer, spec, group_size, transform)(sample) - reference).pow(2).mean())


def _normalise(s: torch.Tensor) -> torch.Tensor:
    """Scales centred geometrically on 1, clamped away from 0 and infinity."""
    s = s.clamp(1e-4, 1e4)
    return s / (s.max() * s.min()).sqrt()


@register_method("rtn")
def rtn(layer: nn.Module, stats: LayerStats, spec, group_size: Optional[int], **_) -> Transform:
    return Transform()


@register_method("smoothquant")
def smoothquant(layer: nn.Module, stats: LayerStats, spec, group_size: Optional[int], alpha: float = 0.5,
                **_) -> Transform:
    w_max = weight_nhwc(layer).abs().amax((0, 1, 2)).clamp_min(1e-5)  # (C,) over outputs and taps
    x_max = stats.absmax.clamp_min(1e-5)
    return Transform(scale=(x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp_min(1e-5))


@register_method("os+")
def outlier_suppression_plus(layer: nn.Module, stats: LayerStats, spec, group_size: Optional[int],
                             **_) -> Transform:
    reference = layer_reference(layer, stats.sample)
    best, best_err = Transform(), layer_error(layer, stats.sample, spec, group_size, Transform(), reference)
    # the shift helps skewed channels only when activations are quantized; with or without it, search
    # the scaling threshold among the channel ranges themselves, from the largest down
    shifts = [None] + ([(stats.maximum + stats.minimum) / 2] if shift_allowed(layer) else [])
    for shift in shifts:
        centred = stats.absmax if shift is None else torch.maximum(stats.maximum - shift, shift - stats.minimum)
        centred = centred.clamp_min(1e-5)
        candidates = [Transform(shift=shift)] + [Transform(scale=(centred / t).clamp_min(1.0), shift=shift)
                                                 for t in torch.quantile(centred, torch.linspace(1.0, 0.5, GRID))]
        for candidate in candidates:
            err = layer_error(layer, stats.sample, spec, group_size, candidate, reference)
            if err < best_err:
                best, best_err = candidate, err
    return best


@register_method("awq")
def awq(layer: nn.Module, stats: LayerStats, spec, group_size: Optional[int], **_) -> Transform:
    x_mean = stats.abs_mean.clamp_min(1e-5)
    reference = layer_reference(layer, stats.sample)
    best, best_err = Transform(), layer_error(layer, stats.sample, spec, group_size, Transform(), reference)
    for a in torch.arange(1, GRID).div(GRID).tolist():
        candidate = Transform(scale=_normalise(x_mean.pow(a)))
        err = layer_error(layer, stats.sample, spec, group_size, candidate, reference)
        if err < best_err:
            best, best_err = candidate, err
    return best


@register_method("repq")
def repq(layer: nn.Module, stats: LayerStats, spec, group_size: Optional[int],
         producer: Optional[nn.Module] = None, **_) -> Transform:
    if not isinstance(producer, (nn.LayerNorm, nn.GroupNorm)):
        return Transform()
    shift = (stats.maximum + stats.minimum) / 2 if shift_allowed(layer) else None
    reach = stats.absmax if shift is None else (stats.maximum - stats.minimum) / 2
    reach = reach.clamp_min(1e-5)
    return Transform(scale=reach / reach.mean(), shift=shift)
