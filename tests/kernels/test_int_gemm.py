"""The integer GEMMs: ``zoo::int_conv2d`` (implicit GEMM over int8 / packed int4 weights; ``int_linear`` is
its 1 x 1 case), with int4 packing. (The activation quantization they take: tests/kernels/test_quant_act.py.)

First the references against plain PyTorch (int4 packing, dequantized fp64 ``F.conv2d``), then the
Triton kernel against the reference on small ragged shapes: int32 accumulators bit for bit, float
outputs within fp32 rounding (bit for bit in the interpreter, which has no FMA contraction), then
``opcheck`` and the error messages.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1), where one launch of these tiny shapes costs 0.1 to 1 s: keep shapes small.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo import kernels
from zoo.kernels.dispatch import _interpreting
from zoo.kernels.int_gemm import int_conv2d_accumulators_reference, weight_values

from kernel_testing import DEVICE, INFERENCE_ONLY_OPCHECKS, needs_triton, opcheck_tests


def _assert_float_output(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit in the interpreter; on GPU within fp32 rounding (FMA contraction in the epilogue)."""
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    if _interpreting():
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    elif want.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5 * float(want.abs().max().clamp(min=1)))
    else:  # one rounding of a value that may differ in its last fp32 bits
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2 * float(want.abs().max()))


