"""What the language-model benchmarks share: a briefly trained (or loaded) LM on the stdlib corpus and its
validation sequences, plus the mean next-token loss. Used by benchmarks/kv_cache.py and moc_lm_quant.py."""
from __future__ import annotations

import argparse
import math
import time

import torch

import zoo


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags that pick the model: train it here (``--train-steps``) or load ``--weights``."""
    parser.add_argument("--model", default="moc_lm_tiny")
    parser.add_argument("--weights", default=None, help="trained weights; default: train --train-steps here")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-sequences", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="save the trained float model to this folder")


def train(model: torch.nn.Module, data, steps: int, lr: float) -> None:
    """AdamW (betas 0.9/0.95, weight decay 0.1), 20 warmup steps then cosine to 0.1x, clipping 1.0."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps))))
    loader = iter(data.train_dataloader())
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = next(loader)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % 25 == 0 or step == steps:
            print(f"step {step:4d}  train loss {loss.item():.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()


def nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean next-token cross-entropy of (N, T, V) logits against (N, T) targets."""
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()))


def model_and_data(args: argparse.Namespace):
    """(model in eval mode, the text data module, validation inputs (N, T), targets (N, T)) per the flags."""
    from zoo.data import TextDataModule

    torch.manual_seed(args.seed)
    model = zoo.create(args.model, pretrained=args.weights or False)
    data = TextDataModule(seq_len=model.max_seq_len, batch_size=8, val_sequences=args.val_sequences)
    data.setup()
    if args.weights is None:
        train(model, data, args.train_steps, args.lr)
        if args.save:
            zoo.save_pretrained(model, args.save)
    model.eval()
    x, y = (torch.cat(t) for t in zip(*list(data.val_dataloader())))  # (N, T) each
    return model, data, x[:args.val_sequences], y[:args.val_sequences]


def describe(args: argparse.Namespace, x: torch.Tensor) -> str:
    """One line: the model, how it was trained, the validation set."""
    how = f"weights {args.weights}" if args.weights else f"{args.train_steps} training steps"
    return f"{args.model}, {how}; {len(x)} validation sequences of {x.shape[1]} byte tokens"
