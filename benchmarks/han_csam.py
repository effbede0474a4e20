"""HAN's channel-spatial attention (CSAM): the fused ``zoo.kernels.csam`` against HAN's eager module and
``torch.compile`` of it.

    python benchmarks/han_csam.py [--shapes 16x64x64x64,4x64x128x128] [--dtype bf16] [--repeats 5]
                                  [--no-compile] [--cpu] [--save]

The eager module is the release's: ``x * (gamma * sigmoid(conv3d(x[:, None]))) + x`` with one 3x3x3
kernel: the conv's output, the sigmoid, two products and the sum each write a map, where the fused
kernel reads x (27 neighbours, from cache) and writes y once.

On CUDA: the fused Triton kernel (``ZOO_KERNELS=triton``), the eager module (``ZOO_KERNELS=torch``) and
the module under ``torch.compile`` (inductor); forward, and forward + backward (x, the conv and gamma
require grad; the op's backward is ATen's conv3d backward). Medians of ``triton.testing.do_bench``; GB/s
counts the fewest bytes (forward: read x, write y; backward on top: read grad and x, write grad_x); "x
eager" is the eager time over the row's; peak MiB is the memory allocated on top of the inputs.

On CPU (no Triton kernel runs there): the block's CPU path (the op's reference: the 3x3x3 conv as
3x3 conv2d slices and shifted adds) and the release's formulation (ATen's one-channel conv3d) against
the floor of one multiply-add over the map, fp32, B = 1; medians of interleaved repeats. HAN's models
(RCAN-size features, 64 channels) give the default shapes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (add_kernel_bench_args, do_bench_with_peaks, interleaved_medians_ms,  # noqa: E402
                    keep_freed_memory, kernel_mode, machine, print_table, save_text, shapes_arg, timed_call)

from zoo import blocks  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_block(channels: int, device: str, dtype: torch.dtype) -> torch.nn.Module:
    block = blocks.create("csam", channels).to(device=device, dtype=dtype)
    with torch.no_grad():
        block.gamma.fill_(0.5)  # the release initialises gamma to 0; a trained block's is not
    return block


def path(block: torch.nn.Module, mode: str):
    def run(x: torch.Tensor) -> torch.Tensor:
        with kernel_mode(mode):
            return block(x)
    return run


def traffic(shape: tuple[int, ...], itemsize: int, backward: bool) -> int:
    n = itemsize
    for size in shape:
        n *= size
    return 2 * n + (3 * n if backward else 0)


def run_cuda(args: argparse.Namespace) -> str:
    dtype = DTYPES[args.dtype]
    print(f"CUDA {torch.cuda.get_device_name()}, {args.dtype}; median of triton.testing.do_bench")
    rows = []
    for shape in args.shapes:
        block = make_block(shape[1], "cuda", dtype)
        x = torch.randn(shape, device="cuda", dtype=dtype)
        want = block(x)
        paths = {"fused (triton)": path(block, "triton"), "eager": path(block, "torch")}
        if not args.no_compile:
            torch._dynamo.reset()
            paths["eager torch.compile"] = torch.compile(path(block, "torch"))
        for backward in (False, True):
            fns = {name: timed_call(fn, [x], backward) for name, fn in paths.items()}
            ms, peak = do_bench_with_peaks(fns, args.rep_ms)
            n_bytes = traffic(shape, x.element_size(), backward)
            for name in fns:
                diff = float((paths[name](x).float() - want.float()).abs().max())
                rows.append(["x".join(map(str, shape)), "fwd+bwd" if backward else "fwd", name,
                             f"{ms[name] * 1e3:.0f}", f"{n_bytes / (ms[name] * 1e-3) / 1e9:.0f}",
                             f"{ms['eager'] / ms[name]:.2f}", f"{peak[name]:.0f}", f"{diff:.1e}"])
    return print_table(["shape", "pass", "path", "us", "GB/s", "x eager", "peak MiB", "max |diff|"], rows)


def run_cpu(args: argparse.Namespace) -> str:
    keep_freed_memory()
    print(f"CPU: HAN's CSAM against one multiply-add over the map, fp32; median of {args.repeats} "
          f"interleaved runs; {machine()}")
    rows = []
    for shape in args.shapes:
        block = make_block(shape[1], "cpu", torch.float32)
        x = torch.randn(shape)
        gate = torch.rand(shape)
        module = path(block, "auto")

        def release():  # HAN's code: ATen's one-channel conv3d
            return x * (block.gamma * torch.sigmoid(block.conv(x.unsqueeze(1)))).squeeze(1) + x

        fns = {"block (CPU path)": lambda: module(x), "release (conv3d)": release,
               "floor: x * g + x": lambda: torch.addcmul(x, x, gate)}
        with torch.inference_mode():
            ms = interleaved_medians_ms(fns, args.repeats, warmup=1)
        for name in fns:
            rows.append(["x".join(map(str, shape)), name, f"{ms[name]:.2f}",
                         f"{traffic(shape, 4, False) / (ms[name] * 1e-3) / 1e9:.2f}",
                         f"{ms[name] / ms['floor: x * g + x']:.2f}"])
    return print_table(["shape", "path", "ms", "GB/s", "x floor"], rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=shapes_arg("BxCxHxW"), default=None,
                        help="comma-separated BxCxHxW (default: 16x64x64x64,4x64x128x128 on CUDA, B = 1 on CPU)")
    add_kernel_bench_args(parser, list(DTYPES))
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    if args.shapes is None:
        args.shapes = [(16, 64, 64, 64), (4, 64, 128, 128)] if cuda else [(1, 64, 64, 64), (1, 64, 128, 128)]
    text = run_cuda(args) if cuda else run_cpu(args)
    if args.save:
        path_ = save_text(text, f"han_csam_{'cuda' if cuda else 'cpu'}.txt")
        print(f"wrote {path_}")
    return text


if __name__ == "__main__":
    main()
