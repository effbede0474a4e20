"""``zoo::adaln_modulate`` (LayerNorm without affine, then a per-sample ``* (1 + scale) + shift``, VAR's
AdaLN): the reference against ``F.layer_norm`` and VAR's formula, gradcheck of the reference and of the op's
autograd formula in fp64, the Triton kernels (forward and backward) against the reference on ragged shapes
in fp32, bf16, fp16 and fp64, opcheck, the gated residual and the errors.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1): keep shapes small.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo import kernels

from kernel_testing import DEVICE, TOL, needs_triton, opcheck_tests

# (B, L, C): C not a power of two, L = 1, B = 1, a C of one tile column, a row wider than 64
SHAPES = [(2, 5, 24), (1, 1, 40), (3, 7, 33), (2, 3, 100)]


def _inputs(shape, dtype=torch.float32, param_dtype=None, device="cpu", seed=0, scale_shape="b1c"):
    """x (B, L, C) with an offset per row, scale and shift (B, 1, C) or (B, C)."""
    b, l, c = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, c, generator=gen) * 2 + torch.randn(b, l, 1, generator=gen) * 3
    stats = (b, 1, c) if scale_shape == "b1c" else (b, c)
    scale, shift = torch.randn(stats, generator=gen) * 0.5, torch.randn(stats, generator=gen)
    param_dtype = param_dtype or dtype
    return x.to(device, dtype), scale.to(device, param_dtype), shift.to(device, param_dtype)


def _var_formula(x, scale, shift, eps=1e-6):
    """VAR's AdaLNSelfAttn: ``ln_wo_grad(x).mul(scale1.add(1)).add_(shift1)``, scale/shift (B, 1, C)."""
    ln = F.layer_norm(x, x.shape[-1:], eps=eps)  # elementwise_affine=False
    return ln.mul(scale.add(1)).add_(shift)


def _run(fn, inputs, seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)
    return out, torch.autograd.grad(out, leaves, grad)


# --------------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reference_is_var_layer_norm_formula(shape, monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    x, scale, shift = (t.double() for t in _inputs(shape))
    want, want_grads = _run(_var_formula, [x, scale, shift])
    got, grads = _run(kernels.adaln_modulate, [x, scale, shift])
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, **TOL[torch.float64])
    # fp32 against fp32 eager; (B, C) modulation as well
    x, scale, shift = _inputs(shape, scale_shape="bc")
    torch.testing.assert_close(kernels.adaln_modulate(x, scale, shift), _var_formula(x, scale[:, None], shift[:, None]),
                               **TOL[torch.float32])


def test_eps_and_batch_broadcast(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    x, scale, shift = _inputs((3, 4, 10))
    torch.testing.assert_close(kernels.adaln_modulate(x * 1e-3, scale, shift, eps=1e-2),
                               _var_formula(x * 1e-3, scale, shift, eps=1e-2))
    # one modulation for the whole batch, (1, 1, C): its gradient sums over the samples
    got, grads = _run(kernels.adaln_modulate, [x, scale[:1], shift[:1]])
    want, want_grads = _run(_var_formula, [x, scale[:1], shift[:1]])
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, want_grads):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_gradcheck_fp64(monkeypatch):
    """The plain reference and the op's autograd formula (the reference backward), in fp64."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    x, scale, shift = (t.double().requires_grad_() for t in _inputs((2, 3, 7), scale_shape="bc"))
    assert torch.autograd.gradcheck(lambda *a: kernels.adaln_modulate_reference(*a, 1e-6)[0], (x, scale, shift))
    assert torch.autograd.gradcheck(kernels.adaln_modulate, (x, scale, shift))


def test_gated_residual():
    x, gate, _ = _inputs((2, 5, 12))
    y = torch.randn_like(x)
    torch.testing.assert_close(kernels.adaln_gated_residual(x, y, gate), x + y * gate)
    got, grads = _run(kernels.adaln_gated_residual, [x, y, gate])
    want, want_grads = _run(lambda r, v, g: r + v * g, [x, y, gate])
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)
    with pytest.raises(ValueError, match=r"adaln_gated_residual: gate must be \(B, 1, C\)"):
        kernels.adaln_gated_residual(x, y, gate[..., :3])


# --------------------------------------------------------------------------------------------------
# the Triton kernels against the reference
# --------------------------------------------------------------------------------------------------
def _compare(shape, dtype, param_dtype=None):
    """Kernel path vs reference path, forward and the gradients of x, scale and shift."""
    inputs = _inputs(shape, dtype, param_dtype, DEVICE)
    out, grads = _run(kernels.adaln_modulate, inputs)
    cpu = [t.cpu() for t in inputs]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_KERNELS", "torch")
        want, want_grads = _run(kernels.adaln_modulate, cpu)
    assert out.dtype == dtype and out.shape == want.shape
    torch.testing.assert_close(out.cpu(), want, **TOL[dtype])
    # the row statistics the forward saves for the backward
    _, mean, rstd = torch.ops.zoo.adaln_modulate(inputs[0], inputs[1][:, 0], inputs[2][:, 0], 1e-6)
    _, want_mean, want_rstd = kernels.adaln_modulate_reference(cpu[0], cpu[1][:, 0], cpu[2][:, 0], 1e-6)
    stats_tol = TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    assert mean.dtype == want_mean.dtype and mean.shape == shape[:2]
    torch.testing.assert_close(mean.cpu(), want_mean, **stats_tol)
    torch.testing.assert_close(rstd.cpu(), want_rstd, **stats_tol)
    for name, got, want_g, leaf in zip(("x", "scale", "shift"), grads, want_grads, inputs):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape, name
        torch.testing.assert_close(got.cpu(), want_g, **TOL[got.dtype], msg=lambda m, n=name: f"grad of {n}: {m}")


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference_fp32(triton_mode, shape):
    _compare(shape, torch.float32)


@needs_triton
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference_bf16(triton_mode, shape):
    _compare(shape, torch.bfloat16)


@needs_triton
def test_kernel_mixed_dtypes_fp16_fp64(triton_mode):
    _compare((2, 3, 24), torch.bfloat16, torch.float32)  # fp32 modulation of bf16 tokens
    _compare((1, 4, 20), torch.float16)
    _compare((2, 3, 9), torch.float64)


@needs_triton
def test_kernel_backward_row_splits(triton_mode, monkeypatch):
    """Each sample's rows split over several programs: the two-stage sum of grad_scale and grad_shift."""
    from zoo.kernels import _triton_adaln

    monkeypatch.setattr(_triton_adaln, "MIN_PROGRAMS", 8)
    assert _triton_adaln._splits(2, 9, 2, torch.device(DEVICE)) == (3, 4)  # rows 0-3, 4-7, 8 of each sample
    _compare((2, 9, 24), torch.float32)


