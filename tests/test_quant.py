"""Quantization: specs, quantized layers against their dequantized float twins, conversion, folding,
files, ``zoo.create(quant=...)``, quantization-aware training layers, and the errors users meet."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo import kernels
import zoo
from zoo.blocks.quant import (FakeQuantConv2d, FakeQuantLinear, QuantConv2d, QuantLinear, dequantize_weight,
                          fake_quantize_activation, fake_quantize_weight, quantize_weight)
from zoo.quant import QuantSpec, quantize, summary
from zoo.quant.io import read_quant_metadata


# -------------------------------------------------------------------------------------------------
# specs
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,bits,act,group", [("w8a8", 8, 8, None), ("w4a8", 4, 8, 64), ("w4a16", 4, None, 64),
                                                  ("w8a16", 8, None, None), ("W4A8-g128", 4, 8, 128),
                                                  ("w4a8-pcw", 4, 8, None)])
def test_spec_strings(text, bits, act, group):
    spec = QuantSpec.parse(text)
    assert (spec.weight_bits, spec.act_bits, spec.group_size) == (bits, act, group)
    assert QuantSpec.parse(spec.name) == spec  # the name round-trips
    assert QuantSpec.from_json(spec.to_json()) == spec


def test_spec_fp8_and_suffixes():
    spec = QuantSpec.parse("fp8")
    assert spec.fp8 and spec.weight_bits == 8 and spec.act_bits == 8
    asym = QuantSpec.parse("w4a8-asym-static")
    assert not asym.weight_symmetric and asym.act_granularity == "per_tensor" and asym.static_activations
    assert QuantSpec.parse("w8a8-pc").act_granularity == "per_channel"


@pytest.mark.parametrize("bad,needle", [("w3a8", "w8a8"), ("int4", "w4a8"), ("w4a8-g7", "even"),
                                        ("w4a8-foo", "unknown suffix"), ("w8a8-asym", "asymmetric")])
def test_spec_errors_list_valid(bad, needle):
    with pytest.raises(ValueError, match=needle):
        QuantSpec.parse(bad)


def test_group_size_must_divide_channels():
    spec = QuantSpec.parse("w4a8-g48")
    assert spec.group_for(96) == 48
    with pytest.raises(ValueError, match="does not divide a layer's 64 input channels"):
        spec.group_for(64)
    assert QuantSpec.parse("w4a8").group_for(32) is None  # presets fall back to per channel


# -------------------------------------------------------------------------------------------------
# weights
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (4, None, True), (4, 8, True), (4, 8, False)])
def test_weight_quantization_error_bound(bits, group, symmetric):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 16)  # (N, KH, KW, C)
    q = quantize_weight(w, bits, group, symmetric)
    deq = dequantize_weight(q.values, q.scale, q.zero, bits, 16, group)
    step = q.scale.float()  # (N, S): one rounding step per segment
    seg = (w - deq).reshape(6, step.shape[1], -1).abs()
    assert bool((seg <= step[..., None] / 2 * (1 + 1e-3) + 1e-7).all())
    if bits == 4:
        assert q.values.dtype == torch.uint8 and q.values.shape == (6, 3, 3, 8)  # two per byte
    # the fake-quant path (QAT) sees exactly the stored values
    assert torch.equal(fake_quantize_weight(w, bits, group, symmetric), deq)


def test_symmetric_int4_uses_minus_eight_and_clips_nothing():
    """The grid is -8..7 with the no-clipping scale: a negative extreme lands on -8 exactly (a step of
    max|w| / 8, finer than -7..7's max|w| / 7), a positive extreme on 7 (max|w| / 7, nothing clipped)."""
    w = torch.tensor([[-0.8, 0.1, 0.7, 0.0], [0.8, -0.1, 0.3, 0.0]]).view(2, 1, 1, 4)  # (N, KH, KW, C)
    q = quantize_weight(w, 4)
    torch.testing.assert_close(q.scale.flatten(), torch.tensor([0.1, 0.8 / 7]))
    codes = kernels.unpack_int4(q.values, 4).view(2, 4).to(torch.int64) - 8
    assert codes.tolist() == [[-8, 1, 7, 0], [7, -1, 3, 0]]
    deq = dequantize_weight(q.values, q.scale, None, 4, 4, None)
    torch.testing.assert_close(deq[0], w[0])  # on the grid: exact
    assert float(deq[1].max()) == pytest.approx(0.8)  # the positive maximum is not clipped
    # random weights: every code in -8..7, -8 used, never clipped (the error bound above holds)
    torch.manual_seed(0)
    w = torch.randn(64, 1, 1, 32)
    codes = kernels.unpack_int4(quantize_weight(w, 4, 8).values, 32).to(torch.int64) - 8
    assert int(codes.min()) == -8 and int(codes.max()) == 7
    # an all-zero segment quantizes to zeros with a finite, non-zero stored scale
    zero = quantize_weight(torch.zeros(2, 1, 1, 8), 4, 4)
    assert bool((zero.scale > 0).all()) and torch.equal(dequantize_weight(zero.values, zero.scale, None, 4, 8, 4),
                                                          torch.zeros(2, 1, 1, 8))


def test_activation_fake_quant_matches_integer_path():
    x = torch.randn(5, 24) * torch.linspace(0.1, 10, 24)
    q, scale = kernels.quantize_act(x)
    assert torch.allclose(fake_quantize_activation(x), q.float() * scale[:, None], atol=0, rtol=0)


# -------------------------------------------------------------------------------------------------
# layers: the integer path equals the dequantized float computation
# -------------------------------------------------------------------------------------------------
def _dequantized_reference_conv(layer: QuantConv2d, x: torch.Tensor) -> torch.Tensor:
    tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    if layer.act_multiplier is not None:
        tokens = tokens * layer.act_multiplier
    tokens = fake_quantize_activation(tokens, per_image=layer.act_scope == "image")  # the presets: per image
    weight = layer.dequantized_weight().permute(0, 3, 1, 2)  # (N, C, KH, KW)
    return F.conv2d(tokens.permute(0, 3, 1, 2), weight, layer.bias, layer.stride, layer.padding)


@pytest.mark.parametrize("spec", ["w8a8", "w4a8-g8", "w4a8-g8-asym", "w4a8-pcw"])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_quant_conv_equals_dequantized_reference(spec, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 12, 3, stride=stride, padding=padding)
    layer = QuantConv2d.from_float(conv, QuantSpec.parse(spec), QuantSpec.parse(spec).group_for(16))
    x = torch.randn(2, 16, 9, 7)
    y = layer(x)
    ref = _dequantized_reference_conv(layer, x)
    assert y.shape == ref.shape == conv(x).shape
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    # and the quantized conv is close to the float one (the quantization error, not a bug)
    rel = float((y - conv(x)).norm() / conv(x).norm())
    assert rel < (0.02 if spec == "w8a8" else 0.15)


@pytest.mark.parametrize("spec", ["w8a8", "w4a8-g16", "w4a16", "w8a16", "fp8"])
def test_quant_linear_shapes_and_error(spec):
    torch.manual_seed(0)
    linear = nn.Linear(32, 20)
    layer = QuantLinear.from_float(linear, QuantSpec.parse(spec), QuantSpec.parse(spec).group_for(32))
    x = torch.randn(3, 5, 32)  # any leading dims
    y = layer(x)
    assert y.shape == (3, 5, 20)
    rel = float((y - linear(x)).norm() / linear(x).norm())
    assert rel < {"w8a8": 0.02, "w8a16": 0.01, "fp8": 0.08}.get(spec, 0.15)


def test_weight_only_runs_in_the_input_dtype():
    layer = QuantConv2d.from_float(nn.Conv2d(8, 8, 3, padding=1), QuantSpec.parse("w4a16-g8"), 8)
    assert layer(torch.randn(1, 8, 5, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16


# -------------------------------------------------------------------------------------------------
# conversion
# -------------------------------------------------------------------------------------------------
class _Net(nn.Module):
    """conv -> BN -> ReLU -> conv -> (residual) -> pooled linear: foldable and non-foldable producers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv2(self.act(self.bn1(self.conv1(x))))
        x = x + y  # the stem's output has a second, functional reader
        return self.head(F.relu(self.fc(x.mean((2, 3)))))


def _net_and_data():
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():  # give BN real statistics and channel outliers to migrate
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2)
        net.bn1.weight.uniform_(0.2, 4)
    batches = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    return net, batches


def test_quantize_keeps_first_and_last_and_reports():
    net, _ = _net_and_data()
    q = quantize(copy.deepcopy(net), "w8a8")
    assert isinstance(q.stem, nn.Conv2d) and not isinstance(q.stem, QuantConv2d)
    assert isinstance(q.head, nn.Linear) and not isinstance(q.head, QuantLinear)
    assert isinstance(q.conv1, QuantConv2d) and isinstance(q.fc, QuantLinear)
    text = summary(q)
    assert "3 layers quantized, 2 kept in float" in text and "kept by '<first>'" in text
    q2 = quantize(copy.deepcopy(net), QuantSpec.parse("w8a8").with_(keep=("fc",)))
    assert isinstance(q2.stem, QuantConv2d) and not isinstance(q2.fc, QuantLinear)


@pytest.mark.parametrize("arch,kwargs,kept", [
    ("moc_lm_tiny", {}, ["lm_head"]),  # the embedding reads the tokens: <first> keeps no projection
    ("channelvit_tiny", dict(num_classes=0, img_size=32, in_chans=2), []),  # its patch conv is not quantizable; no head
    ("rcan_tiny_x2", {}, ["head.0", "tail.1"]),  # no classifier: the last layer in module order
])
def test_first_and_last_are_the_models_input_layer_and_classifier(arch, kwargs, kept):
    """``<first>`` / ``<last>`` follow the model's ``first_conv`` / ``classifier``: in module order an LM's
    ``<first>`` was layer 0's ``q_proj`` (kept float while ``k_proj`` and ``v_proj`` beside it were quantized)."""
    q = quantize(zoo.create(arch, **kwargs).eval(), "w8a8")
    assert [r.name for r in q.quant_report if r.action == "kept"] == kept
    if arch == "moc_lm_tiny":
        assert isinstance(q.layers[0].attn.q_proj, QuantLinear)


def test_the_all_suffix_keeps_no_layer_float_and_round_trips():
    spec = QuantSpec.parse("w8a8-all")
    assert spec.keep == () and spec.name == "w8a8-all" and QuantSpec.parse("w8a8").keep == ("<first>", "<last>")
    net, _ = _net_and_data()
    q = quantize(copy.deepcopy(net), "w4a8-pcw-all")
    assert isinstance(q.stem, QuantConv2d) and isinstance(q.head, QuantLinear)
    assert "5 layers quantized, 0 kept in float" in summary(q)


def test_blocks_declare_float_only_layers():
    """A module with ``keep_float_reason`` keeps itself and every layer inside it in float, with that reason
    in the report; the rest is quantized as usual."""
    net, _ = _net_and_data()
    net.fc.keep_float_reason = "needs float weights (test)"
    inner = nn.Sequential(nn.Conv2d(16, 16, 1))
    inner.keep_float_reason = "a float-only block (test)"
    net.conv2 = inner
    q = quantize(net, "w8a8")
    assert type(q.fc) is nn.Linear and type(q.conv2[0]) is nn.Conv2d
    assert isinstance(q.conv1, QuantConv2d)
    reasons = {r.name: r.detail for r in q.quant_report if r.action == "kept"}
    assert reasons["fc"] == "needs float weights (test)" and reasons["conv2.0"] == "a float-only block (test)"
    assert "a float-only block (test)" in summary(q)


@pytest.mark.parametrize("method", ["smoothquant", "awq", "os+"])
def test_calibrated_folding_is_exact_in_float(method):
    """Folding moves scales between layers without changing the float function."""
    net, batches = _net_and_data()
    x = batches[0]
    ref = net(x)
    q = quantize(copy.deepcopy(net), "w8a8", calib=batches, method=method)
    report = {r.name: r.detail for r in q.quant_report}
    if method != "awq" or report["conv2"] != "per-channel":  # AWQ may find no scale better than none
        assert "folded into bn1" in report["conv2"]  # BN -> ReLU -> conv2: the scale folds through the ReLU
    assert "folded" not in report["conv1"]  # the stem's output is also read by the residual add
    rel = float((q(x) - ref).norm() / ref.norm())
    assert rel < 0.02


def test_static_activations_need_calibration_and_work():
    net, batches = _net_and_data()
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize(copy.deepcopy(net), "w8a8-static")
    ref = net(batches[0])
    for spec in ("w8a8-static", "w8a8-pc"):
        q = quantize(copy.deepcopy(net), spec, calib=batches)
        assert q.conv1.act_scale is not None
        assert float((q(batches[0]) - ref).norm() / ref.norm()) < 0.05


def test_bad_calibration_data_and_method():
    net, batches = _net_and_data()
    with pytest.raises(ValueError, match=r"takes \(B, 3, H, W\) images"):
        quantize(copy.deepcopy(net), "w8a8", calib=[torch.randn(2, 5, 8, 8)], method="smoothquant")
    with pytest.raises(ValueError, match="awq"):
        quantize(copy.deepcopy(net), "w8a8", calib=batches, method="awk")
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize(copy.deepcopy(net), "w4a8", method="awq")
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize(copy.deepcopy(net), "w4a8", calib=[], method="awq")
    with pytest.raises(ValueError, match="matches no layer"):
        quantize(copy.deepcopy(net), QuantSpec.parse("w8a8").with_(keep=("conv9",)))
    q = quantize(copy.deepcopy(net), "w8a8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(q, "w8a8")


# -------------------------------------------------------------------------------------------------
# zoo.create(quant=...), files, sizes
# -------------------------------------------------------------------------------------------------
def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_create_with_quant_and_file_round_trip(tmp_path):
    model = zoo.create("rcan_tiny_x2", pretrained=True, quant="w4a8").eval()
    assert model.quant_spec.name == "w4a8"
    x = torch.rand(1, 3, 16, 16)
    y = model(x)
    path = zoo.save_quantized(model, tmp_path / "rcan_w4a8.safetensors")
    meta = read_quant_metadata(path)
    assert meta["spec"]["weight_bits"] == 4 and "body.0.body.0.body.0" in meta["layers"]
    again = zoo.create("rcan_tiny_x2", pretrained=str(path))
    assert isinstance(again.body[0].body[0].body[0], QuantConv2d)
    torch.testing.assert_close(again(x), y, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="quantized with w4a8, not w8a8"):
        zoo.create("rcan_tiny_x2", pretrained=str(path), quant="w8a8")
    # a folder written by save_pretrained comes back through local-dir: too
    zoo.save_pretrained(model, tmp_path / "folder")
    torch.testing.assert_close(zoo.create("local-dir:" + str(tmp_path / "folder"), pretrained=True)(x), y,
                               rtol=0, atol=1e-6)


def test_keep_w8_mixed_precision_saves_and_loads(tmp_path):
    """``keep_w8`` layers of a 4-bit spec hold int8 per-channel weights; the file records each layer's
    bits (format version 2) and rebuilds the same model; version 1 files (no per-layer bits) still load."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from zoo.quant import io as quant_io

    net, batches = _net_and_data()
    spec = QuantSpec.parse("w4a8-g8").with_(keep_w8=("conv2", "fc"))
    q = quantize(copy.deepcopy(net), spec)
    assert q.conv2.spec.weight_bits == 8 and q.conv2.qweight.dtype == torch.int8 and q.conv2.group_size is None
    assert q.conv1.spec.weight_bits == 4 and q.conv1.qweight.dtype == torch.uint8 and q.conv1.group_size == 8
    assert "8-bit weights (keep_w8)" in summary(q)
    with torch.no_grad():
        ref, y = net(batches[0]), q(batches[0])
    all_w4 = quantize(copy.deepcopy(net), spec.with_(keep_w8=()))
    with torch.no_grad():  # the 8-bit layers are the more accurate
        assert (y - ref).norm() < (all_w4(batches[0]) - ref).norm()
    path = zoo.save_quantized(q, tmp_path / "mixed.safetensors")
    meta = read_quant_metadata(path)
    assert meta["version"] == 2 and meta["layers"]["conv2"]["weight_bits"] == 8
    assert meta["layers"]["conv1"]["weight_bits"] == 4 and meta["layers"]["fc"]["weight_bits"] == 8
    again = quant_io.load_quantized_into(_Net().eval(), meta)
    with torch.no_grad():
        torch.testing.assert_close(again(batches[0]), y, rtol=0, atol=0)
    # the same file as version 1 wrote it (every layer at the spec's bits: no keep_w8, no "weight_bits")
    plain = quantize(copy.deepcopy(net), spec.with_(keep_w8=()))
    data = quant_io.quant_metadata(plain)
    data["version"] = 1
    for layer in data["layers"].values():
        del layer["weight_bits"]
    old = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(old),
              metadata={"format": "pt", quant_io.META_KEY: json.dumps(data)})
    loaded = quant_io.load_quantized_into(_Net().eval(), read_quant_metadata(old))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batches[0]), plain(batches[0]), rtol=0, atol=0)
    # an unknown version is refused with what to do
    with safe_open(str(old), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    data["version"] = 99
    future = tmp_path / "v99.safetensors"
    save_file(tensors, str(future), metadata={"format": "pt", quant_io.META_KEY: json.dumps(data)})
    with pytest.raises(ValueError, match="format version 99; this zoo reads versions 1, 2: quantize the float"):
        read_quant_metadata(future)


def test_keep_w8_errors_name_the_problem():
    with pytest.raises(ValueError, match="already has 8-bit weights: drop keep_w8"):
        QuantSpec.parse("w8a8").with_(keep_w8=("*",))
    net, _ = _net_and_data()
    with pytest.raises(ValueError, match="keep_w8 pattern 'conv3' matches no layer; did you mean 'conv2'"):
        quantize(net, QuantSpec.parse("w4a8").with_(keep_w8=("conv3",)))


def test_stored_size_goals():
    """w4a8 weights at most 0.15x and w8a8 at most 0.3x of fp32 (scales included), on rcan_x2."""
    float_bytes = _state_bytes(zoo.create("rcan_x2", n_resgroups=2))
    w4 = _state_bytes(zoo.create("rcan_x2", n_resgroups=2, quant="w4a8"))
    w8 = _state_bytes(zoo.create("rcan_x2", n_resgroups=2, quant="w8a8"))
    assert w4 / float_bytes <= 0.15, w4 / float_bytes
    assert w8 / float_bytes <= 0.30, w8 / float_bytes


def test_create_rejects_unknown_spec_before_work():
    with pytest.raises(ValueError, match="w8a8, w4a8, w4a16, w8a16, fp8"):
        zoo.create("rcan_tiny_x2", quant="int3")


def test_classifier_quantizes_with_se_blocks():
    torch.manual_seed(0)
    model = zoo.create("seresnet18", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    q = zoo.quantize(model, "w8a8")
    assert isinstance(q.layer1[0].se.fc1, QuantConv2d)  # the SE excitation is quantized too
    assert float((q(x) - ref).norm() / ref.norm()) < 0.05


# -------------------------------------------------------------------------------------------------
# quantization-aware training
# -------------------------------------------------------------------------------------------------
def test_fake_quant_layers_train_and_keep_state_dict():
    torch.manual_seed(0)
    net, batches = _net_and_data()
    keys = set(net.state_dict())
    zoo.quant_aware(net, "w4a8-g8")
    assert isinstance(net.conv1, FakeQuantConv2d) and isinstance(net.fc, FakeQuantLinear)
    assert set(net.state_dict()) == keys
    net.train()
    out = net(batches[0])
    out.square().mean().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0  # straight-through
    # the fake-quant forward equals the integer model built from the same weights
    net.eval()
    with torch.no_grad():
        fake = net(batches[1])
    plain = _Net()
    plain.load_state_dict(net.state_dict())
    real = quantize(plain.eval(), "w4a8-g8")(batches[1])
    torch.testing.assert_close(real, fake, rtol=1e-4, atol=1e-4)


def test_quant_aware_rejects_static_activation_specs_up_front(tmp_path):
    """Static activation scales need calibration data, which the QAT export does not have: refused when
    the fake-quant layers are put in (before any training), with the dynamic spec to use instead."""
    from zoo.training import run

    net, _ = _net_and_data()
    with pytest.raises(ValueError, match=r"quant_aware='w4a8-static'.*use the dynamic spec 'w4a8'|"
                                         r"quant_aware='w4a8-static'.*train with the dynamic spec 'w4a8'"):
        zoo.quant_aware(net, "w4a8-static")
    assert isinstance(net.conv1, nn.Conv2d) and not isinstance(net.conv1, FakeQuantConv2d)  # nothing swapped
    with pytest.raises(ValueError, match="per_channel"):
        zoo.quant_aware(net, "w8a8-pc")
    with pytest.raises(ValueError, match="train with the dynamic spec 'w4a8-g8'"):
        run(["fit", "--config", "configs/quickstart_qat.yaml", "--output_dir", str(tmp_path),
             "--model.quant_aware", "w4a8-g8-static"])
    assert not (tmp_path / "export").exists()


def test_quant_aware_config_trains_and_exports(tmp_path):
    from zoo.training import run

    run(["fit", "--config", "configs/quickstart_qat.yaml", "--output_dir", str(tmp_path),
         "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
         "--data.args.repeat", "1", "--data.args.val_crop", "48", "--data.args.batch_size", "2"])
    quantized = zoo.create("rcan_tiny_x2", pretrained=str(tmp_path / "export" / "quantized"))
    assert quantized.quant_spec.name == "w4a8"
    assert math.isfinite(float(quantized(torch.rand(1, 3, 12, 12)).mean()))


def test_train_rejects_training_an_integer_model(tmp_path):
    from zoo.training import ConfigError, run

    with pytest.raises(ConfigError, match="quant_aware"):
        run(["fit", "--config", "configs/quickstart.yaml", "--output_dir", str(tmp_path), "--model.quant", "w8a8"])


def test_cli_quantize_writes_a_loadable_file(tmp_path, capsys):
    from zoo.__main__ import main

    out = tmp_path / "rcan_w8a8.safetensors"
    assert main(["quantize", "rcan_tiny_x2", str(out), "--spec", "w8a8"]) == 0
    assert "layers quantized" in capsys.readouterr().out
    assert zoo.create("rcan_tiny_x2", pretrained=str(out)).quant_spec.name == "w8a8"
    assert main(["quantize", "rcan_tiny_x2", str(out), "--spec", "w5a8"]) == 2
    assert "did you mean 'w8a8'" in capsys.readouterr().err


def test_vit_post_layernorm_scales_fold_into_layernorm():
    """RepQ-ViT-style: per-channel scales of post-LayerNorm activations move into the LayerNorm's affine
    and the next linear layer; on a ViT whose LayerNorms make channel outliers this beats RTN."""
    torch.manual_seed(0)
    vit = zoo.create("channelvit", img_size=16, patch_size=8, in_chans=3, embed_dim=48, depth=2, num_heads=3,
                     num_classes=5).eval()
    with torch.no_grad():  # trained ViTs have a few LayerNorm channels far larger than the rest
        for block in vit.blocks:
            for norm in (block.norm1, block.norm2):
                norm.weight[:3].mul_(20)
                norm.bias[3:6].add_(8)
    calib = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    x = torch.randn(16, 3, 16, 16)
    ref = vit(x)

    def sqnr(model):
        return float(10 * torch.log10(ref.pow(2).sum() / (model(x) - ref).pow(2).sum()))

    rtn = quantize(copy.deepcopy(vit), "w8a8-static", calib=calib)
    repq = quantize(copy.deepcopy(vit), "w8a8-static", calib=calib, method="repq")
    report = {r.name: r.detail for r in repq.quant_report}
    assert "folded into blocks.1.norm1" in report["blocks.1.attn.qkv"]
    assert "folded into blocks.0.norm2" in report["blocks.0.mlp.fc1"]
    assert sqnr(repq) > sqnr(rtn) + 1.0, (sqnr(repq), sqnr(rtn))
