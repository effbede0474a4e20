"""``zoo.optimize``: the one call that makes a built model fast for inference on its device.

    model = zoo.optimize(zoo.create("rcan_x2", pretrained=True, quant="w8a8-img"))
    model = zoo.optimize(zoo.create("seresnet50"), dtype=torch.bfloat16)   # float, bf16 matrix units

It puts the model in eval mode without gradients, lays convolutional models out channels-last (the
layout oneDNN's kernels and the quantized layers produce, so no layer converts back and forth), makes
the quantized layers' oneDNN weights now rather than on the first call, and compiles the model with
inductor's freezing (weights folded as constants, batch norms into the convolutions) where that pays.
A model whose quantized layers run on oneDNN's int8 kernels stays eager by default: it compiles
whole (each layer is one opaque ``zoo::onednn_int8_layer`` op with the same cached weights, so the
outputs are the eager ones), but measured 5-10% slower than the prepared eager model on a 2-core
AVX512-VNNI CPU (benchmarks/RESULTS.md), the generated loops around the int8 calls costing more
than eager's vectorized ones. ``dtype`` runs the float layers under autocast in that type (bf16
uses AMX / AVX512-BF16 where the CPU has them); a float model is never cast unless asked.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from blocks.quant import QuantConv2d, QuantLinear

__all__ = ["optimize"]

_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


class _Autocast(nn.Module):
    """``module`` run under autocast to ``dtype``, outputs cast back to the input's float type."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.module, self.dtype, self.device_type = module, dtype, device_type

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.module(x, *args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and x.is_floating_point():
            return out.to(x.dtype)
        return out


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def optimize(model: nn.Module, dtype: Optional[torch.dtype] = None, compile: Optional[bool] = None,
             channels_last: Optional[bool] = None) -> nn.Module:
    """The module to run for inference: ``model`` prepared in place, wrapped and compiled.

    Args:
        model: a float or a quantized (:func:`zoo.quantize`) model; its device is its parameters'.
        dtype: ``torch.bfloat16`` / ``torch.float16`` to run the float layers under autocast in that
            type; None keeps the model's own types.
        compile: compile with ``torch.compile`` and inductor's freezing (the first call then takes
            seconds to minutes; later calls are fast). None (default): compile unless a quantized
            layer runs on oneDNN's int8 kernels (see above); True: always; False: eager, with the other
            preparations.
        channels_last: lay the model out channels-last; default: where it has a convolution.

    Call the result under ``torch.inference_mode()`` or ``torch.no_grad()``, with inputs laid out
    as the model is (``x.contiguous(memory_format=torch.channels_last)`` for a convolutional model;
    other inputs work too, at the cost of a conversion).
    """
    if dtype is not None and dtype not in _AUTOCAST_DTYPES:
        raise ValueError(f"optimize(dtype={dtype}): pass torch.bfloat16 or torch.float16 to run the float layers "
                         f"in that type, or None to keep the model's own")
    device = _device(model)
    model.eval().requires_grad_(False)
    if channels_last is None:
        channels_last = any(isinstance(m, (nn.Conv2d, QuantConv2d)) for m in model.modules())
    if channels_last:  # the float convolutions' weights; the quantized layers' codes keep their (N, KH, KW, C)
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    on_onednn = [layer for layer in model.modules()
                 if isinstance(layer, (QuantConv2d, QuantLinear)) and layer.execution(device)[0] == "onednn"]
    for layer in on_onednn:
        layer.onednn_weight()  # made now: eager calls find it ready
    runner: nn.Module = model if dtype is None else _Autocast(model, dtype, device.type)
    if compile is False or (compile is None and on_onednn):
        return runner
    return torch.compile(runner, options={"freezing": True})
