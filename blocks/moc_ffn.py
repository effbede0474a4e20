"""SwiGLU FFN and the Mixture-of-Channels FFN.

- ``swiglu``: ``y = (SiLU(x Wg^T) * x Wu^T) Wd^T``, the LLaMA FFN (Shazeer, "GLU Variants Improve
  Transformer", 2020; Touvron et al., "LLaMA", 2023).
- ``moc_ffn``: Mixture-of-Channels (MoC, 2025): per token only the top-K channels of the gate
  pre-activation (by value) are kept, so the activation saved for backward is T x K instead of T x H
  and decoding reads only K rows of ``Wu`` and K columns of ``Wd``. The hot path is
  :func:`zoo.kernels.moc_ffn`.

Both use bias-free ``nn.Linear``s named ``gate_proj`` (H, d), ``up_proj`` (H, d), ``down_proj`` (d, H), as in
LLaMA checkpoints, so a MoC model and its dense twin share one state-dict layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo import kernels
from zoo.kernels.moc import DECODE_TOKENS

from .fusion import can_fuse
from .quant import QuantLinear
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

    Inference on at most ``zoo.kernels.moc.DECODE_TOKENS`` tokens (decoding) reads only the K selected rows
    of ``Wu`` and columns of ``Wd`` per token, the latter from a transposed copy of ``Wd`` that the block
    keeps while it runs without autograd (d * H extra elements; rebuilt whenever the weight changes).
    Quantized (``w8a8``, ``w4a8``: integer layers with int8 activations), a step of T tokens with
    ``2 * T * top_k <= hidden_dim`` (T <= 4 at K = H/8) reads each token's K packed rows of ``up_proj`` and
    of ``down_proj``'s transposed integer weights (:func:`zoo.kernels.moc_ffn_decode_int`); past that the rows
    the tokens read would approach all H, and the dense integer layers are cheaper.

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
        self._down_t_int: tuple[tuple, tuple] | None = None  # the integer Wd^T, see _integer_down_transposed

    @property
    def is_dense(self) -> bool:
        return self.top_k == self.hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_dense:
            return super().forward(x)
        self._check_input(x)
        if not self._plain_projections():
            # each token reads its own K rows: worth it while the T * K rows are at most half of the H rows,
            # and where the row-gathering op has a kernel: on a CPU whose integer layers run on oneDNN the dense
            # layers are faster (a moc_lm_130m w8a8 decode step went from 0.65x to 0.88x of fp32: cpu_inference.py)
            if 2 * (x.numel() // self.dim) * self.top_k <= self.hidden_dim and self._integer_decode_ready() \
                    and not self.gate_proj._runs_onednn(x):
                return self._forward_integer_decode(x)
            return self._forward_through_modules(x)
        tokens = x.reshape(-1, self.dim)  # (T, d)
        w_gate, w_up = self.gate_proj.weight.to(x.dtype), self.up_proj.weight.to(x.dtype)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        # the token count is compared last: under torch.export with a dynamic sequence length the comparison
        # would otherwise become a guard that narrows the exported range to one side of DECODE_TOKENS
        if not needs_grad and not torch.compiler.is_compiling() and tokens.shape[0] <= DECODE_TOKENS:
            # decode: K rows of Wu and of Wd^T per token
            y = kernels.moc_ffn_decode(tokens, w_gate, w_up, self._down_transposed(x.dtype), self.top_k)
        else:
            y = kernels.moc_ffn(tokens, w_gate, w_up, self.down_proj.weight.to(x.dtype), self.top_k)  # (T, d)
        return y.reshape(x.shape)  # (..., d)

    def _plain_projections(self) -> bool:
        """True when the three projections are float ``nn.Linear`` layers nobody observes, so the fused op
        may read their weights; quantized or fake-quant layers (and calibration hooks) need their own forward."""
        layers = (self.gate_proj, self.up_proj, self.down_proj)
        return all(type(m) is nn.Linear and can_fuse(m) for m in layers)

    def _forward_through_modules(self, x: torch.Tensor) -> torch.Tensor:
        """The same math with each projection called as a module (quantized, QAT or hooked layers).

        The up and down projections run densely here, over all H channels: this path keeps MoC's result but
        not its savings. Integer layers decoding a few tokens take :meth:`_forward_integer_decode` instead,
        which equals this bit for bit."""
        gate = self.gate_proj(x)  # (..., H)
        idx = gate.topk(self.top_k, dim=-1).indices  # (..., K)
        selected = F.silu(gate.gather(-1, idx)) * self.up_proj(x).gather(-1, idx)  # (..., K)
        hidden = torch.zeros_like(gate).scatter(-1, idx, selected)  # (..., H), zero outside the top-K
        return self.down_proj(hidden)

    def _integer_decode_ready(self) -> bool:
        """True when the three projections are integer layers (int8 activations: ``w8a8``, ``w4a8``) that
        :func:`zoo.kernels.moc_ffn_decode_int` can read row by row: no calibration hooks, and no Outlier
        Suppression+ shift before ``down_proj`` (it would turn the activation's zeros into -shift)."""
        layers = (self.gate_proj, self.up_proj, self.down_proj)
        if not all(isinstance(m, QuantLinear) and not m.spec.weight_only and not m.spec.fp8 and can_fuse(m)
                   for m in layers):
            return False
        return self.down_proj.act_shift is None

    def _forward_integer_decode(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized block on a few tokens, reading K packed rows of ``up_proj`` and of ``down_proj``'s
        transposed weights per token (see :mod:`zoo.kernels.moc_int`); the gate runs as its integer layer."""
        up, down = self.up_proj, self.down_proj
        with torch.no_grad():
            tokens = x.reshape(-1, self.dim)  # (T, d)
            gate = self.gate_proj(tokens)  # (T, H): the selection needs every channel
            gate_sel, idx = gate.topk(self.top_k, dim=-1)  # (T, K), as the dense path selects
            idx, order = idx.sort(dim=-1)  # ascending: the down kernel closes one segment at a time
            gate_sel = gate_sel.gather(-1, order)
            q, a_scale = kernels.quantize_act(tokens, up.act_multiplier, up.act_shift, up.act_scale)  # (T, d) int8
            w_down_t, scale_t, zero_t = self._integer_down_transposed()
            y = kernels.moc_ffn_decode_int(
                q, a_scale, gate_sel, idx, up.qweight.view(up.out_channels, -1), up.weight_scale, up.weight_zero,
                up.bias, up.spec.weight_bits, up.group_size, w_down_t, scale_t, zero_t, down.bias,
                down.spec.weight_bits, down.group_size, down.act_multiplier, down.act_scale, out_dtype=x.dtype)
        return y.reshape(x.shape)  # (..., d)

    def _integer_down_transposed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``down_proj``'s integer weights as rows of Wd^T (H, ...) with (S, d) scale and zero tables, built from
        its buffers (the codes are moved, not requantized), kept between calls (another copy of the down
        weights, as the float path keeps Wd^T) and rebuilt when the buffers change."""
        down = self.down_proj
        if torch.compiler.is_compiling():  # traced into the graph (no data pointers to key a cache on)
            return kernels.transpose_int_weight(down.qweight, down.weight_scale, down.weight_zero,
                                                down.spec.weight_bits, down.in_channels)
        key = tuple((t.data_ptr(), t._version) for t in (down.qweight, down.weight_scale) if not t.is_inference())
        if not key or self._down_t_int is None or self._down_t_int[0] != key:
            transposed = kernels.transpose_int_weight(down.qweight, down.weight_scale, down.weight_zero,
                                                      down.spec.weight_bits, down.in_channels)
            self._down_t_int = (key, transposed)
        return self._down_t_int[1]

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
