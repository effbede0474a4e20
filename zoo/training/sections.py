"""The zoo's own config sections: what ``zoo.create`` builds, which task trains it, on which data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class ModelSection:
    """Arguments of ``zoo.create``."""

    name: str = "resnet18"
    pretrained: Union[bool, str] = False
    quant: Optional[str] = None  # an integer model: inference only (validate, test, predict)
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
