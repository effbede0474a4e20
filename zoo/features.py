"""Feature pyramids: ``features_only=True`` returns every requested stage's output."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FeatureInfo(list):
    """A model's stages as dicts ``{num_chs, reduction, module}``, shallow to deep, as timm's."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def resolve_out_indices(out_indices: Sequence[int] | None, n_stages: int, name: str) -> tuple[int, ...]:
    """Validate stage indices (negative ones count from the end); bad ones raise ``IndexError``."""
    if out_indices is None:
        return tuple(range(n_stages))
    resolved = []
    for i in out_indices:
        if not isinstance(i, int) or not -n_stages <= i < n_stages:
            raise IndexError(f"{name} has {n_stages} feature stages (indices 0..{n_stages - 1} or "
                             f"-{n_stages}..-1); out_indices={tuple(out_indices)} contains {i!r}")
        resolved.append(i % n_stages)
    if len(set(resolved)) != len(resolved):
        raise IndexError(f"out_indices={tuple(out_indices)} names a stage twice")
    return tuple(sorted(resolved))


class FeatureListNet(nn.Module):
    """Runs a model's top-level children in order and returns the outputs of the chosen stages.

    The children keep their names, so the state dict is the model's own minus the head and
    checkpoints load into either.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        info = model.feature_info
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        self.out_indices = resolve_out_indices(out_indices, len(info), name)
        self.feature_info = FeatureInfo(info[i] for i in self.out_indices)
        self._return = {f["module"] for f in self.feature_info}
        last = self.feature_info[-1]["module"]
        for child_name, child in model.named_children():
            self.add_module(child_name, child)
            if child_name == last:
                break
        self.in_chans = getattr(model, "in_chans", None)
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", {})  # default_cfg: timm's older name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.in_chans is not None and (x.ndim != 4 or x.shape[1] != self.in_chans):
            raise ValueError(f"expected input (B, {self.in_chans}, H, W); got {tuple(x.shape)}")
        features = []
        for child_name, child in self.named_children():
            x = child(x)
            if child_name in self._return:
                features.append(x)
        return features
