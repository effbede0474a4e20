"""Running a model with hooks on some of its modules: what costing, scoring and refitting all do."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["run_with_hooks"]


def run_with_hooks(model: nn.Module, hooks: dict[nn.Module, Callable], calls: Iterable[tuple], pre: bool = False) -> None:
    """``model(*args)`` for each ``args`` of ``calls`` under ``no_grad``, with each hook registered on its module
    (a forward hook, or a pre-hook with ``pre=True``) and removed afterwards, also when the forward fails."""
    register = (lambda m, h: m.register_forward_pre_hook(h)) if pre else (lambda m, h: m.register_forward_hook(h))
    handles = [register(module, hook) for module, hook in hooks.items()]
    try:
        with torch.no_grad():
            for args in calls:
                model(*args)
    finally:
        for handle in handles:
            handle.remove()
