"""Autoregressive sampling for the zoo's token models: temperature, top-k, top-p, KV caches, streaming.

A model here is any module with ``model(input_ids, cache=None) -> (B, T, vocab) logits``, a
``max_seq_len`` and ``make_cache(kind)`` (:class:`zoo.models.moc_lm.MoCLM`).

- Top-k: Fan et al., "Hierarchical Neural Story Generation", ACL 2018.
- Top-p (nucleus): Holtzman et al., "The Curious Case of Neural Text Degeneration", ICLR 2020: keep
  the smallest set of most likely tokens whose probabilities sum to at least ``p``.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, Iterator, TextIO

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
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    seq, step_input = input_ids, input_ids
    for _ in range(max_new_tokens):
        logits = model(step_input if kv is not None else seq, cache=kv)[:, -1]  # (B, V)
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


class TextStreamer:
    """Prints decoded text as tokens arrive, holding back a trailing partial character (a byte-level
    tokenizer splits multi-byte UTF-8 characters over several tokens)."""

    def __init__(self, tokenizer: Any, out: TextIO | None = None, eos_id: int | None = None) -> None:
        self.tokenizer, self.out, self.eos_id = tokenizer, out or sys.stdout, eos_id
        self.tokens: list[int] = []
        self.printed = 0

    def __call__(self, token: torch.Tensor) -> None:
        value = int(token.reshape(-1)[0])
        if value == self.eos_id:
            return
        self.tokens.append(value)
        text = self.tokenizer.decode(self.tokens)
        stable = len(text) - 1 if text.endswith("\ufffd") else len(text)  # maybe an incomplete character
        if stable > self.printed:
            self.out.write(text[self.printed:stable])
            self.out.flush()
            self.printed = stable

    def finish(self) -> str:
        """Print what is held back; returns the whole generated text."""
        text = self.tokenizer.decode(self.tokens)
        self.out.write(text[self.printed:] + "\n")
        self.out.flush()
        self.printed = len(text)
        return text


def generate_text(model_name: str, prompt: str, weights: Any = True, max_new_tokens: int = 200,
                  temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, cache: str | None = "dense", tokenizer: str | None = None,
                  device: str = "cpu", out: TextIO | None = None, quant: str | None = None) -> str:
    """Load ``model_name`` with ``weights``, stream a continuation of ``prompt`` to ``out`` (stdout); return it.

    The tokenizer defaults to the model's pretrained cfg (``extra['tokenizer']``, byte-level for the
    tiny models). ``quant`` (``w8a8``, ``w4a8``, ...) quantizes the loaded float weights (RTN, dynamic
    activations) as ``zoo.create(..., quant=)`` does; a quantized file passed as ``weights`` loads as it is.
    The CLI ``python -m zoo generate`` calls this.
    """
    from . import create
    from .data.tokenizers import get_tokenizer

    check_sampling(temperature, top_k, top_p)
    if not prompt:
        raise ValueError("the prompt is empty; pass --prompt with at least one character")
    model = create(model_name, pretrained=weights, quant=quant).eval().to(device)
    if not hasattr(model, "make_cache"):
        raise ValueError(f"{model_name} is not a language model; try moc_lm_tiny or dense_lm_tiny")
    name = tokenizer or model.pretrained_cfg.get("extra", {}).get("tokenizer", "byte")
    tok = get_tokenizer(name)
    ids = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=device)  # (1, T)
    if int(ids.max()) >= model.vocab_size:
        raise ValueError(f"tokenizer {name!r} gives id {int(ids.max())} but {model_name} has {model.vocab_size} "
                         f"tokens; pick the tokenizer the model was trained with (--tokenizer)")
    check_lengths(ids.shape[1], max_new_tokens, model.max_seq_len)  # before anything is printed
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    eos_id = getattr(tok, "eos_id", None)
    streamer = TextStreamer(tok, out, eos_id)
    (out or sys.stdout).write(prompt)
    model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                   generator=generator, cache=cache, stream=streamer)
    return streamer.finish()


__all__ = ["cached_logits", "top_k_filter", "top_p_filter", "sample_next", "stream_tokens", "generate", "TextStreamer",
           "generate_text", "check_sampling", "check_lengths"]
