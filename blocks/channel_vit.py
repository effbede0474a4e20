"""ChannelViT's per-channel patch embedding and Hierarchical Channel Sampling.

Bao et al., "Channel Vision Transformers: An Image Is Worth 1 x 16 x 16 Words", ICLR 2024
(arXiv:2309.16108); layouts of the release, github.com/insitro/ChannelViT.

Every input channel is tokenised on its own: one projection shared by all channels turns each
(p x p) patch of each channel into a token, and a learnt per-channel embedding says which channel a
token came from. A model may therefore see any subset of the channels it was trained on, named by
*channel ids* (indices into its training channels). Hierarchical Channel Sampling (HCS) trains for
that: per batch it draws how many channels to keep, then which.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from zoo import kernels

from .registry import register

__all__ = ["ChannelPatchEmbed", "HierarchicalChannelSampler", "resolve_channel_ids"]


def resolve_channel_ids(x: torch.Tensor, channel_ids: torch.Tensor | None, channels: int,
                        check_values: bool = True) -> torch.Tensor:
    """The training channel of each of ``x``'s channels as a (B, C_in) LongTensor on ``x.device``.

    ``channel_ids`` is None (``x`` carries channels 0..C_in-1), a (C_in,) tensor shared by the batch,
    or (B, C_in) per sample. Ids must lie in ``0..channels-1``; checking their values reads them back
    from the device, so callers that built the ids themselves pass ``check_values=False``.
    """
    if x.ndim != 4:
        raise ValueError(f"expected images (B, C_in, H, W); got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    if channel_ids is None:
        if c > channels:
            raise ValueError(f"the input has {c} channels but the model knows {channels} (in_chans={channels}); "
                             f"pass at most {channels} channels with channel_ids naming them, or build the "
                             f"model with in_chans={c}")
        return torch.arange(c, device=x.device).expand(b, c)  # (B, C_in)
    ids = torch.as_tensor(channel_ids, device=x.device)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"channel_ids must be integer channel indices; got dtype {ids.dtype}. "
                         f"Pass a LongTensor such as torch.tensor([0, 2, 3])")
    if ids.ndim == 1 and ids.shape[0] == c:
        ids = ids.expand(b, c)  # (C_in,) -> (B, C_in)
    if tuple(ids.shape) != (b, c):
        raise ValueError(f"channel_ids must name each of the input's {c} channels: shape ({c},) or (B, C_in) = "
                         f"({b}, {c}); got {tuple(ids.shape)}. Give one id per channel of x, in x's order")
    if check_values and not torch.compiler.is_compiling() and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= channels:
            raise ValueError(f"channel_ids must lie in 0..{channels - 1} (the model's in_chans={channels} "
                             f"training channels); got values from {lo} to {hi}. Use the index each channel "
                             f"had in training, or build the model with a larger in_chans")
        if c > 1 and bool((ids.sort(dim=-1).values.diff(dim=-1) == 0).any()):
            raise ValueError("channel_ids repeat a channel: each channel of x must name a different training "
                             "channel (e.g. [0, 2, 3], not [0, 2, 2])")
    return ids.long()


@register("channel_patch_embed")
class ChannelPatchEmbed(nn.Module):
    """ChannelViT's patch embedding (Bao et al., ICLR 2024): a token per patch *per channel*.

    ``tokens[b, c * N + n] = proj(patch n of channel c) + channel_embed[ids[b, c]] + pos_embed[n]``,
    channel-major, computed by the fused :func:`zoo.kernels.channel_patch_embed`.

    The projection is held as the release's ``Conv3d(1, D, (1, p, p))`` (keys ``proj.weight`` of
    shape (D, 1, 1, p, p) and ``proj.bias``) and the channel embedding as ``nn.Embedding(C, D)``
    (key ``channel_embed.weight``, the release's HCS layout), so the release's checkpoints load
    unchanged; the forward reads both weights into the kernel (hooks on ``proj`` do not fire).

    Args:
        channels: training channels C, the rows of the channel-embedding table.
        embed_dim: token width D.
        patch_size: side p of the square patches.
        bias: whether the projection has a bias.
    """

    def __init__(self, channels: int, embed_dim: int = 768, patch_size: int = 16, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if channels < 1 or embed_dim < 1 or patch_size < 1:
            raise ValueError(f"channels, embed_dim and patch_size must be positive; got {channels}, {embed_dim}, "
                             f"{patch_size}")
        factory = {"device": device, "dtype": dtype}
        self.channels, self.embed_dim, self.patch_size = channels, embed_dim, patch_size
        self.proj = nn.Conv3d(1, embed_dim, (1, patch_size, patch_size), stride=(1, patch_size, patch_size),
                              bias=bias, **factory)
        self.channel_embed = nn.Embedding(channels, embed_dim, **factory)
        nn.init.trunc_normal_(self.channel_embed.weight, std=0.02)

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None, pos_embed: torch.Tensor,
                validate: bool = True) -> torch.Tensor:
        """(B, C_in, H, W) images, their channel ids (None, (C_in,) or (B, C_in)) and the (N, D)
        position table of their patch grid -> (B, C_in * N, D) tokens. ``validate=False`` skips the
        value check of ids the caller already resolved with :func:`resolve_channel_ids`."""
        ids = resolve_channel_ids(x, channel_ids, self.channels, check_values=validate)  # (B, C_in)
        channel_embed = self.channel_embed(ids)  # (B, C_in, D)
        weight = rearrange(self.proj.weight, "d 1 1 p q -> d p q")  # (D, p, p)
        return kernels.channel_patch_embed(x, weight, self.proj.bias, channel_embed, pos_embed)


@register("hcs_sampler")
class HierarchicalChannelSampler(nn.Module):
    """Hierarchical Channel Sampling (Bao et al., ICLR 2024, Sec. 3.2), as the release does it.

    In training, once per batch: draw the number of channels ``k`` uniformly from 1..C_in, then a
    uniformly random subset of ``k`` of the input's channels, and keep only those (every sample of
    the batch keeps the same positions). Unlike independent channel dropout, every subset size is
    equally likely. In eval mode, or with ``enabled=False``, the input passes through unchanged.

    The kept channels stay in their input order (the release keeps the draw's order; a
    transformer whose tokens carry their own channel and position embeddings does not care).

    Args:
        channels: the most channels an input may have (the model's training channels).
        enabled: sample in training (False: never sample).
    """

    def __init__(self, channels: int, enabled: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()  # no parameters: device and dtype are accepted for the block convention
        self.channels, self.enabled = channels, enabled

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) images and their (B, C_in) channel ids -> the kept (B, k, H, W) images and
        (B, k) ids. ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible."""
        c = x.shape[1]
        if c > self.channels:
            raise ValueError(f"the input has {c} channels but the sampler was built for {self.channels}; "
                             f"build it with channels={c}")
        if not (self.training and self.enabled) or c == 1:
            return x, channel_ids
        k = int(torch.randint(1, c + 1, (1,), generator=generator))  # how many channels, uniform in 1..C_in
        keep = torch.randperm(c, generator=generator)[:k].sort().values  # which: a uniform k-subset
        keep = keep.to(x.device)
        return x.index_select(1, keep), channel_ids.index_select(1, keep)  # (B, k, H, W), (B, k)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, enabled={self.enabled}"
