"""``zoo.quantize(model, "auto", calib=..., budget=...)``: mixed precision chosen from a :class:`QuantReport`.

Each layer may be stored as 4-bit groups, 4-bit per channel, 8-bit or float; :func:`zoo.quant.analyze`
scores every choice with its best method by the model's output with only that layer quantized. The
plan is a greedy knapsack (as ModelOpt's ``auto_quantize`` and HAWQ-V3's bit allocation): start with
every layer at its smallest choice, then repeatedly take the upgrade with the largest drop in cost per
byte added that still fits the budget. The cost of a choice is the relative noise power it adds to
the output (``10^(-SQNR/10)``: independent noises add, so the plan's predicted SQNR is
``-10 log10(sum)``), or the drop of a user metric (summed). Ties fall to the earlier layer, so a fixed
calibration set always gives the same plan.

Budgets: an ``int`` of bytes or a string ``"2.5MB"`` / ``"300KiB"`` (the saved model's tensors), a
fraction of the float model's size (``0.18`` or ``"18%"``), average weight bits over the quantizable
layers, scales included (``"4.5bits"``), or an accuracy floor ``">=30"`` (the metric, output SQNR in
dB by default: the smallest plan predicted to reach it).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from itertools import islice
from typing import Iterable, Optional, Union

import torch
from torch import nn

from .analyze import DEFAULT_METHODS, SCORE_ELEMENTS, LayerAnalysis, Option, QuantReport, analyze
from .analyze import FLOAT, _check_metric, _first_images, _sqnr, stored_bytes
from .calibrate import calibrate, input_of
from .convert import _in_channels, _model_output, _producer_module
from .methods import METHODS, SimulatedLayer, Transform, shift_allowed
from .plan import LayerChoice, QuantPlan, register_planner

UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}
BUDGET_FORMS = ("bytes (an int, or '2.5MB' / '300KiB'), a fraction of the float size (0.18 or '18%'), "
                "average weight bits ('4.5bits') or an accuracy floor ('>=30': output SQNR in dB, or your metric)")


@dataclass(frozen=True)
class Budget:
    kind: str  # "bytes", "fraction", "bits" or "floor"
    value: float

    @classmethod
    def parse(cls, budget: Union[int, float, str, "Budget"]) -> "Budget":
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
            raise TypeError(f"budget={budget!r}: pass {BUDGET_FORMS}")
        if isinstance(budget, int):
            return cls._checked("bytes", float(budget), budget)
        if isinstance(budget, float):
            if not 0 < budget < 1:
                raise ValueError(f"budget={budget}: a float budget is a fraction of the float model's size, in (0, 1); "
                                 f"for bytes pass an int, for bits a string like '4.5bits'")
            return cls("fraction", budget)
        text = budget.strip().lower().replace(" ", "")
        number = r"(\d+(?:\.\d*)?|\.\d+)"
        if m := re.fullmatch(r">=" + r"(-?" + number[1:], text):
            return cls("floor", float(m.group(1)))
        if m := re.fullmatch(number + "%", text):
            return cls._checked("fraction", float(m.group(1)) / 100, budget)
        if m := re.fullmatch(number + "(bits?)", text):
            return cls._checked("bits", float(m.group(1)), budget)
        if m := re.fullmatch(number + "(b|kb|mb|gb|kib|mib|gib)", text):
            return cls._checked("bytes", float(m.group(1)) * UNITS[m.group(2)], budget)
        if re.fullmatch(number, text):
            return Budget.parse(float(text) if "." in text else int(text))
        raise ValueError(f"budget={budget!r} is not a budget; pass {BUDGET_FORMS}")

    @classmethod
    def _checked(cls, kind: str, value: float, given) -> "Budget":
        if value <= 0 or (kind == "fraction" and value > 1) or (kind == "bits" and value > 32):
            raise ValueError(f"budget={given!r} is out of range; pass {BUDGET_FORMS}")
        return cls(kind, value)

    def describe(self, limit: float) -> str:
        what = {"bytes": f"{self.value / 2**20:.3f} MiB", "fraction": f"{self.value:.1%} of fp32",
                "bits": f"{self.value:g} weight bits on average", "floor": f"floor {self.value:g}"}[self.kind]
        return what if self.kind in ("bytes", "floor") else f"{what} ({limit / 2**20:.3f} MiB)"


def _frontier(la: LayerAnalysis) -> list[Option]:
    """The layer's choices by size, without the dominated ones (larger and not cheaper in cost)."""
    kept: list[Option] = []
    for option in sorted(la.options.values(), key=lambda o: (o.bytes, o.cost)):
        if not kept or option.cost < kept[-1].cost:
            kept.append(option)
    return kept


