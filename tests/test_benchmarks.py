"""The benchmark scripts stay runnable: each one imports and parses its arguments (``--help``), and the
quick ones run a smoke pass. They print figures, they do not assert speed (benchmarks/RESULTS.md)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_imports_and_parses_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts prepend their folders
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_conv_widths_times_every_width_of_both_shapes(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    report = runpy.run_path(str(BENCHMARKS / "conv_widths.py"))["main"](["--repeats", "1"])
    rows = [[c.strip() for c in line.split("|")] for line in report.splitlines()[2:]]
    assert len(rows) == 14 and all(float(ms) > 0 and float(ms_cl) > 0 for _, _, ms, _, ms_cl, _ in rows)
    assert [rows[6][1], rows[6][3], rows[6][5], rows[13][1], rows[13][3], rows[13][5]] == \
        ["32", "1.00", "1.00", "64", "1.00", "1.00"]  # each shape's widest, in each layout


def test_quantized_moc_decode_quick_pass(monkeypatch):
    """One small FFN per spec: the script checks the integer decode equals the dense integer path bit for
    bit before timing, and prints a row per path."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    module = runpy.run_path(str(BENCHMARKS / "moc_int.py"))
    report = module["main"](["--quick", "--no-compile", "--repeats", "1"])
    rows = [line for line in report.splitlines() if "K=43" in line]
    assert len(rows) == 8 and sum("MoC int decode" in r for r in rows) == 2


def test_cpu_inference_quick_pass(monkeypatch):
    """The CPU inference table on the trained quickstart RCAN at 32x32, eager rows: one row per path, the
    quantized rows' output SQNR against fp32 in the range the specs give (per-pixel above the presets' per-image),
    the onnxruntime rows through zoo.export_onnx."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    module = runpy.run_path(str(BENCHMARKS / "cpu_inference.py"))
    report = module["main"](["--quick", "--no-compile", "--models", "rcan_tiny_x2", "--threads", "1", "--repeats", "1"])
    rows = {line.split("|")[2].strip(): line for line in report.splitlines() if line.startswith("rcan_tiny_x2")}
    assert set(rows) == {"fp32 eager", "onnxruntime fp32", "onnxruntime int8", "zoo w8a8-tok", "zoo w8a8",
                         "zoo w8a8-static", "zoo w4a8-pcw"}
    sqnr = {path: float(line.split("|")[5].split()[0]) for path, line in rows.items() if path != "fp32 eager"}
    assert sqnr["zoo w8a8-tok"] > sqnr["zoo w8a8"] > 45 and sqnr["zoo w4a8-pcw"] > 33, sqnr
    assert sqnr["onnxruntime fp32"] > 100 and 35 < sqnr["onnxruntime int8"] < 70, sqnr  # the same graph; its int8


def test_ema_quick_pass(monkeypatch):
    """One update per path on the tiny LM: the old and the new update leave the same average (checked before
    timing), and the table has a row per path, the old one's ratio 1."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    module = runpy.run_path(str(BENCHMARKS / "ema.py"))
    report = module["main"](["--cpu", "--models", "moc_lm_tiny", "--repeats", "1", "--steps", "1"])
    rows = [line for line in report.splitlines() if line.startswith("moc_lm_tiny")]
    assert [r.split("|")[3].strip() for r in rows] == ["old state_dict", "zoo ModelEma", "timm ModelEmaV3"]
    assert rows[0].rstrip().endswith("1.00")


