"""Autoregressive decoding for the zoo's token models: temperature, top-k, top-p, KV caches.

A model here is any module with ``model(input_ids, cache=None) -> (B, T, vocab) logits``, a
``max_seq_len`` and ``make_cache(kind)`` (:class:`zoo.models.moc_lm.MoCLM`); one whose forward also takes
Hugging Face's ``logits_to_keep`` is asked for the last position's logits only.

- Top-k: Fan et al., "Hierarchical Neural Story Generation", ACL 2018.
- Top-p (nucleus): Holtzman et al., "The Curious Case of Neural Text Degeneration", ICLR 2020: keep
  the smallest set of most likely tokens whose probabilities sum to at least ``p``.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterator

import torch
from torch import nn


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` (..., V) with everything below the k-th largest value per row set to -inf (ties kept)."""
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """``logits`` (..., V) keeping, per row, the most likely tokens until their probability reaches ``p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
    drop_sorted = before >= p  # the set already reached p without this token (the top token always stays)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling settings that would fail at the first draw (NaN probabilities) or sample garbage."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy); got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None; got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None; got {top_p}")


def check_lengths(prompt: int, max_new_tokens: int, max_seq_len: int) -> None:
    """A prompt of ``prompt`` tokens plus ``max_new_tokens`` must fit the context ``max_seq_len``."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
    if prompt > max_seq_len:
        raise ValueError(f"the prompt has {prompt} tokens but the model's context is max_seq_len={max_seq_len}; "
                         f"shorten the prompt (keep its last {max_seq_len} tokens)")
    if prompt + max_new_tokens > max_seq_len:
        raise ValueError(f"{prompt} prompt tokens + max_new_tokens={max_new_tokens} exceed the context "
                         f"max_seq_len={max_seq_len}; ask for at most {max_seq_len - prompt} new tokens")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from (B, V) logits: argmax at ``temperature=0``, else a draw from the
    tempered, top-k- then top-p-restricted distribution. Returns (B,) int64."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream_tokens(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                  generator: torch.Generator | None = None, cache: Any = "dense") -> Iterator[torch.Tensor]:
    """Yield each step's (B,) new tokens. Arguments as :func:`generate`; all are checked before the first step."""
    check_sampling(temperature, top_k, top_p)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty prompt (B, T) or (T,); got shape {tuple(input_ids.shape)}")
    check_lengths(input_ids.shape[1], max_new_tokens, model.max_seq_len)
    kv = model.make_cache(cache)
    # a model that takes Hugging Face's logits_to_keep computes the last position's logits only
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    seq, step_input = input_ids, input_ids
    for _ in range(max_new_tokens):
        logits = model(step_input if kv is not None else seq, cache=kv, **last)[:, -1]  # (B, V)
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(done, eos_id)
            done |= token == eos_id
        seq = torch.cat([seq, token[:, None]], dim=1)  # (B, T + 1)
        step_input = token[:, None]  # (B, 1)
        yield token
        if eos_id is not None and bool(done.all()):
            return


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None, cache: Any = "dense",
             stream: Callable[[torch.Tensor], Any] | None = None) -> torch.Tensor:
    """``input_ids`` (B, T) followed by up to ``max_new_tokens`` sampled tokens: (B, T + new).

    ``temperature=0`` is greedy. ``cache``: ``dense``, ``kivi4``, ``kivi2``, a KV cache, or None
    (recompute the whole sequence every step). ``stream(tokens)`` sees each step's (B,) tokens.
    A prompt (plus ``max_new_tokens``) longer than the model's ``max_seq_len`` is an error.
    """
    squeeze = input_ids.ndim == 1
    out = [input_ids[None] if squeeze else input_ids]
    was_training = model.training
    model.eval()
    try:
        for token in stream_tokens(model, out[0], max_new_tokens, temperature, top_k, top_p, eos_id, generator, cache):
            out.append(token[:, None])
            if stream is not None:
                stream(token)
    finally:
        model.train(was_training)
    seq = torch.cat(out, dim=1)  # (B, T + new)
    return seq[0] if squeeze else seq


@torch.no_grad()
def cached_logits(model: nn.Module, input_ids: torch.Tensor, cache: Any = "dense", chunk: int = 1) -> torch.Tensor:
    """Teacher-forced (B, T, V) logits computed ``chunk`` tokens at a time through a KV cache, so every
    position reads its past from the cache as generation would (``chunk=1``: exactly decoding's view).
    Compare with ``model(input_ids)`` to measure what a quantized cache costs in loss or perplexity."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    kv = model.make_cache(cache)
    if kv is None:
        raise ValueError("cached_logits needs a cache (dense, kivi4, kivi2 or a KVCache), not None")
    parts = [model(input_ids[:, i:i + chunk], cache=kv) for i in range(0, input_ids.shape[1], chunk)]
    return torch.cat(parts, dim=1)  # (B, T, V)
