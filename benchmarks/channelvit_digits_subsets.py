"""ChannelViT on multi-channel digits: test top-1 with every channel, each channel alone, and subsets.

    python benchmarks/channelvit_digits_subsets.py                  # trains configs/channelvit_digits.yaml, then evaluates
    python benchmarks/channelvit_digits_subsets.py --export runs/channelvit_digits/export   # a trained model
    python benchmarks/channelvit_digits_subsets.py --max_epochs 5   # a shorter run

One model, trained on all 5 views with Hierarchical Channel Sampling, evaluated on the test split given
only the channels of each row (``channel_ids`` name them). Beside it, a nearest-centroid classifier on
the same channels: how much signal those channels carry without any learning.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import print_table

import zoo
from zoo.data import MultiChannelDigitsDataModule

CONFIG = ROOT / "configs" / "channelvit_digits.yaml"


def subsets(total: int) -> list[tuple[int, ...]]:
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


def train_model(args: argparse.Namespace) -> torch.nn.Module:
    import train

    argv = ["--config", str(CONFIG), "--output_dir", args.output_dir, "--run", "[fit]",
            "--trainer.enable_progress_bar", "false"]
    if args.max_epochs:
        argv += ["--trainer.max_epochs", str(args.max_epochs)]
    return train.run(train.parse_config(argv))["task"].model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", help="a trained model's export folder (skips training)")
    parser.add_argument("--output_dir", default="runs/channelvit_digits_subsets")
    parser.add_argument("--max_epochs", type=int, help="override the config's epochs")
    args = parser.parse_args()
    cfg = yaml.safe_load(CONFIG.read_text())
    data_args = {k: v for k, v in cfg["data"]["args"].items() if k != "max_shift"}
    start = time.perf_counter()
    if args.export:
        model = zoo.create(cfg["model"]["name"], pretrained=args.export)  # the export carries its config
    else:
        model = train_model(args)
    model.eval()
    trained = time.perf_counter() - start
    dm = MultiChannelDigitsDataModule(**data_args)
    dm.setup()
    rows = []
    for chans in subsets(dm.total_chans):
        names = "+".join(dm.views[c] for c in chans) if len(chans) < dm.total_chans else "all"
        rows.append([f"{list(chans)}", names, f"{top1(model, dm, chans):.3f}", f"{nearest_centroid(dm, chans):.3f}"])
    print(f"\nChannelViT ({cfg['model']['name']}, {cfg['model']['kwargs']}) on multichannel_digits "
          f"(test split, {len(dm.splits['test'])} images; chance 0.100); {trained:.0f} s to train/load\n")
    print_table(["channels", "views", "ChannelViT top-1", "nearest centroid"], rows)


if __name__ == "__main__":
    main()
