"""ChannelViT and its plain-ViT baseline.

- ChannelViT: Bao et al., "Channel Vision Transformers: An Image Is Worth 1 x 16 x 16 Words",
  ICLR 2024 (arXiv:2309.16108); the release's HCS ``ChannelVisionTransformer``
  (github.com/insitro/ChannelViT, commit 1077a103): a token per patch *per channel*, a learnt
  channel embedding, one position table shared by all channels, and Hierarchical Channel Sampling.
- ViT: Dosovitskiy et al., "An Image Is Worth 16x16 Words", ICLR 2021, as the release's (DINO's)
  ``VisionTransformer``: one token per patch over all channels; with ``enable_sample=True`` the
  release's ``hcs_vit`` (sampled channels kept and rescaled by C / k, the others zeroed).

Both share everything but the tokeniser: CLS token, position table, timm ``Block``s (keys ``norm1``,
``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; attention through
``F.scaled_dot_product_attention``), final ``norm`` and ``head``, so release and timm checkpoints
load unchanged. ``forward(x, channel_ids)`` takes any subset of the training channels, named by
``channel_ids`` ((C_in,) or (B, C_in) indices into the ``in_chans`` training channels).
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import PatchEmbed, register_notrace_function, register_notrace_module, resample_abs_pos_embed
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from torch import nn

from zoo import blocks
from zoo.blocks.validation import check_image, check_tensor, owner_name, symbolic_tracing
from zoo.blocks.channel_vit import ChannelPatchEmbed, HierarchicalChannelSampler, resolve_channel_ids

from .. import registry
from ..builder import build_model
from ..checkpoint import CheckpointError
from ..features import FeatureInfo
from ..pretrained import PretrainedCfg
from ..pruning.groups import Group
from ..registry import register_model, register_pretrained_cfgs

__all__ = ["ChannelViT", "VisionTransformer", "checkpoint_filter_fn", "resample_pos_table"]


def resample_pos_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(h0*w0, D) -> (h*w, D) as the release (from DINO) does: bicubic, ``scale_factor=(h + 0.1) / h0``.

    The 0.1 offset (facebookresearch/dino#8) makes the output size round safely, and because the scale
    factor also sets the sampling grid, the table moves slightly even when ``(h, w) == (h0, w0)``.
    """
    grid = rearrange(table, "(h w) d -> 1 d h w", h=old_grid[0])  # (1, D, h0, w0)
    scale = ((new_grid[0] + 0.1) / old_grid[0], (new_grid[1] + 0.1) / old_grid[1])
    out = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)  # (1, D, h, w)
    if tuple(out.shape[-2:]) != tuple(new_grid):
        raise RuntimeError(f"position-table resampling gave a {tuple(out.shape[-2:])} grid, not {tuple(new_grid)}")
    return rearrange(out, "1 d h w -> (h w) d").to(table.dtype)  # (h*w, D)


