"""Accuracy of the quantized models (issue 6): what ``zoo.quantize`` costs in accuracy, file size and time.

    python benchmarks/quant_accuracy.py [--quick] [--tables ABCD] [--retrain] [--calib-batches 4]
                                        [--digits-epochs 4] [--qat-epochs 4] [--full-images] [--save]
                                        [--threads 1]

A. The quickstart RCAN (``rcan_tiny_x2``, shipped weights): PSNR (Y channel, 2-pixel border shaved) on
   the held-out val crops (192x192 HR centre crops of stereo_motorcycle and hubble_deep_field, mean
   of the two), for fp32 and every spec x method; the delta vs fp32, the quantized file's size
   against the fp32 file (``zoo.save_quantized`` / ``zoo.save_pretrained``) and the time
   ``zoo.quantize`` took (calibration included). ``--full-images`` adds the whole held-out images for
   fp32, w8a8 rtn and the best w4a8 row (the integer layers run the exact int32 reference on CPU:
   one to two minutes per quantized model there). Goals: w8a8 (rtn) within 0.05 dB of fp32, best w4a8 within 0.3 dB.
B. The digits SE-ResNet-18 (``configs/digits_seresnet.yaml``, ``--digits-epochs`` epochs through
   train.py, single-threaded so the weights are reproducible, cached under benchmarks/out/; ``--retrain``
   trains again): top-1 on the digits test split for the same grid, plus w4a8 with the 1x1 downsample
   convolutions kept in float. Goals: w8a8 (rtn) within 0.2 points of fp32, best w4a8 within 1 point.
C. torchao on a linear-only model (4-layer MLPs trained here on the flattened 16x16 digits,
   ``--mlp-seeds`` of them, single-threaded): SQNR of the logits against fp32 on the test split,
   torchao's ``Int8DynamicActivationInt8WeightConfig`` and ``Int8DynamicActivationIntxWeightConfig(
   weight_dtype=torch.int4)`` (group 32, its default, and per channel) against ``zoo.quantize`` with
   matching settings (rtn, every layer quantized: ``keep=()``), averaged over the MLPs. Goal: ours at
   least as accurate.
D. Quantization-aware training: ``configs/quickstart_qat.yaml`` (``--qat-epochs`` epochs, cached
   like B) against RTN w4a8 of the shipped weights, val-crop PSNR of the exported integer model.
   Goal: QAT recovers at least half of the RTN w4a8 loss.

Calibration data: ``--calib-batches`` training batches (RCAN: 8 random 48x48 LR crops each; digits:
64 shift-augmented training images each). ``--quick`` runs a reduced grid (and skips B and D unless
their trained models are cached). ``--threads`` defaults to 1: the accuracy numbers do not depend on
it, and on a shared machine 2 threads ran 5-10x slower. Everything written goes under benchmarks/out/quant_accuracy/
(git-ignored); ``--save`` also writes the printed tables there.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import zoo  # noqa: E402
import zoo.metrics  # noqa: E402
from common import machine, print_table  # noqa: E402
from zoo.quant import QuantSpec  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "quant_accuracy"
METHODS = ("rtn", "smoothquant", "awq", "os+", "gptq")
# "w4a8-g32*": group 32 where 32 divides a layer's input channels, per channel elsewhere (the CA / SE
# up-projections have 2-8 inputs); plain "w4a8-g32" would refuse those layers
# the presets quantize a k x k convolution's activations with one scale per image (every layer runs on the
# CPU's oneDNN int8 kernels); "-tok": one per pixel everywhere, as the presets did before
SPECS: dict[str, object] = {"w8a8": "w8a8", "w8a8-tok": "w8a8-tok", "w4a16": "w4a16", "w4a8": "w4a8",
                            "w4a8-tok": "w4a8-tok", "w4a8-g32*": QuantSpec.parse("w4a8").with_(group_size=32)}
QUICK_GRID = [("w8a8", "rtn"), ("w4a8", "rtn"), ("w4a8", "smoothquant")]
# table B extras: the 1x1 stride-2 downsample convolutions (3 layers, 0.17 M of 11 M weights) with 8-bit
# weights (mixed precision, ``keep_w8``) or kept in float: at 4 bits they are where the digits ResNet
# loses its accuracy
W8_DOWNSAMPLE = "w4a8 ds-w8*"
KEEP_DOWNSAMPLE = "w4a8 ds-fp*"
SPECS_B = {W8_DOWNSAMPLE: QuantSpec.parse("w4a8").with_(keep_w8=("*downsample*",)),
           KEEP_DOWNSAMPLE: QuantSpec.parse("w4a8").with_(keep=("<first>", "<last>", "*downsample*"))}
GOALS: list[tuple[str, bool, str]] = []  # (goal, met, evidence)


def goal(text: str, met: bool, evidence: str) -> None:
    GOALS.append((text, met, evidence))
    print(f"goal ({text}): {'met' if met else 'NOT met'} ({evidence})")


@dataclass
class Row:
    spec: str
    method: str
    metric: float
    quant_s: float = 0.0
    size_ratio: float = 1.0
    extra: dict = field(default_factory=dict)


def quiet(fn: Callable, *args, **kwargs):
    """Call ``fn`` with its stdout and Lightning's info logs (banners, tips) swallowed, warnings filtered."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            return fn(*args, **kwargs)
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def quantize_timed(model: nn.Module, spec, calib, method: str) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scale searches' "requires_grad to a scalar" notes
        zoo.quantize(model, spec, calib=calib if method != "rtn" else None, method=method)
    return time.perf_counter() - start


