"""``zoo::channel_patch_embed`` (ChannelViT's per-channel patch embedding): the reference against the
release's ``Conv3d`` formulation, gradcheck of the reference path, the Triton kernels (forward and
backward) against the reference on small ragged shapes in fp32, bf16 and fp64, opcheck, and the errors.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1), where a launch on these shapes costs about 0.1 s: keep shapes small.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo import kernels
from zoo.kernels.patch_embed import channel_patch_embed_backward_reference

from kernel_testing import DEVICE, TOL, needs_triton, opcheck_tests

# (B, C, H, W, p, D): H, W off the patch grid (the remainder is ignored), D off the 16-wide tiles,
# B = 1, C = 1, one patch per channel, p = 4 / 8 / 16 (K = 16, 64 and 256: the forward's K loop)
SHAPES = [(2, 3, 9, 13, 4, 20), (1, 1, 8, 8, 8, 17), (2, 2, 17, 19, 8, 33), (1, 2, 16, 17, 16, 18)]


def _inputs(shape, dtype=torch.float32, param_dtype=torch.float32, bias=True, device="cpu", seed=0):
    """x (B, C, H, W), weight (D, p, p), bias (D,), channel_embed (B, C, D), pos_embed (N, D)."""
    b, c, h, w, p, d = shape
    gen = torch.Generator().manual_seed(seed)
    n = (h // p) * (w // p)
    tensors = [torch.randn(b, c, h, w, generator=gen).to(dtype), torch.randn(d, p, p, generator=gen) / p,
               torch.randn(d, generator=gen) if bias else None, torch.randn(b, c, d, generator=gen),
               torch.randn(n, d, generator=gen)]
    return [t if t is None else t.to(device=device, dtype=t.dtype if i == 0 else param_dtype)
            for i, t in enumerate(tensors)]


def _run(fn, inputs, seed=1):
    """Output and the gradients of every input, for a fixed random upstream gradient."""
    leaves = [t if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad)
    return out, grads


def _compare(shape, dtype, param_dtype=torch.float32, bias=True):
    """The kernel path against the reference path, forward and every gradient, with dtypes checked."""
    inputs = _inputs(shape, dtype, param_dtype, bias, DEVICE)
    out, grads = _run(kernels.channel_patch_embed, inputs)
    cpu = [t if t is None else t.cpu() for t in inputs]
    # the forward against fp32 math on the same (rounded) operands: the kernel rounds once, at the end;
    # the reference in bf16 rounds after the matmul and after every add
    # (the op casts every operand to x's dtype first)
    want = kernels.channel_patch_embed_reference(*[t if t is None else t.to(dtype).double() for t in cpu])
    assert out.dtype == dtype and out.shape == want.shape
    torch.testing.assert_close(out.cpu().double(), want, **TOL[dtype])
    with pytest.MonkeyPatch.context() as mp:  # the backward against the reference backward (fp32 math)
        mp.setenv("ZOO_KERNELS", "torch")
        _, want_grads = _run(kernels.channel_patch_embed, cpu)
    names = ["x", "weight", "bias", "channel_embed", "pos_embed"]
    names = [k for k, t in zip(names, inputs) if t is not None]
    for name, got, want, leaf in zip(names, grads, want_grads, [t for t in inputs if t is not None]):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape, name
        tol = TOL[torch.bfloat16 if got.dtype == torch.bfloat16 else torch.float32]  # fp32 math, as the reference
        torch.testing.assert_close(got.cpu(), want, **tol, msg=lambda m, name=name: f"grad of {name}: {m}")


# --------------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------------
def _release(x, weight, bias, channel_embed, pos_embed):
    """ChannelViT's release: Conv3d over (B, 1, C, H, W) with a (1, p, p) kernel and stride, the
    channel embedding added as (B, D, C, 1, 1), tokens flattened channel-major, the patch position
    embedding repeated for every channel."""
    d, p, _ = weight.shape
    out = F.conv3d(x.unsqueeze(1), weight.view(d, 1, 1, p, p), bias, stride=(1, p, p))  # (B, D, C, H/p, W/p)
    out = out + channel_embed.permute(0, 2, 1)[..., None, None]
    tokens = out.flatten(2).transpose(1, 2)  # (B, C*N, D)
    return tokens + pos_embed.repeat(x.shape[1], 1)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reference_is_the_release_conv3d(shape, bias):
    inputs = [t if t is None else t.double() for t in _inputs(shape, bias=bias)]
    torch.testing.assert_close(kernels.channel_patch_embed_reference(*inputs), _release(*inputs), **TOL[torch.float64])


def test_reference_backward_is_autograd_of_the_release():
    inputs = [t.double() for t in _inputs((2, 3, 10, 9, 4, 7))]
    _, got = _run(lambda *a: kernels.channel_patch_embed_reference(*a), inputs)
    grad = torch.randn(2, 3 * 4, 7, generator=torch.Generator().manual_seed(1)).double()  # the one _run uses
    want = channel_patch_embed_backward_reference(grad, inputs[0], inputs[1])
    _, release = _run(_release, inputs)
    for g, r, w in zip(got, release, want):  # autograd of both forwards, and the explicit backward (fp32 math)
        torch.testing.assert_close(g, r, **TOL[torch.float64])
        torch.testing.assert_close(w.double(), r, atol=1e-5, rtol=1e-5)
    assert not want[0][..., 8:, :].any() and not want[0][..., 8:].any()  # pixels outside every patch


def test_gradcheck_fp64_reference_path(monkeypatch):
    """The custom op's autograd formula (reference backward) and the plain reference, in fp64."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    inputs = tuple(t.double().requires_grad_() for t in _inputs((2, 2, 5, 6, 2, 3)))
    assert torch.autograd.gradcheck(kernels.channel_patch_embed_reference, inputs)
    assert torch.autograd.gradcheck(kernels.channel_patch_embed, inputs, atol=1e-4)  # fp32 backward math