def _limit(report: QuantReport, budget: Budget) -> tuple[int, int, float]:
    """The bytes no plan changes, the quantizable weights' count, and the budget in bytes (inf for a floor)."""
    fixed = report.fp32_bytes - sum(la.options["float"].bytes for la in report.layers)
    weights = sum(math.prod(la.weight_shape) for la in report.layers)
    limit = {"bytes": budget.value, "fraction": budget.value * report.fp32_bytes,
             "bits": fixed + budget.value * weights / 8, "floor": math.inf}[budget.kind]
    return fixed, weights, limit


def plan_from_report(report: QuantReport, budget) -> QuantPlan:
    """The greedy knapsack plan (module docstring) of ``report``, whose layers were scored at every precision."""
    budget = Budget.parse(budget)
    if not report.layers:
        raise ValueError("the report has no analyzed layer; nothing to plan")
    if any(len(la.options) < 2 for la in report.layers):
        raise ValueError("this report scored only the spec's precision; analyze with every_precision=True to plan")
    frontiers = [_frontier(la) for la in report.layers]
    fixed, weights, limit = _limit(report, budget)
    choice = [0] * len(frontiers)
    total = fixed + sum(f[0].bytes for f in frontiers)
    sqnr = report.metric.startswith("output SQNR")
    if total > limit:
        smallest = {"bytes": f"{total:.0f} bytes", "fraction": f"{total / report.fp32_bytes:.4f} of fp32",
                    "bits": f"{(total - fixed) * 8 / weights:.3f} bits"}[budget.kind]
        raise ValueError(f"budget {budget.describe(limit)} is below the smallest reachable size ({smallest}, every "
                         f"layer at its smallest precision); raise the budget to at least that")
    if budget.kind == "floor" and not sqnr and budget.value > report.float_score:
        raise ValueError(f"budget floor {budget.value:g} is above the float model's {report.metric} "
                         f"({report.float_score:.4g}); no plan reaches it: lower the floor")

    def predicted() -> float:
        cost = sum(f[c].cost for f, c in zip(frontiers, choice))
        if sqnr:
            return math.inf if cost == 0 else -10 * math.log10(cost)
        return report.float_score - cost

    while not (budget.kind == "floor" and predicted() >= budget.value):
        best = None  # (gain per byte, -layer index, layer index, option index)
        for i, (frontier, c) in enumerate(zip(frontiers, choice)):
            for j in range(c + 1, len(frontier)):
                extra = frontier[j].bytes - frontier[c].bytes
                gain = frontier[c].cost - frontier[j].cost
                if gain <= 0 or total + extra > limit:
                    continue
                key = (gain / max(extra, 1), -i, i, j)
                if best is None or key[:2] > best[:2]:
                    best = key
        if best is None:
            break
        _, _, i, j = best
        total += frontiers[i][j].bytes - frontiers[i][choice[i]].bytes
        choice[i] = j
    layers = {la.name: LayerChoice(f[c].precision, f[c].method if f[c].precision != "float" else "rtn")
              for la, f, c in zip(report.layers, frontiers, choice)}
    return QuantPlan(report.spec.with_(keep_w8=()), layers, budget.describe(limit), report.metric,
                     predicted(), int(total), {"fp32_bytes": report.fp32_bytes})


@register_planner("auto")
def auto_plan(model: nn.Module, calib, *, budget=None, metric=None, report: Optional[QuantReport] = None,
              base="w4a8", methods: Iterable[str] = DEFAULT_METHODS, num_batches: Optional[int] = None,
              score_elements: Optional[int] = SCORE_ELEMENTS, verify: int = 0, progress: bool = False) -> QuantPlan:
    """Analyze ``model`` at every precision (unless ``report`` is given) and plan under ``budget``.

    ``base``: the spec the plan starts from (its activations and its 4-bit weight format);
    ``score_elements``: the calibration input elements the output-SQNR scores run on (see :func:`analyze`);
    ``verify``: after the greedy plan, try the other methods on this many of its costliest layers with every
    layer quantized at once (:func:`verify_plan`); 0: no verification pass."""
    if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
        raise ValueError(f"verify={verify!r} is not a number of layers; pass an int >= 0 (0: no verification pass)")
    if budget is None:
        raise ValueError(f"quantize(model, 'auto') needs budget=: {BUDGET_FORMS}")
    budget = Budget.parse(budget)  # bad budgets fail before the analysis
    if report is None:
        if calib is None:
            raise ValueError("quantize(model, 'auto') needs calibration data: pass calib=<a DataLoader or a list of "
                             "input batches>")
        report = analyze(model, calib, base, metric, methods, num_batches=num_batches, every_precision=True,
                         score_elements=score_elements, progress=progress)
    plan = plan_from_report(report, budget)
    if verify:
        if calib is None:
            raise ValueError("verify= runs the model on calibration data: pass calib=<a DataLoader or a list of "
                             "input batches>")
        plan = verify_plan(model, calib, plan, report, budget, layers=verify, metric=metric, methods=methods,
                           num_batches=num_batches, score_elements=score_elements)
    return plan


