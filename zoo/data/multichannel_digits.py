"""Multi-channel digits: scikit-learn's bundled handwritten digits seen through several channels.

Each channel is a different *view* of the same digit with its own independent noise, so any subset
of channels still carries the class and more channels carry more of it: the offline stand-in for
multi-stain microscopy or multi-band satellite data (ChannelViT, Bao et al., ICLR 2024).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .classification import digit_images
from .multichannel import (
    MultiChannelDataModule,
    MultiChannelDataset,
    channel_ids,
    stratified_split,
)


def _sobel(img: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of (N, 1, S, S) images."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    padded = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, kx[None, None]), F.conv2d(padded, kx.T[None, None])
    return torch.sqrt(gx * gx + gy * gy)


def _blur(img: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with sigma = S / 16 pixels (2 at 32x32), separable."""
    sigma = img.shape[-1] / 16
    r = math.ceil(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    img = F.conv2d(F.pad(img, (r, r, 0, 0)), k[None, None, None, :])  # along W
    return F.conv2d(F.pad(img, (0, 0, r, r)), k[None, None, :, None])  # along H


def _shift(img: torch.Tensor) -> torch.Tensor:
    """Translated by S / 8 pixels right and down (4 at 32x32), zeros shifted in."""
    s = img.shape[-1] // 8
    return F.pad(img, (s, 0, s, 0))[..., : img.shape[-2], : img.shape[-1]]


def _threshold(img: torch.Tensor) -> torch.Tensor:
    """Inverted binary mask: 1 on the background, 0 on the strokes (ink above half)."""
    return (img < 0.5).float()


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "image": lambda img: img, "edges": _sobel, "blur": _blur, "shift": _shift, "threshold": _threshold}


def digit_views(images: torch.Tensor, views: list[str], noise: float, seed: int) -> torch.Tensor:
    """(N, 1, S, S) images in [0, 1] -> (N, V, S, S): each view scaled to [0, 1], plus its own noise.

    The noise is smooth (white noise blurred to the strokes' scale, sigma = S / 16, then scaled to std
    ``noise``), so it cannot be averaged away within a channel, only across channels: one channel is
    a noisy witness, several agree. Seeded, so the result is deterministic."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; choose from {', '.join(VIEWS)}")
    out = torch.cat([VIEWS[v](images) for v in views], dim=1)  # (N, V, S, S)
    out = out / out.amax(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    if noise:
        n, v, h, w = out.shape
        white = torch.randn((n * v, 1, h, w), generator=torch.Generator().manual_seed(seed))
        smooth = _blur(white).reshape(n, v, h, w)  # one independent field per image and channel
        out = out + noise * smooth / smooth.std()
    return out


class _TensorSource:
    """``i -> (array, label)`` over in-memory tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels.tolist()

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i].numpy(), self.labels[i]


class _RandomShift:
    """Random translation by up to ``max_shift`` pixels, zero (the normalised mean) shifted in."""

    def __init__(self, max_shift: int) -> None:
        self.max_shift = max_shift

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.max_shift
        if not s:
            return x
        dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
        return F.pad(x, (s, s, s, s))[:, dy:dy + x.shape[1], dx:dx + x.shape[2]]  # (C, S, S)


class MultiChannelDigitsDataModule(MultiChannelDataModule):
    """scikit-learn's digits (1,797 8x8 scans, 10 classes) as ``len(views)``-channel images.

    Each digit is resized to ``img_size`` (bilinear) and seen through ``views`` (default all of
    :data:`VIEWS`: the image, Sobel edges, a blur, a shifted copy, the inverted threshold mask); every
    channel gets its own smooth noise (std ``noise`` on [0, 1] views, seeded by ``seed``) and is normalised
    with training statistics. ``channels`` keeps a subset (ids into ``views``; batches then carry the
    ids). The split is :class:`DigitsDataModule`'s (same ``split_seed``, same images). Training shifts
    by up to ``max_shift`` pixels. ``limit`` keeps the first images of each split (smoke tests).
    """

    num_classes = 10

    def __init__(self, img_size: int = 32, views: list[str] | None = None, channels: list[int] | None = None,
                 noise: float = 0.3, seed: int = 0, batch_size: int = 64, num_workers: int = 0,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0,
                 max_shift: int = 2, limit: int | None = None) -> None:
        super().__init__(batch_size, num_workers, channels)
        self.save_hyperparameters()
        self.views = list(views) if views is not None else list(VIEWS)
        digit_views(torch.zeros(1, 1, 8, 8), self.views, 0.0, 0)  # unknown views fail here
        self.total_chans = len(self.views)
        channel_ids(channels, self.total_chans)  # so does a bad subset
        self.img_size, self.noise, self.seed, self.max_shift, self.limit = img_size, noise, seed, max_shift, limit
        self.fractions, self.split_seed = (val_fraction, test_fraction), split_seed
        self.indices: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = digit_images(self.img_size)  # (N, 1, S, S) in [0, 1], (N,)
        images = digit_views(images, self.views, self.noise, self.seed)  # (N, V, S, S)
        self.indices = stratified_split(labels, *self.fractions, self.split_seed)
        train = images[self.indices["train"]]
        mean, std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3))  # (V,) each
        images = (images - mean[:, None, None]) / std[:, None, None]
        self.stats = (mean, std)
        ids = self.channel_ids
        for split, idx in self.indices.items():
            idx = idx[: self.limit]
            transform = _RandomShift(self.max_shift) if split == "train" else (lambda x: x)
            self.splits[split] = MultiChannelDataset(_TensorSource(images[idx], labels[idx]), len(idx), ids, transform,
                                                     self.channels is not None)
