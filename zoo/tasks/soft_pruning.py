"""Pruning inside the training loop: the ``prune:`` section of a training config.

- ``mode: soft``: at ``start_step`` the channels to remove are chosen (:func:`zoo.pruning.plan_pruning`
  on a few training batches); after every optimizer step until ``end_step`` their weights are multiplied
  by a mask that falls linearly from 1 to 0 (Kang and Han, "Soft Masking for Cost-Constrained Channel
  Pruning", ECCV 2022: the rest of the network learns to do without them while they fade); when
  training ends they are removed, so the exported model is the smaller dense one.
- ``mode: oneshot``: the model is pruned before the first step and fine-tuned at its new size
  (:func:`prune_before_training`).
"""
from __future__ import annotations

from dataclasses import asdict
from itertools import islice
from typing import Any

import lightning as L
import torch
from torch import nn

from ..pruning import (PrunePlan, PruneReport, PruneTarget, apply_plan, apply_record, format_report, plan_pruning,
                       prune, slice_state_dict, soft_mask)

__all__ = ["SoftPruning", "calibration_batches", "prune_before_training", "cut_checkpoint", "record_in_checkpoint",
           "keep_in_checkpoint", "keep_from_checkpoint"]


def calibration_batches(datamodule: L.LightningDataModule, count: int) -> list:
    """The first ``count`` training batches, for the criteria that run the model."""
    datamodule.setup("fit")
    return list(islice(iter(datamodule.train_dataloader()), count))


def prune_before_training(model: nn.Module, datamodule: L.LightningDataModule, target: Any, importance: str,
                          calib_batches: int, min_keep: float, round_to: int = 1, rates: str = "global",
                          reconstruct: bool = False) -> nn.Module:
    """The one-shot mode: prune ``model`` in place on a few training batches, print the report."""
    batches = calibration_batches(datamodule, calib_batches)
    prune(model, target, importance, batches, loss_fn=_loss_for(model), min_keep=min_keep, round_to=round_to,
          rates=rates, reconstruct=reconstruct)
    print(format_report(model.prune_report), flush=True)
    return model


def _loss_for(model: nn.Module):
    # the classifiers' cross-entropy; None (the output's mean square) for the rest
    return torch.nn.functional.cross_entropy if getattr(model, "num_classes", 0) else None


class SoftPruning(L.Callback):
    """Soft masking from ``start_step`` to ``end_step`` (None: the run's last step), the cut at the end of
    training. Checkpoints written before the cut hold the full widths and the plan's kept indices
    (``prune_keep``): evaluating one (the test of the best checkpoint after fit, or a later ``train.py test``)
    cuts its tensors to the plan first, so what is tested is the pruned model; a fit resumed from one keeps
    the full widths and goes on fading the same channels (the plan is this callback's state, which Lightning
    saves with the checkpoint: a resume does not choose again on the half-faded weights)."""

    def __init__(self, target: Any, importance: str = "gate", start_step: int = 0, end_step: int | None = None,
                 calib_batches: int = 4, min_keep: float = 0.1, round_to: int = 1, rates: str = "global") -> None:
        self.target, self.importance = target, importance
        self.start_step, self.end_step = start_step, end_step
        self.calib_batches, self.min_keep, self.round_to, self.rates = calib_batches, min_keep, round_to, rates
        self.plan: PrunePlan | None = None
        self.cut = False

    @property
    def state_key(self) -> str:
        # another target or criterion in the config is another plan: a resume then chooses afresh
        return self._generate_state_key(target=str(self.target), importance=self.importance, rates=self.rates,
                                        min_keep=self.min_keep, round_to=self.round_to)

    def state_dict(self) -> dict[str, Any]:
        if self.plan is None or self.cut:
            return {}
        return {"keep": keep_in_checkpoint(self.plan), "report": asdict(self.plan.report),
                "example": self.plan.example[:1].detach().cpu()}  # one sample: the MACs are per sample

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        report = dict(state_dict["report"])
        report["target"] = PruneTarget(**report["target"])
        self.plan = PrunePlan(keep_from_checkpoint(state_dict["keep"]), PruneReport(**report), state_dict["example"])

    def _end(self, trainer: L.Trainer) -> int:
        if self.end_step is not None:
            return self.end_step
        return max(int(trainer.estimated_stepping_batches), self.start_step + 1)

    def mask(self, step: int, end: int) -> float:
        """The mask's value after optimizer step ``step``: 1 before ``start_step``, 0 from ``end`` on."""
        if step <= self.start_step:
            return 1.0
        return max(0.0, 1.0 - (step - self.start_step) / max(end - self.start_step, 1))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.plan is None and trainer.global_step >= self.start_step:
            model = pl_module.model
            batches = calibration_batches(trainer.datamodule, self.calib_batches) if trainer.datamodule else [batch]
            batches = [_to(b, pl_module.device) for b in batches]
            self.plan = plan_pruning(model, self.target, self.importance, batches, loss_fn=_loss_for(model),
                                     min_keep=self.min_keep, round_to=self.round_to, rates=self.rates)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.plan is not None:
            # each step scales the fading channels by the mask's current value, so they reach exactly 0 at end_step
            soft_mask(pl_module.model, self.plan, self.mask(trainer.global_step, self._end(trainer)))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.plan is not None and not self.cut:  # a full-width checkpoint: the indices the cut will keep
            checkpoint["prune_keep"] = keep_in_checkpoint(self.plan)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plan is None:
            return
        apply_plan(pl_module.model, self.plan)
        self.cut = True
        ema = getattr(pl_module, "ema", None)
        if ema is not None:
            apply_plan(ema.module, self.plan)
            ema._pairs = None  # the tensors it pairs were replaced
        pl_module.prune_plan = self.plan  # read by BaseTask.on_load_checkpoint
        if trainer.is_global_zero:
            print(format_report(pl_module.model.prune_report), flush=True)


