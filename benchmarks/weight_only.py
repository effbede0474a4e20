"""Weight-only linear layers on the CPU: PyTorch's packed int8 / int4 kernels against the fp32 layer and the
dequantize-then-matmul path, by the number of rows (tokens) a call takes.

For each layer shape (a 130M MoC LM's attention and FFN projections) and row count M: the fp32 ``nn.Linear``,
a ``w8a16`` / ``w4a16`` ``QuantLinear`` forced to dequantize (what every call did before
``zoo.kernels.weight_only``) and the same layer on the packed kernel (``aten._weight_int8pack_mm`` /
``aten._weight_int4pack_mm_for_cpu``, bf16 activations); eager, one thread, interleaved rounds, medians. The
ratio is fp32's time over the path's: above 1 the path is faster than the float layer. Where the packed
kernel stops beating the dequantized path sets ``zoo.kernels.weight_only.MAX_ROWS``.

    python benchmarks/weight_only.py [--quick] [--repeats 15]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from zoo.blocks.quant import QuantLinear  # noqa: E402
from zoo.kernels import weight_only  # noqa: E402
from common import interleaved_medians_ms, machine, print_table  # noqa: E402

SHAPES = {"768 -> 768": (768, 768), "768 -> 2048": (768, 2048), "2048 -> 768": (2048, 768)}
ROWS = (1, 4, 16, 64)


def _paths(k: int, n: int, rows: int) -> dict[str, object]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n).eval()
    x = torch.randn(rows, k)  # (M, K)
    calls = {"fp32": lambda: linear(x)}
    for spec in ("w8a16", "w4a16"):
        layer = QuantLinear.from_float(linear, zoo.quant.QuantSpec.parse(spec),
                                       zoo.quant.QuantSpec.parse(spec).group_for(k)).eval()
        weights = layer._weight_only.get(layer.qweight, layer.weight_scale, layer.weight_zero, layer.spec.weight_bits,
                                         k, layer.group_size)

        def dequantized(layer=layer):
            weight = layer.dequantized_weight().view(layer.out_channels, -1)  # (N, K)
            return torch.nn.functional.linear(x, weight, layer.bias)

        calls[f"{spec} dequantize"] = dequantized
        calls[f"{spec} packed"] = lambda weights=weights, layer=layer: weight_only.linear(x, weights, layer.bias)
    return calls


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shape, rows 1 and 16 (a smoke pass)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (medians)")
    args = parser.parse_args(argv)
    why = weight_only.unavailable_reason()
    if why:
        raise SystemExit(f"weight-only kernels unavailable: {why}")
    shapes = dict(list(SHAPES.items())[:1]) if args.quick else SHAPES
    rows_list = (1, 16) if args.quick else ROWS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    table = []
    try:
        with torch.inference_mode():
            for label, (k, n) in shapes.items():
                for rows in rows_list:
                    times = interleaved_medians_ms(_paths(k, n, rows), args.repeats)
                    base = times["fp32"]
                    table += [[label, str(rows), path, f"{ms * 1e3:.0f}", f"{base / ms:.2f}x"] for path, ms in times.items()]
    finally:
        torch.set_num_threads(threads)
    report = print_table(["layer (K -> N)", "rows M", "path", "us", "fp32 / path"], table)
    print(f"{machine()}; eager, 1 thread, median of {args.repeats} interleaved rounds; packed = bf16 activations; "
          f"zoo runs the packed kernel for M <= {weight_only.MAX_ROWS[8]} (int8), {weight_only.MAX_ROWS[4]} (int4)")
    return report


if __name__ == "__main__":
    main()
