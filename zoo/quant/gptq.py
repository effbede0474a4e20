"""GPTQ as a calibration method, ``method="gptq"`` (Frantar et al., "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", ICLR 2023).

Round to nearest rounds every weight alone. GPTQ rounds a layer's input columns one after the other and
moves each column's rounding error onto the columns not rounded yet, in the proportions that minimise the
layer's squared output error on calibration inputs X (through the inverse of H = XᵀX, taken by its Cholesky
factor), so the errors partly cancel in the output. Each group's grid (or each output channel's, without
groups) is fixed when its first column is reached, from the weights as adjusted so far (the paper's grouped
variant), and handed to the conversion with the adjusted weights (``Transform.weight``, ``Transform.grid``),
which rounds them onto that grid exactly: the stored codes are GPTQ's.

Columns run in the weight's channels-last order (KH, KW, C), the order the groups run along; a convolution's
inputs are its im2col patches in that order (:func:`zoo.quant.methods.input_columns`). Columns are rounded in blocks whose error reaches the later
columns in one matrix product (the paper's lazy batch updates). The Hessian comes from the layer's input
sample that calibration keeps (:attr:`zoo.quant.calibrate.LayerStats.sample`). fp8 specs keep round to
nearest: their grid is not uniform.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from zoo.blocks.quant import segment_grid, segment_levels

from .calibrate import LayerStats
from .methods import Transform, input_columns, register_method, weight_nhwc

BLOCK = 128  # columns rounded before their error reaches the rest in one product
DAMP = 0.01  # added to H's diagonal, as a fraction of its mean: keeps the inverse finite for rank-poor inputs


def _inverse_factor(columns: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of (XᵀX + damping)⁻¹; columns no input reaches get weight 0 (in place)."""
    x = columns.double()
    hessian = x.T @ x  # (K, K)
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0
    hessian.diagonal().add_(DAMP * hessian.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    return torch.linalg.cholesky(inverse, upper=True).float()


@register_method("gptq")
@torch.no_grad()
def gptq(layer: nn.Module, stats: LayerStats, spec, group_size: Optional[int], **_) -> Transform:
    if spec.fp8 or stats.sample is None:
        return Transform()
    bits, symmetric = spec.weight_bits, spec.weight_symmetric
    original = weight_nhwc(layer)  # (N, KH, KW, C)
    shape = original.shape
    weight = original.reshape(shape[0], -1).clone()  # (N, K)
    columns = weight.shape[1]
    factor = _inverse_factor(input_columns(layer, stats.sample.to(weight.device).float()), weight)
    span = group_size or columns  # the columns one grid covers
    block = span * max(1, BLOCK // span) if group_size else BLOCK  # blocks hold whole groups
    rounded = torch.empty_like(weight)
    scales, zeros = [], []
    for start in range(0, columns, block):
        end = min(start + block, columns)
        part = weight[:, start:end].clone()  # (N, block): adjusted column by column below
        errors = torch.empty_like(part)
        for i in range(end - start):
            col = start + i
            if col % span == 0:  # a new grid, from the group's weights as adjusted so far
                scale, zero = segment_grid(part[:, i:i + span][:, None, :] if group_size else
                                           weight[:, col:][:, None, :], bits, symmetric, group_size is not None)
                scales.append(scale)
                zeros.append(zero)
            levels = segment_levels(part[:, i, None, None], scale, zero, bits, symmetric)[:, 0, 0]  # (N,)
            value = (levels - (0 if zero is None else zero[:, 0])) * scale[:, 0].float()
            rounded[:, col] = value
            errors[:, i] = (part[:, i] - value) / factor[col, col]
            part[:, i + 1:] -= errors[:, i, None] * factor[col, col + 1:end][None, :]
        weight[:, end:] -= errors @ factor[start:end, end:]  # the block's error onto every later column
    grid = (torch.cat(scales, 1), None if zeros[0] is None else torch.cat(zeros, 1))  # (N, S) each
    return Transform(weight=rounded.view(shape), grid=grid)
