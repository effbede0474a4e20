"""Least-squares reconstruction after a cut: each layer that reads pruned channels refits its weights on
the channels it keeps, so that its output on the calibration batches stays as close as it can to the
full model's (He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017, the
reconstruction step; Luo et al., "ThiNet", ICCV 2017, layer by layer).

The layers are refitted in the order the forward pass calls them, each on the inputs it now receives
in the cut model (the layers before it already cut and refitted) and against the outputs it gave in the
full model: so each fit also absorbs the error the earlier layers left. For a conv or linear layer with
full weight ``W`` (out, in * k * k), full-model inputs ``X`` and cut-model inputs ``Z`` (unfolded, with a
ones column for a bias), the new weights solve ``(Z^T Z + lambda I) W_new^T = Z^T X W^T``; only the two
small Gram matrices ``Z^T Z`` and ``Z^T X`` are accumulated over the batches, and solved in float64.
That costs one pass of both models over the calibration batches per refitted layer.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..quant.calibrate import input_of
from ..quant.methods import input_columns
from .hooks import run_with_hooks

__all__ = ["refit_after_cut"]


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(positions, in * k * k [+ 1]) float64: what each output position of ``layer`` multiplies its weight by."""
    cols = input_columns(layer, x.detach().double(), channels_last=False)  # (B * L, C*k*k) or (B * T, C)
    if layer.bias is not None:
        cols = torch.cat([cols, cols.new_ones(cols.shape[0], 1)], 1)
    return cols


def _call_order(model: nn.Module, names: set[str], batch) -> list[str]:
    order: list[str] = []
    modules = dict(model.named_modules())

    def record(name: str):
        def pre_hook(layer: nn.Module, args) -> None:
            if name not in order:
                order.append(name)
        return pre_hook

    run_with_hooks(model, {modules[name]: record(name) for name in names}, [(input_of(batch),)], pre=True)
    return order


@torch.no_grad()
def refit_after_cut(full: nn.Module, cut: nn.Module, keep: dict[tuple[str, str], torch.Tensor], batches: Iterable,
                    ridge: float = 1e-5) -> list[str]:
    """Refit, in place and in call order, every plain conv and linear layer of ``cut`` whose inputs ``keep``
    removed, so that on ``batches`` it reproduces what the same layer of ``full`` (the model before the cut)
    computed. ``ridge`` is relative to the Gram matrix's mean diagonal (it keeps the solve stable when kept
    channels are nearly collinear). Returns the refitted layers' names."""
    batches = list(batches)
    if not batches:
        raise ValueError("reconstruction fits each layer on calibration batches: pass calib=<a DataLoader or a list "
                         "of input batches>, or reconstruct=False")
    full_layers, cut_layers = dict(full.named_modules()), dict(cut.named_modules())
    names = {name for (name, dim) in keep if dim == "in" and isinstance(cut_layers[name], (nn.Conv2d, nn.Linear))
             and getattr(cut_layers[name], "groups", 1) == 1}
    states = full.training, cut.training
    full.eval()
    cut.eval()
    try:
        order = _call_order(full, names, batches[0])
        for name in order:
            inputs: dict[str, torch.Tensor] = {}

            def capture(key: str):
                def pre_hook(layer: nn.Module, args) -> None:
                    inputs[key] = _columns(layer, args[0])
                return pre_hook

            own = cross = 0
            for batch in batches:  # (Z^T Z, Z^T X) over the batches: the cut model's inputs against the full one's
                run_with_hooks(full, {full_layers[name]: capture("full")}, [(input_of(batch),)], pre=True)
                run_with_hooks(cut, {cut_layers[name]: capture("cut")}, [(input_of(batch),)], pre=True)
                own = own + inputs["cut"].T @ inputs["cut"]
                cross = cross + inputs["cut"].T @ inputs["full"]
            _solve_into(cut_layers[name], full_layers[name], own, cross, keep.get((name, "out")), ridge)
    finally:
        full.train(states[0])
        cut.train(states[1])
    return order


def _solve_into(layer: nn.Module, reference: nn.Module, own: torch.Tensor, cross: torch.Tensor,
                rows: torch.Tensor | None, ridge: float) -> None:
    weight = reference.weight.detach().double().reshape(reference.weight.shape[0], -1)  # (out, in * k * k)
    if reference.bias is not None:
        weight = torch.cat([weight, reference.bias.detach().double()[:, None]], 1)
    if rows is not None:  # the layer's own outputs were cut too
        weight = weight[rows.to(weight.device)]
    own, cross = own.to(weight.device), cross.to(weight.device)
    damping = ridge * own.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(own.shape[0], dtype=own.dtype, device=own.device)
    solution = torch.linalg.solve(own + damping * eye, cross @ weight.T).T  # (out, kept columns [+ bias])
    if layer.bias is not None:
        layer.bias.copy_(solution[:, -1].to(layer.bias.dtype))
        solution = solution[:, :-1]
    layer.weight.copy_(solution.reshape(layer.weight.shape).to(layer.weight.dtype))