@needs_triton
def test_kernel_is_var_formula(triton_mode):
    x, scale, shift = _inputs((2, 6, 48), device=DEVICE)
    torch.testing.assert_close(kernels.adaln_modulate(x, scale, shift), _var_formula(x, scale, shift),
                               **TOL[torch.float32])


# --------------------------------------------------------------------------------------------------
# opcheck and errors
# --------------------------------------------------------------------------------------------------
def _opcheck_cases(device):
    x, scale, shift = _inputs((2, 3, 20), device=device, scale_shape="bc")
    grad = torch.randn_like(x)
    _, mean, rstd = kernels.adaln_modulate_reference(x.cpu(), scale.cpu(), shift.cpu(), 1e-6)
    mean, rstd = mean.to(device), rstd.to(device)

    def leaf(t):
        return t.detach().clone().requires_grad_()

    return [(torch.ops.zoo.adaln_modulate.default, (leaf(x), leaf(scale), leaf(shift), 1e-6)),
            (torch.ops.zoo.adaln_modulate.default, (x.to(torch.bfloat16), scale, shift, 1e-5)),
            (torch.ops.zoo.adaln_modulate_backward.default, (grad, x, scale, mean, rstd))]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_cases)


def test_compiles_fullgraph():
    x, scale, shift = _inputs((2, 3, 12))
    fn = torch.compile(kernels.adaln_modulate, fullgraph=True, backend="aot_eager")
    got, grads = _run(fn, [x, scale, shift])
    want, want_grads = _run(kernels.adaln_modulate, [x, scale, shift])
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)


def test_bad_inputs_fail_before_any_work():
    x, scale, shift = _inputs((2, 3, 8))
    cases = [
        ((x[0], scale, shift), ValueError, r"tokens \(B, L, C\); got shape \(3, 8\)"),
        ((x, scale[..., :5], shift), ValueError, r"scale must be \(B, 1, C\) or \(B, C\) = \(2, 1, 8\) .* got \(2, 1, 5\)"),
        ((x, scale, torch.zeros(3, 1, 8)), ValueError, r"shift must be .* got \(3, 1, 8\)"),
        ((x.long(), scale, shift), TypeError, "got torch.int64"),
        ((x[..., :0], scale[..., :0], shift[..., :0]), ValueError, "C = 0 channels"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            kernels.adaln_modulate(*args)
    with pytest.raises(ValueError, match="eps must be positive"):
        kernels.adaln_modulate(x, scale, shift, eps=0.0)


def test_available_lists_both_backends():
    assert kernels.available()["ops"]["adaln_modulate"] == ["torch", "triton"]
    assert kernels.available()["ops"]["adaln_modulate.backward"] == ["torch", "triton"]
