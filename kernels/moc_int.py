"""The quantized MoC FFN for decoding: ``zoo::moc_ffn_decode_int`` reads only the selected rows of the
packed integer weights.

A MoC block quantized to ``w4a8`` / ``w8a8`` (:mod:`zoo.blocks.quant`) holds ``gate_proj``, ``up_proj`` and
``down_proj`` as integer layers. The gate runs densely (the selection needs every channel); this op does
the rest for a few tokens (the block calls it while 2 * T * K <= H), reading per token K rows of the
packed up weights and K rows of the transposed down weights instead of all H of each:

    up (int8 x int4/int8 rows of Wu):   u[t, k] = sum_s acc_s * a_scale[t] * up_scale[idx, s]  (+ bias)
    activation:                         v[t, k] = SiLU(gate_sel[t, k]) * u[t, k] * multiplier[idx]
    requantization (per token, int8):   qd, d_scale = quantize_act(v)
    down (rows of Wd^T, one int32
    accumulator per segment of H):      y[t, n] = sum_s acc_s[n] * d_scale[t] * down_scale_t[s, n]  (+ bias)

Operands, in the layout of :mod:`zoo.kernels.int_gemm` (low nibble first, ``nibble - zero`` with zero 8 for
symmetric int4, per-segment fp16/fp32 scales and optional uint8 zero points):

- ``q`` (T, d) int8 and ``a_scale`` (T,) fp32: the tokens as the up projection quantizes them;
- ``gate_sel`` (T, K) and ``idx`` (T, K): each token's selected gate values and channels, ascending;
- ``w_up`` (H, d) int8 or (H, ceil(d/2)) uint8 with ``up_scale`` / ``up_zero`` (H, S_u);
- ``w_down_t`` (H, N) int8 or (H, ceil(N/2)) uint8: Wd (N, H) transposed, integer codes unchanged (see
  :func:`transpose_int_weight`), with ``down_scale_t`` / ``down_zero_t`` (S_d, N), segments of
  ``down_group`` channels of H. In the (N, H) layout a column is N bytes a row apart, one memory sector
  each; transposed, each selected channel is one contiguous row.

The arithmetic is the dense integer path's (``int_linear`` on all H channels, then ``quantize_act`` of the
scattered activation, then ``int_linear`` again): the same int32 accumulators per segment and the same
fp32 epilogue in the same order, segments that no selected channel touches adding zero. So for fp32
tokens the reference equals the block's dense integer path bit for bit (tested). The activation stays in
fp32 between the projections (the dense path rounds it to the tokens' dtype), and the down projection
needs the activation's zeros to stay zero: a block whose ``down_proj`` has an Outlier Suppression+ shift
takes the dense path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .dispatch import kernel_op
from .int_gemm import INT4_SYMMETRIC_ZERO, pack_nibbles, segment_accumulators, unpack_int4, weight_values
from .quant_act import quantize_act

# ---------------------------------------------------------------------------------------------------------
# the transposed down weights
# ---------------------------------------------------------------------------------------------------------
def transpose_int_weight(values: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], bits: int,
                         in_features: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """An integer (N, C) weight (int8, or int4 packed along C) as (C, N) rows: (values_t, scale_t, zero_t).

    The codes are moved, not requantized: ``values_t`` is (C, N) int8 or (C, ceil(N/2)) uint8 packed along N,
    and the per-segment tables (N, S) become (S, N)."""
    n = values.shape[0]
    if bits == 8:
        values_t = values.reshape(n, in_features).t().contiguous()  # (C, N)
    else:
        codes = unpack_int4(values.reshape(n, -1), in_features)  # (N, C) uint8 0..15
        values_t = pack_nibbles(codes.t().contiguous())  # (C, ceil(N/2))
    zero_t = None if zero is None else zero.t().contiguous()
    return values_t, scale.t().contiguous(), zero_t  # scale_t (S, N)


def _check(q, a_scale, gate_sel, idx, w_up, up_scale, up_zero, up_bias, up_bits, up_group, w_down_t, down_scale_t,
           down_zero_t, down_bias, down_bits, down_group, down_multiplier, down_static_scale) -> None:
    """Shapes and dtypes, with errors that say what was expected."""
    if q.dtype != torch.int8 or q.ndim != 2:
        raise ValueError(f"moc_ffn_decode_int: q must be int8 tokens (T, d); got {q.dtype} {tuple(q.shape)}")
    t, d = q.shape
    if tuple(a_scale.shape) != (t,):
        raise ValueError(f"moc_ffn_decode_int: a_scale must be (T,) = ({t},); got {tuple(a_scale.shape)}")
    if idx.ndim != 2 or idx.shape[0] != t or idx.dtype not in (torch.int16, torch.int32, torch.int64):
        raise ValueError(f"moc_ffn_decode_int: idx must be integer (T, K) with T = {t}; got {idx.dtype} "
                         f"{tuple(idx.shape)}")
    if gate_sel.shape != idx.shape or not gate_sel.is_floating_point():
        raise ValueError(f"moc_ffn_decode_int: gate_sel must be float (T, K) = {tuple(idx.shape)} like idx; got "
                         f"{gate_sel.dtype} {tuple(gate_sel.shape)}")
    for name, bits in (("up_bits", up_bits), ("down_bits", down_bits)):
        if bits not in (4, 8):
            raise ValueError(f"moc_ffn_decode_int: {name} must be 4 or 8; got {bits}")
    h = w_up.shape[0]
    want = (torch.int8, d) if up_bits == 8 else (torch.uint8, (d + 1) // 2)
    if w_up.ndim != 2 or (w_up.dtype, w_up.shape[1]) != want:
        raise ValueError(f"moc_ffn_decode_int: {up_bits}-bit w_up for d = {d} is {want[0]} (H, {want[1]}); got "
                         f"{w_up.dtype} {tuple(w_up.shape)}")
    if w_down_t.ndim != 2 or w_down_t.shape[0] != h or w_down_t.dtype != (torch.int8 if down_bits == 8 else torch.uint8):
        raise ValueError(f"moc_ffn_decode_int: w_down_t must be Wd^T with H = {h} rows ({'int8' if down_bits == 8 else 'uint8'}, "
                         f"see transpose_int_weight); got {w_down_t.dtype} {tuple(w_down_t.shape)}")
    for name, group, channels in (("up_group", up_group, d), ("down_group", down_group, h)):
        if group is not None and (group < 1 or channels % group):
            raise ValueError(f"moc_ffn_decode_int: {name}={group} does not divide the {channels} input channels")
    s_up = d // up_group if up_group else 1
    if up_scale.shape not in ((h, 1), (h, s_up)) or (up_zero is not None and up_zero.shape != up_scale.shape):
        raise ValueError(f"moc_ffn_decode_int: up_scale (and up_zero) must be ({h}, 1) or ({h}, {s_up}); got "
                         f"{tuple(up_scale.shape)}")
    n = down_scale_t.shape[1] if down_scale_t.ndim == 2 else -1
    s_down = h // down_group if down_group else 1
    if down_scale_t.ndim != 2 or down_scale_t.shape[0] not in (1, s_down) or \
            (down_zero_t is not None and down_zero_t.shape != down_scale_t.shape):
        raise ValueError(f"moc_ffn_decode_int: down_scale_t (and down_zero_t) must be (1 or {s_down}, N); got "
                         f"{tuple(down_scale_t.shape)}")
    if w_down_t.shape[1] != (n if down_bits == 8 else (n + 1) // 2):
        raise ValueError(f"moc_ffn_decode_int: w_down_t holds {w_down_t.shape[1]} columns, inconsistent with "
                         f"N = {n} outputs at {down_bits} bits")
    if up_bias is not None and tuple(up_bias.shape) != (h,):
        raise ValueError(f"moc_ffn_decode_int: up_bias must be ({h},); got {tuple(up_bias.shape)}")
    if down_bias is not None and tuple(down_bias.shape) != (n,):
        raise ValueError(f"moc_ffn_decode_int: down_bias must be ({n},); got {tuple(down_bias.shape)}")
    if down_multiplier is not None and tuple(down_multiplier.shape) != (h,):
        raise ValueError(f"moc_ffn_decode_int: down_multiplier must be ({h},); got {tuple(down_multiplier.shape)}")
    if down_static_scale is not None and down_static_scale.numel() != 1:
        raise ValueError("moc_ffn_decode_int: down_static_scale holds one value")
    if idx.numel() and not torch.compiler.is_compiling() and (int(idx.min()) < 0 or int(idx.max()) >= h):
        raise ValueError(f"moc_ffn_decode_int: idx must lie in 0..{h - 1}")


# ---------------------------------------------------------------------------------------------------------
# references (exact int32 accumulation; the CPU path)
# ---------------------------------------------------------------------------------------------------------
def moc_int_up_reference(q: torch.Tensor, a_scale: torch.Tensor, gate_sel: torch.Tensor, idx: torch.Tensor,
                         w_up: torch.Tensor, up_scale: torch.Tensor, up_zero: Optional[torch.Tensor],
                         up_bias: Optional[torch.Tensor], up_bits: int, up_group: Optional[int],
                         down_multiplier: Optional[torch.Tensor]) -> torch.Tensor:
    """The down projection's input at the selected channels, fp32 (T, K): SiLU(gate) * u * multiplier."""
    t, d = q.shape
    k = idx.shape[1]
    flat = idx.reshape(-1).long()  # (T*K,)
    g = up_group or d
    segments = d // g
    zero = None if up_zero is None else up_zero.index_select(0, flat)
    packed = w_up.index_select(0, flat)  # (T*K, bytes): the selected rows of Wu
    rows = weight_values(packed.view(t * k, 1, 1, -1), zero, up_bits, d, up_group, torch.float32)  # signed, exact
    rows = rows.view(t, k, segments, g).permute(0, 2, 3, 1).reshape(t * segments, g, k)  # (T*S, g, K)
    x = q.float().view(t * segments, 1, g)  # (T*S, 1, g)
    acc = segment_accumulators([x], [rows], up_bits, g).view(t, segments, k).transpose(1, 2)  # (T, K, S) exact
    scale = up_scale.float().index_select(0, flat).view(t, k, -1)  # (T, K, 1 or S)
    terms = acc.mul_(a_scale[:, None, None]).mul_(scale)  # (T, K, S): acc * a_scale * w_scale
    u = torch.zeros(t, k, dtype=torch.float32, device=q.device)
    for s in range(acc.shape[2]):  # summed in segment order, as int_linear's epilogue
        u += terms[..., s]
    if up_bias is not None:
        u += up_bias.float()[flat].view(t, k)
    v = F.silu(gate_sel.float()) * u
    if down_multiplier is not None:
        v = v * down_multiplier.float()[flat].view(t, k)
    return v


