"""KIVI-style KV-cache quantization (``zoo.kernels.kv_quantize`` / ``kv_dequantize``): bytes and error, and speed.

    python benchmarks/kv_quant.py [--shape 1x8x1024x64] [--repeats 5] [--no-compile] [--cpu] [--save]

Bytes: for keys (per channel: groups of tokens, axis 2) and values (per token: groups of channels, axis 3)
of a (B, H, T, D) cache, 2, 4 and 8 bits in groups of 32, 64 and 128, the quantized bytes (packed codes +
scales + zeros, ``KVQuantized.nbytes()``) over the bytes of the same cache in fp16 (fp16 scales), and in
fp32 (fp32 scales), with the relative RMS error of the round trip on synthetic keys (per-channel offsets
and spreads, as the outlier channels of real keys) as a sanity check. The goal for the language model is
4 bits at most 0.3x of fp16.

Speed on CUDA (bf16): quantize and dequantize through the Triton kernels (``ZOO_KERNELS=triton``), the
ops' PyTorch reference (``ZOO_KERNELS=torch``) in eager mode and under ``torch.compile``; medians of
``triton.testing.do_bench``, GB/s over the fewest bytes the op must move. On CPU: the reference only,
medians of interleaved repeats (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import kernel_mode, machine, median_ms, print_table, save_text, time_interleaved

from zoo import kernels
from zoo.kernels.kv_quant import kv_dequantize_reference, kv_quantize_reference

AXES = {"keys (per channel)": 2, "values (per token)": 3}


def synthetic_keys(shape: tuple[int, ...], device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian tokens with a per-channel offset and spread (a few outlier channels, as real keys have)."""
    gen = torch.Generator(device).manual_seed(0)
    d = shape[-1]
    offset = torch.randn(d, generator=gen, device=device) * 2
    offset[: max(1, d // 16)] *= 8  # outlier channels
    spread = torch.rand(d, generator=gen, device=device) * 2 + 0.25
    return (torch.randn(shape, generator=gen, device=device) * spread + offset).to(dtype)


def bytes_table(shape: tuple[int, ...]) -> str:
    print(f"bytes of a {'x'.join(map(str, shape))} (B, H, T, D) cache, quantized / full precision; "
          "rel. RMS error of the round trip on synthetic keys (fp32)")
    x32 = synthetic_keys(shape)
    x16 = x32.half()
    rows = []
    for bits in (2, 4, 8):
        for group_size in (32, 64, 128):
            for name, axis in AXES.items():
                if shape[axis] % group_size:
                    continue
                with kernel_mode("torch"):
                    q16 = kernels.kv_quantize(x16, bits, group_size, axis)
                    q32 = kernels.kv_quantize(x32, bits, group_size, axis)
                    err = (kernels.kv_dequantize(q32) - x32).pow(2).mean().sqrt() / x32.pow(2).mean().sqrt()
                rows.append([str(bits), str(group_size), name, f"{q16.nbytes() / (2 * x16.numel()):.4f}",
                             f"{q32.nbytes() / (4 * x32.numel()):.4f}", f"{float(err):.4f}"])
    return print_table(["bits", "group", "tensor", "x fp16", "x fp32", "rel RMS err"], rows)


def _traffic(shape: tuple[int, ...], bits: int, group_size: int, itemsize: int) -> int:
    """Read x, write codes + scale + zero (quantize; dequantize moves the same bytes the other way)."""
    n = 1
    for s in shape:
        n *= s
    return n * itemsize + n * bits // 8 + 2 * itemsize * n // group_size


def run_cuda(args: argparse.Namespace) -> str:
    from triton.testing import do_bench

    shape = args.shape
    x = synthetic_keys(shape, "cuda", torch.bfloat16)
    print(f"CUDA {torch.cuda.get_device_name()}, bf16 {'x'.join(map(str, shape))}; median of triton.testing.do_bench")
    rows = []
    for bits, group_size in ((2, 32), (4, 32), (4, 64), (8, 64)):
        for name, axis in AXES.items():
            codes, scale, zero = kv_quantize_reference(x, bits, group_size, axis)
            paths = {}
            for mode in ("triton", "torch"):
                def quant(mode=mode):
                    with kernel_mode(mode):
                        return kernels.kv_quantize(x, bits, group_size, axis)
                q = quant()
                def dequant(q=q, mode=mode):
                    with kernel_mode(mode):
                        return kernels.kv_dequantize(q)
                paths[f"op ({mode})"] = (quant, dequant)
            if not args.no_compile:
                torch._dynamo.reset()
                cq = torch.compile(lambda: kv_quantize_reference(x, bits, group_size, axis))
                cd = torch.compile(lambda: kv_dequantize_reference(codes, scale, zero, bits, group_size, axis,
                                                                   shape[-1], torch.bfloat16))
                paths["reference torch.compile"] = (cq, cd)
            n_bytes = _traffic(shape, bits, group_size, 2)
            for path, (quant, dequant) in paths.items():
                for op, fn in (("quantize", quant), ("dequantize", dequant)):
                    fn()
                    ms = do_bench(fn, warmup=10, rep=args.rep_ms, return_mode="median")
                    rows.append([f"{bits}/{group_size}", name, op, path, f"{ms * 1e3:.1f}",
                                 f"{n_bytes / (ms * 1e-3) / 1e9:.0f}"])
    return print_table(["bits/group", "tensor", "op", "path", "us", "GB/s"], rows)


def run_cpu(args: argparse.Namespace) -> str:
    shape = args.shape
    x = synthetic_keys(shape)
    print(f"CPU reference (ZOO_KERNELS=torch), fp32 {'x'.join(map(str, shape))}; median of {args.repeats} "
          f"interleaved runs; {machine()}")
    rows = []
    for bits, group_size in ((2, 32), (4, 32), (4, 64)):
        fns = {}
        for name, axis in AXES.items():
            q = kv_quantize_reference(x, bits, group_size, axis)
            fns[(name, "quantize")] = lambda axis=axis: kv_quantize_reference(x, bits, group_size, axis)
            fns[(name, "dequantize")] = lambda q=q, axis=axis: kv_dequantize_reference(
                *q, bits, group_size, axis, shape[-1], torch.float32)
        times = time_interleaved(fns, args.repeats, warmup=1)
        for (name, op), samples in times.items():
            ms = median_ms(samples)
            rows.append([f"{bits}/{group_size}", name, op, f"{ms:.2f}",
                         f"{_traffic(shape, bits, group_size, 4) / (ms * 1e-3) / 1e9:.2f}"])
    return print_table(["bits/group", "tensor", "op", "ms", "GB/s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split("x")), default=None,
                        help="BxHxTxD (default 1x8x1024x64 on CPU, 16x16x4096x128 on CUDA)")
    parser.add_argument("--repeats", type=int, default=5, help="CPU: interleaved rounds")
    parser.add_argument("--rep-ms", type=int, default=100, help="CUDA: do_bench's time budget per path")
    parser.add_argument("--no-compile", action="store_true", help="CUDA: skip the torch.compile rows")
    parser.add_argument("--cpu", action="store_true", help="run the CPU table even where CUDA is present")
    parser.add_argument("--save", action="store_true", help="also write the tables to benchmarks/out/")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    if args.shape is None:
        args.shape = (16, 16, 4096, 128) if cuda else (1, 8, 1024, 64)
    if len(args.shape) != 4:
        parser.error(f"--shape is BxHxTxD; got {args.shape}")
    text = bytes_table((1, 8, 1024, 64) if cuda else args.shape) + "\n\n"
    text += run_cuda(args) if cuda else run_cpu(args)
    if args.save:
        path = save_text(text, f"kv_quant_{'cuda' if cuda else 'cpu'}.txt")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
