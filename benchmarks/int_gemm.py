"""Integer GEMMs of the quantized layers: W8A8 and W4A8 ``int_linear`` and the implicit-GEMM ``int_conv2d``
beside the float matmul / convolution they replace.

    python benchmarks/int_gemm.py [--quick] [--ms 1,4,16,4096] [--nk 4096x4096,11008x4096]
                                  [--group-size 128] [--repeats 5] [--no-graph] [--cpu] [--save]

On CUDA (the Triton kernels): for every M and (N, K), bf16 and fp16 ``F.linear`` against W8A8
(per-channel weight scales) and W4A8 (symmetric int4, one fp16 scale per ``--group-size`` inputs),
each as the GEMM alone (activations already quantized) and as a quantized layer runs it (``quantize_act``
then the GEMM); bf16 outputs. Then a 3 x 3 convolution as RCAN (64 -> 64 on 16x64x128x128) and
ResNet (256 -> 256 on 8x256x56x56) run it: ``int_conv2d`` on channels-last int8 against bf16
``F.conv2d`` channels_last. Times are GPU-time medians between CUDA events around replays of a CUDA
graph of each path, the L2 cache flushed before every replay, so neither Python dispatch nor a warm
cache flatters any path (``--no-graph``: ``triton.testing.do_bench`` on plain calls instead). TOP/s
count 2 M N K operations; "x bf16" is the speed-up over bf16 measured in the same run. Issue goals:
W4A8 >= 2.5x bf16 at M <= 16 (decode: the weight stream is the cost) and W8A8 >= 1.5x bf16 at
M = 4096 (int8 tensor cores against bf16 ones), judged with the activation quantization included.

On CPU the same table for small shapes runs the PyTorch *reference* path (what the CPU executes, exact
int32 accumulation, written for exactness and not for speed) beside fp32 ``F.linear`` / ``F.conv2d``;
the medians there come from interleaved repeats (benchmarks/common.py). Either way a "rel err" column
gives ||y_quant - y_fp32|| / ||y_fp32||, the quantization error, as a check that the rows compute
the same layer.

``--save`` writes the table to benchmarks/out/ (git-ignored); nothing else is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo import kernels  # noqa: E402
from common import interleaved_medians_ms, machine, print_table, save_text, shapes_arg  # noqa: E402



# --------------------------------------------------------------------------------------------------
# weight quantization (round to nearest, symmetric), in the layout kernels.int_gemm documents
# --------------------------------------------------------------------------------------------------
def quantize_weight(w: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, ..., C) float weights -> (codes, w_scale): int8 (N, ..., C) with (N, 1) fp32 scales, or packed
    int4 (N, ..., ceil(C / 2)) with one fp16 scale per (tap, group of ``group_size`` channels)."""
    n, c = w.shape[0], w.shape[-1]
    w = w.float()
    if bits == 8:
        scale = w.reshape(n, -1).abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127  # (N, 1)
        codes = torch.round(w / scale.view(n, *[1] * (w.ndim - 1))).clamp(-127, 127).to(torch.int8)
        return codes, scale
    g = group_size or c
    grouped = w.reshape(n, -1, g)  # (N, taps * C / g, g): segments in tap-major, group-minor order
    scale = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 7
    nibbles = (torch.round(grouped / scale).clamp(-7, 7) + kernels.int_gemm.INT4_SYMMETRIC_ZERO).to(torch.uint8)
    return kernels.pack_int4(nibbles.reshape(w.shape)), scale.squeeze(-1).half()  # scales (N, segments)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


