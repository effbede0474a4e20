"""The Mixture-of-Channels FFN (MoC, 2025) as custom ops: ``zoo::moc_ffn`` and ``zoo::moc_ffn_backward``.

SwiGLU with a per-token top-K over the gate's channels. For tokens x (T, d), weights in nn.Linear layout
``w_gate``, ``w_up`` (H, d) and ``w_down`` (d, H):

    G = x Wg^T                                   (T, H), computed densely: the selection needs all of it
    idx = top-K of G by value, per token         (T, K)
    a = SiLU(G[idx]) * U[idx],  U = x Wu^T       (T, K), U only on the selected channels
    y = sum_k a_k Wd[:, idx_k]                   (T, d)

Only channels in ``idx`` carry gradient (the selection itself is piecewise constant). The forward
returns ``(y, idx, gate_sel, up_sel)``; the autograd formula saves x, ``idx`` (int16 when H < 32768,
else int32) and the selected gate and up values (T x K each) and recomputes the rest, so no dense
T x H buffer is kept for the backward.

Reference (the CPU path): which formulation wins depends on how many tokens there are.

- Many tokens (training, prefill): the selection is a sparse (T, H) pattern with K entries per row. The
  products that only matter on it run as sparse kernels (CSR, ``torch.sparse``; MKL): U and
  grad(SiLU(G) * U) only on the selected channels (``sampled_addmm``: T * K dot products), y and grad x
  from the sparse activation or its gradient (CSR x dense). They do K / H of a GEMM's work at a few
  times its cost per flop, so each is used only below its measured break-even density
  (:data:`SAMPLED_MAX_DENSITY`, :data:`CSR_MATMUL_MAX_DENSITY`); above it, dense GEMMs plus a gather
  or a scatter. The weight gradients ((H, d) and (d, H) outputs) are always BLAS GEMMs over a transient
  zero-filled (T, H) buffer: sparse kernels would need the pattern transposed (a sort of T * K
  indices), which costs more than it saves. A gather formulation (index the K weight rows per token)
  would materialize (T, K, d), T * K / H copies of the matrix, and loses by far. The per-token
  selection is NumPy's ``partition`` (see :func:`top_k_channels`), ~3x cheaper than ``torch.topk``.
  Without MKL (:data:`SPARSE_CPU`) or for other dtypes, only the dense formulation runs.
- Few tokens (decode, T <= ``DECODE_TOKENS``): only the selected rows of Wu and columns of Wd are read.
  For inference, ``zoo::moc_ffn_decode`` takes Wd^T (H, d), so each selected column is a contiguous row
  (the block keeps that transposed copy while it runs without autograd).

16-bit inputs are computed in fp32 (as the Triton kernels accumulate) and rounded at the end; the
selection is made on the fp32 gate.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .dispatch import eager_inference, kernel_op

DECODE_TOKENS = 16  # at most this many tokens take the gather (decode) formulation
SPARSE_CPU = torch.backends.mkl.is_available()  # CSR kernels for many tokens; dense GEMMs without MKL
# The sparse kernels win below these fractions K / H (measured on x86 with MKL at T = 2048, d = 512,
# H = 1368: at K = H/8 sampled products take 0.6x of the GEMM + gather, CSR x dense 0.85x of the GEMM;
# at K = H/6 the CSR product already loses, at K = H/4 both lose)
SAMPLED_MAX_DENSITY = 1 / 6
CSR_MATMUL_MAX_DENSITY = 1 / 8
_16BIT = (torch.float16, torch.bfloat16)


def index_dtype(hidden: int) -> torch.dtype:
    """The narrowest integer type that holds channel indices below ``hidden``."""
    return torch.int16 if hidden < 32768 else torch.int32


def _check(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, top_k: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"moc_ffn expects tokens (T, d); got shape {tuple(x.shape)} (flatten the leading dims)")
    t, d = x.shape
    if w_gate.ndim != 2 or w_gate.shape[1] != d:
        raise ValueError(f"moc_ffn: w_gate must be (H, d) with d = {d}; got {tuple(w_gate.shape)}")
    h = w_gate.shape[0]
    if tuple(w_up.shape) != (h, d):
        raise ValueError(f"moc_ffn: w_up must be (H, d) = {(h, d)} like w_gate; got {tuple(w_up.shape)}")
    if tuple(w_down.shape) != (d, h):
        raise ValueError(f"moc_ffn: w_down must be (d, H) = {(d, h)} (nn.Linear layout); got {tuple(w_down.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= h:
        raise ValueError(f"moc_ffn: top_k must be an int in 1..{h} (the hidden width); got {top_k!r}")
    if not (x.dtype == w_gate.dtype == w_up.dtype == w_down.dtype):
        raise ValueError(f"moc_ffn: x and the weights must share a dtype; got x {x.dtype}, weights "
                         f"{w_gate.dtype}/{w_up.dtype}/{w_down.dtype} (cast the weights to x's dtype)")
    if not x.is_floating_point():
        raise ValueError(f"moc_ffn: x must be floating point; got {x.dtype}")


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _16BIT else dtype


def top_k_channels(gate: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of each row's ``top_k`` largest gates, (T, K) each.

    On the CPU, ``torch.topk`` (a per-row ``nth_element`` over (value, index) pairs) costs more than a GEMM
    of the FFN. NumPy's ``partition`` finds each row's K-th largest value theta several times faster, and
    ``flatnonzero(G >= theta)`` lists the chosen channels in ascending order, exactly K per row unless
    theta ties (or is NaN). Ties, NaNs and other devices take ``torch.topk``.
    """
    t, h = gate.shape
    if gate.device.type == "cpu" and gate.dtype in (torch.float32, torch.float64) and top_k < h and t > 0:
        import numpy as np

        values = gate.detach().numpy()  # (T, H), a view
        theta = np.partition(values, h - top_k, axis=1)[:, h - top_k:h - top_k + 1]  # (T, 1): K-th largest
        flat = np.flatnonzero(values >= theta)  # (N,) = row * H + channel, row-major
        if flat.size == t * top_k:  # no ties at theta: exactly K per row
            idx = torch.from_numpy(flat.reshape(t, top_k) % h)  # (T, K) ascending
            return gate.gather(1, idx), idx
    return gate.topk(top_k, dim=1, sorted=False)


