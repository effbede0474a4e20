"""VAR's AdaLN-conditioned transformer block and the AdaLN before its head.

Tian et al., "Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction",
NeurIPS 2024 (arXiv:2404.02905); layouts of the release, github.com/FoundationVision/VAR
(``models/basic_var.py``), so its checkpoints load with no renaming:

- ``attn``: ``mat_qkv`` (no bias) with the biases ``q_bias``, ``v_bias`` and the zero buffer
  ``zero_k_bias``; ``proj``; with ``attn_l2_norm`` the learnt per-head logit scale
  ``scale_mul_1H11`` (stored as a log, clamped at log 100) multiplies L2-normalised queries;
- ``ffn``: ``fc1`` -> GELU (tanh) -> ``fc2``;
- ``ada_lin`` (SiLU -> Linear(D, 6C)) or, with a shared AdaLN, the per-block offset ``ada_gss``
  added to the model's shared projection. The six chunks are, in the release's order,
  ``gamma1, gamma2, scale1, scale2, shift1, shift2``.

Attention runs through ``F.scaled_dot_product_attention`` with the additive block-causal mask in
training/teacher forcing, and with a KV cache (no mask) in the scale-by-scale sampler. Given a
FlexAttention ``BlockMask`` (:func:`scale_block_mask`) instead of the dense mask, teacher forcing runs
through ``torch.nn.attention.flex_attention`` (compiled on CUDA), which skips the masked-out tiles.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo import kernels

from .kv_cache import ConcatKVCache, KVCache
from .layers import stochastic_depth
from .registry import register

__all__ = ["AdaLNSelfAttn", "AdaLNBeforeHead", "ScaleSelfAttention", "FFN", "adaln_modulate", "ATTN_IMPLS",
           "resolve_attn_impl", "scale_block_mask"]

ATTN_IMPLS = ("sdpa", "flex", "auto")
_compiled_flex: Any = None


def _flex_module() -> Any:
    """``torch.nn.attention.flex_attention``, or None where this torch has no FlexAttention."""
    try:
        from torch.nn.attention import flex_attention
    except ImportError:
        return None
    return flex_attention


def resolve_attn_impl(attn_impl: str, device: torch.device | str, attn_drop: float = 0.0) -> str:
    """``"sdpa"`` or ``"flex"`` for ``attn_impl`` on ``device``: ``"auto"`` picks FlexAttention on CUDA
    when importable (and no attention dropout, which it lacks), SDPA otherwise."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}; got {attn_impl!r}")
    if attn_impl == "auto":
        flex_ok = torch.device(device).type == "cuda" and attn_drop == 0 and _flex_module() is not None
        return "flex" if flex_ok else "sdpa"
    if attn_impl == "flex" and _flex_module() is None:
        raise RuntimeError(f"attn_impl='flex' needs torch.nn.attention.flex_attention (torch >= 2.5); this "
                           f"torch {torch.__version__} has none. Use attn_impl='sdpa'")
    return attn_impl


def scale_block_mask(scale_of: torch.Tensor) -> Any:
    """FlexAttention ``BlockMask`` of the block-causal scale mask: query token q sees key token kv when
    ``scale_of[kv] <= scale_of[q]``; ``scale_of`` is the (L,) integer scale index of each token."""
    flex = _flex_module()
    if flex is None:
        raise RuntimeError(f"FlexAttention is not in torch {torch.__version__}; use the dense additive mask")
    if scale_of.dim() != 1 or scale_of.is_floating_point():
        raise ValueError(f"scale_of must be an (L,) integer tensor of scale indices; got {scale_of.dtype} "
                         f"{tuple(scale_of.shape)}")

    def sees_coarser_or_same(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return scale_of[kv_idx] <= scale_of[q_idx]

    length = scale_of.shape[0]
    return flex.create_block_mask(sees_coarser_or_same, None, None, length, length, device=scale_of.device)


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any, scale: float) -> torch.Tensor:
    """FlexAttention, compiled on CUDA (the fused kernel); eager elsewhere (CPU has a forward only)."""
    global _compiled_flex
    flex = _flex_module()
    if q.device.type != "cuda":
        return flex.flex_attention(q, k, v, block_mask=block_mask, scale=scale)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex.flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale)


