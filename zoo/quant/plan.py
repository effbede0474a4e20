"""A per-layer quantization plan: which precision and which method each layer gets (mixed precision).

``zoo.quantize(model, plan)`` reads a :class:`QuantPlan` where it reads a spec: the plan's base spec
sets the activations and the 4-bit weight format, and each named layer gets one of

- ``w4-g<N>``: 4-bit weights with a scale per ``N`` input channels (the spec's group format),
- ``w4-pc``: 4-bit weights, one scale per output channel,
- ``w8``: 8-bit per-channel weights (the spec's :meth:`QuantSpec.eight_bit` twin, as ``keep_w8``),
- ``float``: left in floating point (as ``keep``),

with its own calibration method. Plans are made by a registered planner (``zoo.quantize(model, "auto",
budget=...)``, :mod:`zoo.quant.auto`), printed by ``zoo.quant.summary`` and saved in the quantized
file's metadata, from which ``zoo.create(name, pretrained=<file>)`` restores them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from zoo.blocks.quant_spec import QuantSpec

FLOAT = "float"
# name -> planner(model, calib, **options) -> QuantPlan; zoo.quant.auto registers "auto"
PLANNERS: dict[str, Callable[..., "QuantPlan"]] = {}


def register_planner(name: str):
    def wrap(fn):
        PLANNERS[name] = fn
        return fn
    return wrap


def precision_spec(precision: str, base: QuantSpec) -> Optional[QuantSpec]:
    """The layer spec a precision label stands for under ``base`` (None: float)."""
    plain = base.with_(keep_w8=())
    if precision == FLOAT:
        return None
    if precision == "w8":
        return plain.eight_bit()
    if precision == "fp8" and base.fp8:
        return plain
    if precision == "w4-pc" and base.weight_bits == 4:
        return plain.with_(group_size=None, group_fallback=False)
    grouped = re.fullmatch(r"w([48])-g(\d+)", precision)
    if grouped and int(grouped.group(1)) == base.weight_bits and not base.fp8:
        return plain.with_(group_size=int(grouped.group(2)), group_fallback=False)
    raise ValueError(f"precision {precision!r} is not a layer precision under {base.name!r}; use 'w4-g<N>', "
                     f"'w4-pc', 'w8' or 'float' (4-bit specs), 'w8-g<N>', 'w8' or 'float' (8-bit specs)")


@dataclass(frozen=True)
class LayerChoice:
    precision: str  # "w4-g64", "w4-pc", "w8" or "float"
    method: str = "rtn"


@dataclass(frozen=True)
class QuantPlan:
    """A precision and a method per layer, and what the plan was chosen under (for the summary)."""

    spec: QuantSpec
    layers: dict[str, LayerChoice]
    budget: str = ""  # e.g. "18% of fp32 (2.01 MB)"
    metric: str = ""
    predicted: Optional[float] = None  # the planner's estimate of the metric
    bytes: int = 0  # the planner's estimate of the saved model's tensors
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, choice in self.layers.items():
            precision_spec(choice.precision, self.spec)  # raises on a bad label

    def layer_spec(self, name: str) -> Optional[QuantSpec]:
        return precision_spec(self.layers[name].precision, self.spec)

    def names(self, precision: str) -> tuple[str, ...]:
        return tuple(n for n, c in self.layers.items() if c.precision == precision)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for choice in self.layers.values():
            counts[choice.precision] = counts.get(choice.precision, 0) + 1
        return counts

    def describe(self) -> str:
        """One line: what the plan was chosen under and how many layers got each precision."""
        mix = ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items()))
        est = f"; predicted {self.metric} {self.predicted:.4g}" if self.predicted is not None else ""
        return f"plan under {self.budget or 'no budget'} ({mix}; {self.bytes / 2**20:.3f} MiB of tensors{est})"

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_json(), "budget": self.budget, "metric": self.metric,
                "predicted": self.predicted, "bytes": self.bytes, "notes": self.notes,
                "layers": {n: [c.precision, c.method] for n, c in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "QuantPlan":
        try:
            layers = {n: LayerChoice(str(p), str(m)) for n, (p, m) in data["layers"].items()}
            return cls(QuantSpec.from_json(data["spec"]), layers, data.get("budget", ""), data.get("metric", ""),
                       data.get("predicted"), int(data.get("bytes", 0)), dict(data.get("notes", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed quantization plan ({type(exc).__name__}: {exc}); quantize the float model "
                             f"again") from None


__all__ = ["QuantPlan", "LayerChoice", "PLANNERS", "register_planner", "precision_spec", "FLOAT"]
