"""Lightning checkpoints that are safe to read, whole when written, and current.

Lightning's ``TorchCheckpointIO`` writes them (through fsspec, so to a local folder or a remote such as
``s3://``), with a content hash added; a local file is written beside its target and renamed. Every
checkpoint the loop reads, wherever the path came from (``--ckpt_path`` local, ``last``, ``best``, a URL,
an fsspec remote; fit, validate, test or predict; SLURM's requeue), goes through
:class:`SafeCheckpointIO`, which reads tensors and plain containers only
(:func:`zoo.checkpoint.read_checkpoint`, ``weights_only=True`` whatever the environment says) and
checks the content hash written with the file. Lightning's own loader would unpickle URLs with
``weights_only=False``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint import DIGEST_KEY, CheckpointError, content_digest, read_checkpoint
from ..files import atomic_write, cache_dir
from ..hub import download_cached, offline
from .run_folder import RunCSVLogger

URL_PREFIXES = ("http://", "https://")


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's writes with a content hash; reads that never run pickled code.

    :meth:`preload` reads and checks a checkpoint before any work starts; Lightning's later load of
    the same path takes that copy instead of reading the file twice.
    """

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: dict[str, dict] = {}

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options: Any = None) -> None:
        checkpoint = {**checkpoint, DIGEST_KEY: content_digest(checkpoint)}
        lightning_save = super().save_checkpoint
        fs, local = url_to_fs(str(path))
        if not isinstance(fs, LocalFileSystem):
            lightning_save(checkpoint, path, storage_options)
            return
        # Lightning's local transaction writes in the system temp folder and then moves the file, which is a
        # copy over the old checkpoint, not a rename, where that folder is another file system (a tmpfs /tmp):
        # a kill there would leave a cut last.ckpt. Written beside the target and renamed instead.
        target = Path(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: lightning_save(checkpoint, tmp, storage_options))

    def preload(self, path: str) -> None:
        self._preloaded[path] = self._read(path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict:
        path = str(path)
        return self._preloaded.pop(path, None) or self._read(path)

    @staticmethod
    def _read(path: str) -> dict:
        checkpoint = read_checkpoint(local_copy(path))
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path} is not a Lightning checkpoint of train.py (it has no 'state_dict'); "
                                  f"to start from a model's weights use model.pretrained: {path}")
        return checkpoint


def local_copy(path: str) -> Path:
    """A local file for ``path``: itself, the zoo's cached download of a URL, or a fresh copy of an
    fsspec remote (``s3://``, ``gs://``, ``memory://``, ...)."""
    if path.startswith(URL_PREFIXES):
        try:
            return download_cached(path)
        except FileNotFoundError as exc:  # offline, or the download failed: say it about the checkpoint
            reason = "this machine is offline (ZOO_OFFLINE / HF_HUB_OFFLINE)" if offline() else str(exc).split(";")[0]
            raise CheckpointError(f"--ckpt_path {path} cannot be fetched: {reason}; download it elsewhere and "
                                  f"pass the local file") from None
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    if "://" in path:
        import fsspec

        # fetched on every read: a run rewrites its remote last.ckpt, so an earlier copy may be stale
        target = cache_dir() / "remote" / path.replace("://", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with fsspec.open(path, "rb") as src:
            atomic_write(target, lambda tmp: Path(tmp).write_bytes(src.read()))
        return target
    return Path(path)


def resolve_ckpt_path(value: str | None, output_dir: Path) -> str | None:
    """``--ckpt_path`` as a file to read: ``last`` / ``best`` name this run's files; anything that
    cannot be read is refused here, before any work, with the fix."""
    if value is None:
        return None
    if not str(value).strip():
        raise CheckpointError("--ckpt_path is empty; give 'last', 'best', a .ckpt file or a URL, or leave it out")
    if value in ("last", "best"):
        path = output_dir / "checkpoints" / f"{value}.ckpt"
        if not path.is_file():
            raise CheckpointError(f"--ckpt_path {value}: there is no {path} (no run has saved one in output_dir "
                                  f"{output_dir}); leave --ckpt_path out to start afresh, or set output_dir to the "
                                  f"run you mean")
        return str(path)
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        found = path / "checkpoints" / "last.ckpt" if (path / "checkpoints" / "last.ckpt").is_file() else path / "last.ckpt"
        hint = f" such as {found}" if found.is_file() else ""
        raise CheckpointError(f"--ckpt_path {value} is a folder; give the .ckpt file inside it{hint}")
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {value} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"--ckpt_path {value} is an empty file (a run killed while writing it?); "
                              f"use another checkpoint")
    return str(path)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the state at every checkpoint event (each validation or epoch end, every
    ``every_n_train_steps``) and at the end of fit, whatever the monitored metric did. (Lightning's
    ``save_last`` with ``save_top_k=1`` rewrites it only when the best checkpoint changes.)"""

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # a fit that stopped between events
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class MetricsRows(L.Callback):
    """``metrics.csv`` across a kill: flushed with every checkpoint, and when a fit resumes, the rows
    of steps at or after the checkpoint's step dropped (the resumed run logs those steps again; rows
    of earlier steps, the validation of the checkpoint's epoch included, stay)."""

    def __init__(self, logger: RunCSVLogger) -> None:
        self.logger = logger

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.logger.save()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        step = checkpoint.get("global_step")
        if trainer.state.fn == "fit" and isinstance(step, int) and trainer.is_global_zero:
            self.logger.drop_rows_from_step(step)
