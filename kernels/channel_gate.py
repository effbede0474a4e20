"""The channel gate's squeeze and rescale ops (SE, ECA, RCAN's CA, FcaNet); the excitation between
them is :mod:`zoo.kernels.channel_excite`, the squeeze and excitation in one launch :mod:`zoo.kernels.squeeze_excite`.

Squeeze: one number per channel from a (B, C, H, W) map. ``pool_mean`` is SE/ECA/RCAN's global average;
``pool_weighted`` is FcaNet's DCT-weighted sum (any per-channel spatial filter, e.g. DCT bases with
adaptive pooling folded in). The filter is (C, H, W), one per channel, or (G, H, W) with G dividing C:
each run of C / G channels shares one filter, as FcaNet's frequency groups do. Both read the feature map
once and accumulate in fp32 (fp64 for fp64 inputs). Each is a ``torch.library.custom_op``
(``zoo::pool_mean``, ``zoo::pool_weighted``) with a fake implementation and an autograd formula whose
x-gradient is the op ``zoo::pool_backward`` (a broadcast written once, in x's dtype and memory format).

Rescale: every channel of a feature map times its gate, optionally fused with a residual block's
epilogue, ``relu(x * gate + shortcut)``, so the block's output is written once. ``zoo::channel_scale``
is a ``torch.library.custom_op`` with a fake implementation and an autograd formula; its backward is the
op ``zoo::channel_scale_backward``, one pass over the map that gives ``grad_x = g * gate``,
``grad_gate[b, c] = sum_hw g * x`` (fp32 accumulation) and, with ``relu``, the masked
``grad_shortcut = g`` where ``g = grad * (out > 0)``. The mask comes from the saved output (saved, not
recomputed: a residual block's output is kept alive by the next block anyway).

Every op's body dispatches between the Triton kernel (:mod:`zoo.kernels._triton_channel_gate`) and the
plain-PyTorch reference (:mod:`zoo.kernels.dispatch`).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .dispatch import autocast_off, kernel_op, public_op


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _check_map(op: str, x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op} expects a (B, C, H, W) feature map; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op} expects a floating-point feature map; got {x.dtype}")


def _check_weight(x: torch.Tensor, weight: torch.Tensor, op: str = "pool_weighted") -> None:
    _check_map(op, x)
    c = x.shape[1]
    groups = weight.shape[0] if weight.ndim == 3 else 0
    if tuple(weight.shape[1:]) != tuple(x.shape[2:]) or groups < 1 or c % groups:
        raise ValueError(f"{op} needs a (C, H, W) = {tuple(x.shape[1:])} filter for an input of shape "
                         f"{tuple(x.shape)} (or (G, H, W) with G dividing C = {c}, one filter per run of C / G "
                         f"channels); got a filter of shape {tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"{op}: the filter is on {weight.device} but the input is on {x.device}")


# ==================================================================================================
# squeeze: pool_mean, pool_weighted and their backward pool_backward
# ==================================================================================================
# --------------------------------------------------------------------------------------------------
# references (plain PyTorch, differentiable by autograd; the CPU path)
# --------------------------------------------------------------------------------------------------
def pool_mean_reference(x: torch.Tensor) -> torch.Tensor:
    """Mean over H x W: (B, C, H, W) -> (B, C), in fp32."""
    return x.float().mean(dim=(2, 3)) if x.dtype != torch.float64 else x.mean(dim=(2, 3))


# channels_last CPU maps whose filter is shared by at least this many adjacent channels take the
# embedding_bag path: from 8 up it beat the depthwise conv on every ResNet shape measured (runs of 8:
# 0.2-0.7 ms against 0.3-0.9 ms for 8x64..256 maps of 14x14 to 56x56); runs of 4 lose (0.3-1.4 ms)
MIN_SHARED_CHANNELS = 8


def per_channel_filter(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A (G, H, W) filter shared by runs of C / G channels, expanded to one filter per channel (C, H, W)."""
    groups = weight.shape[0]
    return weight if groups == channels else weight.repeat_interleave(channels // groups, dim=0)


def pool_weighted_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-channel weighted sum: s[b, c] = sum_hw x[b, c, h, w] * weight[c // (C / G), h, w] -> (B, C), in fp32.

    ``weight`` is (C, H, W), or (G, H, W) with runs of C / G channels sharing a filter.
    """
    if x.dtype != torch.float64:
        x, weight = x.float(), weight.float()
    b, c, h, w = x.shape
    hw = h * w
    # PyTorch has no fused multiply-and-sum, so the form that reads x once at memory speed depends on
    # the layout (benchmarks/channel_gate.py; on 2 CPU cores, 8x256x56x56: mean 1.0 ms, this 1.0 ms,
    # vecdot's (B, C, HW) product temporary 3.0 ms). bmm, conv2d and embedding_bag are autocast ops:
    # keep them in x's dtype.
    with autocast_off(x.device.type):
        channels_last = _is_channels_last(x)
        if (x.device.type == "cpu" and channels_last and hw > 1
                and c // weight.shape[0] >= MIN_SHARED_CHANNELS):
            return _pool_shared_rows(x, weight)
        weight = per_channel_filter(weight, c)
        if x.is_contiguous() and hw >= 64:
            # NCHW: per channel, (1, HW) @ (HW, B) over x's own strides; BLAS streams it like a mean
            s = torch.bmm(weight.reshape(c, 1, hw), x.reshape(b, c, hw).permute(1, 2, 0))  # (C, 1, B)
            return s.reshape(c, b).t()
        if x.device.type == "cpu" and channels_last and hw > 1:
            # channels_last, one filter per channel: a depthwise convolution with an H x W kernel
            # (oneDNN), 2-3x a mean (CPU only: cuDNN may run it in TF32)
            return F.conv2d(x, weight.reshape(c, 1, h, w), groups=c).reshape(b, c)
    # small maps: one per-channel dot product over (B, C, HW)
    return torch.linalg.vecdot(x.reshape(b, c, hw), weight.reshape(c, hw))  # (B, C)


@functools.lru_cache(maxsize=8)
def _row_bags(batch: int, height: int, width: int, groups: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """embedding_bag's (indices, offsets) for :func:`_pool_shared_rows`: one bag per (b, h, group)."""
    with torch.inference_mode(False):  # the cache outlives any inference_mode block it is built in
        n = batch * height * width * groups
        dtype = torch.int32 if n < 2**31 else torch.int64
        rows = torch.arange(n, dtype=dtype, device=device).view(batch, height, width, groups)
        indices = rows.transpose(2, 3).reshape(-1)  # (B*H*G*W,): bag (b, h, g) lists its W rows
        offsets = torch.arange(0, n, width, dtype=dtype, device=device)
    return indices, offsets


def _pool_shared_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weighted sum of a channels_last map whose filter is shared by runs of C / G channels.

    Channels_last x is a table of rows of C / G channels, one row per (pixel, group), and a row's
    weight is one number: the filter of its group at its pixel. embedding_bag's weighted row sums
    (a vectorized kernel) then pool x in one read, where a depthwise conv costs 2-3x a mean. Bags
    span one image row (W pixels) so the G bags reading a pixel's C channels find them in cache;
    a last, small sum adds the H row sums.
    """
    b, c, h, w = x.shape
    groups = weight.shape[0]
    indices, offsets = _row_bags(b, h, w, groups, x.device)
    table = x.permute(0, 2, 3, 1).reshape(b * h * w * groups, c // groups)  # (B*H*W*G, C/G), a view
    row_weights = weight.permute(1, 0, 2).reshape(1, -1).expand(b, -1).reshape(-1)  # (B*H*G*W,) in bag order
    sums = F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=row_weights)  # (B*H*G, C/G)
    return sums.view(b, h, c).sum(dim=1)  # (B, C)


def pool_backward_reference(grad: torch.Tensor, weight: Optional[torch.Tensor], height: int, width: int,
                            dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """d(pool)/dx: grad[b, c] * weight[c // (C / G), h, w] (or / (H * W) for the mean), in ``dtype`` and the
    given layout."""
    b, c = grad.shape
    if weight is None:
        value = (grad[:, :, None, None] / (height * width)).expand(b, c, height, width)
    else:  # a shared filter (G, H, W) multiplies each run of C / G channels
        groups = weight.shape[0]
        g = grad.reshape(b, groups, c // groups, 1, 1)
        value = (g * weight.to(grad.dtype)[None, :, None]).view(b, c, height, width)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(b, c, height, width, dtype=dtype, device=grad.device, memory_format=fmt).copy_(value)


# --------------------------------------------------------------------------------------------------
# Triton implementations (triton is imported on first use)
# --------------------------------------------------------------------------------------------------
_mean = kernel_op("pool_mean")(pool_mean_reference)
_mean.register_triton_lazy("zoo.kernels._triton_channel_gate", "pool")  # pool(x): weight defaults to None, the mean
_weighted = kernel_op("pool_weighted")(pool_weighted_reference)
_weighted.register_triton_lazy("zoo.kernels._triton_channel_gate", "pool")
_pool_backward = kernel_op("pool_backward")(pool_backward_reference)
_pool_backward.register_triton_lazy("zoo.kernels._triton_channel_gate", "pool_backward")


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@public_op("pool_mean")
def pool_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over H x W: (B, C, H, W) -> (B, C), accumulated and returned in fp32 (fp64 for fp64)."""
    _check_map("pool_mean", x)
    return _mean(x).contiguous()


@pool_mean.op.register_fake
def _(x):
    _check_map("pool_mean", x)
    return x.new_empty(x.shape[:2], dtype=_acc_dtype(x.dtype))


@public_op("pool_weighted")
def pool_weighted(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s[b, c] = sum_hw x[b, c, h, w] * weight[c // (C / G), h, w]: (B, C), accumulated and returned in fp32.

    ``weight`` is one filter per channel (C, H, W), or (G, H, W) with G dividing C: a filter per run
    of C / G channels (FcaNet's frequency groups; the CPU reads such a map faster).
    """
    _check_weight(x, weight)
    return _weighted(x, weight).contiguous()


@pool_weighted.op.register_fake
def _(x, weight):
    _check_weight(x, weight)
    return x.new_empty(x.shape[:2], dtype=_acc_dtype(x.dtype))


@torch.library.custom_op("zoo::pool_backward", mutates_args=())
def pool_backward(grad: torch.Tensor, weight: Optional[torch.Tensor], height: int, width: int,
                  dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """The x-gradient of ``pool_mean`` (``weight=None``) or ``pool_weighted``: (B, C, H, W) in ``dtype``."""
    return _pool_backward(grad, weight, height, width, dtype, channels_last)


@pool_backward.register_fake
def _(grad, weight, height, width, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(grad.shape[0], grad.shape[1], height, width, dtype=dtype, device=grad.device, memory_format=fmt)


def _setup_mean(ctx, inputs, output):
    (x,) = inputs
    ctx.meta = (x.shape[2], x.shape[3], x.dtype, _is_channels_last(x))


def _backward_mean(ctx, grad):
    return pool_backward(grad, None, *ctx.meta)


def _setup_weighted(ctx, inputs, output):
    x, weight = inputs
    ctx.meta = (x.shape[2], x.shape[3], x.dtype, _is_channels_last(x))
    # x is only needed for the filter's gradient (FcaNet's filter is a buffer: usually not)
    ctx.save_for_backward(weight, x if ctx.needs_input_grad[1] else None)


def _backward_weighted(ctx, grad):
    weight, x = ctx.saved_tensors
    grad_x = pool_backward(grad, weight, *ctx.meta) if ctx.needs_input_grad[0] else None
    grad_w = filter_grad(grad, x, weight) if ctx.needs_input_grad[1] else None
    return grad_x, grad_w


def filter_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The filter's gradient from the pooled vector's: d s[b, c] / d w[c // (C / G), hw] = x[b, c, hw].
    Rare (FcaNet's filter is a buffer), so plain PyTorch."""
    groups = weight.shape[0]
    with autocast_off(grad.device.type):
        return torch.einsum("bgk,bgkhw->ghw", grad.unflatten(1, (groups, -1)),
                            x.to(grad.dtype).unflatten(1, (groups, -1))).to(weight.dtype)


pool_mean.op.register_autograd(_backward_mean, setup_context=_setup_mean)
pool_weighted.op.register_autograd(_backward_weighted, setup_context=_setup_weighted)


# ==================================================================================================
# rescale: channel_scale (+ residual + ReLU) and its backward channel_scale_backward
# ==================================================================================================
def _is_dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def _empty_out(x: torch.Tensor) -> torch.Tensor:
    """The output's layout: x's own when x is dense (NCHW or channels_last), else NCHW."""
    return torch.empty_like(x) if _is_dense(x) else torch.empty_like(x, memory_format=torch.contiguous_format)


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def _matching(result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``result`` in the layout of :func:`_empty_out` (what the fake promises); copied only if it differs."""
    expected = x.stride() if _is_dense(x) else _contiguous_strides(x.shape)
    return result if result.stride() == tuple(expected) else _empty_out(x).copy_(result)


def _check_scale(x: torch.Tensor, gate: torch.Tensor, shortcut: Optional[torch.Tensor]) -> None:
    if x.ndim != 4:
        raise ValueError(f"channel_scale expects a (B, C, H, W) feature map; got shape {tuple(x.shape)}")
    if tuple(gate.shape) != tuple(x.shape[:2]):
        raise ValueError(f"channel_scale needs a (B, C) = {tuple(x.shape[:2])} gate for an input of shape "
                         f"{tuple(x.shape)}; got a gate of shape {tuple(gate.shape)}")
    if gate.device != x.device:
        raise ValueError(f"channel_scale: the gate is on {gate.device} but the input is on {x.device}")
    if shortcut is not None:
        if shortcut.shape != x.shape:
            raise ValueError(f"channel_scale: the shortcut's shape {tuple(shortcut.shape)} differs from the "
                             f"input's {tuple(x.shape)}")
        if shortcut.dtype != x.dtype or shortcut.device != x.device:
            raise ValueError(f"channel_scale: the shortcut ({shortcut.dtype}, {shortcut.device}) must match the "
                             f"input ({x.dtype}, {x.device})")


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch; the CPU path)
# --------------------------------------------------------------------------------------------------
def channel_scale_reference(x: torch.Tensor, gate: torch.Tensor, shortcut: Optional[torch.Tensor] = None,
                            relu: bool = False) -> torch.Tensor:
    """y = [relu](x * gate[b, c] [+ shortcut]); the result keeps x's dtype and memory format.

    The in-place steps work on the fresh product, so the add and the ReLU allocate nothing, and the
    arithmetic (and so every bit) is that of ``relu(x * gate + shortcut)`` in eager PyTorch.
    """
    y = x * gate.to(x.dtype)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
    if shortcut is not None:
        y.add_(shortcut)
    if relu:
        y.relu_()
    return y


def channel_scale_backward_reference(grad: torch.Tensor, x: torch.Tensor, gate: torch.Tensor,
                                     out: Optional[torch.Tensor], need_x: bool, need_gate: bool,
                                     need_shortcut: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_gate, grad_shortcut) of ``channel_scale``; ``out`` is the saved output when relu.

    A gradient that is not needed comes back as an empty tensor."""
    g = grad if out is None else torch.where(out > 0, grad, 0)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad_x = torch.mul(g, gate.to(x.dtype)[:, :, None, None], out=_empty_out(x)) if need_x else x.new_empty(0)
    grad_gate = (g.to(acc) * x.to(acc)).sum(dim=(2, 3)).to(gate.dtype).contiguous() if need_gate else gate.new_empty(0)
    grad_shortcut = _empty_out(x).copy_(g) if need_shortcut else x.new_empty(0)
    return grad_x, grad_gate, grad_shortcut


# --------------------------------------------------------------------------------------------------
# Triton implementations (triton is imported on first use)
# --------------------------------------------------------------------------------------------------
_scale = kernel_op("channel_scale")(channel_scale_reference)
_scale.register_triton_lazy("zoo.kernels._triton_channel_gate", "channel_scale")
_scale_backward = kernel_op("channel_scale.backward")(channel_scale_backward_reference)
_scale_backward.register_triton_lazy("zoo.kernels._triton_channel_gate", "channel_scale_backward")


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@public_op("channel_scale")
def channel_scale(x: torch.Tensor, gate: torch.Tensor, shortcut: Optional[torch.Tensor] = None,
                  relu: bool = False) -> torch.Tensor:
    """y[b, c, h, w] = x[b, c, h, w] * gate[b, c], then ``+ shortcut`` and ReLU when given, in one pass.

    The gate is rounded to x's dtype first (as ``x * gate.to(x.dtype)``); the result keeps x's dtype
    and memory format (NCHW for an input that is neither NCHW nor channels_last).
    """
    _check_scale(x, gate, shortcut)
    return _matching(_scale(x, gate, shortcut, relu), x)


@channel_scale.op.register_fake
def _(x, gate, shortcut=None, relu=False):
    _check_scale(x, gate, shortcut)
    return _empty_out(x)


@torch.library.custom_op("zoo::channel_scale_backward", mutates_args=())
def channel_scale_backward(grad: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, out: Optional[torch.Tensor],
                           need_x: bool, need_gate: bool, need_shortcut: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_gate, grad_shortcut) of ``channel_scale`` in one pass over the map (empty when not needed)."""
    gx, gg, gs = _scale_backward(grad, x, gate, out, need_x, need_gate, need_shortcut)
    return gx, gg, gs


@channel_scale_backward.register_fake
def _(grad, x, gate, out, need_x, need_gate, need_shortcut):
    return (_empty_out(x) if need_x else x.new_empty(0), gate.new_empty(gate.shape) if need_gate else gate.new_empty(0),
            _empty_out(x) if need_shortcut else x.new_empty(0))


def _setup_scale(ctx, inputs, output):
    x, gate, shortcut, relu = inputs
    ctx.relu = relu
    ctx.save_for_backward(x, gate, output if relu else None)


def _backward_scale(ctx, grad):
    x, gate, out = ctx.saved_tensors
    # the dispatcher drops arguments left at their defaults, so needs_input_grad may be shorter than 3
    need_x, need_gate, need_shortcut = (tuple(ctx.needs_input_grad) + (False,) * 3)[:3]
    masked_shortcut = need_shortcut and ctx.relu  # without relu the shortcut's gradient is grad itself
    grad_x = grad_gate = grad_shortcut = None
    if need_x or need_gate or masked_shortcut:
        gx, gg, gs = channel_scale_backward(grad, x, gate, out, need_x, need_gate, masked_shortcut)
        grad_x = gx if need_x else None
        grad_gate = gg if need_gate else None
        grad_shortcut = gs if masked_shortcut else None
    if need_shortcut and not ctx.relu:
        grad_shortcut = grad
    return grad_x, grad_gate, grad_shortcut, None


channel_scale.op.register_autograd(_backward_scale, setup_context=_setup_scale)
