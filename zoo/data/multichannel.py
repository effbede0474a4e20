"""Multi-channel image data (microscopy stains, satellite bands) for channel-adaptive models (ChannelViT).

Samples are ``(C, H, W)`` stacks whose channels mean different things. A data module keeps all of
them or the subset ``channels`` names (ids into the channels the source holds). Batches are
``(x, y)``; with a subset they are ``(x, y, channel_ids)`` (``channel_ids`` (B, C_kept) long, the
original ids of x's channels), which the classification task passes to the model as
``model(x, channel_ids=...)``. Every data module has ``num_classes``, ``in_chans`` (channels in x),
``total_chans`` (channels in the source: ChannelViT's ``in_chans``) and ``channel_ids``.

- :class:`MultiChannelFolderDataModule` (``multichannel_folder``): ``.npy`` / ``.npz`` files and a CSV.
- :class:`So2SatDataModule` (``so2sat``): So2Sat LCZ42's HDF5 files (needs ``h5py``).
- ``multichannel_digits`` (offline, in :mod:`zoo.data.multichannel_digits`).
"""
from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .loaders import SPLITS, SplitDataModule, stratified_split


def channel_ids(channels: Sequence[int] | None, total: int) -> torch.Tensor:
    """The kept channel ids as a LongTensor, checked against the ``total`` channels of the source."""
    if channels is None:
        return torch.arange(total)
    ids = [int(c) for c in channels]
    bad = [c for c in ids if not 0 <= c < total]
    if not ids or bad or len(set(ids)) != len(ids):
        raise ValueError(f"channels={list(channels)}: give distinct ids in 0..{total - 1} (the source has {total} "
                         f"channels)" + (f"; {bad} out of range" if bad else ""))
    return torch.tensor(ids, dtype=torch.long)


