"""Optimizers and per-step learning-rate schedules: timm's by name, or any class by ``class_path``.

A spec is what a config section holds, a plain dict (it travels in checkpoints' hyperparameters):

- ``{"name": "lion", "lr": 1e-4, ...}``: the arguments of :class:`TimmOptimizer` (timm's
  ``create_optimizer_v2``) or :class:`TimmScheduler` (timm's ``create_scheduler_v2``, in steps);
- ``{"class_path": "torch.optim.SGD", "init_args": {...}}``: that class, called with the parameter
  groups (an optimizer) or the optimizer (a scheduler); ``class_path`` may also name the two classes here.

Either way weight decay skips norms, biases and other 1-D tensors (and a model's ``no_weight_decay()``
names): timm's ``param_groups_weight_decay`` makes the groups.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional, Union

import torch
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler as TimmSchedulerBase
from torch import nn

from ..blocks.validation import check_kwargs, closest

Spec = dict[str, Any]
Schedule = Union[TimmSchedulerBase, torch.optim.lr_scheduler.LRScheduler]
# the names create_scheduler_v2 knows, in timm 1.0
TIMM_SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant", "none")


class TimmOptimizer:
    """timm's ``create_optimizer_v2``: ``name`` is any of ``timm.optim.list_optimizers()`` (adamw, adam,
    sgd (Nesterov), momentum, lion, lamb, adan, ...); ``betas`` / ``eps`` left None take the optimizer's
    defaults; ``layer_decay`` scales the lr per depth; ``kwargs`` go to the optimizer class."""

    def __init__(self, name: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05, momentum: float = 0.9,
                 betas: Optional[tuple[float, float]] = None, eps: Optional[float] = None,
                 layer_decay: Optional[float] = None, kwargs: Optional[dict] = None) -> None:
        known = list_optimizers()
        if name.lower().split("_")[-1] not in known:  # lookahead_<name> wraps one of them
            near = closest(name, known, n=1)
            raise ValueError(f"optimizer.name {name!r} is not one of timm's optimizers"
                             + (f"; did you mean {near[0]!r}?" if near else f" ({', '.join(known)})"))
        self.name, self.lr, self.weight_decay, self.momentum = name, lr, weight_decay, momentum
        self.extra = {k: v for k, v in {"betas": betas, "eps": eps}.items() if v is not None} | dict(kwargs or {})
        self.layer_decay = layer_decay

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        extra = {k: tuple(v) if k == "betas" else v for k, v in self.extra.items()}  # YAML gives lists
        return create_optimizer_v2(model, opt=self.name, lr=self.lr, weight_decay=self.weight_decay,
                                   momentum=self.momentum, layer_decay=self.layer_decay, **extra)


class TimmScheduler:
    """timm's ``create_scheduler_v2``, counted in optimizer steps: linear warmup over ``warmup_steps``
    (or ``warmup_ratio`` of the run) from ``warmup_lr_ratio * lr`` (None: ``lr / warmup_steps``, the
    first step's lr of a warmup that ends at lr), then ``name`` (cosine to ``min_lr_ratio * lr``; step:
    times ``gamma`` every ``step_size`` steps; constant; tanh, multistep, poly, wsd, ...). ``kwargs`` are
    more create_scheduler_v2 arguments (cycle_limit, k_decay, noise, ...)."""

    def __init__(self, name: str = "cosine", warmup_steps: int = 0, warmup_ratio: float = 0.0,
                 warmup_lr_ratio: Optional[float] = None, min_lr_ratio: float = 0.0, step_size: int = 1000,
                 gamma: float = 0.1, kwargs: Optional[dict] = None) -> None:
        if name not in TIMM_SCHEDULES:
            near = closest(name, TIMM_SCHEDULES, n=1)
            raise ValueError(f"scheduler.name {name!r} is not one of timm's schedules ({', '.join(TIMM_SCHEDULES)})"
                             + (f"; did you mean {near[0]!r}?" if near else ""))
        check_kwargs("scheduler.kwargs", dict(kwargs or {}), create_scheduler_v2)
        self.name, self.warmup_steps, self.warmup_ratio = name, warmup_steps, warmup_ratio
        self.warmup_lr_ratio, self.min_lr_ratio = warmup_lr_ratio, min_lr_ratio
        self.step_size, self.gamma, self.kwargs = step_size, gamma, dict(kwargs or {})

    def __call__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Optional[TimmSchedulerBase]:
        warmup = self.warmup_steps or int(self.warmup_ratio * total_steps)
        lr = optimizer.param_groups[0]["lr"]
        start = self.warmup_lr_ratio if self.warmup_lr_ratio is not None else 1.0 / max(warmup, 1)
        # one "epoch" per optimizer step; warmup_prefix: the decay spans the steps after the warmup
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=self.name, num_epochs=max(total_steps - warmup, 1), warmup_epochs=warmup,
            warmup_prefix=True, warmup_lr=start * lr, min_lr=self.min_lr_ratio * lr, decay_epochs=self.step_size,
            decay_rate=self.gamma, step_on_epochs=False, updates_per_epoch=1, **self.kwargs)
        return scheduler


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"class_path {class_path!r} cannot be imported; give a dotted path such as "
                         f"torch.optim.SGD") from None


def _split(spec: Optional[Spec], default: type) -> tuple[type, dict]:
    """A spec -> the class it names (``default`` when it gives arguments only) and its arguments."""
    spec = dict(spec or {})
    if "class_path" not in spec:
        return default, spec
    extra = set(spec) - {"class_path", "init_args"}
    if extra:
        raise ValueError(f"a class_path spec holds class_path and init_args; move {sorted(extra)} into init_args")
    return _import(spec["class_path"]), dict(spec.get("init_args") or {})


def check_optimizer(spec: Optional[Spec]) -> None:
    """Fail on a bad optimizer spec before any work (an unknown name, class or argument)."""
    cls, args = _split(spec, TimmOptimizer)
    if cls is TimmOptimizer:
        check_kwargs("optimizer", args, TimmOptimizer.__init__)
        TimmOptimizer(**args)
    elif not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"optimizer class_path {cls.__module__}.{cls.__name__} is not a torch.optim.Optimizer")
    else:
        check_kwargs(f"optimizer {cls.__name__}", args, cls.__init__)


def check_scheduler(spec: Optional[Spec]) -> None:
    cls, args = _split(spec, TimmScheduler)
    if cls is TimmScheduler:
        check_kwargs("scheduler", args, TimmScheduler.__init__)
        TimmScheduler(**args)
    elif not (inspect.isclass(cls) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler)):
        raise ValueError(f"scheduler class_path {cls.__module__}.{cls.__name__} is not a torch LRScheduler "
                         f"(ReduceLROnPlateau needs a metric per step, which this loop does not give)")
    else:
        check_kwargs(f"scheduler {cls.__name__}", args, cls.__init__)


def create_optimizer(model: nn.Module, spec: Optional[Spec] = None) -> torch.optim.Optimizer:
    cls, args = _split(spec, TimmOptimizer)
    if cls is TimmOptimizer:
        return TimmOptimizer(**args)(model)
    weight_decay = args.get("weight_decay", 0.0)
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay) if weight_decay \
        else [p for p in model.parameters() if p.requires_grad]
    return cls(groups, **args)


def create_scheduler(optimizer: torch.optim.Optimizer, spec: Optional[Spec], total_steps: int) -> Optional[Schedule]:
    """The schedule stepped after every optimizer step (None: a constant lr)."""
    cls, args = _split(spec, TimmScheduler)
    if cls is TimmScheduler:
        return TimmScheduler(**args)(optimizer, total_steps)
    return cls(optimizer, **args)


def step_schedule(scheduler: Schedule, steps_done: int) -> None:
    """Set the lr for the next optimizer step: timm's schedules are functions of the step count."""
    if isinstance(scheduler, TimmSchedulerBase):
        scheduler.step_update(num_updates=steps_done)
    else:
        scheduler.step()
