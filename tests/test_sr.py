"""RCAN end to end: release and BasicSR parity, bad checkpoints, data, tiled upscaling, shipped weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import zoo
from zoo.data.images import to_rgb_tensor
from zoo.data.imresize import imresize
from zoo.data.super_resolution import SRDataset, degrade, mod_crop, sample_image
from zoo.inference import _tile_plan, upscale
from zoo.metrics import psnr


def _small(vectors, scale):
    meta = json.loads((vectors / "rcan" / f"rcan_small_x{scale}.json").read_text())
    cfg = meta["config"]
    kwargs = {k: cfg[k] for k in ("n_resgroups", "n_resblocks", "n_feats", "reduction")}
    return kwargs, load_file(str(vectors / "rcan" / f"rcan_small_x{scale}_io.safetensors"))


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("layout", ["official", "basicsr"])
def test_rcan_matches_release_vectors(vectors, scale, layout):
    kwargs, io = _small(vectors, scale)
    path = vectors / "rcan" / f"rcan_small_x{scale}_{layout}_state.safetensors"
    model = zoo.create("rcan", scale=scale, pretrained=str(path), **kwargs).eval()
    x = io["input"] / 255.0  # the release works in 0..255; the zoo takes [0, 1]
    with torch.no_grad():
        out = model(x) * 255.0
        feats = model.forward_features(x)
        out64 = model.double()(x.double()) * 255.0
    torch.testing.assert_close(out, io["output"], atol=1e-3, rtol=0)
    torch.testing.assert_close(out64, io["output_fp64"], atol=1e-3, rtol=0)
    torch.testing.assert_close(feats, io["body_out_plus_skip"], atol=1e-3, rtol=0)


def test_rcan_ca_block_and_attention_matters(vectors):
    kwargs, io = _small(vectors, 2)
    model = zoo.create("rcan", scale=2, pretrained=str(vectors / "rcan" / "rcan_small_x2_official_state.safetensors"),
                       **kwargs).eval()
    ca = model.body[0].body[0].body[3]
    with torch.no_grad():
        torch.testing.assert_close(ca(io["ca_in"]), io["ca_out"], atol=1e-4, rtol=0)
        for group in model.body[:-1]:
            for rcab in group.body[:-1]:
                rcab.body[3] = nn.Identity()
        moved = (model(io["input"] / 255.0) * 255.0 - io["output"]).abs().max()
    assert moved > 1.0  # far beyond the 1e-3 tolerance: the parity above tests the attention


def test_full_size_layouts_and_parameter_counts(vectors):
    full = json.loads((vectors / "rcan" / "rcan_full_keys.json").read_text())["models"]
    for tag, meta in full.items():
        model = zoo.create(f"rcan_{tag}", device="meta")
        assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == [[k, s] for k, s in meta["keys"]]
        assert sum(p.numel() for p in model.parameters()) == meta["n_params_excluding_meanshift"]
    assert sum(p.numel() for p in zoo.create("rcan_x4", device="meta").parameters()) == 15_592_355


def test_checkpoint_for_another_scale_names_the_upsampler(vectors):
    kwargs, _ = _small(vectors, 4)
    with pytest.raises(zoo.CheckpointError, match=r"tail\.0\.2"):
        zoo.create("rcan", scale=2, pretrained=str(vectors / "rcan" / "rcan_small_x4_official_state.safetensors"), **kwargs)
    with pytest.raises(zoo.CheckpointError, match=r"tail\.0\.0\.weight: checkpoint \(64, 16, 3, 3\) vs model \(144, 16, 3, 3\)"):
        zoo.create("rcan", scale=3, pretrained=str(vectors / "rcan" / "rcan_small_x2_official_state.safetensors"),
                   **_small(vectors, 2)[0])


def test_rcan_rejects_bad_scales_and_channels():
    with pytest.raises(ValueError, match="2, 3, 4 or 8"):
        zoo.create("rcan", scale=5, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2)
    with pytest.raises(ValueError, match="RGB"):
        zoo.create("rcan", in_chans=1, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2)


def test_degrade_mod_crop_and_too_small_images():
    hr = torch.rand(3, 37, 50)
    assert mod_crop(hr, 4).shape == (3, 36, 48)
    lr = degrade(mod_crop(hr, 2), 2)
    assert lr.shape == (3, 18, 25)
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit values, like the benchmark files
    with pytest.raises(ValueError, match=r"needs at least 96x96"):
        SRDataset([torch.rand(3, 80, 120)], ["small.png"], scale=2, patch_size=48)


def test_training_crops_are_aligned_pairs():
    hr = sample_image("chelsea")
    data = SRDataset([hr], ["chelsea"], scale=2, patch_size=16, repeat=4)
    for i in range(4):
        lr, crop = data[i]
        assert lr.shape == (3, 16, 16) and crop.shape == (3, 32, 32)
        torch.testing.assert_close(lr, degrade(crop, 2))


def test_grey_and_rgba_images_are_converted_with_a_warning():
    with pytest.warns(UserWarning, match="greyscale"):
        grey = to_rgb_tensor(np.full((4, 5), 128, dtype=np.uint8), "grey.png")
    assert grey.shape == (3, 4, 5) and torch.allclose(grey, torch.full((3, 4, 5), 128 / 255))
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: white after compositing
    with pytest.warns(UserWarning, match="alpha"):
        assert torch.allclose(to_rgb_tensor(rgba, "a.png"), torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="expected an"):
        to_rgb_tensor(np.zeros((2, 2, 2), dtype=np.uint8), "two.png")


def test_tile_plan_covers_every_pixel_once():
    for length, tile, overlap in [(100, 32, 8), (33, 32, 8), (32, 32, 0), (257, 64, 16), (10, 64, 8)]:
        plan = _tile_plan(length, tile, overlap)
        keep = [i for _, k0, k1 in plan for i in range(k0, k1)]
        assert keep == list(range(length))
        assert all(s <= k0 and k1 <= s + tile for s, k0, k1 in plan)


class _LocalSR(nn.Module):
    """A conv-only x2 network: receptive field radius 3, so tiles with overlap >= 6 are exact."""

    scale = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        return self.net(x) + F.interpolate(x, scale_factor=2, mode="nearest")


def test_tiled_upscaling_equals_untiled():
    image = sample_image("coffee")[:, :83, :101]  # ragged size
    model = _LocalSR().eval()
    whole = upscale(model, image)
    tiled = upscale(model, image, tile=24, overlap=8)
    assert (whole - tiled).abs().max() < 1e-5
    # RCAN's channel attention pools over each tile: one tile covering the image is exact, small
    # tiles differ a little (a documented limit of tiling any globally pooled network)
    rcan = zoo.create("rcan", scale=2, n_resgroups=1, n_resblocks=2, n_feats=16, reduction=4).eval()
    torch.testing.assert_close(upscale(rcan, image, tile=128), upscale(rcan, image), atol=1e-5, rtol=0)
    assert psnr(upscale(rcan, image, tile=48, overlap=16)[None], upscale(rcan, image)[None], y_channel=False) > 35


def test_shipped_weights_beat_bicubic_on_held_out_images():
    model = zoo.create("rcan_tiny_x2", pretrained=True).eval()
    assert model.pretrained_cfg["source"] == "file"
    gains = []
    for name in ("stereo_motorcycle", "hubble_deep_field"):
        hr = mod_crop(sample_image(name)[:, 100:292, 100:292], 2)[None]
        lr = degrade(hr, 2)
        with torch.no_grad():
            sr = model(lr).clamp(0, 1)
        bicubic = imresize(lr, scale=2).clamp(0, 1)
        gains.append((psnr(sr, hr, shave=2, quantize=True) - psnr(bicubic, hr, shave=2, quantize=True)).item())
    assert min(gains) > 0.5, gains


def test_upscale_command(tmp_path, capsys):
    from zoo.__main__ import main
    from zoo.data import read_image, write_image

    write_image(sample_image("chelsea")[:, :40, :50], tmp_path / "in.png")
    model = zoo.create("rcan", scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2)
    zoo.save_pretrained(model, tmp_path / "weights")
    assert main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--model", "rcan",
                 "--weights", str(tmp_path / "weights"), "--tile", "16", "--overlap", "4"]) == 0
    out = read_image(tmp_path / "out.png")
    assert out.shape == (3, 80, 100)
    assert "in.png (50x40)" in capsys.readouterr().out
    assert main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "o.png"), "--model", "resnet18"]) == 2
    assert "not a super-resolution model" in capsys.readouterr().err


def test_quickstart_short_run_beats_bicubic(tmp_path):
    """A few hundred steps of configs/quickstart.yaml already beat bicubic on held-out crops."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from zoo.training import run

    args = ["--config", str(root / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path / "qs"),
            "--trainer.max_steps", "300", "--trainer.max_epochs", "100", "--trainer.check_val_every_n_epoch", "100",
            "--trainer.enable_progress_bar", "false", "--data.args.val_crop", "128"]
    run(["fit", *args])
    results = run(["validate", *args, "--ckpt_path", "last"]).results
    assert results["val/psnr"] > results["val/psnr_bicubic"] + 0.3, results


