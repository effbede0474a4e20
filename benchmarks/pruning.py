"""Structured channel pruning: zoo.prune's criteria beside Torch-Pruning's, at equal FLOPs and equal fine-tuning.

For each model (digits SE-ResNet-18, the quickstart RCAN), each FLOPs level and each method, the trained
model is pruned, saved, fine-tuned for the same number of steps through the training loop
(``zoo.training.run``, what ``train.py`` runs) and tested through it; the unpruned model gets the same
fine-tuning. Columns: the test metric (digits top-1, RCAN PSNR), parameters and MACs (one counter for
every row: zoo.pruning.count_macs), the CPU latency ratio against the unpruned model (eager, one thread,
interleaved repeats, medians), and a pruned-then-``w8a8`` row. A PNG plots the metric against MACs.

    python benchmarks/pruning.py                      # both models, 30% and 50%, every method
    python benchmarks/pruning.py --quick              # a smoke pass: tiny step counts, two methods
    python benchmarks/pruning.py --models digits_seresnet18 --base-steps 0 --steps 1 --limit 64   # seconds
Torch-Pruning comes with the bench extra (pip install -e ".[bench]"); without it its rows are left out, with a note.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, interleaved_medians_ms, machine, print_table  # noqa: E402

import zoo  # noqa: E402
from zoo import blocks  # noqa: E402
from zoo.extras import MissingExtraError, require  # noqa: E402
from zoo.pruning import count_macs, count_params, record_widths  # noqa: E402
from zoo.tasks.soft_pruning import calibration_batches  # noqa: E402
from zoo.training import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the zoo's rows: a criterion and zoo.prune's options (gate-sens: per-group rates weighed by sensitivity;
# gate-lat: the level is a fraction of the layers' measured time instead of the MACs, and each group keeps a
# multiple of 16 channels, the fp32 block of an AVX-512 CPU's conv kernels: a width between runs as slowly as
# the next multiple, benchmarks/conv_widths.py)
OURS = {"gate": ("gate", {}), "gate-sens": ("gate", {"rates": "sensitivity"}), "l1": ("l1", {}), "bn": ("bn", {}),
        "taylor": ("taylor", {}), "gate-lat": ("gate", {"rates": "sensitivity", "round_to": 16, "kind": "latency"}),
        "gate-soft": ("gate", {"rates": "sensitivity", "mode": "soft"}),
        "gate-rec": ("gate", {"rates": "sensitivity", "reconstruct": True}),
        "gate-lat-rec": ("gate", {"rates": "sensitivity", "round_to": 16, "kind": "latency", "reconstruct": True}),
        "gate-greedy": ("gate", {"rates": "greedy"}),
        "greedy-rec": ("gate", {"rates": "greedy", "reconstruct": True}),
        "greedy-lat": ("gate", {"rates": "greedy", "round_to": 8, "kind": "latency"}),
        "greedy-lat-rec": ("gate", {"rates": "greedy", "round_to": 8, "kind": "latency", "reconstruct": True})}
# gate-rec: gate-sens, then every layer reading cut channels refitted by least squares on the calibration batches
# gate-lat-rec: gate-lat's measured-time plan, then gate-rec's refit
# greedy-lat: the widths searched step by step on the calibration loss per saved ms (rates='greedy'), in steps
# of 8 channels (a 32-wide group: 24 runs as slowly as 32, so the search goes 32 -> 16 -> 8); greedy-lat-rec:
# the same with gate-rec's refit
# gate-soft: gate-sens chosen in the loop (the training config's prune: section), the channels fading to zero
# over the first half of the same fine-tuning steps (soft masking), cut when training ends
OPT_IN = ("gate-soft", "gate-lat-rec", "greedy-lat", "greedy-rec")  # rows run only when --methods names them
PEERS = ("tp-magnitude", "tp-taylor")
MODELS = {  # config, the test metric, one input for costing and latency
    "digits_seresnet18": ("digits_seresnet.yaml", "test/top1", (16, 1, 32, 32)),
    "quickstart_rcan": ("quickstart.yaml", "test/psnr", (1, 3, 96, 96)),
}


W8A8_ROWS = ("gate", "greedy-lat-rec")  # the methods whose pruned models also get a w8a8 row
# the goals of issue 23, per model: (the metric's column, how far under the unpruned score counts as "within")
GOALS = {"digits_seresnet18": ("top1", 0.005), "quickstart_rcan": ("psnr", 0.15)}

DATA_LIMIT: dict[str, int] = {}  # data.args.limit of every run (--limit, a smoke pass on a few digits)


def _config(name: str, folder: Path, steps: int, pretrained: str | bool, lr_scale: float = 1.0,
            prune: dict | None = None) -> Path:
    """The model's config for ``steps`` steps from ``pretrained``, without validation (every row the same);
    ``prune``: the config's prune: section."""
    cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
    cfg["data"].setdefault("args", {}).update(DATA_LIMIT)
    cfg["output_dir"] = str(folder)
    cfg["model"]["pretrained"] = pretrained
    cfg["trainer"].update(max_steps=steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                          enable_progress_bar=False, logger=False, enable_model_summary=False)
    cfg["scheduler"]["warmup_steps"] = 0
    cfg["optimizer"]["lr"] = cfg["optimizer"]["lr"] * lr_scale
    cfg.setdefault("task", {}).setdefault("args", {}).pop("ema_decay", None)  # a short run: the weights themselves
    if prune:
        cfg["prune"] = prune
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f"{folder.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fit(name: str, folder: Path, steps: int, pretrained: str | bool, lr_scale: float = 1.0,
         prune: dict | None = None) -> Path:
    run(["fit", "--config", str(_config(name, folder, steps, pretrained, lr_scale, prune))])
    return folder / "export"