def _sparse_kernels(x: torch.Tensor, top_k: int, hidden: int) -> tuple[bool, bool]:
    """Whether (the sampled products, the CSR x dense products) of the many-token formulation beat their
    dense GEMMs: fp32/fp64 math on a CPU with MKL, K / H at most the measured break-even density."""
    if not (SPARSE_CPU and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.shape[0] > DECODE_TOKENS):
        return False, False
    return top_k <= SAMPLED_MAX_DENSITY * hidden, top_k <= CSR_MATMUL_MAX_DENSITY * hidden


def _csr(idx: torch.Tensor, values: torch.Tensor, hidden: int) -> torch.Tensor:
    """The (T, H) sparse matrix with ``values`` (T, K) at the channels ``idx`` (T, K) of each row (distinct
    per row; MKL's products and ``sampled_addmm`` do not need them sorted)."""
    t, k = idx.shape
    rows = torch.arange(0, t * k + 1, k, device=idx.device)  # (T + 1,): exactly K entries per row
    with warnings.catch_warnings():  # torch's once-per-process "sparse CSR is in beta" note
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(rows, idx.reshape(-1), values.reshape(-1), (t, hidden),
                                       check_invariants=False)


def _sampled_products(pattern: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a @ b)`` at the K entries per row of the CSR ``pattern`` (T, H), as (T, K): T * K dot products."""
    t = pattern.shape[0]
    return torch.sparse.sampled_addmm(pattern, a, b, beta=0.0).values().view(t, -1)  # (T, K)


def silu_grad(g: torch.Tensor) -> torch.Tensor:
    """d SiLU(g) / dg = sigmoid(g) * (1 + g * (1 - sigmoid(g)))."""
    s = torch.sigmoid(g)
    return s * (1 + g * (1 - s))


# --------------------------------------------------------------------------------------------------
# references (plain PyTorch; the CPU path)
# --------------------------------------------------------------------------------------------------
def moc_ffn_reference(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                      top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, d) tokens -> (y (T, d), idx (T, K), gate_sel (T, K), up_sel (T, K)); see the module docstring."""
    t, h = x.shape[0], w_gate.shape[0]
    f = _math_dtype(x.dtype)
    xf, wg, wu, wd = x.to(f), w_gate.to(f), w_up.to(f), w_down.to(f)
    if t <= DECODE_TOKENS:  # decode: read only the selected rows of Wu and columns of Wd
        gate = xf @ wg.t()  # (T, H)
        gate_sel, idx = gate.topk(top_k, dim=1, sorted=False)  # (T, K)
        flat = idx.reshape(-1)  # (T*K,)
        up_rows = wu.index_select(0, flat).view(t, top_k, -1)  # (T, K, d): the selected rows of Wu
        up_sel = torch.bmm(up_rows, xf.unsqueeze(2)).squeeze(2)  # (T, K)
        act = F.silu(gate_sel) * up_sel
        down_cols = wd.index_select(1, flat).view(-1, t, top_k)  # (d, T, K): the selected columns of Wd
        y = torch.bmm(down_cols.transpose(0, 1), act.unsqueeze(2)).squeeze(2)  # (T, d)
    else:
        sampled, csr_matmul = _sparse_kernels(xf, top_k, h)
        gate = xf @ wg.t()  # (T, H)
        gate_sel, idx = top_k_channels(gate, top_k)  # (T, K)
        if sampled:  # U only on the selected channels
            up_sel = _sampled_products(_csr(idx, gate_sel, h), xf, wu.t())  # (T, K)
        else:
            up_sel = (xf @ wu.t()).gather(1, idx)  # (T, H) -> (T, K)
        act = F.silu(gate_sel) * up_sel
        if csr_matmul:
            y = _csr(idx, act, h) @ wd.t()  # (T, H) sparse x (H, d)
        else:  # G is spent: its memory (already paged in, unlike a fresh buffer) holds the sparse activation
            y = gate.zero_().scatter_(1, idx, act) @ wd.t()  # (T, H) sparse rows -> (T, d)
    return y.to(x.dtype), idx.to(index_dtype(h)), gate_sel.to(x.dtype), up_sel.to(x.dtype)


