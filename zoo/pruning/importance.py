"""How much each channel of a group matters: the criteria ``zoo.prune(importance=...)`` ranks by.

- ``gate``: the mean of the channel-attention gate over calibration batches, the zoo's own signal
  (the gate is what an SE / ECA / FcaNet / RCAN-CA block multiplies the channel by; Hu et al., CVPR
  2018 show it goes to near-constant, small values on channels the network has learnt to ignore).
  Channels no gate scores (a bottleneck's inner channels, an RCAB's middle conv, an SE's squeeze)
  get a *gate-weighted downstream* score: the L1 norm of the weights that read the channel, each
  output row weighted by the gate of the channel it writes (1 where that channel has no gate).
- ``l1``: the L1 norm of the filters that write the channel (Li et al., "Pruning Filters for
  Efficient ConvNets", ICLR 2017), each producing layer normalized by its mean; for a block's own
  dimension (a SwiGLU's hidden channels) the L1 norm of every weight slice the channel owns.
- ``bn``: |gamma| of the BatchNorms on the channel (Liu et al., "Network Slimming", ICCV 2017);
  ``l1`` for groups without a BatchNorm (RCAN has none).
- ``taylor``: sum of |w * dL/dw| over the channel's weights, accumulated over calibration batches
  (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019); the loss is
  ``loss_fn(output, target)`` where given, else the mean square of the output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..quant.calibrate import input_of
from .groups import Group, Member
from .hooks import run_with_hooks
from .replay import cut_of, dim_size

__all__ = ["IMPORTANCE", "register_importance", "Calibration", "score_groups", "NEEDS_DATA"]

Scorer = Callable[[nn.Module, list[Group], "Calibration"], list[torch.Tensor]]
IMPORTANCE: dict[str, Scorer] = {}
NEEDS_DATA: set[str] = set()  # criteria that run the model on calibration batches


def register_importance(name: str, needs_data: bool = False) -> Callable[[Scorer], Scorer]:
    def add(fn: Scorer) -> Scorer:
        IMPORTANCE[name] = fn
        if needs_data:
            NEEDS_DATA.add(name)
        return fn
    return add


@dataclass
class Calibration:
    """The batches a data-driven criterion runs, and the loss ``taylor`` differentiates."""

    batches: list
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def _plain_width(model: nn.Module, group: Group) -> int:
    # a member with an offset shares its dimension; the width is what a member without one holds
    for member in group.members:
        if member.offset == 0 and member.blocks == 1 and member.unit == 1:
            return dim_size(model.get_submodule(member.module), member.dim, member.module)
    member = group.members[0]
    size = dim_size(model.get_submodule(member.module), member.dim, member.module)
    return (size - member.offset) // (member.blocks * member.unit)


def group_width(model: nn.Module, group: Group) -> int:
    """The channel count of ``group`` in ``model`` now."""
    return _plain_width(model, group)


def per_channel(tensor: torch.Tensor, axis: int, member: Member, width: int) -> torch.Tensor:
    """(width, rest): the slices of ``tensor`` along ``axis`` that the group's channels own (``unit``
    indices each), the member's ``blocks`` copies summed."""
    moved = tensor.detach().movedim(axis, 0)
    span = width * member.unit
    rows = sum(moved[member.offset + b * span: member.offset + (b + 1) * span] for b in range(member.blocks))
    return rows.reshape(width, -1).float()  # (width, unit * everything else)


def _tensor(module: nn.Module, path: str) -> torch.Tensor | None:
    owner, _, leaf = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf, None)


def _producers(model: nn.Module, group: Group) -> list[tuple[Member, nn.Module]]:
    return [(m, model.get_submodule(m.module)) for m in group.members
            if m.dim == "out" and isinstance(model.get_submodule(m.module), (nn.Conv2d, nn.Linear))]


@register_importance("l1")
def l1_importance(model: nn.Module, groups: list[Group], calib: Calibration | None) -> list[torch.Tensor]:
    scores = []
    for group in groups:
        width = group_width(model, group)
        score = torch.zeros(width)
        for member, module in _producers(model, group):
            norms = per_channel(module.weight, 0, member, width).abs().sum(1)
            score += norms / norms.mean().clamp_min(1e-12)
        if not score.any():  # no conv or linear writes the channels by name (a block's own 'hidden'): all they own
            for member in group.members:
                module = model.get_submodule(member.module)
                for path, axis in cut_of(module, member.dim, member.module).axes:
                    tensor = _tensor(module, path)
                    if isinstance(tensor, nn.Parameter):
                        norms = per_channel(tensor, axis, member, width).abs().sum(1)
                        score += norms / norms.mean().clamp_min(1e-12)
        scores.append(score if score.any() else torch.ones(width))
    return scores


