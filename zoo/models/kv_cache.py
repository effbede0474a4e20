"""Key/value caches for autoregressive attention: full precision, and KIVI-style quantized. They
implement :class:`zoo.blocks.kv_cache.KVCache`, the protocol the attention blocks call.

A cache holds, per attention layer, the keys and values of the tokens seen so far as
(B, H_kv, T, head_dim) tensors. A layer calls ``cache.update(layer, k, v)`` with its new tokens' keys
and values and attends over what it returns: every earlier token followed by the new ones. The
caches know nothing of language models (no positions, no masks), so any decoder that attends over
its past, a token LM or a scale-wise image generator, can use them.

- :class:`DenseKVCache`: the keys and values as given, in a buffer that grows by doubling (or is
  allocated once at ``max_len``).
- :class:`QuantizedKVCache`: KIVI (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for
  KV Cache", ICML 2024, arXiv:2402.02750). Keys are quantized per channel (a group is
  ``key_group_size`` consecutive tokens of one channel: key outliers live in fixed channels), values
  per token (a group is ``value_group_size`` consecutive channels of one token), asymmetric min-max
  at 2 or 4 bits through :func:`zoo.kernels.kv_quantize`. The ``residual_length`` most recent tokens stay
  in full precision; whenever the window grows past it, its oldest ``key_group_size`` tokens are
  quantized as one block. Attention reads the past dequantized on the fly plus the window (a fused
  kernel that attends over the codes directly is future work; this is the storage format and its error).
- :class:`ChunkQuantizedKVCache`: the same quantization with no full-precision window, for a decoder
  that appends its tokens in blocks (VAR's scales): each update's block is quantized as it is stored,
  keys per channel with the block's tokens as one group, values per token in groups of channels.

``nbytes()`` reports the bytes the cache stores, codes, scales, zero points and window included.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from zoo.blocks.kv_cache import ConcatKVCache, KVCache, check_kv, tensor_bytes  # noqa: F401 (ConcatKVCache: re-exported)
from zoo.kernels import KVQuantized, kv_dequantize, kv_quantize

__all__ = ["KVCache", "ConcatKVCache", "DenseKVCache", "QuantizedKVCache", "ChunkQuantizedKVCache", "make_cache",
           "tensor_bytes"]


class DenseKVCache(KVCache):
    """Keys and values kept as given, per layer, in (B, H_kv, capacity, D) buffers.

    ``max_len`` allocates each layer's buffer once at that length on its first update; without it
    the buffer doubles as needed. ``nbytes`` counts the stored tokens, not the spare capacity.
    """

    def __init__(self, num_layers: int, max_len: int | None = None) -> None:
        super().__init__(num_layers)
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be positive or None; got {max_len}")
        self.max_len = max_len
        self.reset()

    def reset(self) -> None:
        self._keys: list[torch.Tensor | None] = [None] * self.num_layers
        self._values: list[torch.Tensor | None] = [None] * self.num_layers
        self._lengths = [0] * self.num_layers

    def _grow(self, layer: int, k: torch.Tensor, v: torch.Tensor, needed: int) -> None:
        old_k, old_v = self._keys[layer], self._values[layer]
        if old_k is not None and (old_k.shape[:2] != k.shape[:2] or old_k.shape[-1] != k.shape[-1]
                                  or old_v.shape[-1] != v.shape[-1]):
            raise ValueError(f"layer {layer} caches (B, H_kv, D) = {tuple(old_k.shape[:2]) + (old_k.shape[-1],)}; "
                             f"got keys {tuple(k.shape)}; reset() the cache for a new batch")
        if self.max_len is not None:
            if needed > self.max_len:
                raise ValueError(f"the cache holds at most max_len={self.max_len} tokens; {needed} requested")
            capacity = self.max_len
        else:
            capacity = max(needed, 2 * (old_k.shape[2] if old_k is not None else 0), 16)
        b, h, _, d = k.shape
        new_k = k.new_empty(b, h, capacity, d)  # (B, H_kv, capacity, D)
        new_v = v.new_empty(b, h, capacity, v.shape[-1])  # (B, H_kv, capacity, Dv)
        n = self._lengths[layer]
        if old_k is not None and n:
            new_k[:, :, :n] = old_k[:, :, :n]
            new_v[:, :, :n] = old_v[:, :, :n]
        self._keys[layer], self._values[layer] = new_k, new_v

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer)
        check_kv(k, v)
        n, t = self._lengths[layer], k.shape[2]
        buf = self._keys[layer]
        if buf is None or n + t > buf.shape[2] or buf.shape[:2] != k.shape[:2]:
            self._grow(layer, k, v, n + t)
        self._keys[layer][:, :, n:n + t] = k
        self._values[layer][:, :, n:n + t] = v
        self._lengths[layer] = n + t
        return self._keys[layer][:, :, :n + t], self._values[layer][:, :, :n + t]

    def seq_len(self, layer: int = 0) -> int:
        return self._lengths[layer]

    def nbytes(self) -> int:
        total = 0
        for k, v, n in zip(self._keys, self._values, self._lengths):
            if k is not None:
                total += tensor_bytes(k[:, :, :n]) + tensor_bytes(v[:, :, :n])
        return total


class _QuantizedLayer:
    """One layer's state: the quantized past (one growing quantized tensor each) and the full-precision window."""

    def __init__(self) -> None:
        self.keys: Any = None  # kernels.KVQuantized of (B, H_kv, Tq, D), groups along tokens
        self.values: Any = None  # kernels.KVQuantized of (B, H_kv, Tq, D), groups along channels
        self.quantized_len = 0
        self.window_k: torch.Tensor | None = None  # (B, H_kv, W, D)
        self.window_v: torch.Tensor | None = None