# Functions and blocks that branch on input shapes or ids: timm's FX tracing (its feature extractors, its
# FX tests) calls them as they are instead of tracing into them, so the ViTs trace.
@register_notrace_function
def grid_pos_table(pos_embed: torch.Tensor, x: torch.Tensor, patch_size: int, native_grid: tuple[int, int],
                   num_prefix_tokens: int, copies: int) -> torch.Tensor:
    """The (N, D) patch-position table for ``x``'s grid, as the release picks it: the stored table only
    for one token per patch (``copies == 1``) on the native grid of a square image, else resampled
    (:func:`resample_pos_table`), even on the native grid."""
    h, w = x.shape[-2], x.shape[-1]
    grid = (h // patch_size, w // patch_size)
    table = pos_embed[0, num_prefix_tokens:]  # (N0, D)
    square = h == w or native_grid[0] != native_grid[1]  # the release tests w == h (square native)
    if copies == 1 and grid == tuple(native_grid) and square:
        return table
    return resample_pos_table(table, tuple(native_grid), grid)


@register_notrace_function
def fill_missing_channels(x: torch.Tensor, ids: torch.Tensor, in_chans: int, subset: bool) -> torch.Tensor:
    """(B, k, H, W) images of channels ``ids`` (B, k) -> (B, in_chans, H, W): the absent channels zeros, the
    present ones scaled by in_chans / k (the release's ViT on channel subsets); all channels pass as they are."""
    if not subset and x.shape[1] == in_chans:
        return x
    b, k, h, w = x.shape
    index = ids[:, :, None, None].expand(b, k, h, w)  # (B, k, H, W)
    return x.new_zeros(b, in_chans, h, w).scatter(1, index, x * (in_chans / k))  # (B, C, H, W)


register_notrace_function(resolve_channel_ids)
register_notrace_module(ChannelPatchEmbed)
register_notrace_module(HierarchicalChannelSampler)


class VisionTransformer(nn.Module):
    """ViT with the release's conventions; the base of :class:`ChannelViT`.

    Args (timm's names):
        img_size, patch_size: native image size (int or (H, W)) and patch side; the position table
            has one row per patch of the native grid and is resampled for other sizes.
        in_chans: training channels. Inputs may carry a subset of them, named by ``channel_ids``.
        num_classes: classifier outputs; 0 (the release's backbones) returns the normed CLS features.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer (ViT-S: 384, 12, 6, 4, True).
        drop_rate: dropout before the classifier; pos_drop_rate, proj_drop_rate, attn_drop_rate: inside.
        drop_path_rate: stochastic depth, rising linearly over the blocks (as the release).
        global_pool: ``'token'`` (CLS, the release) or ``'avg'`` (mean of the normed patch tokens).
        enable_sample: Hierarchical Channel Sampling in training; None takes the class default
            (ChannelViT: True, as the release's HCS class; ViT: False).
        norm_eps: LayerNorm epsilon (1e-6 in the release).
    """

    pipeline_tag = "image-classification"  # the Hugging Face hub's task, for the model card
    feature_cls = "getter"  # features_only: taps from forward_intermediates, as timm's ViTs

    sample_by_default = False

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 0, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "token", enable_sample: bool | None = None, norm_eps: float = 1e-6,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(s % patch_size or s < patch_size for s in img_size):
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size={patch_size}; "
                             f"use e.g. img_size={max(1, img_size[0] // patch_size) * patch_size}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' (CLS) or 'avg'; got {global_pool!r}")
        factory = {"device": device, "dtype": dtype}
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_classes, self.global_pool, self.drop_rate = num_classes, global_pool, drop_rate
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens, self.grad_checkpointing = 1, False
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **factory))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + math.prod(self.grid_size), embed_dim, **factory))
        self.patch_embed = self._make_patch_embed(factory)
        sample = self.sample_by_default if enable_sample is None else enable_sample
        self.hcs = blocks.create("hcs_sampler", in_chans, enabled=sample, **factory)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr, norm_layer=norm_layer, **factory)
            for dpr in torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()])  # numbers, on any device
        self.feature_info = FeatureInfo([dict(module=f"blocks.{i}", num_chs=self._tap_channels(),
                                              reduction=patch_size) for i in range(depth)])
        self.norm = norm_layer(embed_dim, **factory)
        self.head = nn.Linear(embed_dim, num_classes, **factory) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _make_patch_embed(self, factory: dict) -> nn.Module:
        return PatchEmbed(self.img_size, self.patch_size, self.in_chans, self.embed_dim, strict_img_size=False,
                          **factory)

    def _init_weights(self) -> None:
        """The release's init: truncated normal (std 0.02) for the tables and every Linear, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _tap_channels(self) -> int:
        """Channels of an NCHW tap (see :meth:`forward_intermediates`)."""
        return self.embed_dim

    def _check_input(self, x: torch.Tensor) -> None:
        if symbolic_tracing():  # the traced graph carries no checks; the model checks when it runs
            return
        arch = owner_name(self)
        check_tensor(arch, x, "images (B, C_in, H, W)")
        if x.ndim != 4:
            raise ValueError(f"{arch} expects images (B, C_in, H, W); got shape {tuple(x.shape)}")
        check_image(arch, x)  # any float dtype: the patch embedding casts to its own
        h, w, p = x.shape[-2], x.shape[-1], self.patch_size
        if h % p or w % p or h < p or w < p:
            fix = f"{max(p, h // p * p)}x{max(p, w // p * p)}"
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}; crop or resize the "
                             f"input to e.g. {fix}")

    def pos_table(self, x: torch.Tensor, copies: int) -> torch.Tensor:
        """The (N, D) patch-position table for ``x``'s grid (see :func:`grid_pos_table`)."""
        return grid_pos_table(self.pos_embed, x, self.patch_size, self.grid_size, self.num_prefix_tokens, copies)

    def patch_tokens(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, N, D) patch tokens with positions. Missing (or, in HCS training,
        unsampled) channels are zeros and the present ones are scaled by in_chans / present, as the
        release evaluates and trains its ViT on channel subsets."""
        ids = resolve_channel_ids(x, channel_ids, self.in_chans)  # (B, C_in)
        x, ids = self.hcs(x, ids)  # training only: (B, k, H, W), (B, k)
        x = fill_missing_channels(x, ids, self.in_chans, channel_ids is not None)  # (B, C, H, W)
        return self.patch_embed(x) + self.pos_table(x, copies=1)  # (B, N, D)

    def prepare_tokens(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 1 + T, D): CLS and patch tokens with their positions, before the blocks."""
        self._check_input(x)
        tokens = self.patch_tokens(x, channel_ids)  # (B, T, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        return self.pos_drop(torch.cat([cls, tokens], dim=1))  # (B, 1 + T, D)

    def forward_features(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> all tokens after the final norm, (B, 1 + T, D)."""
        x = self.prepare_tokens(x, channel_ids)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1 + T, D) normed tokens -> pooled (B, D) (``pre_logits``) or logits (B, num_classes)."""
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]  # (B, D)
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, channel_ids))

    def get_intermediate_layers(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None,
                                n: int = 1) -> list[torch.Tensor]:
        """The normed (B, 1 + T, D) tokens of the last ``n`` blocks (the release's linear-probe API)."""
        x, out = self.prepare_tokens(x, channel_ids), []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              channel_ids: torch.Tensor | None = None
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-features API over the blocks: ``indices`` an int takes the last n blocks, a
        sequence picks (negative from the end), None all. Each tap is a block's patch tokens, normed with
        ``norm``, as NCHW maps (B, D, H/p, W/p) or NLC tokens; ``return_prefix_tokens`` pairs each with its
        CLS token. ``stop_early`` skips the blocks after the last tap. Returns ``(final normed tokens,
        taps)``, or the taps alone."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"forward_intermediates: output_fmt is 'NCHW' or 'NLC'; got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.prepare_tokens(x, channel_ids)  # (B, 1 + T, D)
        taps = []
        for i, block in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = block(x)
            if i in take:
                taps.append(self.norm(x) if norm else x)
        prefixes = [t[:, :self.num_prefix_tokens] for t in taps]
        taps = [self._patch_layout(t[:, self.num_prefix_tokens:], h, w, output_fmt) for t in taps]
        if return_prefix_tokens:
            taps = list(zip(taps, prefixes))
        return taps if intermediates_only else (self.norm(x), taps)

    def _patch_layout(self, tokens: torch.Tensor, h: int, w: int, output_fmt: str) -> torch.Tensor:
        """(B, T, D) patch tokens in ``output_fmt``; one token per patch, so NCHW is the patch grid."""
        return rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w) if output_fmt == "NCHW" else tokens

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last tap ``indices`` selects, the final norm (``prune_norm``) and the
        classifier (``prune_head``), as timm's ViT does; returns the kept tap indices."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way classifier (0: no classifier)."""
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg'; got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.cls_token
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity()).train(self.training)

    def pruning_groups(self) -> list[Group]:
        """What :func:`zoo.prune` removes: each block's attention heads (a head is ``head_dim`` rows of q, k
        and v in ``qkv`` and as many columns of ``proj``) and its MLP hidden channels (``fc1`` rows, ``fc2``
        columns). The embedding width, which every residual add ties to the patch embedding, the position
        table and the CLS token, stays."""
        groups = []
        for i, block in enumerate(self.blocks):
            attn, name = block.attn, f"blocks.{i}.attn"
            head_dim = attn.head_dim
            groups.append(Group(f"blocks.{i}.heads").add(name, "attr:num_heads")
                          .add(f"{name}.qkv", "out", blocks=3, unit=head_dim).add(f"{name}.proj", "in", unit=head_dim)
                          .add(name, "attr:attn_dim", unit=head_dim))
            groups.append(Group(f"blocks.{i}.mlp").add(f"blocks.{i}.mlp.fc1", "out").add(f"blocks.{i}.mlp.fc2", "in"))
        return groups

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


