"""Sampling helpers for VAR: the release's top-k / top-p and Gumbel samplers with seeded generators,
and the grid-to-PNG path behind ``python -m zoo sample``.

Tian et al., "Visual Autoregressive Modeling", NeurIPS 2024 (the release's ``models/helpers.py`` for the
first two, whose random-number use the seeded sample in the parity vectors depends on).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .var import VAR

__all__ = ["check_sampling_args", "sample_with_top_k_top_p_", "gumbel_softmax_with_rng", "image_grid", "load_for_sampling", "sample_grid"]


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


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> one (3, H', W') grid, ``nrow`` images a row (default: ~square)."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = images.new_ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def load_for_sampling(model: str, weights: str | None = None, vae: str | None = None, device: str = "cpu") -> "VAR":
    """A VAR and its tokenizer for sampling: ``weights``/``vae`` are files or saved folders (None:
    the release's weights); a folder's config.json gives the architecture and arguments."""
    from ..factory import create
    from ..hub import read_source_config
    from .var import VAR

    vae_arch = (read_source_config(vae) or {}).get("architecture", "vqvae_ch160v4096z32") if vae else \
        "vqvae_ch160v4096z32"
    tokenizer = create(vae_arch, pretrained=vae or True).eval().to(device)
    net = create(model, pretrained=weights or True, vae=tokenizer).eval().to(device)
    if not isinstance(net, VAR):
        raise ValueError(f"{model} is not a VAR model; try var_d16, var_d20, var_d24 or var_d30")
    return net


def sample_grid(net: "VAR", output: str | Path, class_id: int, n: int = 16, cfg: float = 4.0, top_k: int = 900,
                top_p: float = 0.95, seed: int | None = 0, more_smooth: bool = False, **options: Any) -> Path:
    """Sample ``n`` images of ``class_id`` and write them as one grid PNG (atomically)."""
    from ..data.images import write_image

    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    check_sampling_args(cfg, top_k, top_p)
    if not 0 <= class_id < net.num_classes:
        raise ValueError(f"class {class_id} is out of range: the model has num_classes={net.num_classes} "
                         f"(ids 0..{net.num_classes - 1})")
    images = net.autoregressive_infer_cfg(n, class_id, g_seed=seed, cfg=cfg, top_k=top_k, top_p=top_p,
                                          more_smooth=more_smooth, **options)
    write_image(image_grid(images.float().cpu()), output)
    return Path(output)
