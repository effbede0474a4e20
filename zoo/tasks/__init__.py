"""LightningModules for each task, sharing :class:`BaseTask`. ``TASKS`` maps config names to classes."""
from .base import BaseTask, NonFiniteLossError
from .classification import ClassificationTask
from .ema import ModelEma
from .optim import Lion, OptimizerConfig, SchedulerConfig

TASKS = {"classification": ClassificationTask}

__all__ = ["BaseTask", "ClassificationTask", "Lion", "ModelEma", "NonFiniteLossError", "OptimizerConfig",
           "SchedulerConfig", "TASKS"]
