"""Train any zoo model with one Lightning loop: Lightning's CLI over the zoo's tasks and data.

    python train.py -c configs/digits_seresnet.yaml               # fit, test the best checkpoint, export
    python train.py fit -c configs/digits_seresnet.yaml --trainer.max_epochs 3 --optimizer.lr 0.003
    python train.py test -c configs/digits_seresnet.yaml --ckpt_path best
    python train.py fit -c configs/digits_seresnet.yaml --ckpt_path last      # resume
    python train.py fit -c configs/digits_seresnet.yaml --print_config

``zoo-train`` and ``python -m zoo train`` are the same command. Config sections: ``model`` (``zoo.create``
name, kwargs, pretrained, ``quant_aware: w4a8`` for quantization-aware training), ``task`` and ``data``
(a name and its arguments), ``optimizer`` and ``scheduler`` (timm's by name, or a ``class_path``),
``trainer`` (Lightning's: callbacks and loggers by class_path too), ``seed_everything``, ``output_dir``
(the run folder; a fresh fit goes to ``OUTPUT_DIR-2``, ``-3``, ... when it holds a run), ``checkpoint_every_n_steps``;
``ckpt_path`` of each subcommand (without it, validate / test / predict take the latest run's best checkpoint).
Any key can come from the environment too (``PL_FIT__TRAINER__MAX_STEPS=2``). Unknown or misspelt keys stop
before any work, naming the nearest valid key.
"""
from __future__ import annotations

import errno
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from safetensors.torch import save_file

from ..checkpoint import CheckpointError
from ..files import atomic_write
from ..tasks import NonFiniteLossError
from ..tasks.callbacks import plot_metrics
from ..tasks.optim import TimmOptimizer, TimmScheduler
from ..tasks.run_folder import RunFolderBusy, RunLock, remove_stale_temporaries
from .build import ConfigError, build_data_and_task, check_model_section, check_prune_section, run_folder_parts, soft_pruning
from .config_file import RunConfigFile
from .errors import explain
from .quiet import quiet_console
from .run_place import RUN_FOLDER_ENV, place_run
from .sections import DataSection, ModelSection, PruneSection, TaskSection, split_dict_overrides

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# an int counts batches, a float is a fraction: Lightning annotates them Union[int, float], which typing's
# cache may hand out as Union[float, int], so "1" would parse as 1.0 (all batches)
BATCH_COUNTS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "overfit_batches")
STAGE_PREFIXES = {"validate": ("val", "val_ema"), "test": ("test", "test_ema")}


