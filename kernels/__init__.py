"""Fused kernels and their plain-PyTorch twins.

Every op here has a reference implementation in plain PyTorch with the same signature; the
reference is also the CPU path. Public ops are ``torch.library.custom_op``s (namespace ``zoo``) with
fake implementations and autograd formulas; inside, :mod:`kernels.dispatch` picks the Triton kernel
or the reference on every call (``ZOO_KERNELS=auto|torch|triton``).

Channel gate (SE, ECA, RCAN's CA, FcaNet):

- ``pool_mean(x) -> (B, C)`` and ``pool_weighted(x, weight) -> (B, C)``: the squeeze, fp32 results
  (``weight``: a (C, H, W) filter, or (G, H, W) shared by runs of C / G channels);
- ``channel_scale(x, gate, shortcut=None, relu=False)``: the rescale, optionally fused with a
  residual block's ``relu(x * gate + shortcut)`` epilogue;
- ``excite_mlp(s, w1, b1, w2, b2, act)`` and ``excite_conv(s, weight)``: the excitation (SE / CA /
  FcaNet's MLP, ECA's 1-D conv) and its sigmoid in one launch;
- ``squeeze_excite_mlp(x, pool_filter, w1, b1, w2, b2, act)`` and ``squeeze_excite_conv(x, pool_filter, taps)``:
  the pool and the excitation in one launch, ``(gate, pooled vector)`` from the map (what the blocks call
  where the Triton kernels run);
- ``pool_backward`` and ``channel_scale_backward``: the ops their autograd formulas call;
- ``csam(x, weight, bias, gamma)``: HAN's channel-spatial attention, the 3x3x3 gate and the rescale in one pass.
"""
from .dispatch import KernelOp, available, kernel_mode, kernel_op
from .channel_pool import pool_backward, pool_backward_reference, pool_mean, pool_mean_reference, pool_weighted
from .channel_pool import per_channel_filter, pool_weighted_reference
from .channel_scale import channel_scale_backward, channel_scale_backward_reference, channel_scale_reference
from .channel_scale import channel_scale
from .channel_excite import excite_conv, excite_conv_reference, excite_mlp, excite_mlp_reference
from .squeeze_excite import squeeze_excite_conv, squeeze_excite_conv_reference, squeeze_excite_mlp
from .squeeze_excite import squeeze_excite_mlp_reference, squeeze_excite_runs_fused
from .csam import csam, csam_reference, csam_runs_fused

__all__ = [
    "KernelOp",
    "available",
    "kernel_mode",
    "kernel_op",
    "pool_mean",
    "pool_weighted",
    "pool_backward",
    "channel_scale",
    "channel_scale_backward",
    "pool_mean_reference",
    "pool_weighted_reference",
    "per_channel_filter",
    "pool_backward_reference",
    "channel_scale_reference",
    "channel_scale_backward_reference",
    "excite_mlp",
    "excite_conv",
    "excite_mlp_reference",
    "excite_conv_reference",
    "squeeze_excite_mlp",
    "squeeze_excite_conv",
    "squeeze_excite_mlp_reference",
    "squeeze_excite_conv_reference",
    "squeeze_excite_runs_fused",
    "csam",
    "csam_reference",
    "csam_runs_fused",
]

from .quant_act import quantize_act, quantize_act_reference  # noqa: E402
from .int_gemm import int_conv2d, int_conv2d_accumulators_reference, int_conv2d_reference, int_linear  # noqa: E402
from .int_gemm import pack_int4, unpack_int4  # noqa: E402
from . import onednn_int8  # noqa: E402  (the integer layers' CPU path: oneDNN's int8 kernels)

__all__ += ["quantize_act", "quantize_act_reference", "int_conv2d", "int_conv2d_reference",
            "int_conv2d_accumulators_reference", "int_linear", "pack_int4", "unpack_int4"]

from .patch_embed import channel_patch_embed, channel_patch_embed_reference  # noqa: E402

__all__ += ["channel_patch_embed", "channel_patch_embed_reference"]

from .moc_ffn import moc_ffn, moc_ffn_backward_reference, moc_ffn_reference, moc_ffn_with_selection  # noqa: E402
from .moc_ffn import moc_ffn_decode, moc_ffn_decode_reference  # noqa: E402

__all__ += ["moc_ffn", "moc_ffn_with_selection", "moc_ffn_reference", "moc_ffn_backward_reference",
            "moc_ffn_decode", "moc_ffn_decode_reference"]

from .moc_ffn_int import moc_ffn_decode_int, moc_int_down_reference, moc_int_up_reference, transpose_int_weight  # noqa: E402,E501

__all__ += ["moc_ffn_decode_int", "moc_int_up_reference", "moc_int_down_reference", "transpose_int_weight"]

from .kv_quant import KVQuantized, kv_dequantize, kv_dequantize_reference, kv_quantize, kv_quantize_reference  # noqa: E402

__all__ += ["KVQuantized", "kv_quantize", "kv_dequantize", "kv_quantize_reference", "kv_dequantize_reference"]

from .adaln import adaln_gated_residual, adaln_modulate, adaln_modulate_backward_reference, adaln_modulate_reference  # noqa: E402,E501

__all__ += ["adaln_modulate", "adaln_gated_residual", "adaln_modulate_reference", "adaln_modulate_backward_reference"]
