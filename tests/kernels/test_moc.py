"""``zoo::moc_ffn`` (the Mixture-of-Channels FFN) and its backward: the Triton kernels against the
reference on small ragged shapes (T, d, H, K off every block size), forward and backward, fp32 and bf16,
the exact top-K selection (ties, chunked rows), the decode path, opcheck, and the dispatch table.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1), where one forward + backward on these shapes costs a few seconds: keep shapes tiny.
"""
from __future__ import annotations

import pytest
import torch

from zoo import kernels
from zoo.kernels import moc as moc_module

from kernel_testing import DEVICE, needs_triton, opcheck_tests


TOL = {torch.float32: {"atol": 2e-5, "rtol": 2e-5}, torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


def _inputs(t, d, h, dtype=torch.float32, device="cpu", seed=0):
    """x (T, d), w_gate, w_up (H, d), w_down (d, H), grad_y (T, d), scaled like nn.Linear's init."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(t, d, generator=gen), torch.randn(h, d, generator=gen) / d ** 0.5,
               torch.randn(h, d, generator=gen) / d ** 0.5, torch.randn(d, h, generator=gen) / h ** 0.5,
               torch.randn(t, d, generator=gen)]
    return [a.to(device=device, dtype=dtype) for a in tensors]


def _compare(t, d, h, k, dtype=torch.float32):
    """Kernels vs reference: y, the selection (as sets), the selected values, and every gradient.

    The reference runs in fp32 on the same (rounded) operands, as the kernels compute."""
    x, wg, wu, wd, gy = _inputs(t, d, h, dtype, DEVICE)
    leaves = [a.detach().clone().requires_grad_() for a in (x, wg, wu, wd)]
    y, idx, gate_sel, up_sel = kernels.moc_ffn_with_selection(*leaves, k)
    grads = torch.autograd.grad(y, leaves, gy)
    assert y.dtype == gate_sel.dtype == up_sel.dtype == dtype and idx.dtype == torch.int16
    assert bool((idx.diff(dim=1) > 0).all()), "the kernel's indices come out ascending"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_KERNELS", "torch")
        cpu = [a.detach().cpu().float().requires_grad_() for a in (x, wg, wu, wd)]
        want_y, want_idx, want_g, want_u = kernels.moc_ffn_with_selection(*cpu, k)
        want_grads = torch.autograd.grad(want_y, cpu, gy.cpu().float())
    order = want_idx.long().sort(dim=1)
    assert torch.equal(idx.cpu().long(), order.values)
    tol = TOL[dtype]
    torch.testing.assert_close(y.cpu().float(), want_y, **tol)
    torch.testing.assert_close(gate_sel.cpu().float(), want_g.gather(1, order.indices), **tol)
    torch.testing.assert_close(up_sel.cpu().float(), want_u.gather(1, order.indices), **tol)
    for name, got, want, leaf in zip(("x", "w_gate", "w_up", "w_down"), grads, want_grads, leaves):
        assert got.dtype == dtype and got.shape == leaf.shape, name
        torch.testing.assert_close(got.cpu().float(), want, **tol, msg=lambda m, n=name: f"grad of {n}: {m}")


# --------------------------------------------------------------------------------------------------
# kernels against the reference
# --------------------------------------------------------------------------------------------------
@needs_triton
def test_kernels_match_reference_fp32(triton_mode):
    _compare(17, 13, 30, 5)


@needs_triton
def test_kernels_match_reference_bf16(triton_mode):
    _compare(13, 11, 27, 4, torch.bfloat16)


@needs_triton
def test_every_loop_and_chunk_on_small_blocks(triton_mode, monkeypatch):
    """Blocks smaller than T, d, H and K: the GEMM's d loop and H tiles, the selection's row chunks (the
    running cumsums across chunks), the gathers' K and d loops, the weight gradient's entry loop."""
    from zoo.kernels import _triton_moc

    monkeypatch.setattr(_triton_moc, "GEMM_BLOCKS", (16, 16, 16))
    monkeypatch.setattr(_triton_moc, "SELECT_BLOCKS", (8, 16))
    monkeypatch.setattr(_triton_moc, "GATHER_BLOCKS", (8, 4, 8))
    monkeypatch.setattr(_triton_moc, "CHANNEL_BLOCKS", (4, 8))
    _compare(9, 19, 29, 7)


@needs_triton
def test_dense_limit_k_equals_h(triton_mode):
    _compare(5, 7, 12, 12)


@needs_triton
def test_selection_breaks_ties_by_channel(triton_mode):
    from zoo.kernels import _triton_moc

    gate = torch.tensor([[0.0] * 10, [1, 3, 3, 3, 2, -5, 3, 0, 0, 0], [-1.0, -2, -0.0, 0.0, -3, -2, -2, 7, 7, 7]],
                        device=DEVICE)
    idx, sel = _triton_moc.select_top_k(gate, 3, torch.int16)
    assert idx.cpu().tolist() == [[0, 1, 2], [1, 2, 3], [7, 8, 9]]
    idx, sel = _triton_moc.select_top_k(gate, 6, torch.int32)
    assert idx.dtype == torch.int32
    assert idx.cpu().tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 6], [0, 2, 3, 7, 8, 9]]
    assert sel.cpu().tolist()[1] == [1, 3, 3, 3, 2, 3]  # -0.0 and 0.0: +0 ranks above -0, both above -1


@needs_triton
def test_decode_reads_only_selected_weights(triton_mode):
    """Two tokens (the decode formulation of the reference too). Weight entries no token selects are NaN:
    the kernels never read them, so the result stays finite and equal to the reference."""
    x, wg, wu, wd, _ = _inputs(2, 9, 23, device=DEVICE)
    _, idx, _, _ = kernels.moc_ffn_with_selection(x, wg, wu, wd, 3)
    unused = torch.ones(23, dtype=torch.bool)
    unused[idx.cpu().long().flatten()] = False
    wu_poisoned, wd_poisoned = wu.clone(), wd.clone()
    wu_poisoned[unused.to(DEVICE)] = float("nan")
    wd_poisoned[:, unused.to(DEVICE)] = float("nan")
    y = kernels.moc_ffn(x, wg, wu_poisoned, wd_poisoned, 3)
    y_decode = kernels.moc_ffn_decode(x, wg, wu_poisoned, wd_poisoned.t().contiguous(), 3)  # rows of Wd^T
    assert 2 <= moc_module.DECODE_TOKENS
    want = moc_module.moc_ffn_reference(x.cpu(), wg.cpu(), wu_poisoned.cpu(), wd_poisoned.cpu(), 3)[0]
    assert torch.isfinite(y).all() and torch.isfinite(want).all()
    torch.testing.assert_close(y.cpu(), want, **TOL[torch.float32])
    torch.testing.assert_close(y_decode.cpu(), want, **TOL[torch.float32])


@needs_triton
def test_decode_kernel_bf16_and_block_cache(triton_mode):
    """The block's inference path (decode op, cached Wd^T) on the kernels, bf16, three tokens."""
    from zoo import blocks

    torch.manual_seed(0)
    block = blocks.create("moc_ffn", 12, hidden_dim=26, top_k=5, device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(1, 3, 12, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        y = block(x)
    assert block._down_t is not None and y.dtype == torch.bfloat16
    weights = [m.weight.detach().cpu().float() for m in (block.gate_proj, block.up_proj, block.down_proj)]
    want = moc_module.moc_ffn_reference(x.cpu().float().reshape(3, 12), *weights, 5)[0]
    torch.testing.assert_close(y.cpu().float().reshape(3, 12), want, **TOL[torch.bfloat16])


@needs_triton
def test_backward_is_deterministic(triton_mode):
    x, wg, wu, wd, gy = _inputs(9, 6, 14, device=DEVICE)
    y, idx, g, u = kernels.moc_ffn_with_selection(x, wg, wu, wd, 4)
    first = torch.ops.zoo.moc_ffn_backward(gy, x, wg, wu, wd, idx, g, u)
    second = torch.ops.zoo.moc_ffn_backward(gy, x, wg, wu, wd, idx, g, u)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# --------------------------------------------------------------------------------------------------
# opcheck, dispatch
# --------------------------------------------------------------------------------------------------
def _opcheck_cases(device):
    x, wg, wu, wd, gy = _inputs(5, 6, 10, device=device)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_KERNELS", "torch")
        _, idx, g, u = moc_module.moc_ffn_reference(x, wg, wu, wd, 3)

    def leaf(a):
        return a.detach().clone().requires_grad_()

    return [
        (torch.ops.zoo.moc_ffn.default, (leaf(x), leaf(wg), leaf(wu), leaf(wd), 3)),
        (torch.ops.zoo.moc_ffn_backward.default, (gy, x, wg, wu, wd, idx, g, u)),
        (torch.ops.zoo.moc_ffn_decode.default, (x[:2], wg, wu, wd.t().contiguous(), 3)),
    ]


# the registration is the reference path's; on the Triton path, the kernels' outputs against the fakes
test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(
    _opcheck_cases, triton_test_utils=("test_schema", "test_faketensor"))


def test_available_lists_both_backends():
    assert kernels.available()["ops"]["moc_ffn"] == ["torch", "triton"]
    assert kernels.available()["ops"]["moc_ffn.backward"] == ["torch", "triton"]
    assert kernels.available()["ops"]["moc_ffn_decode"] == ["torch", "triton"]


def test_compiles_with_fullgraph(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    x, wg, wu, wd, gy = _inputs(20, 6, 16)
    leaves = [a.requires_grad_() for a in (x, wg, wu, wd)]
    compiled = torch.compile(lambda *a: kernels.moc_ffn(*a, 4), fullgraph=True, backend="aot_eager")
    y = compiled(*leaves)
    y.backward(gy)
    torch.testing.assert_close(y, kernels.moc_ffn(*leaves, 4))
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in leaves)
    from zoo import blocks  # the block too: training, and a no-grad decode step (the op path while compiling)

    block = blocks.create("moc_ffn", 6, hidden_dim=16, top_k=4)
    compiled_block = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 10, 6, requires_grad=True)
    torch.testing.assert_close(compiled_block(x), block(x))
    with torch.no_grad():
        torch.testing.assert_close(compiled_block(x[:1, :1]), block(x[:1, :1]))