class ZooCLI(LightningCLI):
    """Lightning's CLI with the zoo's sections, the run folder around every subcommand, and (for the
    subcommand-less form) a test of the best checkpoint after fit.

    ``resources`` holds the run folder's lock until the caller closes it; ``results`` holds the metrics
    of the last validate or test."""

    def __init__(self, args: list[str], resources: ExitStack, then_test: bool = False) -> None:
        self.resources, self.then_test = resources, then_test
        self.results: dict[str, float] = {}
        # errors reach main() as exceptions, to be explained in one sentence; no abbreviated keys
        # (--trainer.max_epoch would silently set max_epochs); every key also read from the environment
        # (PL_FIT__TRAINER__MAX_STEPS=2), below the config file and the command line
        common = {"exit_on_error": False, "allow_abbrev": False, "default_env": True}
        super().__init__(args=args, save_config_callback=RunConfigFile, save_config_kwargs={"overwrite": True},
                         seed_everything_default=0, auto_configure_optimizers=False,
                         load_from_checkpoint_support=False,
                         parser_kwargs={"prog": "train.py", "description": __doc__.split("\n\n")[0], **common,
                                        **{s: dict(common) for s in SUBCOMMANDS}})

    # ---- the parser
    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(Trainer, "trainer", fail_untyped=False, instantiate=False, sub_configs=True,
                                   skip=set(BATCH_COUNTS) | {"default_root_dir"})
        for key in BATCH_COUNTS:
            parser.add_argument(f"--trainer.{key}", type=Any, default=0.0 if key == "overfit_batches" else None,
                                help="an int counts batches, a float in [0, 1] is a fraction of them")
        parser.add_class_arguments(ModelSection, "model", instantiate=False)
        parser.add_class_arguments(TaskSection, "task", instantiate=False)
        parser.add_class_arguments(DataSection, "data", instantiate=False)
        parser.add_class_arguments(PruneSection, "prune", instantiate=False)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=str, default="runs/default",
                            help="the run folder: checkpoints, export, metrics.csv, config.yaml, plots (a fresh fit "
                                 "goes to OUTPUT_DIR-2, -3, ... when it holds a run)")
        parser.add_argument("--checkpoint_every_n_steps", type=Optional[int], default=None,
                            help="also write last.ckpt every N training steps (default: at validation / epoch ends)")
        # not instantiated: the task builds them from the spec in configure_optimizers
        parser.add_subclass_arguments((torch.optim.Optimizer, TimmOptimizer), "optimizer", instantiate=False,
                                      fail_untyped=False, skip={"params"}, required=False,
                                      default={"class_path": f"{TimmOptimizer.__module__}.TimmOptimizer"})
        parser.add_subclass_arguments((torch.optim.lr_scheduler.LRScheduler, TimmScheduler), "scheduler",
                                      instantiate=False, fail_untyped=False, skip={"optimizer"}, required=False,
                                      default={"class_path": f"{TimmScheduler.__module__}.TimmScheduler"})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        args, overrides = split_dict_overrides(list(args or []))
        try:  # not Lightning's: it warns whenever sys.argv has arguments too (python -m zoo train, pytest)
            self.config = parser.parse_args(args)
        except SystemExit:
            raise
        except Exception as exc:  # jsonargparse reports every config problem as an ArgumentError
            sub = next((a for a in args or [] if a in SUBCOMMANDS), None)
            raise ConfigError(explain(self._subcommand_parsers[sub] if sub else parser, str(exc))) from None
        cfg = self.config[self.config.subcommand]
        for section, key, value in overrides:
            cfg[section][key] = value
        _check_batch_counts(cfg.trainer)
        self._place_run(cfg)

    def _parse_ckpt_path(self) -> None:
        """Lightning would read the checkpoint's hyperparameters here with ``torch.load``, which
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns into unpickling. The config is the whole config here,
        and the checkpoint is read once, by SafeCheckpointIO."""

    # ---- before any work (and before Lightning's first line): checks, the run folder, the checkpoint to start from
    def _place_run(self, cfg: Any) -> None:
        subcommand = self.config.subcommand
        check_model_section(cfg.model, subcommand)
        check_prune_section(cfg.prune, cfg.model, subcommand)
        self.place = place_run(Path(cfg.output_dir), subcommand, cfg.ckpt_path)
        self.out, self.ckpt_path = self.place.folder, self.place.ckpt_path
        if self.resources.enter_context(RunLock(self.out)).held:  # not in the processes of the other ranks
            remove_stale_temporaries(self.out)
            print(self.place.line(), flush=True)
            os.environ[RUN_FOLDER_ENV] = str(self.out)  # for the ranks Lightning's launcher starts
            self.resources.callback(os.environ.pop, RUN_FOLDER_ENV, None)
        cfg.output_dir = str(self.out)  # config.yaml names the folder it is in

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)  # the trainer's callbacks and loggers
        cfg = self.config_init[self.subcommand]
        spec = lambda ns: ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)  # noqa: E731
        self.datamodule, self.model = build_data_and_task(cfg.model, cfg.task, cfg.data, spec(cfg.optimizer),
                                                          spec(cfg.scheduler), cfg.prune if self.subcommand == "fit" else None)
        self.parts = run_folder_parts(self.out, self.model, cfg.checkpoint_every_n_steps)
        self.parts.summary.place = self.place.line()
        trainer_cfg = cfg.trainer
        self.trainer = self.instantiate_trainer(
            # soft pruning first: its cut at the end of training precedes the export's save
            callbacks=soft_pruning(cfg.prune, self.subcommand) + list(_as_list(trainer_cfg.callbacks))
            + self.parts.callbacks(trainer_cfg.enable_progress_bar is not False),
            logger=self.parts.loggers(trainer_cfg.logger),
            plugins=list(_as_list(trainer_cfg.plugins)) + [self.parts.checkpoint_io],
            default_root_dir=str(self.out))
        cfg["ckpt_path"] = self.ckpt_path  # what the subcommand is called with
        if "verbose" in cfg:  # Lightning's table of results: the summary is the one place metrics are printed
            cfg["verbose"] = False
        if self.ckpt_path is not None:
            self.parts.checkpoint_io.preload(self.ckpt_path)  # a bad or unsafe file fails now, not after setup

    # ---- after each subcommand
    def after_fit(self) -> None:
        self.parts.summary.record_checkpoints(self.parts.checkpoint, self.parts.last)
        if self.then_test:  # the subcommand-less run: the best checkpoint's test metrics (the final weights without one)
            best = self.parts.checkpoint.best_model_path or None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
            self.results = _stage_metrics(self.trainer, "test")
            self.parts.summary.evaluated = best or "the final weights (no best checkpoint)"
        self._report(plots=True)

    def after_validate(self) -> None:
        self.results = _stage_metrics(self.trainer, "validate")
        self._report_evaluation()

    def after_test(self) -> None:
        self.results = _stage_metrics(self.trainer, "test")
        self._report_evaluation()

    def after_predict(self) -> None:
        predictions = self.trainer.predict_loop.predictions
        if self.trainer.is_global_zero and predictions:
            tensors = {"predictions": torch.cat(predictions)}
            atomic_write(self.out / "predictions.safetensors", lambda tmp: save_file(tensors, tmp))
        self._report_evaluation()

    def _report_evaluation(self) -> None:
        self.parts.summary.evaluated = self.ckpt_path or "the model as built (no checkpoint)"
        self._report()

    def _report(self, plots: bool = False) -> None:
        """The end-of-run summary; the plots only after a fit (an evaluation keeps the training curves)."""
        if not self.trainer.is_global_zero:
            return
        written = plot_metrics(self.out / "metrics.csv", self.out) if plots else []
        print(self.parts.summary.report(self.trainer, self.parts.export, self.results))
        if written:
            print(f"  plots: {', '.join(str(p) for p in written)}")


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _stage_metrics(trainer: Trainer, stage: str) -> dict[str, float]:
    prefixes = STAGE_PREFIXES[stage]
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.split("/")[0] in prefixes}