def _adaln_modulate_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then ``* (1 + scale) + shift`` (the release's op order)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps).mul(scale.add(1)).add_(shift)


def adaln_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, L, C) tokens, (B, 1, C) scale and shift -> modulated (B, L, C); the fused kernel when
    :mod:`kernels` has one (``zoo.kernels.adaln_modulate``), else the plain-PyTorch formula."""
    fused = getattr(kernels, "adaln_modulate", None)
    if fused is not None:
        return fused(x, scale, shift, eps)
    return _adaln_modulate_reference(x, scale, shift, eps)


class FFN(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``, the release's FFN."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(dim, hidden, **factory)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim, **factory)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class ScaleSelfAttention(nn.Module):
    """Multi-head self-attention with the release's biases, optional q/k L2 norm and a KV cache.

    ``kv_caching(True)`` starts a cache: each call appends its keys and values and attends to
    everything cached (the sampler feeds one scale per call, so no mask is needed).
    ``attend_current_only`` (Switti's non-autoregressive variant, Voronov et al. 2024,
    arXiv:2412.01819) makes a cached call attend only to its own tokens and leaves the cache as is.
    """

    def __init__(self, dim: int, num_heads: int = 12, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 attn_l2_norm: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} must be a multiple of num_heads={num_heads}; e.g. num_heads="
                             f"{max(1, dim // 64)} (head width 64, the release's choice)")
        factory = {"device": device, "dtype": dtype}
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:  # cosine attention: the learnt scale replaces 1/sqrt(d) (init 4, capped at 100)
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0, **factory).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(dim, dim * 3, bias=False, **factory)
        self.q_bias = nn.Parameter(torch.zeros(dim, **factory))
        self.v_bias = nn.Parameter(torch.zeros(dim, **factory))
        self.register_buffer("zero_k_bias", torch.zeros(dim, **factory))
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop
        self.kv_cache: KVCache | None = None
        self.kv_layer = 0
        self.attend_current_only = False

    @property
    def caching(self) -> bool:
        return self.kv_cache is not None

    def kv_caching(self, enable: bool, cache: KVCache | None = None, layer: int = 0) -> None:
        """Start (``enable``) or drop the cache: each call then runs ``cache.update(layer, k, v)``. Without a
        ``cache`` (shared by the model's layers, e.g. KIVI's quantized one) the block keeps its own
        :class:`zoo.blocks.kv_cache.ConcatKVCache`, the release's."""
        if enable:
            self.kv_cache, self.kv_layer = (cache, layer) if cache is not None else (ConcatKVCache(1), 0)
        else:
            self.kv_cache, self.kv_layer = None, 0
        self.attend_current_only = False

    def forward(self, x: torch.Tensor, attn_bias: Any) -> torch.Tensor:
        """(B, L, C) tokens and the additive (1, 1, L, L) mask, None, or a FlexAttention ``BlockMask``
        (:func:`scale_block_mask`; full-sequence calls only, not with the KV cache)."""
        b, length, dim = x.shape
        use_flex = attn_bias is not None and not isinstance(attn_bias, torch.Tensor)
        if use_flex and self.caching:
            raise ValueError("a FlexAttention BlockMask is for full-sequence (teacher-forcing) calls; the KV-cached "
                             "sampler attends to everything cached, so pass attn_bias=None (or a dense mask)")
        if use_flex and self.training and self.attn_drop > 0:
            raise ValueError(f"FlexAttention has no attention dropout (attn_drop={self.attn_drop}); use "
                             f"attn_impl='sdpa' or attn_drop=0")
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        if type(self.mat_qkv) is nn.Linear:  # the release's fused bias
            qkv = F.linear(x, self.mat_qkv.weight, bias)
        else:  # a quantized replacement (zoo.quantize) runs as a module
            qkv = self.mat_qkv(x) + bias.to(x.dtype)
        qkv = qkv.view(b, length, 3, self.num_heads, self.head_dim)  # (B, L, 3, H, c)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, c)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()  # (1, H, 1, 1)
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if self.kv_cache is not None and not self.attend_current_only:
            k, v = self.kv_cache.update(self.kv_layer, k, v)  # (B, H, L_so_far, c)
        dropout_p = self.attn_drop if self.training else 0.0
        if use_flex:
            out = _flex_attention(q, k.to(q.dtype), v.to(q.dtype), attn_bias, self.scale)  # (B, H, L, c)
        else:
            if attn_bias is not None:
                attn_bias = attn_bias.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_bias,
                                                 dropout_p=dropout_p, scale=self.scale)  # (B, H, L, c)
        out = out.transpose(1, 2).reshape(b, length, dim)  # (B, L, C)
        return self.proj_drop(self.proj(out))


