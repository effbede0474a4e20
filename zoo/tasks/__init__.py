"""LightningModules for each task, sharing :class:`BaseTask`. ``TASKS`` maps config names to classes."""
from .base import BaseTask, NonFiniteLossError
from .classification import ClassificationTask
from .super_resolution import SuperResolutionTask
from .language_model import LanguageModelTask
from .vqvae import VQVAETask
from .scalewise_gen import ScalewiseGenerationTask
from .ema import ModelEma
from .optim import TimmOptimizer, TimmScheduler, create_optimizer, create_scheduler

TASKS = {"classification": ClassificationTask, "super_resolution": SuperResolutionTask,
         "language_model": LanguageModelTask}
TASKS["vqvae"] = VQVAETask
TASKS["scalewise_gen"] = ScalewiseGenerationTask

__all__ = ["BaseTask", "ClassificationTask", "ModelEma", "NonFiniteLossError", "SuperResolutionTask", "TASKS",
           "LanguageModelTask", "TimmOptimizer", "TimmScheduler", "create_optimizer", "create_scheduler"]
__all__ += ["ScalewiseGenerationTask", "VQVAETask"]
