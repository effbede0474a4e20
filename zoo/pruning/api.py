"""``zoo.prune``: structured channel pruning of the zoo's families.

The family declares its dependency groups (``model.pruning_groups()``); a criterion of
:data:`~zoo.pruning.importance.IMPORTANCE` scores each group's channels; the per-group rates come from
one global ranking under the target (the automated per-layer rates of Liu et al., "Conditional
Automated Channel Pruning", 2021, in its simplest form: scores normalized by their group's mean, one
threshold over all groups, found by bisection on the estimated cost: MACs, parameters, or the layers'
time measured on this machine; ``rates="sensitivity"`` first weighs each group by the calibration loss
its pruning alone costs; ``rates="greedy"`` searches the widths step by step on that loss instead,
:mod:`zoo.pruning.search`); then every member of a group loses the same channels. The result is a smaller
dense model of the same class, which ``save_pretrained`` records and ``zoo.create(name, pretrained=folder)``
rebuilds.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable

import torch
from torch import nn

from zoo.blocks.validation import closest, owner_name, unknown_name_error

from ..quant.calibrate import input_of
from .cost import CostModel, count_params, layer_macs
from .groups import Group
from .importance import IMPORTANCE, NEEDS_DATA, Calibration, group_width, score_groups
from .latency import LatencyModel
from .reconstruct import refit_after_cut
from .replay import ATTR_PREFIX, check_record, cut_of, dim_size, shrink
from .search import CalibrationMetric, greedy_removal, group_step
from .target import PruneTarget

__all__ = ["prune", "record_widths", "plan_pruning", "apply_plan", "soft_mask", "slice_state_dict", "PrunePlan",
           "PruneReport", "format_report", "check_importance"]

RATES = ("global", "sensitivity", "greedy")  # how a FLOPs, parameter or latency target is shared among the groups


@dataclass
class PruneReport:
    """What a prune did: the cost before and after, and each group's width."""

    target: PruneTarget
    importance: str
    macs: tuple[float, float]
    params: tuple[int, int]
    widths: dict[str, tuple[int, int]]  # group -> (before, after)
    latency: tuple[float, float] | None = None  # a latency target: the layers' measured ms, before and after


@dataclass
class PrunePlan:
    """Which indices of each pruned module dimension stay (sorted), and the report of the choice. A plan is
    applied at once (:func:`apply_plan`), or first faded in during training (:func:`soft_mask`)."""

    keep: dict[tuple[str, str], torch.Tensor]  # (module name, dimension) -> kept indices
    report: PruneReport
    example: torch.Tensor  # the input the costs were measured on