# --------------------------------------------------------------------------------------------------
# operands
# --------------------------------------------------------------------------------------------------
def _conv_operands(b, h, w, c, n, k, bits, group_size=None, asym=False, per_segment=True, seed=0):
    """int8 activations with per-pixel scales, int8 or packed-int4 weights with scales (and zero points)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (b, h, w, c), dtype=torch.int8, generator=gen)
    a_scale = torch.rand(b, h, w, generator=gen) * 0.05 + 0.01
    if bits == 8:
        weight = torch.randint(-127, 128, (n, k, k, c), dtype=torch.int8, generator=gen)
    else:
        weight = kernels.pack_int4(torch.randint(0, 16, (n, k, k, c), generator=gen))
    s = k * k * (c // group_size) if group_size and per_segment else 1
    w_scale = torch.rand(n, s, generator=gen) * 0.02 + 0.001
    w_zero = torch.randint(0, 16, (n, s), dtype=torch.uint8, generator=gen) if asym else None
    bias = torch.randn(n, generator=gen)
    return q, a_scale, weight, w_scale, w_zero, bias


# (B, H, W, C, N, kernel, stride, padding, weight_bits, group_size, asymmetric, per-segment scales)
CONV_CASES = {
    "w8_3x3_pad1": (2, 3, 4, 13, 19, 3, 1, 1, 8, None, False, True),
    "w8_3x3_stride2": (1, 5, 6, 9, 17, 3, 2, 0, 8, None, False, True),
    "w4_3x3_stride2_pad1_oddC": (1, 5, 5, 11, 18, 3, 2, 1, 4, None, False, True),
    "w4asym_3x3_group4": (1, 3, 3, 12, 17, 3, 1, 1, 4, 4, True, True),
    "w8_1x1_group5": (2, 2, 3, 20, 5, 1, 1, 0, 8, 5, False, True),
    "w8_1x1_group5_one_scale": (1, 2, 3, 20, 6, 1, 1, 0, 8, 5, False, False),
    "w4_1x1_oddgroup3": (1, 2, 2, 9, 7, 1, 1, 0, 4, 3, False, True),
    "w4asym_1x1_perchannel_1px": (3, 1, 1, 7, 33, 1, 1, 0, 4, None, True, True),
    "w4asym_3x3_on_1x1_image": (1, 1, 1, 6, 4, 3, 1, 1, 4, 2, True, True),
    "w8_1x1_stride2": (1, 5, 4, 5, 3, 1, 2, 0, 8, None, False, True),
}


def _conv_args(case):
    b, h, w, c, n, k, s, p, bits, gs, asym, per_segment = CONV_CASES[case]
    q, a_scale, weight, w_scale, w_zero, bias = _conv_operands(b, h, w, c, n, k, bits, gs, asym, per_segment)
    return q, a_scale, weight, w_scale, w_zero, bias, (s, s), (p, p), bits, gs


# --------------------------------------------------------------------------------------------------
# references against plain PyTorch
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 6, 7])
def test_pack_int4_round_trip_and_layout(channels):
    values = torch.randint(0, 16, (3, 2, channels))
    packed = kernels.pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 2, (channels + 1) // 2)
    assert torch.equal(kernels.unpack_int4(packed, channels), values.to(torch.uint8))
    # channel 2i is the low nibble, 2i + 1 the high one
    assert kernels.pack_int4(torch.tensor([3, 12, 5])).tolist() == [3 | 12 << 4, 5]
    with pytest.raises(ValueError, match="0..15"):
        kernels.pack_int4(torch.tensor([16]))


def _dequantized_conv(q, a_scale, weight, w_scale, w_zero, bias, stride, padding, bits, group_size):
    """The convolution of the dequantized tensors in fp64, with every per-segment scale expanded by hand."""
    n, kh, kw, _ = weight.shape
    c = q.shape[-1]
    values = weight_values(weight, w_zero, bits, c, group_size).double()  # (N, KH, KW, C)
    groups = c // (group_size or c)
    tap = torch.arange(kh * kw).view(kh, kw, 1)
    segment = tap * groups + torch.arange(c).view(1, 1, c) // (group_size or c)  # (KH, KW, C)
    scale = w_scale.double()[:, segment] if w_scale.shape[1] > 1 else w_scale.double().view(n, 1, 1, 1)
    x = (q.double() * a_scale.double()[..., None]).permute(0, 3, 1, 2)  # (B, C, H, W)
    w = (values * scale).permute(0, 3, 1, 2)  # (N, C, KH, KW)
    return F.conv2d(x, w, bias.double(), stride, padding).permute(0, 2, 3, 1)  # (B, Ho, Wo, N)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_int_conv2d_reference_is_the_dequantized_convolution(case):
    args = _conv_args(case)
    out = kernels.int_conv2d_reference(*args, torch.float32)
    want = _dequantized_conv(*args)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_int4_zero_points_shift_the_codes():
    """asymmetric int4: value = nibble - zero, with zero = 8 when symmetric."""
    nibbles = torch.tensor([[0, 15, 8, 3]])
    packed = kernels.pack_int4(nibbles.view(1, 1, 1, 4))
    assert weight_values(packed, None, 4, 4, None).flatten().tolist() == [-8, 7, 0, -5]
    zero = torch.tensor([[3, 10]], dtype=torch.uint8)  # group_size 2: one zero per pair of channels
    assert weight_values(packed, zero, 4, 4, 2).flatten().tolist() == [-3, 12, -2, -7]


@pytest.mark.parametrize("case", ["w8_3x3_pad1", "w4asym_3x3_group4", "w4_1x1_oddgroup3"])
def test_accumulators_reference_agrees_with_the_reference_op(case):
    """Unit activation scales: the op's output is the sum of segment accumulators times their weight scale."""
    q, _, weight, w_scale, w_zero, _, stride, padding, bits, gs = _conv_args(case)
    acc = int_conv2d_accumulators_reference(q, weight, w_zero, stride, padding, bits, gs)
    ones = torch.ones(q.shape[:3])
    out = kernels.int_conv2d_reference(q, ones, weight, w_scale, w_zero, None, stride, padding, bits, gs,
                                       torch.float64)
    segments = acc.shape[-1]
    c = q.shape[-1]
    assert acc.dtype == torch.int32 and segments == weight.shape[1] * weight.shape[2] * (c // (gs or c))
    terms = acc.double() * w_scale.double().expand(-1, segments)  # (B, Ho, Wo, N, segments)
    # the reference sums in fp32 whatever out_dtype is: allow its rounding, relative to the terms' size
    torch.testing.assert_close(out, terms.sum(-1), rtol=0, atol=1e-6 * float(terms.abs().sum(-1).max()))
    with_scales = kernels.int_conv2d_reference(q, ones, weight, torch.ones_like(w_scale), w_zero, None, stride, padding,
                                               bits, gs, torch.float64)
    assert torch.equal(with_scales, acc.sum(-1).double())  # exact: every sum is far below 2^24


def _int32_epilogue(q, a_scale, weight, w_scale, w_zero, bias, bits, group_size):
    """A 1 x 1 convolution's output from the int32 accumulators, summed in segment order as the kernel."""
    acc = int_conv2d_accumulators_reference(q, weight, w_zero, (1, 1), (0, 0), bits, group_size)  # (..., N, S)
    out = torch.zeros(acc.shape[:-1])
    for s in range(acc.shape[-1]):
        out += acc[..., s].float() * a_scale[..., None] * w_scale.float()[:, s if w_scale.shape[1] > 1 else 0]
    return out + bias


@pytest.mark.parametrize("c,bits,group_size", [(2080, 8, None), (1051, 8, None), (4100, 4, None), (2080, 4, 1040)],
                         ids=["w8_two_fp32_slices", "w8_prime_fp64", "w4_sum_in_fp64", "w4_groups"])
@pytest.mark.parametrize("precision", ["highest", "medium"])
def test_reference_is_exact_for_long_segments(c, bits, group_size, precision):
    """Segments long enough that one fp32 GEMM could round (int8 x int8 over more than 1040 channels): the
    reference slices them (or takes fp64, also when fp32 matmuls may run at reduced precision) and still
    equals the int32 accumulators' epilogue bit for bit. Activations and weights at their extremes."""
    q = torch.full((1, 1, 3, c), -127, dtype=torch.int8)
    q[0, 0, 1] = 127
    a_scale = torch.tensor([[[0.01, 0.02, 0.03]]])
    if bits == 8:
        weight = torch.full((2, 1, 1, c), 127, dtype=torch.int8)
        weight[1, ..., ::3] = -127
        weight[0, ..., -1] = 1  # an odd sum above 2^24: an fp32 GEMM over the whole segment must round it
    else:
        nibbles = torch.zeros(2, 1, 1, c, dtype=torch.int64)  # nibble 0: value -8
        nibbles[0, ..., -1] = 9  # value 1: an odd sum
        weight = kernels.pack_int4(nibbles)
    segments = c // group_size if group_size else 1
    w_scale = torch.rand(2, segments) * 0.01 + 1e-3
    bias = torch.randn(2)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        out = kernels.int_conv2d_reference(q, a_scale, weight, w_scale, None, bias, (1, 1), (0, 0), bits,
                                           group_size, torch.float32)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert torch.equal(out, _int32_epilogue(q, a_scale, weight, w_scale, None, bias, bits, group_size))


# --------------------------------------------------------------------------------------------------
# Triton kernels against the references
# --------------------------------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_int_conv2d_kernel_matches_reference(triton_mode, case):
    from zoo.kernels import _triton_int_gemm

    q, a_scale, weight, w_scale, w_zero, bias, stride, padding, bits, gs = args = _conv_args(case)
    dev = [None if t is None else t.to(DEVICE) for t in (q, a_scale, weight, w_scale, w_zero, bias)]
    acc = _triton_int_gemm.int_conv2d_accumulators(dev[0], dev[2], dev[4], stride, padding, bits, gs)
    assert acc.dtype == torch.int32
    assert torch.equal(acc.cpu(), int_conv2d_accumulators_reference(q, weight, w_zero, stride, padding, bits, gs))
    out = kernels.int_conv2d(*dev, stride, padding, bits, gs, torch.float32)
    _assert_float_output(out, kernels.int_conv2d_reference(*args, torch.float32))


@needs_triton
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", ["w4asym_3x3_group4", "w8_1x1_group5"])
def test_int_conv2d_kernel_low_precision_output(triton_mode, case, out_dtype):
    args = _conv_args(case)
    dev = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in args]
    _assert_float_output(kernels.int_conv2d(*dev, out_dtype=out_dtype), kernels.int_conv2d_reference(*args, out_dtype))


