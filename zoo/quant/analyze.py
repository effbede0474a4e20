"""``zoo.quant.analyze``: which layers and which channels make a model hard to quantize.

For every quantizable layer the report holds the per-input-channel picture of its activations that
the outlier papers start from (SmoothQuant, Xiao et al. 2023; Outlier Suppression+, Wei et al. 2023;
RepQ-ViT's post-LayerNorm ranges, Li et al. 2023): max |x|, the 99th and 99.9th percentiles of |x|
and the kurtosis of each channel, the outlier channels (max |x| above ``OUTLIER_FACTOR`` times the
median channel's) and the share of the layer's int8 range that only they use; the weight range of
each output channel and group; the layer's own output SQNR under the spec for each method; and its
end-to-end sensitivity, the model's output SQNR (or a user metric) with only that layer quantized,
as ModelOpt's ``auto_quantize`` and HAWQ-style searches score layers.

Statistics come from :func:`zoo.quant.calibrate.calibrate` (the same hooks ``zoo.quantize`` uses):
ranges over every calibration batch, percentiles and kurtosis over the layer's input sample (its
first batch). ``zoo.quantize(model, "auto", ...)`` turns the report into a per-layer plan
(:mod:`zoo.quant.plan`).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from zoo.blocks.quant import QuantConv2d, QuantLinear
from zoo.blocks.quant_spec import QuantSpec
from zoo.blocks.validation import unknown_name_error

from ..files import atomic_write
from .calibrate import Calibration, LayerStats, _channels_last, calibrate, input_of
from .convert import LayerReport, _in_channels, _model_output, _producer_module, select_layers
from .methods import METHODS, SimulatedLayer, Transform, layer_reference, shift_allowed

OUTLIER_FACTOR = 6.0  # a channel whose max |x| exceeds this many times the median channel's is an outlier
DEFAULT_METHODS = ("rtn", "smoothquant", "awq", "os+", "gptq")
# the method searches and layer SQNRs run on at most this many input elements of each layer's sample (whole
# images / rows): on resnet50 with 8 images the full sample made them 2/3 of the analysis time
SEARCH_ELEMENTS = 2 ** 19
# the end-to-end output-SQNR scores run the model on the first calibration images up to this many input elements
# (at least one image): one forward per layer and precision over all 8 of resnet50's 224x224 images was 62 s of
# 147 s (this keeps 3); small images (digits, 48x48 super-resolution crops) all fit. The statistics use every image
SCORE_ELEMENTS = 2 ** 19
FLOAT = "float"
Metric = Callable[[nn.Module], float]


@dataclass
class Option:
    """One way to store a layer: its precision, bytes on disk, and what it costs in accuracy."""

    precision: str  # "w4-g64", "w4-pc", "w8" or "float"
    bytes: int
    method: str = "rtn"  # the method with the best layer SQNR at this precision
    layer_sqnr: dict[str, float] = field(default_factory=dict)  # method -> dB of the layer's own output
    score: float = math.inf  # the model's metric with only this layer quantized (output SQNR in dB by default)
    cost: float = 0.0  # what a plan minimises: the output's relative noise power, or the metric's drop


@dataclass
class LayerAnalysis:
    """The quantization picture of one layer; tensors are per input channel (C,) unless said."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    act_absmax: torch.Tensor
    act_p99: torch.Tensor
    act_p999: torch.Tensor
    act_kurtosis: torch.Tensor
    outliers: list[int]  # input channels, largest max |x| first
    outlier_range_share: float  # 1 - (largest non-outlier max |x|) / (max |x|): the range only outliers use
    weight_absmax: torch.Tensor  # (N,) per output channel
    weight_group_absmax: torch.Tensor  # (N, S): per output channel and weight group of the spec
    options: dict[str, Option]  # the spec's precision first; "<precision>/rtn": the same without its method

    @property
    def headline(self) -> Option:
        return next(iter(self.options.values()))

    @property
    def sensitivity(self) -> float:
        """The headline option's cost (the spec's precision with its best method): higher is more sensitive."""
        return self.headline.cost

    @property
    def rtn_option(self) -> Optional[Option]:
        """The spec's precision under plain round to nearest, before any method's remedy: the headline itself,
        or its ``/rtn`` twin; None where not scored (another method was best and ``analyze`` ran without
        ``every_precision``)."""
        head = self.headline
        return head if head.method == "rtn" else self.options.get(f"{next(iter(self.options))}/rtn")

    @property
    def rtn_sensitivity(self) -> Optional[float]:
        """:attr:`rtn_option`'s cost: how hard the layer is to quantize as such (None where not scored)."""
        option = self.rtn_option
        return None if option is None else option.cost

    def to_dict(self) -> dict:
        def listed(t: torch.Tensor) -> list:
            return [round(float(v), 6) for v in t.flatten()]
        return {"name": self.name, "kind": self.kind, "weight_shape": list(self.weight_shape),
                "outliers": self.outliers, "outlier_range_share": round(self.outlier_range_share, 6),
                "act_absmax": listed(self.act_absmax), "act_p99": listed(self.act_p99),
                "act_p999": listed(self.act_p999), "act_kurtosis": listed(self.act_kurtosis),
                "weight_absmax": listed(self.weight_absmax),
                "weight_group_absmax": [listed(row) for row in self.weight_group_absmax],
                "options": {k: {"bytes": o.bytes, "method": o.method, "layer_sqnr": o.layer_sqnr,
                                "score": o.score, "cost": o.cost} for k, o in self.options.items()}}


