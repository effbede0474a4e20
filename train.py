"""Train any zoo model with one Lightning loop.

    python train.py --config configs/digits_seresnet.yaml
    python train.py --config configs/digits_seresnet.yaml --trainer.max_epochs 3 --optimizer.lr 0.003
    python train.py --config configs/digits_seresnet.yaml --print_config
    python train.py --config configs/digits_seresnet.yaml --ckpt_path last          # resume
    python train.py --config configs/digits_seresnet.yaml --run test --ckpt_path runs/x/checkpoints/best.ckpt

Config sections: ``model`` (``zoo.create`` name, kwargs, pretrained, and ``quant_aware: w4a8`` for
quantization-aware training, whose export also writes the quantized model), ``task`` (name and its
arguments), ``data`` (name and its arguments), ``optimizer``, ``scheduler``, ``trainer`` (any
``lightning.Trainer`` argument: devices, num_nodes, strategy, precision, ...), and ``seed``,
``output_dir``, ``run`` (steps among fit, validate, test, predict; default fit then test), ``ckpt_path``.
Unknown or misspelt keys are errors that name the nearest valid key.
"""
from __future__ import annotations

import errno
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from safetensors.torch import save_file

import zoo
from zoo.blocks.validation import check_kwargs, closest
from zoo.checkpoint import CheckpointError
from zoo.data import DATAMODULES
from zoo.files import atomic_write
from zoo.tasks import TASKS, NonFiniteLossError, OptimizerConfig, SchedulerConfig
from zoo.tasks.callbacks import ExportModel, RunSummary, plot_metrics
from zoo.tasks.checkpointing import LastCheckpoint, MetricsRows, SafeCheckpointIO, resolve_ckpt_path
from zoo.tasks.run_folder import RunCSVLogger, RunFolderBusy, RunLock, remove_stale_temporaries

RUN_STEPS = ("fit", "validate", "test", "predict")
TRAINER_MANAGED = {"callbacks", "logger", "plugins", "default_root_dir", "enable_checkpointing"}
# an int counts batches, a float is a fraction: Lightning annotates them float-first, so "1" became 1.0
BATCH_COUNTS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "overfit_batches")


@dataclass
class ModelSection:
    """Arguments of ``zoo.create``."""

    name: str = "resnet18"
    pretrained: Union[bool, str] = False
    quant: Optional[str] = None
    quant_aware: Optional[str] = None  # e.g. w4a8: train through fake quantization (QAT)
    kwargs: dict = field(default_factory=dict)


@dataclass
class TaskSection:
    """A task from ``zoo.tasks.TASKS`` and its keyword arguments."""

    name: str = "classification"
    args: dict = field(default_factory=dict)


@dataclass
class DataSection:
    """A data module from ``zoo.data.DATAMODULES`` and its keyword arguments."""

    name: str = "digits"
    args: dict = field(default_factory=dict)


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the fix."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="train.py", description=__doc__, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=str, default="runs/default")
    parser.add_argument("--run", type=list[str], default=["fit", "test"], help=f"steps among {RUN_STEPS}")
    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help="'last' or 'best' (this output_dir's), a .ckpt file, or a URL")
    parser.add_argument("--checkpoint_every_n_steps", type=Optional[int], default=None,
                        help="also write last.ckpt every N training steps (default: at validation / epoch ends)")
    parser.add_class_arguments(ModelSection, "model")
    parser.add_class_arguments(TaskSection, "task")
    parser.add_class_arguments(DataSection, "data")
    parser.add_class_arguments(OptimizerConfig, "optimizer")
    parser.add_class_arguments(SchedulerConfig, "scheduler")
    parser.add_class_arguments(L.Trainer, "trainer", skip=TRAINER_MANAGED | set(BATCH_COUNTS))
    for key in BATCH_COUNTS:  # typed by hand: typing caches Union[int, float] as Union[float, int]
        parser.add_argument(f"--trainer.{key}", type=Any, default=None if key != "overfit_batches" else 0.0,
                            help="an int counts batches, a float in [0, 1] is a fraction of them")
    return parser


def _known_keys(parser: ArgumentParser) -> list[str]:
    return [k for k in parser.get_defaults().as_dict().keys()] + [
        f"{section}.{k}" for section, sub in parser.get_defaults().as_dict().items() if isinstance(sub, dict) for k in sub]


