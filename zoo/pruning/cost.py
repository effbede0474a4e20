"""What a pruned model costs, estimated without building it.

A conv's multiply-accumulates are its weight's size times the output positions it is applied at, and
a linear layer's are its weight's size times the tokens it sees; removing a fraction of either weight
axis removes that fraction of both. So one forward pass at full width records each weight's output
positions, and any choice of kept channels is costed from the weights' axis ratios alone. Element-wise
work (activations, residual adds, the gates' rescale) is left out, as in the usual FLOPs counts
(fvcore, thop and Torch-Pruning's counter count the same layers). ``flops`` means these MACs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from .groups import Group
from .hooks import run_with_hooks
from .replay import cut_of

__all__ = ["CostModel", "layer_macs", "count_macs", "count_params"]


def layer_macs(model: nn.Module, *inputs: torch.Tensor) -> dict[str, float]:
    """Per-sample multiply-accumulates of every Conv2d / Linear weight in one forward of ``inputs``,
    keyed by the weight's name in ``model.named_parameters()``."""
    macs: dict[str, float] = {}

    def record(name: str):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            # (B, C_out, H, W) conv map or (B, ..., out) linear rows: the positions the weight is applied at
            batch = output.shape[0] if output.ndim > 1 else 1
            positions = output.numel() / (batch * module.weight.shape[0])
            macs[f"{name}.weight" if name else "weight"] = positions * module.weight.numel()
        return hook

    run_with_hooks(model, {module: record(name) for name, module in model.named_modules()
                           if isinstance(module, (nn.Conv2d, nn.Linear))}, [inputs])
    return macs


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> float:
    """Per-sample MACs of the model's convs and linears (see the module docstring)."""
    return float(sum(layer_macs(model, *inputs).values()))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class _Axis:
    full: int
    shares: list[tuple[int, int]]  # (group index, indices one of the group's channels takes along this axis)


class CostModel:
    """Cost of the model when group ``g`` loses ``removed[g]`` channels.

    ``costs`` maps tensor names to their full-width cost (MACs or parameter counts); each tensor's cost
    scales with the product, over its axes that groups cut, of the kept fraction of that axis.
    """

    def __init__(self, model: nn.Module, groups: list[Group], costs: dict[str, float]) -> None:
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        axes: dict[tuple[str, int], _Axis] = {}
        for index, group in enumerate(groups):
            for member in group.members:
                cut = cut_of(modules[member.module], member.dim, member.module)
                for path, axis in cut.axes:
                    name = f"{member.module}.{path}" if member.module else path
                    if name not in params:  # buffers carry no cost; a missing bias neither
                        continue
                    entry = axes.setdefault((name, axis), _Axis(params[name].shape[axis], []))
                    entry.shares.append((index, member.blocks * member.unit))
        self.costs = costs
        self.tensor_axes: dict[str, list[_Axis]] = defaultdict(list)
        for (name, _), entry in axes.items():
            if name in costs:
                self.tensor_axes[name].append(entry)
        self.full = float(sum(costs.values()))

    def estimate(self, removed: list[int]) -> float:
        total = self.full
        for name, entries in self.tensor_axes.items():
            ratio = 1.0
            for entry in entries:
                ratio *= (entry.full - sum(removed[g] * blocks for g, blocks in entry.shares)) / entry.full
            total -= self.costs[name] * (1.0 - ratio)
        return total