@dataclass
class QuantReport:
    """What :func:`analyze` found, most sensitive layers first in :meth:`ranking`."""

    spec: QuantSpec
    metric: str  # "output SQNR (dB)" or the user metric's name
    float_score: float
    layers: list[LayerAnalysis]
    kept: list[LayerReport]
    fp32_bytes: int  # the float model's parameters and buffers
    batches: int
    seconds: float

    def layer(self, name: str) -> LayerAnalysis:
        for la in self.layers:
            if la.name == name:
                return la
        raise unknown_name_error("layer", name, [la.name for la in self.layers])

    def ranking(self, by: str = "best") -> list[str]:
        """Layer names, most sensitive first (ties in module order): ``by="best"`` with each layer's best method
        (what a plan spends bytes on), ``by="rtn"`` under round to nearest (which layers are hard to quantize
        before any remedy; needs ``analyze(..., every_precision=True)`` where another method was best)."""
        if by not in ("best", "rtn"):
            raise ValueError(f"ranking(by={by!r}): rank by 'best' (each layer's best method) or 'rtn'")
        costs = [la.sensitivity if by == "best" else la.rtn_sensitivity for la in self.layers]
        missing = [la.name for la, cost in zip(self.layers, costs) if cost is None]
        if missing:
            raise ValueError(f"ranking(by='rtn') needs each layer's round-to-nearest score, which {missing[0]} (and "
                             f"{len(missing) - 1} more) lacks: analyze(..., every_precision=True) scores it")
        order = sorted(range(len(self.layers)), key=lambda i: (-costs[i], i))
        return [self.layers[i].name for i in order]

    def summary(self, top: Optional[int] = None) -> str:
        """A readable table: per layer its outlier channels, kurtosis, layer SQNR per method and sensitivity."""
        methods = list(self.layers[0].headline.layer_sqnr) if self.layers else []
        rank = {n: i + 1 for i, n in enumerate(self.ranking())}
        rtn_scored = self.rtn_scored
        rows = sorted(self.layers, key=lambda la: rank[la.name])[:top] if top else self.layers
        width = max([len(la.name) for la in rows] + [5])
        head = (f"{'layer':<{width}}  {'rank':>4}  {'outliers (channels)':<22} {'range':>5} {'kurt':>6}  "
                + " ".join(f"{m:>11}" for m in methods) + f"  {'best':<11} {'end-to-end':>10}"
                + (f" {'e2e rtn':>10}" if rtn_scored else ""))
        lines = [f"quantization report: {self.spec.name}, {len(self.layers)} layers, {self.batches} calibration "
                 f"batches, {self.seconds:.1f} s; end-to-end = {self.metric} with only that layer quantized "
                 f"with its best method" + (", e2e rtn = with round to nearest" if rtn_scored else "")
                 + f" (float model: {self.float_score:.4g})", head, "-" * len(head)]
        for la in rows:
            o = la.headline
            shown = ",".join(map(str, la.outliers[:4])) + ("..." if len(la.outliers) > 4 else "")
            outl = f"{len(la.outliers)} ({shown})" if la.outliers else "0"
            lines.append(f"{la.name:<{width}}  {rank[la.name]:>4}  {outl:<22} {la.outlier_range_share:>5.0%} "
                         f"{float(la.act_kurtosis.max()):>6.1f}  "
                         + " ".join(f"{o.layer_sqnr.get(m, float('nan')):>8.1f} dB" for m in methods)
                         + f"  {o.method:<11} {o.score:>10.4g}"
                         + (f" {la.rtn_option.score:>10.4g}" if rtn_scored else ""))
        if self.kept:
            lines.append("not analyzed: " + "; ".join(f"{r.name} ({r.detail})" for r in self.kept))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        return {"spec": json.loads(self.spec.to_json()), "metric": self.metric, "float_score": self.float_score,
                "fp32_bytes": self.fp32_bytes, "batches": self.batches, "seconds": round(self.seconds, 3),
                "ranking": self.ranking(), "ranking_rtn": self.ranking("rtn") if self.rtn_scored else None,
                "layers": [la.to_dict() for la in self.layers],
                "kept": [{"name": r.name, "kind": r.kind, "detail": r.detail} for r in self.kept]}

    @property
    def rtn_scored(self) -> bool:
        """Whether every layer has its round-to-nearest score, so ``ranking("rtn")`` can rank them."""
        return all(la.rtn_sensitivity is not None for la in self.layers)

    def to_json(self, path: Union[str, os.PathLike, None] = None) -> str:
        """The report as JSON (infinite SQNRs as null); written atomically to ``path`` when given."""
        text = json.dumps(_finite(self.to_dict()), indent=1)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return text

    def to_html(self, path: Union[str, os.PathLike], worst: int = 4) -> Path:
        """A self-contained page (PNG plots embedded): per-layer bars, the ``worst`` layers' channel heat maps."""
        from .report_html import write_html
        return write_html(self, Path(path), worst)

    def plot(self, path: Union[str, os.PathLike]) -> Path:
        """The per-layer bar chart (layer SQNR per method, end-to-end sensitivity) as a PNG."""
        from .report_html import write_overview_png
        return write_overview_png(self, Path(path))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -------------------------------------------------------------------------------------------------
