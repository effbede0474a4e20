"""The shared LightningModule: optimisation, schedule, EMA, compile and the NaN guard."""
from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from zoo.blocks.validation import supplied_by_caller

from .ema import ModelEma
from .soft_pruning import cut_checkpoint, record_in_checkpoint
from .optim import Spec, check_optimizer, check_scheduler, create_optimizer, create_scheduler, step_schedule


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops before anything is saved from it."""


class BaseTask(L.LightningModule):
    """What every task shares; a task adds its loss, metrics and data handling.

    Args:
        model: the network (usually from ``zoo.create``).
        optimizer: a spec (``zoo.tasks.optim``): timm's optimizer by name (``{"name": "lion", "lr": 1e-4}``)
            or a class (``{"class_path": "torch.optim.SGD", "init_args": {...}}``); weight decay skips
            norms and biases. None: AdamW, lr 1e-3, weight decay 0.05.
        scheduler: a spec of the per-step schedule: timm's by name (cosine, step, constant, ... with
            linear warmup, in steps) or a torch ``LRScheduler`` class. None: cosine, no warmup.
        ema_decay: keep an exponential moving average of the weights with this decay (None: off);
            it is evaluated beside the raw weights and saved with them.
        compile: run the model's forward through ``torch.compile`` (True: the default inductor
            backend; a string names another backend, e.g. ``"aot_eager"``).
    """

    CALLER_ARGS = ("model", "optimizer", "scheduler")  # the training CLI builds these from their own config sections

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # each task's own __init__, so its argument check leaves them out
            supplied_by_caller(*cls.CALLER_ARGS)(cls.__init__)

    @supplied_by_caller(*CALLER_ARGS)
    def __init__(self, model: nn.Module, optimizer: Spec | None = None, scheduler: Spec | None = None,
                 ema_decay: float | None = None, compile: bool | str = False) -> None:
        super().__init__()
        check_optimizer(optimizer)  # a bad name or argument fails here, before any training work
        check_scheduler(scheduler)
        self.model = model
        self.optim_spec, self.sched_spec = dict(optimizer or {}), dict(scheduler or {})
        self.ema = ModelEma(model, ema_decay) if ema_decay else None
        self.compile_model = compile
        self._compiled_forward = None  # a compiled bound method, not a module: no duplicate state keys
        self.save_hyperparameters({"optimizer": self.optim_spec, "scheduler": self.sched_spec,
                                   "ema_decay": ema_decay, "compile": compile})

    def setup(self, stage: str) -> None:
        if self.compile_model and self._compiled_forward is None:
            backend = self.compile_model if isinstance(self.compile_model, str) else "inductor"
            self._compiled_forward = torch.compile(self.model.forward, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._compiled_forward or self.model)(x)

    def configure_optimizers(self) -> dict:
        optimizer = create_optimizer(self.model, self.optim_spec)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        if not math.isfinite(total) or total <= 0:  # an endless run: no decay to plan
            raise ValueError("the learning-rate schedule needs a finite run: set trainer.max_steps or "
                             "trainer.max_epochs")
        scheduler = create_scheduler(optimizer, self.sched_spec, int(total))
        if scheduler is None:  # timm's "none"
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # Lightning calls this after each optimizer step, global_step already counting it
        step_schedule(scheduler, self.global_step)

    def on_fit_start(self) -> None:
        # configure_optimizers asked for estimated_stepping_batches, which made Lightning build the
        # training loader before the checkpoint's loop state was restored, so the loader's saved
        # position (zoo.data.sampling) would never reach it. Dropping that early loader makes the fit
        # loop build it again after the restore, as it does when nothing asks early.
        if self.trainer.ckpt_path is not None:
            self.trainer.fit_loop._combined_loader = None

    def check_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop the run with a clear message on a NaN or infinite loss (never checkpoint it)."""
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}). "
                f"Lower optimizer.lr, set trainer.gradient_clip_val, or check the data; "
                f"no checkpoint was written from this step.")
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            # here, not at batch end: checkpoint callbacks run at batch end before the module's hook,
            # and a checkpoint written there must hold this step's average
            self.ema.update(self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # every rank's random state (dropout, the model's own sampling), so a resumed run draws what a
        # straight one drew; the data's randomness is seeded per sample (zoo.data.sampling)
        state = _rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)  # every rank runs this hook
        else:
            states = [state]
        checkpoint["rng_states"] = states
        record_in_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        cut_checkpoint(self, checkpoint)  # pruned widths: the model and the checkpoint fitted to each other
        states = checkpoint.get("rng_states")
        if isinstance(states, dict):  # a checkpoint from before the per-rank list
            states = [states]
        rank = self.trainer.global_rank if self._trainer is not None else 0
        # applied when training starts: the sanity check and validation before it draw random numbers
        # that a straight run drew before it saved this state
        self._pending_rng = states[rank] if states and rank < len(states) else None

    def on_train_start(self) -> None:
        state = getattr(self, "_pending_rng", None)
        if state is not None:
            _set_rng_state(state)
            self._pending_rng = None

    def log_lr(self) -> None:
        if self._trainer is not None and self.trainer.optimizers:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False, on_step=True, on_epoch=False)


def _rng_state() -> dict:
    """torch's, Python's and numpy's random states, as tensors and numbers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