@needs_triton
@pytest.mark.parametrize("group_size", [None, 21])
@pytest.mark.parametrize("bits", [8, 4])
def test_int_conv2d_kernel_several_chunks_per_segment(triton_mode, monkeypatch, bits, group_size):
    """16-channel dot steps: a 42-channel segment takes three, a 21-channel group two; the second group
    starts mid-byte in int4 (channel 21), so its chunks start at channel 20 with channel 20 masked."""
    from zoo.kernels import _triton_int_gemm

    monkeypatch.setattr(_triton_int_gemm, "MAX_BLOCK_C", 16)
    q, a_scale, weight, w_scale, w_zero, bias = _conv_operands(1, 2, 3, 42, 9, 1, bits, group_size, asym=bits == 4)
    args = (q, a_scale, weight, w_scale, w_zero, bias, (1, 1), (0, 0), bits, group_size)
    w_zero_dev = None if w_zero is None else w_zero.to(DEVICE)
    acc = _triton_int_gemm.int_conv2d_accumulators(q.to(DEVICE), weight.to(DEVICE), w_zero_dev, (1, 1), (0, 0),
                                                   bits, group_size)
    want = int_conv2d_accumulators_reference(q, weight, w_zero, (1, 1), (0, 0), bits, group_size)
    assert torch.equal(acc.cpu(), want)
    dev = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in args]
    _assert_float_output(kernels.int_conv2d(*dev), kernels.int_conv2d_reference(*args, torch.float32))