# statistics
# -------------------------------------------------------------------------------------------------
def activation_stats(layer: nn.Module, stats: LayerStats) -> dict:
    """Per-input-channel percentiles and kurtosis (from the sample), outliers (from the full ranges)."""
    tokens = _channels_last(stats.sample, layer).float()  # (tokens, C)
    magnitude = tokens.abs()
    p99, p999 = torch.quantile(magnitude, torch.tensor([0.99, 0.999]), dim=0)  # (C,) each
    centred = tokens - tokens.mean(0)
    var = centred.pow(2).mean(0)
    kurtosis = centred.pow(4).mean(0) / var.pow(2).clamp_min(1e-20)  # (C,); 3 for a Gaussian channel
    absmax = stats.absmax
    median = absmax.median().clamp_min(1e-12)
    candidates = torch.nonzero(absmax > OUTLIER_FACTOR * median).flatten()
    outliers = candidates[absmax[candidates].argsort(descending=True, stable=True)].tolist()
    rest = absmax.clone()
    rest[outliers] = 0
    peak = float(absmax.max())
    share = 0.0 if not outliers or peak <= 0 else 1.0 - float(rest.max()) / peak
    return {"act_absmax": absmax.clone(), "act_p99": p99, "act_p999": p999, "act_kurtosis": kurtosis,
            "outliers": outliers, "outlier_range_share": share}


def weight_stats(layer: nn.Module, group_size: Optional[int]) -> dict:
    weight = layer.weight.detach().float()
    weight = weight.permute(0, 2, 3, 1) if weight.ndim == 4 else weight[:, None, None, :]  # (N, KH, KW, C)
    n = weight.shape[0]
    groups = weight.reshape(n, -1, group_size) if group_size else weight.reshape(n, 1, -1)  # (N, S, L)
    return {"weight_absmax": weight.abs().reshape(n, -1).amax(1), "weight_group_absmax": groups.abs().amax(-1)}


def stored_bytes(layer: nn.Module, spec: Optional[QuantSpec], group_size: Optional[int], method: str = "rtn") -> int:
    """Bytes the layer takes in a saved model: its float parameters, or the quantized layer's tensors
    (plus, for a method that rescales or shifts activations, the multiplier and shift it may keep)."""
    if spec is None:
        return sum(p.numel() * p.element_size() for p in layer.parameters(recurse=False))
    with torch.no_grad():
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        quantized = cls.from_float(layer, spec, group_size)
    size = sum(t.numel() * t.element_size() for t in quantized.state_dict().values())
    return size + (2 * 4 * _in_channels(layer) if method != "rtn" else 0)


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# -------------------------------------------------------------------------------------------------
# precisions and sensitivity
# -------------------------------------------------------------------------------------------------
def precisions(spec: QuantSpec, layer: nn.Module, every: bool) -> dict[str, Optional[QuantSpec]]:
    """The layer specs to score: the spec's own (first), and with ``every`` each cheaper or dearer
    choice a plan may make: 4-bit groups, 4-bit per channel, 8-bit per channel, float (None)."""
    group = spec.group_for(_in_channels(layer))
    bits = f"w{spec.weight_bits}"
    own = {"fp8" if spec.fp8 else f"{bits}-g{group}" if group else "w4-pc" if bits == "w4" else "w8": spec}
    if not every:
        return own
    options = dict(own)
    if spec.weight_bits == 4:
        options.setdefault("w4-pc", spec.with_(group_size=None, group_fallback=False, keep_w8=()))
        options.setdefault("w8", spec.eight_bit())
    options[FLOAT] = None
    return options


