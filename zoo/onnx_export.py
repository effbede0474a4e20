"""ONNX export: a zoo model as an ONNX graph that onnxruntime (or any ONNX runtime) runs as it is.

>>> model = zoo.create("seresnet50", pretrained=True)
>>> zoo.export_onnx(model, "seresnet50.onnx")          # checked against eager when onnxruntime is installed

The model goes through ``torch.export``; every ``zoo::`` op is then replaced by its plain-PyTorch
reference (:func:`zoo.kernels.export.reference_decompositions`), and ``torch.onnx`` translates the graph.
The batch dimension stays dynamic by default. Quantized zoo models are refused: their integer layers
run on oneDNN / Triton kernels that ONNX cannot name; export the float model and quantize the ONNX
graph with onnxruntime's own tools (``onnxruntime.quantization.quantize_static``), as
``benchmarks/cpu_inference.py`` does for its onnxruntime rows.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from torch.utils import _pytree

from zoo.blocks.moc_ffn import MoCFFN
from zoo.blocks.quant import QuantConv2d, QuantLinear
from zoo.kernels.export import reference_decompositions

from .files import atomic_write

# torch.onnx's exporter needs onnx and onnxscript; the check, onnxruntime
ONNX_EXTRA = 'pip install onnx onnxscript onnxruntime (the "onnx" extra: pip install -e ".[onnx]" in a checkout)'


class ONNXMismatchError(RuntimeError):
    """The exported graph, run by onnxruntime, disagrees with the model in eager PyTorch."""


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"export_onnx needs the '{module}' package, which is not installed: {ONNX_EXTRA}")


def default_example(model: nn.Module, size: Optional[int] = None) -> tuple[torch.Tensor, ...]:
    """A forward's arguments for ``model``, batch 1: its own ``example_inputs(1, size)`` (token ids, images
    in its range), else a random image of its ``pretrained_cfg["input_size"]``; ``size`` (image side or
    sequence length) defaults to the cfg's."""
    cfg_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if hasattr(model, "example_inputs"):
        length = size or (cfg_size[-1] if cfg_size else 64)
        return tuple(model.example_inputs(1, length, generator=torch.Generator().manual_seed(0)))
    if not cfg_size:
        raise ValueError(f"export_onnx: {type(model).__name__} has no pretrained_cfg['input_size'] to make an "
                         "example input from; pass example_input=<a tensor shaped like the model's input>")
    shape = (cfg_size[0], size, size) if size else tuple(cfg_size)
    param = next(model.parameters(), None)
    return (torch.randn(1, *shape, device=param.device if param is not None else "cpu"),)


def _example(model: nn.Module, example_input: Union[torch.Tensor, tuple, None]) -> tuple[torch.Tensor, ...]:
    """The forward's arguments: the caller's, else :func:`default_example`."""
    if example_input is None:
        return default_example(model)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError("export_onnx: example_input must be a tensor or a tuple of tensors; got "
                        f"{type(example_input).__name__}")
    return args


def _quantized_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def _sqnr_db(ours: torch.Tensor, ref: torch.Tensor) -> float:
    err = (ours.double() - ref.double()).pow(2).mean().item()
    return math.inf if err == 0 else 10 * math.log10(max(ref.double().pow(2).mean().item(), 1e-30) / err)


