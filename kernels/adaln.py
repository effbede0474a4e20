"""AdaLN modulation as one op: ``zoo::adaln_modulate``, LayerNorm without affine parameters, then a
per-sample scale and shift,

    y[b, l, :] = LN(x[b, l, :]) * (1 + scale[b]) + shift[b],   LN(v) = (v - mean(v)) / sqrt(var(v) + eps)

as VAR's ``AdaLNSelfAttn`` computes it (Tian et al., "Visual Autoregressive Modeling: Scalable Image
Generation via Next-Scale Prediction", NeurIPS 2024: ``ln_wo_grad(x).mul(scale1.add(1)).add_(shift1)``,
the adaptive LayerNorm of DiT, Peebles and Xie, ICCV 2023). Statistics and arithmetic are fp32 (fp64 for
fp64 inputs) whatever x's dtype, rounded once to x's dtype at the end, so x is read once and y written
once where eager PyTorch makes four passes.

The op also returns each row's mean and rstd (B, L), fp32: the forward saves them with x and scale (8
bytes a token), and ``zoo::adaln_modulate_backward`` gives (grad_x, grad_scale, grad_shift) from them in
one pass over x and the output gradient, recomputing the normalized tokens instead of saving them. grad_scale and grad_shift are sums over the tokens of each sample (fp32, deterministic).

``adaln_gated_residual(residual, y, gate) = residual + y * gate`` (the gated residual of VAR's and DiT's
blocks) is ``torch.addcmul``: one fused pass in eager mode already, so it has no kernel of its own.
"""
from __future__ import annotations

import torch

from .dispatch import eager_inference, kernel_op

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sample(t: torch.Tensor, name: str, b: int, c: int, x: torch.Tensor, op: str = "adaln_modulate"
                ) -> torch.Tensor:
    """scale or shift as (B, C): accepts (B, 1, C), (B, C), and B = 1 broadcast over the batch."""
    given = tuple(t.shape)
    if t.ndim == 3 and t.shape[1] == 1:
        t = t.squeeze(1)  # (B, C)
    if t.ndim != 2 or t.shape[0] not in (1, b) or t.shape[1] != c:
        raise ValueError(f"{op}: {name} must be (B, 1, C) or (B, C) = ({b}, 1, {c}) for an input of "
                         f"shape {tuple(x.shape)} (one modulation per sample); got {given}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if t.dtype not in DTYPES:
        raise TypeError(f"{op}: {name} must be a floating-point tensor; got {t.dtype}")
    return t.expand(b, c)


def _check(x: torch.Tensor, eps: float) -> None:
    if x.ndim != 3:
        raise ValueError(f"adaln_modulate expects tokens (B, L, C); got shape {tuple(x.shape)} "
                         "(flatten the token dims first)")
    if x.dtype not in DTYPES:
        raise TypeError(f"adaln_modulate takes float32, float16, bfloat16 or float64 tokens; got {x.dtype}")
    if x.shape[-1] == 0:
        raise ValueError("adaln_modulate: tokens with C = 0 channels have no LayerNorm")
    if not eps > 0:
        raise ValueError(f"adaln_modulate: eps must be positive; got {eps}")


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch; the CPU path)
# --------------------------------------------------------------------------------------------------
def adaln_modulate_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, L, C), scale and shift (B, C) -> y (B, L, C) in x's dtype, and each row's mean and rstd (B, L)
    in fp32 (fp64 for fp64 x) for the backward; see the module docstring."""
    acc = _acc(x.dtype)
    # ATen's fused LayerNorm without affine: biased variance, fp32 (fp64) statistics, one pass on the CPU
    xhat, mean, rstd = torch.ops.aten.native_layer_norm(x.to(acc), [x.shape[-1]], None, None, eps)
    # shift + xhat * (1 + scale): one pass where eager's mul + add_ make two
    y = torch.addcmul(shift.to(acc)[:, None, :], xhat, 1 + scale.to(acc)[:, None, :])
    return y.to(x.dtype), mean.squeeze(-1), rstd.squeeze(-1)


def adaln_modulate_backward_reference(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                                      rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x in x's dtype, grad_scale (B, C) and grad_shift (B, C) in fp32, fp64 for fp64 x).

    grad_x is LayerNorm's backward without affine of ``g_hat = grad * (1 + scale)``,
    ``rstd * (g_hat - mean(g_hat) - xhat * mean(g_hat * xhat))``, by ATen's fused kernel.
    """
    acc = _acc(x.dtype)
    v, g = x.to(acc), grad.to(acc)
    mean, rstd = mean[..., None], rstd[..., None]  # (B, L, 1)
    xhat = (v - mean).mul_(rstd)  # recomputed from the saved statistics, not saved
    g_hat = g * (1 + scale.to(acc)[:, None, :])  # gradient of LN(x)
    grad_x = torch.ops.aten.native_layer_norm_backward(g_hat, v, [v.shape[-1]], mean, rstd, None, None,
                                                       [True, False, False])[0]
    return grad_x.to(x.dtype), xhat.mul_(g).sum(1), g.sum(1)  # xhat is ours: no new (B, L, C) buffer


