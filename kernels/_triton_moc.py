"""Triton kernels of ``zoo::moc_ffn`` (the Mixture-of-Channels FFN), its backward, and ``zoo::moc_ffn_decode``.

Imported lazily, on the first launch, by :mod:`zoo.kernels.moc`. Notation: x (T, d) tokens, Wg, Wu (H, d),
Wd (d, H), K selected channels per token, idx (T, K).

Forward, four launches:

1. ``_gate_kernel``: the dense gate GEMM G = x Wg^T into a transient fp32 (T, H) buffer (``tl.dot`` tiles).
   It is never saved: the selection needs all of G, the backward does not.
2. ``_select_kernel``: exact row-wise top-K by a radix-style bisection instead of a sort. Each fp32 gate is
   mapped to an int32 key with the same order (flip the magnitude bits of negatives); 32 halvings of the
   int32 range, each counting ``key >= mid`` over the row, find the K-th largest key theta exactly.
   The selection is every key above theta plus the first (by channel) of those equal to it, so ties are
   broken deterministically and exactly K are kept. A final pass compacts them with running cumsums, so
   ``idx`` comes out ascending by channel. Rows are read in BLOCK_H chunks (34 passes, L2-resident),
   so any H works. A top-K in the GEMM epilogue (iterative max) would cost K passes over the tile and
   needs the whole row in registers; the bisection's cost does not grow with K.
3. ``_gather_dot_kernel``: up_sel[t, k] = x[t] . Wu[idx[t, k]] (the selected rows of Wu only) and, in its
   epilogue, act = SiLU(gate_sel) * up_sel.
4. ``_gather_sum_kernel``: y[t] = sum_k act[t, k] Wd[:, idx[t, k]] (the selected columns of Wd only).

Steps 3 and 4 read K rows of Wu and K columns of Wd per token. They run on the FMA units (every token
gathers different rows). Decode (``moc_ffn_decode``, few tokens, inference) runs the same four steps with
step 4 reading rows of Wd^T (H, d), which the block keeps: a column of the (d, H) layout is d scattered
elements, one memory sector each, so only the transposed copy turns K/H of the columns into K/H of the
traffic.

Backward (from x, idx, gate_sel, up_sel): ``_gather_dot_kernel`` again for d_act[t, k] = grad_y[t] .
Wd[:, idx[t, k]] with the SwiGLU derivative in its epilogue (d_gate, d_up, and the recomputed act);
``_gather_sum_kernel`` for grad_x = sum_k d_gate Wg[idx] + d_up Wu[idx]; and ``_channel_grad_kernel``
for the weight gradients: the (t, k) pairs are grouped by channel on the host (a stable argsort, as in
MoE token grouping), and one program per (channel, d-block) sums its tokens' rows in a fixed order:
deterministic, no atomics.

Sums are fp32: the gate GEMM feeds 16-bit operands to the tensor cores as they are (their products are
exact in fp32; fp32 inputs follow ``allow_tf32``), the gathers up-cast on load. Results are written in
fp32 and rounded by PyTorch (the interpreter's in-kernel fp32 -> bf16 cast truncates). float64 inputs
take the reference. Block sizes are fixed per machine (module attributes below), not autotuned: they have
not been timed on a GPU yet (none was lent while writing this).

What a GPU run should look at next: the gathers run on the FMA units, so at training sizes the dense
tensor-core GEMMs (U = x Wu^T, then a gather; the down projection from the scattered activation) may well
be faster than steps 3 and 4 and their backward twins; the selection's 34 passes over G should be
weighed against the gate GEMM.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import moc  # the references (no import cycle: kernels.moc imports this module lazily)
from ._triton_common import interpreter_checked

_INTERPRET = interpreter_checked()

# Module attributes so the tests can shrink them and exercise every loop and chunk on tiny shapes.
GEMM_BLOCKS = (32, 32, 32) if _INTERPRET else (64, 64, 32)  # (BLOCK_T, BLOCK_H, BLOCK_D) of the gate GEMM
SELECT_BLOCKS = (32, 64) if _INTERPRET else (4, 1024)  # (BLOCK_T, BLOCK_H) of the selection
GATHER_BLOCKS = (32, 16, 32) if _INTERPRET else (16, 16, 32)  # (BLOCK_T, BLOCK_K, BLOCK_D) of the gathers
CHANNEL_BLOCKS = (32, 32) if _INTERPRET else (32, 128)  # (BLOCK_E, BLOCK_D) of the weight gradients


_16BIT = (torch.float16, torch.bfloat16)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _fp32_precision() -> str:
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


# ----------------------------------------------------------------------------------------------
# forward 1: G = x Wg^T (T, H), fp32
# ----------------------------------------------------------------------------------------------
@triton.jit
def _gate_kernel(x_ptr, wg_ptr, g_ptr, T, H, D, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    n_hblocks = tl.cdiv(H, BLOCK_H)
    offs_t = (pid // n_hblocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_h = (pid % n_hblocks) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_t, mask_h = offs_t < T, offs_h < H
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        a = tl.load(x_ptr + offs_t[:, None].to(tl.int64) * D + offs_d[None, :],
                    mask=mask_t[:, None] & mask_d[None, :], other=0.0)
        b = tl.load(wg_ptr + offs_h[None, :].to(tl.int64) * D + offs_d[:, None],
                    mask=mask_d[:, None] & mask_h[None, :], other=0.0)  # (BLOCK_D, BLOCK_H) of Wg^T
        if DOT_FP32:  # the interpreter's bf16 tl.dot is wrong; the upcast is exact
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc=acc, input_precision=PRECISION)  # 16-bit operands: tensor cores, fp32 sums
    tl.store(g_ptr + offs_t[:, None].to(tl.int64) * H + offs_h[None, :], acc,
             mask=mask_t[:, None] & mask_h[None, :])


# ----------------------------------------------------------------------------------------------
# forward 2: exact top-K per row of G by bisection on order-preserving int32 keys
# ----------------------------------------------------------------------------------------------
@triton.jit
def _order_key(g):
    """int64 keys with the order of the fp32 values g (negatives: magnitude bits flipped)."""
    bits = g.to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _select_kernel(g_ptr, idx_ptr, sel_ptr, T, H, K, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    rows = offs_t[:, None].to(tl.int64) * H
    lo = tl.full((BLOCK_T,), -2147483648, tl.int64)  # count(key >= lo) = H >= K
    hi = tl.full((BLOCK_T,), 2147483648, tl.int64)  # count(key >= hi) = 0 < K
    for _ in range(32):  # hi - lo halves from 2^32 to 1: lo is then the K-th largest key
        mid = (lo + hi) >> 1
        count = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            valid = mask_t[:, None] & (offs_h < H)[None, :]
            key = _order_key(tl.load(g_ptr + rows + offs_h[None, :], mask=valid, other=0.0))
            count += tl.sum((valid & (key >= mid[:, None])).to(tl.int32), axis=1)
        enough = count >= K
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid)
    # keys above theta = lo are all kept; of those equal to it, the first (K - above) by channel
    above = tl.zeros((BLOCK_T,), dtype=tl.int32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        valid = mask_t[:, None] & (offs_h < H)[None, :]
        key = _order_key(tl.load(g_ptr + rows + offs_h[None, :], mask=valid, other=0.0))
        above += tl.sum((valid & (key > lo[:, None])).to(tl.int32), axis=1)
    ties_wanted = K - above
    kept = tl.zeros((BLOCK_T,), dtype=tl.int32)
    ties = tl.zeros((BLOCK_T,), dtype=tl.int32)
    out_rows = offs_t[:, None].to(tl.int64) * K
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        valid = mask_t[:, None] & (offs_h < H)[None, :]
        g = tl.load(g_ptr + rows + offs_h[None, :], mask=valid, other=0.0)
        key = _order_key(g)
        tie = (valid & (key == lo[:, None])).to(tl.int32)
        tie_rank = ties[:, None] + tl.cumsum(tie, axis=1)  # 1-based among this row's ties
        sel = (valid & (key > lo[:, None])) | ((tie == 1) & (tie_rank <= ties_wanted[:, None]))
        pos = kept[:, None] + tl.cumsum(sel.to(tl.int32), axis=1) - 1  # slot in the row's K outputs
        tl.store(idx_ptr + out_rows + pos, (offs_h[None, :] + tl.zeros_like(pos)).to(idx_ptr.dtype.element_ty),
                 mask=sel)
        tl.store(sel_ptr + out_rows + pos, g, mask=sel)
        kept += tl.sum(sel.to(tl.int32), axis=1)
        ties += tl.sum(tie, axis=1)


# ----------------------------------------------------------------------------------------------
# gathers: out[t, k] = src[t] . W[idx[t, k]] (rows or columns), with the SwiGLU epilogues
# ----------------------------------------------------------------------------------------------
@triton.jit
def _silu_parts(g):
    s = 1.0 / (1.0 + tl.exp(-g))
    return g * s, s * (1.0 + g * (1.0 - s))  # SiLU(g), SiLU'(g)


@triton.jit
def _gather_dot_kernel(src_ptr, w_ptr, idx_ptr, gsel_ptr, usel_ptr, out0_ptr, out1_ptr, out2_ptr, T, K, D,
                       STRIDE_H, STRIDE_D, BACKWARD: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Forward (BACKWARD=0): out0 = up_sel = x . Wu[idx], out1 = act = SiLU(gate_sel) * up_sel.
    Backward (BACKWARD=1): d_act = grad_y . Wd[:, idx]; out0 = d_gate, out1 = d_up, out2 = act."""
    pid = tl.program_id(0)
    n_kblocks = tl.cdiv(K, BLOCK_K)
    offs_t = (pid // n_kblocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_k = (pid % n_kblocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_tk = (offs_t < T)[:, None] & (offs_k < K)[None, :]
    tk = offs_t[:, None].to(tl.int64) * K + offs_k[None, :]
    chan = tl.load(idx_ptr + tk, mask=mask_tk, other=0).to(tl.int64)  # (BLOCK_T, BLOCK_K)
    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        s = tl.load(src_ptr + offs_t[:, None].to(tl.int64) * D + offs_d[None, :],
                    mask=(offs_t < T)[:, None] & mask_d[None, :], other=0.0).to(tl.float32)  # (BLOCK_T, BLOCK_D)
        w = tl.load(w_ptr + chan[:, :, None] * STRIDE_H + offs_d[None, None, :] * STRIDE_D,
                    mask=mask_tk[:, :, None] & mask_d[None, None, :], other=0.0).to(tl.float32)
        acc += tl.sum(s[:, None, :] * w, axis=2)
    g = tl.load(gsel_ptr + tk, mask=mask_tk, other=0.0).to(tl.float32)
    silu, silu_grad = _silu_parts(g)
    if BACKWARD:
        u = tl.load(usel_ptr + tk, mask=mask_tk, other=0.0).to(tl.float32)
        tl.store(out0_ptr + tk, acc * u * silu_grad, mask=mask_tk)
        tl.store(out1_ptr + tk, acc * silu, mask=mask_tk)
        tl.store(out2_ptr + tk, silu * u, mask=mask_tk)
    else:
        tl.store(out0_ptr + tk, acc, mask=mask_tk)
        tl.store(out1_ptr + tk, silu * acc, mask=mask_tk)


@triton.jit
def _gather_sum_kernel(a_ptr, w_ptr, a2_ptr, w2_ptr, idx_ptr, out_ptr, T, K, D, STRIDE_H, STRIDE_D,
                       HAS_SECOND: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """out[t, :] = sum_k a[t, k] W[idx[t, k]] (+ a2[t, k] W2[idx[t, k]]); W2 has W's strides."""
    pid = tl.program_id(0)
    n_dblocks = tl.cdiv(D, BLOCK_D)
    offs_t = (pid // n_dblocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = (pid % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_t, mask_d = offs_t < T, offs_d < D
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_tk = mask_t[:, None] & (offs_k < K)[None, :]
        tk = offs_t[:, None].to(tl.int64) * K + offs_k[None, :]
        chan = tl.load(idx_ptr + tk, mask=mask_tk, other=0).to(tl.int64)
        where = chan[:, :, None] * STRIDE_H + offs_d[None, None, :] * STRIDE_D  # (BLOCK_T, BLOCK_K, BLOCK_D)
        mask3 = mask_tk[:, :, None] & mask_d[None, None, :]
        a = tl.load(a_ptr + tk, mask=mask_tk, other=0.0)
        acc += tl.sum(a[:, :, None] * tl.load(w_ptr + where, mask=mask3, other=0.0).to(tl.float32), axis=1)
        if HAS_SECOND:
            a2 = tl.load(a2_ptr + tk, mask=mask_tk, other=0.0)
            acc += tl.sum(a2[:, :, None] * tl.load(w2_ptr + where, mask=mask3, other=0.0).to(tl.float32), axis=1)
    tl.store(out_ptr + offs_t[:, None].to(tl.int64) * D + offs_d[None, :], acc,
             mask=mask_t[:, None] & mask_d[None, :])


# ----------------------------------------------------------------------------------------------
# backward, weights: per channel, the sum over the tokens that selected it (grouped on the host)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _channel_grad_kernel(x_ptr, gy_ptr, dgate_ptr, dup_ptr, act_ptr, order_ptr, offsets_ptr,
                         gwg_ptr, gwu_ptr, gwd_ptr, K, D, H, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    h = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    start = tl.load(offsets_ptr + h)
    end = tl.load(offsets_ptr + h + 1)
    acc_g = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_d = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        pair = tl.load(order_ptr + offs_e, mask=mask_e, other=0)  # flat t * K + k, in token order
        tok = (pair // K).to(tl.int64)
        mask = mask_e[:, None] & mask_d[None, :]
        xr = tl.load(x_ptr + tok[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        gr = tl.load(gy_ptr + tok[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc_g += tl.sum(tl.load(dgate_ptr + pair, mask=mask_e, other=0.0)[:, None] * xr, axis=0)
        acc_u += tl.sum(tl.load(dup_ptr + pair, mask=mask_e, other=0.0)[:, None] * xr, axis=0)
        acc_d += tl.sum(tl.load(act_ptr + pair, mask=mask_e, other=0.0)[:, None] * gr, axis=0)
    row = h.to(tl.int64) * D + offs_d
    tl.store(gwg_ptr + row, acc_g, mask=mask_d)
    tl.store(gwu_ptr + row, acc_u, mask=mask_d)
    tl.store(gwd_ptr + offs_d.to(tl.int64) * H + h, acc_d, mask=mask_d)  # Wd is (d, H)


# ----------------------------------------------------------------------------------------------
# host wrappers
# ----------------------------------------------------------------------------------------------
def select_top_k(gate: torch.Tensor, top_k: int, index_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, H) fp32 gates -> idx (T, K) ascending by channel, and the selected fp32 gates (T, K)."""
    t, h = gate.shape
    idx = torch.empty(t, top_k, dtype=index_dtype, device=gate.device)
    sel = torch.empty(t, top_k, dtype=torch.float32, device=gate.device)
    block_t, block_h = SELECT_BLOCKS
    block_h = min(block_h, _pow2(h))
    if t:
        _select_kernel[(triton.cdiv(t, block_t),)](gate, idx, sel, t, h, top_k, BLOCK_T=block_t, BLOCK_H=block_h)
    return idx, sel


def _gate_and_select(x: torch.Tensor, w_gate: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward steps 1-2: idx (T, K) ascending and the selected fp32 gates (T, K); G lives only in here."""
    t, d = x.shape
    h = w_gate.shape[0]
    gate = torch.empty(t, h, dtype=torch.float32, device=x.device)  # (T, H) transient
    block_t, block_h, block_d = GEMM_BLOCKS
    if t:
        _gate_kernel[(triton.cdiv(t, block_t) * triton.cdiv(h, block_h),)](
            x, w_gate, gate, t, h, d, DOT_FP32=_INTERPRET and x.dtype in _16BIT,
            PRECISION="ieee" if x.dtype in _16BIT else _fp32_precision(), BLOCK_T=block_t, BLOCK_H=block_h,
            BLOCK_D=block_d)
    return select_top_k(gate, top_k, moc.index_dtype(h))


def _gather_dot(src, w, idx, gate_sel, up_sel, outs, stride_h, stride_d, backward):
    t, k = idx.shape
    block_t, block_k, block_d = GATHER_BLOCKS
    grid = (triton.cdiv(t, block_t) * triton.cdiv(k, block_k),)
    _gather_dot_kernel[grid](src, w, idx, gate_sel, up_sel, *outs, t, k, src.shape[1], stride_h, stride_d,
                             BACKWARD=backward, BLOCK_T=block_t, BLOCK_K=block_k, BLOCK_D=block_d)


def _gather_sum(a, w, idx, out, stride_h, stride_d, a2=None, w2=None):
    t, k = idx.shape
    d = out.shape[1]
    block_t, block_k, block_d = GATHER_BLOCKS
    grid = (triton.cdiv(t, block_t) * triton.cdiv(d, block_d),)
    _gather_sum_kernel[grid](a, w, a if a2 is None else a2, w if w2 is None else w2, idx, out, t, k, d,
                             stride_h, stride_d, HAS_SECOND=a2 is not None, BLOCK_T=block_t, BLOCK_K=block_k,
                             BLOCK_D=block_d)


def moc_ffn(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, top_k: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, idx, gate_sel, up_sel); see :func:`zoo.kernels.moc.moc_ffn_reference`."""
    if x.dtype == torch.float64:
        return moc.moc_ffn_reference(x, w_gate, w_up, w_down, top_k)
    x, w_gate, w_up, w_down = (a.contiguous() for a in (x, w_gate, w_up, w_down))
    t, d = x.shape
    h = w_gate.shape[0]
    f32 = {"dtype": torch.float32, "device": x.device}
    idx, gate_sel = _gate_and_select(x, w_gate, top_k)
    up_sel, act = torch.empty(t, top_k, **f32), torch.empty(t, top_k, **f32)
    y = torch.empty(t, d, **f32)
    if t:
        _gather_dot(x, w_up, idx, gate_sel, gate_sel, (up_sel, act, act), d, 1, backward=False)  # rows of Wu
        _gather_sum(act, w_down, idx, y, 1, h)  # columns of Wd: element (j, h) at j * H + h
    return y.to(x.dtype), idx, gate_sel.to(x.dtype), up_sel.to(x.dtype)


def moc_ffn_backward(grad_y: torch.Tensor, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                     w_down: torch.Tensor, idx: torch.Tensor, gate_sel: torch.Tensor, up_sel: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (x, w_gate, w_up, w_down); see :func:`zoo.kernels.moc.moc_ffn_backward_reference`."""
    if x.dtype == torch.float64:
        return moc.moc_ffn_backward_reference(grad_y, x, w_gate, w_up, w_down, idx, gate_sel, up_sel)
    tensors = (grad_y, x, w_gate, w_up, w_down, idx, gate_sel, up_sel)
    grad_y, x, w_gate, w_up, w_down, idx, gate_sel, up_sel = (a.contiguous() for a in tensors)
    t, d = x.shape
    h, k = w_gate.shape[0], idx.shape[1]
    f32 = {"dtype": torch.float32, "device": x.device}
    d_gate, d_up, act = (torch.empty(t, k, **f32) for _ in range(3))
    grad_x = torch.empty(t, d, **f32)
    grad_wg, grad_wu, grad_wd = torch.empty(h, d, **f32), torch.empty(h, d, **f32), torch.empty(d, h, **f32)
    if t:
        _gather_dot(grad_y, w_down, idx, gate_sel, up_sel, (d_gate, d_up, act), 1, h, backward=True)
        _gather_sum(d_gate, w_gate, idx, grad_x, d, 1, a2=d_up, w2=w_up)
    # group the (t, k) pairs by channel: a stable sort keeps each channel's tokens in order (deterministic)
    flat = idx.reshape(-1).long()  # (T*K,)
    order = torch.argsort(flat, stable=True)
    offsets = torch.zeros(h + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = torch.bincount(flat, minlength=h).cumsum(0)
    block_e, block_d = CHANNEL_BLOCKS
    block_d = min(block_d, _pow2(d))
    _channel_grad_kernel[(h, triton.cdiv(d, block_d))](
        x, grad_y, d_gate, d_up, act, order, offsets, grad_wg, grad_wu, grad_wd, k, d, h,
        BLOCK_E=block_e, BLOCK_D=block_d)
    return grad_x.to(x.dtype), grad_wg.to(w_gate.dtype), grad_wu.to(w_up.dtype), grad_wd.to(w_down.dtype)


def moc_ffn_decode(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down_t: torch.Tensor,
                   top_k: int) -> torch.Tensor:
    """y (T, d) for a few tokens, reading K rows of Wu and of Wd^T (H, d) per token;
    see :func:`zoo.kernels.moc.moc_ffn_decode_reference`."""
    if x.dtype == torch.float64:
        return moc.moc_ffn_decode_reference(x, w_gate, w_up, w_down_t, top_k)
    x, w_gate, w_up, w_down_t = (a.contiguous() for a in (x, w_gate, w_up, w_down_t))
    t, d = x.shape
    f32 = {"dtype": torch.float32, "device": x.device}
    idx, gate_sel = _gate_and_select(x, w_gate, top_k)
    up_sel, act = torch.empty(t, top_k, **f32), torch.empty(t, top_k, **f32)
    y = torch.empty(t, d, **f32)
    if t:
        _gather_dot(x, w_up, idx, gate_sel, gate_sel, (up_sel, act, act), d, 1, backward=False)
        _gather_sum(act, w_down_t, idx, y, d, 1)  # contiguous rows of Wd^T
    return y.to(x.dtype)