def file_size(path: Path) -> int:
    return path.stat().st_size


def grid(quick: bool, pairs: Optional[str] = None) -> list[tuple[str, str]]:
    """(spec, method) rows: ``pairs`` ("w8a8:rtn,w4a8-tok:awq") where given, else the quick or full grid."""
    if pairs:
        chosen = [tuple(p.strip().split(":")) for p in pairs.split(",")]
        bad = [p for p in chosen if len(p) != 2 or p[0] not in SPECS or p[1] not in METHODS]
        if bad:
            raise SystemExit(f"--grid: {bad} are not spec:method pairs of {list(SPECS)} x {list(METHODS)}")
        return chosen
    return QUICK_GRID if quick else [(s, m) for s in SPECS for m in METHODS]


def goal_rows(rows: list, goal_text: str, base: float, limit: tuple[float, float], unit: str, digits: int) -> None:
    """The goals for w8a8 rtn and the best w4a8 (``limit``: their allowed losses), per activation granularity
    present in ``rows``."""
    for suffix in ("", "-tok"):
        w8 = [r for r in rows if r.spec == "w8a8" + suffix and r.method == "rtn"]
        if w8:
            goal(f"{goal_text}: w8a8{suffix} rtn within {limit[0]} {unit} of fp32", base - w8[0].metric <= limit[0],
                 f"{fmt_delta(w8[0].metric - base, digits)}")
        w4 = [r for r in rows if r.spec == "w4a8" + suffix]
        if w4:
            best = max(w4, key=lambda r: r.metric)
            goal(f"{goal_text}: best w4a8{suffix} within {limit[1]} {unit} of fp32", base - best.metric <= limit[1],
                 f"{best.method}: {fmt_delta(best.metric - base, digits)}")


def fmt_delta(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}"


# --------------------------------------------------------------------------------------------------
# A. RCAN quickstart
# --------------------------------------------------------------------------------------------------
def sr_data():
    from zoo.data.super_resolution import SRSampleDataModule

    data = SRSampleDataModule(scale=2, patch_size=48, batch_size=8, repeat=4, val_crop=192)
    data.setup()
    return data