@register("adaln_attn_block")
class AdaLNSelfAttn(nn.Module):
    """VAR's transformer block (Tian et al., NeurIPS 2024): AdaLN-modulated attention and FFN.

    ``x = x + gamma1 * attn(LN(x) * (1 + scale1) + shift1)``;
    ``x = x + gamma2 * ffn(LN(x) * (1 + scale2) + shift2)``, the six vectors from the condition
    (``ada_lin(cond_BD)``), or, when ``shared_aln``, ``ada_gss + cond_BD`` where ``cond_BD`` is the
    model's shared projection (B, 1, 6, C).

    Args:
        dim: token width C.
        cond_dim: width D of the condition (the class embedding).
        num_heads, mlp_ratio: attention heads; FFN width ``round(dim * mlp_ratio)``.
        shared_aln: take the modulation from a projection shared by all blocks (VAR-d36's setting).
        attn_l2_norm: cosine attention with a learnt per-head scale (every released VAR).
        drop, attn_drop, drop_path: dropout after attention/FFN, on the attention weights, and
            stochastic depth of both branches.
        norm_eps: LayerNorm epsilon (1e-6 in the release).
    """

    def __init__(self, dim: int, cond_dim: int | None = None, num_heads: int = 16, mlp_ratio: float = 4.0,
                 shared_aln: bool = False, attn_l2_norm: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        cond_dim = dim if cond_dim is None else cond_dim
        self.C, self.D, self.norm_eps, self.shared_aln = dim, cond_dim, norm_eps, shared_aln
        self.drop_path = stochastic_depth(drop_path)
        self.attn = ScaleSelfAttention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop,
                                       attn_l2_norm=attn_l2_norm, **factory)
        self.ffn = FFN(dim, round(dim * mlp_ratio), drop=drop, **factory)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim, **factory) / dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim, **factory))

    def modulation(self, cond_BD: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The six (B, 1, C) vectors gamma1, gamma2, scale1, scale2, shift1, shift2."""
        if self.shared_aln:
            return (self.ada_gss + cond_BD).unbind(2)  # (1, 1, 6, C) + (B, 1, 6, C) -> 6 x (B, 1, C)
        return self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)  # 6 x (B, 1, C)

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: Any) -> torch.Tensor:
        """(B, L, C) tokens, the (B, D) condition (or shared (B, 1, 6, C)), an additive mask, a
        FlexAttention ``BlockMask`` (:func:`scale_block_mask`) or None."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond_BD)
        h = self.attn(adaln_modulate(x, scale1, shift1, self.norm_eps), attn_bias=attn_bias)
        x = x + self.drop_path(h.mul(gamma1))
        h = self.ffn(adaln_modulate(x, scale2, shift2, self.norm_eps))
        return x + self.drop_path(h.mul(gamma2))


@register("adaln_before_head")
class AdaLNBeforeHead(nn.Module):
    """The AdaLN before VAR's head (Tian et al., NeurIPS 2024): ``LN(x) * (1 + scale) + shift`` with
    ``scale, shift = ada_lin(cond)``.

    Args:
        dim: token width C; cond_dim: condition width D; norm_eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, cond_dim: int | None = None, norm_eps: float = 1e-6, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        cond_dim = dim if cond_dim is None else cond_dim
        self.C, self.D, self.norm_eps = dim, cond_dim, norm_eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim, device=device, dtype=dtype))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)  # 2 x (B, 1, C)
        return adaln_modulate(x_BLC, scale, shift, self.norm_eps)
