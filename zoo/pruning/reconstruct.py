"""Least-squares reconstruction after a cut: each layer that reads pruned channels refits its weights on
the channels it keeps, so that its output on the calibration batches stays as close as it can to the
full model's (He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017, the
reconstruction step; ThiNet does the same layer by layer).

For a conv or linear layer with weight ``W`` (out, in * k * k) and unfolded inputs ``X`` (positions,
in * k * k, a ones column for the bias), the full layer computes ``X W^T``; keeping the columns ``K``,
the best weights solve ``(X_K^T X_K + lambda I) W_K^T = X_K^T X W^T``. Both sides need only the Gram
matrix ``G = X^T X`` of the layer's inputs in the full model: one pass over the calibration batches
collects it, and the solve runs in float64. Each layer is fitted to the full model's own inputs (the
layers upstream are not yet cut), which keeps every solve independent.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..quant.calibrate import input_of
from .hooks import run_with_hooks

__all__ = ["reconstruct_consumers", "load_fitted", "GRAM_BYTES"]

GRAM_BYTES = 256 * 2**20  # the Gram matrices one calibration pass collects at most (float64)


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(positions, in * k * k [+ 1]) float64: what each output position of ``layer`` multiplies its weight by."""
    x = x.detach().double()
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (B, C*k*k, L)
        cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B * L, C*k*k)
    else:
        cols = x.reshape(-1, x.shape[-1])  # (B * T, C)
    if layer.bias is not None:
        cols = torch.cat([cols, cols.new_ones(cols.shape[0], 1)], 1)
    return cols


def _grams(model: nn.Module, names: list[str], batches: list) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    grams: dict[str, torch.Tensor] = {}

    def record(name: str):
        def pre_hook(layer: nn.Module, args) -> None:
            cols = _columns(layer, args[0])
            grams[name] = grams.get(name, 0) + cols.T @ cols
        return pre_hook

    run_with_hooks(model, {modules[name]: record(name) for name in names}, [(input_of(b),) for b in batches], pre=True)
    return grams


def _gram_size(layer: nn.Module) -> int:
    width = layer.weight[0].numel() + (layer.bias is not None)
    return width * width * 8


@torch.no_grad()
def reconstruct_consumers(model: nn.Module, keep: dict[tuple[str, str], torch.Tensor], batches: Iterable,
                          ridge: float = 1e-5) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The refitted (weight, bias) of every plain conv and linear layer whose inputs ``keep`` cuts, at its
    kept inputs and full outputs, from the full-width ``model`` on ``batches``; apply them after the cut.
    ``ridge`` is relative to the Gram matrix's mean diagonal (it keeps the solve stable when kept channels
    are nearly collinear)."""
    batches = list(batches)
    if not batches:
        raise ValueError("reconstruction fits each layer on calibration batches: pass calib=<a DataLoader or a list "
                         "of input batches>, or reconstruct=False")
    modules = dict(model.named_modules())
    names = [name for (name, dim) in keep if dim == "in" and isinstance(modules[name], (nn.Conv2d, nn.Linear))
             and getattr(modules[name], "groups", 1) == 1]
    was_training = model.training
    model.eval()
    fitted = {}
    try:
        chunk: list[str] = []
        for index, name in enumerate(names):  # a pass per chunk of layers, so the Grams stay bounded
            chunk.append(name)
            size = sum(_gram_size(modules[n]) for n in chunk)
            if index + 1 < len(names) and size + _gram_size(modules[names[index + 1]]) <= GRAM_BYTES:
                continue
            for layer_name, gram in _grams(model, chunk, batches).items():
                fitted[layer_name] = _solve(modules[layer_name], gram, keep[(layer_name, "in")], ridge)
            chunk = []
    finally:
        model.train(was_training)
    return fitted


def _solve(layer: nn.Module, gram: torch.Tensor, kept: torch.Tensor,
           ridge: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    taps = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1  # k * k weights per input channel
    columns = (kept[:, None] * taps + torch.arange(taps)).flatten()  # the kept inputs' columns, in order
    if layer.bias is not None:
        columns = torch.cat([columns, torch.tensor([gram.shape[0] - 1])])
    weight = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)  # (out, in * k * k)
    if layer.bias is not None:
        weight = torch.cat([weight, layer.bias.detach().double()[:, None]], 1)
    gram = gram.to(weight.device)
    columns = columns.to(weight.device)
    kept_gram = gram[columns][:, columns]
    damping = ridge * kept_gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(columns), dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(kept_gram + damping * eye, gram[columns] @ weight.T).T  # (out, kept columns)
    dtype = layer.weight.dtype
    if layer.bias is None:
        return solution.to(dtype), None
    return solution[:, :-1].to(dtype), solution[:, -1].to(dtype)


@torch.no_grad()
def load_fitted(model: nn.Module, fitted: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
                keep: dict[tuple[str, str], torch.Tensor]) -> None:
    """Copy :func:`reconstruct_consumers`' weights into the cut ``model``, less the output rows ``keep`` cut
    from a layer that lost outputs too."""
    modules = dict(model.named_modules())
    for name, (weight, bias) in fitted.items():
        layer, rows = modules[name], keep.get((name, "out"))
        if rows is not None:
            weight = weight[rows.to(weight.device)]
            bias = None if bias is None else bias[rows.to(bias.device)]
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        if bias is not None:
            layer.bias.copy_(bias)
