"""Fused kernels and their plain-PyTorch twins.

Every op here has a reference implementation in plain PyTorch with the same signature; the
reference is also the CPU path. Public ops are ``torch.library.custom_op``s (namespace ``zoo``) with
fake implementations and autograd formulas; inside, :mod:`zoo.kernels.dispatch` picks the Triton kernel
or the reference on every call (``ZOO_KERNELS=auto|torch|triton``). Each op family is one module,
``kernels/<op>.py``, with its Triton kernels, where it has them, in ``kernels/_triton_<op>.py`` (imported
on first launch) and its tests in ``tests/kernels/test_<op>.py``.

Channel gate (SE, ECA, RCAN's CA, FcaNet):

- :mod:`zoo.kernels.channel_gate`: ``pool_mean(x) -> (B, C)`` and ``pool_weighted(x, weight) -> (B, C)``, the
  squeeze, fp32 results (``weight``: a (C, H, W) filter, or (G, H, W) shared by runs of C / G channels);
  ``channel_scale(x, gate, shortcut=None, relu=False)``, the rescale, optionally fused with a residual
  block's ``relu(x * gate + shortcut)`` epilogue; ``pool_backward`` and ``channel_scale_backward``, the
  ops their autograd formulas call;
- :mod:`zoo.kernels.channel_excite`: ``excite_mlp(s, w1, b1, w2, b2, act)`` and ``excite_conv(s, weight)``,
  the excitation (SE / CA / FcaNet's MLP, ECA's 1-D conv) and its sigmoid in one launch;
- :mod:`zoo.kernels.squeeze_excite`: ``squeeze_excite_mlp(x, pool_filter, w1, b1, w2, b2, act)`` and
  ``squeeze_excite_conv(x, pool_filter, taps)``, the pool and the excitation in one launch,
  ``(gate, pooled vector)`` from the map (what the blocks call where the Triton kernels run);
- :mod:`zoo.kernels.han_csam`: ``csam(x, weight, bias, gamma)``, HAN's channel-spatial attention, the 3x3x3
  gate and the rescale in one pass.

Integer layers: ``quantize_act`` (:mod:`zoo.kernels.quant_act`), ``int_conv2d`` / ``int_linear`` (exact integer
GEMMs on int4/int8 codes) and ``pack_int4`` / ``unpack_int4`` (:mod:`zoo.kernels.int_gemm`), and
:mod:`zoo.kernels.onednn_int8` (the CPU path on oneDNN's int8 kernels). ChannelViT: ``channel_patch_embed``
(:mod:`zoo.kernels.patch_embed`). Mixture-of-Channels FFN: ``moc_ffn`` (training) and ``moc_ffn_decode``
(decoding) in :mod:`zoo.kernels.moc`, ``moc_ffn_decode_int`` (quantized decoding) in :mod:`zoo.kernels.moc_int`.
KV caches: ``kv_quantize`` / ``kv_dequantize`` (:mod:`zoo.kernels.kv_quant`). VAR: ``adaln_modulate`` /
``adaln_gated_residual`` (:mod:`zoo.kernels.adaln`).
"""
if __name__ != "zoo.kernels":  # the repository's kernels/ folder installs as zoo.kernels (pyproject.toml)
    raise ImportError(f"import zoo.kernels, not {__name__}: the folder kernels/ is installed as zoo.kernels "
                      "(pip install -e . in the checkout)")

from . import onednn_int8, weight_only
from .adaln import adaln_gated_residual, adaln_modulate, adaln_modulate_backward_reference, adaln_modulate_reference
from .channel_excite import excite_conv, excite_conv_reference, excite_mlp, excite_mlp_reference
from .channel_gate import (channel_scale, channel_scale_backward, channel_scale_backward_reference,
                           channel_scale_reference, per_channel_filter, pool_backward, pool_backward_reference,
                           pool_mean, pool_mean_reference, pool_weighted, pool_weighted_reference)
from .dispatch import KernelOp, available, choose_backend, kernel_mode, kernel_op
from .han_csam import csam, csam_reference, csam_runs_fused
from .int_gemm import (int_conv2d, int_conv2d_accumulators_reference, int_conv2d_reference, int_linear, pack_int4,
                       unpack_int4)
from .kv_quant import KVQuantized, kv_dequantize, kv_dequantize_reference, kv_quantize, kv_quantize_reference
from .moc import (moc_ffn, moc_ffn_backward_reference, moc_ffn_decode, moc_ffn_decode_reference, moc_ffn_reference,
                  moc_ffn_with_selection)
from .moc_int import moc_ffn_decode_int, moc_int_down_reference, moc_int_up_reference, transpose_int_weight
from .patch_embed import channel_patch_embed, channel_patch_embed_reference
from .quant_act import quantize_act, quantize_act_reference
from .squeeze_excite import (squeeze_excite_conv, squeeze_excite_conv_reference, squeeze_excite_mlp,
                             squeeze_excite_mlp_reference, squeeze_excite_runs_fused)

__all__ = [
    # dispatch
    "KernelOp", "available", "choose_backend", "kernel_mode", "kernel_op",
    # channel gate
    "pool_mean", "pool_weighted", "pool_backward", "per_channel_filter", "pool_mean_reference", "pool_weighted_reference",
    "pool_backward_reference", "channel_scale", "channel_scale_backward", "channel_scale_reference",
    "channel_scale_backward_reference", "excite_mlp", "excite_conv", "excite_mlp_reference", "excite_conv_reference",
    "squeeze_excite_mlp", "squeeze_excite_conv", "squeeze_excite_mlp_reference", "squeeze_excite_conv_reference",
    "squeeze_excite_runs_fused", "csam", "csam_reference", "csam_runs_fused",
    # integer layers
    "onednn_int8", "weight_only", "quantize_act", "quantize_act_reference", "int_conv2d", "int_conv2d_reference",
    "int_conv2d_accumulators_reference", "int_linear", "pack_int4", "unpack_int4",
    # ChannelViT
    "channel_patch_embed", "channel_patch_embed_reference",
    # Mixture-of-Channels FFN
    "moc_ffn", "moc_ffn_with_selection", "moc_ffn_reference", "moc_ffn_backward_reference", "moc_ffn_decode",
    "moc_ffn_decode_reference", "moc_ffn_decode_int", "moc_int_up_reference", "moc_int_down_reference",
    "transpose_int_weight",
    # KV caches
    "KVQuantized", "kv_quantize", "kv_dequantize", "kv_quantize_reference", "kv_dequantize_reference",
    # VAR
    "adaln_modulate", "adaln_gated_residual", "adaln_modulate_reference", "adaln_modulate_backward_reference",
]