def _test(name: str, folder: Path, pretrained: Path, metric: str) -> float:
    cli = run(["test", "--config", str(_config(name, folder, 1, str(pretrained)))])
    return float(cli.results[metric])


def _fix_after_torch_pruning(model: torch.nn.Module) -> None:
    """Torch-Pruning cuts weights but not the attributes the zoo's blocks check inputs against."""
    for module in model.modules():
        if isinstance(module, blocks.SqueezeExcite):
            module.channels = module.fc1.in_channels
        elif isinstance(module, blocks.ChannelAttention):
            module.channels = module.conv_du[0].in_channels
    if hasattr(model, "fc"):
        model.num_features = model.fc.in_features
    elif hasattr(model, "head"):
        model.num_features = model.head[0].out_channels


def _available_methods(methods: list[str]) -> list[str]:
    """``methods`` less Torch-Pruning's when it is not installed (a printed note says so)."""
    unknown = [m for m in methods if m not in (*OURS, *PEERS)]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join((*OURS, *PEERS))}")
    if not any(m in PEERS for m in methods):
        return methods
    try:
        require("torch_pruning", "bench", "Torch-Pruning, the peer of benchmarks/pruning.py")
    except MissingExtraError as error:
        print(f"note: the {', '.join(m for m in methods if m in PEERS)} rows are left out: {error}", flush=True)
        return [m for m in methods if m not in PEERS]
    return methods


def _torch_pruning(model, example, method: str, amount: float, calib: list, loss_fn):
    """Torch-Pruning's global pruner at the channel ratio that removes ``amount`` of the MACs (bisection)."""
    tp = require("torch_pruning", "bench", "Torch-Pruning, the peer of benchmarks/pruning.py")
    full = count_macs(model, example)

    def pruned(ratio: float):
        candidate = copy.deepcopy(model)
        if method == "tp-taylor":
            importance = tp.importance.TaylorImportance()
            candidate.zero_grad()
            for batch in calib:
                out = candidate(batch[0] if isinstance(batch, (list, tuple)) else batch)
                (loss_fn(out, batch[1]) if loss_fn else out.pow(2).mean()).backward()
        else:
            importance = tp.importance.MagnitudeImportance(p=1)
        ignored = [candidate.fc] if hasattr(candidate, "fc") else [candidate.tail]
        pruner = tp.pruner.MetaPruner(candidate, example, importance=importance, pruning_ratio=ratio,
                                      ignored_layers=ignored, global_pruning=True)
        pruner.step()
        _fix_after_torch_pruning(candidate)
        candidate.zero_grad(set_to_none=True)
        return candidate

    low, high, best = 0.0, 0.9, None
    for _ in range(7):
        mid = (low + high) / 2
        candidate = pruned(mid)
        if 1 - count_macs(candidate, example) / full >= amount:
            high, best = mid, candidate
        else:
            low = mid
    best = best or pruned(high)
    best.prune_record = record_widths(best)
    return best


