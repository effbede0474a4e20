"""How a conv's time follows its channel count on this machine: the staircase behind ``round_to`` and
``target="latency=..."`` in zoo.prune.

A 3x3 conv with C in and C out channels is timed alone (eager, one thread, interleaved repeats, medians)
at the shapes of the two pruning benchmark models: the quickstart RCAN's trunk (1 x C x 96 x 96) and the
digits SE-ResNet-18's first stage (16 x C x 8 x 8), in both memory layouts: NCHW, and channels-last (what
zoo's RCAN runs in CPU inference). The time-per-MAC columns compare with the widest conv of the same layout:
1.00 means the conv does the work of its width, 2.00 that it takes as long as twice its MACs.

    python benchmarks/conv_widths.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians_ms, machine, print_table  # noqa: E402

SHAPES = {"RCAN trunk 1x96x96": ((1, 96, 96), (8, 12, 16, 20, 24, 28, 32)),
          "digits stage 1 16x8x8": ((16, 8, 8), (16, 24, 32, 40, 48, 56, 64))}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (medians)")
    repeats = parser.parse_args(argv).repeats
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    calls = {}
    for label, ((batch, h, w), widths) in SHAPES.items():
        for width in widths:
            conv = torch.nn.Conv2d(width, width, 3, padding=1).eval()
            x = torch.rand(batch, width, h, w)  # (B, C, H, W)
            x_cl = x.contiguous(memory_format=torch.channels_last)  # the same values, C innermost in memory
            calls[(label, width, "nchw")] = (lambda conv=conv, x=x: conv(x))
            calls[(label, width, "cl")] = (lambda conv=conv, x=x_cl: conv(x))
    try:
        with torch.inference_mode():
            times = interleaved_medians_ms(calls, repeats)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for label, (_, widths) in SHAPES.items():
        for w in widths:
            row = [label, str(w)]
            for layout in ("nchw", "cl"):
                per_mac_widest = times[(label, widths[-1], layout)] / widths[-1] ** 2
                ms = times[(label, w, layout)]
                row += [f"{ms:.3f}", f"{ms / w ** 2 / per_mac_widest:.2f}"]
            rows.append(row)
    report = print_table(["shape", "channels in = out", "NCHW ms", "NCHW time per MAC (x widest)",
                          "channels-last ms", "channels-last time per MAC (x widest)"], rows)
    print(f"{machine()}; eager, 1 thread, median of {repeats} interleaved rounds")
    return report


if __name__ == "__main__":
    main()