def moc_ffn_backward_reference(grad_y: torch.Tensor, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                               w_down: torch.Tensor, idx: torch.Tensor, gate_sel: torch.Tensor,
                               up_sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (x, w_gate, w_up, w_down), in their dtypes, from the saved selection (fp32 math for 16-bit)."""
    t, h = x.shape[0], w_gate.shape[0]
    f = _math_dtype(x.dtype)
    gy, xf, wg, wu, wd = grad_y.to(f), x.to(f), w_gate.to(f), w_up.to(f), w_down.to(f)
    idx = idx.long()
    g, u = gate_sel.to(f), up_sel.to(f)
    silu = F.silu(g)
    if t <= DECODE_TOKENS:
        d_act = torch.einsum("td,dtk->tk", gy, wd[:, idx])  # (T, K)
        csr_matmul = False
    else:
        sampled, csr_matmul = _sparse_kernels(xf, idx.shape[1], h)
        if sampled:  # grad_y @ Wd on the selected channels only
            d_act = _sampled_products(_csr(idx, g, h), gy, wd)  # (T, K)
        else:
            d_act = (gy @ wd).gather(1, idx)  # (T, H) GEMM -> (T, K)
    d_up = d_act * silu
    d_gate = d_act * u * silu_grad(g)
    if csr_matmul:
        grad_x = torch.addmm(_csr(idx, d_gate, h) @ wg, _csr(idx, d_up, h), wu)  # (T, H) sparse x (H, d)
    # The weight gradients (and grad x without the CSR product): BLAS GEMMs over a transient zero-filled
    # (T, H) buffer, refilled in turn; the sparse kernels would need the pattern transposed (a sort of
    # T * K indices), which costs more than it saves.
    buffer = xf.new_zeros(t, h).scatter_(1, idx, silu * u)  # (T, H)
    grad_wd = gy.t() @ buffer  # (d, H)
    d_gate_dense = buffer.zero_().scatter_(1, idx, d_gate)  # (T, H)
    grad_wg = d_gate_dense.t() @ xf  # (H, d)
    if not csr_matmul:
        grad_x = d_gate_dense @ wg  # (T, d)
    d_up_dense = d_gate_dense.zero_().scatter_(1, idx, d_up)  # (T, H)
    grad_wu = d_up_dense.t() @ xf  # (H, d)
    if not csr_matmul:
        grad_x = torch.addmm(grad_x, d_up_dense, wu)  # (T, d)
    return grad_x.to(x.dtype), grad_wg.to(w_gate.dtype), grad_wu.to(w_up.dtype), grad_wd.to(w_down.dtype)


def moc_ffn_decode_reference(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down_t: torch.Tensor,
                             top_k: int) -> torch.Tensor:
    """Inference on a few tokens (T, d) -> y (T, d), with ``w_down_t = Wd^T`` (H, d) so that each selected
    column of Wd is one contiguous row: a column gather from the (d, H) layout touches a cache line per
    element, i.e. the whole matrix."""
    t = x.shape[0]
    f = _math_dtype(x.dtype)
    xf = x.to(f)
    gate = xf @ w_gate.to(f).t()  # (T, H)
    gate_sel, idx = gate.topk(top_k, dim=1, sorted=False)  # (T, K)
    flat = idx.reshape(-1)  # (T*K,)
    up_rows = w_up.index_select(0, flat).to(f).view(t, top_k, -1)  # (T, K, d): the selected rows of Wu
    act = F.silu(gate_sel) * torch.bmm(up_rows, xf.unsqueeze(2)).squeeze(2)  # (T, K)
    down_rows = w_down_t.index_select(0, flat).to(f).view(t, top_k, -1)  # (T, K, d): the selected columns of Wd
    return torch.bmm(act.unsqueeze(1), down_rows).squeeze(1).to(x.dtype)  # (T, d)


_forward = kernel_op("moc_ffn")(moc_ffn_reference)
_decode = kernel_op("moc_ffn_decode")(moc_ffn_decode_reference)
_backward = kernel_op("moc_ffn.backward")(moc_ffn_backward_reference)


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op("zoo::moc_ffn", mutates_args=())
def _moc_ffn_op(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, top_k: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x.contiguous(), w_gate.contiguous(), w_up.contiguous(), w_down.contiguous(), top_k)


@_moc_ffn_op.register_fake
def _(x, w_gate, w_up, w_down, top_k):
    t, h = x.shape[0], w_gate.shape[0]
    return (x.new_empty(x.shape), x.new_empty((t, top_k), dtype=index_dtype(h)), x.new_empty((t, top_k)),
            x.new_empty((t, top_k)))


@torch.library.custom_op("zoo::moc_ffn_backward", mutates_args=())
def _moc_ffn_backward_op(grad_y: torch.Tensor, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                         w_down: torch.Tensor, idx: torch.Tensor, gate_sel: torch.Tensor, up_sel: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_y.contiguous(), x.contiguous(), w_gate.contiguous(), w_up.contiguous(),
                     w_down.contiguous(), idx.contiguous(), gate_sel.contiguous(), up_sel.contiguous())


@_moc_ffn_backward_op.register_fake
def _(grad_y, x, w_gate, w_up, w_down, idx, gate_sel, up_sel):
    return torch.empty_like(x), torch.empty_like(w_gate), torch.empty_like(w_up), torch.empty_like(w_down)


def _setup(ctx, inputs, output):
    x, w_gate, w_up, w_down, _ = inputs
    _, idx, gate_sel, up_sel = output
    # the lean set: x, the indices and the selected (T, K) values; weights are parameters, not activations
    ctx.save_for_backward(x, w_gate, w_up, w_down, idx, gate_sel, up_sel)
    ctx.mark_non_differentiable(idx, gate_sel, up_sel)


def _grads(ctx, grad_y, *_):
    x, w_gate, w_up, w_down, idx, gate_sel, up_sel = ctx.saved_tensors
    grad_x, grad_wg, grad_wu, grad_wd = _moc_ffn_backward_op(grad_y, x, w_gate, w_up, w_down, idx, gate_sel, up_sel)
    return grad_x, grad_wg, grad_wu, grad_wd, None


_moc_ffn_op.register_autograd(_grads, setup_context=_setup)


def moc_ffn_with_selection(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                           top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, idx, gate_sel, up_sel)`` for tokens x (T, d); only y is differentiable. See the module docstring."""
    _check(x, w_gate, w_up, w_down, top_k)
    if eager_inference(x, w_gate, w_up, w_down):  # inference: skip the custom op's dispatch
        return _forward(x.contiguous(), w_gate.contiguous(), w_up.contiguous(), w_down.contiguous(), top_k)
    return _moc_ffn_op(x, w_gate, w_up, w_down, top_k)


def moc_ffn(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
            top_k: int) -> torch.Tensor:
    """The MoC FFN on tokens x (T, d) -> (T, d): SwiGLU restricted to each token's top-K gate channels."""
    return moc_ffn_with_selection(x, w_gate, w_up, w_down, top_k)[0]


@torch.library.custom_op("zoo::moc_ffn_decode", mutates_args=())
def _moc_ffn_decode_op(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down_t: torch.Tensor,
                       top_k: int) -> torch.Tensor:
    return _decode(x.contiguous(), w_gate.contiguous(), w_up.contiguous(), w_down_t.contiguous(), top_k)


@_moc_ffn_decode_op.register_fake
def _(x, w_gate, w_up, w_down_t, top_k):
    return x.new_empty(x.shape)


def moc_ffn_decode(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down_t: torch.Tensor,
                   top_k: int) -> torch.Tensor:
    """The MoC FFN for inference on a few tokens, reading K rows of ``w_up`` and of ``w_down_t = Wd^T``
    (H, d) per token. No autograd: train through :func:`moc_ffn`."""
    _check(x, w_gate, w_up, w_down_t.t(), top_k)
    if torch.is_grad_enabled() and any(a.requires_grad for a in (x, w_gate, w_up, w_down_t)):
        raise RuntimeError("moc_ffn_decode is inference-only (no backward); use moc_ffn, or run under "
                           "torch.no_grad() / torch.inference_mode()")
    if not eager_inference(x, w_gate, w_up, w_down_t):
        return _moc_ffn_decode_op(x, w_gate, w_up, w_down_t, top_k)
    return _decode(x.contiguous(), w_gate.contiguous(), w_up.contiguous(), w_down_t.contiguous(), top_k)


# imported on first launch: Triton stays optional
_forward.register_triton_lazy("zoo.kernels._triton_moc", "moc_ffn")
_backward.register_triton_lazy("zoo.kernels._triton_moc", "moc_ffn_backward")
_decode.register_triton_lazy("zoo.kernels._triton_moc", "moc_ffn_decode")
