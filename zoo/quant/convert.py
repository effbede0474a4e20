"""``zoo.quantize``: replace a built model's ``Linear`` and ``Conv2d`` layers by quantized ones.

Steps: pick the layers (all supported ones except ``spec.keep``), check the spec against each
(group sizes) and the calibration data against the model, calibrate, let the method choose each
layer's input scale and shift, fold them into the producing layer where the graph allows (else the
quantized layer applies them inside its activation quantization), then swap in
:class:`zoo.blocks.quant.QuantConv2d` / :class:`zoo.blocks.quant.QuantLinear`.
"""
from __future__ import annotations

import copy
import fnmatch
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from zoo.blocks.validation import check_kwargs, closest
from zoo.blocks.quant import FakeQuantConv2d, FakeQuantLinear, QuantConv2d, QuantLinear

from .calibrate import Calibration, calibrate, input_of
from .methods import METHODS, Transform, shift_allowed, weight_nhwc
from .plan import PLANNERS, QuantPlan
from zoo.blocks.quant_spec import QuantSpec

FOLD_TOLERANCE = 1e-3  # relative change of the float model's output that folding may cause
FOLDABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


@dataclass
class LayerReport:
    """What happened to one layer, for ``model.quant_report`` and the printed summary."""

    name: str
    kind: str
    action: str  # "quantized" or "kept"
    detail: str = ""


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _unsupported(module: nn.Module) -> Optional[str]:
    return QuantConv2d.supports(module) if isinstance(module, nn.Conv2d) else None


def model_ends(model: nn.Module, names: list[str]) -> dict[str, tuple[str, ...]]:
    """The layers ``<first>`` and ``<last>`` name: the layer that reads the input and the classifier, as the
    model's ``pretrained_cfg`` names them (timm's ``first_conv`` and ``classifier``), else the first and last
    of ``names`` (module order). Where the named layer is not among ``names`` (a token embedding, a ViT
    without a head) the alias keeps nothing: module order would put it on a transformer block's projection,
    e.g. an LM's layer-0 ``q_proj``, kept float beside the ``k_proj`` and ``v_proj`` that read its input."""
    cfg = getattr(model, "pretrained_cfg", None)
    cfg = cfg if isinstance(cfg, dict) else {}

    def declared(key: str, fallback: str) -> tuple[str, ...]:
        value = cfg.get(key) or fallback  # '' (an SR model has no classifier): module order
        return (value,) if isinstance(value, str) else tuple(value)

    return {"<first>": declared("first_conv", names[0]), "<last>": declared("classifier", names[-1])}


def _matching(patterns: tuple[str, ...], names: list[str], field: str,
              ends: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """name -> the first of ``patterns`` (fnmatch; ``<first>``/``<last>``: :func:`model_ends`) that matches it."""
    matches: dict[str, str] = {}
    for pattern in patterns:
        targets = ends.get(pattern, (pattern,))
        matched = [n for n in names if any(fnmatch.fnmatchcase(n, t) for t in targets)]
        if not matched and pattern not in ends:
            near = closest(pattern, names, n=3)
            raise ValueError(f"{field} pattern {pattern!r} matches no layer" +
                             (f"; did you mean {', '.join(map(repr, near))}?" if near else ""))
        for n in matched:
            matches.setdefault(n, pattern)
    return matches


def layer_specs(model: nn.Module, spec: QuantSpec, names: Iterable[str],
                plan: Optional[QuantPlan] = None) -> dict[str, QuantSpec]:
    """The spec of each named layer: ``spec``, or its 8-bit-weight twin for the ``keep_w8`` layers, or
    what ``plan`` gives the layer."""
    names = list(names)
    if plan is not None:
        return {n: (plan.layer_spec(n) if n in plan.layers else None) or spec for n in names}  # float: not quantized
    if not spec.keep_w8:
        return {n: spec for n in names}
    every = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, QuantLinear, QuantConv2d))]
    eight = _matching(spec.keep_w8, every, "keep_w8", model_ends(model, every))
    return {n: spec.eight_bit() if n in eight else spec for n in names}


