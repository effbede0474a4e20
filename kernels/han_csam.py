"""HAN's channel-spatial attention as one op: ``zoo::csam``,

    y = x * (1 + gamma * sigmoid(conv3d(x))),

where the map x (B, C, H, W) is read as a one-channel volume (B, 1, C, H, W) and the convolution has one
3x3x3 kernel and a bias, zero padding 1 (Niu et al., "Single Image Super-Resolution via a Holistic
Attention Network", ECCV 2020, Sec. 3.3). Eager PyTorch writes the conv's output, the sigmoid, the
product with gamma, the product with x and the sum, five maps; the Triton kernel
(:mod:`zoo.kernels._triton_han_csam`) reads x's 27 neighbours from cache and writes y once.

The backward is plain PyTorch (ATen's conv3d backward for the stencil's transpose and its 27 weight
sums), in fp32 for 16-bit maps, with the gate recomputed from x rather than saved. HAN's block calls
the op where the Triton kernel runs, and :func:`csam_reference` (plain PyTorch, differentiable by
autograd) on the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .channel_gate import _empty_out, _matching
from .dispatch import kernel_op, public_op, upcast_16bit


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"csam expects a floating-point (B, C, H, W) map; got {x.dtype} of shape {tuple(x.shape)}")
    for name, t, shape in (("weight", weight, (3, 3, 3)), ("bias", bias, (1,)), ("gamma", gamma, (1,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"csam: {name} must have shape {shape}; got {tuple(t.shape)}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"csam: {name} ({t.dtype}, {t.device}) must match the map ({x.dtype}, {x.device})")


def _volume_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv3d over the map read as (B, 1, C, H, W) with one 3x3x3 kernel: the gate's logits (B, C, H, W).

    Computed as one conv2d of every channel plane with the kernel's three 3x3 slices (three output
    maps) and two adds shifted along C: the same sums as ATen's one-channel conv3d, which on a CPU is
    3-7x slower (2.1 vs 6.6-14 ms for a 64x64x64 map); fp32 results agree within 5e-6.
    """
    b, c, h, w = x.shape
    slices = F.conv2d(x.reshape(b * c, 1, h, w), weight[:, None], padding=1).view(b, c, 3, h, w)
    logits = slices[:, :, 1] + bias  # (B, C, H, W): channel c's own plane, middle slice
    logits[:, :-1] += slices[:, 1:, 2]  # channel c + 1 through the last slice
    logits[:, 1:] += slices[:, :-1, 0]  # channel c - 1 through the first
    return logits


def csam_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x * (gamma * sigmoid(conv3d(x))) + x``, HAN's order of operations, in x's dtype and layout."""
    return x * (gamma * torch.sigmoid(_volume_conv(x, weight, bias))) + x


def csam_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_gamma) of :func:`csam_reference`."""
    gate = torch.sigmoid(_volume_conv(x, weight, bias))  # recomputed: cheaper than saving a map
    gx = grad * x
    grad_gamma = (gx * gate).sum().reshape(1)
    dz = (gx * gamma * gate * (1 - gate)).unsqueeze(1)  # (B, 1, C, H, W): the logits' gradient
    volume = x.unsqueeze(1)
    grad_x = grad * (1 + gamma * gate) + torch.nn.grad.conv3d_input(volume.shape, weight[None, None], dz,
                                                                    padding=1).squeeze(1)
    grad_weight = torch.nn.grad.conv3d_weight(volume, weight[None, None].shape, dz, padding=1)[0, 0]
    return grad_x, grad_weight, dz.sum().reshape(1), grad_gamma


_csam = kernel_op("csam")(csam_reference)
_csam.register_triton_lazy("zoo.kernels._triton_han_csam", "csam")


def csam_runs_fused(x: torch.Tensor) -> bool:
    """Whether ``zoo::csam`` would run its Triton kernel on ``x``."""
    return _csam.backend_for(x) == "triton"


@public_op("csam")
def csam(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """HAN's CSAM: ``x * (1 + gamma * sigmoid(conv3d(x)))`` with one 3x3x3 kernel ``weight`` over (C, H, W),
    ``bias`` (1,) and ``gamma`` (1,), all in x's dtype; the result keeps x's dtype and memory format."""
    _check(x, weight, bias, gamma)
    return _matching(_csam(x, weight.contiguous(), bias, gamma), x)


@csam.op.register_fake
def _(x, weight, bias, gamma):
    _check(x, weight, bias, gamma)
    return _empty_out(x)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, weight, bias, gamma = ctx.saved_tensors
    grads = csam_backward(*upcast_16bit(grad, x, weight, bias, gamma))
    return tuple(g.to(x.dtype) for g in grads)


csam.op.register_autograd(_backward, setup_context=_setup)