def _check(path: Path, model: nn.Module, args: tuple[torch.Tensor, ...], min_sqnr_db: float) -> float:
    """Run the saved graph in onnxruntime on ``args`` and compare with eager: the worst output SQNR in dB."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
    got = session.run(None, feeds)
    with torch.no_grad():
        expected = [t for t in _pytree.tree_leaves(model(*args)) if isinstance(t, torch.Tensor)]
    if len(got) != len(expected):
        raise ONNXMismatchError(f"the ONNX graph has {len(got)} outputs; the model returns {len(expected)}")
    worst = math.inf
    for i, (ours, ref) in enumerate(zip(got, expected)):
        ours = torch.from_numpy(ours)
        if tuple(ours.shape) != tuple(ref.shape):
            raise ONNXMismatchError(f"output {i}: onnxruntime gives shape {tuple(ours.shape)}, the model "
                                    f"{tuple(ref.shape)}")
        if ref.is_floating_point():
            worst = min(worst, _sqnr_db(ours, ref.cpu()))
        elif not torch.equal(ours, ref.cpu()):
            raise ONNXMismatchError(f"output {i} ({ref.dtype}) differs between onnxruntime and the model")
    if worst < min_sqnr_db:
        selects = any(isinstance(m, MoCFFN) and not m.is_dense for m in model.modules())
        why = (" The model selects channels by top-K (a Mixture-of-Channels FFN): where onnxruntime's GEMMs round a "
               "near-tie the other way the selection flips, which this check does not allow for (the dense twin "
               "passes it). Compare the two on your data, then pass min_sqnr_db= what you accept, or check=False."
               if selects else "")
        raise ONNXMismatchError(f"onnxruntime's outputs agree with the model's to {worst:.1f} dB SQNR only "
                                f"(at least {min_sqnr_db:.0f} dB expected of the same float graph); the file "
                                f"was kept at {path} for inspection.{why}")
    return worst


def export_onnx(model: nn.Module, path: Union[str, Path], example_input: Optional[torch.Tensor] = None, *,
                dynamic_batch: bool = True, opset: Optional[int] = None, check: Optional[bool] = None,
                min_sqnr_db: float = 80.0) -> Path:
    """Export a float zoo model to an ONNX file; returns the path.

    Args:
        model: a float model (put in eval mode for the export and restored after).
        path: the ``.onnx`` file to write (atomically: no half-written file on a failure).
        example_input: the forward's argument (a tensor, or a tuple of them) to trace; default: the
            model's own ``example_inputs(1, size)`` (token ids, images in its range) or a random image of
            its ``pretrained_cfg["input_size"]``.
        dynamic_batch: keep the batch dimension symbolic (default); False fixes it to the example's.
        opset: the ONNX opset; default: ``torch.onnx``'s.
        check: run the file in onnxruntime on the example and compare with eager PyTorch (output SQNR of
            at least ``min_sqnr_db``); default: when onnxruntime is installed.

    Raises ``ImportError`` naming the packages to install when ``onnx`` / ``onnxscript`` are missing,
    ``ValueError`` for a quantized model, :class:`ONNXMismatchError` when the check fails.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"export_onnx writes an .onnx file; got {str(path)!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"export_onnx: the folder {path.parent} does not exist; create it first")
    quantized = _quantized_layers(model)
    if quantized:
        raise ValueError(f"export_onnx takes a float model; {len(quantized)} layer(s) are quantized ({quantized[0]}, "
                         "...). Export the float model and quantize the ONNX graph with "
                         "onnxruntime.quantization.quantize_static")
    for module in ("onnx", "onnxscript"):
        _require(module)
    if check is None:
        check = importlib.util.find_spec("onnxruntime") is not None
    elif check:
        _require("onnxruntime")
    args = _example(model, example_input)
    trace_args, dynamic_shapes = args, None
    if dynamic_batch:  # torch.export specialises a size-1 dimension: trace with a batch of two
        batch = torch.export.Dim("batch")
        trace_args = tuple(a.expand(2, *a.shape[1:]).clone() if a.shape[0] == 1 else a for a in args)
        dynamic_shapes = tuple({0: batch} for _ in args)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            exported = torch.export.export(model, trace_args, dynamic_shapes=dynamic_shapes)
        table = torch.export.default_decompositions()
        table.update(reference_decompositions())
        exported = exported.run_decompositions(table)
        left = sorted({str(n.target) for n in exported.graph.nodes
                       if n.op == "call_function" and str(n.target).startswith("zoo.")})
        if left:
            raise ValueError(f"export_onnx: {', '.join(left)} have no ONNX form (integer or cache ops); export "
                             "the float model")
        program = torch.onnx.export(exported, dynamo=True, opset_version=opset, verbose=False)
        atomic_write(path, lambda tmp: program.save(tmp))
        if check:
            _check(path, model, args, min_sqnr_db)
    finally:
        model.train(was_training)
    return path