@register_importance("bn")
def bn_importance(model: nn.Module, groups: list[Group], calib: Calibration | None) -> list[torch.Tensor]:
    fallback = l1_importance(model, groups, calib)
    scores = []
    for group, l1 in zip(groups, fallback):
        width = group_width(model, group)
        norms = [model.get_submodule(m.module) for m in group.members if m.dim == "channels"
                 and isinstance(model.get_submodule(m.module), nn.modules.batchnorm._BatchNorm)]
        score = sum((n.weight.detach().abs().float()[:width] for n in norms if n.weight is not None), torch.zeros(width))
        scores.append(score if norms else l1)
    return scores


def _batches(calib: Calibration, what: str) -> list:
    if calib is None or not calib.batches:
        raise ValueError(f"importance={what!r} runs the model: pass calib=<a DataLoader or a list of input batches>")
    return calib.batches


@register_importance("taylor", needs_data=True)
def taylor_importance(model: nn.Module, groups: list[Group], calib: Calibration | None) -> list[torch.Tensor]:
    batches = _batches(calib, "taylor")
    params = dict(model.named_parameters())
    saliency = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        output = model(input_of(batch))
        target = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
        if calib.loss_fn is not None and target is not None:
            loss = calib.loss_fn(output, target)
        else:
            loss = output.float().pow(2).mean()
        loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                saliency[name] += (p.detach() * p.grad).abs().float()
    model.zero_grad(set_to_none=True)
    scores = []
    for group in groups:
        width = group_width(model, group)
        score = torch.zeros(width)
        for member in group.members:
            module = model.get_submodule(member.module)
            for path, axis in cut_of(module, member.dim, member.module).axes:
                name = f"{member.module}.{path}" if member.module else path
                if name in saliency:
                    score += per_channel(saliency[name], axis, member, width).sum(1)
        scores.append(score)
    return scores


def mean_gates(model: nn.Module, names: Iterable[str], batches: list) -> dict[str, torch.Tensor]:
    """The (C,) mean gate of each named channel-gate block over ``batches`` (hooks recompute the gate from the
    block's input; a hooked block also runs unfused, so the gate is the module's own)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args, output) -> None:
            gate = module.channel_gate(args[0]).float()  # (B, C)
            sums[name] = sums.get(name, 0) + gate.sum(0)
            counts[name] = counts.get(name, 0) + gate.shape[0]
        return hook

    run_with_hooks(model, {model.get_submodule(name): record(name) for name in set(names)},
                   [(input_of(batch),) for batch in batches])
    return {name: sums[name] / counts[name] for name in sums}


@register_importance("gate", needs_data=True)
def gate_importance(model: nn.Module, groups: list[Group], calib: Calibration | None) -> list[torch.Tensor]:
    batches = _batches(calib, "gate")
    gates = mean_gates(model, [g for group in groups for g in group.gates], batches)
    scores: list[torch.Tensor | None] = []
    for group in groups:
        found = [gates[name] for name in group.gates if name in gates]
        scores.append(torch.stack(found).mean(0) if found else None)
    # which group a layer's output belongs to, to weight the rows that read a gateless channel
    out_group = {m.module: i for i, group in enumerate(groups) for m in group.members if m.dim == "out"}
    fallback = l1_importance(model, groups, calib)
    for i, group in enumerate(groups):
        if scores[i] is not None:
            continue
        width = group_width(model, group)
        score = torch.zeros(width)
        for member in group.members:
            module = model.get_submodule(member.module)
            if member.dim != "in" or not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            if member.unit != 1:
                continue
            reads = per_channel(module.weight, 1, member, width)  # (width, out * kernel)
            rows = module.weight.shape[0]
            weight = scores[out_group[member.module]] if member.module in out_group else None
            weight = weight if weight is not None and weight.numel() == rows else torch.ones(rows)
            reads = reads.reshape(width, rows, -1).abs().sum(2)  # (width, out)
            score += reads @ weight
        scores[i] = score if score.any() else fallback[i]
    return scores  # type: ignore[return-value]


def score_groups(model: nn.Module, groups: list[Group], importance: str, calib: Calibration | None) -> list[torch.Tensor]:
    """Each group's per-channel scores under ``importance``, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return [s.float().cpu() for s in IMPORTANCE[importance](model, groups, calib)]
    finally:
        model.train(was_training)
