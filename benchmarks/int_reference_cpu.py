"""The CPU integer reference (``zoo.kernels.int_gemm.int_conv2d_reference``, the CPU path of every quantized
layer) on linear- and conv-shaped operands, optionally against an earlier version of it.

    python benchmarks/int_reference_cpu.py                          # this checkout's reference alone
    python benchmarks/int_reference_cpu.py --baseline-rev a7c4b05    # and the function at that git revision

The baseline is read with ``git show <rev>:kernels/int_gemm.py`` and executed up to its custom-op
registration, so both functions run in one process on the same operands, interleaved; the "equal"
column checks that they return the same floats bit for bit. Medians of ``--repeats`` rounds, in ms.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import interleaved_medians_ms, machine, print_table  # noqa: E402

from zoo import kernels  # noqa: E402
from zoo.kernels.int_gemm import int_conv2d_reference  # noqa: E402

# name, (B, H, W, C), N, kernel, stride, weight bits, group size
CASES = [("linear 1x768->2048 w4 g64", (1, 1, 1, 768), 2048, 1, 1, 4, 64),
         ("linear 16x768->2048 w4 g64", (1, 1, 16, 768), 2048, 1, 1, 4, 64),
         ("linear 256x768->2048 w4 g64", (1, 1, 256, 768), 2048, 1, 1, 4, 64),
         ("linear 1x2048->768 w8", (1, 1, 1, 2048), 768, 1, 1, 8, None),
         ("linear 256x2048->768 w8", (1, 1, 256, 2048), 768, 1, 1, 8, None),
         ("conv3x3 1x32x32x64->64 w4 g32", (1, 32, 32, 64), 64, 3, 1, 4, 32),
         ("conv3x3 1x32x32x64->64 w8", (1, 32, 32, 64), 64, 3, 1, 8, None),
         ("conv1x1 s2 1x32x32x64->128 w4", (1, 32, 32, 64), 128, 1, 2, 4, None)]


def baseline_reference(rev: str):
    """``int_conv2d_reference`` as it was at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:kernels/int_gemm.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    source = source.split('_int_conv2d = kernel_op("int_conv2d")')[0]  # stop before it registers its op
    source = source.replace("from .dispatch import", "from zoo.kernels.dispatch import")
    namespace: dict = {}
    exec(compile(source, f"{rev}:kernels/int_gemm.py", "exec"), namespace)
    return namespace["int_conv2d_reference"]


def operands(shape, n: int, k: int, stride: int, bits: int, group):
    gen = torch.Generator().manual_seed(0)
    b, h, w, c = shape
    q = torch.randint(-127, 128, shape, dtype=torch.int8, generator=gen)
    a_scale = torch.rand(b, h, w, generator=gen)
    if bits == 8:
        weight = torch.randint(-127, 128, (n, k, k, c), dtype=torch.int8, generator=gen)
    else:
        weight = kernels.pack_int4(torch.randint(0, 16, (n, k, k, c), generator=gen))
    w_scale = torch.rand(n, k * k * (c // group), generator=gen).half() if group else torch.rand(n, 1, generator=gen)
    return (q, a_scale, weight, w_scale, None, torch.randn(n, generator=gen), (stride, stride), (k // 2, k // 2),
            bits, group, torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", default=None, help="also time the reference at this git revision")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    old = baseline_reference(args.baseline_rev) if args.baseline_rev else None
    rows = []
    for name, shape, n, k, stride, bits, group in CASES:
        ops = operands(shape, n, k, stride, bits, group)
        fns = {"new": lambda: int_conv2d_reference(*ops)}
        if old is not None:
            fns["old"] = lambda: old(*ops)
        ms = interleaved_medians_ms(fns, args.repeats)
        row = [name, f"{ms['new']:.2f}"]
        if old is not None:
            row = [name, f"{ms['old']:.2f}", f"{ms['new']:.2f}", f"{ms['old'] / ms['new']:.2f}",
                   str(torch.equal(old(*ops), int_conv2d_reference(*ops)))]
        rows.append(row)
    header = ["operands", "ms"] if old is None else ["operands", f"{args.baseline_rev} ms", "this ms", "speed-up",
                                                     "equal"]
    print_table(header, rows)
    print(machine())


if __name__ == "__main__":
    main()
