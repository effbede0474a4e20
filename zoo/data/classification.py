"""Classification data: a folder of images (your data) and scikit-learn's bundled digits (offline)."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..extras import require
from ..pretrained import PretrainedCfg
from .loaders import SplitDataModule, stratified_split


class _ShiftAugment(Dataset):
    """Random translation by up to ``max_shift`` pixels (pad with the background, crop back)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_shift: int, background: float) -> None:
        self.images, self.labels, self.max_shift, self.background = images, labels, max_shift, background

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]  # (C, H, W)
        if self.max_shift:
            s = self.max_shift
            padded = F.pad(img, (s, s, s, s), value=self.background)
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            img = padded[:, dy:dy + img.shape[1], dx:dx + img.shape[2]]
        return img, self.labels[i]


def _sklearn_datasets() -> ModuleType:
    """scikit-learn's bundled data sets, or one sentence naming the extra that installs them."""
    return require("sklearn.datasets", "train", "the built-in digits (data: digits)")


def digit_images(img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits scaled to [0, 1] and resized (bilinear) to ``img_size``: (N, 1, S, S), (N,)."""
    digits = _sklearn_datasets().load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)
    return F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False), labels


class DigitsDataModule(SplitDataModule):
    """scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), shipped with the package.

    Images are scaled to [0, 1], resized to ``img_size`` (bilinear), repeated to ``channels`` and
    normalised: ``normalize="standard"`` subtracts the training mean and divides by its std (kept as
    ``mean``/``std`` after ``setup``); ``"symmetric"`` maps [0, 1] to [-1, 1], the range image
    tokenizers such as VAR's VQVAE expect. The split is fixed: a seeded, per-class shuffle puts ``val_fraction`` and
    ``test_fraction`` of every class in validation and test. ``limit`` keeps only the first images
    of each split (for smoke tests).
    """

    num_classes = 10

    def __init__(self, img_size: int = 32, channels: int = 1, batch_size: int = 64, num_workers: int = 0,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0,
                 max_shift: int = 2, limit: int | None = None, normalize: str = "standard") -> None:
        super().__init__()
        _sklearn_datasets()  # a missing extra is named before any work
        if not 0 < val_fraction + test_fraction < 1:
            raise ValueError(f"val_fraction + test_fraction must be in (0, 1); got {val_fraction + test_fraction}")
        if normalize not in ("standard", "symmetric"):
            raise ValueError(f"normalize must be 'standard' (training mean/std) or 'symmetric' ([-1, 1]); "
                             f"got {normalize!r}")
        self.save_hyperparameters()
        self.img_size, self.channels, self.batch_size, self.num_workers = img_size, channels, batch_size, num_workers
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.max_shift, self.limit, self.normalize = max_shift, limit, normalize
        self.indices: dict[str, torch.Tensor] = {}  # rows of sklearn's digits in each split

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, labels = digit_images(self.img_size)  # (N, 1, S, S) in [0, 1], (N,)
        self.indices = stratified_split(labels, self.val_fraction, self.test_fraction, self.split_seed)
        train = images[self.indices["train"]]
        mean, std = train.mean().item(), train.std().item()
        if self.normalize == "symmetric":
            mean, std = 0.5, 0.5  # [0, 1] -> [-1, 1]
        self.mean, self.std = mean, std
        images = ((images - mean) / std).repeat(1, self.channels, 1, 1)  # (N, C, S, S)
        self.background = (0.0 - mean) / std
        for name, idx in self.indices.items():
            idx = idx[: self.limit]
            self.splits[name] = TensorDataset(images[idx], labels[idx])

    def train_dataset(self) -> Dataset:
        images, labels = self.splits["train"].tensors
        return _ShiftAugment(images, labels, self.max_shift, self.background)


class ImageFolderDataModule(SplitDataModule):
    """Your images: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (and optionally ``test``).

    The transforms are timm's (``create_transform``) for the model's preprocessing: ``train.py`` hands
    the model's ``pretrained_cfg`` to :meth:`configure_for_model`, which resolves size, crop,
    interpolation, mean and std as timm's ``resolve_data_config`` does; what the config gives
    explicitly (``img_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``) wins. Training adds
    random-resized crops and flips, and optionally ``auto_augment`` (``"rand-m9-mstd0.5"``),
    ``re_prob`` (random erasing) and ``color_jitter``; evaluation resizes by ``crop_pct`` and
    centre-crops.
    """

    def __init__(self, root: str, img_size: int | None = None, batch_size: int = 32, num_workers: int = 4,
                 train_dir: str = "train", val_dir: str = "val", test_dir: str | None = None,
                 crop_pct: float | None = None, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, interpolation: str | None = None,
                 auto_augment: str | None = None, re_prob: float = 0.0, color_jitter: float = 0.0) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        for sub in filter(None, (train_dir, val_dir, test_dir)):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(f"data folder {self.root / sub} does not exist; ImageFolderDataModule expects "
                                        f"{self.root}/{sub}/<class name>/<images>")
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir or val_dir}
        self.given = {k: v for k, v in {"input_size": (3, img_size, img_size) if img_size else None,
                                        "crop_pct": crop_pct, "interpolation": interpolation,
                                        "mean": tuple(mean) if mean else None, "std": tuple(std) if std else None
                                        }.items() if v is not None}
        self.augment = {"auto_augment": auto_augment, "re_prob": re_prob, "color_jitter": color_jitter}
        self.data_config = self._resolve(None)

    def _resolve(self, pretrained_cfg: dict | None) -> dict:
        from timm.data import resolve_data_config

        # without a model yet: the zoo's default preprocessing (224, bicubic, 0.875, ImageNet statistics)
        return resolve_data_config(args=dict(self.given), pretrained_cfg=pretrained_cfg or PretrainedCfg().to_dict())

    def configure_for_model(self, pretrained_cfg: dict) -> None:
        """Take the model's preprocessing for everything the config left open."""
        self.data_config = self._resolve(pretrained_cfg)

    def transforms(self) -> dict:
        """timm's training and evaluation transforms for :attr:`data_config`."""
        from timm.data import create_transform

        return {"train": create_transform(**self.data_config, is_training=True, **self.augment),
                "eval": create_transform(**self.data_config, is_training=False)}

    @property
    def num_classes(self) -> int:
        return len([p for p in (self.root / self.dirs["train"]).iterdir() if p.is_dir()])

    def setup(self, stage: str | None = None) -> None:
        from torchvision import datasets

        tf = self.transforms()
        for split, folder in self.dirs.items():
            if split not in self.splits:
                self.splits[split] = datasets.ImageFolder(str(self.root / folder), tf["train" if split == "train" else "eval"])
