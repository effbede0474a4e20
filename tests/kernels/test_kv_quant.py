"""``zoo::kv_quantize`` / ``zoo::kv_dequantize`` (KIVI-style KV-cache quantization): the reference's error
bound, exact round trips, the packing layout and the byte count; the Triton kernels against the reference
bit for bit on ragged (B, H, T, D) shapes for 2, 4 and 8 bits, both axes, fp32, bf16 and fp16; opcheck and
the errors.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1), where a quantize + dequantize on these shapes costs about 0.5 s: keep shapes small.
"""
from __future__ import annotations

import pytest
import torch

from zoo import kernels
from zoo.kernels.kv_quant import KVQuantized, pack_codes, unpack_codes

from kernel_testing import DEVICE, needs_triton, opcheck_tests

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}

# (shape, axis, group_size): keys per channel (axis = T), values per token (axis = D); D = 24 and 40
# (not powers of two; odd last dims are in the packing test), B = 1, a group size of 20
CASES = [((2, 3, 16, 24), 2, 8), ((1, 2, 8, 40), 2, 8), ((2, 3, 5, 24), 3, 8), ((1, 2, 3, 40), 3, 20)]


def _x(shape, dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    # a per-channel offset and spread, as keys have (outlier channels)
    offset = torch.randn(shape[-1], generator=gen) * 4
    spread = torch.rand(shape[-1], generator=gen) * 3 + 0.1
    return (torch.randn(shape, generator=gen) * spread + offset).to(device=device, dtype=dtype)


def _per_element(stat: torch.Tensor, q: KVQuantized) -> torch.Tensor:
    """scale or zero expanded to the quantized tensor's shape (each group's value on its elements)."""
    return stat.float().repeat_interleave(q.group_size, dim=q.axis)


# --------------------------------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-axis{c[1]}-g{c[2]}")
def test_reference_error_is_at_most_half_a_step(case, bits, dtype, monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    shape, axis, group_size = case
    x = _x(shape, dtype)
    q = kernels.kv_quantize(x, bits, group_size, axis)
    err = (kernels.kv_dequantize(q, torch.float32) - x.float()).abs()
    scale, qmax = _per_element(q.scale, q), 2**bits - 1
    # half a step, plus the scale's rounding to x's dtype accumulated over qmax steps, plus fp32 rounding
    bound = scale / 2 + qmax * scale * UNIT_ROUNDOFF[dtype] + 1e-6 * x.float().abs()
    assert (err <= bound).all(), float((err - bound).max())
    assert err.max() > 0.25 * scale.max()  # not trivially exact
    # min-max: every group's min reaches code 0 and its max code qmax
    codes = unpack_codes(q.codes, bits, shape[-1])
    assert int(codes.max()) == qmax and int(codes.min()) == 0


def test_reference_zero_is_the_group_minimum():
    x = _x((2, 3, 16, 8))
    q = kernels.kv_quantize(x, 4, 8, axis=2)
    want = x.view(2, 3, 2, 8, 8).amin(3)  # (B, H, T // 8, D): per channel, per group of 8 tokens
    assert torch.equal(q.zero, want)
    want_scale = (x.view(2, 3, 2, 8, 8).amax(3) - want) / 15
    assert torch.equal(q.scale, want_scale)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_values_on_the_grid_round_trip_exactly(bits):
    qmax = 2**bits - 1
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, qmax + 1, (2, 4, 6, 8), generator=gen)  # groups of 6 tokens (axis 2)
    codes[:, :, 0], codes[:, :, 1] = 0, qmax  # every group spans the whole grid
    scale = 2.0 ** torch.randint(-6, 3, (2, 4, 1, 8), generator=gen).float()  # powers of two: exact math
    zero = torch.randint(-8, 8, (2, 4, 1, 8), generator=gen).float() * scale
    x = codes * scale + zero  # (code + m) * 2^k: exact in fp32, and in bf16 while |code + m| < 256
    for dtype in (torch.float32, torch.bfloat16) if bits < 8 else (torch.float32,):
        q = kernels.kv_quantize(x.to(dtype), bits, 6, axis=2)
        assert torch.equal(unpack_codes(q.codes, bits, 8).long(), codes)
        assert torch.equal(q.scale.float(), scale) and torch.equal(q.zero.float(), zero)
        assert torch.equal(kernels.kv_dequantize(q), x.to(dtype))


def test_constant_groups_come_back_exactly_without_nan():
    x = _x((1, 2, 8, 12))
    x[0, 0, :4] = 2.5  # a constant group of 4 tokens (keys, axis 2), every channel
    x[0, 1] = 0.0  # a whole head of zeros
    for axis in (2, 3):
        q = kernels.kv_quantize(x, 2, 4, axis)
        y = kernels.kv_dequantize(q)
        assert torch.isfinite(q.scale).all() and torch.isfinite(y).all()
        assert torch.equal(y[0, 1], x[0, 1])
        if axis == 2:
            assert torch.equal(y[0, 0, :4], x[0, 0, :4]) and (q.scale[0, 0, 0] == 0).all()


def test_packing_layout_low_bits_first_and_padding():
    # 2 bits, 5 codes in a row: 4 per byte, the second byte holds one code and 3 zero codes
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 1.0]])  # one group of 5: zero 0, scale 1, codes = x
    q = kernels.kv_quantize(x, bits=2, group_size=5)
    assert q.codes.dtype == torch.uint8 and q.codes.tolist() == [[0b11100100, 0b00000001]]
    q4 = kernels.kv_quantize(torch.arange(16.0).view(1, 16), bits=4, group_size=16)
    assert q4.codes.tolist() == [[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]]
    q8 = kernels.kv_quantize(torch.arange(3.0).view(1, 3), bits=8, group_size=3)
    assert q8.codes.tolist() == [[0, 127, 255]]  # scale 2 / 255: 1.0 sits at 127.5, rounded half to even
    gen = torch.Generator().manual_seed(0)
    for bits in (2, 4, 8):
        for d in (1, 7, 24, 40):
            codes = torch.randint(0, 2**bits, (3, d), generator=gen, dtype=torch.uint8)
            packed = pack_codes(codes, bits)
            assert packed.shape == (3, -(-d // (8 // bits)))
            assert torch.equal(unpack_codes(packed, bits, d), codes)


def test_nbytes_and_ratio_to_fp16():
    x = _x((1, 4, 128, 64), torch.float16)
    numel = x.numel()
    for bits, group_size, axis in ((4, 64, 2), (4, 64, 3), (2, 32, 2), (4, 32, 3)):
        q = kernels.kv_quantize(x, bits, group_size, axis)
        groups = numel // group_size
        assert q.nbytes() == numel * bits // 8 + 2 * 2 * groups
    q = kernels.kv_quantize(x, 4, 64, axis=2)
    assert q.nbytes() / (2 * numel) == pytest.approx(0.28125)  # 4 bits + 2 fp16 per 64: at most 0.3x
    assert kernels.kv_quantize(x, 2, 32, axis=3).nbytes() / (2 * numel) == pytest.approx(0.1875)


def test_cat_along_tokens_equals_quantizing_the_whole():
    x = _x((1, 2, 16, 12))
    for axis in (2, 3):  # keys (groups of 4 tokens) and values (groups of 4 channels)
        whole = kernels.kv_quantize(x, 4, 4, axis)
        parts = [kernels.kv_quantize(x[:, :, :8], 4, 4, axis), kernels.kv_quantize(x[:, :, 8:], 4, 4, axis)]
        cat = KVQuantized.cat(parts, dim=2)
        assert cat.shape == x.shape
        for name in ("codes", "scale", "zero"):
            assert torch.equal(getattr(cat, name), getattr(whole, name)), name
        assert torch.equal(cat.dequantize(), whole.dequantize())
    with pytest.raises(ValueError, match="multiple of 2 elements"):
        KVQuantized.cat([kernels.kv_quantize(x[..., :3], 4, 1), kernels.kv_quantize(x[..., 3:], 4, 1)], dim=-1)


def test_empty_token_axis():
    x = torch.zeros(1, 2, 0, 8)
    for mode in ("torch",) + (("triton",) if DEVICE == "cpu" else ()):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ZOO_KERNELS", mode)
            q = kernels.kv_quantize(x, 4, 4, axis=2)
            assert q.codes.shape == (1, 2, 0, 4) and q.scale.shape == (1, 2, 0, 8)
            assert kernels.kv_dequantize(q).shape == x.shape


# --------------------------------------------------------------------------------------------------
# the Triton kernels against the reference
# --------------------------------------------------------------------------------------------------
def _compare(shape, axis, group_size, bits, dtype):
    x = _x(shape, dtype, device=DEVICE)
    q = kernels.kv_quantize(x, bits, group_size, axis)
    codes, scale, zero = kernels.kv_quantize_reference(x.cpu(), bits, group_size, axis % x.ndim)
    assert q.codes.dtype == torch.uint8 and q.scale.dtype == dtype and q.zero.dtype == dtype
    assert torch.equal(q.codes.cpu(), codes), "codes differ"
    torch.testing.assert_close(q.scale.cpu(), scale, atol=1e-6, rtol=0)
    assert torch.equal(q.scale.cpu(), scale) and torch.equal(q.zero.cpu(), zero)
    for out_dtype in (None, torch.float32):
        got = kernels.kv_dequantize(q, out_dtype)
        want = kernels.kv_dequantize_reference(codes, scale, zero, bits, group_size, axis % x.ndim, shape[-1],
                                               out_dtype or dtype)
        assert got.dtype == want.dtype and got.shape == x.shape
        torch.testing.assert_close(got.cpu(), want, atol=1e-6, rtol=1e-6)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [2, -1], ids=["keys", "values"])
def test_kernel_matches_reference(triton_mode, axis, bits, dtype):
    shape, group_size = ((1, 2, 16, 24), 8) if axis == 2 else ((1, 2, 5, 40), 20)
    _compare(shape, axis, group_size, bits, dtype)


@needs_triton
def test_kernel_other_shapes(triton_mode):
    """fp16, one group along the axis, a leading axis, a 1-d tensor, a single token, group size 1."""
    _compare((1, 2, 8, 40), 2, 8, 4, torch.float16)
    _compare((6, 3, 10), 0, 3, 2, torch.float32)
    _compare((35,), 0, 7, 4, torch.bfloat16)
    _compare((1, 1, 1, 24), 3, 24, 2, torch.float32)
    _compare((2, 1, 3, 5), 3, 1, 8, torch.float32)


# --------------------------------------------------------------------------------------------------
# opcheck and errors
# --------------------------------------------------------------------------------------------------
def _opcheck_cases(device):
    x = _x((2, 2, 8, 12), device=device)
    codes, scale, zero = kernels.kv_quantize_reference(x.cpu(), 4, 4, 2)
    on = [t.to(device) for t in (codes, scale, zero)]
    return [(torch.ops.zoo.kv_quantize.default, (x, 4, 4, 2)),
            (torch.ops.zoo.kv_quantize.default, (x.to(torch.bfloat16), 2, 6, 3)),
            (torch.ops.zoo.kv_dequantize.default, (*on, 4, 4, 2, 12, torch.float32)),
            (torch.ops.zoo.kv_dequantize.default, (*on, 4, 4, 2, 12, torch.bfloat16))]


# the Triton path: fp32 quantize and dequantize only (the interpreter is slow)
test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(
    _opcheck_cases, triton_cases=lambda device: _opcheck_cases(device)[::2])


def test_compiles_fullgraph():
    def roundtrip(x):
        return kernels.kv_dequantize(kernels.kv_quantize(x, 4, 4, axis=2))

    x = _x((1, 2, 8, 12))
    compiled = torch.compile(roundtrip, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), roundtrip(x))