def channel_stats(samples: Sequence[np.ndarray] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over ``(C, H, W)`` samples (sizes may differ) or one ``(N, C, H, W)``
    array, summed in float64."""
    if isinstance(samples, np.ndarray) and samples.ndim == 4:
        samples = [samples.swapaxes(0, 1).reshape(samples.shape[1], -1)]  # (C, N*H*W): one "sample"
    total = sq = count = 0.0
    for a in samples:
        a = torch.as_tensor(np.asarray(a), dtype=torch.float64).flatten(1)  # (C, H*W)
        total, sq, count = total + a.sum(1), sq + (a * a).sum(1), count + a.shape[1]
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)


def pick_stats(values: Sequence[float], ids: torch.Tensor, total: int, name: str) -> torch.Tensor:
    """Given per-channel ``mean``/``std``: one per source channel (indexed by ``ids``) or one per kept channel."""
    t = torch.tensor([float(v) for v in values])
    if len(t) == total:
        return t[ids]
    if len(t) == len(ids):
        return t
    raise ValueError(f"{name} has {len(t)} values; give one per source channel ({total}) or per kept channel ({len(ids)})")


def check_crop_pct(crop_pct: float) -> None:
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1] (the crop's share of the resized image); got {crop_pct}")


class ChannelTransform:
    """``(C, H, W)`` -> ``(C, S, S)``: resize the short side to ``S / crop_pct``, crop ``S`` (random in
    training, centre otherwise), random horizontal (and ``vflip``: vertical) flips in training, then
    ``(x - mean) / std`` per channel."""

    def __init__(self, img_size: int, mean: torch.Tensor, std: torch.Tensor, train: bool,
                 crop_pct: float = 1.0, vflip: bool = True) -> None:
        check_crop_pct(crop_pct)
        self.img_size, self.train, self.vflip = img_size, train, vflip
        self.resize_to = round(img_size / crop_pct)
        self.mean, self.std = mean[:, None, None], std[:, None, None]  # (C, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) != self.resize_to:
            scale = self.resize_to / min(h, w)
            size = (max(self.resize_to, round(h * scale)), max(self.resize_to, round(w * scale)))
            x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            h, w = size
        s = self.img_size
        if self.train:
            top, left = int(torch.randint(0, h - s + 1, ())), int(torch.randint(0, w - s + 1, ()))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        x = x[:, top:top + s, left:left + s]
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.train and self.vflip and torch.rand(()) < 0.5:
            x = x.flip(-2)
        return (x - self.mean) / self.std


class MultiChannelDataset(Dataset):
    """Samples ``load(i) -> ((C_total, H, W) array, label)``, cut to the kept ``ids`` and transformed.
    Items are ``(x, y)``, or ``(x, y, ids)`` with ``with_ids``."""

    def __init__(self, load: Callable[[int], tuple[np.ndarray, int]], length: int, ids: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor], with_ids: bool) -> None:
        self.load, self.length, self.ids, self.transform, self.with_ids = load, length, ids, transform, with_ids

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        array, label = self.load(i)
        x = self.transform(torch.as_tensor(np.asarray(array, dtype=np.float32))[self.ids])  # (C_kept, S, S)
        y = torch.tensor(label, dtype=torch.long)
        return (x, y, self.ids) if self.with_ids else (x, y)


class MultiChannelDataModule(SplitDataModule):
    """Loaders and channel bookkeeping shared by the multi-channel data modules; a subclass fills ``splits``."""

    num_classes: int
    total_chans: int

    def __init__(self, batch_size: int, num_workers: int, channels: Sequence[int] | None) -> None:
        super().__init__()
        self.batch_size, self.num_workers, self.channels = batch_size, num_workers, channels

    @property
    def channel_ids(self) -> torch.Tensor:
        """Original ids of the channels in x (all of them when ``channels`` is None)."""
        return channel_ids(self.channels, self.total_chans)

    @property
    def in_chans(self) -> int:
        return len(self.channel_ids)


# ----------------------------------------------------------------------------------------------- folders

def _npy_shape(f: Any) -> tuple[int, ...]:
    """Shape from a ``.npy`` header without reading the data."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(read(f)[0])


def array_shape(path: Path, key: str | None = None) -> tuple[int, ...]:
    """Shape of the array in a ``.npy`` file, or of ``key`` (default: the first) in a ``.npz``."""
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            return _npy_shape(f)
    with zipfile.ZipFile(path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        if not names or (key is not None and key not in names):
            raise KeyError(f"{path} holds arrays {names}, not {key!r}; set npz_key to one of them")
        with z.open(f"{key or names[0]}.npy") as f:
            return _npy_shape(f)


def load_array(path: Path, key: str | None = None) -> np.ndarray:
    """The array of a ``.npy`` file, or ``key`` (default: the first) of a ``.npz``."""
    if path.suffix == ".npy":
        return np.load(path)
    with np.load(path) as f:
        return f[key or f.files[0]]


def read_labels_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a labels CSV with columns ``file``, ``label`` and optionally ``split``."""
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV {path} does not exist; write one with columns file,label[,split] "
                                f"(file relative to the data folder) or set labels_csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("file", "label") if c not in fields]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; found {fields}. Its header must be file,label[,split]")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    blank = [i + 2 for i, r in enumerate(rows) if not r.get("file") or not r.get("label")]
    if blank:
        raise ValueError(f"{path}: line(s) {blank[:5]} lack a file or a label; every row needs both")
    return rows


def encode_labels(labels: Sequence[str]) -> tuple[list[int], list[str] | None]:
    """Integer labels as they are; otherwise class names -> indices of the sorted names (returned too)."""
    if all(s.isdigit() for s in labels):
        return [int(s) for s in labels], None
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    return [index[s] for s in labels], classes


class MultiChannelFolderDataModule(MultiChannelDataModule):
    """Your stacks: ``root/<file>`` arrays of shape ``(C, H, W)`` (``.npy``, or ``.npz`` holding the
    array under ``npz_key``, default its first) listed in ``root/labels.csv``::

        file,label,split
        plate1/a01.npy,3,train           # label: an integer class, or a class name (sorted -> index)
        plate1/a02.npz,3,val             # split: train, val or test

    The ``split`` column decides the split. Without it, a seeded per-class shuffle puts ``val_fraction``
    and ``test_fraction`` of each class in val and test. Without test rows, test uses val.
    Training: short side resized to ``img_size / crop_pct``, random ``img_size`` crops, random flips
    (vertical too unless ``vflip`` is False); evaluation: the same resize and a centre crop. Channels
    are normalised with ``mean``/``std`` (one per source channel or per kept channel) or, when not
    given, with statistics of up to ``stats_samples`` training files. ``channels`` keeps a subset.
    Every listed file is checked (exists, rank 3, same channel count) before any work.
    """

    def __init__(self, root: str, labels_csv: str = "labels.csv", img_size: int = 224, batch_size: int = 32,
                 num_workers: int = 4, channels: list[int] | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, stats_samples: int = 1024, crop_pct: float = 1.0,
                 vflip: bool = True, npz_key: str | None = None, num_classes: int | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, channels)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder {self.root} does not exist; point root at the folder of .npy/.npz files")
        check_crop_pct(crop_pct)
        self.img_size, self.stats_samples = img_size, stats_samples
        self.crop_pct, self.vflip, self.npz_key, self.split_seed = crop_pct, vflip, npz_key, split_seed
        rows = read_labels_csv(self.root / labels_csv)
        self.files = [self.root / r["file"] for r in rows]
        labels, self.classes = encode_labels([r["label"] for r in rows])
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.num_classes = int(num_classes or (len(self.classes) if self.classes else int(self.labels.max()) + 1))
        if int(self.labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(self.labels.max())} >= num_classes={self.num_classes}; raise num_classes")
        self.total_chans = self._check_files()
        ids = self.channel_ids  # a bad channel subset fails here, as do stats of the wrong length
        self.given_stats = tuple(None if v is None else pick_stats(v, ids, self.total_chans, n)
                                 for v, n in ((mean, "mean"), (std, "std")))
        if "split" in rows[0]:
            names = [r["split"] for r in rows]
            bad = sorted(set(names) - set(SPLITS))
            if bad:
                raise ValueError(f"{labels_csv}: split values {bad} are not among {SPLITS}")
            self.indices = {s: torch.tensor([i for i, n in enumerate(names) if n == s], dtype=torch.long) for s in SPLITS}
        else:
            self.indices = stratified_split(self.labels, val_fraction, test_fraction, split_seed)
        if not len(self.indices["train"]) or not len(self.indices["val"]):
            raise ValueError(f"{labels_csv} gives {len(self.indices['train'])} train and {len(self.indices['val'])} "
                             f"val rows; both splits need at least one")
        if not len(self.indices["test"]):
            self.indices["test"] = self.indices["val"]

    def _check_files(self) -> int:
        """Every listed file exists and holds a ``(C, H, W)`` array with the same C; returns C."""
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} file(s) listed in the labels CSV do not exist, e.g. "
                                    f"{missing[:3]}; file paths are relative to {self.root}")
        unknown = sorted({f.suffix for f in self.files} - {".npy", ".npz"})
        if unknown:
            raise ValueError(f"unsupported file type(s) {unknown}; save each sample as a (C, H, W) .npy or .npz")
        counts: dict[int, Path] = {}
        for f in self.files:
            shape = array_shape(f, self.npz_key)
            if len(shape) != 3:
                raise ValueError(f"{f} holds an array of shape {shape}; each file must be one (C, H, W) sample "
                                 f"(channels first: use np.moveaxis(a, -1, 0) for (H, W, C))")
            counts.setdefault(shape[0], f)
        if len(counts) > 1:
            raise ValueError(f"files disagree on the channel count: {', '.join(f'{c} in {p}' for c, p in counts.items())}; "
                             f"every sample needs the same channels (use channels: to pick common ones after fixing)")
        return next(iter(counts))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        ids = self.channel_ids
        mean, std = self.given_stats
        if mean is None or std is None:
            train = self.indices["train"]
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))[:self.stats_samples]
            measured = channel_stats([load_array(self.files[i], self.npz_key) for i in train[pick].tolist()])
            mean, std = (m[ids] if g is None else g for m, g in zip(measured, (mean, std)))
        self.stats = (mean, std)  # (C_kept,) each
        for split, rows in self.indices.items():
            tf = ChannelTransform(self.img_size, mean, std, split == "train", self.crop_pct, self.vflip)
            source = _FileSource([self.files[i] for i in rows.tolist()], self.labels[rows].tolist(), self.npz_key)
            self.splits[split] = MultiChannelDataset(source, len(rows), ids, tf, self.channels is not None)


class _FileSource:
    """``i -> (array, label)`` over listed files; a class, not a lambda, so spawned workers can pickle it."""

    def __init__(self, files: list[Path], labels: list[int], key: str | None) -> None:
        self.files, self.labels, self.key = files, labels, key

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        return load_array(self.files[i], self.key), self.labels[i]