def sr_calibration(data, batches: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [lr for (lr, _), _ in zip(data.train_dataloader(), range(batches))]


@torch.inference_mode()
def psnr_of(model: nn.Module, pairs) -> float:
    """Mean PSNR (dB, Y channel, 2 pixels shaved) over (lr, hr) pairs."""
    model.eval()
    values = [float(zoo.metrics.psnr(model(lr).clamp(0, 1), hr, shave=2)) for lr, hr in pairs]
    return sum(values) / len(values)


def table_a(args) -> dict:
    print("\n== A. rcan_tiny_x2 (quickstart, shipped weights): PSNR on the held-out val crops ==")
    out = OUT / "rcan"
    data = sr_data()
    val = list(data.val_dataloader())
    calib = sr_calibration(data, args.calib_batches)
    fp32 = zoo.create("rcan_tiny_x2", pretrained=True).eval()
    base = psnr_of(fp32, val)
    fp32_size = file_size(zoo.save_pretrained(fp32, out / "fp32") / "model.safetensors")
    rows = [Row("fp32", "-", base)]
    models = {}
    for spec_name, method in grid(args.quick, args.grid):
        model = copy.deepcopy(fp32)
        seconds = quantize_timed(model, SPECS[spec_name], calib, method)
        tag = spec_name.replace("*", "").replace("+", "p")
        size = file_size(zoo.save_quantized(model, out / f"{tag}_{method.replace('+', 'p')}.safetensors"))
        rows.append(Row(spec_name, method, psnr_of(model, val), seconds, size / fp32_size))
        models[(spec_name, method)] = model
        print(f"  {spec_name:<10} {method:<12} {rows[-1].metric:.3f} dB  ({seconds:.1f} s)", flush=True)

    w8 = [r for r in rows if r.spec == "w8a8" and r.method == "rtn"]
    w4 = [r for r in rows if r.spec == "w4a8"]
    if args.full_images:
        test = list(data.test_dataloader())  # the whole held-out images
        for r in [rows[0]] + w8[:1] + ([max(w4, key=lambda r: r.metric)] if w4 else []):
            model = fp32 if r.spec == "fp32" else models[(r.spec, r.method)]
            start = time.perf_counter()
            r.extra["test"] = psnr_of(model, test)
            print(f"  full images: {r.spec} {r.method}: {r.extra['test']:.3f} dB ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    header = ["spec", "method", "PSNR val crops dB", "delta dB"] + (["PSNR full test dB", "delta dB"]
                                                                     if args.full_images else []) + \
        ["size vs fp32", "quantize s"]
    table = []
    for r in rows:
        line = [r.spec, r.method, f"{r.metric:.3f}", "-" if r.spec == "fp32" else fmt_delta(r.metric - base)]
        if args.full_images:
            t = r.extra.get("test")
            line += ["" if t is None else f"{t:.3f}",
                     "" if t is None or r.spec == "fp32" else fmt_delta(t - rows[0].extra["test"])]
        line += ["1.000" if r.spec == "fp32" else f"{r.size_ratio:.3f}", "-" if r.spec == "fp32" else f"{r.quant_s:.1f}"]
        table.append(line)
    print(f"\nfp32 file {fp32_size / 1024:.0f} KiB; val crops: 2 held-out images, 192x192 HR / 96x96 LR; "
          f"calibration: {args.calib_batches} x 8 training crops 48x48 LR")
    text = print_table(header, table)
    goal_rows(rows, "A (val crops)", base, (0.05, 0.3), "dB", 3)
    return {"text": text, "rows": [r.__dict__ for r in rows], "fp32": base}


# --------------------------------------------------------------------------------------------------
# B. digits SE-ResNet
# --------------------------------------------------------------------------------------------------
def train_cached(name: str, config: str, epochs: int, retrain: bool, extra: Optional[list[str]] = None) -> dict:
    """Train ``config`` through train.py into benchmarks/out once; later calls reuse the export."""
    from zoo.training import run

    run_dir = OUT / name
    meta_path = run_dir / "benchmark.json"
    if not retrain and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("epochs") == epochs and (run_dir / "export" / "model.safetensors").is_file():
            meta["cached"] = True
            return meta
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = ["fit", "--config", str(ROOT / config), "--output_dir", str(run_dir), "--trainer.max_epochs", str(epochs),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            *(extra or [])]
    print(f"  training {config} for {epochs} epochs into {run_dir} ...", flush=True)
    start = time.perf_counter()
    with single_thread():  # the same weights whatever the thread count (2 threads train a different model)
        quiet(run, argv)
    meta = {"epochs": epochs, "wall_s": time.perf_counter() - start, "config": config,
            "command": f"python train.py fit --config {config} --trainer.max_epochs {epochs}"}
    meta_path.write_text(json.dumps(meta, indent=1))
    meta["cached"] = False
    return meta


def run_for_table(args, name: str, config: str, epochs: int, what: str) -> Optional[dict]:
    """:func:`train_cached` for one table; with ``--quick`` only an earlier run serves (None without one)."""
    if args.quick and not (OUT / name / "benchmark.json").is_file():
        print(f"  skipped: no cached {what} (run once without --quick to train it)")
        return None
    meta = train_cached(name, config, epochs, args.retrain and not args.quick)
    if meta["cached"]:
        print(f"  cached {what} ({meta['epochs']} epochs, trained in {meta['wall_s']:.0f} s)")
    return meta


def digits_data():
    from zoo.data import DigitsDataModule

    data = DigitsDataModule(img_size=32, batch_size=64, max_shift=2)
    data.setup()
    return data


@torch.inference_mode()
def top1_of(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def table_b(args) -> Optional[dict]:
    print("\n== B. seresnet18 on digits: top-1 (%) on the test split ==")
    run_dir = OUT / "digits_seresnet"
    meta = run_for_table(args, "digits_seresnet", "configs/digits_seresnet.yaml", args.digits_epochs, "digits model")
    if meta is None:
        return None
    data = digits_data()
    test = list(data.test_dataloader())
    torch.manual_seed(0)
    calib = [x for (x, _), _ in zip(data.train_dataloader(), range(args.calib_batches))]
    fp32 = zoo.create("seresnet18", pretrained=str(run_dir / "export"), num_classes=10, in_chans=1).eval()
    base = top1_of(fp32, test)
    fp32_size = file_size(run_dir / "export" / "model.safetensors")
    rows = [Row("fp32", "-", base)]
    specs = [(s, m) for s, m in grid(args.quick, args.grid) if not args.quick or m == "rtn"]
    specs += [] if args.quick or args.grid else [(W8_DOWNSAMPLE, "rtn"), (W8_DOWNSAMPLE, "awq"), (KEEP_DOWNSAMPLE, "rtn")]
    for spec_name, method in specs:
        model = copy.deepcopy(fp32)
        seconds = quantize_timed(model, {**SPECS, **SPECS_B}[spec_name], calib, method)
        path = OUT / "digits_quantized.safetensors"  # one at a time: the sizes are what we keep
        size = file_size(zoo.save_quantized(model, path))
        path.unlink()
        rows.append(Row(spec_name, method, top1_of(model, test), seconds, size / fp32_size))
        print(f"  {spec_name:<10} {method:<12} {rows[-1].metric:.2f} %  ({seconds:.1f} s)", flush=True)
    n = sum(len(y) for _, y in test)
    if not args.quick:
        print(f"{W8_DOWNSAMPLE}: w4a8 with 8-bit weights in the downsample convolutions (keep_w8); "
              f"{KEEP_DOWNSAMPLE}: w4a8 with them kept in float")
    print(f"\n{n} test images (one image = {100 / n:.2f} points); fp32 file {fp32_size / 2 ** 20:.1f} MiB; "
          f"model trained {meta['epochs']} epochs ({meta['wall_s']:.0f} s); calibration {args.calib_batches} x 64 "
          f"training images")
    text = print_table(["spec", "method", "top-1 %", "delta points", "size vs fp32", "quantize s"],
                       [[r.spec, r.method, f"{r.metric:.2f}", "-" if r.spec == "fp32" else fmt_delta(r.metric - base, 2),
                         "1.000" if r.spec == "fp32" else f"{r.size_ratio:.3f}",
                         "-" if r.spec == "fp32" else f"{r.quant_s:.1f}"] for r in rows])
    goal_rows([r for r in rows if r.spec != "w4a8"], "B (top-1)", base, (0.2, 1.0), "points", 2)  # w4a8: below
    plain = [r for r in rows if r.spec in ("w4a8", "w4a8-g32*")]
    if plain:
        best_w4 = max(plain, key=lambda r: r.metric)
        goal("B: best w4a8, every conv at 4 bits, within 1 point of fp32 top-1", base - best_w4.metric <= 1.0,
             f"{best_w4.spec} {best_w4.method}: {fmt_delta(best_w4.metric - base, 2)}")
    mixed = [r for r in rows if r.spec == W8_DOWNSAMPLE]
    if mixed:
        best_mixed = max(mixed, key=lambda r: r.metric)
        goal("B: best w4a8 with 8-bit downsample convs (keep_w8) within 1 point of fp32 top-1",
             base - best_mixed.metric <= 1.0, f"{best_mixed.method}: {fmt_delta(best_mixed.metric - base, 2)}, "
             f"size {best_mixed.size_ratio:.3f}x fp32")
    return {"text": text, "rows": [r.__dict__ for r in rows], "fp32": base, "train": meta}


# --------------------------------------------------------------------------------------------------
# C. torchao on a linear-only model
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def single_thread():
    """One torch thread inside: float sums in the same order whatever the machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_mlp(steps: int = 400, img_size: int = 16, seed: int = 0):
    """A 4-layer ReLU MLP on the flattened digits (256 -> 512 -> 256 -> 128 -> 10), AdamW on random
    minibatches of 64 (single-threaded, so the weights do not depend on the thread count); returns the
    model and the flattened (train, test) tensors."""
    from zoo.data import DigitsDataModule

    data = DigitsDataModule(img_size=img_size, batch_size=64, max_shift=0)
    data.setup()
    (x_train, y_train), (x_test, y_test) = data.splits["train"].tensors, data.splits["test"].tensors
    x_train, x_test = x_train.flatten(1), x_test.flatten(1)
    torch.manual_seed(seed)
    d = x_train.shape[1]
    mlp = nn.Sequential(nn.Linear(d, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                        nn.Linear(128, 10))
    opt = torch.optim.AdamW(mlp.parameters(), lr=2e-3, weight_decay=1e-2)
    with single_thread():
        for _ in range(steps):
            i = torch.randint(0, len(x_train), (64,))
            loss = nn.functional.cross_entropy(mlp(x_train[i]), y_train[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mlp.eval(), (x_train, y_train), (x_test, y_test)


def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(|y|^2 / |y - y_q|^2) in dB."""
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - approx).pow(2).sum().clamp_min(1e-30)))


