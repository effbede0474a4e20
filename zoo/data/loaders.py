"""What the split-based data modules share: a seeded stratified split, shuffled training batches and
in-order evaluation loaders."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .sampling import evaluation_loader, training_loader

SPLITS = ("train", "val", "test")


def stratified_split(labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """A seeded per-class shuffle: ``val_fraction`` / ``test_fraction`` of every class to val / test (sorted rows)."""
    if not 0 < val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction must be in (0, 1); got {val_fraction + test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in SPLITS}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val, n_test = round(val_fraction * len(idx)), round(test_fraction * len(idx))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {s: torch.sort(torch.cat(p)).values for s, p in parts.items()}


class SplitDataModule(L.LightningDataModule):
    """A data module whose ``setup`` fills ``splits`` (``train``, ``val``, ``test``) with datasets.

    Training shuffles and drops a last partial batch (only when there is more than one batch, so a tiny
    split still trains), resumably (:mod:`zoo.data.sampling`); validation, test and predict read their
    split in order. A subclass that wraps
    its training split (augmentation) overrides :meth:`train_dataset`.
    """

    batch_size: int
    num_workers: int

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, Dataset] = {}

    def train_dataset(self) -> Dataset:
        return self.splits["train"]

    def _loader(self, data: Dataset) -> DataLoader:
        return evaluation_loader(data, self.batch_size, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        data = self.train_dataset()
        return training_loader(self, data, self.batch_size, drop_last=len(data) > self.batch_size,
                               num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"])

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"])