def moc_int_down_reference(qd: torch.Tensor, d_scale: torch.Tensor, idx: torch.Tensor, w_down_t: torch.Tensor,
                           down_scale_t: torch.Tensor, down_zero_t: Optional[torch.Tensor],
                           down_bias: Optional[torch.Tensor], down_bits: int, down_group: Optional[int],
                           out_features: int) -> torch.Tensor:
    """y (T, N) fp32 from the int8 activation (T, K) at the selected channels and rows of Wd^T."""
    t, k = idx.shape
    h, n = w_down_t.shape[0], out_features
    flat = idx.reshape(-1).long()  # (T*K,)
    segments = h // (down_group or h)  # int32 accumulators per token: one per group of H
    segment = flat // (down_group or h)  # (T*K,)
    table_row = segment if down_scale_t.shape[0] > 1 else torch.zeros_like(segment)  # (1, N) tables: shared
    packed = w_down_t.index_select(0, flat)  # (T*K, bytes): the selected rows of Wd^T
    dtype = torch.float32 if segments == 1 else torch.int32  # a float GEMV, or int32 sums per segment (below)
    if down_bits == 8:
        rows = packed.to(dtype)  # (T*K, N)
    else:  # nibble - zero, the zero point of the row's segment for each output n
        zero = INT4_SYMMETRIC_ZERO if down_zero_t is None else down_zero_t.index_select(0, table_row).to(dtype)
        rows = unpack_int4(packed, n, dtype) - zero  # (T*K, N)
    if segments == 1:  # one accumulator per token: a GEMV of the K selected rows, exact (segment_accumulators)
        acc = segment_accumulators([qd.float().view(t, 1, k)], [rows.view(t, k, n)], down_bits, k)  # (T, 1, N)
    else:  # int32 sums per (token, segment), the selected rows added into their segment's accumulator
        products = rows * qd.to(torch.int32).reshape(-1, 1)  # (T*K, N)
        acc = torch.zeros(t * segments, n, dtype=torch.int32, device=qd.device)  # (T*S, N)
        cell = torch.arange(t, device=qd.device).repeat_interleave(k) * segments + segment  # (T*K,): row t*S + s
        acc.index_add_(0, cell, products)  # exact
    scale = down_scale_t.float().expand(segments, n)  # (S, N)
    terms = acc.view(t, segments, n).float().mul_(d_scale[:, None, None]).mul_(scale)  # (T, S, N)
    y = torch.zeros(t, n, dtype=torch.float32, device=qd.device)
    for s in range(segments):  # summed in segment order; untouched segments add zero
        y += terms[:, s]
    if down_bias is not None:
        y += down_bias.float()
    return y


