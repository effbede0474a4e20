"""What a quantized model is: :class:`QuantSpec`, parsed from ``w8a8``, ``w4a8``, ``w4a16``, ``w8a16``, ``fp8``.

A spec string is a preset name with optional ``-`` suffixes: ``g<N>`` a weight group size, ``pcw`` per-channel weight scales, ``asym``
asymmetric weights (4 bit only), ``tok`` dynamic per-token activation scales everywhere (one per
pixel for every convolution: the most accurate, and slow on the CPU), ``static`` calibrated per-tensor
activation scales, ``pc`` static per-channel activation scales (folded into the weights), ``all``
no layer kept in float (the default keeps the input layer and the classifier), e.g. ``w4a8-g128-asym``. The int8-activation presets use per-image scales for k x k convolutions and
per-token ones elsewhere (``per_image``; ``img`` says so explicitly).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from .validation import closest

PRESETS = ("w8a8", "w4a8", "w4a16", "w8a16", "fp8")
ACT_GRANULARITIES = ("per_token", "per_image", "per_tensor", "per_channel")
# the group size a 4-bit preset uses where it divides a layer's input channels (per channel elsewhere)
DEFAULT_W4_GROUP = 64


@dataclass(frozen=True)
class QuantSpec:
    """How weights and activations are quantized.

    Args:
        weight_bits: 4 (packed two per byte) or 8.
        act_bits: 8 (int8 activations, integer matmuls) or None (weight-only: activations stay in
            the input's float dtype, the weights are dequantized on the fly).
        fp8: e4m3 weights and activations (per-channel / per-token scales) instead of integers.
        weight_symmetric: symmetric weights (no zero point); asymmetric needs ``weight_bits=4``.
        group_size: weights share a scale over this many input channels (within one kernel tap of
            a convolution); None is one scale per output channel.
        group_fallback: where ``group_size`` does not divide a layer's input channels, use one scale
            per output channel for that layer instead of raising (the presets set it).
        act_granularity: ``per_image`` (the presets: dynamic, one scale per image for a k x k
            convolution's input and per token for linear and 1x1 layers, so that every layer runs on
            the CPU's int8 kernels), ``per_token`` (dynamic, one scale per row / pixel everywhere: the
            most accurate, but a k x k convolution then mixes scales within its reduction and runs on
            the exact float emulation on the CPU), ``per_tensor`` (one scale per layer) or
            ``per_channel`` (one per input channel, folded into the weights); the last two are static
            and need calibration data. Weight-only and fp8 specs are ``per_token``.
        keep: ``fnmatch`` patterns of module names left in floating point; ``"<first>"`` and
            ``"<last>"`` name the layer that reads the input and the classifier, as the model's
            ``pretrained_cfg`` names them (``first_conv``, ``classifier``; nothing where that layer is
            not quantizable, as an LM's token embedding), else the first and last quantizable layers
            in module order.
        keep_w8: patterns (as ``keep``) of layers that a 4-bit spec quantizes with 8-bit per-channel
            weights instead (mixed precision, for the few layers too sensitive for 4 bits, e.g. the 1x1
            downsample convolutions of a ResNet: ``keep_w8=("*downsample*",)``); activations as the rest.
    """

    weight_bits: int = 8
    act_bits: Optional[int] = 8
    fp8: bool = False
    weight_symmetric: bool = True
    group_size: Optional[int] = None
    group_fallback: bool = False
    act_granularity: str = "per_image"
    keep: tuple[str, ...] = ("<first>", "<last>")
    keep_w8: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.fp8:
            if self.weight_bits != 8 or self.act_bits != 8 or self.group_size is not None:
                raise ValueError("fp8 quantization is e4m3 weights and activations: weight_bits=8, act_bits=8, "
                                 "no group_size")
        if self.weight_bits not in (4, 8):
            raise ValueError(f"weight_bits={self.weight_bits} is not supported; use 4 or 8")
        if self.act_bits not in (8, 16, None):
            raise ValueError(f"act_bits={self.act_bits} is not supported; use 8, or None (16) for weight-only")
        if self.act_bits == 16:
            object.__setattr__(self, "act_bits", None)
        if not self.weight_symmetric and self.weight_bits != 4:
            raise ValueError("asymmetric weights are supported at 4 bits; 8-bit weights are symmetric "
                             "(set weight_symmetric=True or weight_bits=4)")
        if self.group_size is not None and (self.group_size < 2 or self.group_size % 2):
            raise ValueError(f"group_size={self.group_size} must be an even number >= 2 (or None: per channel)")
        if self.act_granularity not in ACT_GRANULARITIES:
            raise ValueError(f"act_granularity={self.act_granularity!r}; use one of {', '.join(ACT_GRANULARITIES)}")
        if (self.act_bits is None or self.fp8) and self.act_granularity == "per_image":
            object.__setattr__(self, "act_granularity", "per_token")  # float / e4m3 activations: per token
        if self.act_bits is None and self.act_granularity != "per_token":
            raise ValueError("static activation scales need quantized activations (act_bits=8)")
        object.__setattr__(self, "keep", tuple(self.keep))
        object.__setattr__(self, "keep_w8", tuple(self.keep_w8))
        if self.keep_w8 and (self.weight_bits != 4 or self.fp8):
            raise ValueError(f"keep_w8={self.keep_w8} gives some layers 8-bit weights in a 4-bit spec; this spec "
                             f"already has {'fp8' if self.fp8 else '8-bit'} weights: drop keep_w8")

    # ---------------------------------------------------------------------------------------------
    @property
    def weight_only(self) -> bool:
        return self.act_bits is None

    @property
    def static_activations(self) -> bool:
        return self.act_granularity in ("per_tensor", "per_channel")

    def eight_bit(self) -> "QuantSpec":
        """The spec of a ``keep_w8`` layer: 8-bit symmetric per-channel weights, the same activations."""
        return replace(self, weight_bits=8, weight_symmetric=True, group_size=None, group_fallback=False, keep_w8=())

    @property
    def name(self) -> str:
        """The shortest string that parses back to this spec (or JSON when no string says it)."""
        base = "fp8" if self.fp8 else f"w{self.weight_bits}a{self.act_bits or 16}"
        parts = [base]
        preset = QuantSpec.parse(base)
        if self.group_size != preset.group_size:
            parts.append(f"g{self.group_size}" if self.group_size else "pcw")
        if not self.weight_symmetric:
            parts.append("asym")
        if self.act_granularity != preset.act_granularity:
            parts.append({"per_token": "tok", "per_image": "img", "per_tensor": "static",
                          "per_channel": "pc"}[self.act_granularity])
        if not self.keep:
            parts.append("all")
        text = "-".join(parts)
        try:
            if QuantSpec.parse(text) == self:
                return text
        except ValueError:
            pass
        return self.to_json()

    def group_for(self, in_channels: int) -> Optional[int]:
        """The group size used for a layer with ``in_channels`` inputs per kernel tap (None: per channel)."""
        if self.group_size is None or self.fp8:
            return None
        if in_channels % self.group_size == 0:
            return self.group_size
        if self.group_fallback:
            return None
        raise ValueError(f"group_size={self.group_size} does not divide a layer's {in_channels} input channels; "
                         f"pick a divisor of {in_channels}, keep that layer in float (keep=[...]), or use "
                         f"group_size=None for per-channel scales")

    # ---------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "QuantSpec":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"quantization spec has unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def parse(cls, spec: Any) -> "QuantSpec":
        """A spec from a :class:`QuantSpec`, a dict of its fields, a JSON string, or a spec string."""
        if isinstance(spec, QuantSpec):
            return spec
        if isinstance(spec, dict):
            return cls(**spec)
        if not isinstance(spec, str):
            raise TypeError(f"quant={spec!r}: pass a spec string ({', '.join(PRESETS)}), a dict or a QuantSpec")
        text = spec.strip().lower()
        if text.startswith("{"):
            return cls.from_json(text)
        base, *suffixes = text.split("-")
        if base not in PRESETS:
            near = closest(base, PRESETS)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"quant={spec!r} is not a quantization spec{hint}; use one of {', '.join(PRESETS)}, "
                             f"optionally with suffixes -g<N>, -pcw, -asym, -tok, -img, -static, -pc, -all (e.g. 'w4a8-g128')")
        if base == "fp8":
            kwargs: dict = {"fp8": True}
        else:
            w, a = re.fullmatch(r"w(\d+)a(\d+)", base).groups()  # type: ignore[union-attr]
            kwargs = {"weight_bits": int(w), "act_bits": None if a == "16" else int(a)}
            if w == "4":
                kwargs.update(group_size=DEFAULT_W4_GROUP, group_fallback=True)
        for suffix in suffixes:
            if re.fullmatch(r"g\d+", suffix):
                kwargs.update(group_size=int(suffix[1:]), group_fallback=False)
            elif suffix == "pcw":
                kwargs.update(group_size=None, group_fallback=False)
            elif suffix == "asym":
                kwargs["weight_symmetric"] = False
            elif suffix == "img":
                kwargs["act_granularity"] = "per_image"
            elif suffix == "tok":
                kwargs["act_granularity"] = "per_token"
            elif suffix == "static":
                kwargs["act_granularity"] = "per_tensor"
            elif suffix == "pc":
                kwargs["act_granularity"] = "per_channel"
            elif suffix == "all":
                kwargs["keep"] = ()  # the input layer and the classifier quantized too
            else:
                raise ValueError(f"quant={spec!r}: unknown suffix {suffix!r}; use -g<N> (weight group size), -pcw (per-channel weights), "
                                 f"-asym, -tok (per-token activations everywhere), -img (per-image activations for k x k "
                                 f"convolutions: the default), -static (per-tensor activations), -pc (per-channel "
                                 f"activations) or -all (no layer kept in float)")
        return cls(**kwargs)

    def with_(self, **changes) -> "QuantSpec":
        return replace(self, **changes)