def _group(spec: QuantSpec, layer: nn.Module) -> Optional[int]:
    return spec.group_for(_in_channels(layer))


class _OneLayer:
    """Quantize one layer inside the float model (a forward hook returns the simulated output)."""

    def __init__(self, layer: nn.Module, simulated: SimulatedLayer) -> None:
        self.layer, self.simulated = layer, simulated

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(lambda m, args, out: self.simulated(args[0]))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _sqnr(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    signal = sum(float(r.float().pow(2).sum()) for r in reference)
    noise = sum(float((o.float() - r.float()).pow(2).sum()) for r, o in zip(reference, outputs))
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def _cost(score: float, float_score: float, sqnr: bool) -> float:
    """Relative output noise power (adds over layers when their noises are independent), or a metric drop."""
    if sqnr:
        return 0.0 if math.isinf(score) else 10 ** (-score / 10)
    return max(float_score - score, 0.0)


def _check_metric(metric) -> tuple[Optional[Metric], str]:
    if metric is None or metric == "sqnr":
        return None, "output SQNR (dB)"
    if isinstance(metric, str):
        raise unknown_name_error("metric", metric, ["sqnr"]) from None
    if not callable(metric):
        raise TypeError(f"metric={metric!r} is not callable; pass a function model -> float (higher is better, "
                        f"e.g. top-1 on a held-out set) or None for the output SQNR")
    return metric, getattr(metric, "__name__", "metric")


@torch.no_grad()
def analyze(model: nn.Module, calib: Iterable, spec="w4a8", metric: Union[Metric, str, None] = None,
            methods: Iterable[str] = DEFAULT_METHODS, *, num_batches: Optional[int] = None,
            every_precision: bool = False, score_elements: Optional[int] = SCORE_ELEMENTS, alpha: float = 0.5,
            progress: bool = False) -> QuantReport:
    """Analyze every quantizable layer of the float ``model`` under ``spec`` (see the module docstring).

    Args:
        calib: calibration batches (a DataLoader or a list of inputs / (input, target) pairs); the
            end-to-end scores run the model over the same batches.
        spec: the quantization the layers are scored under (a spec string or :class:`QuantSpec`);
            ``spec.keep`` is ignored: every supported layer is analyzed.
        metric: None (or ``"sqnr"``): the model output's SQNR against the float model, in dB; or a
            callable ``metric(model) -> float``, higher is better (top-1, PSNR), called once per layer.
        methods: the names of :data:`zoo.quant.METHODS` scored per layer; the best one (highest layer
            SQNR) quantizes the layer for its end-to-end score.
        every_precision: also score 4-bit per-channel, 8-bit and float for each layer (``auto`` plans), and the
            spec's precision under plain round to nearest where another method is best (``ranking("rtn")``).
        score_elements: the output-SQNR end-to-end scores run the model on the first calibration images
            (rows of the tensor batches; a batch that is not a tensor is kept whole) up to this many input
            elements, at least one image; default :data:`SCORE_ELEMENTS`; None: every image. The
            statistics use every image, and a user ``metric`` chooses its own data.
    """
    spec = QuantSpec.parse(spec)
    methods = tuple(methods)
    for m in methods:
        if m not in METHODS:
            raise unknown_name_error("method", m, METHODS)
    if not methods:
        raise ValueError("methods=() scores nothing; pass at least one of " + ", ".join(METHODS))
    user_metric, metric_name = _check_metric(metric)
    if score_elements is not None and (isinstance(score_elements, bool) or not isinstance(score_elements, int)
                                       or score_elements < 1):
        raise ValueError(f"score_elements={score_elements!r} is not a positive number of input elements; pass an "
                         f"int >= 1, or None to score on every calibration image")
    if calib is None:
        raise ValueError("analyze needs calibration data: pass calib=<a DataLoader or a list of input batches>")
    if getattr(model, "quant_spec", None) is not None:
        raise ValueError("this model is already quantized; analyze the float model")
    start = time.perf_counter()
    layers, kept = select_layers(model, spec.with_(keep=(), keep_w8=()))
    inputs = [input_of(b) for b in (islice(calib, num_batches) if num_batches is not None else calib)]
    calibration = calibrate(model, layers, inputs, None, progress)  # raises on empty data
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters())).device
    inputs = [x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs]
    scored = _first_images(inputs, score_elements)
    reference = [_model_output(model, x) for x in scored] if user_metric is None else []
    float_score = math.inf if user_metric is None else float(user_metric(model))

    def score() -> float:
        if user_metric is not None:
            return float(user_metric(model))
        return _sqnr(reference, [_model_output(model, x) for x in scored])

    bar = _progress(len(layers)) if progress else None
    analyses = []
    try:
        for name, layer in layers.items():
            if name not in calibration.stats:
                kept.append(LayerReport(name, type(layer).__name__, "kept", "not reached by the calibration data"))
                continue
            stats = calibration.stats[name]
            options = _score_options(model, name, layer, stats, calibration, spec, methods, every_precision, alpha,
                                     score, float_score, user_metric is None)
            analyses.append(LayerAnalysis(name, type(layer).__name__, tuple(layer.weight.shape),
                                          **activation_stats(layer, stats),
                                          **weight_stats(layer, _group(spec, layer)), options=options))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return QuantReport(spec, metric_name, float_score, analyses, kept, model_bytes(model), calibration.batches,
                       time.perf_counter() - start)


