"""The one rule for replacing modules by a fused kernel: only where nobody watches them.

A fused path computes several modules' outputs without calling their ``forward``, so a forward hook
or pre-hook on any of them (a feature extractor, a profiler, an activation statistic for
calibration) would silently see nothing. Every block and the ResNet epilogue ask :func:`can_fuse`
before they fuse; where it says no, they run their modules.
"""
from __future__ import annotations

from torch import nn
from torch.nn.modules import module as _module

from .validation import symbolic_tracing


def can_fuse(*modules: nn.Module) -> bool:
    """True when no forward hook or pre-hook is registered on any of ``modules`` or globally
    (``torch.nn.modules.module.register_module_forward_hook``)."""
    if symbolic_tracing():  # an FX graph records the modules, so a traced model runs them
        return False
    # PyTorch has no public query for registered hooks; the dicts below are where it keeps them
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
