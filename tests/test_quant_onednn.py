"""The integer layers on oneDNN's int8 kernels (the CPU fast path) against the exact integer reference.

On the same integer inputs the int32 accumulators are equal bit for bit; a layer's outputs equal the
reference path's (ZOO_KERNELS=torch) to the fp32 epilogue's rounding, for every layer kind and
activation granularity the kernels run; everything else, and machines without the kernels, keeps
the reference path and says so.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zoo import kernels
import zoo
from zoo.blocks.quant import QuantConv2d, QuantLinear
from zoo.kernels import onednn_int8
from zoo.deploy import chain_int8, fuse_for_inference
from zoo.quant import QuantSpec

needs_onednn = pytest.mark.skipif(onednn_int8.unavailable_reason() is not None,
                                  reason=f"{onednn_int8.unavailable_reason()}")

# (in, out, kernel, stride, padding, H, W): ragged sizes, strides and paddings
CONVS = {
    "1x1": (13, 7, 1, 1, 0, 5, 6),
    "1x1_stride2": (16, 9, 1, 2, 0, 7, 9),
    "3x3_pad1": (12, 10, 3, 1, 1, 6, 7),
    "3x3_stride2_pad1": (9, 8, 3, 2, 1, 7, 5),
    "5x5_pad2": (6, 5, 5, 1, 2, 4, 9),
    "3x3_nopad": (8, 16, 3, 1, 0, 6, 6),
}


def _codes(shape, gen):
    return torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)


@needs_onednn
@pytest.mark.parametrize("case", list(CONVS))
def test_conv_accumulators_equal_the_reference_bit_for_bit(case):
    c, n, k, s, p, h, w = CONVS[case]
    gen = torch.Generator().manual_seed(0)
    q, weight = _codes((2, h, w, c), gen), _codes((n, k, k, c), gen)
    packed = onednn_int8.prepack(weight, torch.rand(n, generator=gen) + 0.1, (s, s), (p, p))
    reference = kernels.int_conv2d_accumulators_reference(q, weight, None, (s, s), (p, p), 8, None)
    exact = reference.to(torch.int64).sum(-1)  # (B, Ho, Wo, N), every tap's int32 sum
    assert exact.abs().max() < 2 ** 24  # so the fp32 read-out is the integer itself
    got = onednn_int8.accumulators(q, packed)
    assert torch.equal(got.to(torch.int64), exact)


@needs_onednn
def test_linear_accumulators_equal_the_reference_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    q, weight = _codes((1, 1, 11, 37), gen), _codes((19, 1, 1, 37), gen)
    packed = onednn_int8.prepack(weight, torch.ones(19), linear=True)
    exact = kernels.int_conv2d_accumulators_reference(q, weight, None, (1, 1), (0, 0), 8, None).to(torch.int64).sum(-1)
    assert torch.equal(onednn_int8.accumulators(q, packed).to(torch.int64), exact)


@needs_onednn
def test_quantize_u8_gives_the_reference_codes():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 5, 4, generator=gen) * 5
    x[0, 0, 0, 0] = 0.5 * 0.04  # a tie: half a step
    for scale in (torch.tensor([0.04, 0.1, 0.02]), torch.tensor(0.03)):
        codes = onednn_int8.quantize_u8(x, scale.view(-1, 1, 1, 1) if scale.ndim else scale, clamp=True)
        q_ref, _ = kernels.quantize_act_reference(x.permute(0, 2, 3, 1), static_scale=scale)
        assert torch.equal(codes.permute(0, 2, 3, 1).to(torch.int16) - 128, q_ref.to(torch.int16))
    # a million values: a few of them round differently under x * (1 / s) than under the reference's x / s
    many = torch.randn(1000, 1000, generator=gen) * 2
    for scale in (torch.tensor(0.03), torch.tensor(0.017)):
        q_ref, _ = kernels.quantize_act_reference(many, static_scale=scale)
        codes = onednn_int8.quantize_u8(many, scale, clamp=True)
        assert torch.equal(codes.to(torch.int16) - 128, q_ref.to(torch.int16))


# --------------------------------------------------------------------------------------------------
# layers: the fast path against the reference path
# --------------------------------------------------------------------------------------------------
def _layer(case: str, spec: str, explicit: bool, seed: int = 0):
    """A quantized conv (or linear, case "linear") with random weights, optional explicit
    multiplier / shift and, for static specs, a static scale small enough that some codes clamp."""
    torch.manual_seed(seed)
    spec_ = QuantSpec.parse(spec).with_(group_fallback=True)
    act = dict(act_multiplier=explicit, act_shift=explicit, act_scale=spec_.static_activations)
    if case == "linear":
        float_layer = nn.Linear(24, 10)
        layer = QuantLinear.from_float(float_layer, spec_, spec_.group_for(24), **act)
        x = torch.randn(3, 5, 24) * 2
    else:
        c, n, k, s, p, h, w = CONVS[case]
        float_layer = nn.Conv2d(c, n, k, s, p)
        layer = QuantConv2d.from_float(float_layer, spec_, spec_.group_for(c), **act)
        x = torch.randn(2, c, h, w) * 2
    with torch.no_grad():
        if explicit:
            layer.act_multiplier.uniform_(0.5, 2.0)
            layer.act_shift.normal_()
        if layer.act_scale is not None:
            layer.act_scale.fill_(0.02)
    return layer, x


def _reference(layer, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("ZOO_KERNELS", "torch")
        assert layer.execution(x.device)[0] == "reference"
        return layer(x)


def _assert_epilogue_close(y, y_ref):
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6 * float(y_ref.abs().max()))


@needs_onednn
@pytest.mark.parametrize("spec", ["w8a8-tok", "w8a8", "w8a8-static", "w4a8-pcw", "w4a8-pcw-asym"])
@pytest.mark.parametrize("case", ["1x1", "1x1_stride2", "3x3_pad1", "3x3_stride2_pad1", "linear"])
@pytest.mark.parametrize("explicit", [False, True], ids=["plain", "mult_shift"])
def test_layer_matches_the_reference_path(case, spec, explicit, monkeypatch):
    layer, x = _layer(case, spec, explicit)
    kernel, why = layer.execution()
    pointwise = case in ("1x1", "1x1_stride2", "linear")
    if spec == "w8a8-tok" and not pointwise:  # per-pixel scales on a 3x3 kernel: the reference runs it
        assert kernel == "reference" and "per-pixel" in why
    else:
        assert (kernel, why) == ("onednn", "exact int8")
    with torch.no_grad():
        y = layer(x)
        y_ref = _reference(layer, x, monkeypatch)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    _assert_epilogue_close(y, y_ref)


def test_weight_groups_keep_the_exact_reference():
    layer, x = _layer("3x3_pad1", "w4a8-g4", False)
    assert layer.execution()[0] == "reference" and "groups" in layer.execution()[1]


@needs_onednn
@pytest.mark.parametrize("case,spec", [("1x1", "w8a8-tok"), ("3x3_stride2_pad1", "w8a8"), ("linear", "w8a8-static")])
def test_layers_compile_whole_to_the_eager_outputs(case, spec):
    """One opaque op per layer with its cached weights: fullgraph tracing, eager's outputs bit for bit."""
    layer, x = _layer(case, spec, True)
    torch.compiler.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), layer(x))


