"""What to remove: a global FLOPs, parameter or measured-latency fraction, or a rate per group."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["PruneTarget", "TARGET_KINDS"]

TARGET_KINDS = ("flops", "params", "latency")


@dataclass(frozen=True)
class PruneTarget:
    """``kind`` ``flops`` / ``params`` / ``latency``: remove ``amount`` (in [0, 1)) of the model's MACs, its
    parameters or its conv and linear layers' time measured on this machine (:mod:`zoo.pruning.latency`), the
    per-group rates chosen by a global ranking; ``rates``: remove that fraction of each named group."""

    kind: str = "flops"
    amount: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, target: object) -> "PruneTarget":
        """``"flops=0.5"``, ``"params=0.3"``, ``"latency=0.4"``, a bare number (a FLOPs fraction), a dict of
        group rates, or a PruneTarget."""
        if isinstance(target, PruneTarget):
            return target
        if isinstance(target, Mapping):
            rates = {}
            for name, rate in target.items():
                rates[str(name)] = _fraction(rate, f"the rate of group {name!r}")
            return cls("rates", 0.0, rates)
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            return cls("flops", _fraction(target, "target"))
        if isinstance(target, str):
            kind, sep, amount = target.partition("=")
            kind = kind.strip()
            if not sep or kind not in TARGET_KINDS:
                raise ValueError(f"target={target!r} is not a pruning target; write 'flops=<fraction removed>', "
                                 f"'params=<fraction removed>' or 'latency=<fraction removed>', e.g. 'flops=0.5', or "
                                 f"give a dict of group rates")
            try:
                value = float(amount)
            except ValueError:
                raise ValueError(f"target={target!r}: {amount.strip()!r} is not a number; write e.g. "
                                 f"'{kind}=0.5' for half the {kind} removed") from None
            return cls(kind, _fraction(value, f"target {kind}"))
        raise TypeError(f"target must be 'flops=<fraction>', 'params=<fraction>', 'latency=<fraction>', a number or "
                        f"a dict of group rates; got {type(target).__name__}")


def _fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value < 1:
        raise ValueError(f"{what} must be the fraction to remove, in [0, 1) (0 keeps the model as it is); got "
                         f"{value!r}")
    return float(value)
