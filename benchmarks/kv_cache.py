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
from tiny_lm import add_model_args, describe, model_and_data, nll  # noqa: E402

from zoo.generation import cached_logits  # noqa: E402
from zoo.models.kv_cache import DenseKVCache, QuantizedKVCache  # noqa: E402

CACHES = {  # name -> factory(num_layers)
    "dense": lambda n: DenseKVCache(n),
    "kivi8 G64 R64": lambda n: QuantizedKVCache(n, bits=8),
    "kivi4 G64 R64": lambda n: QuantizedKVCache(n, bits=4),
    "kivi4 G32 R32": lambda n: QuantizedKVCache(n, bits=4, key_group_size=32, residual_length=32),
    "kivi2 G32 R32": lambda n: QuantizedKVCache(n, bits=2, key_group_size=32, residual_length=32),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    args = parser.parse_args()
    model, _, x, y = model_and_data(args)
    seq = model.max_seq_len
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
    print(f"{describe(args, x)}; full-forward val loss {ref:.4f} (ppl {math.exp(ref):.4f})")
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
