"""The excitation ops (excite_mlp: SE / CA / FcaNet's MLP; excite_conv: ECA's 1-D conv): Triton kernels
against their PyTorch references on ragged sizes, fp32 / bf16 / fp16 / fp64, forward and backward;
gradcheck of the backward formulas; opcheck. (The blocks call the fused squeeze-excite ops, which share
these kernels' code: tests/kernels/test_squeeze_excite.py.)

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1); with one, compiled on CUDA tensors.
"""
from __future__ import annotations

import pytest
import torch

from zoo import kernels

from kernel_testing import DEVICE, TOL, forward_and_grads, needs_triton, opcheck_tests

# (B, C, R): channels and bottlenecks off the tile sizes; B = 1, C = 1 and R = 1 included
MLP_SHAPES = [(2, 5, 3), (1, 33, 7), (3, 64, 4), (1, 1, 1), (4, 48, 12)]
# (B, C, k): k wider than C included (every tap but the centre reads padding)
CONV_SHAPES = [(2, 5, 3), (1, 33, 5), (3, 9, 1), (1, 2, 5), (2, 70, 7)]


def _mlp_inputs(b, c, r, dtype, device, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    return [rand(b, c), rand(r, c, scale=c ** -0.5), rand(r) if bias else None, rand(c, r, scale=r ** -0.5),
            rand(c) if bias else None]


def _conv_inputs(b, c, k, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, generator=gen).to(device=device, dtype=dtype),
            torch.randn(k, generator=gen).to(device=device, dtype=dtype)]


def _assert_matches(fn, ref, inputs, dtype):
    """Forward and gradients against the reference (fp32 on the same rounded values for 16-bit inputs),
    at the dtype's tolerance."""
    out, grads = forward_and_grads(fn, inputs)
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    want, want_grads = forward_and_grads(ref, [t.to(ref_dtype) if t is not None else None for t in inputs])
    assert out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, want.to(dtype), **TOL[dtype])
    for got, expected in zip(grads, want_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got.to(ref_dtype), expected, **TOL[dtype])


@pytest.fixture
def tiny_tiles(monkeypatch):
    """Small tiles: the MLP kernel loops over many C tiles, the conv kernel over many channel blocks."""
    from zoo.kernels import _triton_channel_excite

    monkeypatch.setattr(_triton_channel_excite, "TILE", 16)
    monkeypatch.setattr(_triton_channel_excite, "BLOCK_C_CONV", 4)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", MLP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlp_kernel_matches_reference(triton_mode, tiny_tiles, shape, bias, act, dtype):
    inputs = _mlp_inputs(*shape, dtype, DEVICE, bias=bias)
    _assert_matches(lambda *t: kernels.excite_mlp(*t, act), lambda *t: kernels.excite_mlp_reference(*t, act),
                    inputs, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_kernel_matches_reference(triton_mode, tiny_tiles, shape, dtype):
    _assert_matches(kernels.excite_conv, kernels.excite_conv_reference, _conv_inputs(*shape, dtype, DEVICE), dtype)


@needs_triton
def test_mlp_kernel_default_tiles_and_a_wide_bottleneck(triton_mode, monkeypatch):
    """Default tiles on an SE-ResNet-sized row; a bottleneck wider than MAX_R falls back to the reference."""
    from zoo.kernels import _triton_channel_excite

    inputs = _mlp_inputs(2, 256, 16, torch.float32, DEVICE)
    torch.testing.assert_close(kernels.excite_mlp(*inputs, "relu"), kernels.excite_mlp_reference(*inputs, "relu"),
                               **TOL[torch.float32])
    monkeypatch.setattr(_triton_channel_excite, "MAX_R", 8)
    torch.testing.assert_close(kernels.excite_mlp(*inputs, "silu"), kernels.excite_mlp_reference(*inputs, "silu"),
                               atol=0, rtol=0)


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_mlp_backward_formulas_gradcheck(monkeypatch, act):
    """gradcheck in fp64 of the op (its autograd formulas) on the reference path, with and without biases."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    for bias in (True, False):
        inputs = [t.requires_grad_() if t is not None else None
                  for t in _mlp_inputs(3, 7, 4, torch.float64, "cpu", bias=bias, seed=2)]
        tensors = [t for t in inputs if t is not None]

        def call(*args):
            it = iter(args)
            return kernels.excite_mlp(*[next(it) if t is not None else None for t in inputs], act)

        assert torch.autograd.gradcheck(call, tuple(tensors))


def test_conv_backward_formulas_gradcheck(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    for b, c, k in [(2, 6, 3), (1, 3, 5), (2, 4, 1)]:
        inputs = tuple(t.requires_grad_() for t in _conv_inputs(b, c, k, torch.float64, "cpu", seed=3))
        assert torch.autograd.gradcheck(kernels.excite_conv, inputs)


def _opcheck_args(device):
    s, w1, b1, w2, b2 = _mlp_inputs(2, 6, 3, torch.float32, device)
    half = [t.to(torch.bfloat16) for t in (s, w1, b1, w2, b2)]
    leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    conv_s, taps = _conv_inputs(2, 6, 3, torch.float32, device)
    return [
        (kernels.excite_mlp.op, (leaf(s), leaf(w1), leaf(b1), leaf(w2), leaf(b2), "relu"), {}),
        (kernels.excite_mlp.op, (s, w1, None, w2, None, "silu"), {}),
        (kernels.excite_mlp.op, tuple(half) + ("relu",), {}),
        (kernels.excite_conv.op, (leaf(conv_s), leaf(taps)), {}),
        (kernels.excite_conv.op, (conv_s.to(torch.bfloat16), taps.to(torch.bfloat16)), {}),
    ]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_args)


def test_bad_inputs_fail_before_any_work():
    s, w1, b1, w2, b2 = _mlp_inputs(2, 6, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"w2 must have shape \(6, 3\).*got \(3, 6\)"):
        kernels.excite_mlp(s, w1, b1, w1, b2)
    with pytest.raises(ValueError, match=r"w1 \(torch.bfloat16, cpu\) must match the vectors \(torch.float32"):
        kernels.excite_mlp(s, w1.bfloat16(), b1, w2, b2)
    with pytest.raises(ValueError, match=r"act='gelu' is not one of relu, silu"):
        kernels.excite_mlp(s, w1, b1, w2, b2, "gelu")
    with pytest.raises(ValueError, match=r"pooled vectors \(B, C\); got shape \(2, 6, 1, 1\)"):
        kernels.excite_mlp(s[:, :, None, None], w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"odd number of taps.*\(4,\)"):
        kernels.excite_conv(s, torch.randn(4))