class ChannelViT(VisionTransformer):
    """ChannelViT (Bao et al., ICLR 2024): the release's HCS ``ChannelVisionTransformer``.

    Each of the C_in input channels gives its own N patch tokens (the shared projection, the
    channel's embedding and the patch position's embedding, fused in the ``channel_patch_embed``
    block), so the sequence is 1 + C_in * N tokens, channel-major. ``enable_sample`` (default True)
    draws Hierarchical Channel Sampling's subset in training; eval always uses every given channel.
    Arguments as :class:`VisionTransformer`.
    """

    sample_by_default = True

    def _make_patch_embed(self, factory: dict) -> nn.Module:
        return blocks.create("channel_patch_embed", self.in_chans, embed_dim=self.embed_dim,
                             patch_size=self.patch_size, **factory)

    def _tap_channels(self) -> int:
        return self.in_chans * self.embed_dim

    def _patch_layout(self, tokens: torch.Tensor, h: int, w: int, output_fmt: str) -> torch.Tensor:
        """(B, k * N, D) channel-major tokens: NCHW puts each input channel's D features side by side on the
        patch grid, (B, k * D, H/p, W/p), channel-major; NLC keeps the tokens."""
        if output_fmt != "NCHW":
            return tokens
        return rearrange(tokens, "b (k h w) d -> b (k d) h w", h=h, w=w)

    def patch_tokens(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, k * N, D) channel-major tokens with channel and position embeddings
        (k = C_in, or HCS's draw in training)."""
        ids = resolve_channel_ids(x, channel_ids, self.in_chans)  # (B, C_in)
        x, ids = self.hcs(x, ids)  # training only: (B, k, H, W), (B, k)
        return self.patch_embed(x, ids, self.pos_table(x, copies=x.shape[1]), validate=False)  # (B, k*N, D)


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformer) -> dict:
    """Map the release's layouts (and timm's ViT) onto ``model``.

    Strips ``module.``/``backbone.`` prefixes and drops a DINO projection head (``head.mlp``,
    ``head.last_layer``); turns the DINO class's ``patch_embed.channel_embed`` parameter
    (1, D, C, 1, 1) into the HCS class's embedding table ``patch_embed.channel_embed.weight`` (C, D);
    resamples a position table of another grid; keeps the model's fresh head where the checkpoint
    is a backbone (every release file).
    """
    target = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^(?:module\.|backbone\.)+", "", key)
        if key.startswith(("head.mlp.", "head.last_layer.")):
            continue
        if key == "patch_embed.channel_embed" and value.ndim == 5:
            key, value = "patch_embed.channel_embed.weight", rearrange(value, "1 d c 1 1 -> c d")  # (C, D)
        out[key] = value
    table = out.get("patch_embed.channel_embed.weight")
    if table is not None and table.shape[0] != model.in_chans:
        raise CheckpointError(f"the checkpoint's channel embedding has {table.shape[0]} training channels but the "
                              f"model was built with in_chans={model.in_chans}; build it with "
                              f"in_chans={table.shape[0]} and pass channel subsets with channel_ids")
    pos = out.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape != target["pos_embed"].shape:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side == pos.shape[1] - 1:  # a square grid of another size: resample (else fit reports it)
            out["pos_embed"] = resample_abs_pos_embed(pos, list(model.grid_size), [side, side], num_prefix_tokens=1)
    if model.num_classes > 0 and "head.weight" not in out:
        out.update({k: v for k, v in target.items() if k.startswith("head.")})
    return out


