"""The Mixture-of-Channels FFN (``zoo.blocks.create("moc_ffn", ...)``) against the dense SwiGLU it sparsifies.

    python benchmarks/moc.py [--shapes 2048x256x688,2048x512x1368] [--repeats 7] [--quick] [--no-compile]
                             [--save]

Two tables, every figure measured in the same run:

1. Bytes saved for backward, counted with ``torch.autograd.graph.saved_tensors_hooks`` over unique
   storages, parameters excluded: MoC at K = H/8 and H/4 (the lean custom op: x, int16 indices, the
   selected gate and up values), a naive autograd MoC (``topk`` + gather + scatter written with autograd
   ops, for contrast), and the dense SwiGLU. "x dense" is the ratio to SwiGLU.
2. Step time, forward + backward (x and all three weights require grad), as medians of interleaved
   repeats (benchmarks/common.py), and a decode step (one token, forward only). On CPU that is the
   reference path (CPU users' path); on CUDA (when present) the Triton kernels, bf16, with
   ``torch.cuda.synchronize`` around each call. The "compiled" columns time the same train step through
   ``torch.compile`` (inductor) modules, interleaved with the eager ones: dense SwiGLU compiled against
   MoC compiled (the ``zoo::moc_ffn`` custom op stays opaque inside the graph; inductor fuses what is
   around it). Inductor on the CPU needs a working C++ compiler: when a tiny compile fails, the benchmark
   says why and leaves the columns out.

``--save`` writes the tables to benchmarks/out/ (git-ignored); nothing else is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, median_ms, print_table, save_text, shapes_arg, time_interleaved

from zoo import blocks  # noqa: E402
from zoo.profiling import saved_for_backward_bytes  # noqa: E402

Shape = tuple[int, int, int]  # (T, d, H)


class NaiveMoC(torch.nn.Module):
    """MoC written with autograd ops: what a first implementation saves (G, the scattered activation...)."""

    def __init__(self, dense: torch.nn.Module, top_k: int) -> None:
        super().__init__()
        self.dense, self.top_k = dense, top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.dense.gate_proj(x)  # (T, H)
        gate_sel, idx = gate.topk(self.top_k, dim=-1)  # (T, K)
        up_sel = self.dense.up_proj(x).gather(-1, idx)  # (T, K)
        act = torch.zeros_like(gate).scatter(-1, idx, F.silu(gate_sel) * up_sel)  # (T, H)
        return self.dense.down_proj(act)


def build(shape: Shape, device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    _, d, h = shape
    torch.manual_seed(0)
    dense = blocks.create("swiglu", d, hidden_dim=h, device=device, dtype=dtype)
    models: dict[str, torch.nn.Module] = {"dense SwiGLU": dense}
    for div in (8, 4):
        moc = blocks.create("moc_ffn", d, hidden_dim=h, top_k=h // div, device=device, dtype=dtype)
        moc.load_state_dict(dense.state_dict())
        models[f"MoC K=H/{div}"] = moc
    models["naive MoC K=H/8"] = NaiveMoC(dense, h // 8)
    return models


def compile_unavailable(device: str) -> str | None:
    """None when ``torch.compile`` (inductor) builds and runs a tiny module here, else the reason it does not."""
    try:
        probe = torch.compile(torch.nn.Linear(4, 4, device=device))
        probe(torch.randn(2, 4, device=device)).sum().backward()
    except Exception as error:  # a missing or broken C++ compiler surfaces as many exception types
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return None


COMPILED = ("dense SwiGLU", "MoC K=H/8", "MoC K=H/4")  # the models also timed through torch.compile


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory_rows(shapes: list[Shape], device: str, dtype: torch.dtype) -> list[list[str]]:
    rows = []
    for shape in shapes:
        t, d, h = shape
        models = build(shape, device, dtype)
        x = torch.randn(t, d, device=device, dtype=dtype, requires_grad=True)
        sizes = {name: saved_for_backward_bytes(m, x) for name, m in models.items()}
        dense = sizes["dense SwiGLU"]
        for name, size in sizes.items():
            rows.append([f"{t}x{d}x{h}", name, f"{size / 2**20:.2f}", f"{size / dense:.3f}"])
    return rows


def time_rows(shapes: list[Shape], device: str, dtype: torch.dtype, repeats: int,
              compiled: bool) -> list[list[str]]:
    rows = []
    for shape in shapes:
        t, d, h = shape
        models = build(shape, device, dtype)
        if compiled:
            torch.compiler.reset()  # a fresh static-shape graph per shape, not a dynamic recompile
        compiled_models = {n: torch.compile(models[n]) for n in COMPILED} if compiled else {}
        x = torch.randn(t, d, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(t, d, device=device, dtype=dtype)
        token = torch.randn(1, d, device=device, dtype=dtype)

        def train_step(m: torch.nn.Module):
            def run():
                m.zero_grad(set_to_none=True)
                m(x).backward(grad)
                sync(device)
            return run

        def decode_step(m: torch.nn.Module):
            def run():
                with torch.no_grad():
                    m(token)
                sync(device)
            return run

        steps = {n: train_step(m) for n, m in models.items()}
        steps.update({f"{n} (compiled)": train_step(m) for n, m in compiled_models.items()})
        for name in compiled_models:
            steps[f"{name} (compiled)"]()  # compile (forward and backward graphs) before the timed rounds
        train = time_interleaved(steps, repeats)
        decode = time_interleaved({n: decode_step(m) for n, m in models.items()}, repeats * 20)
        base_train, base_decode = median_ms(train["dense SwiGLU"]), median_ms(decode["dense SwiGLU"])
        for name in models:
            tr, de = median_ms(train[name]), median_ms(decode[name])
            row = [f"{t}x{d}x{h}", name, f"{tr:.2f}", f"{tr / base_train:.3f}"]
            if compiled:
                base_compiled = median_ms(train["dense SwiGLU (compiled)"])
                co = median_ms(train[f"{name} (compiled)"]) if name in compiled_models else None
                row += ["-", "-"] if co is None else [f"{co:.2f}", f"{co / base_compiled:.3f}"]
            rows.append(row + [f"{1e3 * de:.1f}", f"{de / base_decode:.3f}"])
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=shapes_arg("TxdxH"),
                        default=[(2048, 256, 688), (2048, 512, 1368)])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one small shape, 3 repeats")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile columns")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.repeats = [(512, 128, 344)], 3
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    head = f"MoC FFN vs dense SwiGLU, {device}, {str(dtype).split('.')[-1]}, {machine()}"
    print(head)
    text = [head, ""]
    text.append(print_table(["T x d x H", "FFN", "saved MiB", "x dense"], memory_rows(args.shapes, device, dtype)))
    print()
    text.append("")
    compiled = not args.no_compile
    if compiled and (reason := compile_unavailable(device)) is not None:
        compiled = False
        note = f"torch.compile columns skipped: inductor does not work here ({reason})"
        print(note)
        text.append(note)
    header = ["T x d x H", "FFN", "fwd+bwd ms", "x dense"]
    header += ["compiled ms", "x dense compiled"] if compiled else []
    text.append(print_table(header + ["decode us", "x dense"],
                            time_rows(args.shapes, device, dtype, args.repeats, compiled)))
    report = "\n".join(text)
    if args.save:
        save_text(report, f"moc_{device}.txt")
    return report


if __name__ == "__main__":
    main()
