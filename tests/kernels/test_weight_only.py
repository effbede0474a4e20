"""The CPU's packed weight-only kernels (zoo.kernels.weight_only): bit for bit their reference, used by a
weight-only QuantLinear for a few rows only, and refused with the reason where they cannot run."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zoo
from zoo.blocks.quant import QuantLinear
from zoo.kernels import weight_only
from zoo.quant import QuantSpec

pytestmark = pytest.mark.skipif(weight_only.unavailable_reason() is not None,
                                reason=str(weight_only.unavailable_reason()))


def _layer(spec: str, k: int, n: int, bias: bool = True, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    parsed = QuantSpec.parse(spec)
    return QuantLinear.from_float(nn.Linear(k, n, bias=bias), parsed, parsed.group_for(k)).eval()


@pytest.mark.parametrize("spec,k", [("w8a16", 96), ("w4a16", 128), ("w4a16-asym", 128), ("w4a16-g32", 96),
                                    ("w4a16-pcw", 128)])
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_packed_kernel_equals_its_reference_bit_for_bit(spec, k, rows, dtype):
    layer = _layer(spec, k, 48)
    assert weight_only.layout_reason(layer.spec.weight_bits, layer.group_size, k, 48) is None
    x = torch.randn(rows, k).to(dtype)  # (M, K)
    packed = weight_only.pack(layer.qweight, layer.weight_scale, layer.weight_zero, layer.spec.weight_bits, k,
                              layer.group_size)
    y = weight_only.linear(x, packed, layer.bias)
    expected = weight_only.linear_reference(x, layer.qweight, layer.weight_scale, layer.weight_zero,
                                            layer.spec.weight_bits, k, layer.group_size, layer.bias)
    assert y.dtype == dtype and y.shape == (rows, 48)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # and the reference is the dequantized layer up to bf16 rounding of activations, scales and result
    exact = x.float() @ layer.dequantized_weight().view(48, k).T + layer.bias
    torch.testing.assert_close(expected.float(), exact, rtol=3e-2, atol=3e-2 * float(exact.abs().max()))


def test_a_weight_only_layer_sends_few_rows_to_the_kernel_and_many_to_the_dequantized_weights(monkeypatch):
    layer = _layer("w8a16", 96, 32)
    x = torch.randn(2, 3, 96)  # (B, T, K): 6 rows
    with torch.inference_mode():
        few = layer(x)
        many = layer(torch.cat([x] * 4, 1))  # 24 rows > MAX_ROWS[8]
    reference = weight_only.linear_reference(x.reshape(-1, 96), layer.qweight, layer.weight_scale, None, 8, 96, None,
                                             layer.bias)
    torch.testing.assert_close(few.reshape(-1, 32), reference, rtol=0, atol=0)
    dequantized = x.reshape(-1, 96) @ layer.dequantized_weight().view(32, 96).T + layer.bias
    torch.testing.assert_close(many[:, :3].reshape(-1, 32), dequantized, rtol=1e-5, atol=1e-5)
    assert layer.execution()[0] == "packed weight-only"
    monkeypatch.setenv("ZOO_KERNELS", "torch")  # forced reference: the dequantized path, and the summary says why
    assert layer.execution() == ("dequantize", "weight-only: float matmul on dequantized weights (ZOO_KERNELS=torch)")
    with torch.inference_mode():
        torch.testing.assert_close(layer(x).reshape(-1, 32), dequantized, rtol=1e-5, atol=1e-5)


def test_layouts_the_kernels_cannot_take_run_dequantized_and_say_why(monkeypatch):
    odd = _layer("w4a16", 40, 16)  # 40 inputs: no group of 32..256 divides them, one scale per channel of 40
    assert odd.execution()[0] == "dequantize" and "int4 groups of 40" in odd.execution()[1]
    x = torch.randn(3, 40)
    with torch.inference_mode():
        torch.testing.assert_close(odd(x), x @ odd.dequantized_weight().view(16, 40).T + odd.bias)
    assert "24 outputs (the int4 kernel packs them in sixteens)" in _layer("w4a16", 128, 24).execution()[1]
    monkeypatch.setattr(weight_only, "KERNEL_OPS", weight_only.KERNEL_OPS + ("_no_such_kernel",))
    layer = _layer("w8a16", 96, 16)
    assert layer.execution() == ("dequantize", "weight-only: float matmul on dequantized weights "
                                               "(this PyTorch lacks aten._no_such_kernel)")
    with torch.inference_mode():
        layer(torch.randn(2, 96))  # runs, dequantized


def test_the_packed_weights_follow_a_change_of_the_buffers():
    layer = _layer("w4a16", 128, 32)
    other = _layer("w4a16", 128, 32, seed=1)
    x = torch.randn(2, 128)
    with torch.inference_mode():
        before = layer(x)
    layer.set_weight(other.dequantized_weight())  # new codes and scales: packed again on the next call
    with torch.inference_mode():
        after = layer(x)
    expected = weight_only.linear_reference(x, layer.qweight, layer.weight_scale, None, 4, 128, layer.group_size,
                                            layer.bias)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_a_w4a16_language_model_runs_through_the_kernel_and_saves_the_same_codes(tmp_path, monkeypatch):
    """A prompt of 12 tokens goes through the packed kernels; its logits differ from the dequantized path's
    by the bf16 rounding of each layer's input and output (2.4% here); the saved file holds the codes, so the
    loaded model gives the same logits."""
    model = zoo.create("moc_lm_tiny").eval()
    quantized = zoo.quantize(copy.deepcopy(model), "w4a16")
    assert "packed weight-only" in zoo.quant.summary(quantized)
    tokens = torch.randint(0, 100, (1, 12))
    with torch.inference_mode():
        out = quantized(tokens)
        monkeypatch.setenv("ZOO_KERNELS", "torch")
        dequantized = quantized(tokens)
        monkeypatch.delenv("ZOO_KERNELS")
    assert float((out - dequantized).norm() / dequantized.norm()) < 0.05  # bf16 rounding, compounded over the layers
    path = zoo.save_quantized(quantized, tmp_path / "lm.safetensors")
    loaded = zoo.create("moc_lm_tiny", pretrained=str(path)).eval()
    with torch.inference_mode():
        torch.testing.assert_close(loaded(tokens), out, rtol=0, atol=0)
