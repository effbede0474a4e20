"""ChannelViT's per-channel patch embedding: the fused ``zoo::channel_patch_embed`` against the release's
unfused PyTorch path.

    python benchmarks/patch_embed.py [--quick] [--shapes 32x8x224x224/16,32x5x224x224/8] [--dim 384]
                                     [--dtype bf16] [--repeats 5] [--no-compile] [--cpu] [--save]

The unfused path is what the release runs: ``Conv3d(1, D, kernel=(1, p, p), stride=(1, p, p))`` over the
(B, 1, C, H, W) view of the images, the channel embedding added as (B, D, C, 1, 1), the tokens flattened
channel-major and transposed to (B, C*N, D), then the patch position embedding repeated for every channel
and added: four passes over the (B, C*N, D) tokens where the fused op writes them once.

On CUDA: the fused Triton kernels (``ZOO_KERNELS=triton``), the unfused path in eager mode and under
``torch.compile`` (inductor), and the op's PyTorch reference (``ZOO_KERNELS=torch``); forward, and forward +
backward (all five inputs require grad). Times are medians of ``triton.testing.do_bench`` (L2 flushed before
each call); GB/s counts the fewest bytes the math allows (forward: read x, weight and embeddings, write the
tokens; backward on top: read the tokens' gradient and x, write every gradient); "x unfused" is the eager
unfused time over the row's; peak MiB is the memory allocated on top of the inputs.

On CPU (no Triton kernel runs there): the op's *reference* path, which CPU users run, against the unfused
path, fp32, on smaller default shapes; medians of interleaved repeats (benchmarks/common.py). Every row
also gives max |out - unfused out| as a check that the two paths compute the same tokens.

``--save`` writes the table to benchmarks/out/ (git-ignored); nothing else is written.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (add_kernel_bench_args, do_bench_with_peaks, interleaved_medians_ms, kernel_mode, machine,
                    print_table, save_text, timed_call)

from zoo import kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Shape = tuple[int, int, int, int, int]  # (B, C, H, W, p)


def parse_shape(text: str) -> Shape:
    try:
        dims, p = text.lower().split("/")
        b, c, h, w = (int(d) for d in dims.split("x"))
        return b, c, h, w, int(p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BxCxHxW/p, got {text!r}") from None


def unfused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, channel_embed: torch.Tensor,
            pos_embed: torch.Tensor) -> torch.Tensor:
    """The release: Conv3d (B, 1, C, H, W) -> (B, D, C, H/p, W/p), + channel embedding, tokens, + positions."""
    d, p, _ = weight.shape
    y = F.conv3d(x.unsqueeze(1), weight.view(d, 1, 1, p, p), bias, stride=(1, p, p))
    y = y + channel_embed.permute(0, 2, 1)[..., None, None]  # (B, D, C, 1, 1)
    tokens = y.flatten(2).transpose(1, 2)  # (B, C*N, D)
    return tokens + pos_embed.repeat(x.shape[1], 1)  # (C*N, D): the position table once per channel


def fused(mode: str) -> Callable[..., torch.Tensor]:
    def run(*args: torch.Tensor) -> torch.Tensor:
        with kernel_mode(mode):
            return kernels.channel_patch_embed(*args)
    return run


def make_inputs(shape: Shape, dim: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    b, c, h, w, p = shape
    n = (h // p) * (w // p)
    gen = torch.Generator(device).manual_seed(0)

    def randn(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(size, generator=gen, device=device) * scale).to(dtype)

    return [randn(b, c, h, w), randn(dim, p, p, scale=1 / p), randn(dim, scale=0.02), randn(b, c, dim, scale=0.02),
            randn(n, dim, scale=0.02)]


def traffic(shape: Shape, dim: int, itemsize: int, backward: bool) -> int:
    """The fewest bytes each direction must move (see the module docstring)."""
    b, c, h, w, p = shape
    n = (h // p) * (w // p)
    image, tokens, params = b * c * h * w, b * c * n * dim, dim * p * p + dim + b * c * dim + n * dim
    forward = image + params + tokens
    return itemsize * (forward + (tokens + image + image + params if backward else 0))


# --------------------------------------------------------------------------------------------------
# CUDA: fused kernels, unfused eager, unfused torch.compile, the op's reference
# --------------------------------------------------------------------------------------------------
def run_cuda(args: argparse.Namespace) -> str:
    dtype = DTYPES[args.dtype]
    print(f"CUDA {torch.cuda.get_device_name()}, {args.dtype}, D={args.dim}; median of triton.testing.do_bench "
          f"(L2 flushed before each call)")
    rows = []
    for shape in args.shapes:
        inputs = make_inputs(shape, args.dim, "cuda", dtype)
        want = unfused(*inputs)
        paths = {"fused (triton)": fused("triton"), "unfused eager": unfused, "op reference (torch)": fused("torch")}
        if not args.no_compile:
            torch._dynamo.reset()  # one graph per shape, never the recompile limit
            paths["unfused torch.compile"] = torch.compile(unfused)
        for backward in (False, True):
            fns = {name: timed_call(fn, inputs, backward) for name, fn in paths.items()}
            ms, peak = do_bench_with_peaks(fns, args.rep_ms)  # compiles and autotunes outside the timing
            n_bytes = traffic(shape, args.dim, inputs[0].element_size(), backward)
            for name in fns:
                diff = float((paths[name](*inputs).float() - want.float()).abs().max())
                rows.append([f"{shape[0]}x{shape[1]}x{shape[2]}x{shape[3]}/{shape[4]}",
                             "fwd+bwd" if backward else "fwd", name, f"{ms[name] * 1e3:.0f}",
                             f"{n_bytes / (ms[name] * 1e-3) / 1e9:.0f}", f"{ms['unfused eager'] / ms[name]:.2f}",
                             f"{peak[name]:.0f}", f"{diff:.1e}"])
    return print_table(["shape", "pass", "path", "us", "GB/s", "x unfused", "peak MiB", "max |diff|"], rows)


# --------------------------------------------------------------------------------------------------
# CPU: the op's reference path against the unfused path
# --------------------------------------------------------------------------------------------------
def run_cpu(args: argparse.Namespace) -> str:
    print(f"CPU reference path (ZOO_KERNELS=torch; no Triton kernel runs on the CPU) against the release's unfused "
          f"path, fp32, D={args.dim}; median of {args.repeats} interleaved runs; {machine()}")
    rows = []
    for shape in args.shapes:
        inputs = make_inputs(shape, args.dim, "cpu", torch.float32)
        reference = fused("torch")
        for backward in (False, True):
            fns = {"CPU reference": reference, "unfused": unfused}
            timed = {name: timed_call(fn, inputs, backward) for name, fn in fns.items()}
            with torch.set_grad_enabled(backward):
                ms = interleaved_medians_ms(timed, args.repeats, warmup=1)
            diff = float((reference(*inputs) - unfused(*inputs)).abs().max())
            n_bytes = traffic(shape, args.dim, 4, backward)
            for name in fns:
                rows.append([f"{shape[0]}x{shape[1]}x{shape[2]}x{shape[3]}/{shape[4]}",
                             "fwd+bwd" if backward else "fwd", name, f"{ms[name]:.1f}",
                             f"{n_bytes / (ms[name] * 1e-3) / 1e9:.1f}", f"{ms['unfused'] / ms[name]:.2f}",
                             f"{diff:.1e}"])
    return print_table(["shape", "pass", "path", "ms", "GB/s", "x unfused", "max |diff|"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=lambda s: [parse_shape(t) for t in s.split(",")], default=None,
                        help="comma-separated BxCxHxW/p (default: ChannelViT-S, B=32, C=5 and 8, 224x224, "
                             "p=8 and 16 on CUDA; B=2 on CPU)")
    parser.add_argument("--dim", type=int, default=384, help="embedding width D (ChannelViT-S: 384)")
    add_kernel_bench_args(parser, list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="one small shape per patch size (a smoke test)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    if args.shapes is None:
        if args.quick:
            args.shapes = [(4, 5, 224, 224, 16), (4, 5, 224, 224, 8)] if cuda else [(1, 3, 96, 96, 16), (1, 3, 96, 96, 8)]
        else:
            b = 32 if cuda else 2
            args.shapes = [(b, c, 224, 224, p) for c in (5, 8) for p in (16, 8)]
    if args.quick:
        args.repeats, args.rep_ms = min(args.repeats, 3), min(args.rep_ms, 25)
    text = run_cuda(args) if cuda else run_cpu(args)
    if args.save:
        path = save_text(text, f"patch_embed_{'cuda' if cuda else 'cpu'}.txt")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
