"""Exponential moving average of a model's weights (Polyak averaging), kept beside the model."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; buffers are copied.

    ``warmup`` ramps the decay as ``min(decay, (1 + n) / (10 + n))`` so early averages are not
    dominated by the random init. The copy is a submodule of the task, so Lightning checkpoints
    carry it and a resumed run continues the same average.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).requires_grad_(False)  # train/eval mode follows the task
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_state = self.module.state_dict()
        for key, value in model.state_dict().items():
            target = ema_state[key]
            if value.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
