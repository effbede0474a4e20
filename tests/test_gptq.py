"""GPTQ (``method="gptq"``): its Hessian sees the conv's own patches, it beats round to nearest on the layer's
output, and the conversion stores exactly the codes it chose."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import zoo
from zoo.blocks.quant import QuantConv2d, QuantLinear
from zoo.quant import QuantSpec
from zoo.quant.calibrate import LayerStats
from zoo.quant.methods import METHODS, SimulatedLayer, Transform, input_columns, layer_error, weight_nhwc
from zoo.quant.plan import LayerChoice, QuantPlan


def _stats(x: torch.Tensor, conv: bool = True) -> LayerStats:
    dims = (0, 2, 3) if conv else tuple(range(x.ndim - 1))
    count = x.numel() // x.shape[1 if conv else -1]
    return LayerStats(x.abs().amax(dims), x.amin(dims), x.amax(dims), x.abs().sum(dims), count, x)


def _correlated(shape: tuple[int, ...], channels_dim: int = 1) -> torch.Tensor:
    """Inputs whose channels are mixed (correlated) and unevenly scaled: where GPTQ's error moves pay."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).movedim(channels_dim, -1)
    c = x.shape[-1]
    mix = torch.eye(c) + 0.5 * torch.randn(c, c, generator=g) / c ** 0.5
    x = (x @ mix) * torch.linspace(0.2, 3.0, c)
    return x.movedim(-1, channels_dim).contiguous()


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, 2)])
def test_input_columns_are_the_conv_patches_in_the_weights_channels_last_order(stride, padding):
    """The Hessian XᵀX must be over the columns of weight_nhwc's (KH, KW, C) flattening: the patches times
    that flattened weight give the convolution."""
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, (3, 2), stride=stride, padding=padding, bias=False)
    x = torch.randn(2, 5, 9, 8)
    y = conv(x)  # (B, N, OH, OW)
    flat = input_columns(conv, x) @ weight_nhwc(conv).reshape(7, -1).T  # (B*OH*OW, N)
    torch.testing.assert_close(flat, y.permute(0, 2, 3, 1).reshape(-1, 7), rtol=1e-5, atol=1e-5)
    own_order = input_columns(conv, x, channels_last=False) @ conv.weight.detach().reshape(7, -1).T  # the refit's
    torch.testing.assert_close(own_order, y.permute(0, 2, 3, 1).reshape(-1, 7), rtol=1e-5, atol=1e-5)
    linear = nn.Linear(6, 3, bias=False)
    tokens = torch.randn(2, 4, 6)
    torch.testing.assert_close(input_columns(linear, tokens) @ weight_nhwc(linear).reshape(3, -1).T,
                               linear(tokens).reshape(-1, 3))


@pytest.mark.parametrize("spec,group", [("w4a16", None), ("w4a16", 32), ("w4a8", None), ("w8a16", None),
                                        ("w4a16-asym", 32)])
def test_gptq_beats_round_to_nearest_and_the_conversion_stores_its_codes(spec, group):
    """On correlated inputs GPTQ's layer output error is well below RTN's (a GPTQ without the error moves is
    RTN, and fails this); the quantized layer holds exactly the weights GPTQ rounded, on its grid."""
    spec = QuantSpec.parse(spec)
    torch.manual_seed(1)
    conv = nn.Conv2d(64, 48, 3, padding=1)
    x = _correlated((4, 64, 10, 10))
    t = METHODS["gptq"](conv, _stats(x), spec, group)
    assert t.scale is None and t.shift is None and t.weight.shape == (48, 3, 3, 64)
    rtn, ours = layer_error(conv, x, spec, group, Transform()), layer_error(conv, x, spec, group, t)
    assert ours < (0.8 if spec.act_bits is None else 0.9) * rtn, (ours, rtn)
    layer = QuantConv2d.from_float(conv, spec, group)
    layer.set_weight(t.weight, t.grid)
    assert torch.equal(layer.dequantized_weight(), t.weight)
    assert torch.equal(SimulatedLayer(conv, spec, group, t).weight, t.weight)
    linear = nn.Linear(64, 24)
    tokens = _correlated((3, 40, 64), channels_dim=-1)
    t = METHODS["gptq"](linear, _stats(tokens, conv=False), spec, group)
    assert layer_error(linear, tokens, spec, group, t) < layer_error(linear, tokens, spec, group, Transform())
    layer = QuantLinear.from_float(linear, spec, group)
    layer.set_weight(t.weight, t.grid)
    assert torch.equal(layer.dequantized_weight(), t.weight)


def test_gptq_leaves_fp8_to_round_to_nearest_and_zeroes_columns_no_input_reaches():
    conv = nn.Conv2d(8, 4, 1)
    x = torch.randn(2, 8, 5, 5)
    assert METHODS["gptq"](conv, _stats(x), QuantSpec.parse("fp8"), None).weight is None
    x[:, 3] = 0.0  # channel 3 never carries a signal: its weights cannot matter, and H is singular there
    t = METHODS["gptq"](conv, _stats(x), QuantSpec.parse("w4a16"), None)
    assert torch.isfinite(t.weight).all() and (t.weight[..., 3] == 0).all()


class _Chain(nn.Module):
    """stem -> conv1 -> conv2 (no non-linearity between: conv2's scales would fold into conv1) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv1 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.conv2, self.head = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.head(self.conv2(self.conv1(torch.relu(self.stem(x)))))


def test_a_gptq_layer_takes_no_fold_and_its_codes_survive_the_file(tmp_path):
    """In a plan where conv1 is rounded by GPTQ and conv2 (reading conv1 directly) by SmoothQuant, conv2's
    scales must not be folded into conv1's weights after GPTQ has rounded them: they stay explicit. The model
    stays close to float, and the quantized file loads the same codes."""
    torch.manual_seed(0)
    net = _Chain().eval()
    batches = [torch.rand(2, 3, 12, 12) for _ in range(3)]
    spec = QuantSpec.parse("w4a8")
    plan = QuantPlan(spec, {"conv1": LayerChoice("w4-pc", "gptq"), "conv2": LayerChoice("w4-pc", "smoothquant")})
    q = zoo.quantize(copy.deepcopy(net), plan, calib=batches)
    details = {r.name: r.detail for r in q.quant_report}
    assert "gptq" in details["conv1"] and "folded into conv1" not in details["conv2"], details
    with torch.no_grad():
        rel = float((q(batches[0]) - net(batches[0])).norm() / net(batches[0]).norm())
    assert rel < 0.1, rel
    path = zoo.save_quantized(q, tmp_path / "chain.safetensors")
    stored = load_file(str(path))
    assert torch.equal(stored["conv1.qweight"], q.conv1.qweight) and torch.equal(stored["conv1.weight_scale"],
                                                                                 q.conv1.weight_scale)


def test_gptq_is_a_method_of_quantize_and_of_the_report():
    torch.manual_seed(0)
    net = _Chain().eval()
    batches = [torch.rand(2, 3, 12, 12) for _ in range(2)]
    x = batches[0]
    with torch.no_grad():
        ref = net(x)
        rtn = zoo.quantize(copy.deepcopy(net), "w4a16")(x)
        gptq = zoo.quantize(copy.deepcopy(net), "w4a16", calib=batches, method="gptq")(x)
    assert (gptq - ref).norm() < (rtn - ref).norm()
    report = zoo.quant.analyze(net, batches, "w4a16", methods=("rtn", "gptq"))
    assert any(layer.headline.method == "gptq" for layer in report.layers), [a.headline.method for a in report.layers]