def select_layers(model: nn.Module, spec: QuantSpec,
                  plan: Optional[QuantPlan] = None) -> tuple[dict[str, nn.Module], list[LayerReport]]:
    """The layers to quantize (module order) and a report of those kept in float, with the reason."""
    candidates = [(n, m) for n, m in model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, (QuantLinear, QuantConv2d))]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    # a block (or a layer) declares its layers float-only with a ``keep_float_reason`` attribute: the why
    # that the summary prints, e.g. an op that needs float weights
    float_only = {n: m.keep_float_reason for n, m in model.named_modules() if getattr(m, "keep_float_reason", None)}
    names = [n for n, _ in candidates]
    kept = {n: f"kept by {pattern!r}"
            for n, pattern in _matching(spec.keep, names, "keep", model_ends(model, names)).items()}
    if plan is not None:
        kept = {n: "float (plan)" if n in plan.layers else "not in the plan" for n in names
                if n not in plan.layers or plan.layer_spec(n) is None}
    specs = layer_specs(model, spec, names, plan)
    layers, report = {}, []
    for name, module in candidates:
        owner = next((reason for prefix, reason in float_only.items()
                      if name == prefix or name.startswith(prefix + ".") or prefix == ""), None)
        why = kept.get(name) or owner or _unsupported(module)
        if why:
            report.append(LayerReport(name, type(module).__name__, "kept", why))
            continue
        specs[name].group_for(_in_channels(module))  # raises early
        layers[name] = module
    if not layers:
        raise ValueError("every layer is kept in float by spec.keep; nothing to quantize")
    return layers, report


def _divide_outputs(producer: nn.Module, scale: torch.Tensor, shift: Optional[torch.Tensor]) -> bool:
    """Make ``producer`` emit ``(y - shift) / scale`` per output channel. False where it cannot."""
    if isinstance(producer, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
        if producer.weight is None or producer.bias is None:
            return False
        if isinstance(producer, nn.GroupNorm) or isinstance(producer, nn.LayerNorm) and \
                producer.weight.shape != scale.shape:
            return False
    elif producer.bias is None and shift is not None:
        return False
    with torch.no_grad():
        view = (-1,) + (1,) * (producer.weight.ndim - 1)
        if shift is not None:
            producer.bias.sub_(shift.to(producer.bias))
        producer.weight.div_(scale.to(producer.weight).view(view))
        if producer.bias is not None:
            producer.bias.div_(scale.to(producer.bias))
    return True


def _apply(model: nn.Module, name: str, layer: nn.Module, t: Transform, calib: Calibration,
           fold: bool, rounded: frozenset = frozenset()) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], str]:
    """Rewrite ``layer`` for transform ``t``; returns the explicit (multiplier, shift) left for it. Nothing
    folds into a layer in ``rounded``, whose weights a method (GPTQ) has rounded already."""
    scale, shift = t.scale, t.shift
    if scale is None and shift is None:
        return None, None, ""
    with torch.no_grad():
        if shift is not None:
            correction = (weight_nhwc(layer) * shift).sum((1, 2, 3))  # W z with the original W
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(correction).to(layer.weight))
            layer.bias.add_(correction.to(layer.bias))
        if scale is not None:
            view = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (1, -1)
            layer.weight.mul_(scale.to(layer.weight).view(view))
    producer = calib.producers.get(name) if fold else None
    if producer is not None and producer.name not in rounded:
        target = model.get_submodule(producer.name)
        fold_shift = shift if not producer.through_nonlinearity else None
        if isinstance(target, FOLDABLE) and _divide_outputs(target, scale if scale is not None else
                                                            torch.ones_like(shift), fold_shift):
            left_shift = None if shift is None or fold_shift is not None else (
                shift if scale is None else shift / scale)
            return None, left_shift, f"folded into {producer.name}"
    multiplier = None if scale is None else 1.0 / scale
    return multiplier, shift, "explicit"


def _model_output(model: nn.Module, x) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else torch.cat([o.flatten() for o in out if isinstance(o, torch.Tensor)])


