"""Exponential moving average of a model's weights (Polyak averaging), kept beside the model."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class _Pairs:
    """The averaged tensors and the model's tensors they follow, in matching order."""

    model: nn.Module  # the model they were taken from: updating from another one takes them again
    ema_float: list[torch.Tensor]
    model_float: list[torch.Tensor]
    ema_other: list[torch.Tensor]  # integer and bool buffers (BatchNorm's step count): copied, not averaged
    model_other: list[torch.Tensor]


class ModelEma(nn.Module):
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step, over the parameters
    and the buffers a state dict saves (integer buffers are copied).

    ``warmup`` ramps the decay as ``min(decay, (1 + n) / (10 + n))`` so early averages are not
    dominated by the random init. The copy is a submodule of the task, so Lightning checkpoints
    carry it and a resumed run continues the same average.

    An update is one ``torch._foreach_lerp_`` over tensor lists taken on the first update, instead of
    two ``state_dict()`` walks and a lerp per tensor every step (``benchmarks/ema.py``). Moving or
    casting the task replaces buffers (``Module._apply``), so the lists are taken again after it.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).requires_grad_(False)  # train/eval mode follows the task
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._pairs: _Pairs | None = None

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = self._pairs
        if pairs is None or pairs.model is not model:
            pairs = self._pairs = _pair_tensors(self.module, model)
        if pairs.ema_float:  # the foreach ops refuse empty lists
            torch._foreach_lerp_(pairs.ema_float, pairs.model_float, 1.0 - self.current_decay())
        if pairs.ema_other:
            torch._foreach_copy_(pairs.ema_other, pairs.model_other)
        self.num_updates += 1

    def _apply(self, fn: Any, recurse: bool = True) -> ModelEma:
        self._pairs = None  # .to() / .half() on the task put new buffers in both models
        return super()._apply(fn, recurse)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _pair_tensors(ema: nn.Module, model: nn.Module) -> _Pairs:
    """``model``'s parameters and saved buffers beside ``ema``'s of the same name (non-persistent buffers
    are derived values, never saved, so they are not averaged either; a tied parameter is listed once)."""
    saved = model.state_dict(keep_vars=True).keys()
    ema_tensors = dict(chain(ema.named_parameters(), ema.named_buffers()))
    pairs = _Pairs(model, [], [], [], [])
    for name, tensor in chain(model.named_parameters(), model.named_buffers()):
        if name not in saved:
            continue
        target = ema_tensors.get(name)
        if target is None or target.shape != tensor.shape or target.dtype != tensor.dtype:
            found = "nothing" if target is None else f"{tuple(target.shape)} {target.dtype}"
            raise ValueError(f"the EMA copy does not match the model at {name!r} (model {tuple(tensor.shape)} "
                             f"{tensor.dtype}, EMA {found}); build ModelEma from the model it follows and move "
                             f"or cast them together")
        if tensor.is_floating_point():
            pairs.ema_float.append(target)
            pairs.model_float.append(tensor)
        else:
            pairs.ema_other.append(target)
            pairs.model_other.append(tensor)
    return pairs