TORCHAO_CASES = [
    # (what, torchao config builder, its settings in words, our spec)
    ("int8 weights, int8 act", "int8", "Int8DynamicActivationInt8WeightConfig() (per-row sym weights, per-token sym act)",
     "w8a8"),
    ("int4 group 32, int8 act", "int4_g32", ("Int8DynamicActivationIntxWeightConfig(int4, PerGroup(32)) "
                                             "(sym weights, per-token asym act)"), "w4a8-g32"),
    ("int4 per-channel, int8 act", "int4_pc", ("Int8DynamicActivationIntxWeightConfig(int4, PerAxis(0)) "
                                               "(sym weights, per-token asym act)"), "w4a8-pcw"),
]


def torchao_config(kind: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if kind == "int8":
        return Int8DynamicActivationInt8WeightConfig()
    granularity = PerGroup(32) if kind == "int4_g32" else PerAxis(0)
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=granularity)


def torchao_quantized(model: nn.Module, kind: str) -> nn.Module:
    from torchao.quantization import quantize_

    model = copy.deepcopy(model)
    quiet(quantize_, model, torchao_config(kind))
    return model


def ours_quantized(model: nn.Module, spec: str, method: str = "rtn", calib=None) -> nn.Module:
    model = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zoo.quantize(model, QuantSpec.parse(spec).with_(keep=()), calib=calib, method=method)