@needs_onednn
def test_bf16_inputs_give_bf16_outputs_close_to_the_reference(monkeypatch):
    layer, x = _layer("3x3_pad1", "w8a8", False)
    with torch.no_grad():
        y, y_ref = layer(x.bfloat16()), _reference(layer, x.bfloat16(), monkeypatch)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2 * float(y_ref.abs().max()))


@needs_onednn
def test_weights_are_packed_once_and_again_after_a_change():
    layer, x = _layer("3x3_pad1", "w8a8", False)
    first = layer.onednn_weight()
    assert layer.onednn_weight() is first
    with torch.no_grad():
        y = layer(x)
        layer.qweight.neg_()  # an in-place edit bumps the buffer's version
        assert layer.onednn_weight() is not first
        torch.testing.assert_close(layer(x), -y + 2 * layer.bias.view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)
        layer.load_state_dict(copy.deepcopy(layer.state_dict()))  # new tensors
    assert copy.deepcopy(layer)._onednn.weight is None  # copies make their own


def test_machines_without_the_kernels_keep_the_reference(monkeypatch):
    layer, x = _layer("1x1", "w8a8", False)
    monkeypatch.setattr(onednn_int8, "_UNAVAILABLE", ["the CPU has neither VNNI nor AMX (test)"])
    assert layer.execution() == ("reference", "the CPU has neither VNNI nor AMX (test)")
    with torch.no_grad():
        y = layer(x)
    assert layer._onednn.weight is None  # never packed
    model = zoo.quantize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)), "w8a8")
    assert "reference (the CPU has neither VNNI nor AMX (test))" in zoo.quant.summary(model)
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    with torch.no_grad():
        assert torch.equal(layer(x), y)