def quantize(model: nn.Module, spec, calib: Optional[Iterable] = None, method: str = "rtn", *,
             alpha: float = 0.5, fold: bool = True, num_batches: Optional[int] = None,
             progress: bool = False, budget=None, **plan_options) -> nn.Module:
    """Quantize ``model`` in place and return it.

    Args:
        spec: a :class:`QuantSpec` or a spec string (``w8a8``, ``w4a8``, ``w4a16``, ``w8a16``, ``fp8``);
            a :class:`zoo.quant.plan.QuantPlan` (a precision and a method per layer); or ``"auto"``: a
            plan chosen under ``budget`` from :func:`zoo.quant.analyze` (:mod:`zoo.quant.auto`; it also
            takes ``metric=``, ``report=`` (a report analyzed with ``every_precision=True``), ``methods=``,
            ``base=`` (the spec it starts from, default ``w4a8``)).
        calib: calibration data (a DataLoader or a list of input batches / (input, target) pairs);
            needed by every method but ``rtn`` and by static activation scales.
        method: a name of :data:`zoo.quant.METHODS` (``rtn``, ``smoothquant``, ``awq``, ``os+``, ``repq``, ``gptq``;
            see :mod:`zoo.quant.methods`).
        alpha: SmoothQuant's migration strength.
        fold: fold scales and shifts into the producing layer where the graph allows.
        num_batches: use at most this many calibration batches.

    The model gets ``quant_spec``, ``quant_method``, ``quant_report`` (one entry per layer) and
    ``quant_plan`` (None without a plan).
    """
    if getattr(model, "quant_spec", None) is not None:
        raise ValueError("this model is already quantized; quantize a float model")
    if isinstance(spec, str) and spec.strip().lower() in PLANNERS:
        planner = PLANNERS[spec.strip().lower()]
        check_kwargs(f"quantize(model, {spec!r})", plan_options, planner)  # a misspelt option names the nearest
        if calib is not None and iter(calib) is calib:  # a one-pass iterator: the plan and the calibration both read it
            calib = list(calib)
        spec = planner(model, calib, budget=budget, num_batches=num_batches, progress=progress, **plan_options)
    elif budget is not None or plan_options:
        given = ["budget"] * (budget is not None) + sorted(plan_options)
        raise TypeError(f"quantize() got {', '.join(given)}, which only a planned spec takes; pass spec='auto' "
                        f"(mixed precision under a budget) or drop them")
    plan = spec if isinstance(spec, QuantPlan) else None
    spec = plan.spec if plan else QuantSpec.parse(spec)
    if plan is not None:
        unknown = sorted(set(plan.layers) - {n for n, _ in model.named_modules()})
        if unknown:
            raise ValueError(f"the plan names layers {unknown[:3]} that this model does not have; make the plan on "
                             f"this model")
    if method not in METHODS:
        near = closest(method, METHODS)
        raise ValueError(f"method={method!r} is not a calibration method; use one of {', '.join(METHODS)}"
                         + (f" (did you mean {near[0]!r}?)" if near else ""))
    layers, report = select_layers(model, spec, plan)
    methods = {name: plan.layers[name].method if plan else method for name in layers}
    bad = sorted({m for m in methods.values() if m not in METHODS})
    if bad:
        raise ValueError(f"the plan uses methods {bad}, which are not calibration methods; use {', '.join(METHODS)}")
    uses_methods = any(m != "rtn" for m in methods.values())
    method = "auto" if plan else method
    needs_data = uses_methods or spec.static_activations
    if needs_data and calib is None:
        why = f"method={method!r}" if method != "rtn" else f"static activation scales ({spec.act_granularity})"
        raise ValueError(f"{why} needs calibration data: pass calib=<a DataLoader or a list of input batches>")
    calibration = calibrate(model, layers, calib, num_batches, progress) if needs_data else Calibration()

    unreached = [n for n in layers if needs_data and n not in calibration.stats]
    for name in unreached:  # never called on the calibration data: nothing to calibrate it with
        report.append(LayerReport(name, type(layers.pop(name)).__name__, "kept", "not reached by the calibration data"))
    explicit: dict[str, tuple] = {}
    transforms = {name: Transform() for name in layers}
    specs = layer_specs(model, spec, layers, plan)
    if uses_methods:
        with torch.no_grad():
            transforms = {name: METHODS[methods[name]](layer, calibration.stats[name], specs[name],
                                                specs[name].group_for(_in_channels(layer)), alpha=alpha,
                                                producer=_producer_module(model, calibration, name))
                          for name, layer in layers.items()}
        for t_name, layer in layers.items():  # a shift only where it moves exactly into the bias
            if transforms[t_name].shift is not None and not shift_allowed(layer):
                transforms[t_name].shift = None
        explicit = _transform_all(model, layers, transforms, calibration, fold)

    for name, layer in layers.items():
        multiplier, shift, how = explicit.get(name, (None, None, ""))
        static_scale = None
        if spec.static_activations:
            multiplier, static_scale = _static_scales(layer, calibration.stats[name], transforms[name], multiplier,
                                                      spec)
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        quantized = cls.from_float(layer, specs[name], specs[name].group_for(_in_channels(layer)),
                                   act_multiplier=multiplier is not None, act_shift=shift is not None,
                                   act_scale=static_scale is not None and not spec.weight_only)
        with torch.no_grad():
            if transforms[name].weight is not None:  # a method that rounded the weights itself: its codes
                quantized.set_weight(transforms[name].weight, transforms[name].grid)
            if multiplier is not None:
                quantized.act_multiplier.copy_(multiplier)
            if shift is not None:
                quantized.act_shift.copy_(shift)
            if static_scale is not None:
                quantized.act_scale.fill_(float(static_scale))
        _set_module(model, name, quantized)
        detail = f"group {quantized.group_size}" if quantized.group_size else "per-channel"
        if plan is not None:
            detail = f"{specs[name].weight_bits}-bit weights, {detail}, {methods[name]}"
        elif specs[name] is not spec:
            detail = f"8-bit weights (keep_w8), {detail}"
        report.append(LayerReport(name, type(layer).__name__, "quantized", f"{detail}{', ' + how if how else ''}"))
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    model.quant_spec = spec
    model.quant_method = method
    model.quant_plan = plan
    model.quant_report = sorted(report, key=lambda r: order.get(r.name, -1))
    return model


