"""Multi-spectral channel attention (Qin et al., "FcaNet: Frequency Channel Attention Networks",
ICCV 2021)."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
import torch.fx
from torch import nn

from zoo import kernels

from .gate import ChannelGate
from .layers import LayerType, create_act, fused_mlp_gate, param_dtype
from .registry import register
from .validation import symbolic_tracing

# The 2-D DCT frequencies (u, v) on a 7x7 grid, ranked by the paper's single-frequency ImageNet
# study ("top"), by zig-zag order ("low") and from the bottom of that ranking ("bot").
_FREQ_TABLE: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "top": ((0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1),
            (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3)),
    "low": ((0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4),
            (0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3)),
    "bot": ((6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6),
            (6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3)),
}
FILTER_CACHE_SIZE = 8  # spatial filters kept per block (input sizes x layouts)


class FilterCache:
    """Spatial filters derived from a buffer, one per ``key`` (input size and layout), each valid while
    the buffer is the very tensor it was built from at the same ``_version``. That one rule covers
    every way the buffer changes: ``.to()`` / ``.half()`` / a load with ``assign`` make a new tensor, an
    in-place load or write bumps the version. Holds at most ``FILTER_CACHE_SIZE`` filters, the least
    recently used leaving first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple, source: torch.Tensor, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is source and entry[1] == source._version:
            self._entries.move_to_end(key)
            return entry[2]
        value = build()
        self._entries[key] = (source, source._version, value)
        self._entries.move_to_end(key)
        while len(self._entries) > FILTER_CACHE_SIZE:
            self._entries.popitem(last=False)
        return value
FREQ_SEL_METHODS = tuple(f"{kind}{n}" for kind in _FREQ_TABLE for n in (1, 2, 4, 8, 16, 32))


def freq_indices(method: str) -> tuple[list[int], list[int]]:
    """The (u, v) frequencies of ``method`` (e.g. ``'top16'``) on the 7x7 grid."""
    if method not in FREQ_SEL_METHODS:
        raise ValueError(f"freq_sel_method={method!r} is not one of {', '.join(FREQ_SEL_METHODS)}")
    xs, ys = _FREQ_TABLE[method[:3]]
    n = int(method[3:])
    return list(xs[:n]), list(ys[:n])


def dct_basis(size: int, freq: int) -> torch.Tensor:
    """Orthonormal DCT-II basis vector of frequency ``freq`` over ``size`` positions, fp64."""
    pos = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(math.pi * freq * (pos + 0.5) / size) / math.sqrt(size)
    return basis * (math.sqrt(2.0) if freq else 1.0)


def dct_filter(channels: int, height: int, width: int, freqs_x: list[int], freqs_y: list[int]) -> torch.Tensor:
    """(C, H, W) filter: channel group i (of C / n channels) holds the 2-D basis (u_i, v_i)."""
    group = channels // len(freqs_x)
    filt = torch.empty(channels, height, width, dtype=torch.float64)
    for i, (u, v) in enumerate(zip(freqs_x, freqs_y)):
        filt[i * group:(i + 1) * group] = torch.outer(dct_basis(height, u), dct_basis(width, v))
    return filt


def adaptive_pool_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) matrix M with M @ v = adaptive_avg_pool1d(v, out): row i averages its input bin."""
    # a few tensor ops rather than a Python loop over rows: cheap per call, and a handful of nodes
    # (not hundreds of slice writes) when torch.compile traces a model at a non-native input size
    rows = torch.arange(out_size, dtype=torch.int64)[:, None]
    start = (rows * in_size) // out_size
    end = ((rows + 1) * in_size + out_size - 1) // out_size  # ceil((i + 1) * in / out)
    cols = torch.arange(in_size, dtype=torch.int64)[None, :]
    inside = (cols >= start) & (cols < end)
    return inside.to(torch.float64) / (end - start).to(torch.float64)


def shared_filter_groups(weight: torch.Tensor, groups: int) -> int:
    """``groups`` if each of the ``groups`` runs of channels in ``weight`` (C, H, W) holds one filter, else C."""
    channels = weight.shape[0]
    if groups < 1 or channels % groups:
        return channels
    runs = weight.reshape(groups, channels // groups, -1)  # (G, C/G, H*W)
    return groups if torch.equal(runs, runs[:, :1].expand_as(runs)) else channels


class DCTFilter(nn.Module):
    """Holds FcaNet's DCT filter as buffer ``weight`` (C, dct_h, dct_w), the release's key layout.

    Each of the n frequency groups is a run of C / n channels with one basis, so the pooling op gets
    the n distinct filters (``groups``); a loaded state dict whose buffer breaks that pattern is
    pooled channel by channel instead (checked on every ``load_state_dict``).
    """

    def __init__(self, channels: int, dct_h: int, dct_w: int, freqs_x: list[int], freqs_y: list[int],
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        weight = dct_filter(channels, dct_h, dct_w, freqs_x, freqs_y)
        self.register_buffer("weight", weight.to(device=device, dtype=dtype or torch.get_default_dtype()))
        self.frequencies = len(freqs_x)
        self.groups = self.frequencies
        self.filters = FilterCache()  # spatial filters per input size (not state)
        self.register_load_state_dict_post_hook(DCTFilter._recheck_groups)

    @staticmethod
    def _recheck_groups(module: "DCTFilter", incompatible_keys) -> None:
        module.groups = shared_filter_groups(module.weight, module.frequencies)

    def spatial_filter(self, height: int, width: int, per_channel: bool = False) -> torch.Tensor:
        """The (groups, H, W) filter for an input of ``height x width``, with adaptive pooling folded in;
        with ``per_channel``, expanded to (C, H, W).

        Adaptive average pooling is linear and separable, so ``sum(pool(x) * D) = sum(x * P_h^T D P_w)``:
        the feature map is read once at its own size instead of being pooled first. Each size's filter is
        computed once and kept (up to ``FILTER_CACHE_SIZE`` of them) until the buffer changes: a map of
        another size than the DCT grid (evaluation at 256 or 288 px) would otherwise pay 0.7-2.5 ms per
        block and call on a CPU to rebuild it.
        """
        channels, dct_h, dct_w = self.weight.shape
        if (height, width) == (dct_h, dct_w) and per_channel:
            return self.weight
        if self.weight.requires_grad or torch.compiler.is_compiling():
            return self._build_filter(height, width, per_channel)  # a learnt filter, or a graph to trace

        def build() -> torch.Tensor:
            # a filter built under inference_mode would be an inference tensor, which autograd may not
            # save for the backward of a later training step
            with torch.inference_mode(False):
                return self._build_filter(height, width, per_channel)

        return self.filters.get((height, width, per_channel, self.groups), self.weight, build)

    def _build_filter(self, height: int, width: int, per_channel: bool) -> torch.Tensor:
        return build_spatial_filter(self.weight, self.groups, height, width, per_channel)


def build_spatial_filter(weight: torch.Tensor, groups: int, height: int, width: int,
                         per_channel: bool = False) -> torch.Tensor:
    """The (groups, H, W) filter of a (C, dct_h, dct_w) DCT buffer for a ``height x width`` map, adaptive
    pooling folded in; with ``per_channel``, expanded to (C, H, W)."""
    channels, dct_h, dct_w = weight.shape
    filt = weight[:: channels // groups]  # (G, dct_h, dct_w): the first channel of each run
    if (height, width) != (dct_h, dct_w):
        p_h = adaptive_pool_matrix(dct_h, height).to(filt)  # (dct_h, H)
        p_w = adaptive_pool_matrix(dct_w, width).to(filt)  # (dct_w, W)
        filt = torch.einsum("gij,ih,jw->ghw", filt, p_h, p_w)  # (G, H, W)
    return filt.repeat_interleave(channels // groups, dim=0) if per_channel else filt.contiguous()


def dct_pool(x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """FcaNet's pooled (B, C) vector of ``x`` under the DCT buffer ``weight``. FX keeps this function as one
    node (``torch.fx.wrap``): its filter depends on the map's size, which a symbolic trace does not know."""
    return kernels.pool_weighted(x, build_spatial_filter(weight, groups, x.shape[-2], x.shape[-1]))


