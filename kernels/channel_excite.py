"""Excite step of channel attention: the pooled vector s (B, C) -> the gate (B, C), in one launch.

- ``zoo::excite_mlp``: the bottleneck MLP of SE (Hu et al., "Squeeze-and-Excitation Networks", CVPR
  2018), RCAN's CA (Zhang et al., ECCV 2018) and FcaNet (Qin et al., ICCV 2021),
  ``sigmoid(W2 act(W1 s + b1) + b2)`` with W1 (R, C), W2 (C, R), optional biases, act ReLU or SiLU;
- ``zoo::excite_conv``: ECA's 1-D convolution along the channels (Wang et al., "ECA-Net", CVPR 2020),
  ``sigmoid(conv1d_k(s))`` with one odd kernel of k taps and zero padding (k - 1) / 2.

Eager PyTorch runs the MLP as two GEMMs and two or three elementwise kernels; the Triton kernels
(:mod:`zoo.kernels._triton_channel_excite`) compute a gate row in one launch, in fp32 (fp64 for fp64), rounding
the hidden vector and the logits to the weights' dtype where the layers would. The blocks do not
launch these: their gate is one :mod:`zoo.kernels.squeeze_excite` launch, whose last program per sample
runs the same row code on the pooled vector. These ops serve a vector pooled some other way.

Inputs share one dtype (cast an fp32 pooled vector to the layers' dtype first); the gate comes back
in it. The backward is the plain PyTorch formulas below (shared with the squeeze-excite ops), in
fp32 for 16-bit inputs: the tensors are a few (B, C) rows and the weights, no pass over the map.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .dispatch import kernel_op, public_op, upcast_16bit

ACTIVATIONS = ("relu", "silu")


def _check_vector(op: str, s: torch.Tensor) -> None:
    if s.ndim != 2:
        raise ValueError(f"{op} expects pooled vectors (B, C); got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        raise TypeError(f"{op} expects floating-point vectors; got {s.dtype}")


def _check_param(op: str, name: str, t: Optional[torch.Tensor], shape: tuple[int, ...], like: torch.Tensor,
                 like_name: str, hint: str, context: str = "") -> None:
    if t is None:
        return
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}{context}; got {tuple(t.shape)}")
    if t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{op}: {name} ({t.dtype}, {t.device}) must match {like_name} ({like.dtype}, {like.device}); "
                         f"{hint}")


def check_mlp_weights(op: str, channels: int, w1, b1, w2, b2, act: str, like: torch.Tensor, like_name: str,
                      hint: str) -> None:
    """W1 (R, C), b1 (R,), W2 (C, R), b2 (C,) of ``channels`` C, in ``like``'s dtype and device; act by name."""
    if w1.ndim != 2:
        raise ValueError(f"{op}: w1 must be (R, C); got shape {tuple(w1.shape)}")
    r = w1.shape[0]
    for name, t, shape in (("w1", w1, (r, channels)), ("b1", b1, (r,)), ("w2", w2, (channels, r)),
                           ("b2", b2, (channels,))):
        _check_param(op, name, t, shape, like, like_name, hint, f" for C = {channels} channels and R = {r} (w1's rows)")
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: act={act!r} is not one of {', '.join(ACTIVATIONS)}")


def check_conv_taps(op: str, taps: torch.Tensor, like: torch.Tensor, like_name: str, hint: str) -> None:
    if taps.ndim != 1 or taps.numel() % 2 == 0:
        raise ValueError(f"{op} needs an odd number of taps (k,) so the gate keeps C channels; "
                         f"got a kernel of shape {tuple(taps.shape)}")
    _check_param(op, "weight", taps, tuple(taps.shape), like, like_name, hint)


_CAST_HINT = "cast the pooled vector to the layers' dtype first"


def _check_mlp(s, w1, b1, w2, b2, act) -> None:
    _check_vector("excite_mlp", s)
    check_mlp_weights("excite_mlp", s.shape[1], w1, b1, w2, b2, act, s, "the vectors", _CAST_HINT)


def _check_conv(s, weight) -> None:
    _check_vector("excite_conv", s)
    check_conv_taps("excite_conv", weight, s, "the vectors", _CAST_HINT)


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch; the CPU path) and their backward formulas
# --------------------------------------------------------------------------------------------------
def _act(z: torch.Tensor, act: str) -> torch.Tensor:
    return F.relu(z) if act == "relu" else F.silu(z)


def excite_mlp_reference(s: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
                         b2: Optional[torch.Tensor], act: str) -> torch.Tensor:
    """``sigmoid(W2 act(W1 s + b1) + b2)``: (B, C) in the inputs' dtype, as the layers compute it."""
    return torch.sigmoid(F.linear(_act(F.linear(s, w1, b1), act), w2, b2))


