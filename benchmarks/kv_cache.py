"""KIVI's quantized KV cache on the tiny LM: validation perplexity, bytes stored, decode step time.

    nice -n 10 python benchmarks/kv_cache.py                           # train 200 steps, then measure
    python benchmarks/kv_cache.py --weights runs/lm/model --model moc_lm_tiny   # a trained model

The model (``moc_lm_tiny`` by default) is trained briefly on the stdlib corpus (byte tokens, AdamW,
batch 8 x 256) unless ``--weights`` gives one. Validation sequences are then scored token by token
through each cache (:func:`zoo.generation.cached_logits`, each position reading its past from the
cache as decoding does), against the full-sequence forward. Bytes are what the caches store for one
full-context sequence, against the dense cache in fp32 (the model's dtype here) and in fp16 (a
half-precision model; the same cache fed fp16 keys and values, whose scales are then fp16 too).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import machine, print_table  # noqa: E402

import zoo  # noqa: E402
from zoo.generation import cached_logits  # noqa: E402
from zoo.models.kv_cache import DenseKVCache, QuantizedKVCache  # noqa: E402

CACHES = {  # name -> factory(num_layers)
    "dense": lambda n: DenseKVCache(n),
    "kivi8 G64 R64": lambda n: QuantizedKVCache(n, bits=8),
    "kivi4 G64 R64": lambda n: QuantizedKVCache(n, bits=4),
    "kivi4 G32 R32": lambda n: QuantizedKVCache(n, bits=4, key_group_size=32, residual_length=32),
    "kivi2 G32 R32": lambda n: QuantizedKVCache(n, bits=2, key_group_size=32, residual_length=32),
}


def train(model: torch.nn.Module, data, steps: int, lr: float) -> None:
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
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="moc_lm_tiny")
    parser.add_argument("--weights", default=None, help="trained weights; default: train --train-steps here")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-sequences", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="save the trained model to this folder")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = zoo.create(args.model, pretrained=args.weights or False)
    seq = model.max_seq_len
    from zoo.data import TextDataModule

    data = TextDataModule(seq_len=seq, batch_size=8, val_sequences=args.val_sequences)
    data.setup()
    if args.weights is None:
        train(model, data, args.train_steps, args.lr)
        if args.save:
            zoo.save_pretrained(model, args.save)
    model.eval()
    x, y = (torch.cat(t) for t in zip(*list(data.val_dataloader())))  # (N, T) each
    x, y = x[:args.val_sequences], y[:args.val_sequences]
    with torch.no_grad():
        ref = nll(model(x), y)
    cfg = model.config
    shape = (1, cfg.n_kv_heads, seq, cfg.head_dim)  # one full-context sequence
    rows, results = [], {}
    for name, make in CACHES.items():
        start = time.perf_counter()
        loss = nll(cached_logits(model, x, make(cfg.n_layers)), y)
        seconds = time.perf_counter() - start
        ms_per_token = 1e3 * seconds / seq
        sizes = {}
        for dtype in (torch.float32, torch.float16):
            cache = make(1)
            k = torch.randn(shape, dtype=dtype)
            for i in range(seq):  # token by token, as decoding fills it
                cache.update(0, k[:, :, i:i + 1], k[:, :, i:i + 1])
            sizes[dtype] = cache.nbytes()
        results[name] = (loss, sizes, ms_per_token)
    dense_sizes = results["dense"][1]
    for name, (loss, sizes, ms) in results.items():
        rows.append([name, f"{loss:.4f}", f"{math.exp(loss):.4f}", f"{100 * (math.exp(loss - ref) - 1):+.2f}%",
                     f"{sizes[torch.float32] / dense_sizes[torch.float32]:.3f}",
                     f"{sizes[torch.float16] / dense_sizes[torch.float16]:.3f}", f"{ms:.1f}"])
    print()
    print(f"{args.model}, {'weights ' + args.weights if args.weights else f'{args.train_steps} training steps'}; "
          f"{len(x)} validation sequences of {seq} byte tokens; full-forward val loss {ref:.4f} (ppl {math.exp(ref):.4f})")
    print_table(["cache", "val loss", "val ppl", "ppl vs full", "bytes / fp32 dense", "bytes / fp16 dense",
                 f"ms per step (B={len(x)})"], rows)
    for long_t in (1024, 4096):
        ratios = []
        for name in ("kivi4 G64 R64", "kivi2 G32 R32"):
            cache, dense = CACHES[name](1), DenseKVCache(1)
            k = torch.randn(1, cfg.n_kv_heads, long_t, cfg.head_dim, dtype=torch.float16)
            for c in (cache, dense):
                for i in range(0, long_t, 64):
                    c.update(0, k[:, :, i:i + 64], k[:, :, i:i + 64])
            ratios.append(f"{name} {cache.nbytes() / dense.nbytes():.3f}")
        print(f"bytes / fp16 dense at {long_t} tokens (head_dim {cfg.head_dim}): " + ", ".join(ratios))
    print(machine())


if __name__ == "__main__":
    main()