def _first_images(inputs: list, elements: Optional[int]) -> list:
    """The first images of the batches up to ``elements`` input elements, at least one (a batch that is not a
    tensor is kept whole and counts as nothing)."""
    if elements is None:
        return inputs
    out, left, taken = [], elements, 0
    for x in inputs:
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            out.append(x)
            continue
        per_image = max(x[:1].numel(), 1)
        count = min(len(x), max(left // per_image, 1 if taken == 0 else 0))
        if count == 0:
            break
        out.append(x[:count])
        taken, left = taken + count, left - count * per_image
    return out


def _score_options(model, name, layer, stats, calibration: Calibration, spec, methods, every_precision, alpha,
                   score, float_score, sqnr) -> dict[str, Option]:
    options: dict[str, Option] = {}
    keep = max(1, SEARCH_ELEMENTS // max(stats.sample[0].numel(), 1))
    stats = replace(stats, sample=stats.sample[:keep])  # (B', ...) the first images / rows
    reference = layer_reference(layer, stats.sample)
    signal = float(reference.pow(2).mean())
    producer = _producer_module(model, calibration, name)
    for label, layer_spec in precisions(spec, layer, every_precision).items():
        if layer_spec is None:
            options[label] = Option(label, stored_bytes(layer, None, None), "none", {}, float_score, 0.0)
            continue
        group = _group(layer_spec, layer)
        sqnrs, transforms = {}, {}
        # the other precisions search only RTN and the spec's best method: the searches cost more than the rest
        tried = methods if not options else tuple(dict.fromkeys(("rtn", next(iter(options.values())).method)))
        for method in tried:
            t = METHODS[method](layer, stats, layer_spec, group, alpha=alpha, producer=producer)
            if t.shift is not None and not shift_allowed(layer):
                t = Transform(t.scale, None)  # as zoo.quantize: a shift only where it moves exactly into the bias
            error = float((SimulatedLayer(layer, layer_spec, group, t)(stats.sample) - reference).pow(2).mean())
            sqnrs[method] = math.inf if error == 0 else 10 * math.log10(max(signal, 1e-30) / error)
            transforms[method] = t
        best = max(tried, key=lambda m: (sqnrs[m], -tried.index(m)))  # ties: the earlier (simpler) method
        with _OneLayer(layer, SimulatedLayer(layer, layer_spec, group, transforms[best])):
            value = score()
        rounded = {m: round(v, 4) for m, v in sqnrs.items()}
        options[label] = Option(label, stored_bytes(layer, layer_spec, group, best), best, rounded, value,
                                _cost(value, float_score, sqnr))
        if every_precision and best != "rtn" and "rtn" in transforms:
            # a method's multiplier and shift may take bytes where they do not fold: RTN is the smaller twin
            with _OneLayer(layer, SimulatedLayer(layer, layer_spec, group, transforms["rtn"])):
                value = score()
            options[f"{label}/rtn"] = Option(label, stored_bytes(layer, layer_spec, group, "rtn"), "rtn", rounded,
                                             value, _cost(value, float_score, sqnr))
    return options


def _progress(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with lightning
        return None
    return tqdm(total=total, desc="analyzing", unit="layer", leave=False)


__all__ = ["analyze", "QuantReport", "LayerAnalysis", "Option", "OUTLIER_FACTOR", "SCORE_ELEMENTS", "stored_bytes", "model_bytes"]
