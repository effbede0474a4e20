"""MoC LM against its dense twin on the stdlib corpus: validation loss at equal steps.

    nice -n 10 python benchmarks/moc_lm_quality.py                    # the recorded settings (~20 min, 1 thread)
    python benchmarks/moc_lm_quality.py --steps 20 --eval-every 10    # a smoke run

``moc_lm_tiny`` (MoC FFN, top-K = H/4) and ``dense_lm_tiny`` start from the same initial weights (the
two have the same parameters) and are trained in one process, step by step in turn, on the very same
batches: random windows of the Python standard library's sources (``zoo.data.TextDataModule``'s default
corpus, byte tokens, split by file), with the task's loss (``zoo.tasks.language_model.token_loss``), the
loop's AdamW, warmup + cosine schedule and gradient clipping. Both are evaluated at the same steps on a
fixed, evenly spread subset of the validation files' chunks (token-weighted mean loss). A wall-clock
budget stops both at the same evaluated step if the machine is slower than planned.

Writes ``curves.csv``, ``results.json`` and ``moc_lm_curves.png`` to benchmarks/out/moc_lm_quality/
(git-ignored) and, with ``--docs-png``, a small copy for the README.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import machine, print_table  # noqa: E402

import zoo  # noqa: E402
from zoo.data import TextDataModule  # noqa: E402
from zoo.hub import atomic_write  # noqa: E402
from zoo.tasks.language_model import token_loss  # noqa: E402
from zoo.tasks.optim import create_optimizer, create_scheduler, step_schedule  # noqa: E402

MODELS = ("dense_lm_tiny", "moc_lm_tiny")


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean loss over every validation token (each batch weighted by its token count)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        loss, n = token_loss(model(x), y)
        total, count = total + loss.item() * n.item(), count + n.item()
    model.train()
    return total / count


def plot(curves: dict[str, list[tuple[int, float]]], train: dict[str, list[tuple[int, float]]], title: str,
         path: Path, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=dpi)
    colors = {"dense_lm_tiny": "tab:blue", "moc_lm_tiny": "tab:orange"}
    for name, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", markersize=3, color=colors[name], label=f"{name} validation")
        t_steps, t_values = zip(*train[name])
        ax.plot(t_steps, t_values, alpha=0.35, linewidth=1, color=colors[name], label=f"{name} train (smoothed)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / byte)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    low = min(v for points in curves.values() for _, v in points)
    ax.set_ylim(low - 0.1, min(max(v for points in curves.values() for _, v in points[1:] or points) + 0.3, 6.0))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def smooth(values: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    out = []
    for i in range(len(values)):
        chunk = [v for _, v in values[max(0, i - window + 1):i + 1]]
        out.append((values[i][0], sum(chunk) / len(chunk)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=30)
    parser.add_argument("--val-sequences", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-min", type=float, default=None, help="stop both at the last evaluation within this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "moc_lm_quality")
    parser.add_argument("--docs-png", type=Path, default=None, help="also write a small copy here (the README's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    data = TextDataModule(seq_len=args.seq_len, batch_size=args.batch, val_sequences=args.val_sequences,
                          train_samples=args.steps * args.batch)
    data.prepare_data()
    data.setup("fit")
    val_batches = list(data.val_dataloader())
    counts = data.token_counts()
    print(f"corpus: stdlib, {len(data.files['train'])} train files ({counts['train']:,} tokens), "
          f"{len(data.files['val'])} validation files ({counts['val']:,} tokens); validation subset "
          f"{len(data.dataset('val'))} x {args.seq_len} tokens; {machine()}", flush=True)

    models, optimizers, schedulers = {}, {}, {}
    for name in MODELS:
        torch.manual_seed(args.seed)  # the same initial weights: the two share every parameter's shape
        models[name] = zoo.create(name, max_seq_len=args.seq_len).train()
        optimizers[name] = create_optimizer(models[name], {"lr": args.lr, "weight_decay": 0.1, "betas": (0.9, 0.95)})
        schedulers[name] = create_scheduler(optimizers[name], {"warmup_steps": args.warmup, "min_lr_ratio": 0.1},
                                            args.steps)
    same = all(torch.equal(a, b) for a, b in zip(*(m.state_dict().values() for m in models.values())))
    print(f"identical initial weights: {same}; moc top_k = {models['moc_lm_tiny'].config.top_k} of hidden "
          f"{models['moc_lm_tiny'].config.hidden_dim}", flush=True)

    torch.manual_seed(args.seed)  # the window offsets
    curves = {name: [(0, evaluate(m, val_batches))] for name, m in models.items()}
    train_losses: dict[str, list[tuple[int, float]]] = {name: [] for name in MODELS}
    step_seconds: dict[str, list[float]] = {name: [] for name in MODELS}
    step = 0
    for x, y in data.train_dataloader():
        step += 1
        for name, model in models.items():  # the same batch for both, in turn
            tic = time.perf_counter()
            loss, _ = token_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            step_schedule(schedulers[name], step)  # step optimizer steps done
            step_seconds[name].append(time.perf_counter() - tic)
            train_losses[name].append((step, loss.item()))
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"{name}: non-finite loss at step {step}")
        if step % args.eval_every == 0 or step == args.steps:
            for name, model in models.items():
                curves[name].append((step, evaluate(model, val_batches)))
            elapsed = (time.perf_counter() - start) / 60
            print(f"step {step:4d}  " + "  ".join(f"{n} val {curves[n][-1][1]:.4f}" for n in MODELS)
                  + f"  ({elapsed:.1f} min)", flush=True)
            if args.budget_min and step < args.steps:
                per_eval = elapsed / step * args.eval_every
                if elapsed + per_eval > args.budget_min:
                    print(f"stopping at step {step}: the next evaluation would pass the {args.budget_min} min budget")
                    break
        if step >= args.steps:
            break

    dense, moc = curves["dense_lm_tiny"][-1][1], curves["moc_lm_tiny"][-1][1]
    ratio = moc / dense
    rows = [[name, str(curves[name][-1][0]), f"{curves[name][-1][1]:.4f}", f"{math.exp(curves[name][-1][1]):.3f}",
             f"{1e3 * statistics.median(step_seconds[name]):.0f}"] for name in MODELS]
    print()
    table = print_table(["model", "steps", "val loss", "val ppl", "median step ms"], rows)
    verdict = "met" if ratio <= 1.03 else "not met"
    print(f"moc / dense val loss: {ratio:.4f}  (goal <= 1.03: {verdict})")
    settings = (f"batch {args.batch} x {args.seq_len} byte tokens, {step} steps, AdamW lr {args.lr} "
                f"(warmup {args.warmup}, cosine to 0.1x), clip 1.0, seed {args.seed}, val {len(val_batches)} batches")
    print(f"settings: {settings}; {(time.perf_counter() - start) / 60:.1f} min")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    lines = io.StringIO()
    writer = csv.writer(lines)
    writer.writerow(["step"] + [f"{n}_val_loss" for n in MODELS])
    for points in zip(*(curves[n] for n in MODELS)):
        writer.writerow([points[0][0]] + [f"{v:.5f}" for _, v in points])
    atomic_write(out / "curves.csv", lambda tmp: Path(tmp).write_text(lines.getvalue()))
    result = {"curves": curves, "ratio": ratio, "settings": settings, "table": table, "machine": machine(),
              "median_step_ms": {n: 1e3 * statistics.median(s) for n, s in step_seconds.items()}}
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    smoothed = {n: smooth(v, 20) for n, v in train_losses.items()}
    title = f"stdlib bytes, batch {args.batch}x{args.seq_len}, same init and batches; moc/dense = {ratio:.3f}"
    plot(curves, smoothed, title, out / "moc_lm_curves.png", dpi=100)
    written = [out / "curves.csv", out / "results.json", out / "moc_lm_curves.png"]
    if args.docs_png:
        plot(curves, smoothed, title, args.docs_png, dpi=72)
        written.append(args.docs_png)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
