"""``zoo.optimize``: the one call that makes a built model fast for inference on its device.

    model = zoo.optimize(zoo.create("rcan_x2", pretrained=True, quant="w8a8"))
    model = zoo.optimize(zoo.create("seresnet50"), dtype=torch.bfloat16)   # float, bf16 matrix units

It puts the model in eval mode without gradients, lays convolutional models out channels-last (the
layout oneDNN's kernels and the quantized layers produce, so no layer converts back and forth), folds
each batch norm into the convolution before it and each ReLU after a quantized layer into that layer
(found by tracing one call on an example input, and checked on it: a fusion that changes the output is
undone), lets chained quantized convolutions with static activation scales hand each other uint8 codes
(the first one's epilogue quantizes for the second: no float tensor and no quantization pass between
them; :func:`chain_int8`), makes the quantized layers' oneDNN weights now rather than on the first call, and compiles the model with
inductor's freezing (weights folded as constants, batch norms into the convolutions) where that pays.
A model whose quantized layers run on oneDNN's int8 kernels stays eager by default: it compiles
whole (each layer is one opaque ``zoo::onednn_int8_layer`` op with the same cached weights, so the
outputs are the eager ones), but measured 5-10% slower than the prepared eager model on a 2-core
AVX512-VNNI CPU (benchmarks/RESULTS.md), the generated loops around the int8 calls costing more
than eager's vectorized ones. ``dtype`` runs the float layers under autocast in that type (bf16
uses AMX / AVX512-BF16 where the CPU has them); a float model is never cast unless asked.
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from zoo.blocks.quant import QuantConv2d, QuantLinear

from .quant.convert import _set_module

__all__ = ["optimize", "fuse_for_inference", "chain_int8"]

_QUANT = (QuantConv2d, QuantLinear)
# a fusion may move a quantized model's output by its own rounding (a changed epilogue can flip an int8 code
# downstream); a wrong one (an output that something else also read) moves it by far more
_FUSION_TOLERANCE = {False: 1e-4, True: 2e-2}  # relative L2 change allowed: float model, quantized model

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


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor
    read: tuple[int, int]  # (tensor id, version) of the input when the module read it
    wrote: tuple[int, int]  # (tensor id, version) of the output when the module returned it


def _leaf_calls(model: nn.Module, example: torch.Tensor) -> tuple[list[_Call], torch.Tensor]:
    """The convolutions, linear layers, batch norms and ReLUs called on ``example``, in call order, with the
    tensors they read and wrote (kept alive, so that identity means the same tensor) and those tensors'
    versions then: an in-place op in between (a residual ``x += shortcut``, an in-place ReLU) makes the
    tensor a reader sees differ from what its producer wrote, though it is the same object."""
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU) + _QUANT
    calls: list[_Call] = []
    reading: dict[int, tuple[int, int]] = {}

    def before(module, args):
        if args and isinstance(args[0], torch.Tensor):
            reading[id(module)] = (id(args[0]), args[0]._version)

    def hook(name):
        def record(module, args, out):
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                calls.append(_Call(name, module, args[0], out, reading.pop(id(module)), (id(out), out._version)))
        return record

    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    handles = [m.register_forward_pre_hook(before) for _, m in modules]
    handles += [m.register_forward_hook(hook(n)) for n, m in modules]
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for h in handles:
            h.remove()
    return calls, output


def _fold_batchnorm(conv: nn.Module, bn: nn.BatchNorm2d) -> bool:
    """Make ``conv`` emit ``bn(conv(x))``; False where it cannot (a quantized layer with fp16 group scales,
    or a negative BN scale, which a quantized layer's weight scale cannot carry)."""
    k = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps) if bn.affine else \
        1 / torch.sqrt(bn.running_var.float() + bn.eps)
    shift = (bn.bias.detach().float() if bn.affine else 0) - bn.running_mean.float() * k
    with torch.no_grad():
        if isinstance(conv, QuantConv2d):
            if conv.weight_scale.dtype != torch.float32 or (k <= 0).any():
                return False
            conv.weight_scale = conv.weight_scale * k[:, None]
            conv.bias = shift if conv.bias is None else conv.bias.float() * k + shift
            return True
        conv.weight.mul_(k.to(conv.weight).view(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias.detach().float() * k + shift
        conv.bias = nn.Parameter(bias.to(conv.weight), requires_grad=False)
    return True


def _call_counts(calls: list[_Call]) -> Counter:
    """How often each module (by id) was called: only a module called once can be fused or chained."""
    return Counter(id(c.module) for c in calls)


def _copy_sharing(model: nn.Module, touched: set[str]) -> nn.Module:
    """A copy of ``model`` whose modules are its own but which shares the tensors of every module not named in
    ``touched``, and the integer codes of those that are (folding changes a quantized layer's scales and
    bias, never its codes): the memory of the copy is what changes."""
    shared = {id(t): t for name, m in model.named_modules() if name not in touched
              for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    shared.update({id(m.qweight): m.qweight for m in model.modules() if isinstance(m, _QUANT)})
    return copy.deepcopy(model, shared)


def _relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.float() - before.float()).norm() / before.float().norm().clamp_min(1e-12))


def _static_on_onednn(layer: nn.Module, device: torch.device) -> bool:
    return (isinstance(layer, QuantConv2d) and layer.act_scale is not None
            and layer.execution(device)[0] == "onednn")


def chain_int8(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` in which each quantized convolution whose output only the next one reads, both
    with static activation scales on oneDNN, hands that layer its uint8 codes (``codes_out_scale``), and the
    pairs chained. Found by tracing ``model(example)`` as :func:`fuse_for_inference` does; the copy's
    output on ``example`` is checked (an output read elsewhere too would get codes: the chain is undone)."""
    device = _device(model)
    calls, before = _leaf_calls(model, example)
    counts = _call_counts(calls)
    written_by = {c.wrote: c for c in calls if isinstance(c.module, QuantConv2d) and counts[id(c.module)] == 1}
    pairs = [(producer.name, c.name) for c in calls if (producer := written_by.get(c.read)) is not None
             and counts[id(c.module)] == 1 and _static_on_onednn(producer.module, device)
             and _static_on_onednn(c.module, device) and c.module.act_shift is None
             and c.module.act_multiplier is None]
    if not pairs:
        return model, []
    chained = _copy_sharing(model, {producer for producer, _ in pairs})
    for producer, consumer in pairs:
        chained.get_submodule(producer).codes_out_scale = chained.get_submodule(consumer).act_scale
    try:
        with torch.no_grad():
            change = _relative_change(chained(example), before)
    except (RuntimeError, TypeError, ValueError) as exc:  # codes reached an op that takes floats only
        change, why = float("inf"), f"{type(exc).__name__}: {exc}"
    else:
        why = f"the output moved by {change:.1e}"
    if change > _FUSION_TOLERANCE[True]:
        warnings.warn(f"zoo.optimize: handing int8 codes from layer to layer failed on the example input ({why}; "
                      "a chained output is read elsewhere too); running without the chains")
        return model, []
    return chained, [f"{producer} -> {consumer}" for producer, consumer in pairs]


def fuse_for_inference(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with batch norms folded into the convolutions before them and ReLUs folded into
    the quantized layers before them, and what was fused. Found by tracing ``model(example)``: a batch norm
    (or ReLU) that reads exactly what a convolution (quantized layer) wrote, each module called once. The
    copy's output on ``example`` is checked against the model's; if it moved, the model is returned as is."""
    calls, before = _leaf_calls(model, example)
    counts = _call_counts(calls)
    once = {c.name: c for c in calls if counts[id(c.module)] == 1}
    written_by = {c.wrote: c for c in calls if isinstance(c.module, (nn.Conv2d,) + _QUANT)}
    plan: list[tuple[str, str, str]] = []  # (kind, producer, consumer)
    for c in calls:
        producer = written_by.get(c.read)
        if producer is None or c.name not in once or producer.name not in once:
            continue
        if isinstance(c.module, nn.BatchNorm2d) and isinstance(producer.module, (nn.Conv2d, QuantConv2d)):
            plan.append(("bn", producer.name, c.name))
            written_by[c.wrote] = producer  # a ReLU after the batch norm follows the convolution
        elif isinstance(c.module, nn.ReLU) and isinstance(producer.module, _QUANT):
            plan.append(("relu", producer.name, c.name))
    if not plan:
        return model, []
    fused = _copy_sharing(model, {name for _, producer, consumer in plan for name in (producer, consumer)})
    done = []
    for kind, producer, consumer in plan:
        target = fused.get_submodule(producer)
        if kind == "bn" and not _fold_batchnorm(target, fused.get_submodule(consumer)):
            continue
        if kind == "relu":
            target.fused_relu = True
        _set_module(fused, consumer, nn.Identity())
        done.append(f"{consumer} -> {producer}")
    with torch.no_grad():
        after = fused(example)
    quantized = any(isinstance(m, _QUANT) for m in model.modules())
    change = _relative_change(after, before)
    if change > _FUSION_TOLERANCE[quantized]:
        warnings.warn(f"zoo.optimize: folding batch norms / ReLUs moved the output by {change:.1e} on the example "
                      f"input (a folded output is read elsewhere too); running the model unfused")
        return model, []
    return fused, done


def _example_input(model: nn.Module, device: torch.device) -> Optional[torch.Tensor]:
    """A seeded random image in [0, 1] (what an SR model requires, and a valid input to a classifier) of the
    model's ``pretrained_cfg["input_size"]`` (C, H, W), batch 1; None for models that take something else
    (token ids)."""
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if size is None or len(size) != 3:
        return None
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, *size, generator=generator).to(device)


def optimize(model: nn.Module, dtype: Optional[torch.dtype] = None, compile: Optional[bool] = None,
             channels_last: Optional[bool] = None, example_input: Optional[torch.Tensor] = None,
             fuse: bool = True, release_codes: bool = False, merge: bool = True) -> nn.Module:
    """The module to run for inference: ``model`` prepared in place (eval, no gradients, layout), its
    batch norms and ReLUs folded into a copy, wrapped and compiled. ``model`` itself keeps its modules
    (save it, not the result).

    Args:
        model: a float or a quantized (:func:`zoo.quantize`) model; its device is its parameters'.
        dtype: ``torch.bfloat16`` / ``torch.float16`` to run the float layers under autocast in that
            type; None keeps the model's own types.
        compile: compile with ``torch.compile`` and inductor's freezing (the first call then takes
            seconds to minutes; later calls are fast). None (default): compile unless a quantized
            layer runs on oneDNN's int8 kernels (see above); True: always; False: eager, with the other
            preparations.
        channels_last: lay the model out channels-last; default: where it has a convolution.
        example_input: what to trace the fusions on; default: a random image of the model's
            ``pretrained_cfg["input_size"]`` (no fusion for models without one).
        fuse: fold batch norms and ReLUs (see :func:`fuse_for_inference`).
        merge: in the copy, stack projections that read the same input into one layer where a module offers
            it (``merge_projections()``: the MoC LM's attention q, k and v), float or integer alike: one GEMM
            and one activation quantization instead of three, the same values per output channel.
        release_codes: in the copy, drop the integer codes of the layers that run on oneDNN, whose
            packed weights hold the same int8 values (:meth:`~zoo.blocks.quant.QuantConv2d.release_codes`):
            the result then holds each such layer's weights once (a ``w4a8`` model: 0.25x of fp32 instead
            of 0.375x, once ``model`` itself is let go). It runs eagerly, on oneDNN only.

    Call the result under ``torch.inference_mode()`` or ``torch.no_grad()``, with inputs laid out
    as the model is (``x.contiguous(memory_format=torch.channels_last)`` for a convolutional model;
    other inputs work too, at the cost of a conversion).
    """
    if dtype is not None and dtype not in _AUTOCAST_DTYPES:
        raise ValueError(f"optimize(dtype={dtype}): pass torch.bfloat16 or torch.float16 to run the float layers "
                         f"in that type, or None to keep the model's own")
    if release_codes and compile:
        raise ValueError("optimize(release_codes=True) keeps the result eager (its layers run on oneDNN only): "
                         "leave compile unset or False")
    given = model
    device = _device(model)
    model.eval().requires_grad_(False)
    if channels_last is None:
        channels_last = any(isinstance(m, (nn.Conv2d, QuantConv2d)) for m in model.modules())
    if channels_last:  # the float convolutions' weights; the quantized layers' codes keep their (N, KH, KW, C)
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    if fuse:
        example = example_input if example_input is not None else _example_input(model, device)
        if example is not None:
            model, _ = fuse_for_inference(model, example)
            if compile is not True:  # codes are handed on in eager mode only
                model, _ = chain_int8(model, example)
    mergeable = merge and any(hasattr(m, "merge_projections") for m in model.modules())
    if (release_codes or mergeable) and model is given:  # nothing was folded: a copy sharing every tensor
        model = _copy_sharing(model, set())
    if mergeable:
        for module in [m for m in model.modules() if hasattr(m, "merge_projections")]:
            module.merge_projections()
    on_onednn = [layer for layer in model.modules()
                 if isinstance(layer, (QuantConv2d, QuantLinear)) and layer.execution(device)[0] == "onednn"]
    for layer in on_onednn:
        layer.onednn_weight()  # made now: eager calls find it ready
        if release_codes:  # in the copy: the quantized model keeps its codes
            layer.release_codes()
    runner: nn.Module = model if dtype is None else _Autocast(model, dtype, device.type)
    if compile is False or (compile is None and on_onednn):
        return runner
    return torch.compile(runner, options={"freezing": True})
