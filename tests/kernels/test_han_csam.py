"""HAN's CSAM as one op (zoo::csam): the Triton kernel against the PyTorch reference on ragged maps, NCHW,
channels_last and strided, fp32 / bf16 / fp16 / fp64, forward and backward; gradcheck of the backward
formulas; opcheck; and the block taking the op only where the kernel runs.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (conftest sets TRITON_INTERPRET=1).
"""
from __future__ import annotations

import pytest
import torch

from zoo import blocks
from zoo import kernels

from kernel_testing import DEVICE, TOL, forward_and_grads, needs_triton, opcheck_tests

# C = 1 (no channel neighbours), H x W = 1, widths and heights off the block size
SHAPES = [(2, 5, 4, 3), (1, 1, 3, 7), (2, 3, 1, 1), (1, 4, 9, 11)]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _inputs(shape, dtype, device, layout="nchw", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])
    params = [torch.randn(3, 3, 3, generator=gen) * 0.3, torch.randn(1, generator=gen), torch.randn(1, generator=gen)]
    return [x] + [p.to(device=device, dtype=dtype) for p in params]


@pytest.fixture
def tiny_blocks(monkeypatch):
    from zoo.kernels import _triton_han_csam

    monkeypatch.setattr(_triton_han_csam, "BLOCK_HW", 4)


def _assert_matches_reference(shape, layout, dtype):
    inputs = _inputs(shape, dtype, DEVICE, layout)
    out, grads = forward_and_grads(kernels.csam, inputs)
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    want, want_grads = forward_and_grads(kernels.csam_reference, [t.to(ref_dtype) for t in inputs])
    assert out.dtype == dtype and out.stride() == inputs[0].stride()
    torch.testing.assert_close(out, want.to(dtype), **TOL[dtype])
    for got, expected in zip(grads, want_grads):
        assert got.dtype == dtype
        # the weight, bias and gamma gradients are sums over the whole map: relative tolerance
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(got.to(ref_dtype) / scale, expected / scale, **TOL[dtype])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(triton_mode, shape, layout, dtype):
    """Forward and every gradient against the reference (fp32 on the same rounded values for 16-bit maps);
    the output keeps x's dtype and memory format."""
    _assert_matches_reference(shape, layout, dtype)


@needs_triton
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kernel_matches_reference_across_blocks(triton_mode, tiny_blocks, layout):
    """Blocks of 4 positions: rows split across programs, ragged last block."""
    _assert_matches_reference((1, 4, 5, 7), layout, torch.float32)


@needs_triton
def test_kernel_reads_strided_maps(triton_mode):
    base = torch.randn(2, 7, 6, 10, device=DEVICE)
    x = base[:, 1:6, :, ::2]  # neither NCHW- nor channels_last-contiguous
    _, w, b, g = _inputs((2, 5, 6, 5), torch.float32, DEVICE)
    out = kernels.csam(x, w, b, g)
    assert out.is_contiguous()
    torch.testing.assert_close(out, kernels.csam_reference(x, w, b, g), **TOL[torch.float32])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reference_equals_the_modules_conv3d(layout):
    """The reference's conv (3x3 conv2d slices and shifted adds along C) against HAN's own Conv3d module,
    forward and gradients, fp64; the CPU block runs it."""
    for shape in SHAPES:
        x, w, b, g = (t.requires_grad_() for t in _inputs(shape, torch.float64, "cpu", layout, seed=4))
        conv = torch.nn.Conv3d(1, 1, 3, padding=1).double()
        with torch.no_grad():
            conv.weight.copy_(w[None, None])
            conv.bias.copy_(b)
        want = x * (g * torch.sigmoid(conv(x.unsqueeze(1)).squeeze(1))) + x
        got = kernels.csam_reference(x, w, b, g)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
        grad = torch.randn_like(want)
        got_grads = torch.autograd.grad(got, [x, w, b, g], grad)
        want_grads = torch.autograd.grad(want, [x, conv.weight, conv.bias, g], grad)
        for a, e in zip(got_grads, want_grads):
            torch.testing.assert_close(a, e.reshape(a.shape), atol=1e-11, rtol=1e-11)


def test_backward_formulas_gradcheck(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    for shape in [(2, 3, 3, 2), (1, 1, 2, 2)]:
        inputs = tuple(t.requires_grad_() for t in _inputs(shape, torch.float64, "cpu", seed=2))
        assert torch.autograd.gradcheck(kernels.csam, inputs)


def _opcheck_args(device):
    leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    x, w, b, g = _inputs((2, 3, 4, 5), torch.float32, device)
    xl = x.contiguous(memory_format=torch.channels_last)
    return [(kernels.csam.op, (leaf(x), leaf(w), leaf(b), leaf(g)), {}),
            (kernels.csam.op, (leaf(xl), w, b, leaf(g)), {}),
            (kernels.csam.op, tuple(t.to(torch.bfloat16) for t in (x, w, b, g)), {})]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_args)


def test_bad_inputs_fail_before_any_work():
    x, w, b, g = _inputs((2, 3, 4, 5), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 3, 3\); got \(1, 1, 3, 3, 3\)"):
        kernels.csam(x, w[None, None], b, g)
    with pytest.raises(ValueError, match=r"gamma \(torch.float64, cpu\) must match the map \(torch.float32"):
        kernels.csam(x, w, b, g.double())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) map; got torch.float32 of shape \(3, 4, 5\)"):
        kernels.csam(x[0], w, b, g)


@needs_triton
def test_block_uses_the_op_where_the_kernel_runs(triton_mode, monkeypatch):
    """With the kernels running, HAN's CSAM block is one op, equal to its modules (forward and the
    gradients of x, the conv and gamma); with the reference path it runs its modules; a hooked conv
    keeps the modules too."""
    block = blocks.create("csam", 6).to(DEVICE)
    with torch.no_grad():
        block.gamma.fill_(0.7)  # the release starts at 0: the gate would not show
    calls = []
    monkeypatch.setattr(kernels, "csam", lambda *a, _op=kernels.csam: calls.append(1) or _op(*a))
    x = torch.randn(2, 6, 5, 4, device=DEVICE, requires_grad=True)
    out = block(x)
    assert calls == [1]
    grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    want = block(x)
    assert calls == [1]
    want_grads = torch.autograd.grad(want.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(out, want, **TOL[torch.float32])
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("ZOO_KERNELS", "triton")
    block.conv.register_forward_hook(lambda *args: None)
    block(x)
    assert calls == [1]
