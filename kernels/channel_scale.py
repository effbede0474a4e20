"""Excite step of channel attention: rescale every channel of a feature map by its gate, optionally
fused with a residual block's epilogue, ``relu(x * gate + shortcut)``, so the block's output is
written once.

``zoo::channel_scale`` is a ``torch.library.custom_op`` with a fake implementation and an autograd
formula; its backward is the op ``zoo::channel_scale_backward``, one pass over the map that gives
``grad_x = g * gate``, ``grad_gate[b, c] = sum_hw g * x`` (fp32 accumulation) and, with ``relu``,
the masked ``grad_shortcut = g`` where ``g = grad * (out > 0)``. The mask comes from the saved
output (saved, not recomputed: a residual block's output is kept alive by the next block anyway).
"""
from __future__ import annotations

from typing import Optional

import torch

from .dispatch import kernel_op


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


def _check(x: torch.Tensor, gate: torch.Tensor, shortcut: Optional[torch.Tensor]) -> None:
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
_scale.register_triton_lazy("kernels._triton_gate", "channel_scale")
_scale_backward = kernel_op("channel_scale.backward")(channel_scale_backward_reference)
_scale_backward.register_triton_lazy("kernels._triton_gate", "channel_scale_backward")


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::channel_scale", mutates_args=())
def channel_scale(x: torch.Tensor, gate: torch.Tensor, shortcut: Optional[torch.Tensor] = None,
                  relu: bool = False) -> torch.Tensor:
    """y[b, c, h, w] = x[b, c, h, w] * gate[b, c], then ``+ shortcut`` and ReLU when given, in one pass.

    The gate is rounded to x's dtype first (as ``x * gate.to(x.dtype)``); the result keeps x's dtype
    and memory format (NCHW for an input that is neither NCHW nor channels_last).
    """
    _check(x, gate, shortcut)
    return _matching(_scale(x, gate, shortcut, relu), x)


@channel_scale.register_fake
def _(x, gate, shortcut=None, relu=False):
    _check(x, gate, shortcut)
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


def _setup(ctx, inputs, output):
    x, gate, shortcut, relu = inputs
    ctx.relu = relu
    ctx.save_for_backward(x, gate, output if relu else None)


def _backward(ctx, grad):
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


channel_scale.register_autograd(_backward, setup_context=_setup)
