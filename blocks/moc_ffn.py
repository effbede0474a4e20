"""SwiGLU FFN and the Mixture-of-Channels FFN.

- ``swiglu``: ``y = (SiLU(x Wg^T) * x Wu^T) Wd^T``, the LLaMA FFN (Shazeer, "GLU Variants Improve
  Transformer", 2020; Touvron et al., "LLaMA", 2023).
- ``moc_ffn``: Mixture-of-Channels (MoC, 2025): per token only the top-K channels of the gate
  pre-activation (by value) are kept, so the activation saved for backward is T x K instead of T x H
  and decoding reads only K rows of ``Wu`` and K columns of ``Wd``. The hot path is
  :func:`kernels.moc_ffn`.

Both use bias-free ``nn.Linear``s named ``gate_proj`` (H, d), ``up_proj`` (H, d), ``down_proj`` (d, H), as in
LLaMA checkpoints, so a MoC model and its dense twin share one state-dict layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels.moc_ffn import DECODE_TOKENS

from .layers import _observed
from .registry import register


def default_hidden_dim(dim: int, multiple_of: int = 8) -> int:
    """LLaMA's rule: 2/3 of 4 * dim (the parameter count of a 4x GELU FFN), rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@register("swiglu")
class SwiGLU(nn.Module):
    """The dense SwiGLU FFN: ``down_proj(SiLU(gate_proj(x)) * up_proj(x))`` on (..., dim) inputs.

    ``hidden_dim`` defaults to LLaMA's 8/3 * dim rounded up to a multiple of 8.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden_dim = default_hidden_dim(dim) if hidden_dim is None else hidden_dim
        if dim < 1 or hidden_dim < 1:
            raise ValueError(f"{type(self).__name__}: dim and hidden_dim must be positive; got {dim}, {hidden_dim}")
        factory = {"device": device, "dtype": dtype}
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False, **factory)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False, **factory)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False, **factory)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} expects (..., {self.dim}) inputs; got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@register("moc_ffn")
class MoCFFN(SwiGLU):
    """Mixture-of-Channels FFN: SwiGLU restricted, per token, to the ``top_k`` largest gate channels.

    ``G = x Wg^T``; keep the top-K of G by value per token; ``y = (SiLU(G) * x Wu^T)`` on those channels
    times ``Wd^T``. ``top_k=None`` or ``top_k == hidden_dim`` is the dense SwiGLU, computed by the dense
    path (so it equals :class:`SwiGLU` exactly). The backward saves x, the int16/int32 channel indices and
    the selected gate and up values (T x K each), never a dense T x H buffer.

    Inference on at most ``kernels.moc_ffn.DECODE_TOKENS`` tokens (decoding) reads only the K selected rows
    of ``Wu`` and columns of ``Wd`` per token, the latter from a transposed copy of ``Wd`` that the block
    keeps while it runs without autograd (d * H extra elements; rebuilt whenever the weight changes).

    Attributes: ``dim``, ``hidden_dim``, ``top_k`` (an int; ``hidden_dim`` when dense) and ``is_dense``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        top_k: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        hidden = default_hidden_dim(dim) if hidden_dim is None else hidden_dim
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= hidden):
            raise ValueError(f"MoCFFN: top_k must be an int in 1..hidden_dim = 1..{hidden}, or None for the dense "
                             f"SwiGLU; got {top_k!r}")
        super().__init__(dim, hidden, device=device, dtype=dtype)
        self.top_k = hidden if top_k is None else top_k
        self._down_t: tuple[tuple, torch.Tensor] | None = None  # inference cache of Wd^T, see _down_transposed

    @property
    def is_dense(self) -> bool:
        return self.top_k == self.hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_dense:
            return super().forward(x)
        self._check_input(x)
        if not self._plain_projections():
            return self._forward_through_modules(x)
        tokens = x.reshape(-1, self.dim)  # (T, d)
        w_gate, w_up = self.gate_proj.weight.to(x.dtype), self.up_proj.weight.to(x.dtype)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if tokens.shape[0] <= DECODE_TOKENS and not needs_grad and not torch.compiler.is_compiling():
            # decode: K rows of Wu and of Wd^T per token
            y = kernels.moc_ffn_decode(tokens, w_gate, w_up, self._down_transposed(x.dtype), self.top_k)
        else:
            y = kernels.moc_ffn(tokens, w_gate, w_up, self.down_proj.weight.to(x.dtype), self.top_k)  # (T, d)
        return y.reshape(x.shape)  # (..., d)

    def _plain_projections(self) -> bool:
        """True when the three projections are float ``nn.Linear`` layers nobody observes, so the fused op
        may read their weights; quantized or fake-quant layers (and calibration hooks) need their own forward."""
        layers = (self.gate_proj, self.up_proj, self.down_proj)
        return all(type(m) is nn.Linear and not _observed(m) for m in layers)

    def _forward_through_modules(self, x: torch.Tensor) -> torch.Tensor:
        """The same math with each projection called as a module (quantized, QAT or hooked layers).

        The up and down projections run densely here: an integer layer has no rows to gather, so this path
        keeps MoC's result but not its savings."""
        gate = self.gate_proj(x)  # (..., H)
        idx = gate.topk(self.top_k, dim=-1).indices  # (..., K)
        selected = F.silu(gate.gather(-1, idx)) * self.up_proj(x).gather(-1, idx)  # (..., K)
        hidden = torch.zeros_like(gate).scatter(-1, idx, selected)  # (..., H), zero outside the top-K
        return self.down_proj(hidden)

    def _down_transposed(self, dtype: torch.dtype) -> torch.Tensor:
        """Wd^T (H, d), contiguous, for decoding: each selected column of Wd becomes one contiguous row.

        Kept between calls (d * H extra elements) and rebuilt when the weight changes (in-place updates
        bump its version), moves, or the dtype differs. Not part of the state dict."""
        weight = self.down_proj.weight
        if weight.is_inference():  # no version counter to watch: transpose on every call
            return weight.t().to(dtype).contiguous()
        key = (weight._version, weight.data_ptr(), weight.device, dtype)
        if self._down_t is None or self._down_t[0] != key:
            with torch.no_grad():
                self._down_t = (key, weight.t().to(dtype).contiguous())
        return self._down_t[1]

    @torch.no_grad()
    def selected_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The channels each token keeps, (..., top_k) int64, ascending."""
        self._check_input(x)
        gate = self.gate_proj(x)  # (..., H)
        return gate.topk(self.top_k, dim=-1).indices.sort(dim=-1).values

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, top_k={self.top_k}"
