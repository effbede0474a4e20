"""Squeeze and excitation as one op: a (B, C, H, W) feature map -> the channel gate (B, C).

- ``zoo::squeeze_excite_mlp(x, pool_filter, w1, b1, w2, b2, act)``: SE (Hu et al., CVPR 2018), RCAN's
  CA (Zhang et al., ECCV 2018) and FcaNet (Qin et al., ICCV 2021): ``sigmoid(W2 act(W1 s + b1) + b2)``;
- ``zoo::squeeze_excite_conv(x, pool_filter, taps)``: ECA (Wang et al., CVPR 2020): ``sigmoid(conv1d_k(s))``;

where ``s`` is the pooled vector: the mean over H x W (``pool_filter=None``) or the weighted sum of
:func:`zoo.kernels.pool_weighted` (``pool_filter`` (C, H, W), or (G, H, W) shared by runs of C / G channels).
Each returns ``(gate, s)``: the gate in the weights' dtype, and s in fp32 (fp64 for fp64 maps), which
the backward needs and the kernel writes anyway. s is rounded to the weights' dtype before the
excitation, as the blocks cast it for their layers.

The Triton kernel (:mod:`zoo.kernels._triton_squeeze_excite`) pools and excites in one launch: the program
that finishes a sample's pooling last runs its excitation. The reference (the CPU path) is the pool and
excitation references one after the other. The backward is the excitation's formulas
(:mod:`zoo.kernels.channel_excite`) then ``zoo::pool_backward``, the map's gradient written in one pass.
"""
from __future__ import annotations

from typing import Optional

import torch

from .channel_excite import (check_conv_taps, check_mlp_weights, excite_conv_backward, excite_conv_reference,
                             excite_mlp_backward, excite_mlp_reference)
from .channel_gate import (_acc_dtype, _check_map, _check_weight, _is_channels_last, filter_grad, pool_backward,
                           pool_mean_reference, pool_weighted_reference)
from .dispatch import kernel_op, upcast_16bit

_WEIGHTS_HINT = "keep the layers in one dtype"


def _check_pool(op: str, x: torch.Tensor, pool_filter: Optional[torch.Tensor]) -> None:
    if pool_filter is None:
        _check_map(op, x)
    else:
        _check_weight(x, pool_filter, op)


def _check_layers(op: str, x: torch.Tensor, first: torch.Tensor) -> None:
    if not first.is_floating_point():
        raise TypeError(f"{op} expects floating-point layers; got {first.dtype}")
    if first.device != x.device:
        raise ValueError(f"{op}: the layers are on {first.device} but the feature map is on {x.device}")


def _check_mlp(x, pool_filter, w1, b1, w2, b2, act) -> None:
    op = "squeeze_excite_mlp"
    _check_pool(op, x, pool_filter)
    check_mlp_weights(op, x.shape[1], w1, b1, w2, b2, act, w1, "w1", _WEIGHTS_HINT)
    _check_layers(op, x, w1)


def _check_conv(x, pool_filter, taps) -> None:
    op = "squeeze_excite_conv"
    _check_pool(op, x, pool_filter)
    check_conv_taps(op, taps, taps, "the taps", _WEIGHTS_HINT)
    _check_layers(op, x, taps)


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch; the CPU path)
# --------------------------------------------------------------------------------------------------
def _squeeze(x: torch.Tensor, pool_filter: Optional[torch.Tensor]) -> torch.Tensor:
    return pool_mean_reference(x) if pool_filter is None else pool_weighted_reference(x, pool_filter)


def squeeze_excite_mlp_reference(x: torch.Tensor, pool_filter: Optional[torch.Tensor], w1: torch.Tensor,
                                 b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
                                 act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, s): the pooled vector s (B, C) in fp32 and ``sigmoid(W2 act(W1 s + b1) + b2)`` in w1's dtype."""
    s = _squeeze(x, pool_filter)
    return excite_mlp_reference(s.to(w1.dtype), w1, b1, w2, b2, act), s


def squeeze_excite_conv_reference(x: torch.Tensor, pool_filter: Optional[torch.Tensor],
                                  taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, s): the pooled vector s (B, C) in fp32 and ``sigmoid(conv1d_k(s))`` in the taps' dtype."""
    s = _squeeze(x, pool_filter)
    return excite_conv_reference(s.to(taps.dtype), taps), s


_mlp = kernel_op("squeeze_excite_mlp")(squeeze_excite_mlp_reference)
_mlp.register_triton_lazy("zoo.kernels._triton_squeeze_excite", "squeeze_excite_mlp")
_conv = kernel_op("squeeze_excite_conv")(squeeze_excite_conv_reference)
_conv.register_triton_lazy("zoo.kernels._triton_squeeze_excite", "squeeze_excite_conv")