def _latency(folders: dict[str, Path], example: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward time of each saved model, eager, one thread, interleaved."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {key: _load(folder) for key, folder in folders.items()}
        with torch.inference_mode():
            return interleaved_medians_ms({k: (lambda m=m: m(example)) for k, m in models.items()}, repeats)
    finally:
        torch.set_num_threads(threads)


def _load(folder: Path) -> torch.nn.Module:
    arch = json.loads((folder / "config.json").read_text())["architecture"]
    return zoo.create(arch, pretrained=str(folder)).eval()


def bench_model(key: str, levels: list[float], methods: list[str], base_steps: int, steps: int, repeats: int,
                work: Path, calib_count: int, round_to: int = 1) -> list[dict]:
    config, metric, shape = MODELS[key]
    torch.manual_seed(0)
    example = torch.rand(shape)
    if key == "digits_seresnet18" and base_steps == 0:  # a smoke pass: the untrained model
        base = work / "base_export"
        zoo.save_pretrained(_load_config_model(config), base)
    elif key == "digits_seresnet18":  # no shipped weights: trained here first
        base = _fit(config, work / "base", base_steps, False)
    else:
        base = work / "base_export"
        zoo.save_pretrained(zoo.create("rcan_tiny_x2", pretrained=True), base)
    datamodule = _datamodule(config)
    calib = calibration_batches(datamodule, calib_count)
    classify = metric == "test/top1"
    loss_fn = torch.nn.functional.cross_entropy if classify else None
    rows, folders = [], {}
    start = time.perf_counter()
    full = _load(base)
    full_macs, full_params = count_macs(full, example), count_params(full)
    folders["unpruned"] = _fit(config, work / "unpruned", steps, str(base))
    for level in levels:
        for method in methods:
            importance, options = OURS.get(method, (None, {}))
            if options.get("mode") == "soft":  # chosen and faded inside the fine-tuning itself
                section = {"target": f"flops={level}", "importance": importance, "mode": "soft", "rates": options["rates"],
                           "calib_batches": calib_count, "end_step": max(steps // 2, 1), "round_to": round_to}
                folders[f"{method}@{level}"] = _fit(config, work / f"{method}-{level}", steps, str(base), prune=section)
                continue
            model = _load(base)
            if method in PEERS:
                model = _torch_pruning(model, example, method, level, calib, loss_fn)
            else:
                options = {"round_to": round_to, **options}
                kind = options.pop("kind", "flops")
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # a latency target times the layers as the latency column runs them
                try:
                    zoo.prune(model, f"{kind}={level}", importance=importance, calib=calib, loss_fn=loss_fn,
                              example_input=example, **options)
                finally:
                    torch.set_num_threads(threads)
            zoo.save_pretrained(model, work / f"{method}-{level}-pruned")
            folders[f"{method}@{level}"] = _fit(config, work / f"{method}-{level}", steps, str(work / f"{method}-{level}-pruned"))
    quantize = {"unpruned"} | {f"{m}@{level}" for level in levels for m in methods if m in W8A8_ROWS}
    quant_folders = {}
    for name in quantize:
        model = zoo.quantize(_load(folders[name]), "w8a8")
        quant_folders[f"{name}+w8a8"] = zoo.save_pretrained(model, work / f"{name}-w8a8".replace("@", "-"))
    latencies = _latency({**folders, **quant_folders}, example, repeats)
    for name, folder in {**folders, **quant_folders}.items():
        model = _load(folders[name.split("+")[0]])  # a w8a8 row: the float model it was quantized from
        macs = count_macs(model, example)
        score = _test(config, work / f"test-{name}".replace("@", "-").replace("+", "-"), folder, metric)
        rows.append({"model": key, "method": name, metric.split("/")[1]: score, "params": count_params(model),  # w8a8: float count
                     "macs": macs, "macs_removed": 1 - macs / full_macs, "params_removed": 1 - count_params(model) / full_params,
                     "latency_ms": latencies[name], "latency_ratio": latencies[name] / latencies["unpruned"]})
    print(f"{key}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def goal_lines(rows: list[dict]) -> list[str]:
    """Issue 23's goals read off the rows of one run: accuracy at half the MACs removed, ``gate`` against
    Torch-Pruning, latency at most 0.6x with half or more of the MACs removed at that accuracy, and a pruned
    ``w8a8`` model faster than both the pruned float model and the unpruned ``w8a8`` one."""
    lines = []
    for model, (metric, slack) in GOALS.items():
        mine = {r["method"]: r for r in rows if r["model"] == model}
        if "unpruned" not in mine:
            continue
        floor = mine["unpruned"][metric] - slack
        half = {m: r for m, r in mine.items() if "+" not in m and r["macs_removed"] >= 0.495}
        kept = {m: r for m, r in half.items() if r[metric] >= floor}
        best = max(half, key=lambda m: half[m][metric], default=None)
        lines.append(f"- {model}: accuracy with half the MACs removed, within {slack:g} of {mine['unpruned'][metric]:.4f}: "
                     + (f"{'met' if kept else 'NOT met'} (best {best}: {half[best][metric]:.4f})" if best else "no row"))
        ours = [r[metric] for m, r in half.items() if m.startswith(("gate", "greedy")) and r["macs_removed"] < 0.55]
        peers = [r[metric] for m, r in half.items() if m.startswith("tp-") and r["macs_removed"] < 0.55]
        if ours and peers:
            lines.append(f"- {model}: gate criteria at 50-55% of the MACs against Torch-Pruning's best: "
                         f"{max(ours):.4f} vs {max(peers):.4f}, {'met' if max(ours) >= max(peers) else 'NOT met'}")
        fastest = min(kept, key=lambda m: kept[m]["latency_ratio"], default=None)
        if fastest:
            r = kept[fastest]
            lines.append(f"- {model}: latency at most 0.6x at that accuracy with half or more of the MACs removed: "
                         f"{'met' if r['latency_ratio'] <= 0.6 else 'NOT met'} (fastest {fastest}: "
                         f"{r['latency_ratio']:.2f}x, {r['macs_removed']:.1%} of the MACs removed)")
        for name, r in mine.items():
            base = name.split("+")[0]
            if name.endswith("+w8a8") and base != "unpruned" and "unpruned+w8a8" in mine:
                faster = r["latency_ms"] < min(mine[base]["latency_ms"], mine["unpruned+w8a8"]["latency_ms"])
                lines.append(f"- {model}: {name} faster than {base} and unpruned+w8a8: {'met' if faster else 'NOT met'} "
                             f"({r['latency_ratio']:.2f}x vs {mine[base]['latency_ratio']:.2f}x and "
                             f"{mine['unpruned+w8a8']['latency_ratio']:.2f}x)")
    return lines


def _load_config_model(config: str) -> torch.nn.Module:
    model = yaml.safe_load((ROOT / "configs" / config).read_text())["model"]
    return zoo.create(model["name"], **model.get("kwargs", {}))


def _datamodule(config: str):
    from zoo.data import DATAMODULES

    cfg = yaml.safe_load((ROOT / "configs" / config).read_text())["data"]
    return DATAMODULES[cfg["name"]](**{**cfg.get("args", {}), **DATA_LIMIT})


def _plot(rows: list[dict], path: Path) -> Path | None:
    """The metric against MACs (top row) and against the latency ratio (bottom row), one line per method;
    Torch-Pruning's rows dashed, the w8a8 rows left out."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    palette = plt.get_cmap("tab20")
    for column, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model and "+w8a8" not in r["method"]]
        metric = "top1" if "top1" in mine[0] else "psnr"
        methods = sorted({r["method"].split("@")[0] for r in mine} - {"unpruned"})
        for ax, x_key, x_label in ((axes[0][column], "macs", "MACs per sample (M)"),
                                   (axes[1][column], "latency_ratio", "CPU latency, x unpruned (1 thread)")):
            scale = 1e6 if x_key == "macs" else 1.0
            for i, method in enumerate(methods):
                points = sorted((r[x_key] / scale, r[metric]) for r in mine
                                if r["method"].split("@")[0] in (method, "unpruned"))
                ax.plot(*zip(*points), marker="o", color=palette(i % 20), label=method,
                        linestyle="--" if method.startswith("tp-") else "-")
            unpruned = next(r for r in mine if r["method"] == "unpruned")
            ax.axhline(unpruned[metric], color="grey", linewidth=0.8)
            if x_key == "latency_ratio":
                ax.axvline(0.6, color="grey", linewidth=0.8, linestyle=":")  # issue 23's latency goal
            ax.set_xlabel(x_label)
            ax.set_ylabel(metric)
            ax.set_title(model)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--levels", default="0.3,0.5", help="FLOPs fractions removed")
    parser.add_argument("--methods", default=",".join(m for m in (*OURS, *PEERS) if m not in OPT_IN),
                        help="zoo criteria (gate-sens: gate with rates='sensitivity'; gate-lat: gate-sens with the level "
                             "a fraction of the measured layer time, round_to=16; gate-rec: gate-sens with "
                             "reconstruct=True; gate-greedy: gate with rates='greedy'; greedy-lat-rec: the greedy "
                             "search on measured time in steps of 8 channels, with reconstruct=True) and "
                             "tp-magnitude, tp-taylor; named only: gate-soft (gate-sens faded out during the "
                             "fine-tuning by the training config's prune: section), gate-lat-rec, greedy-lat, "
                             "greedy-rec (gate-greedy with reconstruct=True)")
    parser.add_argument("--round-to", type=int, default=1, help="zoo rows keep a multiple of this many channels per group")
    parser.add_argument("--base-steps", type=int, default=300,
                        help="training steps of the digits model before pruning (0: prune the untrained model)")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps, the same for every row")
    parser.add_argument("--calib", type=int, default=4, help="calibration batches for gate / taylor")
    parser.add_argument("--repeats", type=int, default=20, help="latency repeats (medians)")
    parser.add_argument("--quick", action="store_true", help="a smoke pass: 4 + 2 steps, two methods, one level")
    parser.add_argument("--limit", type=int, default=None,
                        help="keep only this many digits images (a smoke pass; the RCAN data has no such limit)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for pruning.json and pruning.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.base_steps, args.steps, args.repeats, args.calib = 4, 2, 2, 1
        args.levels, args.methods = "0.5", "gate,l1"
    methods = _available_methods(args.methods.split(","))
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    levels = [float(v) for v in args.levels.split(",")]
    if args.limit is not None:
        if args.models != "digits_seresnet18":
            raise SystemExit("--limit applies to the digits data only: add --models digits_seresnet18")
        DATA_LIMIT["limit"] = args.limit
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            rows += bench_model(key, levels, methods, args.base_steps, args.steps, args.repeats, Path(tmp) / key,
                                args.calib, args.round_to)
    header = ["model", "method", "metric", "params (M)", "MACs (M)", "MACs removed", "latency (ms)", "latency ratio"]
    table = [[r["model"], r["method"], f"{r.get('top1', r.get('psnr')):.4f}", f"{r['params'] / 1e6:.3f}",
              f"{r['macs'] / 1e6:.1f}", f"{r['macs_removed']:.1%}", f"{r['latency_ms']:.2f}", f"{r['latency_ratio']:.2f}"]
             for r in rows]
    report = print_table(header, table)
    note = (f"{machine()}; fine-tuning {args.steps} steps per row (base digits model: {args.base_steps} steps), "
            f"zoo rows round_to={args.round_to}, "
            f"latency: eager, 1 thread, median of {args.repeats}")
    print(note)
    goals = goal_lines(rows)
    print("\n".join(["goals (issue 23):", *goals]) if goals else "", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pruning.json").write_text(json.dumps({"note": note, "args": {**vars(args), "out": str(args.out)},
                                                        "rows": rows}, indent=2))
    plot = _plot(rows, args.out / "pruning.png")
    if plot:
        print(f"plot: {plot}")
    return "\n".join([report, note, *goals])


if __name__ == "__main__":
    main()