def test_bad_inputs_fail_before_any_work():
    x = _x((1, 2, 10, 8))
    cases = [
        (lambda: kernels.kv_quantize(x, bits=3), ValueError, r"bits must be one of \(2, 4, 8\); got 3"),
        (lambda: kernels.kv_quantize(x, 4, 4, axis=2), ValueError,
         r"10 elements, not a multiple of group_size=4; quantize whole groups \(x.narrow\(2, 0, 8\)\)"),
        (lambda: kernels.kv_quantize(x, 4, 4, axis=4), ValueError, "axis 4 is out of range"),
        (lambda: kernels.kv_quantize(x, 4, 0), ValueError, "group_size must be a positive int"),
        (lambda: kernels.kv_quantize(x.long(), 4, 4), TypeError, "float32, float16 or bfloat16 tensors; got torch.int64"),
        (lambda: kernels.kv_quantize(x.double(), 4, 4), TypeError, "got torch.float64"),
        (lambda: kernels.kv_dequantize(kernels.kv_quantize(x, 4, 4), torch.int8), TypeError, "got torch.int8"),
    ]
    for fn, error, message in cases:
        with pytest.raises(error, match=message):
            fn()
    q = kernels.kv_quantize(x, 4, 4)
    with pytest.raises(ValueError, match=r"codes of shape \(1, 2, 10, 3\)"):
        kernels.kv_dequantize(KVQuantized(q.codes[..., :3], q.scale, q.zero, 4, 4, 3, x.shape, x.dtype))


def test_available_lists_both_backends():
    assert kernels.available()["ops"]["kv_quantize"] == ["torch", "triton"]
    assert kernels.available()["ops"]["kv_dequantize"] == ["torch", "triton"]