# --------------------------------------------------------------------------------------------------
# the cases: each is a dict of name -> callable plus the fp32 result the quantized rows are checked against
# --------------------------------------------------------------------------------------------------
def linear_case(m: int, n: int, k: int, group_size: int, device: str, floats: dict[str, torch.dtype]):
    """Float F.linear in each dtype of ``floats``; W8A8 and W4A8 int_linear (GEMM alone, and with quantize_act)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(device)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(device)
    ref = F.linear(x, w)
    out_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    for name, dtype in floats.items():
        xd, wd = x.to(dtype), w.to(dtype)
        fns[name] = lambda xd=xd, wd=wd: F.linear(xd, wd)
    q, a_scale = kernels.quantize_act(x.to(out_dtype))
    for label, bits, gs in (("w8a8", 8, None), ("w4a8", 4, group_size)):
        codes, w_scale = quantize_weight(w, bits, gs)
        fns[f"{label} gemm"] = (lambda codes=codes, w_scale=w_scale, bits=bits, gs=gs:
                                kernels.int_linear(q, a_scale, codes, w_scale, None, None, bits, gs, out_dtype))

        def layer(codes=codes, w_scale=w_scale, bits=bits, gs=gs, xd=x.to(out_dtype)):
            qq, ss = kernels.quantize_act(xd)
            return kernels.int_linear(qq, ss, codes, w_scale, None, None, bits, gs, out_dtype)

        fns[f"{label} quant+gemm"] = layer
    return fns, ref, 2 * m * n * k


def conv_case(b: int, c: int, h: int, w_: int, device: str, floats: dict[str, torch.dtype]):
    """A 3 x 3, stride 1, padding 1 convolution C -> C: float F.conv2d channels_last against int_conv2d."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(b, c, h, w_, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c, c, 3, 3, generator=gen) / (9 * c) ** 0.5).to(device)
    ref = F.conv2d(x, weight, padding=1)
    out_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    for name, dtype in floats.items():
        xd, wd = x.to(dtype), weight.to(dtype).contiguous(memory_format=torch.channels_last)
        fns[name] = lambda xd=xd, wd=wd: F.conv2d(xd, wd, padding=1)
    x_nhwc = x.permute(0, 2, 3, 1).to(out_dtype)  # (B, H, W, C) view of the channels_last map
    q, a_scale = kernels.quantize_act(x_nhwc)  # per-pixel scales (B, H, W)
    w_hwc = weight.permute(0, 2, 3, 1)  # (N, KH, KW, C)
    # int8: one scale per output channel; int4: one per (output channel, tap), i.e. group_size = C
    for label, bits, gs in (("w8a8", 8, None), ("w4a8", 4, c)):
        codes, w_scale = quantize_weight(w_hwc, bits, gs)
        fns[f"{label} gemm"] = (lambda codes=codes, w_scale=w_scale, bits=bits, gs=gs:
                                kernels.int_conv2d(q, a_scale, codes, w_scale, None, None, (1, 1), (1, 1), bits,
                                                   gs, out_dtype).permute(0, 3, 1, 2))

        def layer(codes=codes, w_scale=w_scale, bits=bits, gs=gs):
            qq, ss = kernels.quantize_act(x_nhwc)
            out = kernels.int_conv2d(qq, ss, codes, w_scale, None, None, (1, 1), (1, 1), bits, gs, out_dtype)
            return out.permute(0, 3, 1, 2)  # (B, N, Ho, Wo) channels_last view

        fns[f"{label} quant+gemm"] = layer
    return fns, ref, 2 * b * h * w_ * c * c * 9  # stride 1, padding 1: Ho x Wo = H x W


def rows_for(shape: str, fns: dict, ref: torch.Tensor, ops: int, ms: dict[str, float], base: str,
             unit: float) -> list[list[str]]:
    """One table row per path: time, throughput (operations per second / ``unit``), speed-up over
    ``base`` and error against fp32."""
    return [[shape, name, f"{ms[name]:.4f}", f"{ops / (ms[name] * 1e-3) / unit:.2f}", f"{ms[base] / ms[name]:.2f}",
             f"{rel_err(fn(), ref):.1e}"] for name, fn in fns.items()]


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------
def cuda_graph_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median GPU time of ``fn`` replayed from a CUDA graph, with the L2 cache flushed before every replay.

    Python and custom-op dispatch cost tens of microseconds per call, as much as a whole decode GEMM on
    an H100-class GPU: replaying a graph leaves only the GPU's own time between the two events."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compile, autotune) off the default stream, as capture wants
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def run_cuda(args: argparse.Namespace) -> str:
    from triton.testing import do_bench

    floats = {"bf16": torch.bfloat16, "fp16": torch.float16}
    how = ("do_bench" if args.no_graph else f"{args.graph_repeats} CUDA-graph replays") + ", L2 flushed before each"
    print(f"CUDA {torch.cuda.get_device_name()}, Triton kernels (ZOO_KERNELS={os.environ.get('ZOO_KERNELS', 'auto')}), "
          f"W4A8 group {args.group_size}; median of {how}")
    rows, goals = [], []

    def bench(fns: dict) -> dict[str, float]:
        for fn in fns.values():  # compile and autotune outside the timing
            fn()
        torch.cuda.synchronize()
        if args.no_graph:
            return {k: do_bench(fn, warmup=25, rep=args.rep_ms, return_mode="median") for k, fn in fns.items()}
        return {k: cuda_graph_ms(fn, args.graph_repeats) for k, fn in fns.items()}

    for n, k in args.nk:
        for m in args.ms:
            fns, ref, ops = linear_case(m, n, k, args.group_size, "cuda", floats)
            ms = bench(fns)
            rows += rows_for(f"linear M={m} {n}x{k}", fns, ref, ops, ms, "bf16", 1e12)
            goal = ("w4a8", 2.5) if m <= 16 else ("w8a8", 1.5) if m == 4096 else None
            if goal:
                label, want = goal
                goals.append((f"{label} M={m} {n}x{k}", ms["bf16"] / ms[f"{label} quant+gemm"],
                              ms["bf16"] / ms[f"{label} gemm"], want))
    for b, c, h, w in args.convs:
        fns, ref, ops = conv_case(b, c, h, w, "cuda", floats)
        rows += rows_for(f"conv3x3 {b}x{c}x{h}x{w}", fns, ref, ops, bench(fns), "bf16", 1e12)
    text = print_table(["shape", "path", "ms", "TOP/s", "x bf16", "rel err"], rows)
    lines = [f"goal {name}: >= {want}x bf16 with activation quantization: "
             f"{'met' if layer >= want else 'not met'} ({layer:.2f}x; GEMM alone {gemm:.2f}x)"
             for name, layer, gemm, want in goals]
    print("\n".join(lines))
    return text + "\n" + "\n".join(lines)


