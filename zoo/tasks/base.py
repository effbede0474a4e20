"""The shared LightningModule: optimisation, schedule, EMA, compile and the NaN guard."""
from __future__ import annotations

import math
import random
from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from .ema import ModelEma
from .optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops before anything is saved from it."""


class BaseTask(L.LightningModule):
    """What every task shares; a task adds its loss, metrics and data handling.

    Args:
        model: the network (usually from ``zoo.create``).
        optimizer: optimizer settings (AdamW/Adam/SGD/Lion, weight decay that skips norms and biases).
        scheduler: per-step LR schedule with linear warmup (cosine, step or constant).
        ema_decay: keep an exponential moving average of the weights with this decay (None: off);
            it is evaluated beside the raw weights and saved with them.
        compile: run the model's forward through ``torch.compile`` (True: the default inductor
            backend; a string names another backend, e.g. ``"aot_eager"``).
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerConfig | None = None,
                 scheduler: SchedulerConfig | None = None, ema_decay: float | None = None,
                 compile: bool | str = False) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = optimizer or OptimizerConfig()
        self.sched_cfg = scheduler or SchedulerConfig()
        self.ema = ModelEma(model, ema_decay) if ema_decay else None
        self.compile_model = compile
        self._compiled_forward = None  # a compiled bound method, not a module: no duplicate state keys
        self.save_hyperparameters({"optimizer": asdict(self.optim_cfg), "scheduler": asdict(self.sched_cfg),
                                   "ema_decay": ema_decay, "compile": compile})

    def setup(self, stage: str) -> None:
        if self.compile_model and self._compiled_forward is None:
            backend = self.compile_model if isinstance(self.compile_model, str) else "inductor"
            self._compiled_forward = torch.compile(self.model.forward, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._compiled_forward or self.model)(x)

    def configure_optimizers(self) -> dict:
        optimizer = build_optimizer(self.model, self.optim_cfg)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        if not math.isfinite(total) or total <= 0:
            total = max(self.sched_cfg.step_size, 1)
        scheduler = build_scheduler(optimizer, self.sched_cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop the run with a clear message on a NaN or infinite loss (never checkpoint it)."""
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}). "
                f"Lower optimizer.lr, set trainer.gradient_clip_val, or check the data; "
                f"no checkpoint was written from this step.")
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None and self.trainer is not None and \
                (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self.ema.update(self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # random states, so a resumed run draws the same shuffles and augmentations as a straight one
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    # as tensors and numbers, so the checkpoint loads with weights_only=True
                                    "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))

    def log_lr(self) -> None:
        if self._trainer is not None and self.trainer.optimizers:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False, on_step=True, on_epoch=False)
