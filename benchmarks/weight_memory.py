"""Weight memory of quantized models running on the CPU, as a fraction of the fp32 model's.

    python benchmarks/weight_memory.py [--quick]

For each model and spec: the quantized model's parameters and buffers; those plus what
``zoo.optimize`` adds (its folded copy's own tensors and oneDNN's packed int8 weights; tensors shared
between the two count once); the packed weights alone; and the module ``zoo.optimize(...,
release_codes=True)`` returns, on its own (what a deployment holds once the quantized model is let go:
its float tensors and the packed weights, the oneDNN layers' codes dropped). Goal (issue 17): a running
``w4a8`` model at most 0.3x of fp32.
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from zoo.blocks.quant import QuantConv2d, QuantLinear  # noqa: E402
from common import print_table, save_text  # noqa: E402

SPECS = ("w8a8", "w4a8-pcw", "w4a8-pcw-all")  # -all: the first conv and the classifier quantized too


def storages(model: nn.Module) -> dict[int, int]:
    """Bytes of each distinct storage behind the model's parameters and buffers."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in [*model.parameters(), *model.buffers()]}


def packed_bytes(model: nn.Module) -> int:
    """Bytes of oneDNN's packed weights the quantized layers hold."""
    packed = [layer._onednn.weight.packed for layer in model.modules()
              if isinstance(layer, (QuantConv2d, QuantLinear)) and layer._onednn.weight is not None]
    return sum(p.numel() * p.element_size() for p in packed)


def rows_for(name: str, build) -> list[list[str]]:
    base = build().eval()
    fp32 = sum(storages(base).values())
    rows = []
    for spec in SPECS:
        quantized = zoo.quantize(copy.deepcopy(base), spec)
        own = storages(quantized)
        fast = zoo.optimize(quantized, compile=False)
        running = {**own, **storages(fast)}
        packed = packed_bytes(fast)
        lean = zoo.optimize(quantized, compile=False, release_codes=True)
        alone = sum(storages(lean).values()) + packed_bytes(lean)
        rows.append([name, spec, f"{sum(own.values()) / fp32:.3f}x", f"{(sum(running.values()) + packed) / fp32:.3f}x",
                     f"{packed / fp32:.3f}x", f"{alone / fp32:.3f}x"])
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small ResNet and RCAN (a smoke test)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    models = {"resnet18" if args.quick else "resnet50": lambda: zoo.create("resnet18" if args.quick else "resnet50"),
              "RCAN 64ch 2x10": lambda: zoo.create("rcan", scale=2, n_resgroups=2, n_resblocks=2 if args.quick else 10)}
    rows = [row for name, build in models.items() for row in rows_for(name, build)]
    with torch.no_grad():
        report = print_table(["model", "spec", "quantized model", "+ optimize's copy and packed weights",
                              "packed weights alone", "optimize(release_codes=True) alone"], rows)
    save_text(report, "weight_memory.txt")
    return report


if __name__ == "__main__":
    main()
