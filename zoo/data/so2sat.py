"""So2Sat LCZ42 (Zhu et al., 2020): 32x32 Sentinel-1 + Sentinel-2 patches, 17 local climate zones.

The release's HDF5 files hold ``sen1`` (N, 32, 32, 8), ``sen2`` (N, 32, 32, 10) and ``label`` one-hot
(N, 17). A sample is the 18 channels stacked channels-first: ids 0-7 are Sentinel-1's, 8-17 are
Sentinel-2's bands. Reading needs ``h5py`` (imported only here, when a file is opened); the array
handling (:func:`check_so2sat`, :func:`so2sat_sample`) works on any mapping of arrays, so it is
testable without it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .multichannel import (
    ChannelTransform,
    MultiChannelDataModule,
    MultiChannelDataset,
    channel_stats,
    check_crop_pct,
    pick_stats,
)

SEN1_CHANS, SEN2_CHANS, SO2SAT_CLASSES = 8, 10, 17


def open_h5(path: Path) -> Mapping[str, Any]:
    """An HDF5 file, read-only; a clear error when h5py is missing."""
    try:
        import h5py
    except ImportError:
        raise ImportError(f"reading {path} needs h5py, which is not installed: pip install h5py") from None
    return h5py.File(path, "r")


def check_so2sat(arrays: Mapping[str, Any], where: str) -> int:
    """Check the So2Sat layout (keys, shapes, matching lengths) of an opened file; returns N."""
    missing = [k for k in ("sen1", "sen2", "label") if k not in arrays]
    if missing:
        raise KeyError(f"{where} lacks {missing}; a So2Sat file holds sen1, sen2 and label (found {list(arrays.keys())})")
    s1, s2, lab = (tuple(arrays[k].shape) for k in ("sen1", "sen2", "label"))
    if len(s1) != 4 or s1[-1] != SEN1_CHANS or len(s2) != 4 or s2[-1] != SEN2_CHANS or s1[1:3] != s2[1:3]:
        raise ValueError(f"{where}: sen1 {s1} / sen2 {s2} are not (N, H, W, {SEN1_CHANS}) / (N, H, W, {SEN2_CHANS})")
    if lab != (s1[0], SO2SAT_CLASSES) or s2[0] != s1[0]:
        raise ValueError(f"{where}: label {lab} must be one-hot (N, {SO2SAT_CLASSES}) with N = {s1[0]} like sen1 "
                         f"(sen2 has {s2[0]})")
    return s1[0]


def so2sat_sample(sen1: np.ndarray, sen2: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, int]:
    """One patch: sen1 (H, W, 8) + sen2 (H, W, 10) + one-hot label -> ((18, H, W) float32, class index).
    Works on a batch too: (N, H, W, 8) + (N, H, W, 10) -> (N, 18, H, W) and (N,) labels."""
    stacked = np.concatenate([sen1, sen2], axis=-1).astype(np.float32)  # (..., H, W, 18)
    return np.moveaxis(stacked, -1, -3), np.argmax(label, axis=-1)  # (..., 18, H, W)


class _H5Source:
    """``i -> (array, label)`` from one So2Sat file, opened lazily once per process (workers included)."""

    def __init__(self, path: Path) -> None:
        self.path, self.file = path, None

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        if self.file is None:
            self.file = open_h5(self.path)
        f = self.file
        array, label = so2sat_sample(f["sen1"][i], f["sen2"][i], f["label"][i])
        return array, int(label)

    def __getstate__(self) -> dict:
        return {"path": self.path, "file": None}  # an open HDF5 handle does not cross processes


class So2SatDataModule(MultiChannelDataModule):
    """So2Sat LCZ42 from ``root/{train_file, val_file, test_file}`` (``test_file: null``: test on val).

    18 channels (ids 0-7 Sentinel-1, 8-17 Sentinel-2); ``channels`` keeps a subset. Normalised per
    channel with ``mean``/``std`` or statistics of ``stats_samples`` evenly spaced training patches;
    training adds random crops (after resizing to ``img_size / crop_pct``) and flips.
    """

    num_classes = SO2SAT_CLASSES
    total_chans = SEN1_CHANS + SEN2_CHANS

    def __init__(self, root: str, train_file: str = "training.h5", val_file: str = "validation.h5",
                 test_file: str | None = "testing.h5", img_size: int = 32, batch_size: int = 128,
                 num_workers: int = 4, channels: list[int] | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, stats_samples: int = 8192, crop_pct: float = 1.0) -> None:
        super().__init__(batch_size, num_workers, channels)
        self.save_hyperparameters()
        root_path = Path(root).expanduser()
        self.paths = {"train": root_path / train_file, "val": root_path / val_file,
                      "test": root_path / (test_file or val_file)}
        for split, path in self.paths.items():
            if not path.is_file():
                hint = "; set test_file: null to test on the validation file" if split == "test" else ""
                raise FileNotFoundError(f"So2Sat {split} file {path} does not exist{hint}")
        ids = self.channel_ids
        self.given = [None if v is None else pick_stats(v, ids, self.total_chans, n) for v, n in ((mean, "mean"), (std, "std"))]
        check_crop_pct(crop_pct)
        self.img_size, self.stats_samples, self.crop_pct = img_size, stats_samples, crop_pct

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        ids, sizes = self.channel_ids, {}
        for split, path in self.paths.items():
            with open_h5(path) as f:
                sizes[split] = check_so2sat(f, str(path))
                if split == "train" and None in self.given:
                    rows = np.unique(np.linspace(0, sizes[split] - 1, min(self.stats_samples, sizes[split])).astype(int))
                    stacked, _ = so2sat_sample(f["sen1"][rows], f["sen2"][rows], f["label"][rows])  # (n, 18, H, W)
                    measured = channel_stats(stacked)
        mean, std = (m[ids] if g is None else g for m, g in zip(measured, self.given)) if None in self.given else self.given
        self.stats = (mean, std)
        for split, path in self.paths.items():
            tf = ChannelTransform(self.img_size, mean, std, split == "train", self.crop_pct, vflip=True)
            self.splits[split] = MultiChannelDataset(_H5Source(path), sizes[split], ids, tf, self.channels is not None)