def _span(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:+.2f} ({min(values):+.2f}..{max(values):+.2f})" if len(values) > 1 else f"{mean:+.2f}"


def table_c(args) -> Optional[dict]:
    print("\n== C. torchao vs zoo.quantize on trained MLPs (digits, flattened 16x16): SQNR of the logits ==")
    try:
        import torchao
    except ImportError:
        print("  skipped: torchao is not installed (pip install -e .[test])")
        return None
    seeds = range(args.mlp_seeds)
    cases = {what: {"torchao": [], "ours": [], "diff": [], "top1": []} for what, *_ in TORCHAO_CASES}
    calibrated: dict[tuple[str, str], list[float]] = {}
    fp32_top1 = []
    start = time.perf_counter()
    for seed in seeds:
        mlp, (x_train, _), (x_test, y_test) = train_mlp(seed=seed)
        calib = [x_train[i:i + 64] for i in range(0, 64 * args.calib_batches, 64)]
        with torch.no_grad():
            ref = mlp(x_test)
            fp32_top1.append(100.0 * float((ref.argmax(1) == y_test).float().mean()))

            def score(model):
                y = model(x_test)
                return sqnr(ref, y), 100.0 * float((y.argmax(1) == y_test).float().mean())

            for what, kind, _, spec in TORCHAO_CASES:
                (ao, ao_top1), (ours, our_top1) = score(torchao_quantized(mlp, kind)), score(ours_quantized(mlp, spec))
                c = cases[what]
                c["torchao"].append(ao)
                c["ours"].append(ours)
                c["diff"].append(ours - ao)
                c["top1"].append((ao_top1, our_top1))
            methods = ("smoothquant", "awq", "os+") if not args.quick else ("awq",)
            for spec in ("w8a8", "w4a8-g32", "w4a8-pcw", "w4a8-g32-asym"):
                for method in (("rtn",) if spec.endswith("asym") else ()) + methods:
                    calibrated.setdefault((spec, method), []).append(score(ours_quantized(mlp, spec, method, calib))[0])
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    rows = [[what, settings, f"{mean(cases[what]['torchao']):.2f}", f"{spec} rtn", f"{mean(cases[what]['ours']):.2f}",
             _span(cases[what]["diff"]),
             f"{mean([a for a, _ in cases[what]['top1']]):.1f} / {mean([b for _, b in cases[what]['top1']]):.1f}"]
            for what, _, settings, spec in TORCHAO_CASES]
    print(f"\n{len(seeds)} MLP(s) 256-512-256-128-10 (seeds {', '.join(map(str, seeds))}; 400 AdamW steps each, "
          f"fp32 top-1 {mean(fp32_top1):.1f} %), {len(x_test)} held-out test inputs, all layers quantized on both sides; "
          f"torchao {torchao.__version__}; SQNR means over the MLPs, the difference also as (min..max); "
          f"{time.perf_counter() - start:.0f} s")
    text = print_table(["weights / activations", "torchao config", "torchao SQNR dB", "ours", "ours SQNR dB",
                        "ours - torchao dB", "top-1 % torchao / ours"], rows)
    print(f"\nours with calibration (the same MLPs, calibrated on {args.calib_batches} x 64 training inputs), "
          f"mean SQNR:")
    text += "\n\n" + print_table(["ours", "method", "SQNR dB"],
                                   [[f"{spec} (keep=())", method, f"{mean(v):.2f}"]
                                    for (spec, method), v in calibrated.items()])
    for what, _, _, spec in TORCHAO_CASES:
        d = cases[what]["diff"]
        goal(f"C: ours >= torchao, {what}", mean(d) >= 0,
             f"{spec} rtn {mean(cases[what]['ours']):.2f} dB vs torchao {mean(cases[what]['torchao']):.2f} dB, "
             f"per MLP {_span(d)}")
    return {"text": text, "rows": cases, "calibrated": {f"{k[0]} {k[1]}": v for k, v in calibrated.items()}}


