"""PSNR / SSIM as the SR literature computes them: exact values, properties, the Set5 calibration
against RCAN's published table, and clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.data.imresize import imresize
from zoo.metrics import psnr, rgb_to_y, ssim

SCALES = (2, 3, 4)
NAMES = ("baby", "bird", "butterfly", "head", "woman")
# RCAN (Zhang et al., ECCV 2018), Table 3, Set5, BI degradation
RCAN_PSNR = {2: 38.27, 3: 34.74, 4: 32.63}
RCAN_SSIM = {2: 0.9614, 3: 0.9299, 4: 0.9002}
BICUBIC_PSNR = {2: 33.66, 3: 30.39, 4: 28.42}
BICUBIC_SSIM = {2: 0.9299, 3: 0.8682, 4: 0.8104}


def _load(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


@pytest.fixture(scope="module")
def set5_images(set5) -> dict[int, list[dict[str, torch.Tensor]]]:
    """Per scale, per image: uint8 (3, H, W) HR, LR and RCAN's SR output."""
    return {s: [{k: _load(set5 / k / f"x{s}" / f"{n}.png") for k in ("HR", "LR", "RCAN")} for n in NAMES]
            for s in SCALES}


def _unit(img: torch.Tensor) -> torch.Tensor:
    return img[None].double() / 255.0  # (1, 3, H, W) in [0, 1]


# ---------------------------------------------------------------------------------------------------- Y


