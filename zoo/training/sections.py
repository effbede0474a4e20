"""The zoo's own config sections: what ``zoo.create`` builds, which task trains it, on which data."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml


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


@dataclass
class PruneSection:
    """Channel pruning in the loop (``zoo.tasks.soft_pruning``): off while ``target`` is None.

    ``target`` as ``zoo.prune`` takes it (``flops=0.5``, ``params=0.3``, ``latency=0.4`` timed on a training
    batch, or group rates); ``mode`` ``soft``
    (masks fading from ``start_step`` to ``end_step``, the cut at the end; ``end_step`` None: the last
    step) or ``oneshot`` (pruned before the first step, then fine-tuned); ``calib_batches`` training
    batches score the channels; ``rates`` as ``zoo.prune`` takes it.
    """

    target: Optional[Union[str, float, dict]] = None
    importance: str = "gate"
    mode: str = "soft"
    start_step: int = 0
    end_step: Optional[int] = None
    calib_batches: int = 4
    min_keep: float = 0.1
    round_to: int = 1  # keep multiples of this many channels per group (16: the fp32 block of AVX-512 conv kernels)
    rates: str = "global"  # "sensitivity": scores weighed by each group's cost on the calibration batches; "greedy": searched
    reconstruct: bool = False  # oneshot: refit the layers reading cut channels by least squares (zoo.prune's option)


PRUNE_MODES = ("soft", "oneshot")
DICT_SECTIONS = ("model.kwargs", "task.args", "data.args")


def split_dict_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str, Any]]]:
    """Pull out ``--data.args.KEY VALUE`` (or ``=VALUE``): one entry of a dict section, merged into the
    config's dict after parsing, its value read as YAML (jsonargparse would keep "48" a string)."""
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
                    raise ValueError(f"{argv[i]} needs a value")
                i += 1
                value = argv[i]
            overrides.append((match.group(1), match.group(2), yaml.safe_load(value)))
        i += 1
    return rest, overrides
