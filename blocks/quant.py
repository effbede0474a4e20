"""Quantized layers: :class:`QuantLinear` and :class:`QuantConv2d` (real integer weights), and their
fake-quant twins :class:`FakeQuantLinear` / :class:`FakeQuantConv2d` for quantization-aware training.

A quantized layer holds its weights as int8, or int4 packed two per byte, in the channels-last
layout of :mod:`zoo.kernels.int_gemm` (N, KH, KW, C), with per-channel or per-(tap, group) scales, plus:

- ``act_multiplier`` / ``act_shift`` (C,): SmoothQuant / AWQ scales and Outlier Suppression+ shifts
  that could not be folded into the previous layer, applied inside the activation quantization;
- ``act_scale`` (): a static per-tensor activation scale (absent: dynamic scales, per token, or per
  image for a k x k convolution under a ``per_image`` spec: the presets).

With int8 activations the forward pass is ``quantize_act`` then an integer GEMM (``int_conv2d`` /
``int_linear``, exact int32 per kernel tap and weight group). On an x86 CPU with VNNI or AMX, a layer
whose activation scale factors out of its reduction (a 1x1 convolution or a linear layer, or a k x k
convolution with per-image or static scales) and has one weight scale per output channel (int8, or
int4 unpacked to int8) runs on oneDNN's int8 kernels instead (:mod:`zoo.kernels.onednn_int8`): the same
int32 accumulators, weights reordered once and cached. :meth:`_QuantLayer.execution` says which.
Weight-only layers (``w4a16``, ``w8a16``) dequantize their weights on the fly; fp8 layers keep e4m3
weights and quantize activations to e4m3 per token.
Fake-quant layers are ``nn.Linear``/``nn.Conv2d`` subclasses with the same state dict as the float
layer, so a QAT checkpoint loads into the float model and converts like any other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from zoo.kernels import (int_conv2d, int_linear, kernel_mode, onednn_int8, pack_int4, quantize_act, unpack_int4,
                         weight_only)
from zoo.kernels.int_gemm import INT4_SYMMETRIC_ZERO

from .fusion import can_fuse
from .quant_spec import QuantSpec

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@dataclass
class QuantizedWeight:
    """Integer weights (packed for 4 bit), their (N, S) scales and, for asymmetric int4, zero points."""

    values: torch.Tensor
    scale: torch.Tensor
    zero: Optional[torch.Tensor]


def _segments(weight: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    """(N, KH, KW, C) -> (N, S, L): the values that share one scale."""
    n, kh, kw, c = weight.shape
    if group_size is None:
        return weight.reshape(n, 1, kh * kw * c)
    return weight.reshape(n, kh * kw * (c // group_size), group_size)


# Symmetric int4 uses the whole signed grid -8..7 with the scale that clips nothing: the most negative
# weight lands on -8 or the largest positive one on 7, whichever needs the larger step (torchao's
# SYMMETRIC_NO_CLIPPING_ERR). Against -7..7 with max|w| / 7 the step is up to 1/8 finer; against
# torchao's default max|w| / 7.5 nothing is clipped. Clipping, even where it lowers the weights' squared
# error (a per-segment search over max|w| / 7 ... / 12), cost accuracy on the digits ResNet and the MLPs
# of benchmarks/quant_accuracy.py: it shrinks the largest weights, a bias that adds up through the layers.
INT4_MIN, INT4_MAX = -8, 7


def _rounded_scale(scale: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """The scale as stored (fp16 for groups), never zero: all-zero segments get the smallest normal."""
    return scale.to(scale_dtype).clamp_min(torch.finfo(scale_dtype).tiny)


def segment_grid(seg: torch.Tensor, bits: int, symmetric: bool, grouped: bool
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The scale (N, S) and, for asymmetric int4, zero point (N, S) round to nearest gives segments (N, S, L):
    the grid clips nothing; scales are stored in fp16 for groups (``grouped``), fp32 per channel."""
    scale_dtype = torch.float16 if grouped else torch.float32
    if symmetric and bits == 8:
        return _rounded_scale(seg.abs().amax(-1) / 127, scale_dtype), None
    high, low = seg.amax(-1).clamp(min=0), seg.amin(-1).clamp(max=0)  # keep 0 exactly representable
    if symmetric:
        return _rounded_scale(torch.maximum(high / INT4_MAX, low / INT4_MIN), scale_dtype), None  # (N, S)
    scale = _rounded_scale((high - low) / 15, scale_dtype)
    return scale, torch.round(-low / scale.float()).clamp(0, 15)