def prune(model: nn.Module, target: object, importance: str = "gate", calib: Iterable | None = None, *,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          num_batches: int | None = None, min_keep: float = 0.1, round_to: int = 1,
          example_input: torch.Tensor | None = None, rates: str = "global", reconstruct: bool = False,
          verbose: bool = False) -> nn.Module:
    """Remove whole channels from ``model`` in place and return it, a smaller dense model of its family.

    Args:
        model: a zoo model whose family declares ``pruning_groups()`` (ResNet / SE / ECA / FcaNet, RCAN, HAN,
            ChannelViT, the MoC LM).
        target: ``"flops=0.5"`` (remove half the conv/linear MACs), ``"params=0.3"``, ``"latency=0.4"`` (remove
            40% of the conv/linear layers' time, each layer timed alone at its candidate widths on this machine
            and ``example_input``'s device: :mod:`zoo.pruning.latency`), a number (a FLOPs fraction) or
            ``{group name: rate}``; 0 leaves the model as it is.
        importance: a name of :data:`zoo.pruning.IMPORTANCE` (``gate``, ``l1``, ``bn``, ``taylor``).
        calib: batches (inputs, or (input, target) pairs) for ``gate`` and ``taylor``, and for costing
            the model at its input size.
        loss_fn: the loss ``taylor`` differentiates (default: the output's mean square).
        num_batches: use at most this many calibration batches.
        min_keep: every group keeps at least this fraction of its channels (and its own ``min_keep``).
        round_to: every group keeps a multiple of this many channels (or all of them): conv kernels work in
            blocks of channels (16 fp32 lanes on an AVX-512 CPU) and run a width between two multiples as
            slowly as the next one, so 16 there turns saved MACs into saved time (``benchmarks/conv_widths.py``).
        example_input: the input batch the costs are measured on, at the size and batch the model will run
            (a ``latency`` target times its layers on it); default: the first calibration batch, else the
            model's ``example_inputs`` or its pretrained cfg's input size.
        rates: how a FLOPs or parameter target is shared among the groups. ``"global"``: one ranking of every
            channel by its score, normalized within its group. ``"sensitivity"``: the per-layer rates chosen
            on the calibration batches first (each group pruned alone at the target fraction, the loss rise,
            or the output's relative change without labels, measured; a group's scores are scaled by
            ``1 + log(1 + its rise / the mean rise)``), so a group the model leans on keeps more channels.
            ``"greedy"``: the widths searched step by step from the full model, each step the cut of one group's
            next lowest-scored channels (a multiple of ``round_to``, about an eighth of the group) that raises
            that calibration metric least per unit of cost saved (:mod:`zoo.pruning.search`): slower (a few
            forward passes over the batches per step), and the one that weighs a whole block of channels
            against the time it saves when ``round_to`` makes the steps coarse.
        reconstruct: after the cut, refit every conv and linear layer that reads removed channels by least
            squares on the calibration batches, in call order, so its output stays as close as it can to the
            full model's (:mod:`zoo.pruning.reconstruct`; He et al. and ThiNet, ICCV 2017). Needs ``calib``;
            holds a copy of the full model meanwhile.
        verbose: print the report.

    The model gets ``prune_record`` (module -> new widths: what ``save_pretrained`` writes) and
    ``prune_report`` (a :class:`PruneReport`).
    """
    if reconstruct and calib is None:
        raise ValueError("reconstruct=True refits the layers after the cut on calibration batches: pass calib=<a "
                         "DataLoader or a list of input batches>, or leave reconstruct off")
    batches = list(islice(iter(calib), num_batches)) if calib is not None else None  # read once, used twice
    plan = plan_pruning(model, target, importance, batches, loss_fn=loss_fn, min_keep=min_keep, round_to=round_to,
                        example_input=example_input, rates=rates)
    full = copy.deepcopy(model) if reconstruct else None  # what the refit reproduces, layer by layer
    apply_plan(model, plan)
    if full is not None:
        refit_after_cut(full, model, plan.keep, batches)
    if verbose:
        print(format_report(model.prune_report))
    return model


def plan_pruning(model: nn.Module, target: object, importance: str = "gate", calib: Iterable | None = None, *,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 num_batches: int | None = None, min_keep: float = 0.1, round_to: int = 1,
                 example_input: torch.Tensor | None = None, rates: str = "global") -> PrunePlan:
    """Choose the channels :func:`prune` removes (same arguments), without changing the model."""
    arch = owner_name(model)
    spec = PruneTarget.parse(target)
    check_importance(importance)
    if not 0 < min_keep <= 1:
        raise ValueError(f"min_keep must be the fraction of each group kept at least, in (0, 1]; got {min_keep!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a whole number of channels >= 1 (1: no rounding, 8: multiples of 8); "
                         f"got {round_to!r}")
    if getattr(model, "quant_spec", None) is not None:
        raise ValueError(f"{arch} is quantized; prune the float model, then quantize it (zoo.quantize)")
    if not callable(getattr(model, "pruning_groups", None)):
        raise TypeError(f"{arch} ({type(model).__name__}) declares no pruning groups: zoo.prune supports the ResNet "
                        f"families (SE / ECA / FcaNet), RCAN, HAN, ChannelViT and the MoC LM")
    batches = list(islice(iter(calib), num_batches)) if calib is not None else []
    if rates not in RATES:
        raise ValueError(f"rates must be one of {', '.join(RATES)}; got {rates!r}")
    if rates != "global" and spec.kind == "rates":
        raise ValueError(f"rates={rates!r} chooses the group rates under a 'flops=', 'params=' or 'latency=' target, and "
                         f"this target names them itself: give one or the other")
    if rates != "global" and not batches:
        raise ValueError(f"rates={rates!r} measures each group's effect on calibration batches: pass calib=<a "
                         f"DataLoader or a list of input batches>, or use rates='global'")
    if importance in NEEDS_DATA and not batches:
        raise ValueError(f"importance={importance!r} runs the model: pass calib=<a DataLoader or a list of input "
                         f"batches>, or use importance='l1' or 'bn', which read the weights only")
    groups = model.pruning_groups()
    modules = dict(model.named_modules())
    for group in groups:  # an unknown layer kind is refused before anything is scored or cut
        for member in group.members:
            cut_of(modules[member.module], member.dim, member.module)
    names = [g.name for g in groups]
    for name in spec.rates:
        if name not in names:
            near = closest(name, names)
            raise ValueError(f"target names group {name!r}, which {arch} lacks" +
                             (f"; did you mean {', '.join(map(repr, near))}?" if near else f"; its groups: {names[:8]}"))

    example = example_input if example_input is not None else input_of(batches[0]) if batches else _example(model)
    was_training = model.training
    model.eval()
    macs = layer_macs(model, example)
    model.train(was_training)
    widths = [group_width(model, g) for g in groups]
    latency = None
    if spec.kind != "rates" and spec.amount == 0:
        removed = [0] * len(groups)
        scores = [torch.zeros(w) for w in widths]
    else:
        scores = score_groups(model, groups, importance, Calibration(batches, loss_fn))
        floors = [min(w, max(g.min_keep, math.ceil(min_keep * w))) for g, w in zip(groups, widths)]
        if spec.kind == "rates":
            removed = [min(round(spec.rates.get(g.name, 0.0) * w), w - f) for g, w, f in zip(groups, widths, floors)]
            removed = _rounded(removed, widths, round_to)
        else:
            cost = _cost_model(model, groups, spec, macs, example)
            if rates == "greedy":
                removed = _greedy(model, groups, scores, widths, floors, cost, spec, arch, round_to, batches, loss_fn)
            else:
                bias = (_sensitivity(model, groups, scores, widths, floors, spec.amount, batches, loss_fn)
                        if rates == "sensitivity" else None)
                removed = _global_threshold(cost, scores, floors, spec, arch, round_to, bias)
        if spec.kind == "latency":  # the layers' measured time before and after (cached: no rerun)
            latency = (cost.full, cost.estimate(removed))
    report = PruneReport(spec, importance, (float(sum(macs.values())), float("nan")), (count_params(model), 0),
                         {g.name: (w, w - r) for g, w, r in zip(groups, widths, removed)}, latency)
    return PrunePlan(_kept_indices(model, groups, scores, removed, widths), report, example)


