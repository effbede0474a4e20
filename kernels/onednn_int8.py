"""int8 convolutions and linear layers on oneDNN: the CPU's fast path for zoo's integer layers.

oneDNN's int8 primitives (``torch.ops.onednn.qconv_pointwise`` / ``qlinear_pointwise``, the kernels
PyTorch's own x86 quantization lowers to) accumulate u8 x s8 products exactly in int32 where the CPU
has VNNI or AMX, then apply an fp32 epilogue. They take one activation scale per call, so they run a
layer exactly where its activation scale factors out of the reduction:

- a k x k convolution whose activations share one scale per image or per tensor: with one scale in
  the call, the epilogue ``acc * a_scale * w_scale + bias`` is fused; with several images, each
  with its own scale, the accumulators come out as ``acc * w_scale`` and each image is scaled after;
- a 1 x 1 convolution or a linear layer with one scale per token (pixel): each output reads one
  token, so its row of ``acc * w_scale`` is scaled by that token's scale afterwards.

Activations are the integer layers' symmetric codes ``q = clamp(round(v / scale), -127, 127)``
(:func:`zoo.kernels.quantize_act`, the same fp32 division), passed as ``q + 128`` in uint8 with zero point
128. Weights are int8 (N, KH, KW, C) with one fp32 scale per output channel, reordered once into
oneDNN's blocked layout (:func:`prepack`). Outputs are channels-last, in fp32 or bf16.

A layer calls ``zoo::onednn_int8_layer`` (:func:`int8_layer`), a custom op that takes the layer's own
integer buffers and a :class:`WeightCache` handle: it reorders the weights on the first call and again
only when a buffer changes, so eager and ``torch.compile`` (which sees one opaque op with a fake) run
the same kernel on the same cached weights.
"""
from __future__ import annotations

import functools
import itertools
import platform
import warnings
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from .int_gemm import output_size, weight_values

ZERO_POINT = 128  # symmetric codes -127..127 as unsigned bytes
QMAX = 127


def unavailable_reason() -> Optional[str]:
    """None where oneDNN's int8 kernels run exactly on this machine, else why not (for summaries)."""
    return _UNAVAILABLE[0]


