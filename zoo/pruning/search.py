"""Per-group widths by a greedy search on a calibration metric: ``zoo.prune(..., rates="greedy")``.

One global ranking of normalized scores (``rates="global"``) cuts a group wherever its channels rank low,
whatever the cut costs the network as a whole, and with ``round_to`` a whole block of channels goes at once:
a 32-wide residual trunk drops to 16 as soon as 16 of its channels rank low. The greedy search measures
instead. From the full model, each round takes the one step, among every group's next step (its next
``step`` lowest-scored channels), that raises the calibration metric least per unit of cost it saves
(counting no saving beyond what the target still needs, so a last, large step such as halving the trunk
does not win over the small one that suffices), until the estimated cost meets the target: NetAdapt's loop (Yang et al., ECCV 2018) with the candidates
scored on the calibration batches instead of fine-tuned, and HALP's ratio of lost saliency to saved
latency (Shen et al., NeurIPS 2022) with the loss measured rather than summed from channel scores.

A rise measured on a less-pruned model is taken as a lower bound of its rise now (cutting more rarely
makes a group matter less), so a round re-measures only the candidate it is about to take until the best
candidate is a fresh one (lazy greedy evaluation). The search is deterministic for fixed batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..quant.calibrate import input_of

__all__ = ["CalibrationMetric", "greedy_removal", "group_step"]


class CalibrationMetric:
    """The calibration loss (``loss_fn`` on (input, target) batches), or without labels the output's relative
    squared change against the model's outputs when this object was made, averaged over the batches.
    Called on the model as it is at the call (in eval mode, without gradients)."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, batches: list, loss_fn: Callable | None) -> None:
        self.model, self.batches, self.loss_fn = model, batches, loss_fn
        self.labelled = loss_fn is not None and all(isinstance(b, (list, tuple)) and len(b) > 1 for b in batches)
        self.inputs = [input_of(b) for b in batches]
        was_training = model.training
        model.eval()
        try:
            self.reference = [model(x) for x in self.inputs]
        finally:
            model.train(was_training)

    @torch.no_grad()
    def __call__(self) -> float:
        was_training = self.model.training
        self.model.eval()
        try:
            outs = [self.model(x) for x in self.inputs]
        finally:
            self.model.train(was_training)
        if self.labelled:
            return sum(float(self.loss_fn(o, b[1])) for o, b in zip(outs, self.batches)) / len(outs)
        return sum(float((o - r).pow(2).sum() / r.pow(2).sum().clamp_min(1e-12))
                   for o, r in zip(outs, self.reference)) / len(outs)


def group_step(width: int, round_to: int, steps_per_group: int = 8) -> int:
    """How many channels one greedy step takes from a group: a multiple of ``round_to``, about
    ``width / steps_per_group`` (so a search over a wide network stays a few rounds per group)."""
    return round_to * max(1, math.ceil(width / steps_per_group / round_to))


@dataclass
class _Measured:
    removed: int  # the group's removed count after its step
    value: float  # the metric with the step taken
    rise: float  # over the metric of the state it was measured on (0 at least)
    version: int  # that state: the number of steps taken before it


def greedy_removal(widths: list[int], floors: list[int], steps: list[int], cost: Callable[[list[int]], float],
                   budget: float, measure: Callable[[list[int]], float]) -> list[int]:
    """The removed count of each group once the greedy search brings ``cost(removed)`` to ``budget`` or below.

    ``measure(removed)`` is the calibration metric of the model with those channels removed (zeroed);
    ``steps[g]`` the channels one step takes from group ``g``, which keeps a multiple of it (or all it has)
    and never goes below ``floors[g]``. A step that saves nothing on its own (a width between two of the
    CPU kernels' channel blocks runs as slowly as the next) is extended by further steps until it saves.
    Raises ``ValueError`` when every group at its lowest step still misses the budget.
    """
    count = len(widths)
    # the most each group can lose: down to the lowest multiple of its step at or above its floor
    deepest = [w - min(-(-f // s) * s, w) for w, f, s in zip(widths, floors, steps)]
    if cost(deepest) > budget:
        raise ValueError(f"out of reach: every group cut to its floor still costs "
                         f"{cost(deepest) / cost([0] * count):.3f} of the full model")
    removed = [0] * count
    now, version = measure(removed), 0
    measured: dict[int, _Measured] = {}

    def next_step(g: int, current: float) -> tuple[int, float] | None:
        """The group's removed count after its next step that saves cost, and the saving."""
        kept = (widths[g] - removed[g] - 1) // steps[g] * steps[g]  # the next multiple of the step below
        while widths[g] - kept <= deepest[g]:
            trial = removed.copy()
            trial[g] = widths[g] - kept
            saving = current - cost(trial)
            if saving > 0:
                return trial[g], saving
            kept -= steps[g]
        return None

    while (current := cost(removed)) > budget:
        options = {g: step for g in range(count) if (step := next_step(g, current)) is not None}

        def ratio(g: int) -> float:  # the rise per saved cost; a step never measured leads (and is measured)
            known = measured.get(g)
            useful = min(options[g][1], current - budget)  # a saving past the budget buys nothing
            return known.rise / useful if known is not None and known.removed == options[g][0] else -1.0

        while True:
            g = min(options, key=lambda k: (ratio(k), k))
            known = measured.get(g)
            if known is not None and known.removed == options[g][0] and known.version == version:
                break  # the best step is measured on this state: take it
            trial = removed.copy()
            trial[g] = options[g][0]
            value = measure(trial)
            measured[g] = _Measured(trial[g], value, max(value - now, 0.0), version)
        removed[g] = options[g][0]
        now = measured.pop(g).value
        version += 1
    return removed
