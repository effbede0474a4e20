"""The ``moc_ffn`` and ``swiglu`` blocks on the reference (CPU) path: parity with the float64 vectors in
``../shared/vectors/moc/`` (forward, selection, every gradient; K = 11, 22, 88 of 88), the dense limit,
the decode formulation, the memory saved for backward, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo import blocks
from zoo import kernels
from zoo.kernels import moc as moc_module
from zoo.profiling import saved_for_backward_bytes

KS = (11, 22, 88)


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")


@pytest.fixture(scope="module")
def moc_vectors(vectors):
    from safetensors.torch import load_file

    return load_file(str(vectors / "moc" / "moc_ffn_reference.safetensors"))


def _block(name: str, dim: int, hidden: int, dtype=torch.float64, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return blocks.create(name, dim, hidden_dim=hidden, dtype=dtype, **kwargs)


def _load(block, vec):
    with torch.no_grad():
        block.gate_proj.weight.copy_(vec["w_gate"])
        block.up_proj.weight.copy_(vec["w_up"])
        block.down_proj.weight.copy_(vec["w_down"])
    return block


def _run(block, x, grad_y):
    x = x.detach().clone().requires_grad_()
    block.zero_grad(set_to_none=True)
    y = block(x)
    y.backward(grad_y)
    return y.detach(), x.grad, [block.gate_proj.weight.grad, block.up_proj.weight.grad, block.down_proj.weight.grad]


@pytest.mark.parametrize("k", KS)
def test_block_matches_reference_vectors(moc_vectors, k):
    vec = moc_vectors
    block = _load(_block("moc_ffn", 32, 88, top_k=k), vec)
    y, grad_x, grads = _run(block, vec["x"], vec["grad_y"])
    tol = {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(y, vec[f"K{k}/y"], **tol)
    torch.testing.assert_close(grad_x, vec[f"K{k}/grad_x"], **tol)
    for name, got in zip(("gate", "up", "down"), grads):
        torch.testing.assert_close(got, vec[f"K{k}/grad_w_{name}"], **tol, msg=lambda m, n=name: f"grad_w_{n}: {m}")


@pytest.mark.parametrize("k", KS)
def test_op_selection_and_sparse_math_match_vectors(moc_vectors, k):
    """The op itself (also at K = H, which the block routes to the dense path): indices, their dtype, y."""
    vec = moc_vectors
    y, idx, gate_sel, up_sel = kernels.moc_ffn_with_selection(vec["x"], vec["w_gate"], vec["w_up"], vec["w_down"], k)
    assert idx.dtype == torch.int16 and idx.shape == (64, k) and gate_sel.shape == up_sel.shape == (64, k)
    assert torch.equal(idx.long().sort(dim=1).values, vec[f"K{k}/idx_sorted"])
    torch.testing.assert_close(gate_sel, (vec["x"] @ vec["w_gate"].t()).gather(1, idx.long()), atol=1e-12, rtol=0)
    torch.testing.assert_close(y, vec[f"K{k}/y"], atol=1e-12, rtol=1e-12)


def test_selection_is_by_value_not_magnitude():
    x = torch.eye(4, dtype=torch.float64)  # G = x Wg^T = Wg^T: token t's gates are column t of Wg
    gates = torch.tensor([[-9.0, 2, 3, 1], [5, -6, 1, 2], [1, 2, -7, 3], [0.5, 1, 2, -8]], dtype=torch.float64)
    w_up = torch.ones(4, 4, dtype=torch.float64)
    _, idx, gate_sel, _ = kernels.moc_ffn_with_selection(x, gates.t().contiguous(), w_up, w_up, 2)
    # the largest |G| of every token is negative and dropped
    assert [sorted(row) for row in idx.tolist()] == [[1, 2], [0, 3], [1, 3], [1, 2]]
    assert gate_sel.min() > 0


def test_cpu_selection_matches_topk_and_falls_back_on_ties():
    """The CPU selection (NumPy partition + flatnonzero) against torch.topk, ascending indices; a tied or
    NaN K-th value takes torch.topk, which still keeps exactly K."""
    gate = torch.randn(40, 30, dtype=torch.float64)
    values, idx = moc_module.top_k_channels(gate, 7)
    want = gate.topk(7, dim=1)
    assert torch.equal(idx, want.indices.sort(dim=1).values)
    torch.testing.assert_close(values, gate.gather(1, idx), atol=0, rtol=0)
    gate[3] = 0.0  # a padding token: every channel ties
    gate[5, 2] = float("nan")
    values, idx = moc_module.top_k_channels(gate.float(), 7)
    assert idx.shape == (40, 7) and len(set(idx[3].tolist())) == 7 and 2 in idx[5].tolist()
    torch.testing.assert_close(values, gate.float().gather(1, idx), atol=0, rtol=0, equal_nan=True)


def test_inference_paths_equal_the_training_path():
    """No-grad calls skip the custom op; few tokens take the decode op with the cached Wd^T, which follows
    in-place weight updates."""
    block = _block("moc_ffn", 16, 40, dtype=torch.float32, top_k=5)
    for tokens in (2, 30):  # the decode op, and the prefill formulation without the custom op
        x = torch.randn(tokens, 16)
        with torch.no_grad():
            fast = block(x)
        slow = block(x.clone().requires_grad_())
        torch.testing.assert_close(fast, slow.detach(), atol=1e-6, rtol=1e-6)
    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        block(x)
        cached = block._down_t[1]
        block.down_proj.weight.mul_(2.0)  # an optimizer step's in-place update
        y = block(x)
    assert block._down_t[1] is not cached and "_down_t" not in str(list(block.state_dict()))
    torch.testing.assert_close(y, block(x.requires_grad_()).detach(), atol=1e-6, rtol=1e-6)


def test_decode_op_reads_transposed_down_and_refuses_grad():
    x, wg, wu, wd = (torch.randn(*s, dtype=torch.float64) for s in ((3, 8), (20, 8), (20, 8), (8, 20)))
    y = kernels.moc_ffn_decode(x, wg, wu, wd.t().contiguous(), 4)
    torch.testing.assert_close(y, moc_module.moc_ffn_reference(x, wg, wu, wd, 4)[0], atol=1e-12, rtol=0)
    with pytest.raises(RuntimeError, match="inference-only"):
        kernels.moc_ffn_decode(x.requires_grad_(), wg, wu, wd.t(), 4)
    with pytest.raises(ValueError, match=r"w_down must be \(d, H\)"):
        kernels.moc_ffn_decode(x.detach(), wg, wu, wd, 4)  # Wd in the (d, H) layout: not transposed


def test_dense_limit_equals_swiglu_exactly():
    dense = _block("swiglu", 24, 40, dtype=torch.float32)
    moc = _block("moc_ffn", 24, 40, dtype=torch.float32, top_k=40)
    moc_none = _block("moc_ffn", 24, 40, dtype=torch.float32, top_k=None)
    moc.load_state_dict(dense.state_dict())
    moc_none.load_state_dict(dense.state_dict())
    assert list(moc.state_dict()) == list(dense.state_dict()) == ["gate_proj.weight", "up_proj.weight",
                                                                  "down_proj.weight"]
    x, g = torch.randn(3, 7, 24), torch.randn(3, 7, 24)
    want = _run(dense, x, g)
    for block in (moc, moc_none):
        assert block.is_dense and block.top_k == 40
        got = _run(block, x, g)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert all(torch.equal(a, b) for a, b in zip(got[2], want[2]))
    # and the sparse op at K = H agrees with the dense math to rounding
    y = kernels.moc_ffn(x.reshape(-1, 24), dense.gate_proj.weight, dense.up_proj.weight, dense.down_proj.weight, 40)
    torch.testing.assert_close(y.reshape(3, 7, 24), want[0], atol=1e-5, rtol=1e-5)


def _masked_swiglu(x, wg, wu, wd, k):
    """Autograd of the math with a one-hot mask: the naive formulation."""
    gate = x @ wg.t()  # (T, H)
    mask = torch.zeros_like(gate).scatter_(1, gate.topk(k, dim=1).indices, 1.0)
    return (F.silu(gate) * (x @ wu.t()) * mask) @ wd.t()


@pytest.mark.parametrize("tokens,sparse", [(3, True), (40, True), (40, False)],
                         ids=["decode", "prefill-csr", "prefill-dense"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_both_formulations_match_autograd_of_masked_math(tokens, sparse, dtype, monkeypatch):
    """Decode (gathers), prefill with the sparse kernels (MKL builds) and prefill with dense GEMMs."""
    assert (tokens <= moc_module.DECODE_TOKENS) == (tokens == 3)
    if sparse and tokens > moc_module.DECODE_TOKENS and not torch.backends.mkl.is_available():
        pytest.skip("the CSR formulation needs a PyTorch built with MKL")
    monkeypatch.setattr(moc_module, "SPARSE_CPU", sparse)
    # K = 9 of 52 is above the sparse kernels' break-even densities; raise them so that every kernel runs
    monkeypatch.setattr(moc_module, "SAMPLED_MAX_DENSITY", 0.25)
    monkeypatch.setattr(moc_module, "CSR_MATMUL_MAX_DENSITY", 0.25)
    assert moc_module._sparse_kernels(torch.empty(tokens, 20), 9, 52) == (sparse and tokens == 40,) * 2
    block = _block("moc_ffn", 20, 52, dtype=dtype, top_k=9, seed=1)
    x, g = torch.randn(tokens, 20).to(dtype), torch.randn(tokens, 20).to(dtype)
    y, grad_x, grads = _run(block, x, g)
    weights = [p.detach().double().requires_grad_() for p in (block.gate_proj.weight, block.up_proj.weight,
                                                              block.down_proj.weight)]
    xd = x.double().requires_grad_()
    want = _masked_swiglu(xd, *weights, 9)
    want.backward(g.double())
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {"atol": 3e-2, "rtol": 2e-2}
    assert y.dtype == grad_x.dtype == dtype
    torch.testing.assert_close(y.double(), want.detach(), **tol)
    torch.testing.assert_close(grad_x.double(), xd.grad, **tol)
    for got, w in zip(grads, weights):
        torch.testing.assert_close(got.double(), w.grad, **tol)


def test_gradcheck_fp64():
    x = torch.randn(18, 6, dtype=torch.float64, requires_grad=True)  # 18 tokens: the prefill formulation
    ws = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((10, 6), (10, 6), (6, 10))]
    assert torch.autograd.gradcheck(lambda *a: kernels.moc_ffn(*a, 3), (x, *ws))


def test_saved_for_backward_is_under_a_quarter_of_swiglu():
    """At K = H/8 the backward keeps x, int16 indices and two (T, K) values: ~0.16x of SwiGLU's x, G,
    SiLU(G), U and their product."""
    dim, hidden, tokens = 64, 176, 256
    moc = _block("moc_ffn", dim, hidden, dtype=torch.float32, top_k=hidden // 8)
    dense = _block("swiglu", dim, hidden, dtype=torch.float32)
    x = torch.randn(2, tokens // 2, dim, requires_grad=True)
    moc_bytes, dense_bytes = saved_for_backward_bytes(moc, x), saved_for_backward_bytes(dense, x)
    k = hidden // 8
    assert moc_bytes == tokens * dim * 4 + tokens * k * (2 + 4 + 4)  # x, idx int16, gate_sel, up_sel
    assert dense_bytes >= tokens * (dim + 4 * hidden) * 4
    assert moc_bytes <= 0.25 * dense_bytes, (moc_bytes, dense_bytes)


def test_index_dtype_widens_for_wide_layers():
    assert moc_module.index_dtype(32767) == torch.int16 and moc_module.index_dtype(32768) == torch.int32


def test_block_attributes_and_leading_dims():
    block = blocks.create("moc_ffn", 16, hidden_dim=48, top_k=6)
    assert (block.dim, block.hidden_dim, block.top_k, block.is_dense) == (16, 48, 6, False)
    assert block.gate_proj.bias is None and block.down_proj.weight.shape == (16, 48)
    assert "top_k=6" in repr(block)
    x = torch.randn(2, 3, 5, 16)
    assert block(x).shape == x.shape
    chosen = block.selected_channels(x)
    assert chosen.shape == (2, 3, 5, 6) and bool((chosen.diff(dim=-1) > 0).all())
    assert blocks.create("swiglu", 48).hidden_dim == 128  # LLaMA's 8/3 * dim, rounded up to 8


@pytest.mark.parametrize("top_k", [0, -1, 49, 2.5, True])
def test_bad_top_k_names_the_range(top_k):
    with pytest.raises(ValueError, match=r"top_k must be an int in 1\.\.hidden_dim = 1\.\.48"):
        blocks.create("moc_ffn", 16, hidden_dim=48, top_k=top_k)


def test_bad_inputs_fail_before_any_work():
    block = blocks.create("moc_ffn", 16, hidden_dim=48, top_k=6)
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 16\) inputs; got shape \(4, 15\)"):
        block(torch.randn(4, 15))
    with pytest.raises(TypeError):
        blocks.create("moc_ffn", 16, hidden_dim=48, topk=6)
    x, wg, wd = torch.randn(4, 16), torch.randn(48, 16), torch.randn(16, 48)
    cases = [
        ((x[None], wg, wg, wd, 6), r"expects tokens \(T, d\)"),
        ((x, wg[:, :5], wg, wd, 6), r"w_gate must be \(H, d\) with d = 16"),
        ((x, wg, wg[:40], wd, 6), r"w_up must be \(H, d\) = \(48, 16\)"),
        ((x, wg, wg, wg, 6), r"w_down must be \(d, H\) = \(16, 48\)"),
        ((x, wg, wg, wd, 49), r"top_k must be an int in 1\.\.48"),
        ((x.double(), wg, wg, wd, 6), r"must share a dtype"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            kernels.moc_ffn(*args)