def test_rgb_to_y_bt601_studio_range():
    rgb = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    y = rgb_to_y(rgb.T.reshape(1, 3, 5, 1)).flatten() * 255  # (1, 3, 5, 1) -> 5 values in 0..255
    expected = torch.tensor([16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
    assert rgb_to_y(torch.rand(2, 3, 4, 5)).shape == (2, 1, 4, 5)


def test_rgb_to_y_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        rgb_to_y(torch.rand(1, 1, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        rgb_to_y(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------------- PSNR


def _checkerboard(n: int, c: int, h: int, w: int) -> torch.Tensor:
    i = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return (1 - 2 * (i % 2)).double().expand(n, c, h, w)  # +-1 everywhere


def test_psnr_exact_for_known_noise():
    target = torch.full((2, 3, 16, 20), 0.5, dtype=torch.float64)
    eps = torch.tensor([0.01, 0.1], dtype=torch.float64).view(2, 1, 1, 1)
    pred = target + eps * _checkerboard(2, 3, 16, 20)  # MSE = eps^2 exactly
    torch.testing.assert_close(psnr(pred, target, y_channel=False), torch.tensor([40.0, 20.0], dtype=torch.float64))
    # on Y the same +-eps on R, G and B moves Y by eps * (65.481 + 128.553 + 24.966) / 255 = eps * 219 / 255
    expected = -20 * torch.log10(eps.flatten() * 219 / 255)
    torch.testing.assert_close(psnr(pred, target), expected)
    # data_range: the same images in 0..255
    torch.testing.assert_close(psnr(pred * 255, target * 255, data_range=255.0), expected)


def test_psnr_identical_is_inf_and_shave_removes_border():
    a = torch.rand(3, 3, 12, 14)
    assert torch.isinf(psnr(a, a)).all() and psnr(a, a).shape == (3,)
    b = a.clone()
    b[..., :2, :] += 0.1  # damage only the top two rows
    assert torch.isfinite(psnr(b, a)).all()
    assert torch.isinf(psnr(b, a, shave=2)).all()


def test_psnr_quantize_rounds_to_8_bits():
    target = torch.randint(0, 256, (1, 3, 8, 8)).double() / 255
    pred = (target + 0.4 / 255).clamp(0, 1)  # less than half a grey level off
    assert torch.isfinite(psnr(pred, target)).all()
    assert torch.isinf(psnr(pred, target, quantize=True)).all()


def test_psnr_grey_images():
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(a, b, y_channel=False), -10 * torch.log10(mse))


# ---------------------------------------------------------------------------------------------------- SSIM


def test_ssim_identical_symmetric_and_bounded():
    a = torch.rand(2, 3, 32, 30, dtype=torch.float64)
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(ssim(a, b), ssim(b, a), atol=1e-14, rtol=0)
    s = ssim(a, b)
    assert s.shape == (2,) and (s < 1).all() and (s > -1).all()
    assert (ssim(a, (a + 0.2 * torch.randn_like(a)).clamp(0, 1)) < s).all()  # more noise, lower SSIM


def test_ssim_matches_scikit_image():
    # an independent implementation: Gaussian weights, sigma 1.5 (11 taps), population covariance,
    # L = 255; skimage filters with padding and then crops 5 pixels, which equals 'valid' filtering
    from skimage.metrics import structural_similarity

    a = torch.rand(1, 1, 40, 37, dtype=torch.float64)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    ref = structural_similarity(a[0, 0].numpy() * 255, b[0, 0].numpy() * 255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255)
    assert ssim(a, b, y_channel=False).item() == pytest.approx(ref, abs=1e-10)


def test_ssim_channels_average_when_not_y():
    a, b = torch.rand(1, 3, 24, 24, dtype=torch.float64), torch.rand(1, 3, 24, 24, dtype=torch.float64)
    per_channel = torch.stack([ssim(a[:, c:c + 1], b[:, c:c + 1], y_channel=False) for c in range(3)])
    torch.testing.assert_close(ssim(a, b, y_channel=False), per_channel.mean(0))


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_bad_input(fn):
    a = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="same shape.*crop"):
        fn(a, torch.rand(1, 3, 32, 30))
    with pytest.raises(ValueError, match="3 channels.*y_channel=False"):
        fn(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="shaving 16 pixels.*smaller shave"):
        fn(a, a, shave=16)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*img\[None\]"):
        fn(a[0], a[0])
    with pytest.raises(ValueError, match="non-negative int"):
        fn(a, a, shave=-1)
    with pytest.raises(ValueError, match="data_range"):
        fn(a, a, data_range=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn(a.numpy(), a)


def test_ssim_needs_the_11x11_window():
    a = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a, a, shave=5)  # 10x10 left
    assert ssim(a, a, shave=4).item() == pytest.approx(1.0)  # 12x12 is enough


# ---------------------------------------------------------------------------------------------------- Set5


def _set5_means(outputs: list[torch.Tensor], images: list[dict[str, torch.Tensor]], scale: int) -> tuple[float, float]:
    """Mean PSNR and SSIM over the images with the SR protocol (Y, ``scale`` pixels shaved, 8-bit)."""
    ps, ss = [], []
    for out, img in zip(outputs, images, strict=True):
        hr = _unit(img["HR"])
        assert out.shape == hr.shape
        ps.append(psnr(out, hr, shave=scale, quantize=True).item())
        ss.append(ssim(out, hr, shave=scale, quantize=True).item())
    return sum(ps) / len(ps), sum(ss) / len(ss)


@pytest.mark.parametrize("scale", SCALES)
def test_set5_rcan_reproduces_the_paper(set5_images, scale):
    images = set5_images[scale]
    for img in images:  # RCAN's outputs and the HR crops have the same size at every scale
        assert img["RCAN"].shape == img["HR"].shape
        assert img["HR"].shape[-2:] == (img["LR"].shape[-2] * scale, img["LR"].shape[-1] * scale)
    p, s = _set5_means([_unit(img["RCAN"]) for img in images], images, scale)
    # measured: 38.2742 / 34.7422 / 32.6336 dB, SSIM 0.96144 / 0.92989 / 0.90024
    assert round(p, 2) == RCAN_PSNR[scale], f"x{scale}: PSNR {p:.4f}"
    assert round(s, 4) == RCAN_SSIM[scale], f"x{scale}: SSIM {s:.5f}"


@pytest.mark.parametrize("scale", SCALES)
def test_set5_bicubic_row(set5_images, scale):
    images = set5_images[scale]
    # what the papers did: MATLAB's imresize on the uint8 LR image
    p, s = _set5_means([_unit(imresize(img["LR"], scale)) for img in images], images, scale)
    # measured 33.6741 / 30.4047 / 28.4302 dB: 0.010-0.015 dB above the paper's row, which RCAN took
    # from earlier papers whose evaluation differed slightly (Y rounded to uint8 gives 33.64/30.39/28.42)
    assert abs(p - BICUBIC_PSNR[scale]) < 0.02, f"x{scale}: MATLAB-bicubic PSNR {p:.4f}"
    assert abs(s - BICUBIC_SSIM[scale]) < 1e-3, f"x{scale}: MATLAB-bicubic SSIM {s:.5f}"

    # PyTorch's bicubic uses Keys' a = -0.75 (MATLAB: -0.5), a sharper kernel: 0.2-0.35 dB higher
    up = [F.interpolate(_unit(img["LR"]), scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
          for img in images]
    ps = [psnr(o, _unit(img["HR"]), shave=scale, quantize=True).item() for o, img in zip(up, images, strict=True)]
    gap = sum(ps) / len(ps) - BICUBIC_PSNR[scale]
    assert 0.15 < gap < 0.4, f"x{scale}: torch bicubic is {gap:+.4f} dB from the paper"