def record_in_checkpoint(pl_module: L.LightningModule, checkpoint: dict) -> None:
    """Keep the model's pruned widths beside its weights, so a task built at full width (``test`` or a
    resume from the config) shrinks to them before loading."""
    record = getattr(pl_module.model, "prune_record", None)
    if record:
        checkpoint["prune_record"] = record


def keep_in_checkpoint(plan: PrunePlan) -> dict[str, dict[str, torch.Tensor]]:
    """The plan's kept indices as ``{module: {dimension: indices}}``, which a weights-only load reads back."""
    keep: dict[str, dict[str, torch.Tensor]] = {}
    for (name, dim), indices in plan.keep.items():
        keep.setdefault(name, {})[dim] = indices.clone()
    return keep


def keep_from_checkpoint(keep: dict[str, dict[str, Any]]) -> dict[tuple[str, str], torch.Tensor]:
    """:func:`keep_in_checkpoint`'s inverse: a plan's ``keep`` from ``{module: {dimension: indices}}``."""
    return {(name, dim): torch.as_tensor(idx) for name, dims in keep.items() for dim, idx in dims.items()}


def _fitting(pl_module: L.LightningModule) -> bool:
    return pl_module._trainer is not None and pl_module.trainer.state.fn == "fit"


def cut_checkpoint(pl_module: L.LightningModule, checkpoint: dict) -> None:
    """Fit the task to a checkpoint before its state loads: a pruned checkpoint into a full-width task replays
    the record on the model (and EMA); a full-width checkpoint written before soft pruning cut the model is
    cut to the task's plan, or, evaluated by a task built at full width (``train.py test``), to the kept
    indices it carries, and the model shrinks to match (a fit resuming from it stays at full width)."""
    record = checkpoint.get("prune_record")
    if record and not getattr(pl_module.model, "prune_record", None):
        apply_record(pl_module.model, record)
        if getattr(pl_module, "ema", None) is not None:
            apply_record(pl_module.ema.module, record)
            pl_module.ema._pairs = None
    plan = getattr(pl_module, "prune_plan", None)
    keep = checkpoint.get("prune_keep")
    if plan is None and keep and not _fitting(pl_module):
        plan = PrunePlan(keep_from_checkpoint(keep), None, None)
        widths = {name: {dim: int(idx.numel()) for dim, idx in dims.items()} for name, dims in keep.items()}
        _cut_to(pl_module, checkpoint, plan)  # the state first: its slicing reads the full-width modules
        record = dict(getattr(pl_module.model, "prune_record", None) or {})
        for name, dims in widths.items():
            record[name] = {**record.get(name, {}), **dims}
        apply_record(pl_module.model, record)
        if getattr(pl_module, "ema", None) is not None:
            apply_record(pl_module.ema.module, record)
            pl_module.ema._pairs = None
        return
    if plan is not None:
        _cut_to(pl_module, checkpoint, plan)


def _cut_to(pl_module: L.LightningModule, checkpoint: dict, plan: PrunePlan) -> None:
    state = checkpoint.get("state_dict", {})
    slice_state_dict(state, pl_module.model, plan, prefix="model.")
    if getattr(pl_module, "ema", None) is not None:
        slice_state_dict(state, pl_module.ema.module, plan, prefix="ema.module.")


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch
