"""Channel-gate blocks (SE, ECA, RCAN's CA, FcaNet): pool -> excite -> rescale.

    python benchmarks/channel_gate.py [--repeats 11] [--shapes 8x256x56x56,8x2048x7x7,16x64x128x128]
                                      [--dtype bf16] [--channels-last] [--backward] [--peak-gbs 4800]

On CUDA: each block's time, achieved bandwidth and fraction of the HBM roofline for PyTorch eager (the
reference path, ``ZOO_KERNELS=torch``), ``torch.compile`` (inductor on the same math written in plain
PyTorch) and the fused Triton path (``ZOO_KERNELS=triton``: the squeeze-excite launch, then the
rescale), with the fused path's former shape beside it (pool, excitation and rescale as three
launches) to show what the one-launch squeeze-excite saves; plus ResNet's fused epilogue
``relu(x * gate + shortcut)``, with peak memory. The bytes counted are the fewest the math allows:
the map read twice (pool, rescale) and written once (the shortcut read once more for the epilogue),
and with ``--backward`` the backward's reads and writes on top.

On CPU: the reference path of each block (what CPU users run) against the floor of one mean plus
one multiply, ``x.mean((2, 3))`` then ``x * g[:, :, None, None]``, with the ratio; NCHW and
channels_last. Goal: FcaNet's block within 1.2x of that floor.

All figures are medians of interleaved repeats (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo import blocks  # noqa: E402
from zoo import kernels  # noqa: E402
from common import (cuda_peak_mib, interleaved_medians_ms, keep_freed_memory, kernel_mode, machine,  # noqa: E402
                    median_ms, print_table, shapes_arg, time_interleaved)

BLOCKS = ("se", "eca", "ca", "fca")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_block(name: str, channels: int, height: int, width: int, device, dtype) -> torch.nn.Module:
    """The block as the models build it; FcaNet's DCT grid is the map's own size (fcanet50's layout)."""
    kwargs = {"fca": dict(dct_h=height, dct_w=width), "ca": dict(reduction=16)}.get(name, {})
    if name == "fca" and channels % 16:
        kwargs["freq_sel_method"] = "top1"
    return blocks.create(name, channels, **kwargs).to(device=device, dtype=dtype).eval()


def excite(block: torch.nn.Module, s: torch.Tensor) -> torch.Tensor:
    """The block's excitation on a pooled (B, C) vector: its MLP (or ECA's 1-D conv) and sigmoid."""
    if isinstance(block, blocks.MultiSpectralAttention):
        return block.gate(block.fc(s.to(block.fc[0].weight.dtype)))
    if isinstance(block, blocks.SqueezeExcite):
        s = block.act(F.linear(s.to(block.fc1.weight.dtype), block.fc1.weight.flatten(1), block.fc1.bias))
        return block.gate(F.linear(s, block.fc2.weight.flatten(1), block.fc2.bias))
    if isinstance(block, blocks.EfficientChannelAttention):
        return block.gate(block.conv(s.to(block.conv.weight.dtype)[:, None, :])[:, 0, :])
    down, _, up, _ = block.conv_du
    s = F.relu(F.linear(s.to(down.weight.dtype), down.weight.flatten(1), down.bias))
    return torch.sigmoid(F.linear(s, up.weight.flatten(1), up.bias))


def plain_gate(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's gate in plain PyTorch ops only (no custom ops), for torch.compile to fuse as it can."""
    if isinstance(block, blocks.MultiSpectralAttention):
        return excite(block, (x.float() * block.dct_layer.weight.float()).sum(dim=(2, 3)))
    return excite(block, x.float().mean(dim=(2, 3)))


def split_gate(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's gate as two launches, the pool op then the excitation op: the form the fused
    squeeze-excite kernel replaced, timed beside it to show what the one-launch hand-off saves."""
    if isinstance(block, blocks.MultiSpectralAttention):
        s = kernels.pool_weighted(x, block.dct_layer.spatial_filter(x.shape[-2], x.shape[-1]))
        down, up, bias_free = block.fc[0], block.fc[2], True
    else:
        s = kernels.pool_mean(x)
        if isinstance(block, blocks.EfficientChannelAttention):
            return kernels.excite_conv(s.to(block.conv.weight.dtype), block.conv.weight.view(-1))
        down, up = (block.fc1, block.fc2) if isinstance(block, blocks.SqueezeExcite) else block.conv_du[::2]
        bias_free = False
    s = s.to(down.weight.dtype)
    return kernels.excite_mlp(s, down.weight.flatten(1), None if bias_free else down.bias, up.weight.flatten(1),
                              None if bias_free else up.bias, "relu")


# --------------------------------------------------------------------------------------------------
# CPU: the reference path against the floor of one mean plus one multiply
# --------------------------------------------------------------------------------------------------
def run_cpu(args: argparse.Namespace) -> None:
    heap = "malloc keeps freed memory" if keep_freed_memory() else "default malloc"
    print(f"CPU reference path, fp32 forward (inference_mode), median of {args.repeats} interleaved runs; {machine()}; "
          f"{heap}")
    rows, fca_ratios = [], {}
    for shape in args.shapes:
        b, c, h, w = shape
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(shape).contiguous(memory_format=fmt)
            mods = {name: make_block(name, c, h, w, "cpu", torch.float32) for name in BLOCKS}

            pooled = torch.rand(b, c)

            def floor():
                return x * x.mean(dim=(2, 3))[:, :, None, None]

            def runner(module):
                def run():
                    return module(x)
                return run

            def exciter(module):
                def run():
                    return excite(module, pooled)
                return run

            fns = {"floor": floor, **{name: runner(m) for name, m in mods.items()},
                   **{f"{name} excite": exciter(m) for name, m in mods.items()}}
            with torch.inference_mode(), kernel_mode("auto"):
                ms = interleaved_medians_ms(fns, args.repeats)
            for name in BLOCKS:
                ratio = ms[name] / ms["floor"]
                if name == "fca":
                    fca_ratios[(shape, layout)] = ratio
                rows.append(["x".join(map(str, shape)), layout, name, f"{ms[name]:.2f}", f"{ms['floor']:.2f}",
                             f"{ratio:.2f}", f"{ms[name + ' excite']:.2f}",
                             f"{ms[name] / (ms['floor'] + ms[name + ' excite']):.2f}"])
    print_table(["shape", "layout", "block", "block ms", "mean+mul ms", "ratio", "excite ms", "ratio to mean+mul+excite"],
                rows)
    print("goal: FcaNet's block within 1.2x of mean+multiply; "
          + ", ".join(f"{'x'.join(map(str, shape))} {layout}: {'met' if r <= 1.2 else 'not met'} ({r:.2f}x)"
                      for (shape, layout), r in fca_ratios.items()))


# --------------------------------------------------------------------------------------------------
# CUDA: eager, torch.compile, fused
# --------------------------------------------------------------------------------------------------
def peak_gbs(args: argparse.Namespace) -> tuple[float, str]:
    if args.peak_gbs:
        return args.peak_gbs, "given"
    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width"
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = median_ms(time_interleaved({"copy": lambda: (y.copy_(x), torch.cuda.synchronize())}, 9)["copy"])
    return 2 * x.numel() / (ms * 1e-3) / 1e9, "measured device copy"


def run_cuda(args: argparse.Namespace) -> None:
    dtype = DTYPES[args.dtype]
    peak, source = peak_gbs(args)
    direction = "forward + backward" if args.backward else "forward"
    print(f"CUDA {torch.cuda.get_device_name()}, {args.dtype}, {direction}, {'channels_last' if args.channels_last else 'NCHW'}; "
          f"HBM roofline {peak:.0f} GB/s ({source}); median of {args.repeats} interleaved rounds of {args.inner} calls")
    rows = []
    for shape in args.shapes:
        b, c, h, w = shape
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        x = torch.randn(shape, device=args.device, dtype=dtype).contiguous(memory_format=fmt)
        shortcut = torch.randn_like(x)
        n_bytes = x.numel() * x.element_size()
        for name in BLOCKS + ("se+epilogue",):
            block = make_block(name.split("+")[0], c, h, w, args.device, dtype)
            epilogue = name.endswith("epilogue")

            def eager_fn(block=block, epilogue=epilogue):
                with kernel_mode("torch"):
                    y = block(x)
                    return torch.relu(y + shortcut) if epilogue else y

            def fused_fn(block=block, epilogue=epilogue):
                with kernel_mode("triton"):
                    if epilogue:
                        return kernels.channel_scale(x, block.channel_gate(x), shortcut, relu=True)
                    return block(x)

            def split_fn(block=block, epilogue=epilogue):
                with kernel_mode("triton"):
                    return kernels.channel_scale(x, split_gate(block, x), shortcut if epilogue else None, relu=epilogue)

            def plain(xx, sc, block=block, epilogue=epilogue):
                y = xx * plain_gate(block, xx).to(xx.dtype)[:, :, None, None]
                return torch.relu(y + sc) if epilogue else y

            torch._dynamo.reset()  # one compiled graph per block and shape, never the recompile limit
            compiled = torch.compile(plain)
            variants = {"eager": eager_fn, "torch.compile": lambda: compiled(x, shortcut), "fused": fused_fn,
                        "fused, pool and excite apart": split_fn}
            traffic = n_bytes * (4 if epilogue else 3)
            if args.backward:
                x.requires_grad_(True)
                shortcut.requires_grad_(epilogue)
                grad = torch.randn_like(x)
                # backward: read grad, x (and out for the ReLU mask); write grad_x (and grad_shortcut);
                # the pool's own backward writes one more map
                traffic += n_bytes * ((5 if epilogue else 3) + 1)
                variants = {k: (lambda f=f: torch.autograd.grad(f(), [x], grad)) for k, f in variants.items()}

            def timed(fn):
                def run():
                    for _ in range(args.inner):
                        fn()
                    torch.cuda.synchronize()
                return run

            for fn in variants.values():  # compile and autotune outside the timing
                fn()
            torch.cuda.synchronize()
            peaks = {k: cuda_peak_mib(fn) for k, fn in variants.items()}
            times = time_interleaved({k: timed(f) for k, f in variants.items()}, args.repeats)
            for k, t in times.items():
                ms = median_ms(t) / args.inner
                gbs = traffic / (ms * 1e-3) / 1e9
                rows.append(["x".join(map(str, shape)), name, k, f"{ms * 1e3:.1f}", f"{gbs:.0f}", f"{gbs / peak:.2f}",
                             f"{peaks[k]:.1f}"])
            x.requires_grad_(False)
            shortcut.requires_grad_(False)
    print_table(["shape", "block", "path", "us", "GB/s", "of roofline", "peak MiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=shapes_arg("BxCxHxW"), default=None,
                        help="comma-separated BxCxHxW (default: ResNet-50 stages and RCAN)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--inner", type=int, default=20, help="calls per timed round on CUDA")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="CUDA only; the CPU runs fp32")
    parser.add_argument("--channels-last", action="store_true", help="CUDA only; the CPU runs both layouts")
    parser.add_argument("--backward", action="store_true", help="CUDA only: time forward + backward")
    parser.add_argument("--peak-gbs", type=float, default=0.0, help="HBM bandwidth for the roofline column")
    parser.add_argument("--cpu", action="store_true", help="run the CPU table even where CUDA is present")
    args = parser.parse_args()
    args.device = "cuda"
    cuda = torch.cuda.is_available() and not args.cpu
    if args.shapes is None:
        args.shapes = ([(8, 256, 56, 56), (8, 2048, 7, 7), (16, 64, 128, 128), (8, 512, 28, 28), (32, 256, 56, 56)]
                       if cuda else [(8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7),
                                     (16, 64, 128, 128)])
    run_cuda(args) if cuda else run_cpu(args)


if __name__ == "__main__":
    main()