@torch.no_grad()
def verify_plan(model: nn.Module, calib, plan: QuantPlan, report: QuantReport, budget, *, layers: int = 4,
                metric=None, methods: Iterable[str] = DEFAULT_METHODS, num_batches: Optional[int] = None,
                score_elements: Optional[int] = SCORE_ELEMENTS) -> QuantPlan:
    """A bounded accuracy-aware pass over a greedy plan (the tuning loop of Intel Neural Compressor).

    The planner sums one-layer costs and misses how errors compound; here every planned layer is quantized
    at once inside the float model (each as :class:`SimulatedLayer` with its method's transform), and the
    model is scored on the calibration images (output SQNR, or ``metric``). For the ``layers`` quantized
    layers with the largest planned cost, in that order, each other method at the same precision is tried
    and the best swap kept when it raises the measured score and the plan still fits ``budget``. At most
    ``1 + layers * (len(methods) - 1)`` evaluations; the order is fixed, so the pass is deterministic.
    """
    budget = Budget.parse(budget)
    methods = tuple(methods)
    user_metric, _ = _check_metric(metric)
    modules = dict(model.named_modules())
    names = [n for n, c in plan.layers.items() if c.precision != FLOAT]
    inputs = [input_of(b) for b in (islice(calib, num_batches) if num_batches is not None else calib)]
    calibration = calibrate(model, {n: modules[n] for n in names}, inputs)
    was_training = model.training
    model.eval()
    scored = _first_images(inputs, score_elements)
    reference = [_model_output(model, x) for x in scored]
    transforms: dict[tuple[str, str], Transform] = {}

    def simulated(name: str, method: str) -> SimulatedLayer:
        layer, spec = modules[name], plan.layer_spec(name)
        group = spec.group_for(_in_channels(layer))
        if (name, method) not in transforms:
            producer = _producer_module(model, calibration, name)
            t = METHODS[method](layer, calibration.stats[name], spec, group, producer=producer)
            transforms[name, method] = t if t.shift is None or shift_allowed(layer) else Transform(t.scale, None)
        return SimulatedLayer(layer, spec, group, transforms[name, method])

    def measure(choices: dict[str, LayerChoice]) -> float:
        handles = [modules[n].register_forward_hook(lambda m, args, out, s=simulated(n, choices[n].method): s(args[0]))
                   for n in names]
        try:
            if user_metric is not None:
                return float(user_metric(model))
            return _sqnr(reference, [_model_output(model, x) for x in scored])
        finally:
            for h in handles:
                h.remove()

    def size(name: str, method: str) -> int:
        layer, spec = modules[name], plan.layer_spec(name)
        return stored_bytes(layer, spec, spec.group_for(_in_channels(layer)), method)

    _, _, limit = _limit(report, budget)
    choices, total = dict(plan.layers), plan.bytes
    try:
        best_score = measure(choices)
        first = best_score
        cost = {la.name: la.options[plan.layers[la.name].precision].cost for la in report.layers if la.name in names}
        worst = sorted(names, key=lambda n: (-cost.get(n, 0.0), names.index(n)))[:layers]
        swaps = []
        for name in worst:
            current = choices[name]
            found = None
            for method in methods:
                if method == current.method:
                    continue
                extra = size(name, method) - size(name, current.method)
                if total + extra > limit:
                    continue
                trial = {**choices, name: LayerChoice(current.precision, method)}
                value = measure(trial)
                if value > best_score:
                    best_score, found = value, (method, extra)
            if found is not None:
                choices[name] = LayerChoice(current.precision, found[0])
                total += found[1]
                swaps.append(f"{name}: {current.method}->{found[0]}")
    finally:
        model.train(was_training)
    notes = {**plan.notes, "verified": {"measured_before": round(first, 4), "measured_after": round(best_score, 4),
                                        "layers": worst, "swaps": swaps}}
    return replace(plan, layers=choices, bytes=int(total), notes=notes)


__all__ = ["Budget", "auto_plan", "plan_from_report", "verify_plan"]
