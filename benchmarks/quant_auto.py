"""The quantization report and automatic mixed precision (issue 24): what ``zoo.quant.analyze`` finds and
what ``zoo.quantize(model, "auto", budget=...)`` buys.

    python benchmarks/quant_auto.py [--tables ABC] [--calib-batches 2] [--resnet-images 8] [--threads 1]

A. Digits SE-ResNet-18 (the model benchmarks/quant_accuracy.py trains and caches, 4 epochs): top-1 on the
   test split for fp32, w4a8 RTN and AWQ, and ``auto`` with a byte budget of the w4a8 RTN model's tensors
   + 10%; the report's three most sensitive layers against the 1x1 downsample convolutions (what the hand
   search of quant_accuracy.py found); Spearman's rank correlation of the report's sensitivities (output
   SQNR on the calibration batches, simulated quantization) against measured one-layer-at-a-time
   sensitivities (the real integer layer, only that one, on the test split: logit SQNR and top-1 drop).
   Goals: auto within 0.5 points of fp32; the downsample convs the top 3 under round to nearest (the hand
   search's setting; the ranking with each layer's best method is printed too); Spearman >= 0.8.
B. The quickstart RCAN (``rcan_tiny_x2``, shipped weights): PSNR on the held-out val crops for fp32,
   w4a8 RTN and AWQ, and ``auto`` at the w4a8 RTN model's size (plain, and with ``verify=6``: method swaps
   on the 6 costliest layers checked on the whole quantized model), x1.1 and x1.25. Goal: auto (the better
   of the two at x1.0) within 0.03 dB of fp32.
C. ``analyze`` time on ``resnet50`` (random weights) with ``--resnet-images`` 224x224 calibration images,
   the default four methods. Goal: under 2 minutes on the CPU.

Calibration: ``--calib-batches`` training batches (digits: 64 images; RCAN: 8 LR crops 48x48). The JSON
goes to benchmarks/out/quant_auto.json (git-ignored).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_accuracy import (OUT as QA_OUT, digits_data, psnr_of, quiet, run_for_table, sr_calibration,  # noqa: E402
                            sr_data, top1_of)
from common import machine, print_table  # noqa: E402

import zoo  # noqa: E402
from zoo.quant import QuantPlan, analyze, quantize  # noqa: E402
from zoo.quant.analyze import model_bytes  # noqa: E402
from zoo.quant.plan import LayerChoice  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
GOALS: list[tuple[str, bool, str]] = []


def goal(text: str, met: bool, evidence: str) -> None:
    GOALS.append((text, met, evidence))
    print(f"goal ({text}): {'met' if met else 'NOT met'} ({evidence})")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho with average ranks for ties."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / den if den else float("nan")


def timed_quantize(model, spec, **kwargs) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize(model, spec, **kwargs)
    return time.perf_counter() - start


@torch.inference_mode()
def logit_sqnr(model, reference: list[torch.Tensor], test) -> float:
    signal = noise = 0.0
    for (x, _), ref in zip(test, reference):
        out = model(x)
        signal += float(ref.pow(2).sum())
        noise += float((out - ref).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def uniform_w4a8_rows(fp32, calib, score, digits: int, rows: list, results: dict) -> int:
    """The uniform w4a8 rows (RTN, AWQ, GPTQ) every table compares ``auto`` with; returns RTN's size in bytes (the
    w4a8 size the budgets are set from)."""
    base, fp32_bytes, rtn_bytes = results["fp32"], model_bytes(fp32), 0
    for method in ("rtn", "awq", "gptq"):
        model = copy.deepcopy(fp32)
        seconds = timed_quantize(model, "w4a8", calib=calib if method != "rtn" else None, method=method)
        value = score(model)
        rows.append(["w4a8", method, f"{value:.{digits}f}", f"{value - base:+.{digits}f}",
                     f"{model_bytes(model) / fp32_bytes:.3f}", f"{seconds:.1f}"])
        results[f"w4a8_{method}"] = value
        print(f"  w4a8 {method}: {value:.{digits}f} ({seconds:.1f} s)", flush=True)
        rtn_bytes = rtn_bytes or model_bytes(model)
    return rtn_bytes


def table_a(args) -> dict:
    print("\n== A. digits SE-ResNet-18: auto mixed precision, report ranking ==")
    meta = run_for_table(argparse.Namespace(quick=False, retrain=False), "digits_seresnet",
                         "configs/digits_seresnet.yaml", 4, "digits model")
    data = digits_data()
    test = list(data.test_dataloader())
    torch.manual_seed(0)
    calib = [x for (x, _), _ in zip(data.train_dataloader(), range(args.calib_batches))]
    fp32 = zoo.create("seresnet18", pretrained=str(QA_OUT / "digits_seresnet" / "export"), num_classes=10,
                      in_chans=1).eval()
    base, fp32_bytes = top1_of(fp32, test), model_bytes(fp32)
    rows = [["fp32", "-", f"{base:.2f}", "-", "1.000", "-"]]
    results: dict = {"fp32": base, "train": meta}
    w4_bytes = uniform_w4a8_rows(fp32, calib, lambda m: top1_of(m, test), 2, rows, results)
    start = time.perf_counter()
    report = quiet(analyze, fp32, calib, "w4a8", every_precision=True)
    analyze_s = time.perf_counter() - start
    print(report.summary(top=8))
    budget = int(w4_bytes * 1.1)
    auto = copy.deepcopy(fp32)
    seconds = timed_quantize(auto, "auto", calib=calib, budget=budget, report=report) + analyze_s
    top1 = top1_of(auto, test)
    rows.append(["auto (w4a8 size +10%)", "per layer", f"{top1:.2f}", f"{top1 - base:+.2f}",
                 f"{model_bytes(auto) / fp32_bytes:.3f}", f"{seconds:.1f}"])
    print(zoo.quant.summary(auto))
    results.update(auto=top1, auto_bytes=model_bytes(auto), budget=budget, w4a8_bytes=w4_bytes, fp32_bytes=fp32_bytes,
                   plan=auto.quant_plan.to_dict(), analyze_s=analyze_s)
    text = print_table(["model", "method", "top-1 %", "delta points", "size vs fp32", "quantize s"], rows)
    goal("A: auto at w4a8 size + 10% within 0.5 points of fp32 top-1", base - top1 <= 0.5,
         f"{top1 - base:+.2f} points at {model_bytes(auto) / fp32_bytes:.3f}x fp32, budget {budget} bytes")

    # the report's ranking against measured one-layer-at-a-time sensitivities (real integer layers)
    with torch.inference_mode():
        reference = [fp32(x) for x, _ in test]
    measured_sqnr, measured_drop, predicted = [], [], []
    for la in report.layers:
        precision = la.headline.precision
        plan = QuantPlan(report.spec, {n.name: LayerChoice("float") for n in report.layers} |
                         {la.name: LayerChoice(precision, la.headline.method)})
        one = copy.deepcopy(fp32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize(one, plan, calib=calib)
        measured_sqnr.append(-logit_sqnr(one, reference, test))
        measured_drop.append(base - top1_of(one, test))
        predicted.append(la.sensitivity)
    rho_sqnr, rho_top1 = spearman(predicted, measured_sqnr), spearman(predicted, measured_drop)
    # the hand search of keep_w8 compared layers under round to nearest, so its twin is the report's RTN ranking;
    # the ranking by each layer's best method (what the plan spends bytes on) is printed beside it
    top3, top3_best = report.ranking("rtn")[:3], report.ranking()[:3]
    downsample = [la.name for la in report.layers if "downsample" in la.name]
    print(f"report top 3 under round to nearest: {top3}; with each layer's best method: {top3_best}; "
          f"downsample convs: {downsample}")
    print(f"Spearman (report sensitivity vs measured logit-SQNR loss, {len(predicted)} layers): {rho_sqnr:.3f}; "
          f"vs measured top-1 drop: {rho_top1:.3f}")
    goal("A: the report's top 3 (round to nearest) are the downsample convolutions", set(top3) == set(downsample),
         f"{sum(n in downsample for n in top3)} of {len(downsample)} downsample convs in the top 3: {top3}")
    goal("A: report ranking vs measured one-layer sensitivities, Spearman >= 0.8", rho_sqnr >= 0.8,
         f"rho {rho_sqnr:.3f} vs logit SQNR, {rho_top1:.3f} vs top-1 drop")
    results.update(top3=top3, top3_best=top3_best, downsample=downsample, spearman_sqnr=rho_sqnr,
                   spearman_top1=rho_top1, ranking=report.ranking(), ranking_rtn=report.ranking("rtn"))
    return {"text": text, **results}


def table_b(args) -> dict:
    print("\n== B. rcan_tiny_x2: auto at the w4a8 size (and above it) ==")
    data = sr_data()
    val = list(data.val_dataloader())
    calib = sr_calibration(data, args.calib_batches)
    fp32 = zoo.create("rcan_tiny_x2", pretrained=True).eval()
    base, fp32_bytes = psnr_of(fp32, val), model_bytes(fp32)
    rows = [["fp32", "-", f"{base:.3f}", "-", "1.000", "-"]]
    results: dict = {"fp32": base}
    w4_bytes = uniform_w4a8_rows(fp32, calib, lambda m: psnr_of(m, val), 3, rows, results)
    start = time.perf_counter()
    report = quiet(analyze, fp32, calib, "w4a8", every_precision=True)  # one analysis, several budgets
    analyze_s = time.perf_counter() - start
    # verified: the greedy plan, then method swaps on its 6 costliest layers kept where the calibration SQNR
    # of the whole quantized model rises (zoo.quant.auto.verify_plan)
    for factor, verify in ((1.0, 0), (1.0, 6), (1.1, 0), (1.25, 0)):
        auto = copy.deepcopy(fp32)
        seconds = timed_quantize(auto, "auto", calib=calib, budget=int(w4_bytes * factor), report=report,
                                 verify=verify)
        psnr = psnr_of(auto, val)
        label = f"x{factor}" + (f", verify {verify}" if verify else "")
        print(f"  {label}: " + zoo.quant.summary(auto).splitlines()[1].strip()
              + (f" {auto.quant_plan.notes.get('verified')}" if verify else ""))
        rows.append([f"auto (w4a8 size {label})", "per layer", f"{psnr:.3f}", f"{psnr - base:+.3f}",
                     f"{model_bytes(auto) / fp32_bytes:.3f}", f"{seconds + analyze_s:.1f}"])
        results[f"auto_x{factor}" + (f"_verify{verify}" if verify else "")] = {
            "psnr": psnr, "bytes": model_bytes(auto), "plan": auto.quant_plan.to_dict()}
    text = print_table(["model", "method", "PSNR val crops dB", "delta dB", "size vs fp32", "quantize s"], rows)
    auto_psnr = max(results["auto_x1.0"]["psnr"], results["auto_x1.0_verify6"]["psnr"])
    goal("B: auto at the w4a8 size within 0.03 dB of fp32", base - auto_psnr <= 0.03, f"{auto_psnr - base:+.3f} dB")
    return {"text": text, "analyze_s": analyze_s, **results}


def table_c(args) -> dict:
    print(f"\n== C. analyze on resnet50 (random weights), {args.resnet_images} images 224x224 ==")
    torch.manual_seed(0)
    model = zoo.create("resnet50").eval()
    calib = [torch.randn(args.resnet_images, 3, 224, 224)]
    start = time.perf_counter()
    report = quiet(analyze, model, calib, "w4a8")
    seconds = time.perf_counter() - start
    print(f"analyze: {len(report.layers)} layers in {seconds:.1f} s")
    goal("C: analyze on resnet50 with 8 calibration images under 2 minutes", seconds < 120, f"{seconds:.1f} s")
    return {"seconds": seconds, "layers": len(report.layers), "images": args.resnet_images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default="ABC")
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--resnet-images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    results = {}
    for key, fn in (("A", table_a), ("B", table_b), ("C", table_c)):
        if key in args.tables.upper():
            results[key] = fn(args)
    print("\n" + "\n".join(f"{'met' if met else 'NOT met'}: {text} ({evidence})" for text, met, evidence in GOALS))
    OUT.mkdir(exist_ok=True)
    (OUT / "quant_auto.json").write_text(json.dumps({"machine": machine(), "args": vars(args), "goals": GOALS,
                                                     **results}, indent=1, default=str))


if __name__ == "__main__":
    main()