def _producer_module(model: nn.Module, calibration: Calibration, name: str) -> Optional[nn.Module]:
    """The module whose output ``name`` reads directly (no non-linearity between), if any."""
    producer = calibration.producers.get(name)
    if producer is None or producer.through_nonlinearity:
        return None
    return model.get_submodule(producer.name)


def _in_channels(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _transform_all(model, layers, transforms, calibration, fold) -> dict[str, tuple]:
    """Apply every layer's transform, folding where allowed; undo the folds if the float model moved."""
    x = calibration.first_input
    device = next(iter(model.parameters())).device
    x = x.to(device) if isinstance(x, torch.Tensor) else x
    saved = copy.deepcopy(model.state_dict()) if fold else None
    with torch.no_grad():
        before = _model_output(model.eval(), x) if fold else None
    rounded = frozenset(name for name, t in transforms.items() if t.weight is not None)
    explicit = {name: _apply(model, name, layer, transforms[name], calibration, fold, rounded)
                for name, layer in layers.items()}
    if fold:
        # the consumer's explicit multiplier/shift are not in the float model: apply them as hooks to check
        handles = [layers[n].register_forward_pre_hook(_explicit_hook(m, s, layers[n]))
                   for n, (m, s, _) in explicit.items() if m is not None or s is not None]
        with torch.no_grad():
            after = _model_output(model, x)
        for h in handles:
            h.remove()
        change = float((after - before).norm() / before.norm().clamp_min(1e-12))
        if change > FOLD_TOLERANCE:
            warnings.warn(f"folding calibration scales changed the float model's output by {change:.2e} (a layer's "
                          f"output is also used where no hook sees it); applying every scale explicitly instead")
            model.load_state_dict(saved)
            explicit = {name: _apply(model, name, layer, transforms[name], calibration, False)
                        for name, layer in layers.items()}
    return explicit


def _explicit_hook(multiplier, shift, layer):
    def hook(module, args):
        x = args[0]
        view = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (-1,)
        if shift is not None:
            x = x - shift.to(x).view(view)
        if multiplier is not None:
            x = x * multiplier.to(x).view(view)
        return (x,) + tuple(args[1:])
    return hook


def _static_scales(layer, stats, transform: Transform, multiplier, spec):
    """Static activation scales from the calibrated ranges of the transformed activations ``(x - z) / s``.

    Returns the layer's new explicit multiplier and its per-tensor scale.
    """
    low, high = stats.minimum.clone(), stats.maximum.clone()
    if transform.shift is not None:
        low, high = low - transform.shift, high - transform.shift
    if transform.scale is not None:
        low, high = low / transform.scale, high / transform.scale
    amax = torch.maximum(high.abs(), low.abs()).clamp_min(1e-8)  # (C,)
    if spec.act_granularity == "per_tensor":
        return multiplier, amax.max() / 127
    # per channel: fold each channel's scale a_j into the weight's input channel, quantize x / a_j with scale 1
    a = amax / 127
    with torch.no_grad():
        view = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (1, -1)
        layer.weight.mul_(a.to(layer.weight).view(view))
    return (1.0 / a) if multiplier is None else multiplier / a, torch.tensor(1.0)


def quant_aware(model: nn.Module, spec) -> nn.Module:
    """Swap ``Linear``/``Conv2d`` layers for fake-quant twins (same parameters) for QAT, in place.

    After training, the float state dict loads into the plain model, which :func:`quantize` converts.
    """
    spec = QuantSpec.parse(spec)
    if spec.static_activations:
        raise ValueError(f"quant_aware={spec.name!r}: quantization-aware training simulates dynamic (per-image / "
                         f"per-token) activation scales, and its export has no calibration data for static "
                         f"({spec.act_granularity}) ones; train with the dynamic spec "
                         f"{spec.with_(act_granularity='per_image').name!r}, then calibrate static scales on the "
                         f"trained model with zoo.quantize(model, {spec.name!r}, calib=<batches>)")
    layers, _ = select_layers(model, spec)
    specs = layer_specs(model, spec, layers)
    for name, layer in layers.items():
        cls = FakeQuantConv2d if isinstance(layer, nn.Conv2d) else FakeQuantLinear
        _set_module(model, name, cls.from_float(layer, specs[name], specs[name].group_for(_in_channels(layer))))
    model.quant_aware_spec = spec
    return model


def summary(model: nn.Module) -> str:
    """A readable table of what :func:`quantize` did."""
    report = getattr(model, "quant_report", None)
    if report is None:
        return "not quantized"
    width = max(len(r.name) for r in report)
    lines = [f"quantized with {model.quant_spec.name} ({model.quant_method}): "
             f"{sum(r.action == 'quantized' for r in report)} layers quantized, "
             f"{sum(r.action == 'kept' for r in report)} kept in float"]
    plan = getattr(model, "quant_plan", None)
    if plan is not None:
        lines.append("  " + plan.describe())
    lines += [f"  {r.name:<{width}}  {r.kind:<7} {r.action:<9} {r.detail}{_execution(model, r)}" for r in report]
    return "\n".join(lines)


def _execution(model: nn.Module, row: LayerReport) -> str:
    """What runs a quantized layer now, on its own device: ``; per-image activations, onednn (exact int8)``."""
    if row.action != "quantized":
        return ""
    try:
        layer = model.get_submodule(row.name)
    except AttributeError:
        return ""
    if not isinstance(layer, (QuantConv2d, QuantLinear)):
        return ""
    kernel, why = layer.execution()
    return f"; {layer.act_description} activations, {kernel} ({why})"


__all__ = ["quantize", "quant_aware", "select_layers", "layer_specs", "summary", "input_of", "LayerReport"]