def _cost_model(model: nn.Module, groups: list[Group], spec: PruneTarget, macs: dict[str, float],
                example: torch.Tensor) -> CostModel | LatencyModel:
    """What the target counts: MACs and parameters are estimated from the weights' axis ratios, latency is
    measured layer by layer on this machine (in eval mode, as the pruned model will run)."""
    if spec.kind == "latency":
        was_training = model.training
        model.eval()
        try:
            return LatencyModel(model, groups, example)
        finally:
            model.train(was_training)
    costs = macs if spec.kind == "flops" else {n: float(p.numel()) for n, p in model.named_parameters()}
    return CostModel(model, groups, costs)


def check_importance(importance: str) -> None:
    if importance not in IMPORTANCE:
        raise unknown_name_error("pruning importance", importance, IMPORTANCE) from None


def apply_plan(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Shrink every planned module dimension of ``model`` (the planned model, or a copy of it such as an EMA)
    to its kept indices, and record the widths in ``model.prune_record``."""
    modules = dict(model.named_modules())
    record = {name: dict(dims) for name, dims in (getattr(model, "prune_record", None) or {}).items()}
    for (name, dim), keep in plan.keep.items():
        shrink(modules[name], dim, keep, name)
        record.setdefault(name, {})[dim] = int(keep.numel())
    check_record(model, record)
    model.prune_record = record
    was_training = model.training
    model.eval()
    macs_after = sum(layer_macs(model, plan.example.to(next(model.parameters()).device)).values())
    model.train(was_training)
    report = plan.report
    model.prune_report = PruneReport(report.target, report.importance, (report.macs[0], float(macs_after)),
                                     (report.params[0], count_params(model)), report.widths, report.latency)
    return model


def record_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """The present width of every module dimension the family's groups touch, as a ``prune_record``: what lets
    a model pruned by another tool (Torch-Pruning) be saved with ``save_pretrained`` and rebuilt by
    ``zoo.create``. Only dimensions narrower than a fresh build's need recording, but recording all is harmless."""
    modules = dict(model.named_modules())
    record: dict[str, dict[str, int]] = {}
    for group in model.pruning_groups():
        for member in group.members:
            module = modules[member.module]
            record.setdefault(member.module, {})[member.dim] = dim_size(module, member.dim, member.module)
    return record


def _removed_indices(module: nn.Module, dim: str, keep: torch.Tensor, name: str) -> torch.Tensor:
    gone = torch.ones(dim_size(module, dim, name), dtype=torch.bool)
    gone[keep] = False
    return gone.nonzero().flatten()


@torch.no_grad()
def soft_mask(model: nn.Module, plan: PrunePlan, factor: float) -> None:
    """Multiply the weights of the channels ``plan`` removes by ``factor`` (soft masking: Kang and Han, "Soft
    Masking for Cost-Constrained Channel Pruning", ECCV 2022, decay the mask of the removed channels to zero
    while the rest train, so the final cut loses nothing the network still uses)."""
    modules = dict(model.named_modules())
    for (name, dim), keep in plan.keep.items():
        module = modules[name]
        gone = _removed_indices(module, dim, keep, name)
        for path, axis in cut_of(module, dim, name).axes:
            owner_path, _, leaf = path.rpartition(".")
            tensor = getattr(module.get_submodule(owner_path) if owner_path else module, leaf, None)
            if isinstance(tensor, nn.Parameter):
                rows = gone.to(tensor.device)
                tensor.index_copy_(axis, rows, tensor.index_select(axis, rows) * factor)


def slice_state_dict(state_dict: dict, model: nn.Module, plan: PrunePlan, prefix: str = "") -> None:
    """Cut a full-width state dict (``prefix`` + ``model``'s keys; a checkpoint written before the plan was
    applied) to the plan's kept indices, in place, so it loads into the pruned model."""
    for (name, dim), keep in plan.keep.items():
        if dim.startswith(ATTR_PREFIX):
            continue
        module = model.get_submodule(name)
        for path, axis in cut_of(module, dim, name).axes:
            key = prefix + (f"{name}.{path}" if name else path)
            tensor = state_dict.get(key)
            if tensor is not None and tensor.shape[axis] != keep.numel():
                state_dict[key] = tensor.index_select(axis, keep.to(tensor.device))


def _example(model: nn.Module) -> torch.Tensor:
    if callable(getattr(model, "example_inputs", None)):
        return model.example_inputs(1, 48)[0]
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224))
    param = next(model.parameters())
    return torch.rand(1, *size, device=param.device, dtype=param.dtype)  # (1, C, H, W)


