"""Training batches that a resume reproduces exactly, mid-epoch included.

An epoch's order and every sample's augmentation are pure functions of (seed, epoch, index): the
sampler draws the permutation and one seed per sample from a generator seeded with ``seed + epoch``,
and the dataset wrapper runs ``dataset[index]`` under that sample's seed. So batches do not depend on
the number of workers, on prefetching or on how many batches came before; a resumed run asks for
"epoch e from batch k" and gets the batches a straight run got.

The loader speaks Lightning's stateful-loader protocol (``state_dict`` / ``load_state_dict``): its
state is the epoch and the batches the training loop has finished, which Lightning stores in the
checkpoint and hands back before it creates the resumed iterator.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_SEED_RANGE = 2**62


def global_seed() -> int:
    """The run's seed as Lightning's ``seed_everything`` publishes it (0 when never seeded)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class SeededSamples(Dataset):
    """``dataset[index]`` run under a per-sample seed: items are ``(index, seed)`` pairs from
    :class:`ResumableSampler`. Only the CPU generator is touched, and restored afterwards, so a
    loader without workers leaves the training process's random stream as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """A shuffling sampler that yields ``(index, seed)`` and can start an epoch at a given batch.

    It is a :class:`DistributedSampler` (each rank takes every ``num_replicas``-th position of the
    shared permutation), so Lightning keeps it under DDP instead of replacing it. ``len()`` stays the
    full epoch: a resumed iterator is only shorter, as Lightning expects.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 seed: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if distributed else 1,
                         rank=dist.get_rank() if distributed else 0, shuffle=shuffle,
                         seed=global_seed() if seed is None else seed, drop_last=drop_last)
        self.batch_size = batch_size
        self.start_batch = 0  # batches of this epoch already trained; used by the next __iter__ only

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.dataset)
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)  # (N,)
        seeds = torch.randint(0, _SEED_RANGE, (n,), generator=gen)  # (N,) one per sample, not per position
        if self.drop_last:
            order = order[:self.total_size]
        else:  # pad by wrapping around so every rank gets the same count, as DistributedSampler does
            order = torch.cat([order, order.repeat(self.total_size // max(n, 1) + 1)])[:self.total_size]
        mine = order[self.rank:self.total_size:self.num_replicas]  # (num_samples,)
        skip, self.start_batch = self.start_batch * self.batch_size, 0
        for index in mine[skip:].tolist():
            yield index, int(seeds[index])


class ResumableLoader(DataLoader):
    """A training :class:`DataLoader` over a :class:`ResumableSampler` whose state is the training
    loop's position. ``progress`` returns ``(batches finished in this epoch, epoch finished?)``; the
    data module wires it to the trainer."""

    def __init__(self, dataset: Dataset, batch_size: int, drop_last: bool = False, num_workers: int = 0,
                 progress: Callable[[], tuple[int, bool]] | None = None, seed: int | None = None, **kwargs) -> None:
        seeded = dataset if isinstance(dataset, SeededSamples) else SeededSamples(dataset)
        sampler = kwargs.pop("sampler", None) or ResumableSampler(seeded.dataset, batch_size, drop_last=drop_last, seed=seed)
        # a private generator: creating an iterator draws its worker base seed from it, not from the
        # global stream that dropout and the model's own sampling use
        generator = kwargs.pop("generator", None) or torch.Generator().manual_seed(sampler.seed)
        super().__init__(seeded, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers,
                         persistent_workers=num_workers > 0, generator=generator, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        done, epoch_finished = self.progress() if self.progress is not None else (0, False)
        return {"epoch": self.sampler.epoch, "batches": done, "epoch_finished": epoch_finished}

    def load_state_dict(self, state: dict) -> None:
        if state.get("epoch_finished"):
            self.sampler.set_epoch(state["epoch"] + 1)
            self.sampler.start_batch = 0
        else:
            self.sampler.set_epoch(state["epoch"])
            self.sampler.start_batch = state["batches"]


def trainer_progress(trainer) -> Callable[[], tuple[int, bool]]:
    """The fit loop's position: batches finished in the current epoch, and whether it has ended."""
    def progress() -> tuple[int, bool]:
        batches = trainer.fit_loop.epoch_loop.batch_progress
        return batches.current.processed, bool(batches.is_last_batch)
    return progress


def training_loader(datamodule, dataset: Dataset, batch_size: int, drop_last: bool, num_workers: int) -> DataLoader:
    """The resumable training loader every data module returns (``datamodule.trainer`` may be None
    outside a fit: then the loader simply starts each epoch at its beginning)."""
    trainer = getattr(datamodule, "trainer", None)
    return ResumableLoader(dataset, batch_size, drop_last=drop_last, num_workers=num_workers,
                           progress=trainer_progress(trainer) if trainer is not None else None)


def evaluation_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """An in-order loader whose iterators never draw from the global random stream."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(global_seed()))
