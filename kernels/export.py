"""zoo's custom ops as plain PyTorch, for exporters that cannot carry a custom op (ONNX).

``torch.export`` keeps every ``zoo::`` op as one opaque node, which is what ``torch.compile`` and
AOTInductor want. An ONNX graph has no such node, so before translating, the exported program is
decomposed with :func:`reference_decompositions`: each float op becomes its reference (the CPU path,
the same numbers), written functionally where the reference works in place, as an exported graph
must be. The integer and cache ops have no entry: export the float model and quantize in the target
runtime (onnxruntime's own int8 quantization takes the float graph).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import (adaln_modulate_reference, channel_patch_embed_reference, csam_reference, excite_conv_reference,
               excite_mlp_reference, moc_ffn_decode_reference, per_channel_filter, pool_mean_reference,
               squeeze_excite_conv_reference, squeeze_excite_mlp_reference)
from .moc import index_dtype


def _channel_scale(x: torch.Tensor, gate: torch.Tensor, shortcut: Optional[torch.Tensor] = None,
                   relu: bool = False) -> torch.Tensor:
    """``channel_scale_reference`` without its in-place add and ReLU: the same arithmetic, same bits."""
    y = x * gate.to(x.dtype)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
    if shortcut is not None:
        y = y + shortcut
    return F.relu(y) if relu else y


def _pool_weighted(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``pool_weighted_reference`` as one product and sum: the reference picks a layout-specific form
    (bmm, depthwise conv, embedding_bag) for speed, which an exporter need not carry."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    filters = per_channel_filter(weight, x.shape[1]).to(acc)  # (C, H, W)
    return (x.to(acc) * filters).sum(dim=(2, 3))  # (B, C)


def _moc_ffn(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, top_k: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``moc_ffn_reference`` in its dense formulation (the reference's CPU selection runs in NumPy and its
    sparse products in MKL, neither of which an exporter can trace): the same selection and products."""
    f = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xf = x.to(f)
    gate = xf @ w_gate.to(f).t()  # (T, H)
    gate_sel, idx = gate.topk(top_k, dim=1, sorted=False)  # (T, K)
    up_sel = (xf @ w_up.to(f).t()).gather(1, idx)  # (T, H) -> (T, K)
    act = F.silu(gate_sel) * up_sel
    y = torch.zeros_like(gate).scatter(1, idx, act) @ w_down.to(f).t()  # (T, H) with K per row -> (T, d)
    return y.to(x.dtype), idx.to(index_dtype(w_gate.shape[0])), gate_sel.to(x.dtype), up_sel.to(x.dtype)


def reference_decompositions() -> dict[torch._ops.OpOverload, Callable]:
    """``{zoo op: its functional reference}`` for ``ExportedProgram.run_decompositions``: every float op a
    model's forward can contain (the channel gates, HAN's CSAM, ChannelViT's patch embedding, VAR's
    AdaLN, the MoC FFN)."""
    zoo_ops = torch.ops.zoo
    return {
        zoo_ops.pool_mean.default: pool_mean_reference,
        zoo_ops.pool_weighted.default: _pool_weighted,
        zoo_ops.channel_scale.default: _channel_scale,
        zoo_ops.excite_mlp.default: excite_mlp_reference,
        zoo_ops.excite_conv.default: excite_conv_reference,
        zoo_ops.squeeze_excite_mlp.default: squeeze_excite_mlp_reference,
        zoo_ops.squeeze_excite_conv.default: squeeze_excite_conv_reference,
        zoo_ops.csam.default: csam_reference,
        zoo_ops.channel_patch_embed.default: channel_patch_embed_reference,
        zoo_ops.adaln_modulate.default: adaln_modulate_reference,
        zoo_ops.moc_ffn.default: _moc_ffn,
        zoo_ops.moc_ffn_decode.default: moc_ffn_decode_reference,
    }