def _rounded(removed: list[int], widths: list[int], round_to: int) -> list[int]:
    """Remove fewer channels where needed for each group to keep a multiple of ``round_to`` (or all it has)."""
    if round_to == 1:
        return removed
    kept = [min(w, -(-(w - r) // round_to) * round_to) for r, w in zip(removed, widths)]  # rounded up
    return [w - k for w, k in zip(widths, kept)]


class _Zeroed:
    """``with zeroed(removed):`` the model with each group's ``removed`` lowest-scored channels zeroed in place (the
    end of soft masking stands for their removal, with no copy of the model), restored on exit from the one copy
    of the parameters taken when this object is made, however many measurements follow."""

    def __init__(self, model: nn.Module, groups: list[Group], scores: list[torch.Tensor], widths: list[int]) -> None:
        self.model, self.groups, self.scores, self.widths = model, groups, scores, widths
        self.saved = {name: p.detach().clone() for name, p in model.named_parameters()}

    @contextlib.contextmanager
    def __call__(self, removed: list[int]):
        try:
            keep = _kept_indices(self.model, self.groups, self.scores, removed, self.widths)
            soft_mask(self.model, PrunePlan(keep, None, None), 0.0)
            yield self.model
        finally:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    p.copy_(self.saved[name])


def _sensitivity(model: nn.Module, groups: list[Group], scores: list[torch.Tensor], widths: list[int],
                 floors: list[int], amount: float, batches: list, loss_fn) -> list[float]:
    """Each group's weight in the global ranking, ``1 + log(1 + rise / mean rise)``: the rise of the
    :class:`~zoo.pruning.search.CalibrationMetric` when the group alone loses ``amount`` of its channels."""
    metric, zeroed = CalibrationMetric(model, batches, loss_fn), _Zeroed(model, groups, scores, widths)
    base = metric()
    rises = []
    for i, (width, floor) in enumerate(zip(widths, floors)):
        count = min(round(amount * width), width - floor)
        if count == 0:
            rises.append(0.0)
            continue
        with zeroed([count if j == i else 0 for j in range(len(groups))]):
            rises.append(max(metric() - base, 0.0))
    mean = sum(rises) / len(rises)
    return [1.0 + math.log1p(r / mean) if mean > 0 else 1.0 for r in rises]


def _greedy(model: nn.Module, groups: list[Group], scores: list[torch.Tensor], widths: list[int], floors: list[int],
            cost: CostModel | LatencyModel, spec: PruneTarget, arch: str, round_to: int, batches: list,
            loss_fn) -> list[int]:
    """The removed count of every group by the greedy search of :mod:`zoo.pruning.search`."""
    metric, zeroed = CalibrationMetric(model, batches, loss_fn), _Zeroed(model, groups, scores, widths)

    def measure(removed: list[int]) -> float:
        with zeroed(removed):
            return metric()

    steps = [group_step(w, round_to) for w in widths]
    try:
        return greedy_removal(widths, floors, steps, cost.estimate, cost.full * (1 - spec.amount), measure)
    except ValueError as error:
        raise ValueError(f"target {spec.kind}={spec.amount} is {error} for {arch} (rates='greedy' cuts whole steps of "
                         f"round_to={round_to} channels); lower the target, min_keep or round_to") from None


def _global_threshold(cost: CostModel, scores: list[torch.Tensor], floors: list[int], spec: PruneTarget,
                      arch: str, round_to: int = 1, bias: list[float] | None = None) -> list[int]:
    """The fewest channels to remove, lowest normalized score first across all groups (ties in group order),
    for the estimated cost to fall to ``1 - amount`` of the full model's; no group goes below its floor.
    ``bias`` scales each group's normalized scores (the sensitivity weights)."""
    bias = bias or [1.0] * len(scores)
    normalized = torch.cat([s / s.mean().clamp_min(1e-12) * b for s, b in zip(scores, bias)])
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    order = owner[torch.argsort(normalized, stable=True)]  # the group of each channel, lowest score first
    caps = torch.tensor([len(s) - f for s, f in zip(scores, floors)])
    budget = cost.full * (1 - spec.amount)

    widths = [len(s) for s in scores]

    def removed_at(count: int) -> list[int]:  # the first ``count`` channels of the global order go
        removed = torch.minimum(torch.bincount(order[:count], minlength=len(scores)), caps).tolist()
        return _rounded(removed, widths, round_to)

    if cost.estimate(removed_at(len(order))) > budget:
        most = 1 - cost.estimate(removed_at(len(order))) / cost.full
        raise ValueError(f"target {spec.kind}={spec.amount} is out of reach for {arch}: keeping each group's floor "
                         f"(min_keep) removes at most {most:.3f}; lower the target or min_keep")
    low, high = 0, len(order)  # the shortest prefix that meets the budget, by bisection
    while low < high:
        mid = (low + high) // 2
        if cost.estimate(removed_at(mid)) <= budget:
            high = mid
        else:
            low = mid + 1
    return removed_at(low)


def _kept_indices(model: nn.Module, groups: list[Group], scores: list[torch.Tensor], removed: list[int],
                  widths: list[int]) -> dict[tuple[str, str], torch.Tensor]:
    """Each group's ``removed`` lowest-scored channels, turned into the kept indices of every member dimension
    (a dimension several groups share, such as a concatenation's input, loses what each group removes)."""
    modules = dict(model.named_modules())
    dropped: dict[tuple[str, str], list[torch.Tensor]] = {}
    for group, score, count, width in zip(groups, scores, removed, widths):
        if count == 0:
            continue
        gone = torch.sort(torch.argsort(score, stable=True)[:count]).values  # the group's channel indices
        for member in group.members:
            units = (gone[:, None] * member.unit + torch.arange(member.unit)).flatten()  # (count * unit,)
            indices = torch.cat([member.offset + b * width * member.unit + units for b in range(member.blocks)])
            dropped.setdefault((member.module, member.dim), []).append(indices)
    kept = {}
    for (name, dim), parts in dropped.items():
        keep = torch.ones(dim_size(modules[name], dim, name), dtype=torch.bool)
        keep[torch.cat(parts)] = False
        kept[(name, dim)] = keep.nonzero().flatten()
    return kept


def format_report(report: PruneReport) -> str:
    """A few readable lines: cost before and after, and the groups that lost most."""
    (m0, m1), (p0, p1) = report.macs, report.params
    lines = [f"pruned with importance={report.importance!r}: MACs {m0 / 1e6:.1f}M -> {m1 / 1e6:.1f}M "
             f"({1 - m1 / m0:.1%} removed), params {p0 / 1e6:.3f}M -> {p1 / 1e6:.3f}M ({1 - p1 / p0:.1%} removed)"]
    if report.latency:
        t0, t1 = report.latency
        lines.append(f"  conv and linear layers, timed alone here: {t0:.2f} ms -> {t1:.2f} ms ({1 - t1 / t0:.1%} removed)")
    cut = sorted(((1 - after / before, name, before, after) for name, (before, after) in report.widths.items()),
                 reverse=True)
    for share, name, before, after in cut[:8]:
        if share > 0:
            lines.append(f"  {name:<28} {before:>5} -> {after:<5} ({share:.0%})")
    return "\n".join(lines)