@needs_onednn
def test_summary_names_kernel_and_granularity():
    model = zoo.quantize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 1),
                                       nn.Conv2d(8, 4, 1)), "w8a8-tok")
    text = zoo.quant.summary(model)
    assert "per-token" in text and "reference (per-pixel scales on a k x k kernel" in text
    assert "onednn (exact int8)" in text
    model = zoo.quantize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)), "w4a8")
    text = zoo.quant.summary(model)
    assert "per-image" in text and "reference" not in text


# --------------------------------------------------------------------------------------------------
# models: save / load, compile
# --------------------------------------------------------------------------------------------------
def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10), nn.ReLU(), nn.Linear(10, 4)).eval()


@needs_onednn
def test_quantized_file_round_trip_gives_identical_outputs(tmp_path):
    model = zoo.create("rcan_tiny_x2", pretrained=True, quant="w4a8").eval()
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        y = model(x)
    zoo.save_quantized(model, tmp_path / "rcan.safetensors")
    loaded = zoo.create("rcan_tiny_x2", pretrained=str(tmp_path / "rcan.safetensors")).eval()
    assert loaded.quant_spec == model.quant_spec and loaded.quant_spec.act_granularity == "per_image"
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


@needs_onednn
def test_optimize_prepares_a_quantized_model_and_compiles_a_float_one():
    model = zoo.quantize(_tiny_net(), QuantSpec.parse("w8a8").with_(keep=()))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        eager = model(x)
        fast = zoo.optimize(model)  # its layers run on oneDNN: prepared, packed, eager
        assert fast is model and not isinstance(fast, torch._dynamo.eval_frame.OptimizedModule)
        assert all(layer._onednn.weight is not None for layer in model.modules()
                   if isinstance(layer, (QuantConv2d, QuantLinear)))  # packed before the first call
        assert model[0].qweight.is_contiguous() and model.training is False
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), eager, rtol=1e-6, atol=1e-6)
        float_model = _tiny_net()
        compiled = zoo.optimize(float_model)
        assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
        torch.testing.assert_close(compiled(x), _tiny_net()(x), rtol=1e-4, atol=1e-5)
        forced = zoo.optimize(zoo.quantize(_tiny_net(), QuantSpec.parse("w8a8").with_(keep=())), compile=True)
        assert isinstance(forced, torch._dynamo.eval_frame.OptimizedModule)  # inductor, with the op inside
        torch.testing.assert_close(forced(x), eager, rtol=1e-6, atol=1e-6)


@needs_onednn
@pytest.mark.parametrize("spec", ["w8a8-all", "w4a8-pcw-all"])
def test_released_codes_keep_the_outputs_and_refuse_what_needs_them(spec, monkeypatch):
    model = zoo.quantize(_tiny_net(), spec)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        kept = zoo.optimize(model, compile=False)(x)
        lean = zoo.optimize(model, compile=False, release_codes=True)  # no pretrained_cfg: nothing folded, a copy
        assert torch.equal(lean(x), kept)
        assert torch.equal(copy.deepcopy(lean)(x), kept)  # a copy shares the packed weights
    layers = [m for m in lean.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 6 and all(m.codes_released and m.qweight.numel() == 0 for m in layers)
    model_codes = {m.qweight.untyped_storage().data_ptr() for m in model.modules() if isinstance(m, QuantConv2d)}
    assert all(m.qweight.numel() > 0 for m in model.modules() if isinstance(m, QuantConv2d))  # the model keeps them
    assert not model_codes & {t.untyped_storage().data_ptr() for t in lean.buffers()}
    assert model.state_dict() and torch.equal(model(x), kept)
    for refused in (lean.state_dict, layers[0].dequantized_weight, lambda: lean.load_state_dict(model.state_dict()),
                    lambda: layers[0].set_weight(torch.zeros(16, 3, 3, 3))):
        with pytest.raises(RuntimeError, match=r"codes were released \(zoo.optimize\(release_codes=True\)\)"):
            refused()
    monkeypatch.setenv("ZOO_KERNELS", "torch")  # another kernel needs the codes
    with pytest.raises(RuntimeError, match="off oneDNN.*released"), torch.no_grad():
        lean(x)
    with pytest.raises(ValueError, match="keeps the result eager"):
        zoo.optimize(model, compile=True, release_codes=True)


def test_optimize_keeps_float_types_unless_asked():
    model = _tiny_net()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        eager = model(x)
        same = zoo.optimize(copy.deepcopy(model), compile=False)(x)
        bf16 = zoo.optimize(copy.deepcopy(model), dtype=torch.bfloat16, compile=False)(x)
    torch.testing.assert_close(same, eager, rtol=1e-5, atol=1e-6)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, eager)
    torch.testing.assert_close(bf16, eager, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="torch.bfloat16 or torch.float16"):
        zoo.optimize(model, dtype=torch.int8)


