"""CPU inference: zoo's float and quantized models beside what a user would pick instead.

    python benchmarks/cpu_inference.py [--models rcan_tiny_x2,rcan_small,resnet50_b8] [--threads 1,2]
                                       [--repeats 7] [--no-compile] [--quick]

For each model, every path is timed interleaved in one process (median of rounds), at each thread
count; ratio = fp32 eager time / the path's time. Paths:

- ``fp32 eager``; ``fp32 compiled`` and ``bf16 compiled``: ``zoo.optimize(model)`` and
  ``zoo.optimize(model, dtype=torch.bfloat16)`` (inductor with freezing; bf16 under autocast);
- ``pt2e int8 compiled``: PyTorch's own flow, torchao's ``X86InductorQuantizer`` (static per-tensor
  u8 activations, per-channel s8 weights, calibrated on the input), then inductor with freezing;
- ``onnxruntime fp32`` and ``onnxruntime int8``: the model through ``zoo.export_onnx``, run by
  onnxruntime's CPU provider (all graph optimizations, one session per thread count); the int8 row is
  onnxruntime's own static QDQ quantization (``quantize_static``: u8 activations calibrated on the
  input, per-channel s8 weights), after its ``quant_pre_process``;
- ``zoo w8a8-tok``: per-pixel activation scales everywhere (k x k convolutions on the exact float
  emulation; 1x1 and linear layers on oneDNN), as the presets were before; ``zoo w8a8`` and
  ``zoo w4a8-pcw`` (the presets' per-image activations; int4 with one scale per output channel): every
  layer on oneDNN's int8 kernels; ``zoo w8a8-static``: one calibrated scale per layer (calibrated on
  the input, as the pt2e row); these three through ``zoo.optimize`` (batch norms and ReLUs folded,
  eager where quantized, see there).

Accuracy: output SQNR against fp32 in dB (the SR models also the PSNR of the output against fp32's; their
input is a crop of a natural image, scikit-image's astronaut). Language model rows: a 256-token prefill
and a one-token decode step after it, with ``zoo w8a8-all`` (the head quantized too; the presets keep the
classifier float) and ``zoo w8a16`` / ``zoo w4a16`` (weight-only: PyTorch's packed int8 / int4 kernels for a
few tokens, the dequantized weights for a prefill); ``zoo w8a8, q/k/v apart`` is ``zoo w8a8`` through
``zoo.optimize(merge=False)``, so the row beside it shows what stacking each attention's q, k and v in one
layer gives.
The table is printed and saved under benchmarks/out/ (git-ignored), with the ONNX files. The peers
(torchao, onnxruntime) come with the ``bench`` extra; a peer that is missing or fails on a model is
reported and skipped.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from common import OUT, cpu_name, interleaved_medians_ms, print_table, save_text  # noqa: E402

QUANT_SPECS = ("w8a8-tok", "w8a8", "w8a8-static", "w4a8-pcw")
# the language model's rows also: PyTorch's packed kernels for a few tokens, and w8a8 with its 32000-way head quantized
LM_SPECS = ("w8a8-all", "w8a16", "w4a16")


@dataclass
class Case:
    """A model and the inputs of one timed call."""

    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[], torch.Tensor]
    metric: str  # "psnr" or "sqnr"
    lm_decode: bool = False
    language_model: bool = False  # also LM_SPECS (the weight-only ones: zoo.kernels.weight_only for few tokens)


def _natural_image(size: int) -> torch.Tensor:
    from skimage import data  # a scikit-image sample (ships with the package)

    img = torch.from_numpy(data.astronaut()[64:64 + size, 128:128 + size]).permute(2, 0, 1)  # (3, H, W)
    return img[None].float() / 255


def _trained_like(model: nn.Module) -> nn.Module:
    """Batch norms with the statistics of a trained network (seeded): a fresh ResNet zero-initialises each
    block's last gamma, which leaves every residual branch out of its output (and of the accuracy column)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) * 0.5 + 0.25
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
            m.running_mean = torch.randn(m.num_features, generator=gen) * 0.1
    return model


