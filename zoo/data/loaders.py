"""The loaders every split-based data module shares: shuffled training batches, in-order evaluation."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(L.LightningDataModule):
    """A data module whose ``setup`` fills ``splits`` (``train``, ``val``, ``test``) with datasets.

    Training shuffles and drops a last partial batch (only when there is more than one batch, so a tiny
    split still trains); validation, test and predict read their split in order. A subclass that wraps
    its training split (augmentation) overrides :meth:`train_dataset`.
    """

    batch_size: int
    num_workers: int

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, Dataset] = {}

    def train_dataset(self) -> Dataset:
        return self.splits["train"]

    def _loader(self, data: Dataset, train: bool = False) -> DataLoader:
        return DataLoader(data, batch_size=self.batch_size, shuffle=train, drop_last=train and len(data) > self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"])

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"])