torch.fx.wrap("dct_pool")


@register("fca")
class MultiSpectralAttention(ChannelGate):
    """FcaNet block: ``y = x * sigmoid(W2 relu(W1 s))`` with ``s[c] = sum_hw x[c, h, w] D[c, h, w]``.

    ``D`` (buffer ``dct_layer.weight``) splits the channels into ``n`` groups, each weighted by one
    2-D DCT basis picked by ``freq_sel_method`` (``top``/``low``/``bot`` with n in 1..32; frequencies
    are given on a 7x7 grid and scaled to ``dct_h x dct_w``). GAP is the n=1 ``(0, 0)`` special case.
    ``W1``/``W2`` are bias-free linears ``fc.0``/``fc.2`` with reduction ``reduction``. An input of
    another size is adaptively average-pooled to ``dct_h x dct_w`` first, as in the release.
    """

    def __init__(
        self,
        channels: int,
        dct_h: int = 7,
        dct_w: int = 7,
        reduction: int = 16,
        freq_sel_method: str = "top16",
        act_layer: LayerType = "relu",
        gate_layer: LayerType = "sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        freqs_x, freqs_y = freq_indices(freq_sel_method)
        if channels % len(freqs_x):
            raise ValueError(f"FcaNet splits channels into {len(freqs_x)} frequency groups ({freq_sel_method}); "
                             f"channels={channels} is not divisible by {len(freqs_x)}")
        if channels // reduction < 1:
            raise ValueError(f"reduction={reduction} leaves no channels out of {channels}; use reduction <= {channels}")
        self.channels = channels
        self.dct_h, self.dct_w = dct_h, dct_w
        self.freq_sel_method = freq_sel_method
        # frequencies are chosen on a 7x7 grid; (2, 2) on 14x14 is the same pattern as (1, 1) on 7x7
        freqs_x = [u * (dct_h // 7) for u in freqs_x]
        freqs_y = [v * (dct_w // 7) for v in freqs_y]
        factory = {"device": device, "dtype": dtype}
        self.dct_layer = DCTFilter(channels, dct_h, dct_w, freqs_x, freqs_y, **factory)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False, **factory),
            create_act(act_layer),
            nn.Linear(channels // reduction, channels, bias=False, **factory),
        )
        self.gate = create_act(gate_layer)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        # the CPU pools an NCHW map as a per-channel GEMV (one filter per channel: at the DCT size the
        # buffer itself, no copy); everything else reads the G shared filters (fewer bytes, and the
        # CPU's channels_last path needs them)
        if symbolic_tracing():  # FX: one node for the pooling, the excitation as modules
            s = dct_pool(x, self.dct_layer.weight, self.dct_layer.groups)
            return self.gate(self.fc(s))  # (B, C)
        per_channel = x.is_contiguous() and not kernels.squeeze_excite_runs_fused(x)
        filt = self.dct_layer.spatial_filter(x.shape[-2], x.shape[-1], per_channel=per_channel)
        fused = fused_mlp_gate(x, filt, self.fc[0], self.fc[1], self.fc[2], self.gate)
        if fused is not None:
            return fused
        s = kernels.pool_weighted(x, filt)
        s = s.to(param_dtype(self.fc[0], s.dtype))  # (B, C)
        return self.gate(self.fc(s))  # (B, C)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dct=({self.dct_h}, {self.dct_w}), freq_sel_method={self.freq_sel_method!r}"