_forward = kernel_op("adaln_modulate")(adaln_modulate_reference)
_backward = kernel_op("adaln_modulate.backward")(adaln_modulate_backward_reference)


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::adaln_modulate", mutates_args=())
def _adaln_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x.contiguous(), scale.contiguous(), shift.contiguous(), eps)


@_adaln_op.register_fake
def _(x, scale, shift, eps):
    b, l, _ = x.shape
    acc = _acc(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((b, l), dtype=acc),
            x.new_empty((b, l), dtype=acc))


@torch.library.custom_op("zoo::adaln_modulate_backward", mutates_args=())
def _adaln_backward_op(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad.contiguous(), x.contiguous(), scale.contiguous(), mean.contiguous(), rstd.contiguous())


@_adaln_backward_op.register_fake
def _(grad, x, scale, mean, rstd):
    b, _, c = x.shape
    acc = _acc(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((b, c), dtype=acc),
            x.new_empty((b, c), dtype=acc))


def _setup(ctx, inputs, output):
    x, scale, shift, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, scale, mean, rstd)
    ctx.dtypes = (scale.dtype, shift.dtype)


def _grads(ctx, grad, _grad_mean, _grad_rstd):
    x, scale, mean, rstd = ctx.saved_tensors
    grad_x, grad_scale, grad_shift = _adaln_backward_op(grad, x, scale, mean, rstd)
    scale_dtype, shift_dtype = ctx.dtypes
    return grad_x, grad_scale.to(scale_dtype), grad_shift.to(shift_dtype), None


_adaln_op.register_autograd(_grads, setup_context=_setup)


def adaln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, then ``* (1 + scale) + shift`` per sample.

    x: (B, L, C) tokens; scale, shift: (B, 1, C) or (B, C) (B = 1 broadcasts). Returns (B, L, C) in x's
    dtype; differentiable in x, scale and shift.
    """
    _check(x, eps)
    b, _, c = x.shape
    scale2 = _per_sample(scale, "scale", b, c, x)  # (B, C); an expand of B = 1 sums its gradient back
    shift2 = _per_sample(shift, "shift", b, c, x)
    if eager_inference(x, scale2, shift2):  # the op's body without its dispatch
        return _forward(x.contiguous(), scale2.contiguous(), shift2.contiguous(), float(eps))[0]
    return _adaln_op(x, scale2, shift2, float(eps))[0]


def adaln_gated_residual(residual: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``residual + y * gate`` with gate (B, 1, C) (or (B, C)) per sample: one ``torch.addcmul`` pass."""
    if residual.shape != y.shape or residual.ndim != 3:
        raise ValueError(f"adaln_gated_residual: residual {tuple(residual.shape)} and y {tuple(y.shape)} must be "
                         "the same (B, L, C) shape")
    gate = _per_sample(gate, "gate", y.shape[0], y.shape[2], y, "adaln_gated_residual")
    return torch.addcmul(residual, y, gate.unsqueeze(1).to(y.dtype))  # (B, 1, C) broadcast over L


# --------------------------------------------------------------------------------------------------
# Triton implementations (triton is imported on first use)
# --------------------------------------------------------------------------------------------------
_forward.register_triton_lazy("zoo.kernels._triton_adaln", "adaln_modulate")
_backward.register_triton_lazy("zoo.kernels._triton_adaln", "adaln_modulate_backward")
