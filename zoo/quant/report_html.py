"""The :class:`zoo.quant.analyze.QuantReport` as a page a person reads: one self-contained HTML file
(the plots are PNGs embedded as base64, no script, no network), or the overview plot as a PNG.

matplotlib comes through the ``train`` extra; figures are drawn with its object API on an Agg canvas,
so nothing changes the caller's pyplot backend. ``QuantReport`` and ``LayerAnalysis`` annotations name
:mod:`zoo.quant.analyze`'s classes, which call this module (it does not import them back).
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from ..extras import require
from ..files import atomic_write

PURPOSE = "the quantization report's plots"


def _figure(width: float, height: float):
    require("matplotlib", "train", PURPOSE)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _finite(value: float, cap: float) -> float:
    return cap if math.isinf(value) else value


def overview_png(report: "QuantReport") -> bytes:
    """Per-layer bars: the layer's own output SQNR per method, and the end-to-end score with only it quantized."""
    names = [la.name for la in report.layers]
    methods = list(report.layers[0].headline.layer_sqnr) if report.layers else []
    figure = _figure(max(6.0, 0.35 * len(names) + 2), 6.5)
    top, bottom = figure.subplots(2, 1, sharex=True)
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        values = [_finite(la.headline.layer_sqnr.get(method, float("nan")), 120.0) for la in report.layers]
        top.bar([i + (k - (len(methods) - 1) / 2) * width for i in range(len(names))], values, width, label=method)
    top.set_ylabel("layer output SQNR (dB)")
    top.set_title(f"each layer under {report.spec.name}, by method")
    top.legend(fontsize=8, ncol=len(methods))
    sqnr = report.metric.startswith("output SQNR")
    values = [_finite(la.headline.score, 120.0) if sqnr else la.sensitivity for la in report.layers]
    worst = set(report.ranking()[:3])
    bottom.bar(range(len(names)), values, color=["tab:red" if n in worst else "tab:gray" for n in names])
    bottom.set_ylabel(report.metric if sqnr else f"drop of {report.metric}")
    bottom.set_title("end to end, only this layer quantized (red: top 3)")
    bottom.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    return _png(figure)


def channels_png(la: "LayerAnalysis") -> bytes:
    """One layer: per-input-channel activation ranges (outliers marked), kurtosis, and the weight-group heat map."""
    figure = _figure(11, 3.4)
    ranges, kurt, weights = figure.subplots(1, 3, width_ratios=(2.2, 1.2, 1.6))
    channels = range(la.act_absmax.numel())
    ranges.bar(channels, la.act_absmax.tolist(), color="tab:blue", label="max |x|")
    ranges.plot(channels, la.act_p999.tolist(), color="tab:orange", lw=1, label="p99.9 |x|")
    ranges.plot(channels, la.act_p99.tolist(), color="tab:green", lw=1, label="p99 |x|")
    if la.outliers:
        ranges.scatter(la.outliers, [float(la.act_absmax[c]) for c in la.outliers], color="tab:red", zorder=3,
                       label=f"outliers ({len(la.outliers)})")
    if float(la.act_absmax.max()) > 0:
        ranges.set_yscale("symlog", linthresh=max(float(la.act_absmax.median()) * 0.1, 1e-6))
    ranges.set_xlabel("input channel")
    ranges.set_title(f"{la.name}: activations per channel", fontsize=9)
    ranges.legend(fontsize=7)
    kurt.bar(channels, la.act_kurtosis.tolist(), color="tab:purple")
    kurt.set_yscale("log")
    kurt.set_xlabel("input channel")
    kurt.set_title("kurtosis (3: Gaussian)", fontsize=9)
    image = weights.imshow(la.weight_group_absmax.clamp_min(1e-12).log10().numpy(), aspect="auto",
                           cmap="magma", interpolation="nearest")
    weights.set_xlabel("weight group")
    weights.set_ylabel("output channel")
    weights.set_title("log10 max |w| per channel and group", fontsize=9)
    figure.colorbar(image, ax=weights)
    return _png(figure)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(report: "QuantReport") -> str:
    methods = list(report.layers[0].headline.layer_sqnr) if report.layers else []
    rank = {n: i + 1 for i, n in enumerate(report.ranking())}
    head = ["rank", "layer", "kind", "weight", "outlier channels", "range only outliers use", "max kurtosis"] + \
        [f"{m} (dB)" for m in methods] + ["best", f"end to end ({report.metric})", "choices (bytes: score)"]
    rows = []
    for la in report.layers:
        o = la.headline
        choices = "; ".join(f"{k} {v.bytes} B: {v.score:.4g}" for k, v in la.options.items())
        cells = [rank[la.name], la.name, la.kind, "x".join(map(str, la.weight_shape)),
                 ", ".join(map(str, la.outliers[:12])) + (" ..." if len(la.outliers) > 12 else ""),
                 f"{la.outlier_range_share:.0%}", f"{float(la.act_kurtosis.max()):.1f}"] + \
            [f"{o.layer_sqnr[m]:.1f}" for m in methods] + [o.method, f"{o.score:.4g}", choices]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td:nth-child(2){text-align:left}"
         "img{max-width:100%;display:block;margin:1em 0}")


def write_html(report: "QuantReport", path: Path, worst: int = 4) -> Path:
    overview = overview_png(report)  # draws first: a missing matplotlib fails before anything is written
    sections = []
    for name in report.ranking()[:worst]:
        la = report.layer(name)
        sections.append(f"<h3>{html.escape(name)}</h3><p>outlier channels: "
                        f"{html.escape(', '.join(map(str, la.outliers)) or 'none')}; they alone use "
                        f"{la.outlier_range_share:.0%} of the layer's activation range.</p>"
                        + _img(channels_png(la), f"{name} per-channel statistics"))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>quantization report ({html.escape(report.spec.name)})"
            f"</title><style>{STYLE}</style></head><body><h1>Quantization report: {html.escape(report.spec.name)}</h1>"
            f"<p>{len(report.layers)} layers, {report.batches} calibration batches, analyzed in {report.seconds:.1f} s. "
            f"End to end: {html.escape(report.metric)} of the model with only that layer quantized (float model: "
            f"{report.float_score:.4g}). Outliers: channels whose max |x| exceeds the median channel's by the "
            f"report's factor.</p><h2>Layers</h2>" + _img(overview, "per-layer SQNR and sensitivity") + _table(report)
            + f"<h2>The {min(worst, len(report.layers))} most sensitive layers, per channel</h2>" + "".join(sections)
            + "</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path


def write_overview_png(report: "QuantReport", path: Path) -> Path:
    png = overview_png(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
    return path