def _check_batch_counts(trainer: Any) -> None:
    for key in BATCH_COUNTS:
        value = trainer[key]
        if isinstance(value, str):
            value = yaml.safe_load(value)
            trainer[key] = value
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0) and \
                not (isinstance(value, float) and 0.0 <= value <= 1.0):
            raise ConfigError(f"trainer.{key}: {value!r} is neither a batch count (an int >= 0) nor a fraction "
                              f"(a float in [0, 1])")


def with_subcommand(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` with its subcommand, and whether to test after fit: without a subcommand (``-c X.yaml``
    alone) a run fits, tests the best checkpoint and exports, as train.py always did."""
    if not argv or argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help"):
        return argv, False
    return ["fit", *argv], True


def run(argv: Optional[list[str]] = None) -> ZooCLI:
    """Run one command line (without the program name); the CLI object holds the trainer, the task
    (``model``), the data, the run folder's parts and the evaluation ``results``. Errors propagate."""
    args, then_test = with_subcommand(list(sys.argv[1:] if argv is None else argv))
    with ExitStack() as resources:  # the run folder's lock and the console filters, released however the run ends
        resources.enter_context(quiet_console())
        return ZooCLI(args, resources, then_test=then_test)


def main(argv: Optional[list[str]] = None) -> int:
    """The console entry point: 0 when the run finished, 2 for bad input (one sentence on stderr), 1 for a
    run stopped by a non-finite loss or a full disk."""
    try:
        run(argv)
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
