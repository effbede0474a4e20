"""LightningModules for each task, sharing :class:`BaseTask`. ``TASKS`` maps config names to classes."""
from .base import BaseTask, NonFiniteLossError
from .classification import ClassificationTask
from .super_resolution import SuperResolutionTask
from .ema import ModelEma
from .optim import Lion, OptimizerConfig, SchedulerConfig

TASKS = {"classification": ClassificationTask, "super_resolution": SuperResolutionTask}

__all__ = ["BaseTask", "ClassificationTask", "Lion", "ModelEma", "NonFiniteLossError", "OptimizerConfig",
           "SchedulerConfig", "SuperResolutionTask", "TASKS"]
