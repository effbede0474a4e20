"""From the parsed sections to a data module and a task, every check before any work; and the
callbacks, loggers and plugin that make ``output_dir`` the run folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from ..blocks.validation import check_kwargs, closest
from ..data import DATAMODULES
from ..factory import create
from ..quant import QuantSpec, quant_aware
from ..tasks import TASKS
from ..tasks.callbacks import ExportModel, RunSummary
from ..tasks.checkpointing import LastCheckpoint, MetricsRows, SafeCheckpointIO
from ..tasks.progress import RunProgressBar
from ..tasks.run_folder import RunCSVLogger
from ..tasks.soft_pruning import SoftPruning, prune_before_training
from ..pruning import PruneTarget
from ..pruning.api import RATES, check_importance
from .sections import PRUNE_MODES, DataSection, ModelSection, PruneSection, TaskSection


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the fix."""


def _lookup(kind: str, table: dict, name: str) -> type:
    if name not in table:
        near = closest(name, table, n=3)
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(table)}"
                          + (f" (did you mean {near[0]!r}?)" if near else ""))
    return table[name]


def check_model_section(model: ModelSection, subcommand: str) -> None:
    if model.quant and model.quant_aware:
        raise ConfigError("model.quant (an integer model, inference only) and model.quant_aware (quantization-aware "
                          "training) exclude each other; keep model.quant_aware to train, quantize the result after")
    if model.quant and subcommand == "fit":
        raise ConfigError(f"model.quant={model.quant!r}: quantized models are inference-only and cannot be trained "
                          f"(evaluate them with the test subcommand); use model.quant_aware: {model.quant} for "
                          f"quantization-aware training")
    if model.quant_aware:
        QuantSpec.parse(model.quant_aware)  # a bad spec fails before any work


def check_prune_section(prune: PruneSection, model: ModelSection, subcommand: str) -> None:
    """A ``prune:`` section that cannot run fails before any work, in one sentence."""
    if prune.target is None:
        return
    try:
        target = PruneTarget.parse(prune.target)
        check_importance(prune.importance)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"prune: {exc.args[0]}") from None
    if prune.rates not in RATES:
        raise ConfigError(f"prune.rates must be one of {', '.join(RATES)}; got {prune.rates!r}")
    if prune.rates != "global" and target.kind == "rates":
        raise ConfigError(f"prune.rates: {prune.rates} chooses the group rates under a flops=, params= or latency= target, "
                          f"and this target names them itself: give one or the other")
    if prune.mode not in PRUNE_MODES:
        near = closest(prune.mode, PRUNE_MODES, n=1)
        raise ConfigError(f"prune.mode must be one of {', '.join(PRUNE_MODES)}; got {prune.mode!r}"
                          + (f" (did you mean {near[0]!r}?)" if near else ""))
    if model.quant or model.quant_aware:
        raise ConfigError("prune and model.quant / model.quant_aware exclude each other in one run: prune (and "
                          "fine-tune) first, then quantize the exported model")
    if prune.start_step < 0 or (prune.end_step is not None and prune.end_step <= prune.start_step):
        raise ConfigError(f"prune.start_step must be >= 0 and prune.end_step after it; got {prune.start_step} and "
                          f"{prune.end_step}")
    if prune.reconstruct and prune.mode != "oneshot":
        raise ConfigError("prune.reconstruct refits the layers right after a one-shot cut; soft masking has already "
                          "trained the network around the fading channels: set prune.mode: oneshot, or drop reconstruct")
    if not 1 <= prune.calib_batches:
        raise ConfigError(f"prune.calib_batches must be at least 1; got {prune.calib_batches}")


def soft_pruning(prune: PruneSection, subcommand: str) -> list[Callback]:
    """The soft-masking callback a fit with ``prune.mode: soft`` runs (none otherwise)."""
    if prune.target is None or prune.mode != "soft" or subcommand != "fit":
        return []
    return [SoftPruning(prune.target, prune.importance, prune.start_step, prune.end_step, prune.calib_batches,
                        prune.min_keep, prune.round_to, prune.rates)]


def build_data_and_task(model: ModelSection, task: TaskSection, data: DataSection, optimizer: dict,
                        scheduler: dict, prune: PruneSection | None = None
                        ) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The data module first (a missing folder fails before a model is built), then the model, its
    preprocessing handed to the data, and the task."""
    data_cls = _lookup("data module", DATAMODULES, data.name)
    check_kwargs(f"data {data.name!r}", data.args, data_cls.__init__)
    task_cls = _lookup("task", TASKS, task.name)
    check_kwargs(f"task {task.name!r}", task.args, task_cls.__init__)
    datamodule = data_cls(**data.args)
    net = create(model.name, pretrained=model.pretrained, quant=model.quant, **model.kwargs)
    if model.quant_aware:
        quant_aware(net, model.quant_aware)
    if hasattr(datamodule, "configure_for_model"):  # the model's preprocessing for what the data config left open
        datamodule.configure_for_model(getattr(net, "pretrained_cfg", {}) or {})
    data_classes, net_classes = getattr(datamodule, "num_classes", None), getattr(net, "num_classes", None)
    if data_classes and net_classes and data_classes != net_classes:
        raise ConfigError(f"the data has {data_classes} classes but the model has {net_classes}; "
                          f"set model.kwargs.num_classes: {data_classes}")
    if prune is not None and prune.target is not None and prune.mode == "oneshot":  # before the task copies it (EMA)
        prune_before_training(net, datamodule, prune.target, prune.importance, prune.calib_batches, prune.min_keep,
                              prune.round_to, prune.rates, prune.reconstruct)
    return datamodule, task_cls(net, optimizer=optimizer, scheduler=scheduler, **task.args)


@dataclass
class RunFolderParts:
    """What the loop adds to every run in ``out``: checkpoints, export, summary, metrics.csv."""

    out: Path
    checkpoint: ModelCheckpoint
    last: LastCheckpoint
    export: ExportModel
    summary: RunSummary
    metrics: RunCSVLogger
    checkpoint_io: SafeCheckpointIO

    def callbacks(self, progress_bar: bool) -> list[Callback]:
        managed: list[Callback] = [self.checkpoint, self.last, self.export, self.summary, MetricsRows(self.metrics)]
        return managed + ([RunProgressBar()] if progress_bar else [])

    def loggers(self, given: Any) -> list[Logger]:
        """metrics.csv always (resume, plots, summary read it); then the loggers given by ``trainer.logger``,
        or TensorBoard in ``tensorboard/`` when none is given (``false``: metrics.csv only)."""
        if given is None or given is True:
            return [self.metrics, TensorBoardLogger(self.out, name="tensorboard", version="")]
        if given is False:
            return [self.metrics]
        return [self.metrics] + (list(given) if isinstance(given, (list, tuple)) else [given])


def run_folder_parts(out: Path, task: L.LightningModule, every_n_steps: Optional[int]) -> RunFolderParts:
    monitor, mode = getattr(type(task), "monitor", ("val/top1", "max"))
    return RunFolderParts(
        out=out,
        checkpoint=ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode=mode,
                                   auto_insert_metric_name=False, enable_version_counter=False),
        last=LastCheckpoint(out / "checkpoints", every_n_train_steps=every_n_steps),
        export=ExportModel(out / "export"),
        summary=RunSummary(monitor, mode),
        metrics=RunCSVLogger(out),
        checkpoint_io=SafeCheckpointIO())