def segment_levels(seg: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], bits: int,
                   symmetric: bool) -> torch.Tensor:
    """Integer levels (N, S, L) of segments on the grid ``scale`` / ``zero`` (N, S), clamped to its range."""
    levels = torch.round(seg / scale.float()[..., None])
    if bits == 8:
        return levels.clamp(-127, 127)
    if symmetric:
        return levels.clamp(INT4_MIN, INT4_MAX)
    return (levels + zero[..., None]).clamp(0, 15)


def _weight_grid(seg: torch.Tensor, bits: int, symmetric: bool, grouped: bool,
                 grid: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None):
    """Scale (N, S), zero point (N, S) or None, and integer levels (N, S, L) of weight segments: on ``grid``
    where given (a method that chose its own, GPTQ), else on :func:`segment_grid`'s. Levels are computed
    against the stored (rounded) scale."""
    scale, zero = grid if grid is not None else segment_grid(seg, bits, symmetric, grouped)
    return scale, zero, segment_levels(seg, scale, zero, bits, symmetric)


def quantize_weight(weight: torch.Tensor, bits: int, group_size: Optional[int] = None, symmetric: bool = True,
                    fp8: bool = False, grid: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None
                    ) -> QuantizedWeight:
    """Round-to-nearest quantization of channels-last weights (N, KH, KW, C).

    Scales are stored in fp32 for one scale per channel and in fp16 for groups (they are then a
    noticeable part of an int4 file); the values are computed against the stored, rounded scale.
    ``grid``: the (scale, zero) to round onto instead of the ones the weights' own range gives (GPTQ
    fixes each group's grid before it adjusts the group's weights).
    """
    w = weight.detach().float()
    n, kh, kw, c = w.shape
    seg = _segments(w, group_size)  # (N, S, L)
    if fp8:
        scale = (seg.abs().amax(-1) / FP8_MAX).clamp_min(1e-12)  # (N, S)
        values = (seg / scale[..., None]).to(torch.float8_e4m3fn).view(n, kh, kw, c)
        return QuantizedWeight(values, scale, None)
    if not symmetric and bits != 4:
        raise ValueError("asymmetric weights are 4 bit")
    scale, zero, q = _weight_grid(seg, bits, symmetric, group_size is not None, grid)
    q = q.view(n, kh, kw, c)
    if bits == 8:
        return QuantizedWeight(q.to(torch.int8), scale, None)
    if symmetric:
        return QuantizedWeight(pack_int4(q + INT4_SYMMETRIC_ZERO), scale, None)
    return QuantizedWeight(pack_int4(q), scale, zero.to(torch.uint8))


def fake_quantize_weight(weight: torch.Tensor, bits: int, group_size: Optional[int] = None, symmetric: bool = True,
                         fp8: bool = False) -> torch.Tensor:
    """Quantize-dequantize (N, KH, KW, C) weights, the values :func:`quantize_weight` stores, without packing."""
    n, kh, kw, c = weight.shape
    seg = _segments(weight.float(), group_size)  # (N, S, L)
    if fp8:
        scale = (seg.abs().amax(-1) / FP8_MAX).clamp_min(1e-12)[..., None]
        deq = (seg / scale).to(torch.float8_e4m3fn).float() * scale
    else:
        scale, zero, q = _weight_grid(seg, bits, symmetric, group_size is not None)
        deq = (q - (0 if zero is None else zero[..., None])) * scale.float()[..., None]
    return deq.view(n, kh, kw, c).to(weight.dtype)


def dequantize_weight(values: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], bits: int,
                      channels: int, group_size: Optional[int], fp8: bool = False) -> torch.Tensor:
    """Float weights (N, KH, KW, C) from their quantized form (the inverse of :func:`quantize_weight`)."""
    if fp8 or bits == 8:
        q = values.float()
    else:
        q = unpack_int4(values, channels).float()
        q = q - (INT4_SYMMETRIC_ZERO if zero is None else _expand(zero.float(), q.shape, group_size))
    return q * _expand(scale.float(), q.shape, group_size)


