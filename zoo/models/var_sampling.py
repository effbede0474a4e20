"""Sampling helpers for VAR: the release's top-k / top-p and Gumbel samplers with seeded generators.
(The grid-to-PNG application behind ``python -m zoo sample`` is :mod:`zoo.generation`.)

Tian et al., "Visual Autoregressive Modeling", NeurIPS 2024 (the release's ``models/helpers.py`` for the
first two, whose random-number use the seeded sample in the parity vectors depends on).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["check_sampling_args", "sample_with_top_k_top_p_", "gumbel_softmax_with_rng"]


def check_sampling_args(cfg: float, top_k: int, top_p: float) -> None:
    """Refuse guidance and filtering settings before any work: a NaN guidance scale makes every
    probability NaN (``torch.multinomial`` fails at the first scale), a NaN or negative filter garbage."""
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number (the guidance scale, e.g. 1.5; 0: none); got {cfg!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0: off); got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be a number in [0, 1] (0: off); got {top_p!r}")


def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                             rng: torch.Generator | None = None, num_samples: int = 1) -> torch.Tensor:
    """(B, l, V) logits -> (B, l, num_samples) ids, top-k then nucleus filtered *in place* (the
    release's helper and RNG use: one ``torch.multinomial`` over all B*l rows)."""
    b, length, vocab = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)  # (B, l, 1)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False  # always keep the most likely
        logits_BlV.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    replacement = num_samples >= 0
    probs = logits_BlV.softmax(dim=-1).view(-1, vocab)  # (B*l, V)
    return torch.multinomial(probs, num_samples=abs(num_samples), replacement=replacement,
                             generator=rng).view(b, length, abs(num_samples))


def gumbel_softmax_with_rng(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10,
                            dim: int = -1, rng: torch.Generator | None = None) -> torch.Tensor:
    """``F.gumbel_softmax`` drawing its noise from ``rng`` (exponential, as the release)."""
    if rng is None:
        return F.gumbel_softmax(logits, tau=tau, hard=hard, eps=eps, dim=dim)
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=rng).log()
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft
