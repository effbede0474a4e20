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
from .sections import DataSection, ModelSection, TaskSection


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


def build_data_and_task(model: ModelSection, task: TaskSection, data: DataSection, optimizer: dict,
                        scheduler: dict) -> tuple[L.LightningDataModule, L.LightningModule]:
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
