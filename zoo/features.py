"""Feature pyramids: ``features_only=True`` returns every requested stage's output.

Two wrappers, as timm's: :class:`FeatureListNet` runs a CNN's top-level children and keeps the stage
outputs (the state dict is the model's own); :class:`FeatureGetterNet` prunes a model with
``forward_intermediates`` to its last tap and asks it for the taps (what a transformer needs, its
taps being reshaped tokens). A model class names its default with ``feature_cls``; ``zoo.create(...,
feature_cls=...)`` picks either.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.utils.checkpoint
from torch import nn

FEATURE_CLASSES = ("list", "getter")


class FeatureInfo(list):
    """A model's stages as dicts ``{num_chs, reduction, module}``, shallow to deep, as timm's."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def _arch_name(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)


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
        self.out_indices = resolve_out_indices(out_indices, len(info), _arch_name(model))
        self.feature_info = FeatureInfo(info[i] for i in self.out_indices)
        self._return = {f["module"] for f in self.feature_info}
        last = self.feature_info[-1]["module"]
        for child_name, child in model.named_children():
            self.add_module(child_name, child)
            if child_name == last:
                break
        self.in_chans = getattr(model, "in_chans", None)
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", {})  # default_cfg: timm's older name
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage (an ``nn.Sequential`` child) in the backward instead of keeping its
        activations (training only)."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.in_chans is not None and (x.ndim != 4 or x.shape[1] != self.in_chans):
            raise ValueError(f"expected input (B, {self.in_chans}, H, W); got {tuple(x.shape)}")
        checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        features = []
        for child_name, child in self.named_children():
            # the stages are checkpointed; the stem's single layers are not (an in-place activation after a
            # checkpointed layer would change the input that layer's recomputation needs)
            if checkpoint and isinstance(child, nn.Sequential):
                x = torch.utils.checkpoint.checkpoint(child, x, use_reentrant=False)
            else:
                x = child(x)
            if child_name in self._return:
                features.append(x)
        return features


class FeatureGetterNet(nn.Module):
    """A model with ``forward_intermediates`` / ``prune_intermediate_layers``, pruned after its last chosen
    tap (its head and, unless ``norm``, its final norm too), returning the chosen taps. The model's
    state dict sits under ``model.``, as timm's getter has it."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None, norm: bool = False,
                 output_fmt: str = "NCHW") -> None:
        super().__init__()
        indices = list(resolve_out_indices(out_indices, len(model.feature_info), _arch_name(model)))
        self.out_indices = model.prune_intermediate_layers(indices, prune_norm=not norm)
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)
        self.model, self.norm, self.output_fmt = model, norm, output_fmt
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", {})

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, norm=self.norm,
                                                output_fmt=self.output_fmt, intermediates_only=True)
