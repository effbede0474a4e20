"""Accuracy of ``zoo.quantize`` on real trained models (issue 6): the fast checks behind
benchmarks/quant_accuracy.py.

The quickstart RCAN (``rcan_tiny_x2``, shipped weights) is measured on one held-out val crop (the
192x192 HR centre crop of hubble_deep_field, the harder of the two: its w4a8 losses are the larger),
calibrated on 4 batches of 4 training crops (48x48 LR) drawn with a fixed seed. PSNR is the SR
literature's (Y channel, 2 pixels shaved). The integer layers run the exact int32 reference on CPU,
about half a second per quantized model on this crop.

The torchao comparison trains a small MLP on the flattened 8x8 digits (300 AdamW steps, about a
second, single-threaded) and compares the SQNR of its logits on the digits test split.
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import zoo
from zoo.blocks.quant import QuantConv2d
from zoo.metrics import psnr
from zoo.quant import METHODS, QuantSpec

RCAN = "rcan_tiny_x2"


def _psnr(model: nn.Module, pair) -> float:
    lr, hr = pair
    with torch.inference_mode():
        return float(psnr(model.eval()(lr).clamp(0, 1), hr, shave=2))


def _quantize(model: nn.Module, spec, calib=None, method: str = "rtn") -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scale searches' "requires_grad tensor to a scalar" notes
        return zoo.quantize(copy.deepcopy(model), spec, calib=calib, method=method)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for this module's many small ops: on a shared 2-core machine, 2 OpenMP threads
    waiting for busy cores made it 5-10x slower (18 s against 176 s); the numbers do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sr():
    from zoo.data.super_resolution import SRSampleDataModule

    data = SRSampleDataModule(scale=2, patch_size=48, batch_size=4, repeat=4, val_crop=192)
    data.setup()
    crop = data.splits["val"][data.splits["val"].names.index("hubble_deep_field")]  # (lr, hr), 96x96 LR
    crop = (crop[0][None], crop[1][None])
    torch.manual_seed(0)
    calib = [lr for (lr, _), _ in zip(data.train_dataloader(), range(4))]  # 4 x (4, 3, 48, 48)
    fp32 = zoo.create(RCAN, pretrained=True).eval()
    return {"crop": crop, "calib": calib, "fp32": fp32, "base": _psnr(fp32, crop)}


@pytest.fixture(scope="module")
def rcan_psnr(sr):
    """PSNR of the quantized RCAN for (spec, method), each model quantized once per module."""
    cache: dict = {}

    def get(spec: str, method: str = "rtn") -> float:
        if (spec, method) not in cache:
            needs = method != "rtn" or QuantSpec.parse(spec).static_activations
            model = _quantize(sr["fp32"], spec, sr["calib"] if needs else None, method)
            cache[spec, method] = _psnr(model, sr["crop"])
        return cache[spec, method]

    return get


# ------------------------------------------------------------------------------------------------
# the quickstart RCAN
# ------------------------------------------------------------------------------------------------
def test_fp32_reference_is_the_shipped_model(sr):
    # guards the thresholds below: they are relative to this number
    assert 36.0 < sr["base"] < 37.0


def test_w8a8_rtn_within_0_05_db(sr, rcan_psnr):
    assert sr["base"] - rcan_psnr("w8a8") <= 0.05


def test_best_calibrated_w4a8_within_0_3_db(sr, rcan_psnr):
    best = max(rcan_psnr("w4a8", "awq"), rcan_psnr("w4a8", "os+"))
    assert sr["base"] - best <= 0.3


@pytest.mark.parametrize("method", ["smoothquant", "awq", "os+", "gptq"])
def test_calibrated_w4a8_not_worse_than_rtn(rcan_psnr, method):
    # 0.02 dB: on this crop the methods gain 0.08-0.18 dB over RTN; the margin only absorbs float noise
    # across machines. (With a single calibration batch SmoothQuant does lose ~0.15 dB to RTN here: its
    # max-based scales need a few batches.)
    assert rcan_psnr("w4a8", method) >= rcan_psnr("w4a8") - 0.02


def test_w4a8_static_calibrated_per_tensor_scales(sr, tmp_path):
    model = _quantize(sr["fp32"], "w4a8-static", sr["calib"])
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert convs and all(m.act_scale is not None for m in convs)
    scales = torch.stack([m.act_scale for m in convs])
    assert torch.isfinite(scales).all() and (scales > 0).all()
    value = _psnr(model, sr["crop"])
    assert sr["base"] - value <= 0.4  # ~0.30 dB on this crop, as dynamic per-token RTN (~0.29)
    # and the static scales survive the quantized file
    path = zoo.save_quantized(model, tmp_path / "rcan_w4a8_static.safetensors")
    loaded = zoo.create(RCAN, pretrained=str(path)).eval()
    assert loaded.quant_spec.act_granularity == "per_tensor"
    with torch.inference_mode():
        torch.testing.assert_close(loaded(sr["crop"][0]), model(sr["crop"][0]), rtol=0, atol=0)


def test_os_plus_not_worse_than_rtn_on_its_calibration_data():
    """OS+ searches with and without its shift: on skewed non-negative (post-ReLU) inputs a shift only
    multiplies the weight error of a weight-only model (the digits ResNet's 1x1 downsample convs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 1)).eval()  # 1x1, no padding: os+ may shift its input
    x = torch.distributions.Exponential(1.0).sample((8, 64, 8, 8)) ** 2  # skewed, >= 0
    spec = QuantSpec.parse("w4a16").with_(keep=())
    with torch.no_grad():
        ref = model(x)
        err = {m: float((_quantize(model, spec, [x], m)(x) - ref).pow(2).mean()) for m in ("rtn", "os+")}
    assert err["os+"] <= 1.05 * err["rtn"], err


def test_static_activations_need_calibration(sr):
    with pytest.raises(ValueError, match="calibration data"):
        zoo.quantize(copy.deepcopy(sr["fp32"]), "w4a8-static")


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_calibration_of_the_wrong_shape_names_the_expected_one(sr):
    grey = [torch.rand(2, 1, 24, 24)]
    with pytest.raises(ValueError, match=r"\(2, 1, 24, 24\).*\(B, 3, H, W\)"):
        zoo.quantize(copy.deepcopy(sr["fp32"]), "w4a8", calib=grey, method="awq")


def test_calibration_of_the_wrong_width_for_a_linear_model(mlp):
    model, _, _ = mlp
    with pytest.raises(ValueError, match=r"\(\.\.\., 64\)"):
        zoo.quantize(copy.deepcopy(model), "w8a8", calib=[torch.rand(4, 32)], method="smoothquant")


def test_unknown_method_names_the_valid_ones(sr):
    with pytest.raises(ValueError) as info:
        zoo.quantize(copy.deepcopy(sr["fp32"]), "w4a8", method="hqq")
    assert all(name in str(info.value) for name in METHODS)
    with pytest.raises(ValueError, match="did you mean 'awq'"):
        zoo.quantize(copy.deepcopy(sr["fp32"]), "w4a8", method="awk")


def test_calibration_through_a_flatten():
    """Image batches are valid calibration data for a model that flattens them before its first Linear."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(8, 1, 8, 8)
    q = _quantize(model, QuantSpec.parse("w8a8").with_(keep=()), [x], "smoothquant")
    with torch.no_grad():
        assert float((q(x) - model(x)).norm() / model(x).norm()) < 0.02


# ------------------------------------------------------------------------------------------------
# torchao on a linear-only model
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp():
    """A 64-256-128-10 ReLU MLP trained on the flattened 8x8 digits; (model, calibration, (x, y) test)."""
    from zoo.data import DigitsDataModule

    data = DigitsDataModule(img_size=8, batch_size=64, max_shift=0)
    data.setup()
    (x_train, y_train), (x_test, y_test) = data.splits["train"].tensors, data.splits["test"].tensors
    x_train, x_test = x_train.flatten(1), x_test.flatten(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the machine's thread count
    try:
        for _ in range(300):
            i = torch.randint(0, len(x_train), (64,))
            loss = nn.functional.cross_entropy(model(x_train[i]), y_train[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.95  # a trained model, not random weights
    return model, [x_train[:64], x_train[64:128]], (x_test, y_test)


def _sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - approx).pow(2).sum()))


@pytest.mark.parametrize("case", ["int8", "int4-group32"])
def test_at_least_as_accurate_as_torchao(mlp, case):
    pytest.importorskip("torchao")
    from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8DynamicActivationIntxWeightConfig,
                                      quantize_)
    from torchao.quantization.granularity import PerGroup

    model, _, (x, _) = mlp
    if case == "int8":  # per-row symmetric int8 weights, per-token symmetric int8 activations
        config, spec = Int8DynamicActivationInt8WeightConfig(), "w8a8"
    elif case == "int4-group32":  # torchao's default int4 config: symmetric int4 in groups of 32, int8 act
        config, spec = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                             weight_granularity=PerGroup(32)), "w4a8-g32"
    else:
        raise AssertionError(case)
    theirs = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(theirs, config)
    ours = _quantize(model, QuantSpec.parse(spec).with_(keep=()))  # every layer quantized, as torchao does
    with torch.no_grad():
        reference = model(x)
        ours_db, theirs_db = _sqnr(reference, ours(x)), _sqnr(reference, theirs(x))
    assert math.isfinite(theirs_db) and theirs_db > (40 if case == "int8" else 20)  # torchao really quantized
    # no margin. Both int4 grids are -8..7: torchao's scale is max|w| / 7.5, which clips every positive
    # maximum; ours is the no-clipping one (max(max w / 7, -min w / 8)). With -7..7 and max|w| / 7, ours
    # lost per channel (-1.5 dB on the benchmark's MLPs).
    assert ours_db >= theirs_db, f"ours {ours_db:.2f} dB < torchao {theirs_db:.2f} dB"


def test_per_channel_int4_against_torchao(mlp):
    """Per-channel int4 (one scale per output channel), every layer quantized, against torchao's
    ``Int8DynamicActivationIntxWeightConfig(int4, PerAxis(0))``. RTN on both sides is a near tie that
    depends on the model (ours +0.01 to +1.67 dB on the benchmark's three MLPs, -0.4 dB on this one):
    torchao's max|w| / 7.5 has the finer step, our no-clipping scale no clipped maxima. With calibration
    (AWQ) ours is ahead."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    model, calib, (x, _) = mlp
    theirs = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(theirs, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerAxis(0)))
    spec = QuantSpec.parse("w4a8-pcw").with_(keep=())
    with torch.no_grad():
        reference = model(x)
        theirs_db = _sqnr(reference, theirs(x))
        rtn_db = _sqnr(reference, _quantize(model, spec)(x))
        awq_db = _sqnr(reference, _quantize(model, spec, calib, "awq")(x))
    assert 20 < theirs_db < 40
    assert rtn_db >= theirs_db - 0.6, f"rtn {rtn_db:.2f} dB, torchao {theirs_db:.2f} dB"
    assert awq_db >= theirs_db, f"awq {awq_db:.2f} dB < torchao {theirs_db:.2f} dB"