class QuantizedKVCache(KVCache):
    """KIVI's quantized KV cache (see the module docstring).

    Args:
        num_layers: attention layers.
        bits: 2 or 4 (8 also works; it is not KIVI's point).
        key_group_size: tokens per key group (per channel); also the block quantized at a time.
        value_group_size: channels per value group (per token); must divide head_dim (None: the
            greatest common divisor of ``key_group_size`` and head_dim, 64 for head_dim 64 or 128).
        residual_length: the most recent tokens kept in full precision (KIVI's R); ``key_group_size``
            tokens are quantized at a time, so between ``R - key_group_size + 1`` and ``R`` stay in
            full precision once the cache holds more than R tokens.

    Storage, 4 bits, scales and zero points in the cache's dtype (as :func:`zoo.kernels.kv_quantize`
    keeps them): ``0.5 + 2 / key_group_size + 2 / value_group_size`` bytes per cached element beyond
    the window, against 2 for an fp16 cache: 0.28x at the default group sizes and head_dim 64, plus
    the window's ``R / T`` share, so a 4-bit cache is under 0.3x of fp16 from about 4k tokens on
    (and under 0.15x of fp32).
    """

    def __init__(self, num_layers: int, bits: int = 4, key_group_size: int = 64, value_group_size: int | None = None,
                 residual_length: int = 64) -> None:
        super().__init__(num_layers)
        if bits not in (2, 4, 8):
            raise ValueError(f"bits must be 2, 4 or 8; got {bits}")
        if key_group_size < 2:
            raise ValueError(f"key_group_size must be >= 2 tokens; got {key_group_size}")
        if residual_length < key_group_size:
            raise ValueError(f"residual_length={residual_length} must be at least key_group_size={key_group_size}: "
                             f"the window fills a key group before it is quantized")
        self.bits, self.key_group_size, self.residual_length = bits, key_group_size, residual_length
        self.value_group_size = value_group_size
        self.reset()

    def reset(self) -> None:
        self._layers = [_QuantizedLayer() for _ in range(self.num_layers)]

    def _value_group(self, head_dim: int) -> int:
        group = self.value_group_size or math.gcd(self.key_group_size, head_dim)
        if head_dim % group:
            raise ValueError(f"value_group_size={group} does not divide head_dim={head_dim}; pick a divisor of "
                             f"{head_dim}")
        return group

    def _flush(self, state: _QuantizedLayer) -> None:
        """Quantize the window's oldest whole key groups while it holds more than ``residual_length`` tokens."""

        g, w = self.key_group_size, state.window_k.shape[2]
        if w <= self.residual_length:
            return
        n = -(-(w - self.residual_length) // g) * g  # whole groups, enough to bring the window to <= R
        k, v = state.window_k[:, :, :n], state.window_v[:, :, :n]  # (B, H_kv, n, D)
        qk = kv_quantize(k.contiguous(), bits=self.bits, group_size=g, axis=2)  # per channel, G tokens a group
        qv = kv_quantize(v.contiguous(), bits=self.bits, group_size=self._value_group(v.shape[-1]), axis=3)
        state.keys = qk if state.keys is None else KVQuantized.cat([state.keys, qk], dim=2)
        state.values = qv if state.values is None else KVQuantized.cat([state.values, qv], dim=2)
        state.quantized_len += n
        state.window_k, state.window_v = state.window_k[:, :, n:].clone(), state.window_v[:, :, n:].clone()

    @staticmethod
    def _read(state: _QuantizedLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """The dequantized past followed by the window, (B, H_kv, T, D) each. Dequantized on every read,
        so that nothing but the codes is kept (a fused kernel would attend over the codes directly)."""

        if state.keys is None:
            return state.window_k, state.window_v
        dtype = state.window_k.dtype
        keys = torch.cat([kv_dequantize(state.keys, dtype=dtype), state.window_k], dim=2)  # (B, H_kv, T, D)
        values = torch.cat([kv_dequantize(state.values, dtype=dtype), state.window_v], dim=2)
        return keys, values

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer)
        check_kv(k, v)
        self._value_group(v.shape[-1])  # a bad group size fails before anything is stored
        state = self._layers[layer]
        if state.window_k is None:
            state.window_k, state.window_v = k.clone(), v.clone()
        else:
            if state.window_k.shape[:2] != k.shape[:2] or state.window_k.dtype != k.dtype:
                raise ValueError(f"layer {layer} caches (B, H_kv) = {tuple(state.window_k.shape[:2])} in "
                                 f"{state.window_k.dtype}; got keys {tuple(k.shape)} in {k.dtype}; reset() the cache "
                                 f"for a new batch")
            state.window_k = torch.cat([state.window_k, k], dim=2)  # (B, H_kv, W, D)
            state.window_v = torch.cat([state.window_v, v], dim=2)
        # attention sees the new tokens at full precision in this step, whatever is flushed after
        keys, values = self._read(state)  # (B, H_kv, T, D)
        self._flush(state)
        return keys, values

    def dequantized(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything ``layer`` stores, as attention will read it from the next step on: (B, H_kv, T, D)."""
        self._check_layer(layer)
        state = self._layers[layer]
        if state.window_k is None:
            raise ValueError(f"layer {layer} stores nothing yet")
        return self._read(state)

    def seq_len(self, layer: int = 0) -> int:
        state = self._layers[layer]
        return state.quantized_len + (0 if state.window_k is None else state.window_k.shape[2])

    def nbytes(self) -> int:
        """Codes, scales and zero points of the quantized blocks plus the full-precision window."""
        total = 0
        for state in self._layers:
            total += sum(q.nbytes() for q in (state.keys, state.values) if q is not None)
            total += tensor_bytes(state.window_k) + tensor_bytes(state.window_v)
        return total


class ChunkQuantizedKVCache(KVCache):
    """KIVI's asymmetric quantization, one block per update and no full-precision window.

    A scale-wise generator (VAR, Tian et al., NeurIPS 2024) appends a whole scale at a time: 1, 4, 9,
    ... tokens. Each update's keys are quantized per channel with that block's tokens as one group
    (group size = the block's length; a 1-token block comes back exactly: min = max), its values per
    token in groups of ``value_group_size`` channels, as soon as the block is stored. The block's own
    attention in that step sees its keys and values at full precision (as :class:`QuantizedKVCache`);
    from the next step on it reads them dequantized. With no window to keep, a short schedule shrinks
    as much as a long one: per channel and ``n``-token block the keys take ``n * bits / 8`` bytes plus
    a scale and a zero point (the cache's dtype), the values ``bits / 8`` bytes per element plus a
    scale and zero point per ``value_group_size`` channels (see ``tests/test_kv_cache.py``).

    Args:
        num_layers: attention layers.
        bits: 2 or 4 (8 also works).
        value_group_size: channels per value group; must divide head_dim (None: ``gcd(64, head_dim)``,
            one group per head for head_dim 64).
    """

    def __init__(self, num_layers: int, bits: int = 4, value_group_size: int | None = None) -> None:
        super().__init__(num_layers)
        if bits not in (2, 4, 8):
            raise ValueError(f"bits must be 2, 4 or 8; got {bits}")
        if value_group_size is not None and value_group_size < 1:
            raise ValueError(f"value_group_size must be a positive number of channels or None; got {value_group_size}")
        self.bits, self.value_group_size = bits, value_group_size
        self.reset()

    def reset(self) -> None:
        # kernels.KVQuantized: the keys one per block (each its own group size), the values appended into one
        self._keys: list[list[Any]] = [[] for _ in range(self.num_layers)]
        self._values: list[Any] = [None] * self.num_layers
        self._lengths = [0] * self.num_layers

    def _value_group(self, head_dim: int) -> int:
        group = self.value_group_size or math.gcd(64, head_dim)
        if head_dim % group:
            raise ValueError(f"value_group_size={group} does not divide head_dim={head_dim}; pick a divisor of "
                             f"{head_dim}")
        return group

    def _read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored block dequantized, (B, H_kv, T, D) each (on every read: only the codes are kept)."""

        keys = torch.cat([kv_dequantize(q) for q in self._keys[layer]], dim=2)  # (B, H_kv, T, D)
        return keys, kv_dequantize(self._values[layer])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer)
        check_kv(k, v)
        group = self._value_group(v.shape[-1])  # a bad group size fails before anything is stored
        stored = self._keys[layer]
        if stored:
            first = stored[0]
            if (tuple(first.shape[:2]), first.shape[-1], first.dtype) != (tuple(k.shape[:2]), k.shape[-1], k.dtype):
                raise ValueError(f"layer {layer} caches (B, H_kv, D) = {tuple(first.shape[:2]) + (first.shape[-1],)} "
                                 f"in {first.dtype}; got keys {tuple(k.shape)} in {k.dtype}; reset() the cache for a "
                                 f"new batch")
            past_k, past_v = self._read(layer)
            keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H_kv, T, D)
        else:
            keys, values = k, v
        t = k.shape[2]
        stored.append(kv_quantize(k.contiguous(), bits=self.bits, group_size=t, axis=2))  # per channel, one group
        qv = kv_quantize(v.contiguous(), bits=self.bits, group_size=group, axis=3)  # per token
        old = self._values[layer]
        self._values[layer] = qv if old is None else KVQuantized.cat([old, qv], dim=2)
        self._lengths[layer] += t
        return keys, values

    def dequantized(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything ``layer`` stores, as attention will read it from the next step on: (B, H_kv, T, D)."""
        self._check_layer(layer)
        if not self._keys[layer]:
            raise ValueError(f"layer {layer} stores nothing yet")
        return self._read(layer)

    def seq_len(self, layer: int = 0) -> int:
        return self._lengths[layer]

    def nbytes(self) -> int:
        """Codes, scales and zero points of every stored block."""
        keys = sum(q.nbytes() for parts in self._keys for q in parts)
        return keys + sum(q.nbytes() for q in self._values if q is not None)


CACHE_KINDS = ("dense", "kivi4", "kivi2")


def make_cache(kind: str | KVCache | None, num_layers: int, max_len: int | None = None, **kwargs: Any) -> KVCache | None:
    """A cache from a name: ``dense``, ``kivi4``, ``kivi2`` (KIVI's defaults otherwise), a cache, or None."""
    if kind is None or isinstance(kind, KVCache):
        return kind
    if kind == "dense":
        return DenseKVCache(num_layers, max_len=max_len)
    if kind in ("kivi4", "kivi2"):
        return QuantizedKVCache(num_layers, bits=int(kind[-1]), **kwargs)
    raise ValueError(f"cache={kind!r} is not a cache kind; use one of {', '.join(CACHE_KINDS)}, None, or a KVCache")


__all__ = ["KVCache", "DenseKVCache", "QuantizedKVCache", "ChunkQuantizedKVCache", "make_cache", "CACHE_KINDS",
           "tensor_bytes"]
