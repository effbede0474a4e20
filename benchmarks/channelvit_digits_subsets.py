"""ChannelViT on multi-channel digits: test top-1 by number of test channels, with and without HCS, beside ViT.

    python benchmarks/channelvit_digits_subsets.py                   # trains the three configs below, then evaluates
    python benchmarks/channelvit_digits_subsets.py --max_epochs 10   # shorter runs (the same for all three)
    python benchmarks/channelvit_digits_subsets.py --runs runs/full  # reuse runs/full/<config>/export
    python benchmarks/channelvit_digits_subsets.py --runs runs/full --quant   # + the quantized HCS model

Three models trained the same way through train.py (same data, widths, optimiser, schedule, epochs, seed):
``configs/channelvit_digits.yaml`` (ChannelViT with Hierarchical Channel Sampling),
``configs/channelvit_digits_nohcs.yaml`` (the same, without HCS) and ``configs/vit_digits.yaml`` (the
plain ViT: one token per patch over all channels). Each is evaluated on the test split given only the
channels of a subset (``channel_ids`` name them); table A averages the top-1 over every subset of each
size, table B lists single subsets. The ViT is trained on all channels; its subset column fills the
missing channels with zeros and rescales the rest (the release's evaluation of ViT on subsets).
Beside them, a nearest-centroid classifier on the same channels: how much signal they carry without
any learning. ``--quant`` adds w8a8 and w4a8 rows (``zoo.quantize``) for the HCS model. The plot
(top-1 against the number of channels) goes to ``benchmarks/out/channelvit_digits_subsets.png``.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import machine, print_table

import zoo
from zoo.data import MultiChannelDigitsDataModule

CONFIGS = {"hcs": "channelvit_digits", "nohcs": "channelvit_digits_nohcs", "vit": "vit_digits"}
LABELS = {"hcs": "ChannelViT + HCS", "nohcs": "ChannelViT, no HCS", "vit": "ViT (zero-filled)"}
QUANT = (("w8a8", "rtn"), ("w4a8", "rtn"), ("w4a8", "repq"), ("w4a8", "awq"), ("w4a8", "smoothquant"))


def detail_subsets(total: int) -> list[tuple[int, ...]]:
    """All channels, each alone, two pairs, and each leave-one-out."""
    everything = tuple(range(total))
    leave_one_out = [tuple(c for c in everything if c != drop) for drop in everything]
    return [everything, *[(c,) for c in everything], (0, 1), (2, 3), *leave_one_out]


@torch.no_grad()
def top1(model: torch.nn.Module, dm: MultiChannelDigitsDataModule, chans: tuple[int, ...]) -> float:
    """What ``MultiChannelDigitsDataModule(channels=chans)`` would feed (same statistics), without rebuilding it."""
    test = dm.splits["test"].load
    x, y = test.images[:, list(chans)], torch.tensor(test.labels)  # (N, k, S, S), (N,)
    ids = torch.tensor(chans)  # (k,): the same channels for every image
    logits = torch.cat([model(part, channel_ids=ids) for part in x.split(128)])  # (N, 10)
    return (logits.argmax(-1) == y).float().mean().item()


def nearest_centroid(dm: MultiChannelDigitsDataModule, chans: tuple[int, ...]) -> float:
    train, test = dm.splits["train"].load, dm.splits["test"].load
    a, b = train.images[:, list(chans)].flatten(1), test.images[:, list(chans)].flatten(1)  # (N, k*S*S)
    ya, yb = torch.tensor(train.labels), torch.tensor(test.labels)
    centroids = torch.stack([a[ya == c].mean(0) for c in range(10)])  # (10, k*S*S)
    return (torch.cdist(b, centroids).argmin(1) == yb).float().mean().item()


def by_size(score, total: int) -> dict[int, float]:
    """k -> the mean of ``score(chans)`` over every k-subset of the channels."""
    out = {}
    for k in range(1, total + 1):
        scores = [score(chans) for chans in itertools.combinations(range(total), k)]
        out[k] = sum(scores) / len(scores)
    return out


def train_model(config: str, args: argparse.Namespace) -> torch.nn.Module:
    """Train ``configs/<config>.yaml`` through train.py; the final weights (what the export holds)."""
    from zoo.training import run

    argv = ["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--output_dir", str(Path(args.output_dir) / config),
            "--trainer.enable_progress_bar", "false"]
    if args.max_epochs:
        argv += ["--trainer.max_epochs", str(args.max_epochs)]
    return run(argv).model.model


def load_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    models = {}
    for key, config in CONFIGS.items():
        if args.runs:
            name = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())["model"]["name"]
            models[key] = zoo.create(name, pretrained=str(Path(args.runs) / config / "export"))  # carries its kwargs
        else:
            models[key] = train_model(config, args)
        models[key].eval()
    return models


def quant_rows(model: torch.nn.Module, dm: MultiChannelDigitsDataModule) -> list[list[str]]:
    """fp32 and each (spec, method): top-1 with all channels and the mean over single channels."""
    total = dm.total_chans
    calib = [dm.splits["train"].load.images[i:i + 64] for i in range(0, 256, 64)]  # 4 batches, all channels

    def scores(m: torch.nn.Module) -> tuple[float, float]:
        return top1(m, dm, tuple(range(total))), sum(top1(m, dm, (c,)) for c in range(total)) / total

    ref = scores(model)
    rows = [["fp32", "-", f"{100 * ref[0]:.2f}", "-", f"{100 * ref[1]:.2f}", "-", "-"]]
    for spec, method in QUANT:
        start = time.perf_counter()
        quantized = zoo.quantize(copy.deepcopy(model), spec, calib=calib, method=method)
        took = time.perf_counter() - start
        got = scores(quantized)
        rows.append([spec, method, f"{100 * got[0]:.2f}", f"{100 * (got[0] - ref[0]):+.2f}", f"{100 * got[1]:.2f}",
                     f"{100 * (got[1] - ref[1]):+.2f}", f"{took:.1f}"])
    return rows


def plot(table: dict[str, dict[int, float]], path: Path, dpi: int = 100) -> Path:
    """Top-1 against the number of test channels, one line per model; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for (label, style), scores in zip((("ChannelViT + HCS", "o-"), ("ChannelViT, no HCS", "s-"),
                                       ("ViT, missing channels zero-filled", "^--"), ("nearest centroid", "x:")),
                                      table.values()):
        ax.plot(list(scores), list(scores.values()), style, label=label)
    ax.axhline(0.1, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="test channels (mean over all subsets of that size)", ylabel="test top-1", ylim=(0, 1),
           xticks=list(next(iter(table.values()))), title="multi-channel digits, 5 training channels")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", help="a folder of finished runs (<runs>/<config>/export); skips training")
    parser.add_argument("--output_dir", default="runs/channelvit_digits_subsets", help="where new runs go")
    parser.add_argument("--max_epochs", type=int, help="override the configs' epochs (the same for all three)")
    parser.add_argument("--quant", action="store_true", help="add w8a8 / w4a8 rows for the HCS model")
    parser.add_argument("--plot", default=str(ROOT / "benchmarks" / "out" / "channelvit_digits_subsets.png"))
    parser.add_argument("--plot_dpi", type=int, default=100)
    args = parser.parse_args()
    for key, config in CONFIGS.items():  # a bad folder fails before any training
        if args.runs and not (Path(args.runs) / config / "export").is_dir():
            raise SystemExit(f"{Path(args.runs) / config / 'export'} does not exist; train it (python train.py "
                             f"--config configs/{config}.yaml --output_dir {Path(args.runs) / config}) or drop --runs")
    data_args = yaml.safe_load((ROOT / "configs" / "channelvit_digits.yaml").read_text())["data"]["args"]
    data_args = {k: v for k, v in data_args.items() if k != "max_shift"}  # the test split has no augmentation
    start = time.perf_counter()
    models = load_models(args)
    trained = time.perf_counter() - start
    dm = MultiChannelDigitsDataModule(**data_args)
    dm.setup()
    total, everything = dm.total_chans, tuple(range(dm.total_chans))

    table = {key: by_size(lambda chans, m=model: top1(m, dm, chans), total) for key, model in models.items()}
    table["centroid"] = by_size(lambda chans: nearest_centroid(dm, chans), total)
    print(f"\n{machine()}; {trained:.0f} s to train/load the three models; test split {len(dm.splits['test'])} "
          f"images (one image = {100 / len(dm.splits['test']):.2f} points; chance 0.100)\n")
    print("A. test top-1 by number of test channels (mean over every subset of that size)")
    rows = [[str(k), str(len(list(itertools.combinations(everything, k))))]
            + [f"{table[key][k]:.3f}" for key in ("hcs", "nohcs")]
            + [f"{table['vit'][k]:.3f}" if k == total else "-", f"{table['vit'][k]:.3f}", f"{table['centroid'][k]:.3f}"]
            for k in range(1, total + 1)]
    print_table(["channels", "subsets", LABELS["hcs"], LABELS["nohcs"], "ViT (all channels)", LABELS["vit"],
                 "nearest centroid"], rows)

    print("\nB. single subsets")
    rows = []
    for chans in detail_subsets(total):
        names = "+".join(dm.views[c] for c in chans) if len(chans) < total else "all"
        rows.append([f"{list(chans)}", names, *(f"{top1(models[key], dm, chans):.3f}" for key in ("hcs", "nohcs", "vit")),
                     f"{nearest_centroid(dm, chans):.3f}"])
    print_table(["channels", "views", LABELS["hcs"], LABELS["nohcs"], LABELS["vit"], "nearest centroid"], rows)

    if args.quant:
        print("\nC. the HCS model quantized (zoo.quantize; calibration: 4 batches of 64 training images, all channels)")
        print_table(["spec", "method", "top-1 % all", "delta points", "top-1 % one channel (mean)", "delta points",
                     "quantize s"], quant_rows(models["hcs"], dm))
    if args.plot:
        print(f"\nplot: {plot(table, Path(args.plot), args.plot_dpi)}")


if __name__ == "__main__":
    main()
