"""The super-resolution comparison figure: one row per image, its size, where the crop goes, and
captions that carry zoo.metrics.psnr's numbers."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from PIL import Image
from torch import nn

import zoo
from zoo.data.imresize import imresize
from zoo.data.super_resolution import SRSampleDataModule, degrade, sample_image
from zoo.metrics import psnr
from zoo.tasks import SuperResolutionTask
from zoo.tasks.sr_figure import Layout, comparison_figure, largest_difference_window, row_captions

PLANTED = (100, 60, 24, 24)  # top, left, height, width in HR pixels


class BicubicExceptOneSquare(nn.Module):
    """Bicubic x2 everywhere but in PLANTED, where it brightens: the only place the two differ."""

    scale = 2

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))  # a parameter, so the figure finds a device and dtype

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        out = imresize(lr, scale=self.scale).clamp(0, 1)
        top, left, h, w = PLANTED
        out[..., top:top + h, left:left + w] = (out[..., top:top + h, left:left + w] + 0.3).clamp(0, 1)
        return out + self.weight


def _photos() -> dict[str, torch.Tensor]:
    return {"chelsea": sample_image("chelsea")[:, :180, :240], "coffee": sample_image("coffee")[:, 100:260, 200:420]}


def test_figure_has_a_row_per_image_crops_where_the_model_differs_and_psnr_captions(tmp_path):
    photos, crop = _photos(), 64
    model = BicubicExceptOneSquare()
    path = tmp_path / "figure.png"
    rows = comparison_figure(model, list(photos.values()), path, names=list(photos), crop=crop)

    layout = Layout()
    assert [r.name for r in rows] == list(photos)
    with Image.open(path) as png:
        assert png.size == layout.size(len(photos))
    assert layout.size(3)[1] - layout.size(2)[1] == layout.row  # one row more per image
    assert layout.zoom(crop, crop) * crop >= 256  # each crop is shown at a readable size

    top, left, h, w = PLANTED
    for row, hr in zip(rows, photos.values()):
        r_top, r_left, r_h, r_w = row.box
        assert (r_h, r_w) == (crop, crop)
        assert r_top <= top and top + h <= r_top + r_h and r_left <= left and left + w <= r_left + r_w, row.box
        # the captions' numbers are zoo.metrics.psnr with the task's settings on the same tensors
        lr = degrade(hr[None], 2)
        sr, bicubic = model(lr).detach().clamp(0, 1), imresize(lr, scale=2).clamp(0, 1)
        box = (..., slice(r_top, r_top + r_h), slice(r_left, r_left + r_w))
        for method, out in (("bicubic", bicubic), ("model", sr)):
            assert row.image_psnr[method] == psnr(out, hr[None], shave=2, y_channel=True, quantize=True).item()
            assert row.crop_psnr[method] == psnr(out[box], hr[None][box], y_channel=True, quantize=True).item()
        captions = row_captions(row, layout.zoom(r_h, r_w))
        assert captions[1] == ("bicubic", f"image: {row.image_psnr['bicubic']:.2f} dB",
                               f"crop: {row.crop_psnr['bicubic']:.2f} dB")
        image_gain = row.image_psnr["model"] - row.image_psnr["bicubic"]
        assert captions[2][1] == f"image: {row.image_psnr['model']:.2f} dB ({image_gain:+.2f} dB)"
        assert row.crop_psnr["model"] < row.crop_psnr["bicubic"]  # the brightened square is worse


def test_window_search_stays_inside_the_shaved_border():
    target = torch.zeros(3, 40, 50)
    bicubic, model = target.clone(), target.clone()
    model[:, :6, :6] = 1  # the difference sits in the corner, partly in the border
    top, left = largest_difference_window(bicubic, model, target, (16, 16), border=4)
    assert (top, left) == (4, 4)


def test_the_task_writes_the_figure_at_test_time(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("rcan", scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=2)
    data = SRSampleDataModule(scale=2, patch_size=8, batch_size=2, repeat=1, train_images=["chelsea"],
                              val_images=["coffee"], test_images=["colorwheel", "cat"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    task = SuperResolutionTask(model, comparison_size=64, comparison_images=2)
    trainer.test(task, datamodule=data, verbose=False)
    with Image.open(tmp_path / "comparison.png") as png:
        assert png.size == Layout().size(2)
    assert [row.name for row in task._comparison] == ["colorwheel", "cat"]
    assert all(row.box[2:] == (64, 64) for row in task._comparison)


@pytest.mark.parametrize("bad, message", [({"scale": 1}, "pass scale="), ({"scale": 2, "names": ["a", "b"]}, "2 names for 1")])
def test_bad_arguments_are_named(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        comparison_figure(nn.Conv2d(3, 3, 1), [torch.rand(3, 32, 32)], tmp_path / "f.png", **bad)
