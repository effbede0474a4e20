"""AdaLN modulation (VAR's ``ln_wo_grad(x).mul(scale.add(1)).add_(shift)``): the fused
``zoo.kernels.adaln_modulate`` against the eager formula and ``torch.compile`` of it.

    python benchmarks/adaln.py [--shapes 16x680x1024,8x680x1536] [--dtype bf16] [--repeats 5]
                               [--no-compile] [--cpu] [--save]

The eager formula is what VAR's ``AdaLNSelfAttn`` runs: ``F.layer_norm`` without affine parameters, then
``mul(scale + 1)`` and ``add_(shift)`` with (B, 1, C) modulation: three passes over the (B, L, C) tokens
(plus one for the small ``scale + 1``) where the fused op reads x once and writes y once.

On CUDA: the fused Triton kernels (``ZOO_KERNELS=triton``), the eager formula, the formula under
``torch.compile`` (inductor) and the op's PyTorch reference (``ZOO_KERNELS=torch``); forward, and
forward + backward (x, scale and shift require grad). Medians of ``triton.testing.do_bench``; GB/s counts
the fewest bytes (forward: read x, write y; backward on top: read grad and x, write grad_x); "x eager" is
the eager time over the row's; peak MiB is the memory allocated on top of the inputs.

On CPU (no Triton kernel runs there): the op's reference path, which CPU users run, against the eager
formula, fp32, B = 2; medians of interleaved repeats (benchmarks/common.py), and the MiB autograd saves
for the backward beyond the inputs (eager keeps the LayerNorm output; the op keeps 8 bytes a token).
Every row gives max |out - eager out| as a check that the paths agree.
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
                    print_table, save_text, shapes_arg, timed_call)

from zoo import kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Shape = tuple[int, int, int]  # (B, L, C)


def eager(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """VAR's AdaLNSelfAttn: LayerNorm without affine, ``* (1 + scale) + shift``, scale/shift (B, 1, C)."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6).mul(scale.add(1)).add_(shift)


def fused(mode: str) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        with kernel_mode(mode):
            return kernels.adaln_modulate(x, scale, shift, 1e-6)
    return run


def make_inputs(shape: Shape, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    b, l, c = shape
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(b, l, c, generator=gen, device=device).to(dtype)
    scale = (torch.randn(b, 1, c, generator=gen, device=device) * 0.1).to(dtype)
    shift = (torch.randn(b, 1, c, generator=gen, device=device) * 0.1).to(dtype)
    return [x, scale, shift]


def traffic(shape: Shape, itemsize: int, backward: bool) -> int:
    b, l, c = shape
    tokens = b * l * c
    return itemsize * (2 * tokens + (3 * tokens if backward else 0))


def run_cuda(args: argparse.Namespace) -> str:
    dtype = DTYPES[args.dtype]
    print(f"CUDA {torch.cuda.get_device_name()}, {args.dtype}; median of triton.testing.do_bench")
    rows = []
    for shape in args.shapes:
        inputs = make_inputs(shape, "cuda", dtype)
        want = eager(*inputs)
        paths = {"fused (triton)": fused("triton"), "eager": eager, "op reference (torch)": fused("torch")}
        if not args.no_compile:
            torch._dynamo.reset()
            paths["eager torch.compile"] = torch.compile(eager)
        for backward in (False, True):
            fns = {name: timed_call(fn, inputs, backward) for name, fn in paths.items()}
            ms, peak = do_bench_with_peaks(fns, args.rep_ms)  # compiles and autotunes outside the timing
            n_bytes = traffic(shape, inputs[0].element_size(), backward)
            for name in fns:
                diff = float((paths[name](*inputs).float() - want.float()).abs().max())
                rows.append(["x".join(map(str, shape)), "fwd+bwd" if backward else "fwd", name,
                             f"{ms[name] * 1e3:.0f}", f"{n_bytes / (ms[name] * 1e-3) / 1e9:.0f}",
                             f"{ms['eager'] / ms[name]:.2f}", f"{peak[name]:.0f}", f"{diff:.1e}"])
    return print_table(["shape", "pass", "path", "us", "GB/s", "x eager", "peak MiB", "max |diff|"], rows)


def saved_mib(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> float:
    """MiB that autograd saves for the backward beyond the inputs themselves (whose storage the block
    keeps alive anyway: x is the residual stream), counted once per storage."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    known = {t.untyped_storage().data_ptr() for t in leaves}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in known:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves)
    return sum(seen.values()) / 2**20


def run_cpu(args: argparse.Namespace) -> str:
    print(f"CPU reference path (ZOO_KERNELS=torch) against the eager formula, fp32; median of {args.repeats} "
          f"interleaved runs; {machine()}")
    rows = []
    for shape in args.shapes:
        inputs = make_inputs(shape, "cpu", torch.float32)
        reference = fused("torch")
        for backward in (False, True):
            fns = {"CPU reference": reference, "eager": eager}
            timed = {name: timed_call(fn, inputs, backward) for name, fn in fns.items()}
            with torch.set_grad_enabled(backward):
                ms = interleaved_medians_ms(timed, args.repeats, warmup=1)
            diff = float((reference(*inputs) - eager(*inputs)).abs().max())
            for name, fn in fns.items():
                rows.append(["x".join(map(str, shape)), "fwd+bwd" if backward else "fwd", name, f"{ms[name]:.1f}",
                             f"{traffic(shape, 4, backward) / (ms[name] * 1e-3) / 1e9:.2f}",
                             f"{ms['eager'] / ms[name]:.2f}", f"{saved_mib(fn, inputs):.2f}" if backward else "-",
                             f"{diff:.1e}"])
    return print_table(["shape", "pass", "path", "ms", "GB/s", "x eager", "saved MiB", "max |diff|"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=shapes_arg("BxLxC"), default=None,
                        help="comma-separated BxLxC (default: VAR-like 16x680x1024 and 8x680x1536 on CUDA "
                             "(d16 and d24 widths, 680 tokens at 256px); B = 2 on CPU)")
    add_kernel_bench_args(parser, list(DTYPES))
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    if args.shapes is None:
        args.shapes = [(16, 680, 1024), (8, 680, 1536)] if cuda else [(2, 680, 1024), (2, 680, 1536)]
    text = run_cuda(args) if cuda else run_cpu(args)
    if args.save:
        path = save_text(text, f"adaln_{'cuda' if cuda else 'cpu'}.txt")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