def run_cpu(args: argparse.Namespace) -> str:
    floats = {"fp32": torch.float32}
    print(f"CPU: the PyTorch *reference* path of the integer ops (exact int32 accumulation, for exactness, not "
          f"speed) beside fp32 F.linear / F.conv2d; W4A8 group {args.group_size}; median of {args.repeats} "
          f"interleaved runs; {machine()}")
    rows = []
    with torch.inference_mode():
        for n, k in args.nk:
            for m in args.ms:
                fns, ref, ops = linear_case(m, n, k, args.group_size, "cpu", floats)
                ms = interleaved_medians_ms(fns, args.repeats, warmup=1)
                rows += rows_for(f"linear M={m} {n}x{k}", fns, ref, ops, ms, "fp32", 1e9)
        for b, c, h, w in args.convs:
            fns, ref, ops = conv_case(b, c, h, w, "cpu", floats)
            ms = interleaved_medians_ms(fns, args.repeats, warmup=1)
            rows += rows_for(f"conv3x3 {b}x{c}x{h}x{w}", fns, ref, ops, ms, "fp32", 1e9)
    return print_table(["shape", "path", "ms", "GOP/s", "x fp32", "rel err"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", type=lambda s: [int(t) for t in s.split(",")], default=None,
                        help="token counts M (default: 1,4,16,4096 on CUDA; 1,16,128 on CPU)")
    parser.add_argument("--nk", type=shapes_arg("NxK"), default=None,
                        help="comma-separated NxK weight shapes (default: 4096x4096,11008x4096 on CUDA)")
    parser.add_argument("--group-size", type=int, default=128, help="W4A8 input channels per weight scale")
    parser.add_argument("--repeats", type=int, default=5, help="CPU: interleaved rounds")
    parser.add_argument("--graph-repeats", type=int, default=100, help="CUDA: timed graph replays per variant")
    parser.add_argument("--no-graph", action="store_true",
                        help="CUDA: time plain calls with triton.testing.do_bench (includes Python dispatch gaps)")
    parser.add_argument("--rep-ms", type=int, default=100, help="CUDA with --no-graph: do_bench's budget per variant")
    parser.add_argument("--quick", action="store_true", help="a few small shapes (a smoke test)")
    parser.add_argument("--cpu", action="store_true", help="run the CPU table even where CUDA is present")
    parser.add_argument("--save", action="store_true", help="also write the table to benchmarks/out/")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    if args.quick:
        args.ms = args.ms or [1, 16]
        args.nk = args.nk or ([(4096, 4096)] if cuda else [(512, 512)])
        args.convs = [(2, 64, 32, 32)] if cuda else [(1, 32, 16, 16)]
        args.repeats = min(args.repeats, 3)
        args.rep_ms = min(args.rep_ms, 25)
        args.graph_repeats = min(args.graph_repeats, 20)
    else:
        args.ms = args.ms or ([1, 4, 16, 4096] if cuda else [1, 16, 128])
        args.nk = args.nk or ([(4096, 4096), (11008, 4096)] if cuda else [(1024, 1024), (2816, 1024)])
        args.convs = [(16, 64, 128, 128), (8, 256, 56, 56)] if cuda else [(1, 64, 32, 32), (1, 128, 14, 14)]
    for n, k in args.nk:
        if k % args.group_size:
            parser.error(f"--group-size {args.group_size} does not divide K={k}; pick a divisor of every K")
    text = run_cuda(args) if cuda else run_cpu(args)
    if args.save:
        path = save_text(text, f"int_gemm_{'cuda' if cuda else 'cpu'}.txt")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