def test_presets_quantize_k_by_k_convs_per_image_and_tok_keeps_pixels():
    spec = QuantSpec.parse("w8a8")
    assert spec.act_granularity == "per_image" and not spec.static_activations and spec == QuantSpec()
    assert QuantSpec.parse("w8a8-img") == spec and QuantSpec.parse("w4a8").act_granularity == "per_image"
    pixels = QuantSpec.parse("w8a8-tok")
    assert pixels.act_granularity == "per_token" and pixels.name == "w8a8-tok"
    assert QuantSpec.parse(pixels.name) == pixels and QuantSpec.from_json(pixels.to_json()) == pixels
    assert QuantSpec.parse("w4a16").act_granularity == QuantSpec.parse("fp8").act_granularity == "per_token"
    layer, x = _layer("3x3_pad1", "w8a8", False)
    assert layer.act_scope == "image" and _layer("1x1", "w8a8", False)[0].act_scope == "token"
    # one image's output does not depend on the others in its batch
    with torch.no_grad():
        both = layer(torch.cat([x[:1], x[1:] * 100]))
        alone = layer(x[:1])
    _assert_epilogue_close(both[:1], alone)


# --------------------------------------------------------------------------------------------------
# zoo.optimize's fusions: batch norms into convolutions, ReLUs into quantized layers
# --------------------------------------------------------------------------------------------------
def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("spec", [None, "w8a8", "w8a8-tok"])
def test_fusion_folds_batchnorms_and_relus_and_keeps_the_output(spec):
    torch.manual_seed(0)
    model = zoo.create("resnet18", num_classes=10).eval()
    for m in model.modules():  # trained-like batch norms (resnet zero-inits the last gamma of each block)
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_(0, 0.1)
    if spec:
        zoo.quantize(model, spec)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    fused, done = fuse_for_inference(model, x[:1])
    assert _count(model, nn.BatchNorm2d) == 20 and _count(fused, nn.BatchNorm2d) == 0  # the original keeps its own
    relus = sum(getattr(m, "fused_relu", False) for m in fused.modules())
    assert relus == (0 if spec is None else 8)  # conv1 of each BasicBlock: act1 follows its bn1
    with torch.no_grad():
        after = fused(x)
    rel = float((after - before).norm() / before.norm())
    assert rel < (1e-5 if spec is None else 2e-2), rel
    # the copy shares what folding left alone (memory): the classifier, and every layer's integer codes
    assert all(a is b for a, b in zip(fused.fc.state_dict(keep_vars=True).values(),
                                      model.fc.state_dict(keep_vars=True).values()))
    originals = dict(model.named_modules())
    for name, layer in fused.named_modules():
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            assert layer.qweight is originals[name].qweight, name
        elif isinstance(layer, nn.Conv2d):  # absorbed a batch norm: its own weights, the model's untouched
            assert layer.weight.data_ptr() != originals[name].weight.data_ptr(), name
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_fusion_that_would_change_the_output_is_undone():
    class ReadsTwice(nn.Module):  # the conv's output feeds the batch norm and a residual add
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = ReadsTwice().eval()
    model.bn.running_var.fill_(4.0)
    with pytest.warns(UserWarning, match="running the model unfused"):
        fused, done = fuse_for_inference(model, torch.randn(1, 4, 8, 8))
    assert fused is model and done == []