# --------------------------------------------------------------------------------------------------
# D. quantization-aware training
# --------------------------------------------------------------------------------------------------
def table_d(args) -> Optional[dict]:
    print("\n== D. QAT (configs/quickstart_qat.yaml) vs RTN w4a8: PSNR on the held-out val crops ==")
    run_dir = OUT / "quickstart_qat"
    meta = run_for_table(args, "quickstart_qat", "configs/quickstart_qat.yaml", args.qat_epochs, "QAT run")
    if meta is None:
        return None
    data = sr_data()
    val = list(data.val_dataloader())
    fp32 = zoo.create("rcan_tiny_x2", pretrained=True).eval()
    base = psnr_of(fp32, val)
    rtn = copy.deepcopy(fp32)
    quantize_timed(rtn, "w4a8", None, "rtn")
    rtn_psnr = psnr_of(rtn, val)
    qat_float = zoo.create("rcan_tiny_x2", pretrained=str(run_dir / "export")).eval()
    qat_float_psnr = psnr_of(qat_float, val)
    qat = zoo.create("rcan_tiny_x2", pretrained=str(run_dir / "export" / "quantized")).eval()
    qat_psnr = psnr_of(qat, val)
    loss, recovered = base - rtn_psnr, qat_psnr - rtn_psnr
    fraction = recovered / loss if loss > 0 else math.inf
    rows = [["fp32 (shipped weights)", f"{base:.3f}", "-"],
            ["w4a8 rtn of the shipped weights", f"{rtn_psnr:.3f}", fmt_delta(rtn_psnr - base)],
            ["QAT fine-tuned, float weights", f"{qat_float_psnr:.3f}", fmt_delta(qat_float_psnr - base)],
            ["QAT fine-tuned, exported w4a8 (export/quantized)", f"{qat_psnr:.3f}", fmt_delta(qat_psnr - base)]]
    print(f"\nQAT: {meta['command']} ({meta['epochs']} epochs, {meta['wall_s']:.0f} s wall on this machine); "
          f"w4a8 = the preset (group 64, per channel for rcan_tiny's 32-channel layers), rtn, dynamic per-token "
          f"activations")
    text = print_table(["model", "PSNR val crops dB", "delta dB"], rows)
    print(f"recovered {recovered:+.3f} of the {loss:.3f} dB RTN loss ({100 * fraction:.0f} %)")
    goal("D: QAT recovers >= half of the RTN w4a8 loss", fraction >= 0.5, f"{100 * fraction:.0f} %")
    return {"text": text, "fp32": base, "rtn": rtn_psnr, "qat": qat_psnr, "qat_float": qat_float_psnr,
            "recovered_fraction": fraction, "train": meta}


