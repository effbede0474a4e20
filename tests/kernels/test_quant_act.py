"""Per-token int8 activation quantization: ``zoo::quantize_act``, what the integer layers run before their
GEMMs (those: tests/kernels/test_int_gemm.py).

First the reference's invariants (scales, rounding half to even, clamping, per-image static scales), then
the Triton kernel against the reference on small ragged shapes: int8 codes and fp32 scales bit for bit,
then ``opcheck`` and the error messages.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1), where one launch of these tiny shapes costs 0.1 to 1 s: keep shapes small.
"""
from __future__ import annotations

import pytest
import torch

from zoo import kernels

from kernel_testing import DEVICE, INFERENCE_ONLY_OPCHECKS, needs_triton, opcheck_tests


# --------------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_quantize_act_reference_invariants(dtype):
    x = (torch.randn(6, 50) * torch.logspace(-3, 2, 6)[:, None]).to(dtype)
    x[2] = 0
    shift, multiplier = torch.randn(50) * 0.1, torch.rand(50) + 0.5
    q, scale = kernels.quantize_act_reference(x, multiplier, shift)
    v = (x.float() - shift) * multiplier
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    assert torch.equal(scale, v.abs().amax(-1) / 127)
    assert q.abs().max() <= 127 and (q.abs() == 127).any(dim=-1).all()  # the largest |v| maps to +-127
    err = (q.float() * scale[:, None] - v).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()  # round to nearest
    q0, scale0 = kernels.quantize_act_reference(x)  # without a shift the zero row stays zero
    assert scale0[2] == 1 and not q0[2].any()


def test_quantize_act_reference_per_image_scales_equal_one_call_per_image():
    x = torch.randn(3, 4, 5, 6) * 3
    scales = torch.tensor([0.01, 0.05, 0.2])
    q, scale = kernels.quantize_act_reference(x, static_scale=scales)
    for b in range(3):
        q_b, scale_b = kernels.quantize_act_reference(x[b:b + 1], static_scale=scales[b])
        assert torch.equal(q[b:b + 1], q_b) and torch.equal(scale[b:b + 1], scale_b)
    assert scale.shape == (3, 4, 5) and torch.equal(scale[1], torch.full((4, 5), 0.05))
    with pytest.raises(ValueError, match=r"one per image \(3,\)"):
        kernels.quantize_act(x, static_scale=torch.ones(4))


def test_quantize_act_reference_static_scale_clamps_and_ties_round_to_even():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 126.5, 300.0, -1000.0]])
    q, scale = kernels.quantize_act_reference(x, static_scale=torch.tensor([1.0]))
    assert q.tolist() == [[0, 2, 2, 0, -2, 0, 126, 127, -127]] and scale.tolist() == [1.0]


# --------------------------------------------------------------------------------------------------
# the Triton kernel against the reference
# --------------------------------------------------------------------------------------------------
def _quant_inputs(shape, dtype, options, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = shape[-1]
    x = (torch.randn(shape, generator=gen) * 4).to(dtype)
    shift = torch.randn(k, generator=gen) if "shift" in options else None
    multiplier = (torch.rand(k, generator=gen) + 0.5).half() if "mult" in options else None  # any float dtype
    static = torch.tensor([0.02]) if "static" in options else None
    if "per_image" in options:  # one given scale per leading index, some small enough to clamp
        static = torch.rand(shape[0], generator=gen) * 0.05 + 0.01
    return x, multiplier, shift, static


def _check_quantize(x, multiplier, shift, static):
    def dev(t):
        return None if t is None else t.to(DEVICE)

    q, scale = kernels.quantize_act(dev(x), dev(multiplier), dev(shift), dev(static))
    q_ref, scale_ref = kernels.quantize_act_reference(x, multiplier, shift, static)
    assert q.dtype == torch.int8 and q.shape == x.shape and scale.shape == x.shape[:-1]
    assert torch.equal(q.cpu(), q_ref)
    assert torch.equal(scale.cpu(), scale_ref)


@needs_triton
@pytest.mark.parametrize("options", ["", "shift,mult", "static", "static,shift", "per_image,mult"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (2, 3, 130)], ids=lambda s: "x".join(map(str, s)))
def test_quantize_act_kernel_bit_exact(triton_mode, shape, options):
    _check_quantize(*_quant_inputs(shape, torch.float32, options))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_quantize_act_kernel_low_precision_inputs(triton_mode, dtype):
    _check_quantize(*_quant_inputs((5, 21), dtype, "shift,mult"))


@needs_triton
def test_quantize_act_kernel_k_loop_ties_and_zero_rows(triton_mode, monkeypatch):
    """Rows longer than a block (the amax pass and the quantize pass loop over K), exact ties, zero rows."""
    from zoo.kernels import _triton_quant_act

    monkeypatch.setattr(_triton_quant_act, "MAX_BLOCK_K_QUANT", 16)
    monkeypatch.setattr(_triton_quant_act, "QUANT_TILE", 64)
    x, multiplier, shift, _ = _quant_inputs((7, 45), torch.float32, "shift,mult")
    _check_quantize(x, multiplier, shift, None)
    ties = torch.zeros(3, 45)
    ties[0, :9] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 126.5, 127.0, -3.5])  # scale is exactly 1
    _check_quantize(ties, None, None, None)  # row 1 and 2 are all zero: scale 1, codes 0
    _check_quantize(ties, None, None, torch.tensor([0.5]))  # static: clamps at +-127


# --------------------------------------------------------------------------------------------------
# opcheck and errors
# --------------------------------------------------------------------------------------------------
def _opcheck_cases(device):
    x = torch.randn(3, 10, device=device)
    return [
        (torch.ops.zoo.quantize_act.default,
         (x, torch.rand(10, device=device) + 0.5, torch.randn(10, device=device), None)),
        (torch.ops.zoo.quantize_act.default, (x.to(torch.bfloat16), None, None, torch.tensor([0.1], device=device))),
    ]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_cases, test_utils=INFERENCE_ONLY_OPCHECKS)


def test_quantize_act_has_a_triton_implementation(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "auto")
    assert kernels.available()["ops"]["quantize_act"] == ["torch", "triton"]


def test_bad_inputs_raise_errors_that_name_the_problem():
    q = torch.randint(-128, 128, (1, 3, 3, 6), dtype=torch.int8)
    with pytest.raises(TypeError, match="floating-point activations; got torch.int8"):
        kernels.quantize_act(q)
    with pytest.raises(ValueError, match=r"multiplier must have shape \(6,\).*got \(5,\)"):
        kernels.quantize_act(torch.randn(2, 6), multiplier=torch.rand(5))
    with pytest.raises(ValueError, match=r"static_scale must hold one value, or one per image"):
        kernels.quantize_act(torch.randn(2, 6), static_scale=torch.rand(3))