@needs_triton
@pytest.mark.parametrize("m,k,n,bits,group_size,out_dtype", [
    (1, 37, 21, 8, None, torch.float32),
    (1, 64, 19, 4, 32, torch.bfloat16),
    (3, 45, 18, 4, None, torch.float32),
])
def test_int_linear_kernel_matches_reference(triton_mode, m, k, n, bits, group_size, out_dtype):
    """Activation quantization, then the 1 x 1 GEMM, as a quantized linear layer runs them."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(m, k, generator=gen)
    asym = group_size is not None
    _, _, weight, w_scale, w_zero, bias = _conv_operands(1, 1, 1, k, n, 1, bits, group_size, asym=asym)
    weight = weight.view(n, -1)  # (N, K) or packed (N, ceil(K / 2))
    q, a_scale = kernels.quantize_act(x.to(DEVICE))
    w_zero_dev = None if w_zero is None else w_zero.to(DEVICE)
    out = kernels.int_linear(q, a_scale, weight.to(DEVICE), w_scale.to(DEVICE), w_zero_dev, bias.to(DEVICE), bits,
                             group_size, out_dtype)
    q_ref, a_ref = kernels.quantize_act_reference(x)
    assert torch.equal(q.cpu(), q_ref)
    want = kernels.int_conv2d_reference(q_ref.view(1, 1, m, k), a_ref.view(1, 1, m), weight.view(n, 1, 1, -1), w_scale,
                                        w_zero, bias, (1, 1), (0, 0), bits, group_size, out_dtype).view(m, n)
    _assert_float_output(out, want)


@needs_triton
@pytest.mark.parametrize("group_size", [None, 6])
def test_quantizer_int4_codes_with_minus_eight_through_the_kernel(triton_mode, group_size):
    """Weights from :func:`zoo.blocks.quant.quantize_weight` (symmetric int4 on -8..7: a segment whose
    largest magnitude is negative puts it on -8, nibble 0) give the same int32 accumulators in the kernel
    as in the reference, and the reference decodes them back to ``round(w / scale)``."""
    from zoo.blocks.quant import quantize_weight
    from zoo.kernels import _triton_int_gemm

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(5, 3, 3, 12, generator=gen)  # (N, KH, KW, C)
    w[:, 0, 0, 0] = -4.0  # the largest magnitude of its segment, negative: code -8
    qw = quantize_weight(w, 4, group_size)
    codes = weight_values(qw.values, None, 4, 12, group_size)  # (N, KH, KW, C) signed
    assert int(codes.min()) == -8 and int(codes.max()) <= 7
    assert (codes[:, 0, 0, 0] == -8).all()
    q = torch.randint(-127, 128, (2, 4, 5, 12), dtype=torch.int8, generator=gen)
    acc = _triton_int_gemm.int_conv2d_accumulators(q.to(DEVICE), qw.values.to(DEVICE), None, (1, 1), (1, 1), 4,
                                                   group_size)
    assert torch.equal(acc.cpu(), int_conv2d_accumulators_reference(q, qw.values, None, (1, 1), (1, 1), 4, group_size))


# --------------------------------------------------------------------------------------------------
# opcheck and errors
# --------------------------------------------------------------------------------------------------
def _opcheck_cases(device):
    q, a_scale, weight, w_scale, w_zero, bias = (t.to(device) for t in _conv_operands(1, 2, 3, 6, 5, 3, 4, 2, True))
    q8, a8, w8, s8 = (t.to(device) for t in _conv_operands(1, 1, 2, 5, 4, 1, 8)[:4])
    return [
        (torch.ops.zoo.int_conv2d.default,
         (q, a_scale, weight, w_scale, w_zero, bias, [1, 1], [1, 1], 4, 2, torch.float32)),
        (torch.ops.zoo.int_conv2d.default, (q8, a8, w8, s8, None, None, [1, 1], [0, 0], 8, None, torch.bfloat16)),
    ]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_cases, test_utils=INFERENCE_ONLY_OPCHECKS)


def test_int_conv2d_has_a_triton_implementation(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "auto")
    assert kernels.available()["ops"]["int_conv2d"] == ["torch", "triton"]


def test_bad_inputs_raise_errors_that_name_the_problem():
    q, a_scale, weight, w_scale, _, bias = _conv_operands(1, 3, 3, 6, 4, 3, 8)
    packed = kernels.pack_int4(torch.randint(0, 16, (4, 3, 3, 6)))
    cases = [
        (dict(q=q.float()), r"int8 activations \(B, H, W, C\); got torch.float32"),
        (dict(a_scale=a_scale[0]), r"a_scale must be \(B, H, W\) = \(1, 3, 3\); got \(3, 3\)"),
        (dict(weight=packed), r"8-bit weights for 6 input channels are torch.int8 \(N, KH, KW, 6\); got torch.uint8"),
        (dict(weight=weight, weight_bits=4), r"4-bit weights .* torch.uint8 \(N, KH, KW, 3\); got torch.int8"),
        (dict(weight_bits=2), r"weight_bits must be 4 or 8; got 2"),
        (dict(group_size=4), r"group_size=4 does not divide the 6 input channels"),
        (dict(w_scale=torch.rand(4, 5), group_size=3), r"w_scale must be \(4, 1\) or \(4, 18\); got \(4, 5\)"),
        (dict(w_zero=torch.zeros(4, 1, dtype=torch.uint8)), r"w_zero is for 4-bit weights"),
        (dict(bias=bias[:3]), r"bias must be \(4,\); got \(3,\)"),
        (dict(q=q[:, :1, :1]), r"3x3 kernel does not fit a 1x1 input with padding \(0, 0\)"),
    ]
    base = dict(q=q, a_scale=a_scale, weight=weight, w_scale=w_scale, bias=bias)
    for change, message in cases:
        kwargs = {**base, **change}
        if "q" in change and change["q"].dtype == torch.int8:
            kwargs["a_scale"] = a_scale[:, :1, :1]
        with pytest.raises(ValueError, match=message):
            kernels.int_conv2d(**kwargs)
