"""ChannelViT's per-channel patch embedding as one op: ``zoo::channel_patch_embed``.

Every input channel is its own image: each (p x p) patch of each channel is projected by one shared
weight, then the channel's embedding and the patch position's embedding are added,

    tokens[b, c * N + n, :] = patch(x[b, c], n) @ weight.flatten(1).T + bias + channel_embed[b, c] + pos_embed[n]

with ``N = (H // p) * (W // p)`` patches in row-major order, channel-major tokens (the release's
``Conv3d`` over (B, 1, C, H, W) then ``flatten(2).transpose(1, 2)``). Rows and columns beyond the
last whole patch are ignored, as a strided convolution does. It is a GEMM whose prologue gathers the
patches and whose epilogue adds the embeddings, so the (B, C*N, D) tokens are written once.

``zoo::channel_patch_embed_backward`` gives the gradients of all five inputs in one pass over the
output gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange

from .dispatch import eager_inference, kernel_op


def _check(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], channel_embed: torch.Tensor,
           pos_embed: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"channel_patch_embed expects images (B, C, H, W); got shape {tuple(x.shape)}")
    if weight.ndim != 3 or weight.shape[1] != weight.shape[2]:
        raise ValueError(f"channel_patch_embed: weight must be (D, p, p); got {tuple(weight.shape)}")
    b, c, h, w = x.shape
    d, p, _ = weight.shape
    if h < p or w < p:
        raise ValueError(f"channel_patch_embed: a {h}x{w} image is smaller than one {p}x{p} patch")
    n = (h // p) * (w // p)
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"channel_patch_embed: bias must be ({d},); got {tuple(bias.shape)}")
    if tuple(channel_embed.shape) != (b, c, d):
        raise ValueError(f"channel_patch_embed: channel_embed must be (B, C, D) = {(b, c, d)} (the embedding of "
                         f"each sample's channels); got {tuple(channel_embed.shape)}")
    if tuple(pos_embed.shape) != (n, d):
        raise ValueError(f"channel_patch_embed: pos_embed must be (N, D) = {(n, d)} for a {h}x{w} image with "
                         f"{p}x{p} patches; got {tuple(pos_embed.shape)} (resample it to the grid first)")


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, N, p*p) whole patches, row-major."""
    h, w = (x.shape[-2] // p) * p, (x.shape[-1] // p) * p
    return rearrange(x[..., :h, :w], "b c (i p) (j q) -> b c (i j) (p q)", p=p, q=p)


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch; the CPU path)
# --------------------------------------------------------------------------------------------------
def channel_patch_embed_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                  channel_embed: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*N, D) tokens; see the module docstring."""
    p = weight.shape[-1]
    patches = patchify(x, p)  # (B, C, N, p*p)
    tokens = patches @ weight.flatten(1).t().to(x.dtype)  # (B, C, N, D)
    if bias is not None:
        tokens = tokens + bias.to(x.dtype)
    tokens = tokens + channel_embed.to(x.dtype)[:, :, None, :] + pos_embed.to(x.dtype)[None, None]
    return tokens.flatten(1, 2)  # (B, C*N, D)


def channel_patch_embed_backward_reference(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor]:
    """Gradients of (x, weight, bias, channel_embed, pos_embed); the last three fp32 (B, C, D), (N, D)."""
    b, c, h, w = x.shape
    d, p, _ = weight.shape
    gi, gj = h // p, w // p
    g = grad.float().view(b, c, gi * gj, d)  # (B, C, N, D)
    patches = patchify(x.float(), p)  # (B, C, N, p*p)
    grad_weight = torch.einsum("bcnd,bcnk->dk", g, patches).view(d, p, p)
    grad_patches = g @ weight.float().flatten(1)  # (B, C, N, p*p)
    grad_x = torch.zeros(b, c, h, w, dtype=torch.float32, device=x.device)
    grad_x[..., :gi * p, :gj * p] = rearrange(grad_patches, "b c (i j) (p q) -> b c (i p) (j q)", i=gi, p=p)
    return grad_x.to(x.dtype), grad_weight.to(weight.dtype), g.sum((0, 1, 2)), g.sum(2), g.sum((0, 1))


_forward = kernel_op("channel_patch_embed")(channel_patch_embed_reference)
_backward = kernel_op("channel_patch_embed.backward")(channel_patch_embed_backward_reference)


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::channel_patch_embed", mutates_args=())
def _patch_embed_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], channel_embed: torch.Tensor,
                    pos_embed: torch.Tensor) -> torch.Tensor:
    return _forward(x.contiguous(), weight.contiguous(), bias, channel_embed.contiguous(), pos_embed.contiguous())


@_patch_embed_op.register_fake
def _(x, weight, bias, channel_embed, pos_embed):
    b, c, h, w = x.shape
    d, p, _ = weight.shape
    return x.new_empty((b, c * (h // p) * (w // p), d))


@torch.library.custom_op("zoo::channel_patch_embed_backward", mutates_args=())
def _patch_embed_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad.contiguous(), x.contiguous(), weight.contiguous())


@_patch_embed_backward_op.register_fake
def _(grad, x, weight):
    b, c, h, w = x.shape
    d, p, _ = weight.shape
    n = (h // p) * (w // p)
    f32 = torch.float32
    return (torch.empty_like(x), torch.empty_like(weight), grad.new_empty((d,), dtype=f32),
            grad.new_empty((b, c, d), dtype=f32), grad.new_empty((n, d), dtype=f32))


def _setup(ctx, inputs, output):
    x, weight, bias, channel_embed, pos_embed = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.dtypes = (None if bias is None else bias.dtype, channel_embed.dtype, pos_embed.dtype)


def _grads(ctx, grad):
    x, weight = ctx.saved_tensors
    gx, gw, gb, gc, gp = _patch_embed_backward_op(grad, x, weight)
    bias_dtype, ce_dtype, pe_dtype = ctx.dtypes
    return gx, gw, gb.to(bias_dtype) if ctx.has_bias else None, gc.to(ce_dtype), gp.to(pe_dtype)


_patch_embed_op.register_autograd(_grads, setup_context=_setup)


def channel_patch_embed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        channel_embed: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """Per-channel patch tokens with channel and position embeddings: (B, C, H, W) -> (B, C*N, D)."""
    _check(x, weight, bias, channel_embed, pos_embed)
    if eager_inference(x, weight, bias, channel_embed, pos_embed):  # the op's body without its dispatch
        return _forward(x.contiguous(), weight.contiguous(), bias, channel_embed.contiguous(), pos_embed.contiguous())
    return _patch_embed_op(x, weight, bias, channel_embed, pos_embed)


# imported on first launch: Triton stays optional
_forward.register_triton_lazy("zoo.kernels._triton_patch_embed", "channel_patch_embed")
_backward.register_triton_lazy("zoo.kernels._triton_patch_embed", "channel_patch_embed_backward")