def excite_conv_reference(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sigmoid(conv1d_k(s))`` along the channels, zero padding (k - 1) / 2: (B, C)."""
    pad = (weight.numel() - 1) // 2
    return torch.sigmoid(F.conv1d(s[:, None, :], weight[None, None, :], padding=pad)[:, 0, :])


def excite_mlp_backward(grad: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor],
                        w2: torch.Tensor, b2: Optional[torch.Tensor], act: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_s, grad_w1, grad_b1, grad_w2, grad_b2) from the output gradient and the inputs.

    The forward is recomputed (two tiny GEMMs) rather than saved: a 16-bit saved gate near 1 would
    leave ``1 - gate`` with one or two significant bits.
    """
    z1 = F.linear(s, w1, b1)  # (B, R)
    h = _act(z1, act)
    gate = torch.sigmoid(F.linear(h, w2, b2))  # (B, C)
    dz2 = grad * gate * (1 - gate)  # (B, C): sigmoid's derivative
    dh = dz2 @ w2  # (B, R)
    if act == "relu":
        dz1 = dh * (z1 > 0)
    else:
        sig = torch.sigmoid(z1)
        dz1 = dh * sig * (1 + z1 * (1 - sig))  # d silu(z) / dz
    return dz1 @ w1, dz1.t() @ s, dz1.sum(0), dz2.t() @ h, dz2.sum(0)


def excite_conv_backward(grad: torch.Tensor, s: torch.Tensor, weight: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_s, grad_weight) of :func:`excite_conv_reference`, the gate recomputed (see the MLP's)."""
    k = weight.numel()
    pad = (k - 1) // 2
    gate = excite_conv_reference(s, weight)
    dz = grad * gate * (1 - gate)  # (B, C)
    # z[c] = sum_j w[j] s[c + j - pad]: s's gradient is the same conv with the kernel reversed
    grad_s = F.conv1d(dz[:, None, :], weight.flip(0)[None, None, :], padding=pad)[:, 0, :]
    windows = F.pad(s, (pad, pad)).unfold(1, k, 1)  # (B, C, k): windows[b, c, j] = s[b, c + j - pad]
    return grad_s, torch.einsum("bc,bck->k", dz, windows)


_mlp = kernel_op("excite_mlp")(excite_mlp_reference)
_mlp.register_triton_lazy("zoo.kernels._triton_channel_excite", "excite_mlp")
_conv = kernel_op("excite_conv")(excite_conv_reference)
_conv.register_triton_lazy("zoo.kernels._triton_channel_excite", "excite_conv")


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@public_op("excite_mlp")
def excite_mlp(s: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
               b2: Optional[torch.Tensor], act: str = "relu") -> torch.Tensor:
    """SE / CA / FcaNet gate ``sigmoid(W2 act(W1 s + b1) + b2)`` from pooled vectors s (B, C): (B, C).

    w1 (R, C), b1 (R,) or None, w2 (C, R), b2 (C,) or None, all in s's dtype; act "relu" or "silu".
    """
    _check_mlp(s, w1, b1, w2, b2, act)
    return _mlp(s.contiguous(), w1.contiguous(), b1, w2.contiguous(), b2, act).contiguous()


@excite_mlp.op.register_fake
def _(s, w1, b1, w2, b2, act="relu"):
    _check_mlp(s, w1, b1, w2, b2, act)
    return torch.empty_like(s, memory_format=torch.contiguous_format)


def _setup_mlp(ctx, inputs, output):
    s, w1, b1, w2, b2, act = inputs
    ctx.act = act
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.save_for_backward(s, w1, b1, w2, b2)


def _backward_mlp(ctx, grad):
    s, w1, b1, w2, b2 = ctx.saved_tensors
    grads = excite_mlp_backward(*upcast_16bit(grad, s, w1, b1, w2, b2), ctx.act)
    grad_s, grad_w1, grad_b1, grad_w2, grad_b2 = (g.to(s.dtype) for g in grads)
    has_b1, has_b2 = ctx.has_bias
    return grad_s, grad_w1, grad_b1 if has_b1 else None, grad_w2, grad_b2 if has_b2 else None, None


excite_mlp.op.register_autograd(_backward_mlp, setup_context=_setup_mlp)


@public_op("excite_conv")
def excite_conv(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ECA gate ``sigmoid(conv1d_k(s))`` along the channels of pooled vectors s (B, C): (B, C).

    weight: the k taps (odd k), in s's dtype; zero padding (k - 1) / 2 keeps C channels.
    """
    _check_conv(s, weight)
    return _conv(s.contiguous(), weight.contiguous()).contiguous()


@excite_conv.op.register_fake
def _(s, weight):
    _check_conv(s, weight)
    return torch.empty_like(s, memory_format=torch.contiguous_format)


def _setup_conv(ctx, inputs, output):
    s, weight = inputs
    ctx.save_for_backward(s, weight)


def _backward_conv(ctx, grad):
    s, weight = ctx.saved_tensors
    return tuple(g.to(s.dtype) for g in excite_conv_backward(*upcast_16bit(grad, s, weight)))


excite_conv.op.register_autograd(_backward_conv, setup_context=_setup_conv)
