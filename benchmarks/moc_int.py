"""The quantized MoC FFN in decoding: the row-gathering integer decode against the dense integer layers.

    python benchmarks/moc_int.py [--shapes 256x688,768x2048,1024x2736] [--tokens 1,16] [--repeats 30]
                                 [--specs w4a8,w8a8] [--quick] [--save]

For each FFN width d x H (moc_lm_tiny, GaLore's 130M and 350M LLaMA FFNs) at K = H/8 and each spec, a
decode step of T tokens (forward, no autograd) through four blocks built from the same float weights:

- "MoC int decode": the block's integer decode, called directly (the block itself takes it only while
  2 * T * K <= H, T <= 4 at K = H/8) (``zoo.kernels.moc_ffn_decode_int``): the gate as an integer
  layer, then K packed rows of up_proj and of down_proj's transposed weights per token;
- "MoC int dense": the same quantized block through its three integer layers on all H channels
  (the path before the decode op, and still the path for more than ``DECODE_TOKENS`` tokens);
- "SwiGLU int": the dense SwiGLU twin quantized alike;
- "SwiGLU fp32": the float dense SwiGLU (the reference the ratios use);
- "(compiled)": the integer decode and the float SwiGLU through ``torch.compile`` (inductor; the decode
  traces whole, its ops stay opaque custom ops), unless ``--no-compile`` or inductor does not work here.

Columns: median time of interleaved repeats (benchmarks/common.py) and its ratio to the float SwiGLU; the
weight bytes the step reads (packed codes plus scales and zero points of every row it touches: the whole
gate, and for the MoC decode each token's K rows) and their ratio to the float SwiGLU's. On the CPU the op runs its reference (plain PyTorch integer math); on CUDA the Triton
kernels. ``--save`` writes the table to benchmarks/out/ (git-ignored).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import interleaved_medians_ms, kernel_mode, machine, print_table, save_text, shapes_arg
from moc import compile_unavailable

from zoo import blocks  # noqa: E402
import zoo  # noqa: E402


def quantized(block: nn.Module, spec: str) -> nn.Module:
    """``block`` quantized in place with ``spec`` (RTN, dynamic activations)."""
    zoo.quantize(block, zoo.quant.QuantSpec.parse(spec).with_(keep=()))  # every projection, none kept in float
    return block


def layer_bytes(layer: nn.Module) -> int:
    """Bytes of a layer's weights: float, or integer codes with their scales and zero points."""
    if isinstance(layer, nn.Linear):
        return layer.weight.numel() * layer.weight.element_size()
    tensors = [layer.qweight, layer.weight_scale] + ([layer.weight_zero] if layer.weight_zero is not None else [])
    return sum(t.numel() * t.element_size() for t in tensors)


