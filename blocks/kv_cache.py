"""The key/value cache protocol the attention blocks call, and the release's concatenating cache.

A cache holds, per attention layer, the keys and values of the tokens seen so far as
(B, H_kv, T, head_dim) tensors. A layer calls ``cache.update(layer, k, v)`` with its new tokens' keys
and values and attends over what it returns: every earlier token followed by the new ones. Caches
know nothing of positions or masks. Preallocated and KIVI-quantized implementations live in
:mod:`zoo.models.kv_cache`.
"""
from __future__ import annotations

import torch


def check_kv(k: torch.Tensor, v: torch.Tensor) -> None:
    if k.ndim != 4 or v.ndim != 4 or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"a KV cache takes keys and values shaped (B, H_kv, T, head_dim) with equal B, H_kv, T; "
                         f"got keys {tuple(k.shape)} and values {tuple(v.shape)}")


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Bytes of a tensor's elements (0 for None)."""
    return 0 if t is None else t.numel() * t.element_size()


class KVCache:
    """The interface: per-layer ``update``, the stored length, ``nbytes`` and ``reset``."""

    def __init__(self, num_layers: int) -> None:
        if num_layers < 1:
            raise ValueError(f"a KV cache needs num_layers >= 1; got {num_layers}")
        self.num_layers = num_layers

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} is outside this cache's {self.num_layers} layers")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` (B, H_kv, T_new, D) to ``layer``; return all its keys and values (B, H_kv, T, D)."""
        raise NotImplementedError

    def seq_len(self, layer: int = 0) -> int:
        """Tokens stored for ``layer``; a decoder reads layer 0 before its first layer appends."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes stored over all layers."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.seq_len(0)


class ConcatKVCache(KVCache):
    """VAR's release cache: each update concatenates the new keys and values to the layer's stored
    ones (one ``torch.cat`` per call, so the sampler's numbers are the release's bit for bit)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(num_layers)
        self.reset()

    def reset(self) -> None:
        self._keys: list[torch.Tensor | None] = [None] * self.num_layers
        self._values: list[torch.Tensor | None] = [None] * self.num_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_layer(layer)
        check_kv(k, v)
        if self._keys[layer] is not None:
            k = torch.cat((self._keys[layer], k), dim=2)  # (B, H, T_so_far, c)
            v = torch.cat((self._values[layer], v), dim=2)
        self._keys[layer], self._values[layer] = k, v
        return k, v

    def keep_batch(self, n: int) -> None:
        """Keep the first ``n`` sequences of every layer (a sampler dropping its unconditional half)."""
        self._keys = [None if t is None else t[:n] for t in self._keys]
        self._values = [None if t is None else t[:n] for t in self._values]

    def seq_len(self, layer: int = 0) -> int:
        keys = self._keys[layer]
        return 0 if keys is None else keys.shape[2]

    def nbytes(self) -> int:
        return sum(tensor_bytes(k) + tensor_bytes(v) for k, v in zip(self._keys, self._values))