_RELEASE = "https://github.com/insitro/ChannelViT/releases/download/v1.0.0/"
# the release's per-channel normalisation (config/transformations/cell.yaml, so2sat.yaml), 5 significant digits
_CELL_MEAN = (4.0317, 1.5659, 3.7737, 3.4605, 4.1723, 6.7805, 6.7874, 6.7781)
_CELL_STD = (17.318, 12.016, 16.966, 15.065, 17.964, 21.639, 21.671, 21.639)
_SO2SAT_MEAN = (-2.7662e-05, 2.2140e-05, 2.3080e-05, -2.8971e-05, 0.045272, 0.26610, 0.0019685, 0.0014895, 0.12442,
                0.11015, 0.10252, 0.11548, 0.15986, 0.18195, 0.17501, 0.19552, 0.15674, 0.11151)
_SO2SAT_STD = (0.17875, 0.17800, 0.46588, 0.46137, 4.0270, 8.2891, 2.7972, 1.6729, 0.039533, 0.047356, 0.065607,
               0.062691, 0.075968, 0.089223, 0.090549, 0.099729, 0.099299, 0.087634)


def _cfg(**kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(**{
        "num_classes": 0, "first_conv": "patch_embed.proj", "classifier": "head", "crop_pct": 1.0,
        "paper": "https://arxiv.org/abs/2309.16108", "origin_url": "https://github.com/insitro/ChannelViT",
        "license": "cc-by-nc-4.0", **kwargs})


def _release(name: str, chans: int, mean: tuple = (), std: tuple = (), **kwargs: Any) -> PretrainedCfg:
    norm = {"mean": mean, "std": std} if mean else {}
    return _cfg(url=f"{_RELEASE}{name}.pth", input_size=(chans, 224, 224), notes=f"hubconf: {name}", **norm, **kwargs)


_VIT = {"paper": "https://arxiv.org/abs/2010.11929", "license": "apache-2.0",
        "origin_url": "https://github.com/facebookresearch/dino"}
default_cfgs = register_pretrained_cfgs({
    "channelvit_small.hcs_sup_in1k": _release("imagenet_channelvit_small_p16_with_hcs_supervised", 3),
    "channelvit_small.dino_in1k": _release("imagenet_channelvit_small_p16_DINO", 3),
    "channelvit_small_p8.hcs_sup_jumpcp_cp": _release("cpjump_cellpaint_channelvit_small_p8_with_hcs_supervised", 5,
                                                      _CELL_MEAN[:5], _CELL_STD[:5]),
    "channelvit_small_p8.hcs_sup_jumpcp_cp_bf": _release(
        "cpjump_cellpaint_bf_channelvit_small_p8_with_hcs_supervised", 8, _CELL_MEAN, _CELL_STD),
    "channelvit_small_p8.hcs_sup_so2sat_random": _release(
        "so2sat_channelvit_small_p8_with_hcs_random_split_supervised", 18, _SO2SAT_MEAN, _SO2SAT_STD),
    "channelvit_small_p8.hcs_sup_so2sat_hard": _release(
        "so2sat_channelvit_small_p8_with_hcs_hard_split_supervised", 18, _SO2SAT_MEAN, _SO2SAT_STD),
    "channelvit_small_p8.hcs_sup_camelyon": _release("camelyon_channelvit_small_p8_with_hcs_supervised", 3),
    **{name: _cfg() for name in ("channelvit", "channelvit_tiny", "channelvit_base", "channelvit_tiny_p8",
                                 "channelvit_base_p8")},
    **{name: _cfg(**_VIT) for name in ("vit", "vit_tiny", "vit_small", "vit_base", "vit_tiny_p8", "vit_small_p8",
                                       "vit_base_p8")},
})

_SIZES = {"tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},  # ViT-T/S/B widths, depths, heads
          "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
          "base": {"embed_dim": 768, "depth": 12, "num_heads": 12}}


def _create(cls: type[VisionTransformer], variant: str, pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    cfg = kwargs.get("pretrained_cfg") or registry.get_pretrained_cfg(variant)
    if isinstance(pretrained, str) and registry.has_tag(variant, pretrained):
        cfg = registry.get_pretrained_cfg(f"{variant}.{pretrained}")
    kwargs.setdefault("num_classes", cfg.num_classes)  # as timm: the weights' classes and channels
    kwargs.setdefault("in_chans", cfg.input_size[0])
    return build_model(cls, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


def _sized(cls: type[VisionTransformer], variant: str, pretrained: Any, size: str, default_patch: int,
           **kwargs: Any) -> VisionTransformer:
    """A named size; every argument, the patch size too, can still be overridden (as timm's entrypoints)."""
    return _create(cls, variant, pretrained, **{**_SIZES[size], "patch_size": default_patch, **kwargs})


@register_model
def channelvit(pretrained: Any = False, **kwargs: Any) -> ChannelViT:
    """ChannelViT with every argument free (defaults: ViT-B/16 widths, 3 channels, HCS on)."""
    return _create(ChannelViT, "channelvit", pretrained, **kwargs)


@register_model
def channelvit_tiny(pretrained: Any = False, **kwargs: Any) -> ChannelViT:
    """ChannelViT-T/16 (192 wide, 12 blocks, 3 heads)."""
    return _sized(ChannelViT, "channelvit_tiny", pretrained, "tiny", 16, **kwargs)


@register_model
def channelvit_small(pretrained: Any = False, **kwargs: Any) -> ChannelViT:
    """ChannelViT-S/16 (384 wide, 12 blocks, 6 heads); release weights: ImageNet HCS-supervised, DINO."""
    return _sized(ChannelViT, "channelvit_small", pretrained, "small", 16, **kwargs)


@register_model
def channelvit_base(pretrained: Any = False, **kwargs: Any) -> ChannelViT:
    """ChannelViT-B/16 (768 wide, 12 blocks, 12 heads)."""
    return _sized(ChannelViT, "channelvit_base", pretrained, "base", 16, **kwargs)


@register_model
def channelvit_tiny_p8(pretrained: Any = False, **kwargs: Any) -> ChannelViT:
    """ChannelViT-T/8."""
    return _sized(ChannelViT, "channelvit_tiny_p8", pretrained, "tiny", 8, **kwargs)


@register_model
def channelvit_small_p8(pretrained: Any = False, **kwargs: Any) -> ChannelViT:
    """ChannelViT-S/8; release weights: JUMP-CP (5 and 8 channels), So2Sat (18), Camelyon17 (3)."""
    return _sized(ChannelViT, "channelvit_small_p8", pretrained, "small", 8, **kwargs)


@register_model
def channelvit_base_p8(pretrained: Any = False, **kwargs: Any) -> ChannelViT:
    """ChannelViT-B/8."""
    return _sized(ChannelViT, "channelvit_base_p8", pretrained, "base", 8, **kwargs)


@register_model
def vit(pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    """The ViT baseline with every argument free (defaults: ViT-B/16, 3 channels, no HCS)."""
    return _create(VisionTransformer, "vit", pretrained, **kwargs)


@register_model
def vit_tiny(pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    """ViT-T/16 baseline."""
    return _sized(VisionTransformer, "vit_tiny", pretrained, "tiny", 16, **kwargs)


@register_model
def vit_small(pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 baseline."""
    return _sized(VisionTransformer, "vit_small", pretrained, "small", 16, **kwargs)


@register_model
def vit_base(pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 baseline."""
    return _sized(VisionTransformer, "vit_base", pretrained, "base", 16, **kwargs)


@register_model
def vit_tiny_p8(pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    """ViT-T/8 baseline."""
    return _sized(VisionTransformer, "vit_tiny_p8", pretrained, "tiny", 8, **kwargs)


@register_model
def vit_small_p8(pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/8 baseline."""
    return _sized(VisionTransformer, "vit_small_p8", pretrained, "small", 8, **kwargs)


@register_model
def vit_base_p8(pretrained: Any = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/8 baseline."""
    return _sized(VisionTransformer, "vit_base_p8", pretrained, "base", 8, **kwargs)