# --------------------------------------------------------------------------------------------------
# the Triton kernels against the reference
# --------------------------------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference_fp32(triton_mode, shape):
    _compare(shape, torch.float32)


@needs_triton
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference_bf16(triton_mode, shape, param_dtype):
    _compare(shape, torch.bfloat16, param_dtype)


@needs_triton
def test_kernel_without_bias_and_fp64(triton_mode):
    _compare(SHAPES[2], torch.float32, bias=False)
    _compare(SHAPES[0], torch.float64, torch.float64)


@needs_triton
def test_kernel_k_loop_splits_and_position_blocks(triton_mode, monkeypatch):
    """16-pixel K steps (4 for p = 8), the channel images split over 5 programs, 2 position blocks:
    the two-stage reductions (partials, then a sum) of every parameter gradient."""
    from zoo.kernels import _triton_patch_embed

    monkeypatch.setattr(_triton_patch_embed, "MAX_BLOCK_K", 16)
    monkeypatch.setattr(_triton_patch_embed, "MIN_PROGRAMS", 64)
    monkeypatch.setattr(_triton_patch_embed, "MIN_IMAGES_PER_SPLIT", 1)
    assert _triton_patch_embed._splits(5, 4, torch.device(DEVICE)) == 5
    _compare((1, 5, 40, 41, 8, 21), torch.float32)  # 25 positions: two blocks of 16


@needs_triton
def test_kernel_backward_is_deterministic(triton_mode):
    inputs = _inputs((2, 3, 9, 13, 4, 20), device=DEVICE)
    first = _run(kernels.channel_patch_embed, inputs)[1]
    second = _run(kernels.channel_patch_embed, inputs)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# --------------------------------------------------------------------------------------------------
# opcheck and errors
# --------------------------------------------------------------------------------------------------
def _opcheck_cases(device):
    x, weight, bias, ce, pos = _inputs((2, 2, 9, 8, 4, 17), device=device)
    grad = torch.randn(2, 2 * 4, 17, device=device)

    def leaf(t):
        return t.detach().clone().requires_grad_()

    return [
        (torch.ops.zoo.channel_patch_embed.default, (leaf(x), leaf(weight), leaf(bias), leaf(ce), leaf(pos))),
        (torch.ops.zoo.channel_patch_embed.default, (x.to(torch.bfloat16), weight, None, ce, pos)),
        (torch.ops.zoo.channel_patch_embed_backward.default, (grad, x, weight)),
    ]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_cases)


def test_bad_inputs_fail_before_any_work():
    x, weight, bias, ce, pos = _inputs((2, 3, 9, 13, 4, 20))
    cases = [
        ((x[0], weight, bias, ce, pos), r"images \(B, C, H, W\); got shape \(3, 9, 13\)"),
        ((x, weight[:, :3], bias, ce, pos), r"weight must be \(D, p, p\); got \(20, 3, 4\)"),
        ((x[..., :3], weight, bias, ce, pos[:0]), r"9x3 image is smaller than one 4x4 patch"),
        ((x, weight, bias[:5], ce, pos), r"bias must be \(20,\); got \(5,\)"),
        ((x, weight, bias, ce[:, :2], pos), r"channel_embed must be \(B, C, D\) = \(2, 3, 20\)"),
        ((x, weight, bias, ce, pos[:4]), r"pos_embed must be \(N, D\) = \(6, 20\) .* got \(4, 20\)"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            kernels.channel_patch_embed(*args)


def test_available_lists_both_backends():
    assert kernels.available()["ops"]["channel_patch_embed"] == ["torch", "triton"]
    assert kernels.available()["ops"]["channel_patch_embed.backward"] == ["torch", "triton"]
