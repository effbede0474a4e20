"""What a pruned model's layers take to run here, measured: the cost behind ``target="latency=..."``.

MACs are a poor stand-in for time at small widths. A CPU's conv kernels work in blocks of channels
(16 fp32 lanes with AVX-512), so a 3x3 conv of 24 channels takes nearly as long as one of 32, and one of
16 a third to a fifth of that (measured on this repository's CPU: benchmarks/RESULTS.md, "Channel
pruning"). So,
as HALP (Shen et al., "Structural Pruning via Latency-Saliency Knapsack", NeurIPS 2022) and
NetAdapt (Yang et al., ECCV 2018) do with their lookup tables, each conv and linear layer is timed
alone at the widths a candidate pruning would give it, on the input shape it sees in the model, on
the model's device, and the model's cost is the sum. Timings are cached per (layer, widths), so the
bisection in :func:`zoo.pruning.prune` times each width once. Element-wise work is left out, as in
the MACs count, and so is a layer whose weights only a fused kernel reads (a sparse Mixture-of-Channels
FFN gathers its rows itself): what is timed is every conv and linear module the forward pass calls.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .groups import Group
from .hooks import run_with_hooks
from .replay import cut_of

__all__ = ["LatencyModel", "Timer", "time_layer"]

# (layer at full width, its input at full width, kept input channels, kept output channels) -> milliseconds
Timer = Callable[[nn.Module, torch.Tensor, int, int], float]


@torch.inference_mode()
def time_layer(layer: nn.Module, example: torch.Tensor, cin: int, cout: int, repeats: int = 5) -> float:
    """Median milliseconds of ``layer``'s op at ``cin`` inputs and ``cout`` outputs on ``example``'s shape,
    after one warm-up run (random weights: the time does not depend on their values)."""
    factory = {"device": example.device, "dtype": example.dtype}
    if isinstance(layer, nn.Conv2d):  # (B, C, H, W) in the layout the model hands the layer (kernels differ)
        x = torch.randn(*example.shape[:1], cin, *example.shape[2:], **factory)
        if not example.is_contiguous() and example.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        depthwise = layer.groups == layer.in_channels == layer.out_channels > 1
        groups = cin if depthwise else layer.groups  # pruning cuts no other grouped conv: its widths are full
        weight = torch.randn(cout, cin // groups, *layer.kernel_size, **factory)
        bias = torch.randn(cout, **factory) if layer.bias is not None else None

        def run() -> torch.Tensor:
            return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, groups)
    else:
        x = torch.randn(*example.shape[:-1], cin, **factory)  # (..., C)
        weight = torch.randn(cout, cin, **factory)
        bias = torch.randn(cout, **factory) if layer.bias is not None else None

        def run() -> torch.Tensor:
            return F.linear(x, weight, bias)
    sync = torch.cuda.synchronize if example.device.type == "cuda" else (lambda: None)
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class LatencyModel:
    """Measured milliseconds of the model's conv and linear layers when group ``g`` loses ``removed[g]``
    channels; the same ``estimate(removed)`` as :class:`zoo.pruning.cost.CostModel`.

    Args:
        model: the model at full width, in the mode it will run in.
        groups: its pruning groups.
        example: one input batch, of the size and on the device it will run on.
        timer: times one layer at given widths (default :func:`time_layer`).
    """

    def __init__(self, model: nn.Module, groups: list[Group], example: torch.Tensor, timer: Timer | None = None) -> None:
        self.timer = timer or time_layer
        self.inputs: dict[str, torch.Tensor] = {}

        def record(name: str):
            def hook(module: nn.Module, args, output) -> None:
                self.inputs.setdefault(name, args[0].detach())
            return hook

        self.layers: dict[str, nn.Module] = {name: m for name, m in model.named_modules()
                                             if isinstance(m, (nn.Conv2d, nn.Linear))}
        run_with_hooks(model, {module: record(name) for name, module in self.layers.items()}, [(example,)])
        self.layers = {name: layer for name, layer in self.layers.items() if name in self.inputs}  # run layers only
        modules = dict(model.named_modules())
        # (layer, 0 for outputs / 1 for inputs) -> (group, indices one of its channels takes); a dimension
        # listed by several members of one group (a cut and the same weight through a gate) counts once
        shares: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
        for index, group in enumerate(groups):
            for member in group.members:
                for path, axis in cut_of(modules[member.module], member.dim, member.module).axes:
                    owner, _, leaf = (f"{member.module}.{path}" if member.module else path).rpartition(".")
                    if leaf == "weight" and owner in self.layers and axis in (0, 1):
                        shares[(owner, axis)][index] = member.blocks * member.unit
        self.shares = {key: list(value.items()) for key, value in shares.items()}
        self.cache: dict[tuple[str, int, int], float] = {}
        self.full = self.estimate([0] * len(groups))

    def _widths(self, name: str, removed: list[int]) -> tuple[int, int]:
        layer = self.layers[name]
        full_in = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        full_out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        cut_in = sum(removed[g] * n for g, n in self.shares.get((name, 1), ()))
        cut_out = sum(removed[g] * n for g, n in self.shares.get((name, 0), ()))
        if isinstance(layer, nn.Conv2d) and layer.groups == full_in == full_out > 1:  # depthwise: one cut, both sides
            return full_out - cut_out, full_out - cut_out
        return full_in - cut_in, full_out - cut_out

    def layer_ms(self, removed: list[int]) -> dict[str, float]:
        """Each layer's measured milliseconds at the widths ``removed`` leaves it."""
        out = {}
        for name, layer in self.layers.items():
            cin, cout = self._widths(name, removed)
            key = (name, cin, cout)
            if key not in self.cache:
                self.cache[key] = self.timer(layer, self.inputs[name], cin, cout)
            out[name] = self.cache[key]
        return out

    def estimate(self, removed: list[int]) -> float:
        return float(sum(self.layer_ms(removed).values()))