def _explain(parser: ArgumentParser, message: str) -> str:
    """Add 'did you mean' to jsonargparse's messages about unknown keys."""
    match = re.search(r"unrecognized arguments: --?(\S+)", message) or \
        re.search(r"[Kk]ey ['\"]([\w.]+)['\"] is not expected", message) or \
        re.search(r"(?:[Kk]eys?|Option) ['\"]?([\w.]+)['\"]? (?:is|are) not (?:expected|accepted)", message)
    if not match:
        return message
    key = match.group(1)
    near = closest(key, _known_keys(parser), n=1)
    return f"unknown config key {key!r}" + (f"; did you mean {near[0]!r}?" if near else "") + f"\n({message.strip()})"


DICT_SECTIONS = ("model.kwargs", "task.args", "data.args")


def _split_dict_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str, Any]]]:
    """Pull out ``--data.args.KEY VALUE`` (or ``=VALUE``): one entry of a dict section, merged into the
    config's dict (jsonargparse would replace the whole dict). Values are parsed as YAML."""
    rest, overrides, i = [], [], 0
    pattern = re.compile(r"^--(" + "|".join(re.escape(s) for s in DICT_SECTIONS) + r")\.(\w+)(?:=(.*))?$")
    while i < len(argv):
        match = pattern.match(argv[i])
        if not match:
            rest.append(argv[i])
        else:
            value = match.group(3)
            if value is None:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{argv[i]} needs a value")
                i += 1
                value = argv[i]
            overrides.append((match.group(1), match.group(2), yaml.safe_load(value)))
        i += 1
    return rest, overrides


def parse_config(argv: list[str] | None) -> Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    print_config = "--print_config" in argv
    argv = [a for a in argv if a != "--print_config"]
    argv, overrides = _split_dict_overrides(argv)
    try:
        cfg = parser.parse_args(argv)
    except Exception as exc:  # jsonargparse reports every config problem as an ArgumentError
        raise ConfigError(_explain(parser, str(exc))) from None
    for section, key, value in overrides:
        group, attr = section.split(".")
        getattr(getattr(cfg, group), attr)[key] = value
    if print_config:
        print(parser.dump(cfg))
        sys.exit(0)
    for key in BATCH_COUNTS:
        value = getattr(cfg.trainer, key)
        if isinstance(value, str):
            value = yaml.safe_load(value)
            setattr(cfg.trainer, key, value)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0) and \
                not (isinstance(value, float) and 0.0 <= value <= 1.0):
            raise ConfigError(f"trainer.{key}: {value!r} is neither a batch count (an int >= 0) nor a fraction "
                              f"(a float in [0, 1])")
    bad = [s for s in cfg.run if s not in RUN_STEPS]
    if bad:
        raise ConfigError(f"run: unknown step(s) {bad}; choose from {', '.join(RUN_STEPS)}")
    return cfg


def _lookup(kind: str, table: dict, name: str) -> type:
    if name not in table:
        near = closest(name, table, n=3)
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(table)}"
                          + (f" (did you mean {near[0]!r}?)" if near else ""))
    return table[name]


