"""Steps per second of train.py's Lightning loop against a bare PyTorch loop, same run.

    python benchmarks/train_loop_overhead.py [--steps 60] [--rounds 3]

Both loops train the same model (seresnet18, 1 channel, 10 classes) on the same digits batches
(batch 64, 32x32) with AdamW and the cosine schedule; the Lightning loop is the one ``train.py``
builds (logging, EMA off, checkpointing off, no validation). Rounds alternate the two loops and the
medians are compared. Goal (issue 3): the loop within 5% of the bare one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import zoo  # noqa: E402
from common import machine, print_table  # noqa: E402
from zoo.data import DigitsDataModule  # noqa: E402
from zoo.tasks import ClassificationTask  # noqa: E402
from zoo.tasks.optim import create_optimizer, create_scheduler, step_schedule  # noqa: E402


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create("seresnet18", num_classes=10, in_chans=1)


def bare_loop(data: DigitsDataModule, steps: int) -> float:
    net = model().train()
    opt = create_optimizer(net)  # the task's defaults: AdamW, cosine
    sched = create_scheduler(opt, None, steps)
    loader = data.train_dataloader()
    done, start = 0, time.perf_counter()
    while done < steps:
        for images, labels in loader:
            loss = F.cross_entropy(net(images), labels)
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            step_schedule(sched, done)
            if done == steps:
                break
    return steps / (time.perf_counter() - start)


class _Timer(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def lightning_loop(data: DigitsDataModule, steps: int, out: Path) -> float:
    task = ClassificationTask(model())
    timer = _Timer()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=L.pytorch.loggers.CSVLogger(out),
                        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(task, train_dataloaders=data.train_dataloader())
    return steps / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/out/loop")
    args = parser.parse_args()
    data = DigitsDataModule(batch_size=64)
    data.setup()
    bare, lit = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(data, args.steps))
        lit.append(lightning_loop(data, args.steps, Path(args.out)))
    b, l_ = statistics.median(bare), statistics.median(lit)
    print(f"{args.steps} steps per loop, median of {args.rounds} alternating rounds; {machine()}")
    print_table(["loop", "steps/s (median)", "all rounds"],
                [["bare PyTorch", f"{b:.2f}", ", ".join(f"{x:.2f}" for x in bare)],
                 ["train.py (Lightning)", f"{l_:.2f}", ", ".join(f"{x:.2f}" for x in lit)]])
    print(f"Lightning / bare = {l_ / b:.3f} (goal >= 0.95): {'met' if l_ / b >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
