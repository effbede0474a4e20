"""The training progress bar: the whole run's steps, not one epoch's batches."""
from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class RunProgressBar(TQDMProgressBar):
    """One training bar for the run: optimizer steps done of ``trainer.estimated_stepping_batches`` (max_steps,
    or the epochs' steps after accumulation), so tqdm's remaining time is the whole run's, validation pauses
    included in its rate. The description names the epoch; validation, test and predict bars are Lightning's."""

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar = self.init_train_tqdm()
        bar.total = convert_inf(trainer.estimated_stepping_batches)
        # a resumed run starts at its step; tqdm then rates (and times the rest by) this process's steps only
        bar.initial = bar.n = trainer.global_step
        self.on_train_epoch_start(trainer)  # a run resumed mid-epoch starts with no epoch start

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else ""))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total) and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