def test_rcan_infers_channels_last_on_the_cpu_and_returns_nchw():
    """CPU inference runs the trunk channels-last (oneDNN's NCHW convs step in blocks of 16 channels); the
    output is NCHW and equals the NCHW path to float summation order; with gradients the layout is untouched."""
    model = zoo.create("rcan", n_resgroups=1, n_resblocks=2, n_feats=20, reduction=4).eval()
    x = torch.rand(2, 3, 10, 9)
    seen: list[str] = []
    model.body[0].body[0].body[0].register_forward_hook(
        lambda m, args, out: seen.append("nhwc" if not args[0].is_contiguous() else "nchw"))
    reference = model(x)  # grad mode: the stock NCHW layout
    with torch.no_grad():
        got = model(x)
    with torch.inference_mode():
        got_inference = model(x)
        model(x.contiguous(memory_format=torch.channels_last))  # already channels-last: as given
    assert seen == ["nchw", "nhwc", "nhwc", "nhwc"]
    assert got.is_contiguous() and got_inference.is_contiguous() and got.shape == (2, 3, 20, 18)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_inference, reference, rtol=1e-5, atol=1e-5)


def test_mean_shift_is_a_per_channel_scale_and_shift_where_its_weight_is_diagonal(monkeypatch):
    """The release's identity (or any diagonal) weight skips PyTorch's slow 3-channel 1x1 conv; another
    weight keeps the conv; both give the conv's values, in the input's layout."""
    from zoo.models.rcan import MeanShift

    shift = MeanShift(sign=+1)
    x = torch.rand(2, 3, 7, 5) * 255
    convs, stock = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: convs.append(1) or stock(*a, **k))
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        got = shift(t)
        torch.testing.assert_close(got, stock(t, shift.weight, shift.bias), rtol=0, atol=1e-4)
        assert got.stride() == t.stride()
    assert not convs
    shift.weight[0, 1] = 0.5  # no longer diagonal: the conv
    torch.testing.assert_close(shift(x), stock(x, shift.weight, shift.bias))
    assert convs == [1]