def build(cfg: Namespace) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer, dict]:
    """Data, model and task, then the trainer: every check runs before any training work."""
    data_cls = _lookup("data module", DATAMODULES, cfg.data.name)
    check_kwargs(f"data {cfg.data.name!r}", cfg.data.args, data_cls.__init__)
    task_cls = _lookup("task", TASKS, cfg.task.name)
    check_kwargs(f"task {cfg.task.name!r}", cfg.task.args, task_cls.__init__)
    data = data_cls(**cfg.data.args)
    if cfg.model.quant and cfg.model.quant_aware:
        raise ConfigError("model.quant (an integer model, inference only) and model.quant_aware (quantization-aware "
                          "training) exclude each other; keep model.quant_aware to train, quantize the result after")
    if cfg.model.quant and "fit" in cfg.run:
        raise ConfigError(f"model.quant={cfg.model.quant!r}: quantized models are inference-only and cannot be "
                          f"trained (evaluate them with --run test); use model.quant_aware: {cfg.model.quant} for "
                          f"quantization-aware training")
    if cfg.model.quant_aware:
        zoo.QuantSpec.parse(cfg.model.quant_aware)  # a bad spec fails before any work
    net = zoo.create(cfg.model.name, pretrained=cfg.model.pretrained, quant=cfg.model.quant, **cfg.model.kwargs)
    if cfg.model.quant_aware:
        zoo.quant_aware(net, cfg.model.quant_aware)
    if hasattr(data, "configure_for_model"):  # the model's preprocessing for what the data config left open
        data.configure_for_model(getattr(net, "pretrained_cfg", {}) or {})
    data_classes, net_classes = getattr(data, "num_classes", None), getattr(net, "num_classes", None)
    if data_classes and net_classes and data_classes != net_classes:
        raise ConfigError(f"the data has {data_classes} classes but the model has {net_classes}; "
                          f"set model.kwargs.num_classes: {data_classes}")
    task = task_cls(net, optimizer=OptimizerConfig(**vars(cfg.optimizer)), scheduler=SchedulerConfig(**vars(cfg.scheduler)),
                    **cfg.task.args)

    out = Path(cfg.output_dir)
    monitor, mode = getattr(task_cls, "monitor", ("val/top1", "max"))
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode=mode,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    last = LastCheckpoint(out / "checkpoints", every_n_train_steps=cfg.checkpoint_every_n_steps)
    export = ExportModel(out / "export")
    summary = RunSummary(monitor, mode)
    # a resumed fit, or a test of a saved checkpoint, continues metrics.csv; a fresh fit starts it anew
    metrics = RunCSVLogger(out, resume=cfg.ckpt_path is not None or "fit" not in cfg.run)
    loggers = [metrics, TensorBoardLogger(out, name="tensorboard", version="")]
    trainer_args = {k: v for k, v in vars(cfg.trainer).items()}
    callbacks = [checkpoint, last, export, summary, MetricsRows(metrics)]
    if trainer_args.get("enable_progress_bar") is not False:
        callbacks.append(TQDMProgressBar(leave=True))  # keep each epoch's bar on screen
    checkpoint_io = SafeCheckpointIO()
    trainer = L.Trainer(**trainer_args, default_root_dir=str(out), logger=loggers, plugins=[checkpoint_io],
                        callbacks=callbacks)
    return task, data, trainer, {"checkpoint": checkpoint, "last": last, "export": export, "summary": summary,
                                 "out": out, "checkpoint_io": checkpoint_io}


def run(cfg: Namespace) -> dict:
    """Take the run folder (a lock, a killed run's leftovers removed), check the checkpoint to start
    from, then build and run the steps."""
    out = Path(cfg.output_dir)
    with RunLock(out) as lock:
        if lock.held:  # not in the processes Lightning launches for the other ranks
            remove_stale_temporaries(out)
        return _run_locked(cfg)


def _run_locked(cfg: Namespace) -> dict:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, Path(cfg.output_dir))
    task, data, trainer, parts = build(cfg)
    if ckpt_path is not None:
        parts["checkpoint_io"].preload(ckpt_path)  # a bad or unsafe file fails now, not after setup
    results: dict[str, Any] = {}
    fitted = False
    for step in cfg.run:
        if step == "fit":
            trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
            parts["summary"].record_checkpoints(parts["checkpoint"], parts["last"])
            fitted = True
            continue
        ckpt = (parts["checkpoint"].best_model_path or None) if fitted else ckpt_path
        if step == "validate":
            results.update(trainer.validate(task, datamodule=data, ckpt_path=ckpt)[0])
        elif step == "test":
            results.update(trainer.test(task, datamodule=data, ckpt_path=ckpt)[0])
        elif step == "predict":
            preds = trainer.predict(task, datamodule=data, ckpt_path=ckpt)
            if trainer.is_global_zero:
                tensors = {"predictions": torch.cat(preds)}
                atomic_write(parts["out"] / "predictions.safetensors", lambda tmp: save_file(tensors, tmp))
    if trainer.is_global_zero:
        plots = plot_metrics(parts["out"] / "metrics.csv", parts["out"])
        print(parts["summary"].report(trainer, parts["export"], results))
        if plots:
            print(f"  plots: {', '.join(str(p) for p in plots)}")
    return {"results": results, "trainer": trainer, "task": task, **parts}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        run(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, RunFolderBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"training stopped: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