def _expand(table: torch.Tensor, shape: torch.Size, group_size: Optional[int]) -> torch.Tensor:
    """An (N, S) table broadcast to the weight's (N, KH, KW, C)."""
    n, kh, kw, c = shape
    if table.shape[1] == 1:
        return table.view(n, 1, 1, 1)
    g = group_size
    return table.view(n, kh, kw, c // g, 1).expand(n, kh, kw, c // g, g).reshape(n, kh, kw, c)


def fake_quantize_activation(x: torch.Tensor, bits: int = 8, fp8: bool = False,
                             per_image: bool = False) -> torch.Tensor:
    """Per-token (last dim) symmetric quantize-dequantize, as the integer path sees activations;
    ``per_image``: one scale per leading index (a k x k convolution's (B, H, W, C) input under ``per_image``)."""
    if fp8:
        scale = (x.detach().abs().amax(-1, keepdim=True).float() / FP8_MAX).clamp_min(1e-12)
        return ((x.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)
    qmax = 2 ** (bits - 1) - 1
    dims = tuple(range(1, x.ndim)) if per_image else (-1,)
    amax = x.detach().abs().amax(dims, keepdim=True).float()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return (torch.round(x.float() / scale).clamp(-qmax, qmax) * scale).to(x.dtype)


def _ste(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the forward value of ``quantized``, the gradient of ``x``."""
    return x + (quantized - x).detach()


def is_pointwise(layer: nn.Module) -> bool:
    """Each output reads one input token: a linear layer, or a 1x1 convolution without padding."""
    return tuple(getattr(layer, "kernel_size", (1, 1))) == (1, 1) and tuple(getattr(layer, "padding", (0, 0))) == (0, 0)


def act_scope(spec: QuantSpec, layer: nn.Module) -> str:
    """Which activations share one scale in ``layer`` (float or quantized) under ``spec``: ``tensor``
    (static: per tensor, or per channel folded into the weights, which leaves one scale), ``image`` (a
    k x k convolution under ``per_image``) or ``token`` (a row or pixel)."""
    if spec.act_granularity == "per_image":
        return "token" if is_pointwise(layer) else "image"
    return "tensor" if spec.static_activations else "token"


def dynamic_scales(v: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``max|v| / 127`` over ``dims`` (1 where all zero): the scales :func:`zoo.kernels.quantize_act` computes
    per token, here over any dims (an image's pixels and channels), in the same fp32 operations."""
    amax = torch.linalg.vector_norm(v, float("inf"), dims)  # max|v|: exact, one pass, no |v| temporary
    return torch.where(amax > 0, amax / 127, 1.0)


# ------------------------------------------------------------------------------------------------
# integer layers
# ------------------------------------------------------------------------------------------------
class _QuantLayer(nn.Module):
    """What QuantLinear and QuantConv2d share: buffers, the activation step, conversion."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], bias: bool, spec: QuantSpec,
                 group_size: Optional[int], *, act_multiplier: bool = False, act_shift: bool = False,
                 act_scale: bool = False, device=None) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.group_size = group_size
        bits, kh, kw, c = spec.weight_bits, kernel_size[0], kernel_size[1], in_channels
        segments = 1 if group_size is None else kh * kw * (c // group_size)
        if spec.fp8:
            values = torch.empty(out_channels, kh, kw, c, dtype=torch.float8_e4m3fn, device=device)
        elif bits == 8:
            values = torch.empty(out_channels, kh, kw, c, dtype=torch.int8, device=device)
        else:
            values = torch.empty(out_channels, kh, kw, (c + 1) // 2, dtype=torch.uint8, device=device)
        scale_dtype = torch.float32 if group_size is None else torch.float16
        self.register_buffer("qweight", values)
        self.register_buffer("weight_scale", torch.empty(out_channels, segments, dtype=scale_dtype, device=device))
        asym = not spec.weight_symmetric and bits == 4 and not spec.fp8
        self.register_buffer("weight_zero", torch.empty(out_channels, segments, dtype=torch.uint8, device=device)
                             if asym else None)
        self.register_buffer("bias", torch.empty(out_channels, device=device) if bias else None)
        self.register_buffer("act_multiplier", torch.ones(c, device=device) if act_multiplier else None)
        self.register_buffer("act_shift", torch.zeros(c, device=device) if act_shift else None)
        self.register_buffer("act_scale", torch.ones((), device=device) if act_scale else None)
        self._onednn = onednn_int8.WeightCache()
        self.codes_released = False  # see release_codes
        self._cpu_kernel: Optional[tuple[str, str]] = None  # (ZOO_KERNELS value, execution()'s kernel on the CPU)
        self._weight_only = weight_only.PackedCache()  # weight-only layers' packed weights, made on first use
        self.fused_relu = False  # a ReLU that followed this layer, applied here (set by zoo.optimize)
        # the next layer's static activation scale: emit its uint8 codes instead of floats (set by zoo.optimize)
        self.codes_out_scale: Optional[torch.Tensor] = None

    # ---- execution: which kernel runs this layer -----------------------------------------------
    @property
    def act_scope(self) -> str:
        return act_scope(self.spec, self)

    @property
    def act_description(self) -> str:
        """How the layer's activations are quantized, for reprs and summaries."""
        if self.spec.weight_only:
            return "float"
        return "static per-tensor" if self.act_scale is not None else f"per-{self.act_scope}"

    def execution(self, device: Optional[torch.device] = None) -> tuple[str, str]:
        """``(kernel, why)`` for an input on ``device`` (default: the layer's): ``onednn`` (the CPU's int8
        kernels), ``triton``, ``reference`` (exact int32 per tap and group), ``dequantize`` (weight-only)
        or ``fp8``; ``why`` says what decided it."""
        device = torch.device(device) if device is not None else self.qweight.device
        if self.spec.fp8:
            return "fp8", "e4m3 quantize-dequantize"
        if self.spec.weight_only:
            why = self._weight_only_unfit(device)
            if why is None:
                return "packed weight-only", (f"PyTorch's int{self.spec.weight_bits} kernel, bf16 activations, up to "
                                              f"{weight_only.MAX_ROWS[self.spec.weight_bits]} rows; more: float "
                                              f"matmul on dequantized weights")
            return "dequantize", f"weight-only: float matmul on dequantized weights ({why})"
        if device.type == "cuda":
            return ("reference" if kernel_mode() == "torch" else "triton"), "CUDA"
        if kernel_mode() != "auto":
            return "reference", f"ZOO_KERNELS={kernel_mode()}"
        missing = onednn_int8.unavailable_reason()
        if missing:
            return "reference", missing
        if self.act_scope == "token" and not is_pointwise(self):
            return "reference", ("per-pixel scales on a k x k kernel (the per_image or static granularities "
                                 "run on oneDNN)")
        if self.weight_scale.shape[1] > 1:
            return "reference", "weight groups (one scale per output channel, -pcw, runs on oneDNN)"
        return "onednn", "exact int8"

    def _weight_only_unfit(self, device: torch.device) -> Optional[str]:
        """None when a weight-only layer can run the CPU's packed kernels (:mod:`zoo.kernels.weight_only`)."""
        if not isinstance(self, QuantLinear):
            return "a convolution"
        if device.type != "cpu":
            return f"on {device.type}"
        if kernel_mode() != "auto":
            return f"ZOO_KERNELS={kernel_mode()}"
        return weight_only.unavailable_reason() or weight_only.layout_reason(self.spec.weight_bits, self.group_size,
                                                                             self.in_channels, self.out_channels)

    def _kernel_on_cpu(self) -> str:
        """:meth:`execution`'s kernel for a CPU input, decided once per ``ZOO_KERNELS`` value (a layer's spec and
        shapes do not change), since the full decision costs more than a small layer's GEMM."""
        mode = kernel_mode()
        if self._cpu_kernel is None or self._cpu_kernel[0] != mode:
            self._cpu_kernel = (mode, self.execution(torch.device("cpu"))[0])
        return self._cpu_kernel[1]

    def _runs_onednn(self, x: torch.Tensor) -> bool:
        """:meth:`execution` for this input is ``onednn``."""
        if x.device.type != "cpu":
            return False
        if torch.compiler.is_compiling():
            return self.execution(x.device)[0] == "onednn"
        return self._kernel_on_cpu() == "onednn"

    def release_codes(self) -> None:
        """Drop this layer's integer codes and keep only oneDNN's packed copy of its weights, which holds the
        same int8 values: a deployed ``w4a8`` layer then holds 0.25x of its fp32 weights instead of 0.375x
        (``zoo.optimize(release_codes=True)`` does this on its own copy; the quantized model keeps its codes).
        Afterwards the layer runs on oneDNN only: another kernel, ``state_dict``, loading and
        :meth:`dequantized_weight` refuse it."""
        if self._kernel_on_cpu() != "onednn" or self.qweight.device.type != "cpu":
            kernel, why = self.execution()
            raise ValueError(f"release_codes: this layer runs {kernel!r} ({why}), not oneDNN, and needs its codes")
        if self.codes_released:
            return
        self.onednn_weight()  # packed now, then kept whatever the buffers hold
        self._onednn.freeze()
        self._buffers["qweight"] = self.qweight.new_empty(0)  # (0,): nothing to read

        def refuse(*_):
            self._require_codes("state_dict / load_state_dict")

        self.register_state_dict_pre_hook(refuse)
        self.register_load_state_dict_pre_hook(refuse)
        self.codes_released = True

    def _require_codes(self, what: str) -> None:
        if self.codes_released:
            raise RuntimeError(f"{what}: this layer's integer codes were released (zoo.optimize(release_codes=True)), "
                               f"so it runs on oneDNN's packed weights only; use the quantized model you optimized, "
                               f"not the result, for this")

    def onednn_weight(self) -> "onednn_int8.PackedWeight":
        """The oneDNN weights, made once and kept until a buffer changes (a load, ``.to()``, an edit)."""
        return self._onednn.get(self.qweight, self.weight_scale, self.weight_zero, self.spec.weight_bits,
                                self.in_channels, getattr(self, "stride", (1, 1)), getattr(self, "padding", (0, 0)),
                                isinstance(self, QuantLinear))

    def _transformed(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 ``(x - shift) * multiplier`` (channels in dim 1 for a conv, last for a linear), the same
        operations :func:`zoo.kernels.quantize_act` applies."""
        v = x.float()
        view = (1, -1, 1, 1) if isinstance(self, QuantConv2d) else (-1,)
        if self.act_shift is not None:
            v = v - self.act_shift.float().view(view)
        if self.act_multiplier is not None:
            v = v * self.act_multiplier.float().view(view)
        return v

    def _onednn_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on oneDNN's int8 kernels: x (B, C, H, W) for a conv, (M, K) for a linear."""
        conv = isinstance(self, QuantConv2d)
        clamp = self.act_scale is not None  # a static scale can put values past +-127
        codes_in = x.dtype == torch.uint8  # from the layer before, at this layer's static scale (codes_out_scale)
        v = x if codes_in else self._transformed(x)
        if clamp:
            scale = self.act_scale.float().reshape(())
        elif self.act_scope == "image":
            scale = dynamic_scales(v, tuple(range(1, v.ndim)))  # (B,)
        else:
            scale = dynamic_scales(v, (1 if conv else -1,))  # per token: (B, H, W) or (M,)
        return onednn_int8.int8_layer(v, scale, self._onednn, self.qweight, self.weight_scale, self.weight_zero,
                                      self.bias, self.spec.weight_bits, self.in_channels,
                                      getattr(self, "stride", (1, 1)), getattr(self, "padding", (0, 0)),
                                      is_linear=not conv, clamp=clamp, relu=self.fused_relu,
                                      out_dtype=torch.float32 if codes_in else x.dtype,
                                      out_scale=self.codes_out_scale if conv and clamp
                                      and not torch.compiler.is_compiling() else None)

    @classmethod
    def layer_config(cls, layer: "_QuantLayer") -> dict:
        """What rebuilding an empty layer of this shape needs (saved in a quantized file's metadata)."""
        return {"weight_bits": layer.spec.weight_bits, "group_size": layer.group_size, "bias": layer.bias is not None,
                "act_multiplier": layer.act_multiplier is not None, "act_shift": layer.act_shift is not None,
                "act_scale": layer.act_scale is not None}

    def set_weight(self, weight_nhwc: torch.Tensor, grid: Optional[tuple] = None) -> None:
        """Quantize float channels-last weights (N, KH, KW, C) into this layer's buffers (on ``grid``, a
        (scale, zero) pair, where a method chose it: :func:`quantize_weight`)."""
        self._require_codes("set_weight")
        q = quantize_weight(weight_nhwc, self.spec.weight_bits, self.group_size, self.spec.weight_symmetric,
                            self.spec.fp8, grid)
        self.qweight = q.values.to(self.qweight.device)
        self.weight_scale = q.scale.to(self.weight_scale.dtype).to(self.qweight.device)
        if self.weight_zero is not None:
            self.weight_zero = q.zero.to(self.qweight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """Float weights (N, KH, KW, C): what the integer path multiplies by, for checks and references."""
        self._require_codes("dequantized_weight")
        return dequantize_weight(self.qweight, self.weight_scale, self.weight_zero, self.spec.weight_bits,
                                 self.in_channels, self.group_size, self.spec.fp8)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Apply an unfolded shift and multiplier (weight-only and fp8 paths)."""
        if self.act_shift is not None:
            x = x - self.act_shift.to(x.dtype)
        if self.act_multiplier is not None:
            x = x * self.act_multiplier.to(x.dtype)
        return x

    def _fp8_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token e4m3 quantize-dequantize of (..., C) activations."""
        return fake_quantize_activation(self._prepare(x), fp8=True)

    def extra_repr(self) -> str:
        group = f"group={self.group_size}" if self.group_size else "per-channel"
        act = self.act_description
        extras = [n for n in ("act_multiplier", "act_shift") if getattr(self, n) is not None]
        return (f"{self.in_channels}, {self.out_channels}, spec={self.spec.name}, {group}, act={act}"
                + (f", {'+'.join(extras)}" if extras else ""))


class QuantLinear(_QuantLayer):
    """``nn.Linear`` with int8 / packed int4 / fp8 weights; see the module docstring."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, spec: QuantSpec,
                 group_size: Optional[int] = None, device=None, **act) -> None:
        super().__init__(in_features, out_features, (1, 1), bias, spec, group_size, device=device, **act)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec, group_size: Optional[int] = None, **act) -> "QuantLinear":
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, spec=spec,
                    group_size=group_size, device=linear.weight.device, **act)
        layer.set_weight(linear.weight.detach().view(linear.out_features, 1, 1, -1))  # (N, 1, 1, K)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer

    def _runs_weight_only_kernel(self, x2: torch.Tensor) -> bool:
        """A few (M, K) rows of fp32 or bf16 in eager inference on a layer that fits the packed kernels: where
        they beat dequantizing (more rows go to the dequantized weights)."""
        if (x2.shape[0] > weight_only.MAX_ROWS[self.spec.weight_bits] or x2.device.type != "cpu"
                or x2.dtype not in (torch.float32, torch.bfloat16) or (torch.is_grad_enabled() and x2.requires_grad)
                or torch.compiler.is_compiling()):
            return False
        return self._kernel_on_cpu() == "packed weight-only"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_channels)  # (M, K)
        if self.spec.weight_only or self.spec.fp8:
            x2 = self._fp8_tokens(x2) if self.spec.fp8 else self._prepare(x2)
            if self.spec.weight_only and self._runs_weight_only_kernel(x2):
                weights = self._weight_only.get(self.qweight, self.weight_scale, self.weight_zero,
                                                self.spec.weight_bits, self.in_channels, self.group_size)
                y = weight_only.linear(x2, weights, self.bias)
                return (y.relu_() if self.fused_relu else y).view(*lead, self.out_channels)
            weight = self.dequantized_weight().view(self.out_channels, -1).to(x2.dtype)  # (N, K)
            bias = None if self.bias is None else self.bias.to(x2.dtype)
            y = F.linear(x2, weight, bias)
            return (F.relu(y) if self.fused_relu else y).view(*lead, self.out_channels)
        if torch.is_grad_enabled():  # integer layers are inference-only; untracked outputs may be changed in place
            with torch.no_grad():
                return self.forward(x)
        if self._runs_onednn(x):
            return self._onednn_forward(x2).view(*lead, self.out_channels)
        self._require_codes(f"a {x.device.type} input off oneDNN")
        q, scale = quantize_act(x2, self.act_multiplier, self.act_shift, self.act_scale)
        y = int_linear(q, scale, self.qweight.view(self.out_channels, -1), self.weight_scale, self.weight_zero,
                       self.bias, self.spec.weight_bits, self.group_size, out_dtype=x.dtype)  # (M, N)
        return (y.relu_() if self.fused_relu else y).view(*lead, self.out_channels)


def _same(tensors: list[Optional[torch.Tensor]]) -> bool:
    """All None, or all tensors equal to the first."""
    if all(t is None for t in tensors):
        return True
    return all(t is not None for t in tensors) and all(torch.equal(t, tensors[0]) for t in tensors[1:])


def stack_linears(layers: list[nn.Module]) -> Optional[nn.Module]:
    """One layer whose output is the concatenation of ``layers``' outputs on the same input (an attention's
    q, k and v projections), or None where they cannot be one: one GEMM and, for integer layers, one
    activation quantization instead of several. Plain ``nn.Linear`` layers of one dtype and device (hooks
    refuse: a hook would see nothing), or ``QuantLinear`` layers of one spec and weight grouping whose
    activation step is the same (no multipliers or shifts, or equal ones; dynamic scales, or one equal
    static scale) and whose codes are kept: the stacked layer holds their codes, scales and biases row after
    row, so each output channel is computed as before."""
    first = layers[0]
    if not can_fuse(*layers) or any(type(m) is not type(first) for m in layers):
        return None
    if type(first) is nn.Linear:
        if any(m.in_features != first.in_features or m.weight.dtype != first.weight.dtype
               or m.weight.device != first.weight.device or (m.bias is None) != (first.bias is None) for m in layers):
            return None
        out = nn.Linear(first.in_features, sum(m.out_features for m in layers), bias=first.bias is not None,
                        device=first.weight.device, dtype=first.weight.dtype)
        out.weight.data = torch.cat([m.weight.detach() for m in layers])  # (N1 + N2 + ..., K)
        if first.bias is not None:
            out.bias.data = torch.cat([m.bias.detach() for m in layers])
        return out.requires_grad_(first.weight.requires_grad)
    if type(first) is not QuantLinear:
        return None
    if any(m.spec != first.spec or m.group_size != first.group_size or m.in_channels != first.in_channels
           or m.codes_released or m.fused_relu or m.codes_out_scale is not None
           or (m.bias is None) != (first.bias is None) for m in layers):
        return None
    if not all(_same([getattr(m, name) for m in layers]) for name in ("act_multiplier", "act_shift", "act_scale")):
        return None
    out = QuantLinear(first.in_channels, sum(m.out_channels for m in layers), bias=first.bias is not None,
                      spec=first.spec, group_size=first.group_size, device=first.qweight.device,
                      act_multiplier=first.act_multiplier is not None, act_shift=first.act_shift is not None,
                      act_scale=first.act_scale is not None)
    for name in ("qweight", "weight_scale", "weight_zero", "bias"):  # rows: (N, ...) each
        if getattr(first, name) is not None:
            setattr(out, name, torch.cat([getattr(m, name) for m in layers]))
    for name in ("act_multiplier", "act_shift", "act_scale"):
        if getattr(first, name) is not None:
            setattr(out, name, getattr(first, name).clone())
    return out


class QuantConv2d(_QuantLayer):
    """``nn.Conv2d`` (groups=1, dilation=1) with int8 / packed int4 / fp8 weights, through implicit GEMM."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0), bias: bool = True, *,
                 spec: QuantSpec, group_size: Optional[int] = None, device=None, **act) -> None:
        super().__init__(in_channels, out_channels, tuple(kernel_size), bias, spec, group_size, device=device, **act)
        self.stride, self.padding = tuple(stride), tuple(padding)

    @staticmethod
    def supports(conv: nn.Conv2d) -> Optional[str]:
        """None when ``conv`` can be quantized, else why not."""
        if conv.groups != 1:
            return f"grouped convolution (groups={conv.groups})"
        if tuple(conv.dilation) != (1, 1):
            return f"dilation {tuple(conv.dilation)}"
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            return f"padding {conv.padding!r} / mode {conv.padding_mode!r}"
        return None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: QuantSpec, group_size: Optional[int] = None, **act) -> "QuantConv2d":
        why = cls.supports(conv)
        if why:
            raise ValueError(f"QuantConv2d cannot take a {why}; keep this layer in float")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.bias is not None, spec=spec, group_size=group_size, device=conv.weight.device, **act)
        layer.set_weight(conv.weight.detach().permute(0, 2, 3, 1))  # (N, KH, KW, C)
        if conv.bias is not None:
            layer.bias = conv.bias.detach().float().clone()
        return layer

    @classmethod
    def layer_config(cls, layer: "QuantConv2d") -> dict:
        return {**super().layer_config(layer), "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
                "padding": list(layer.padding)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if x.dtype == torch.uint8:  # the previous layer's codes (zoo.optimize chains static layers on oneDNN)
            if self.act_scale is None or not self._runs_onednn(x):
                raise ValueError(f"{type(self).__name__} got uint8 input: only a layer with a static activation "
                                 "scale on oneDNN takes codes (zoo.optimize chains such layers); pass floats")
            return self._onednn_forward(x)
        if self.spec.weight_only or self.spec.fp8:
            pixels = x.permute(0, 2, 3, 1)  # (B, H, W, C)
            pixels = self._fp8_tokens(pixels) if self.spec.fp8 else self._prepare(pixels)
            weight = self.dequantized_weight().permute(0, 3, 1, 2).to(x.dtype)  # (N, C, KH, KW)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            y = F.conv2d(pixels.permute(0, 3, 1, 2), weight, bias, self.stride, self.padding)
            return F.relu(y) if self.fused_relu else y
        if torch.is_grad_enabled():  # integer layers are inference-only; untracked outputs may be changed in place
            with torch.no_grad():
                return self.forward(x)
        if self._runs_onednn(x):
            return self._onednn_forward(x)
        self._require_codes(f"a {x.device.type} input off oneDNN")
        pixels = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        multiplier, shift, given = self.act_multiplier, self.act_shift, self.act_scale
        if self.act_scope == "image":  # one scale per image, from the transformed activations
            pixels = self._transformed(x).permute(0, 2, 3, 1)
            multiplier, shift, given = None, None, dynamic_scales(pixels, (1, 2, 3))
        q, scale = quantize_act(pixels, multiplier, shift, given)
        y = int_conv2d(q, scale, self.qweight, self.weight_scale, self.weight_zero, self.bias, self.stride,
                       self.padding, self.spec.weight_bits, self.group_size, out_dtype=x.dtype)  # (B, Ho, Wo, N)
        y = y.permute(0, 3, 1, 2)  # (B, N, Ho, Wo), channels-last memory
        return y.relu_() if self.fused_relu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


# ------------------------------------------------------------------------------------------------
# fake-quant layers (quantization-aware training)
# ------------------------------------------------------------------------------------------------
class _FakeQuant:
    """Quantize-dequantize weights and activations in the forward pass, straight-through backward."""

    spec = None
    group_size: Optional[int] = None

    def _fake_weight(self, weight_nhwc: torch.Tensor) -> torch.Tensor:
        s = self.spec
        deq = fake_quantize_weight(weight_nhwc.detach(), s.weight_bits, self.group_size, s.weight_symmetric, s.fp8)
        return _ste(weight_nhwc, deq)

    @classmethod
    def from_float(cls, layer: nn.Module, spec: QuantSpec, group_size: Optional[int] = None):
        """The fake-quant twin of a float layer, sharing its parameters (no copy)."""
        twin = cls.__new__(cls)
        twin.__dict__.update(layer.__dict__)
        twin.spec, twin.group_size = spec, group_size
        return twin

    def _fake_act(self, tokens: torch.Tensor, per_image: bool = False) -> torch.Tensor:
        if self.spec.weight_only:
            return tokens
        return _ste(tokens, fake_quantize_activation(tokens, 8, self.spec.fp8, per_image))


class FakeQuantLinear(nn.Linear, _FakeQuant):
    """``nn.Linear`` that trains through the quantization of ``spec`` (same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.weight.shape
        weight = self._fake_weight(self.weight.view(n, 1, 1, k)).view(n, k)
        return F.linear(self._fake_act(x), weight, self.bias)


class FakeQuantConv2d(nn.Conv2d, _FakeQuant):
    """``nn.Conv2d`` that trains through the quantization of ``spec`` (same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._fake_weight(self.weight.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (N, C, KH, KW)
        per_image = act_scope(self.spec, self) == "image"
        tokens = self._fake_act(x.permute(0, 2, 3, 1), per_image)  # per pixel (or image), as the integer path
        return self._conv_forward(tokens.permute(0, 3, 1, 2), weight, self.bias)
