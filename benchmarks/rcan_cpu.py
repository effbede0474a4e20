"""``rcan_x2`` forward on a 128x128 input: the zoo model against a plain PyTorch reference of the
same network (the release's formulation: mean shifts as convs, CA as AdaptiveAvgPool2d + 1x1 convs),
loaded with the same weights, timed interleaved in one run.

    python benchmarks/rcan_cpu.py [--size 128] [--repeats 5] [--model rcan_x2]

Goal (issue 4): the zoo model no slower than the reference. A third row runs the reference on a
channels-last input, what a PyTorch user would try for CPU speed (zoo's RCAN does that by itself in inference).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from common import machine, median_ms, print_table, time_interleaved  # noqa: E402


def conv(i: int, o: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, padding=k // 2)


class CALayer(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(c, c // r, 1), nn.ReLU(inplace=True), nn.Conv2d(c // r, c, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(c, c), nn.ReLU(inplace=True), conv(c, c), CALayer(c, r))

    def forward(self, x):
        return self.body(x) + x


class Group(nn.Module):
    def __init__(self, c: int, r: int, n: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*[RCAB(c, r) for _ in range(n)], conv(c, c))

    def forward(self, x):
        return self.body(x) + x


class ReferenceRCAN(nn.Module):
    """The network as the release writes it, in 0..255 (inputs are scaled like the zoo model's)."""

    def __init__(self, scale: int, groups: int, blocks: int, c: int, r: int) -> None:
        super().__init__()
        self.sub_mean, self.add_mean = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        self.head = nn.Sequential(conv(3, c))
        self.body = nn.Sequential(*[Group(c, r, blocks) for _ in range(groups)], conv(c, c))
        up: list[nn.Module] = []
        if scale == 3:
            up = [conv(c, 9 * c), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                up += [conv(c, 4 * c), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(nn.Sequential(*up), conv(c, 3))

    def forward(self, x):
        x = self.head(self.sub_mean(x * 255))
        return self.add_mean(self.tail(self.body(x) + x)) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rcan_x2")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ours = zoo.create(args.model).eval()
    reduction = ours.num_features // ours.body[0].body[0].body[3].conv_du[0].out_channels
    ref = ReferenceRCAN(ours.scale, ours.n_resgroups, ours.n_resblocks, ours.num_features, reduction).eval()
    ref.load_state_dict(ours.state_dict())  # same keys: the zoo model keeps the release layout
    x = torch.rand(1, 3, args.size, args.size)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)

    def runner(model, inp):
        def run():
            with torch.inference_mode():
                model(inp)
        return run

    x_cl = x.contiguous(memory_format=torch.channels_last)  # what a user of the reference would try
    # zoo runs its trunk channels-last in CPU inference by itself; the reference row is the stock NCHW model
    times = time_interleaved({"zoo": runner(ours, x), "reference": runner(ref, x),
                              "reference, channels-last input": runner(ref, x_cl)}, args.repeats, warmup=1)
    ms = {k: median_ms(v) for k, v in times.items()}
    print(f"{args.model} forward, 1x3x{args.size}x{args.size}, median of {args.repeats} interleaved runs; {machine()}")
    print_table(["implementation", "ms", "ratio to reference"],
                [[k, f"{v:.0f}", f"{v / ms['reference']:.3f}"] for k, v in ms.items()])
    print(f"goal (zoo no slower than the reference, 2% noise allowed): "
          f"{'met' if ms['zoo'] <= 1.02 * ms['reference'] else 'NOT met'}")


if __name__ == "__main__":
    main()