def squeeze_excite_runs_fused(x: torch.Tensor) -> bool:
    """Whether the squeeze-excite ops would run their Triton kernel on the map ``x`` (a CUDA tensor, or
    ``ZOO_KERNELS=triton`` under the interpreter); elsewhere the blocks run their layers as modules."""
    return _mlp.backend_for(x) == "triton"


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
def _fake_outputs(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = x.shape[:2]
    return x.new_empty((b, c), dtype=dtype), x.new_empty((b, c), dtype=_acc_dtype(x.dtype))


@torch.library.custom_op("zoo::squeeze_excite_mlp", mutates_args=())
def squeeze_excite_mlp(x: torch.Tensor, pool_filter: Optional[torch.Tensor], w1: torch.Tensor,
                       b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
                       act: str = "relu") -> tuple[torch.Tensor, torch.Tensor]:
    """SE / CA / FcaNet's gate from the feature map: ``(gate, s)``, both (B, C).

    ``pool_filter``: None for the mean, or a (C or G, H, W) filter; w1 (R, C), b1 (R,) or None,
    w2 (C, R), b2 (C,) or None, in one floating dtype (the gate's); act "relu" or "silu".
    """
    _check_mlp(x, pool_filter, w1, b1, w2, b2, act)
    gate, s = _mlp(x, pool_filter, w1.contiguous(), b1, w2.contiguous(), b2, act)
    return gate.contiguous(), s.contiguous()


@squeeze_excite_mlp.register_fake
def _(x, pool_filter, w1, b1, w2, b2, act="relu"):
    _check_mlp(x, pool_filter, w1, b1, w2, b2, act)
    return _fake_outputs(x, w1.dtype)


@torch.library.custom_op("zoo::squeeze_excite_conv", mutates_args=())
def squeeze_excite_conv(x: torch.Tensor, pool_filter: Optional[torch.Tensor],
                        taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ECA's gate from the feature map: ``(gate, s)``, both (B, C); ``taps``: the 1-D conv's k (odd) taps."""
    _check_conv(x, pool_filter, taps)
    gate, s = _conv(x, pool_filter, taps.contiguous())
    return gate.contiguous(), s.contiguous()


@squeeze_excite_conv.register_fake
def _(x, pool_filter, taps):
    _check_conv(x, pool_filter, taps)
    return _fake_outputs(x, taps.dtype)


# --------------------------------------------------------------------------------------------------
# autograd: the excitation's formulas, then the pool's backward
# --------------------------------------------------------------------------------------------------
def _pool_context(ctx, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Keep what the pool's backward needs; returns x where the filter's gradient needs it, else None."""
    ctx.meta = (x.shape[2], x.shape[3], x.dtype, _is_channels_last(x))
    return x if ctx.needs_input_grad[1] else None


def _pool_grads(ctx, grad_pooled: torch.Tensor, grad_s: Optional[torch.Tensor], pool_filter, x, s
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(grad_x, grad_filter) from the gradient of the rounded pooled vector (and of the s output)."""
    grad = grad_pooled.to(s.dtype)
    if grad_s is not None:
        grad = grad + grad_s
    grad_x = pool_backward(grad, pool_filter, *ctx.meta) if ctx.needs_input_grad[0] else None
    grad_filter = filter_grad(grad, x, pool_filter) if ctx.needs_input_grad[1] else None
    return grad_x, grad_filter


def _setup_mlp(ctx, inputs, output):
    x, pool_filter, w1, b1, w2, b2, act = inputs
    ctx.act = act
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.save_for_backward(output[1], pool_filter, _pool_context(ctx, x), w1, b1, w2, b2)


def _backward_mlp(ctx, grad_gate, grad_s):
    s, pool_filter, x, w1, b1, w2, b2 = ctx.saved_tensors
    pooled = s.to(w1.dtype)
    grads = excite_mlp_backward(*upcast_16bit(grad_gate, pooled, w1, b1, w2, b2), ctx.act)
    grad_pooled, grad_w1, grad_b1, grad_w2, grad_b2 = (g.to(w1.dtype) for g in grads)
    grad_x, grad_filter = _pool_grads(ctx, grad_pooled, grad_s, pool_filter, x, s)
    has_b1, has_b2 = ctx.has_bias
    return (grad_x, grad_filter, grad_w1, grad_b1 if has_b1 else None, grad_w2, grad_b2 if has_b2 else None, None)


def _setup_conv(ctx, inputs, output):
    x, pool_filter, taps = inputs
    ctx.save_for_backward(output[1], pool_filter, _pool_context(ctx, x), taps)


def _backward_conv(ctx, grad_gate, grad_s):
    s, pool_filter, x, taps = ctx.saved_tensors
    grads = excite_conv_backward(*upcast_16bit(grad_gate, s.to(taps.dtype), taps))
    grad_pooled, grad_taps = (g.to(taps.dtype) for g in grads)
    grad_x, grad_filter = _pool_grads(ctx, grad_pooled, grad_s, pool_filter, x, s)
    return grad_x, grad_filter, grad_taps


squeeze_excite_mlp.register_autograd(_backward_mlp, setup_context=_setup_mlp)
squeeze_excite_conv.register_autograd(_backward_conv, setup_context=_setup_conv)