# --------------------------------------------------------------------------------------------------
# chained static layers hand each other uint8 codes
# --------------------------------------------------------------------------------------------------
@needs_onednn
@pytest.mark.parametrize("relu", [True, False])
def test_codes_out_are_the_next_layers_codes_but_at_ties(relu):
    gen = torch.Generator().manual_seed(0)
    weight = onednn_int8.prepack(_codes((24, 3, 3, 16), gen), torch.rand(24, generator=gen) * 1e-3 + 1e-3, (1, 1),
                                 (1, 1))
    x = torch.randn(2, 16, 11, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    bias, s_in, s_out = torch.randn(24, generator=gen), torch.tensor(0.02), torch.tensor(0.004)
    codes = onednn_int8.quantize_for(x, s_in, clamp=True)
    floats = onednn_int8.conv2d(codes, s_in, weight, bias, relu=relu)
    expected = onednn_int8.quantize_u8(floats, s_out, clamp=True)  # what the next layer would make of them
    got = onednn_int8.conv2d(codes, s_in, weight, bias, relu=relu, out_scale=s_out)
    assert got.dtype == torch.uint8 and got.is_contiguous(memory_format=torch.channels_last)
    assert int(got.min()) >= 1 and (int(expected.min()) == 1) == (not relu)  # s_out small: codes saturate
    differ = got.int() != expected.int()
    assert (got.int() - expected.int()).abs().max() <= 1 and differ.float().mean() < 1e-3
    at = (floats / s_out)[differ]  # oneDNN's epilogue rounds its own fp32 product: it can differ only at a tie
    assert ((at - at.floor() - 0.5).abs() < 1e-3).all()


def _static_resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = zoo.create("resnet18", num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    return zoo.quantize(model, "w8a8-static", calib=[x]), x.contiguous(memory_format=torch.channels_last)


@needs_onednn
def test_chained_layers_hand_codes_on_and_keep_the_output():
    model, x = _static_resnet()
    fused, _ = fuse_for_inference(model, x[:1])
    chained, pairs = chain_int8(fused, x[:1])
    assert len(pairs) == 8 and pairs[0] == "layer1.0.conv1 -> layer1.0.conv2"  # each BasicBlock's conv1 -> conv2
    first = chained.get_submodule("layer1.0.conv1")
    assert first.codes_out_scale is chained.get_submodule("layer1.0.conv2").act_scale
    assert fused.get_submodule("layer1.0.conv1").codes_out_scale is None  # the model it came from is unchanged
    assert first.qweight is fused.get_submodule("layer1.0.conv1").qweight  # a copy sharing the codes
    inputs, seen = {}, []
    handles = [fused.get_submodule(p.split(" -> ")[0]).register_forward_pre_hook(
        lambda m, a, pair=p: inputs.__setitem__(pair, a[0])) for p in pairs]
    handles.append(chained.get_submodule("layer1.0.conv2").register_forward_pre_hook(lambda m, a: seen.append(a[0])))
    with torch.no_grad():
        before, after = fused(x), chained(x)
        for h in handles:
            h.remove()
        assert seen[0].dtype == torch.uint8
        for pair in pairs:  # each hand-off, on the same input: the codes the next layer would have made
            producer, consumer = pair.split(" -> ")
            floats = fused.get_submodule(producer)(inputs[pair])
            expected = onednn_int8.quantize_u8(floats, fused.get_submodule(consumer).act_scale, clamp=True)
            diff = chained.get_submodule(producer)(inputs[pair]).int() - expected.int()
            assert diff.abs().max() <= 1 and (diff != 0).float().mean() < 1e-3, pair  # ties only
    # a flipped tie moves everything after it a little; optimize allows what it allows a fusion
    assert float((after - before).norm() / before.norm()) < 2e-2
    with torch.no_grad():
        assert torch.equal(zoo.optimize(model, compile=False)(x), after)  # what optimize runs


@needs_onednn
def test_a_chain_whose_output_is_read_elsewhere_is_undone():
    class ReadTwice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) + y  # a's output feeds b and the add

    x = torch.randn(1, 4, 8, 8)
    model = zoo.quantize(ReadTwice().eval(), QuantSpec.parse("w8a8-static").with_(keep=()), calib=[x])
    with pytest.warns(UserWarning, match="running without the chains"):
        same, pairs = chain_int8(model, x)
    assert same is model and pairs == []


@needs_onednn
def test_codes_into_a_layer_that_cannot_take_them_name_the_fix():
    dynamic = zoo.quantize(_tiny_net(), QuantSpec.parse("w8a8").with_(keep=()))[0]  # per-image scales
    with pytest.raises(ValueError, match="static activation scale on oneDNN.*pass floats"):
        dynamic(torch.full((1, 3, 8, 8), 128, dtype=torch.uint8))


@needs_onednn
def test_bad_kernel_inputs_name_the_fix():
    with pytest.raises(ValueError, match=r"int8 weights \(N, KH, KW, C\); got torch.int32"):
        onednn_int8.prepack(torch.zeros(4, 3, 3, 2, dtype=torch.int32), torch.ones(4))
    with pytest.raises(ValueError, match=r"one weight scale per output channel \(4,\); got \(4, 2\)"):
        onednn_int8.prepack(torch.zeros(4, 3, 3, 2, dtype=torch.int8), torch.ones(4, 2))
    packed = onednn_int8.prepack(torch.zeros(4, 3, 3, 2, dtype=torch.int8), torch.ones(4), padding=(1, 1))
    codes = torch.full((1, 2, 5, 5), 128, dtype=torch.uint8)
    with pytest.raises(ValueError, match="per-pixel activation scales need a 1x1 kernel without padding"):
        onednn_int8.conv2d(codes, torch.ones(1, 5, 5), packed, None)