def cases(quick: bool) -> dict[str, Case]:
    size = 32 if quick else 96
    return {
        "rcan_tiny_x2": Case("rcan_tiny_x2 (trained, 1x3x%d^2)" % size,
                             lambda: zoo.create("rcan_tiny_x2", pretrained=True), lambda: _natural_image(size), "psnr"),
        "rcan_small": Case("RCAN 64ch 2x10 blocks (1x3x%d^2)" % size,
                           lambda: zoo.create("rcan", scale=2, n_resgroups=2, n_resblocks=2 if quick else 10),
                           lambda: _natural_image(size), "psnr"),
        "rcan_x2": Case("rcan_x2 (1x3x%d^2)" % size, lambda: zoo.create("rcan_x2"), lambda: _natural_image(size),
                        "psnr"),
        "resnet50_b1": Case("resnet50 b1", lambda: _trained_like(zoo.create("resnet50")),
                            lambda: torch.randn(1, 3, 224, 224), "sqnr"),
        "resnet50_b8": Case("resnet50 b8", lambda: _trained_like(zoo.create("resnet50")),
                            lambda: torch.randn(8, 3, 224, 224), "sqnr"),
        "seresnet50_b8": Case("seresnet50 b8", lambda: _trained_like(zoo.create("seresnet50")),
                              lambda: torch.randn(8, 3, 224, 224), "sqnr"),
        "fcanet50_b8": Case("fcanet50 b8", lambda: _trained_like(zoo.create("fcanet50")),
                            lambda: torch.randn(8, 3, 224, 224), "sqnr"),
        "channelvit_small": Case("channelvit_small b8", lambda: zoo.create("channelvit_small", img_size=64, in_chans=3),
                                 lambda: torch.randn(8, 3, 64, 64), "sqnr"),
        "moc_lm_130m_prefill": Case("moc_lm_130m prefill 256", lambda: zoo.create("moc_lm_130m"),
                                    lambda: torch.randint(0, 32000, (1, 256)), "sqnr", language_model=True),
        "moc_lm_130m_decode": Case("moc_lm_130m decode step", lambda: zoo.create("moc_lm_130m"),
                                   lambda: torch.randint(0, 32000, (1, 256)), "sqnr", lm_decode=True,
                                   language_model=True),
    }


def quality(out: torch.Tensor, ref: torch.Tensor, metric: str) -> str:
    """Output SQNR against fp32 (and, for images in [0, 1], the PSNR of the output against fp32's)."""
    err = (out.float() - ref.float()).pow(2).mean().item()
    if err == 0:
        return "exact"
    sqnr = f"{10 * math.log10(ref.float().pow(2).mean().item() / err):.1f} dB SQNR"
    return f"{sqnr}, {10 * math.log10(1.0 / err):.1f} dB PSNR" if metric == "psnr" else sqnr