_up = kernel_op("moc_int_up")(moc_int_up_reference)
_down = kernel_op("moc_int_down")(moc_int_down_reference)
_up.register_triton_lazy("zoo.kernels._triton_moc_int", "moc_int_up")  # imported on first launch
_down.register_triton_lazy("zoo.kernels._triton_moc_int", "moc_int_down")


def _decode_int(q, a_scale, gate_sel, idx, w_up, up_scale, up_zero, up_bias, up_bits, up_group, w_down_t,
                down_scale_t, down_zero_t, down_bias, down_bits, down_group, down_multiplier, down_static_scale,
                out_dtype):
    n = down_scale_t.shape[1]
    v = _up(q, a_scale, gate_sel, idx, w_up, up_scale, up_zero, up_bias, up_bits, up_group, down_multiplier)
    qd, d_scale = quantize_act(v, static_scale=down_static_scale)  # (T, K) int8: the zeros elsewhere stay 0
    y = _down(qd, d_scale, idx, w_down_t, down_scale_t, down_zero_t, down_bias, down_bits, down_group, n)
    return y.to(out_dtype)


@torch.library.custom_op("zoo::moc_ffn_decode_int", mutates_args=())
def _decode_int_op(q: torch.Tensor, a_scale: torch.Tensor, gate_sel: torch.Tensor, idx: torch.Tensor,
                   w_up: torch.Tensor, up_scale: torch.Tensor, up_zero: Optional[torch.Tensor],
                   up_bias: Optional[torch.Tensor], up_bits: int, up_group: Optional[int], w_down_t: torch.Tensor,
                   down_scale_t: torch.Tensor, down_zero_t: Optional[torch.Tensor], down_bias: Optional[torch.Tensor],
                   down_bits: int, down_group: Optional[int], down_multiplier: Optional[torch.Tensor],
                   down_static_scale: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    tensors = [None if a is None else a.contiguous() for a in (q, a_scale, gate_sel, idx, w_up, up_scale, up_zero,
                                                              up_bias)]
    down = [None if a is None else a.contiguous() for a in (w_down_t, down_scale_t, down_zero_t, down_bias)]
    return _decode_int(*tensors, up_bits, up_group, *down, down_bits, down_group, down_multiplier,
                       down_static_scale, out_dtype)


@_decode_int_op.register_fake
def _(q, a_scale, gate_sel, idx, w_up, up_scale, up_zero, up_bias, up_bits, up_group, w_down_t, down_scale_t,
      down_zero_t, down_bias, down_bits, down_group, down_multiplier, down_static_scale, out_dtype):
    return q.new_empty((q.shape[0], down_scale_t.shape[1]), dtype=out_dtype)


def moc_ffn_decode_int(q: torch.Tensor, a_scale: torch.Tensor, gate_sel: torch.Tensor, idx: torch.Tensor,
                       w_up: torch.Tensor, up_scale: torch.Tensor, up_zero: Optional[torch.Tensor],
                       up_bias: Optional[torch.Tensor], up_bits: int, up_group: Optional[int], w_down_t: torch.Tensor,
                       down_scale_t: torch.Tensor, down_zero_t: Optional[torch.Tensor],
                       down_bias: Optional[torch.Tensor], down_bits: int, down_group: Optional[int],
                       down_multiplier: Optional[torch.Tensor] = None, down_static_scale: Optional[torch.Tensor] = None,
                       out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The quantized MoC FFN's up and down projections for a few tokens: y (T, N); see the module docstring.

    Inference only (integer layers have no backward). ``idx`` must be ascending per token (the down
    kernel closes a segment's accumulator when the next channel lies in another segment)."""
    _check(q, a_scale, gate_sel, idx, w_up, up_scale, up_zero, up_bias, up_bits, up_group, w_down_t, down_scale_t,
           down_zero_t, down_bias, down_bits, down_group, down_multiplier, down_static_scale)
    if idx.shape[1] > 1 and not torch.compiler.is_compiling() and not bool((idx[:, 1:] > idx[:, :-1]).all()):
        raise ValueError("moc_ffn_decode_int: idx must be strictly ascending per token (sort the selection)")
    args = (q, a_scale, gate_sel, idx, w_up, up_scale, up_zero, up_bias, up_bits, up_group, w_down_t, down_scale_t,
            down_zero_t, down_bias, down_bits, down_group, down_multiplier, down_static_scale, out_dtype)
    if torch.compiler.is_compiling():
        return _decode_int_op(*args)
    return _decode_int(*args)  # skip the custom op's Python layers in eager decoding