# --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced grid, well under a minute")
    parser.add_argument("--tables", default="ABCD", help="which tables to run, e.g. AC")
    parser.add_argument("--grid", default=None,
                        help="tables A and B: only these spec:method rows, e.g. w8a8:rtn,w8a8-tok:rtn,w4a8:awq")
    parser.add_argument("--retrain", action="store_true", help="train the digits model and the QAT run again")
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--digits-epochs", type=int, default=4)
    parser.add_argument("--qat-epochs", type=int, default=4)
    parser.add_argument("--mlp-seeds", type=int, default=3, help="table C: how many MLPs to train and average")
    parser.add_argument("--full-images", action="store_true",
                        help="table A also on the whole held-out images (fp32, w8a8 rtn, best w4a8)")
    parser.add_argument("--save", action="store_true", help="write the tables to benchmarks/out/quant_accuracy/")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine OpenMP threads waiting for busy "
                             "cores slowed 2-thread runs 5-10x; the accuracy numbers do not depend on it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unknown = set(args.tables.upper()) - set("ABCD")
    if unknown:
        parser.error(f"--tables: unknown table(s) {sorted(unknown)}; choose from A, B, C, D")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    print(f"quantization accuracy, {'quick' if args.quick else 'full'} run; {machine()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {}
    for name, fn in (("A", table_a), ("B", table_b), ("C", table_c), ("D", table_d)):
        if name in args.tables.upper():
            results[name] = fn(args)
    wall = time.perf_counter() - start
    print(f"\n== summary ({wall:.0f} s; 1-minute load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: "
          f"above ~2, other processes shared the cores and the times are inflated) ==")
    for text, met, evidence in GOALS:
        print(f"  [{'met' if met else 'MISSED'}] {text}: {evidence}")
    if args.save:
        (OUT / "results.json").write_text(json.dumps({"goals": GOALS, "wall_s": wall, **{
            k: {kk: vv for kk, vv in v.items() if kk != "text"} for k, v in results.items() if v}}, indent=1,
            default=str))
        (OUT / "tables.txt").write_text("\n\n".join(f"{k}\n{v['text']}" for k, v in results.items() if v))
        print(f"  tables written to {OUT}")


if __name__ == "__main__":
    main()
