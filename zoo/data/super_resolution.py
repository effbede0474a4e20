"""Super-resolution data: HR images, LR made on the fly with MATLAB-compatible bicubic (the
benchmarks' degradation), random crops, flips and rotations.

``SRFolderDataModule`` reads your HR folders (DIV2K-style); ``SRSampleDataModule`` uses the photographs
that ship inside scikit-image, so it runs offline anywhere.
"""
from __future__ import annotations

from types import ModuleType
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..extras import require
from .images import list_images, read_image, to_rgb_tensor
from .imresize import imresize
from .sampling import evaluation_loader, training_loader

SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle",
                 "hubble_deep_field", "colorwheel", "retina", "cat")


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """HR (..., 3, H, W) in [0, 1] -> LR as the benchmarks make it: the 8-bit image through MATLAB's
    bicubic ``imresize`` (uint8 arithmetic, so it matches MATLAB pixel for pixel), back in [0, 1]."""
    hr8 = (hr * 255.0).round().clamp(0, 255).to(torch.uint8)
    return imresize(hr8, scale=1.0 / scale).float() / 255.0


def mod_crop(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop H and W down to multiples of ``scale`` (the SR benchmarks' convention)."""
    h, w = hr.shape[-2] - hr.shape[-2] % scale, hr.shape[-1] - hr.shape[-1] % scale
    return hr[..., :h, :w]


def _skimage_data() -> ModuleType:
    """scikit-image's bundled photographs, or one sentence naming the extra that installs them."""
    return require("skimage.data", "train", "the built-in photographs (data: sr_samples)")


def sample_image(name: str) -> torch.Tensor:
    """One of scikit-image's bundled photographs as (3, H, W) in [0, 1]."""
    skimage_data = _skimage_data()
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; choose from {', '.join(SAMPLE_IMAGES)}")
    array = getattr(skimage_data, name)()
    return to_rgb_tensor(array[0] if isinstance(array, tuple) else array, name)


class SRDataset(Dataset):
    """(LR, HR) pairs. With ``patch_size`` (LR pixels): random HR crops of ``patch_size * scale``,
    random flips and 90-degree rotations, ``repeat`` crops per image per epoch. Without: whole
    images (mod-cropped), LR computed once."""

    def __init__(self, images: Sequence[torch.Tensor], names: Sequence[str], scale: int,
                 patch_size: int | None = None, repeat: int = 1, augment: bool = True) -> None:
        self.scale, self.patch_size, self.repeat, self.augment = scale, patch_size, repeat, augment
        self.names = list(names)
        self.images = [mod_crop(img, scale) for img in images]
        for img, name in zip(self.images, self.names):
            need = (patch_size or 1) * scale
            if min(img.shape[-2:]) < need:
                raise ValueError(f"image {name} is {tuple(img.shape[-2:])} pixels; x{scale} with patch_size={patch_size} "
                                 f"needs at least {need}x{need}. Use a smaller patch_size or larger images.")
        self._lr_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = index % len(self.images)
        hr = self.images[i]
        if self.patch_size is None:
            if i not in self._lr_cache:
                self._lr_cache[i] = degrade(hr, self.scale)
            return self._lr_cache[i], hr
        size = self.patch_size * self.scale
        top = int(torch.randint(0, (hr.shape[-2] - size) // self.scale + 1, ())) * self.scale
        left = int(torch.randint(0, (hr.shape[-1] - size) // self.scale + 1, ())) * self.scale
        hr = hr[:, top:top + size, left:left + size]  # (3, P*s, P*s), aligned to the LR grid
        if self.augment:
            if torch.rand(()) < 0.5:
                hr = hr.flip(-1)
            if torch.rand(()) < 0.5:
                hr = hr.flip(-2)
            hr = torch.rot90(hr, int(torch.randint(0, 4, ())), dims=(-2, -1))
        hr = hr.contiguous()
        return degrade(hr, self.scale), hr


def _center_crop(img: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return img
    h, w = img.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return img[..., top:top + size, left:left + size]


class _SRDataModule(L.LightningDataModule):
    """Shared loaders: training crops in batches, validation and test images one at a time."""

    def __init__(self, scale: int, patch_size: int, batch_size: int, repeat: int, num_workers: int,
                 val_crop: int | None) -> None:
        super().__init__()
        if scale not in (2, 3, 4, 8):
            raise ValueError(f"scale must be 2, 3, 4 or 8; got {scale}")
        self.scale, self.patch_size, self.batch_size = scale, patch_size, batch_size
        self.repeat, self.num_workers, self.val_crop = repeat, num_workers, val_crop
        self.splits: dict[str, SRDataset] = {}

    def _load(self, split: str) -> tuple[list[torch.Tensor], list[str]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, train_names = self._load("train")
        val, val_names = self._load("val")
        test, test_names = self._load("test")
        self.splits = {
            "train": SRDataset(train, train_names, self.scale, self.patch_size, self.repeat),
            "val": SRDataset([_center_crop(v, self.val_crop) for v in val], val_names, self.scale),
            "test": SRDataset(test, test_names, self.scale),
        }

    def train_dataloader(self) -> DataLoader:
        return training_loader(self, self.splits["train"], self.batch_size, drop_last=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return evaluation_loader(self.splits["val"], 1, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return evaluation_loader(self.splits["test"], 1, self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class SRSampleDataModule(_SRDataModule):
    """Offline default: train on some of scikit-image's bundled photographs, validate and test on
    others (held out). Validation uses centre crops of ``val_crop`` HR pixels to stay quick;
    the test runs on the whole held-out images."""

    def __init__(self, scale: int = 2, patch_size: int = 32, batch_size: int = 16, repeat: int = 64,
                 num_workers: int = 0, val_crop: int | None = 192,
                 train_images: Sequence[str] = ("astronaut", "coffee", "chelsea", "rocket"),
                 val_images: Sequence[str] = ("stereo_motorcycle", "hubble_deep_field"),
                 test_images: Sequence[str] | None = None) -> None:
        super().__init__(scale, patch_size, batch_size, repeat, num_workers, val_crop)
        _skimage_data()  # a missing extra is named before any work
        overlap = set(train_images) & set(val_images)
        if overlap:
            raise ValueError(f"images {sorted(overlap)} are in both train_images and val_images; keep them held out")
        for name in (*train_images, *val_images, *(test_images or ())):
            if name not in SAMPLE_IMAGES:
                raise ValueError(f"unknown sample image {name!r}; choose from {', '.join(SAMPLE_IMAGES)}")
        self.names = {"train": list(train_images), "val": list(val_images), "test": list(test_images or val_images)}
        self.save_hyperparameters()

    def _load(self, split: str) -> tuple[list[torch.Tensor], list[str]]:
        return [sample_image(n) for n in self.names[split]], self.names[split]


class SRFolderDataModule(_SRDataModule):
    """Your data: folders of HR images (e.g. DIV2K ``DIV2K_train_HR`` and ``DIV2K_valid_HR``); LR is
    made on the fly with MATLAB bicubic, as the benchmarks do."""

    def __init__(self, train_dir: str, val_dir: str, test_dir: str | None = None, scale: int = 2,
                 patch_size: int = 48, batch_size: int = 16, repeat: int = 20, num_workers: int = 4,
                 val_crop: int | None = None) -> None:
        super().__init__(scale, patch_size, batch_size, repeat, num_workers, val_crop)
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir or val_dir}
        for split, folder in self.dirs.items():
            list_images(folder)  # a missing or empty folder fails here, before any work
        self.save_hyperparameters()

    def _load(self, split: str) -> tuple[list[torch.Tensor], list[str]]:
        files = list_images(self.dirs[split])
        return [read_image(f) for f in files], [f.name for f in files]
