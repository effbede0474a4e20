"""One EMA update's time: the old state-dict walk, zoo's ModelEma and timm's ModelEmaV3, same run.

    python benchmarks/ema.py [--models seresnet18,channelvit_tiny,moc_lm_tiny] [--repeats 15] [--steps 20]
                             [--threads 1] [--cpu] [--save]

Each path keeps its own copy of the same model and updates it ``--steps`` times per round; rounds
interleave the paths and the table gives each one's median time per update and its ratio to the old
update. ``old state_dict`` is the update zoo used before (two ``state_dict()`` walks and a ``lerp_``
per tensor each step), kept here only as the baseline. Before timing, the old and the new update run
from the same start and must leave bit-identical averages.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import zoo  # noqa: E402
from common import interleaved_medians_ms, machine, print_table, save_text  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402
from zoo.tasks import ModelEma  # noqa: E402

DECAY = 0.999


class StateDictEma(nn.Module):
    """The update ModelEma had before: both state dicts rebuilt and one lerp_ per tensor every step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.num_updates)
        decay = min(DECAY, (1 + n) / (10 + n))  # the same warmup as ModelEma's
        ema_state = self.module.state_dict()
        for key, value in model.state_dict().items():
            target = ema_state[key]
            if value.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)
        self.num_updates += 1


def check_same_average(model: nn.Module, steps: int) -> None:
    """The old and the new update leave bit-identical averages after ``steps`` updates with changing weights."""
    old, new = StateDictEma(model), ModelEma(model, DECAY)
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=1e-2)
        old.update(model)
        new.update(model)
    old_state, new_state = old.module.state_dict(), new.module.state_dict()
    differing = [k for k in old_state if not torch.equal(old_state[k], new_state[k])]
    if differing:
        raise AssertionError(f"ModelEma differs from the old update at {differing[:3]}")


def per_update(update: Callable[[], None], steps: int, device: torch.device) -> Callable[[], None]:
    def run() -> None:
        for _ in range(steps):
            update()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def measure(name: str, device: torch.device, repeats: int, steps: int) -> list[list[str]]:
    """The table's rows for one architecture: each path's median ms per update and its speed-up."""
    torch.manual_seed(0)
    model = zoo.create(name).to(device).train()
    check_same_average(copy.deepcopy(model), steps=3)
    old, new, timm_v3 = StateDictEma(model), ModelEma(model, DECAY), ModelEmaV3(model, decay=DECAY)
    ms = interleaved_medians_ms({
        "old state_dict": per_update(lambda: old.update(model), steps, device),
        "zoo ModelEma": per_update(lambda: new.update(model), steps, device),
        "timm ModelEmaV3": per_update(lambda: timm_v3.update(model), steps, device),
    }, repeats=repeats)
    tensors, params = len(model.state_dict()), sum(p.numel() for p in model.parameters()) / 1e6
    return [[name, f"{tensors}", f"{params:.1f}", path, f"{total / steps:.3f}", f"{ms['old state_dict'] / total:.2f}"]
            for path, total in ms.items()]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="seresnet18,channelvit_tiny,moc_lm_tiny",
                        help="comma-separated zoo architectures")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=20, help="updates per path per round")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads: on a shared machine a second thread waits on the scheduler inside every op")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is present")
    parser.add_argument("--save", action="store_true", help="also write the table to benchmarks/out/ema.txt")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = [row for name in args.models.split(",") for row in measure(name, device, args.repeats, args.steps)]
        where = machine() if device.type == "cpu" else torch.cuda.get_device_name()  # with the threads it ran on
    finally:
        torch.set_num_threads(threads)  # the caller's (a test's) count
    header = ["model", "tensors", "params (M)", "update", "ms / update", "speed-up vs old"]
    title = f"EMA update, {device.type} ({where}), median of {args.repeats} rounds of {args.steps} updates"
    print(title)
    text = title + "\n" + print_table(header, rows)
    if args.save:
        print(f"saved {save_text(text, 'ema.txt')}")
    return text


if __name__ == "__main__":
    main()