def decode_bytes(block: nn.Module, tokens: int) -> int:
    """What the integer decode requests: the gate whole, and per token its K rows of up_proj and of Wd^T
    (each 1/H of the down weights), even where tokens share a row (a cache may serve the repeats)."""
    rows = tokens * block.top_k
    return (layer_bytes(block.gate_proj) + layer_bytes(block.up_proj) * rows // block.hidden_dim
            + layer_bytes(block.down_proj) * rows // block.hidden_dim)


def rows_for(shape: tuple[int, int], tokens: list[int], specs: list[str], repeats: int, device: str,
             compiled: bool) -> list[list[str]]:
    d, h = shape
    k = h // 8
    torch.manual_seed(0)
    dense = blocks.create("swiglu", d, hidden_dim=h).to(device).eval()
    out = []
    for spec in specs:
        moc = blocks.create("moc_ffn", d, hidden_dim=h, top_k=k).to(device).eval()
        moc.load_state_dict(dense.state_dict())
        moc_int = quantized(moc, spec)
        dense_int = quantized(_copy(dense, d, h, device), spec)
        for t in tokens:
            x = torch.randn(t, d, device=device)
            steps = {"MoC int decode": lambda: moc_int._forward_integer_decode(x),
                     "MoC int dense": lambda: moc_int._forward_through_modules(x),
                     "SwiGLU int": lambda: dense_int(x), "SwiGLU fp32": lambda: dense(x)}
            if compiled:
                torch.compiler.reset()  # a fresh static-shape graph per shape
                decode_graph = torch.compile(moc_int._forward_integer_decode, fullgraph=True)
                fp32_graph = torch.compile(dense)
                steps["MoC int decode (compiled)"] = lambda: decode_graph(x)
                steps["SwiGLU fp32 (compiled)"] = lambda: fp32_graph(x)
            with torch.no_grad():
                with kernel_mode("torch"):  # the exact integer layers (the CPU's oneDNN path rounds its epilogue apart)
                    torch.testing.assert_close(steps["MoC int decode"](), steps["MoC int dense"](), rtol=0, atol=0)
                if compiled:  # compiles here, before the timed rounds
                    torch.testing.assert_close(steps["MoC int decode (compiled)"](), steps["MoC int decode"](),
                                               rtol=0, atol=0)
                    steps["SwiGLU fp32 (compiled)"]()
                ms = interleaved_medians_ms({n: _synced(f, device) for n, f in steps.items()}, repeats)
                reads = {"MoC int decode": decode_bytes(moc_int, t),
                         "MoC int dense": sum(layer_bytes(m) for m in (moc_int.gate_proj, moc_int.up_proj,
                                                                       moc_int.down_proj)),
                         "SwiGLU int": sum(layer_bytes(m) for m in (dense_int.gate_proj, dense_int.up_proj,
                                                                    dense_int.down_proj)),
                         "SwiGLU fp32": sum(layer_bytes(m) for m in (dense.gate_proj, dense.up_proj, dense.down_proj))}
                reads["MoC int decode (compiled)"] = reads["MoC int decode"]
                reads["SwiGLU fp32 (compiled)"] = reads["SwiGLU fp32"]
            for name in steps:
                out.append([f"{d}x{h}", f"K={k}", "-" if name.startswith("SwiGLU fp32") else spec, str(t), name,
                            f"{1e3 * ms[name]:.0f}", f"{ms[name] / ms['SwiGLU fp32']:.2f}",
                            f"{reads[name] / 2 ** 20:.3f}", f"{reads[name] / reads['SwiGLU fp32']:.3f}"])
    return out


def _copy(dense: nn.Module, d: int, h: int, device: str) -> nn.Module:
    twin = blocks.create("swiglu", d, hidden_dim=h).to(device).eval()
    twin.load_state_dict(dense.state_dict())
    return twin


def _synced(fn, device: str):
    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=shapes_arg("dxH"), default=[(256, 688), (768, 2048), (1024, 2736)])
    parser.add_argument("--tokens", default="1,4,16", help="tokens per decode step, comma-separated (the block "
                        "takes the integer decode while 2 * T * K <= H; 16 shows why)")
    parser.add_argument("--specs", default="w4a8,w8a8")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="one small shape, one token, 5 repeats")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is present")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.quick:
        args.shapes, tokens, args.repeats = [(128, 344)], [1], 5
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    head = f"Quantized MoC FFN decode, {device}, {machine()}"
    print(head)
    compiled = not args.no_compile
    if compiled and (reason := compile_unavailable(device)) is not None:
        compiled = False
        head += f"\ntorch.compile rows skipped: inductor does not work here ({reason})"
        print(head.splitlines()[-1])
    rows = []
    for shape in args.shapes:
        rows += rows_for(shape, tokens, args.specs.split(","), args.repeats, device, compiled)
    table = print_table(["d x H", "top-K", "spec", "T", "FFN", "us", "x fp32", "weights read MiB", "x fp32"], rows)
    report = f"{head}\n\n{table}"
    if args.save:
        save_text(report, f"moc_int_{device}.txt")
    return report


if __name__ == "__main__":
    main()
