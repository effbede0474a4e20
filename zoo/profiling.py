"""Measuring what a forward pass costs in memory: the bytes autograd keeps for the backward."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["saved_for_backward_bytes"]


def saved_for_backward_bytes(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes of the unique storages autograd saves while ``module(*inputs)`` runs, parameters excluded.

    Counted through ``torch.autograd.graph.saved_tensors_hooks``, per storage (views of one buffer count
    once), so it is what the backward of this call holds beyond the weights."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
    del out
    return sum(storages.values())