def pt2e_int8(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """PyTorch's x86 int8 flow (torchao): export, X86InductorQuantizer, calibrate on ``x``, compile frozen."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    exported = torch.export.export(model, (x,)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    prepared(x)
    compiled = torch.compile(convert_pt2e(prepared))  # freezing is on globally (main): the int8 lowering needs it
    compiled(x)  # compiles now: a failure is this peer's, reported by the caller
    return compiled


def onnxruntime_paths(model: nn.Module, x: torch.Tensor, slug: str, threads: list[int]
                      ) -> dict[str, Callable[[], torch.Tensor]]:
    """``onnxruntime fp32`` / ``onnxruntime int8``: the exported graph and onnxruntime's static QDQ int8 of it,
    each a session per thread count (onnxruntime fixes its pool when a session is made)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = OUT / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    def sessions(path: Path) -> dict[int, "ort.InferenceSession"]:
        made = {}
        for n in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = n, 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            made[n] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return made

    def runner(made: dict[int, "ort.InferenceSession"]) -> Callable[[], torch.Tensor]:
        return lambda: torch.from_numpy(made.get(torch.get_num_threads(), made[threads[0]]).run(None, feed)[0])

    fp32_path = zoo.export_onnx(model, folder / f"{slug}.onnx", x, dynamic_batch=False)
    fp32 = sessions(fp32_path)
    feed = {fp32[threads[0]].get_inputs()[0].name: x.numpy()}

    class OneBatch(CalibrationDataReader):  # calibrated on the timed input, as the pt2e row
        def __init__(self) -> None:
            self.batches = iter([feed])

        def get_next(self):
            return next(self.batches, None)

    prepared, int8 = folder / f"{slug}.pre.onnx", folder / f"{slug}.int8.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(str(prepared), str(int8), OneBatch(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"onnxruntime fp32": runner(fp32), "onnxruntime int8": runner(sessions(int8))}


def lm_step(model: nn.Module, prompt: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One decode step after a prompt: the cache is rewound to the prompt before every call."""
    cache = model.make_cache("dense")
    model(prompt, cache)
    length = cache.seq_len(0)
    token = prompt[:, -1:]

    def step() -> torch.Tensor:
        cache._lengths = [length] * cache.num_layers  # rewind (a dense cache keeps its buffers)
        return model(token, cache)

    return step


def paths(case: Case, compile_: bool, threads: list[int]) -> dict[str, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    base = case.build().eval().requires_grad_(False)
    x = case.make_input()
    conv = any(isinstance(m, nn.Conv2d) for m in base.modules())
    xin = x.contiguous(memory_format=torch.channels_last) if conv and x.ndim == 4 else x

    def call(model: nn.Module, inp: torch.Tensor) -> Callable[[], torch.Tensor]:
        return lm_step(model, inp) if case.lm_decode else (lambda: model(inp))

    out = {"fp32 eager": call(base, x)}
    if compile_:
        out["fp32 compiled"] = call(zoo.optimize(copy.deepcopy(base)), xin)
        out["bf16 compiled"] = call(zoo.optimize(copy.deepcopy(base), dtype=torch.bfloat16), xin)
        if not case.lm_decode:
            try:
                out["pt2e int8 compiled"] = call(pt2e_int8(copy.deepcopy(base), x), x)
            except Exception as e:  # noqa: BLE001  a peer that fails on a model is reported, not fatal
                print(f"  pt2e int8 on {case.name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    if not case.lm_decode:
        try:
            out.update(onnxruntime_paths(copy.deepcopy(base), x, case.name.split()[0], threads))
        except Exception as e:  # noqa: BLE001  as above (ImportError: the bench extra is not installed)
            print(f"  onnxruntime on {case.name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    for spec in QUANT_SPECS + (LM_SPECS if case.language_model else ()):
        quantized = zoo.quantize(copy.deepcopy(base), spec, calib=[x] if "static" in spec else None)
        out[f"zoo {spec}"] = call(quantized if spec == "w8a8-tok" else zoo.optimize(quantized, compile=compile_), xin)
        if spec == "w8a8" and case.language_model:
            out["zoo w8a8, q/k/v apart"] = call(zoo.optimize(quantized, compile=compile_, merge=False), xin)
    return out


def run_case(case: Case, threads: list[int], repeats: int, compile_: bool) -> list[list[str]]:
    start = time.perf_counter()
    with torch.no_grad():
        fns = paths(case, compile_, threads)
        reference = fns["fp32 eager"]()
        outputs = {name: fn() for name, fn in fns.items()}  # compiles here, before the timed rounds
    print(f"  {case.name}: built and compiled in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            ms = interleaved_medians_ms(fns, repeats)
        for name, t in ms.items():
            rows.append([case.name, str(n), name, f"{t:.1f}", f"{ms['fp32 eager'] / t:.2f}x",
                         quality(outputs[name], reference, case.metric)])
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="rcan_tiny_x2,rcan_small,resnet50_b8",
                        help="comma-separated, or 'all': " + ", ".join(cases(False)))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="eager rows only (no inductor, no pt2e)")
    parser.add_argument("--quick", action="store_true", help="small inputs and models: a smoke test")
    args = parser.parse_args(argv)
    table = cases(args.quick)
    names = list(table) if args.models == "all" else [m.strip() for m in args.models.split(",")]
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(table)}")
    threads = [int(t) for t in args.threads.split(",")]
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # as PyTorch's x86 int8 recipe sets it (options={"freezing": True} fails there)
    rows = []
    for name in names:
        rows += run_case(table[name], threads, args.repeats, not args.no_compile)
    cpu = ("AMX" if torch.cpu._is_amx_tile_supported() else
           "AVX512-VNNI" if torch.cpu._is_vnni_supported() else "no VNNI")
    title = f"CPU inference, {cpu_name()} ({cpu}), torch {torch.__version__}, {os.cpu_count()} cores"
    print(title)
    report = title + "\n" + print_table(["model", "threads", "path", "ms", "vs fp32 eager", "accuracy vs fp32"], rows)
    save_text(report, "cpu_inference.txt")
    return report


if __name__ == "__main__":
    main()