def _check_machine() -> Optional[str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"oneDNN int8 kernels are used on x86-64 only (this is {platform.machine()})"
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    onednn = getattr(torch.ops, "onednn", None)
    if onednn is None or not all(hasattr(onednn, op) for op in
                                 ("qconv_prepack", "qconv_pointwise", "qlinear_prepack", "qlinear_pointwise")):
        return "this PyTorch build lacks torch.ops.onednn's int8 convolution / linear ops"
    cpu = torch.cpu
    vnni = (getattr(cpu, "_is_vnni_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    if not vnni:  # without VNNI, u8 x s8 pairs are summed in int16 and can saturate: not exact
        return "the CPU has neither VNNI nor AMX, where oneDNN's int8 sums may saturate"
    return None


_UNAVAILABLE = [_check_machine()]  # checked once at import (a list: tests may patch it)


@dataclass
class PackedWeight:
    """int8 weights in oneDNN's layout with what its calls need beside them."""

    packed: torch.Tensor  # opaque (mkldnn) int8
    scale: torch.Tensor  # (N,) fp32 per output channel
    zero: torch.Tensor  # (N,) int64 zeros: symmetric weights
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    linear: bool  # prepacked for qlinear (a linear layer) rather than qconv

    @property
    def pointwise(self) -> bool:
        """Every output pixel reads exactly one input pixel: per-token scales factor out."""
        return self.kernel_size == (1, 1) and self.padding == (0, 0)


def prepack(values: torch.Tensor, scale: torch.Tensor, stride: tuple[int, int] = (1, 1),
            padding: tuple[int, int] = (0, 0), linear: bool = False) -> PackedWeight:
    """Reorder int8 weights (N, KH, KW, C) with (N,) scales for :func:`conv2d` / :func:`linear`."""
    if values.dtype != torch.int8 or values.ndim != 4:
        raise ValueError(f"prepack takes int8 weights (N, KH, KW, C); got {values.dtype} {tuple(values.shape)}")
    n, kh, kw, c = values.shape
    if scale.numel() != n:
        raise ValueError(f"prepack: one weight scale per output channel ({n},); got {tuple(scale.shape)}")
    scale = scale.detach().float().reshape(-1).contiguous()
    zero = torch.zeros(n, dtype=torch.int64)
    if linear:
        if (kh, kw) != (1, 1):
            raise ValueError("prepack(linear=True) takes (N, 1, 1, K) weights")
        packed = torch.ops.onednn.qlinear_prepack(values.reshape(n, c).contiguous(), None)
    else:
        packed = torch.ops.onednn.qconv_prepack(values.permute(0, 3, 1, 2).contiguous(), scale, 1.0, ZERO_POINT,
                                                list(stride), list(padding), [1, 1], 1, None)  # from (N, C, KH, KW)
    return PackedWeight(packed, scale, zero, (kh, kw), tuple(stride), tuple(padding), linear)


def _quantize_per_tensor_fast() -> bool:
    return hasattr(torch, "quantize_per_tensor") and not torch.compiler.is_compiling() and _deprecation_spent()


@functools.lru_cache(maxsize=1)
def _deprecation_spent() -> bool:
    """PyTorch warns once per process that quantized dtypes are deprecated (we only borrow their rounding
    pass): spend that warning here, silenced, so the calls after it need no ``catch_warnings`` (which
    resets the warning registry on every entry, ~10 us a call: a decode step quantizes 83 times)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.quantize_per_tensor(torch.zeros(1), 1.0, ZERO_POINT, torch.quint8)
    return True


def quantize_u8(v: torch.Tensor, scale: torch.Tensor, clamp: bool) -> torch.Tensor:
    """``clamp(round(v / scale), -127, 127) + 128`` as uint8, in ``v``'s shape and memory layout.

    ``scale`` broadcasts against ``v``; ``clamp=False`` where the scale came from ``max|v|`` (then
    every code is within +-127 already). In eager mode the rounding pass is
    ``torch.quantize_per_tensor`` (one vectorized pass; its uint8 storage is read in place); under
    torch.compile the plain ops, which the compiler fuses. Both round half to even, as the reference."""
    q = v.float() / scale  # the reference's fp32 division
    if not _quantize_per_tensor_fast():
        if clamp:
            q.clamp_(-QMAX, QMAX)
        return torch.round(q).add_(ZERO_POINT).to(torch.uint8)
    quint8 = torch.quantize_per_tensor(q, 1.0, ZERO_POINT, torch.quint8)  # rounds, then clamps to 0..255
    codes = torch.empty(0, dtype=torch.uint8, device=v.device)
    codes.set_(quint8.untyped_storage(), quint8.storage_offset(), quint8.shape, quint8.stride())
    # clamp(round(q), -127, 127) + 128: the upper bound is 255 already; the lower one, on bytes, is a quarter
    # of the fp32 pass a clamp before rounding costs (rounding and integer bounds commute)
    return codes.clamp_min_(ZERO_POINT - QMAX) if clamp else codes


def quantize_for(v: torch.Tensor, a_scale: torch.Tensor, clamp: bool) -> torch.Tensor:
    """The uint8 codes a :func:`conv2d` (``v`` (B, C, H, W)) or :func:`linear` (``v`` (M, K)) call takes, with
    ``a_scale`` shaped as they take it: () one scale, (B,) one per image, (B, H, W) or (M,) one per token."""
    if v.ndim == 2:  # a linear layer: () or (M,) per token
        return quantize_u8(v, a_scale.reshape(-1, 1) if a_scale.ndim == 1 else a_scale, clamp)
    if a_scale.ndim == 3:  # (B, H, W) per pixel
        return quantize_u8(v, a_scale.unsqueeze(1), clamp)
    return quantize_u8(v, a_scale.reshape(-1, 1, 1, 1) if a_scale.ndim else a_scale, clamp)  # () or (B,) per image


_ONE = torch.ones((), dtype=torch.float32)
_ZERO_POINT = torch.tensor(ZERO_POINT)


def conv2d(codes: torch.Tensor, a_scale: torch.Tensor, weight: PackedWeight, bias: Optional[torch.Tensor],
           out_dtype: torch.dtype = torch.float32, relu: bool = False,
           out_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convolve uint8 codes (B, C, H, W) (:func:`quantize_for`): (B, N, Ho, Wo), channels-last memory.

    ``a_scale``: () one scale, (B,) one per image, or (B, H, W) one per pixel (pointwise weights only).
    ``relu``: a ReLU after the bias (oneDNN's post-op where the epilogue is fused). ``out_scale``: return
    the next layer's uint8 codes at this () scale instead of floats (one ``a_scale`` only): the epilogue
    quantizes as :func:`quantize_u8` does, so a chain of layers hands int8 on without a float pass."""
    b = codes.shape[0]
    per_pixel = a_scale.ndim == 3
    if per_pixel and not weight.pointwise:
        raise ValueError("oneDNN int8 convolution: per-pixel activation scales need a 1x1 kernel without padding")
    codes = codes.contiguous(memory_format=torch.channels_last)
    fused = a_scale.numel() == 1 and not per_pixel  # one scale in the call: oneDNN's epilogue does it all
    codes_out = out_scale is not None
    if codes_out and not fused:
        raise ValueError("oneDNN int8 convolution: codes out (out_scale) need one activation scale in")
    out = torch.ops.onednn.qconv_pointwise.tensor(
        codes, a_scale.reshape(()).float() if fused else _ONE, _ZERO_POINT, weight.packed, weight.scale, weight.zero,
        bias.float() if fused and bias is not None else None, list(weight.stride), list(weight.padding), [1, 1], 1,
        float(out_scale) if codes_out else 1.0, ZERO_POINT if codes_out else 0,
        None if codes_out else torch.float32, "relu" if relu and fused else "none", [], "")
    # (B, N, Ho, Wo), channels_last: uint8 codes with out_scale, else fp32
    if codes_out:  # oneDNN saturates to 0..255; the symmetric codes stop at -127 (after a ReLU all are >= 128)
        return out if relu else out.clamp_min_(ZERO_POINT - QMAX)
    if not fused:
        if per_pixel:
            rows = a_scale[:, ::weight.stride[0], ::weight.stride[1]].unsqueeze(1)  # (B, 1, Ho, Wo)
        else:
            rows = a_scale.reshape(b, 1, 1, 1)
        if bias is None:
            out.mul_(rows)
        else:  # one pass: bias + out * rows
            torch.addcmul(bias.float().view(1, -1, 1, 1), out, rows, out=out)
        if relu:
            out.relu_()
    return out if out_dtype == torch.float32 else out.to(out_dtype)


def linear(codes: torch.Tensor, a_scale: torch.Tensor, weight: PackedWeight, bias: Optional[torch.Tensor],
           out_dtype: torch.dtype = torch.float32, relu: bool = False) -> torch.Tensor:
    """Multiply uint8 codes (M, K) (:func:`quantize_for`): (M, N). ``a_scale``: () or (M,) per token."""
    per_token = a_scale.ndim == 1
    out = torch.ops.onednn.qlinear_pointwise.tensor(
        codes.contiguous(), _ONE if per_token else a_scale.reshape(()).float(), _ZERO_POINT, weight.packed,
        weight.scale, weight.zero, None if per_token or bias is None else bias.float(), 1.0, 0, torch.float32,
        "relu" if relu and not per_token else "none", [], "")  # (M, N)
    if per_token:
        if bias is None:
            out.mul_(a_scale.reshape(-1, 1))
        else:
            torch.addcmul(bias.float(), out, a_scale.reshape(-1, 1), out=out)
        if relu:
            out.relu_()
    return out if out_dtype == torch.float32 else out.to(out_dtype)


def accumulators(codes: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """The raw int32 accumulators of int8 codes (B, H, W, C) (``q``, not ``q + 128``), as fp32:
    (B, Ho, Wo, N), exact where below 2^24. For tests against the integer reference."""
    ones = torch.ones_like(weight.scale)
    unit = PackedWeight(weight.packed, ones, weight.zero, weight.kernel_size, weight.stride, weight.padding,
                        weight.linear)
    u8 = (codes.to(torch.int16) + ZERO_POINT).to(torch.uint8)
    if weight.linear:
        b, h, w, c = codes.shape
        out = torch.ops.onednn.qlinear_pointwise.tensor(
            u8.reshape(-1, c), torch.ones(()), torch.tensor(ZERO_POINT), unit.packed, ones, unit.zero, None,
            1.0, 0, torch.float32, "none", [], "")
        return out.view(b, h, w, -1)
    out = torch.ops.onednn.qconv_pointwise.tensor(
        u8.permute(0, 3, 1, 2), torch.ones(()), torch.tensor(ZERO_POINT), unit.packed, ones, unit.zero, None,
        list(unit.stride), list(unit.padding), [1, 1], 1, 1.0, 0, torch.float32, "none", [], "")
    return out.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------------
# the layer op: cached weights behind a handle, traceable by torch.compile
# --------------------------------------------------------------------------------------------------
def buffers_key(*tensors: Optional[torch.Tensor]) -> tuple:
    """What identifies the contents of a layer's buffers for a cache: each one's storage and version (an
    inference tensor has no version counter: it cannot change outside inference mode)."""
    return tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors if t is not None)


class WeightCache:
    """One layer's reordered weights and the buffer versions they were made from; copies start empty."""

    _handles = itertools.count()
    _live: "weakref.WeakValueDictionary[int, WeightCache]" = weakref.WeakValueDictionary()

    def __init__(self) -> None:
        self.handle = next(WeightCache._handles)
        self.key: Optional[tuple] = None
        self.weight: Optional[PackedWeight] = None
        self.frozen = False  # the layer's codes were released: the packed copy is all there is
        WeightCache._live[self.handle] = self

    def __deepcopy__(self, memo) -> "WeightCache":
        copied = WeightCache()
        if self.frozen:  # nothing to pack from again: the copy shares the (read-only) packed weights
            copied.weight, copied.frozen = self.weight, True
        return copied

    def freeze(self) -> None:
        """Keep the packed weights whatever the buffers hold from now on (their codes are about to be dropped)."""
        if self.weight is None:
            raise ValueError("WeightCache.freeze: nothing packed yet; call get() first")
        self.frozen = True

    def __reduce__(self):
        return (WeightCache, ())

    @classmethod
    def find(cls, handle: int) -> "WeightCache":
        return cls._live.get(handle) or WeightCache()  # a cache that is gone: pack once, keep nothing

    def get(self, qweight: torch.Tensor, w_scale: torch.Tensor, w_zero: Optional[torch.Tensor], weight_bits: int,
            channels: int, stride: tuple[int, int], padding: tuple[int, int], linear: bool) -> PackedWeight:
        """The packed weights of these buffers, reordered again only when one of them changed (never once frozen)."""
        if self.frozen:
            return self.weight
        key = buffers_key(qweight, w_scale, w_zero)
        if self.key != key:
            if w_scale.shape[1] != 1:
                raise ValueError("oneDNN's int8 kernels take one weight scale per output channel; "
                                 "this layer has groups")
            values = weight_values(qweight, w_zero, weight_bits, channels, None).to(torch.int8)  # int4 - zero fits int8
            self.weight = prepack(values, w_scale[:, 0], stride, padding, linear)
            self.key = key
        return self.weight


@torch.library.custom_op("zoo::onednn_int8_layer", mutates_args=())
def _int8_layer_op(codes: torch.Tensor, a_scale: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor,
                   w_zero: Optional[torch.Tensor], bias: Optional[torch.Tensor], handle: int, weight_bits: int,
                   channels: int, stride: list[int], padding: list[int], is_linear: bool, relu: bool,
                   out_dtype: torch.dtype) -> torch.Tensor:
    weight = WeightCache.find(handle).get(qweight, w_scale, w_zero, weight_bits, channels, tuple(stride),
                                          tuple(padding), is_linear)
    return (linear if is_linear else conv2d)(codes, a_scale, weight, bias, out_dtype, relu)


@_int8_layer_op.register_fake
def _(codes, a_scale, qweight, w_scale, w_zero, bias, handle, weight_bits, channels, stride, padding, is_linear,
      relu, out_dtype):
    n, kh, kw, _ = qweight.shape
    if is_linear:
        return codes.new_empty((codes.shape[0], n), dtype=out_dtype)
    b, _, h, w = codes.shape
    ho, wo = output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1])
    return codes.new_empty((b, n, ho, wo), dtype=out_dtype).contiguous(memory_format=torch.channels_last)


def int8_layer(v: torch.Tensor, a_scale: torch.Tensor, cache: WeightCache, qweight: torch.Tensor,
               w_scale: torch.Tensor, w_zero: Optional[torch.Tensor], bias: Optional[torch.Tensor], weight_bits: int,
               channels: int, stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
               is_linear: bool = False, clamp: bool = False, relu: bool = False,
               out_dtype: torch.dtype = torch.float32, out_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A quantized layer on oneDNN: fp32 activations ``v`` (B, C, H, W) or (M, K) with their scales (see
    :func:`quantize_for`), the layer's integer buffers (int8, or packed int4 with one scale per output
    channel) and its :class:`WeightCache`; ``relu`` fuses a following ReLU. The quantization runs outside
    the op, where torch.compile can fuse it with the scales' reduction; the GEMM and its epilogue inside.

    In eager mode a convolution also takes ``v`` as uint8 codes at its () ``a_scale`` (the previous
    layer's ``out_scale`` output) and, given ``out_scale``, returns the next layer's codes (:func:`conv2d`).
    Under torch.compile codes are never handed on: the layer's floats go out, the next layer quantizes."""
    compiling = torch.compiler.is_compiling()
    if v.dtype == torch.uint8 and (is_linear or compiling or a_scale.numel() != 1):
        raise ValueError("int8_layer: uint8 codes in are for an eager convolution with one activation scale")
    codes = v if v.dtype == torch.uint8 else quantize_for(v, a_scale, clamp)
    if not compiling:  # eager: the op's body without the custom-op dispatch (~40 us a call)
        weight = cache.get(qweight, w_scale, w_zero, weight_bits, channels, tuple(stride), tuple(padding), is_linear)
        if is_linear:
            return linear(codes, a_scale, weight, bias, out_dtype, relu)
        return conv2d(codes, a_scale, weight, bias, out_dtype, relu, out_scale)
    return _int8_layer_op(codes, a_scale, qweight, w_scale, w_zero, bias, cache.handle, weight_bits, channels,
                          list(stride), list(padding), is_linear, relu, out_dtype)
