"""LightningModules for each task, sharing :class:`BaseTask`. ``TASKS`` maps config names to classes."""
from .base import BaseTask, NonFiniteLossError
from .classification import ClassificationTask
from .super_resolution import SuperResolutionTask
from .language_model import LanguageModelTask
from .vqvae import VQVAETask
from .scalewise_gen import ScalewiseGenerationTask
from .ema import ModelEma
from .optim import Lion, OptimizerConfig, SchedulerConfig

TASKS = {"classification": ClassificationTask, "super_resolution": SuperResolutionTask,
         "language_model": LanguageModelTask}
TASKS["vqvae"] = VQVAETask
TASKS["scalewise_gen"] = ScalewiseGenerationTask

__all__ = ["BaseTask", "ClassificationTask", "Lion", "ModelEma", "NonFiniteLossError", "OptimizerConfig",
           "SchedulerConfig", "SuperResolutionTask", "TASKS", "LanguageModelTask"]
__all__ += ["ScalewiseGenerationTask", "VQVAETask"]