def test_han_csam_quick_pass(monkeypatch):
    """The CSAM benchmark's CPU table on a tiny map: a row per path, the floor's ratio 1."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    module = runpy.run_path(str(BENCHMARKS / "han_csam.py"))
    report = module["main"](["--cpu", "--shapes", "1x4x6x5", "--repeats", "1"])
    rows = [line for line in report.splitlines() if line.startswith("1x4x6x5")]
    assert len(rows) == 3 and rows[-1].rstrip().endswith("1.00")


def test_pruning_quick_pass(monkeypatch, tmp_path, capsys):
    """The untrained digits model on 64 images, one fine-tuning step per row: a row per criterion at 50% of the
    MACs removed (gate-soft cut by the training loop itself, gate-lat at half the measured layer time), the
    unpruned and w8a8 rows, top-1 a fraction; Torch-Pruning's rows are left out with a note when
    it is not installed (made so here, as in CI's test extra, whether or not this machine has it)."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import torch_pruning: ModuleNotFoundError
    module = runpy.run_path(str(BENCHMARKS / "pruning.py"))
    report = module["main"](["--models", "digits_seresnet18", "--levels", "0.5", "--methods", "gate,gate-soft,gate-lat,tp-magnitude",
                             "--base-steps", "0", "--steps", "1", "--limit", "64", "--calib", "1", "--repeats", "1",
                             "--out", str(tmp_path)])
    assert "note: the tp-magnitude rows are left out" in capsys.readouterr().out
    rows = {cells[1]: cells[2:] for cells in (
        [c.strip() for c in line.split("|")] for line in report.splitlines() if line.startswith("digits_seresnet18"))}
    assert set(rows) == {"unpruned", "gate@0.5", "gate-soft@0.5", "gate-lat@0.5", "unpruned+w8a8", "gate@0.5+w8a8"}
    for method, (top1, params, macs, removed, latency, ratio) in rows.items():
        assert 0 <= float(top1) <= 1 and float(latency) > 0 and float(ratio) > 0, (method, rows[method])
        removed = float(removed.rstrip("%")) / 100
        if method == "gate-lat@0.5":  # half the measured layer time, in 16-channel steps: MACs follow, unequally
            assert 0.3 < removed < 0.95, removed
            continue
        assert (0.5 <= removed < 0.56) if "@0.5" in method else removed == 0, (method, removed)
        full = float(params) == pytest.approx(11.265, abs=1e-3)  # w8a8 rows: the float count
        assert float(params) < 0.75 * 11.265 if "@0.5" in method else full, (method, params)
    assert float(rows["unpruned"][5]) == 1.0
    assert "- digits_seresnet18: accuracy with half the MACs removed" in report  # the goals, read off the rows
    assert "- digits_seresnet18: gate@0.5+w8a8 faster than gate@0.5 and unpruned+w8a8" in report
    assert (tmp_path / "pruning.json").exists()


def test_pruning_goal_lines_read_the_goals_off_the_rows(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    goal_lines = runpy.run_path(str(BENCHMARKS / "pruning.py"))["goal_lines"]

    def row(method, psnr, removed, ratio):
        return {"model": "quickstart_rcan", "method": method, "psnr": psnr, "macs_removed": removed,
                "latency_ratio": ratio, "latency_ms": 40 * ratio}
    rows = [row("unpruned", 33.78, 0.0, 1.0), row("gate-rec@0.5", 33.70, 0.502, 0.67),
            row("greedy-lat-rec@0.5", 33.64, 0.664, 0.52), row("gate-lat@0.5", 31.5, 0.744, 0.35),
            row("tp-taylor@0.5", 32.4, 0.544, 1.0), row("unpruned+w8a8", 33.75, 0.0, 0.54),
            row("greedy-lat-rec@0.5+w8a8", 33.6, 0.664, 0.3), row("gate-rec@0.3", 33.8, 0.3, 0.9)]
    lines = goal_lines(rows)
    assert lines[0].startswith("- quickstart_rcan: accuracy") and "met (best gate-rec@0.5: 33.7000)" in lines[0]
    assert "33.7000 vs 32.4000, met" in lines[1]
    # the 31.5 dB row is faster but outside 0.15 dB; the 0.3 level removes too little to count
    assert "met (fastest greedy-lat-rec@0.5: 0.52x, 66.4% of the MACs removed)" in lines[2]
    assert "greedy-lat-rec@0.5+w8a8 faster than greedy-lat-rec@0.5 and unpruned+w8a8: met" in lines[3]
    rows[2]["psnr"] = 33.6  # now outside 0.15 dB: the fastest kept row is gate-rec at 0.67x
    assert "NOT met (fastest gate-rec@0.5: 0.67x" in goal_lines(rows)[2]


@pytest.mark.parametrize("name", ["se", "eca", "ca", "fca"])
def test_channel_gate_split_form_equals_the_block(name, monkeypatch, triton_mode):
    """The GPU table's "pool and excite apart" row computes the same gate as the block's fused launch
    (checked under the interpreter: without it the row could time a different computation)."""
    from kernel_testing import DEVICE

    if DEVICE is None:
        pytest.skip("needs Triton and CUDA, or TRITON_INTERPRET=1")
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    module = runpy.run_path(str(BENCHMARKS / "channel_gate.py"))
    block = module["make_block"](name, 32, 4, 5, DEVICE, torch.float32)
    x = torch.randn(2, 32, 4, 5, device=DEVICE)
    torch.testing.assert_close(module["split_gate"](block, x), block.channel_gate(x), atol=1e-6, rtol=1e-5)


def test_weight_memory_quick_pass(monkeypatch):
    """Weight memory: int4 codes below int8, oneDNN's packed int8 copy about a quarter of fp32, optimize's
    copy sharing what folding leaves alone (the running total below quantized + a full copy + packed), and
    the module with released codes holding about the packed weights (under 0.3x with -all)."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS)] + sys.path)
    module = runpy.run_path(str(BENCHMARKS / "weight_memory.py"))
    report = module["main"](["--quick"])
    rows = {tuple(c.strip() for c in line.split("|")[:2]): [float(c.strip().rstrip("x")) for c in line.split("|")[2:]]
            for line in report.splitlines()[2:]}
    for model in ("resnet18", "RCAN 64ch 2x10"):
        (w8, running8, packed8, _), (w4, running4, packed4, _) = rows[(model, "w8a8")], rows[(model, "w4a8-pcw")]
        assert w4 < w8 < 0.4 and 0.2 < packed4 == packed8 < 0.3, rows
        assert running4 < w4 + w4 + packed4 and running8 < w8 + w8 + packed8, rows  # the copy shares
        _, running_all, packed_all, alone_all = rows[(model, "w4a8-pcw-all")]
        assert packed_all <= alone_all < min(0.3, running_all), rows  # the codes released: about the packed weights


def test_weight_only_quick_pass():
    """Every path on one shape at 1 and 16 rows; the ratio column reads fp32 / path."""
    report = runpy.run_path(str(BENCHMARKS / "weight_only.py"))["main"](["--quick", "--repeats", "1"])
    rows = [line for line in report.splitlines() if line.startswith("768 -> 768")]
    assert len(rows) == 2 * 5 and all(line.rstrip().endswith("x") for line in rows)
    assert sum("fp32" in line and "1.00x" in line for line in rows) == 2
