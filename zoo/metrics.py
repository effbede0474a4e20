"""Image-quality metrics as the super-resolution literature computes them: PSNR and SSIM on the Y
channel, with a border shaved.

The protocol that reproduces the published tables is RCAN's ``RCAN_TestCode/Evaluate_PSNR_SSIM.m``
(EDSR's ``calc_psnr`` measures the same PSNR in float32):

1. the SR output is an 8-bit image (it was saved as PNG), so a float network output is quantised
   first: ``quantize=True`` rounds ``img * 255`` to integers, like EDSR's ``utility.quantize``;
2. Y from MATLAB's ``rgb2ycbcr`` on ``im2double`` input (BT.601, 16..235, *not* rounded to integers);
3. ``scale`` pixels shaved from every side;
4. PSNR from the MSE in 0..255 units; SSIM with Zhou Wang's ``ssim_index`` (11x11 Gaussian, sigma
   1.5, K1 0.01, K2 0.03, L 255, 'valid' filtering, mean of the map);
5. the per-image values averaged over the data set.

So ``psnr(sr, hr, shave=scale, quantize=True)`` and ``ssim(sr, hr, shave=scale, quantize=True)``
(``y_channel=True`` is the default) give the papers' numbers; for images read from 8-bit files
``quantize`` changes nothing. On Set5 with RCAN's released outputs they give 38.2742 / 34.7422 /
32.6336 dB and SSIM 0.9614 / 0.9299 / 0.9002 for x2 / x3 / x4, the paper's 38.27 / 34.74 / 32.63
and 0.9614 / 0.9299 / 0.9002 (``tests/test_metrics.py``). RCAN's script holds Y in single
precision; float64 here changes nothing at the fourth decimal.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["psnr", "rgb_to_y", "ssim"]

# ITU-R BT.601 luma for R, G, B in [0, 1], giving Y in 16..235 on the 0..255 scale (MATLAB rgb2ycbcr)
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: Tensor) -> Tensor:
    """Luma of RGB images as MATLAB's ``rgb2ycbcr`` computes it (ITU-R BT.601, studio range).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for R, G, B in [0, 1] gives 16..235 in 0..255
    units; the result is divided by 255 so it stays on the [0, 1] scale of the input.

    Args:
        img: ``(N, 3, H, W)`` RGB in [0, 1].

    Returns:
        ``(N, 1, H, W)`` luma in [16/255, 235/255] for inputs in [0, 1], same dtype as ``img``.
    """
    if not isinstance(img, Tensor) or img.dim() != 4 or img.shape[1] != 3:
        shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"rgb_to_y expects an (N, 3, H, W) RGB tensor, got {shape}")
    if not img.is_floating_point():
        raise TypeError(f"rgb_to_y expects floating-point RGB in [0, 1], got {img.dtype}; "
                        "convert 8-bit images with img.double() / 255")
    w = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    y = (img * w).sum(dim=1, keepdim=True) + _Y_OFFSET  # (N, 1, H, W), 0..255 units
    return y / 255.0


def _prepare(pred: Tensor, target: Tensor, shave: int, y_channel: bool, data_range: float,
             quantize: bool, name: str, min_size: int = 1) -> tuple[Tensor, Tensor]:
    """Validate, then return both images as float64 on the [0, 1] scale: Y if asked, border shaved."""
    for arg, t in (("pred", pred), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}; crop the ground truth to the output size "
                         "(e.g. to a multiple of the scale) first")
    if pred.dim() != 4:
        raise ValueError(f"{name} expects (N, C, H, W) batches, got shape {tuple(pred.shape)}; "
                         "add a batch dimension with img[None]")
    channels = pred.shape[1]
    if y_channel and channels != 3:
        raise ValueError(f"{name}: y_channel=True needs RGB images with 3 channels, got {channels}; "
                         "pass y_channel=False for grey (or already-Y) images")
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise ValueError(f"{name}: shave must be a non-negative int, got {shave!r}")
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"{name}: data_range must be a positive number, got {data_range!r}")
    h, w = pred.shape[-2:]
    if h - 2 * shave < min_size or w - 2 * shave < min_size:
        raise ValueError(f"{name}: shaving {shave} pixels from each side of a {h}x{w} image leaves "
                         f"{max(h - 2 * shave, 0)}x{max(w - 2 * shave, 0)}, but at least "
                         f"{min_size}x{min_size} is needed; use a smaller shave or a larger image")

    out = []
    for t in (pred, target):
        t = t.to(torch.float64) / data_range  # [0, 1] scale, float64 so the MSE of close images is exact
        if quantize:
            # the published numbers are measured on 8-bit images: round to the 256 levels first
            t = (t * 255.0).round().clamp(0.0, 255.0) / 255.0
        if y_channel:
            t = rgb_to_y(t)  # (N, 1, H, W)
        if shave:
            t = t[..., shave:h - shave, shave:w - shave]  # (N, C, H - 2 shave, W - 2 shave)
        out.append(t)
    return out[0], out[1]


def psnr(pred: Tensor, target: Tensor, shave: int = 0, y_channel: bool = True, data_range: float = 1.0,
         quantize: bool = False) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(data_range^2 / MSE)``.

    Args:
        pred, target: ``(N, 3, H, W)`` RGB (or ``(N, C, H, W)`` with ``y_channel=False``) with
            values in ``[0, data_range]``.
        shave: pixels removed from every side before measuring (the SR protocol uses the scale).
        y_channel: measure the BT.601 luma (:func:`rgb_to_y`) instead of all channels.
        data_range: the value of white (1.0 for [0, 1] images, 255 for 0..255).
        quantize: round both images to 8 bits (``round(img / data_range * 255)``) first. The SR
            tables (RCAN's MATLAB evaluation, EDSR's ``calc_psnr``) measure saved 8-bit images, so
            use ``quantize=True`` with a float network output to reproduce published numbers (on
            Set5 bicubic upscaling the unquantised PSNR differs by 0.002-0.006 dB).

    Returns:
        ``(N,)`` float64 PSNR in dB; ``+inf`` where the images are identical. Average it over the
        data set (per-image mean) as the papers do.

    Source: the SR evaluation protocol of RCAN (Zhang et al., ECCV 2018, ``Evaluate_PSNR_SSIM.m``).
    """
    p, t = _prepare(pred, target, shave, y_channel, data_range, quantize, "psnr")
    mse = (p - t).pow(2).flatten(1).mean(dim=1)  # (N,), [0, 1] scale so the peak is 1
    return 10.0 * torch.log10(1.0 / mse)  # mse == 0 gives +inf


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian; its outer product is MATLAB's ``fspecial('gaussian', size, sigma)``."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, shave: int = 0, y_channel: bool = True, data_range: float = 1.0,
         quantize: bool = False) -> Tensor:
    """Structural similarity per image (Wang et al. 2004) as the SR literature computes it.

    Follows Zhou Wang's ``ssim_index.m`` (used by RCAN's evaluation script): an 11x11 Gaussian
    window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, ``L = 255`` on images in 0..255 units,
    'valid' filtering (no padding, so the map is 10 pixels smaller in each dimension), and the mean
    of the SSIM map. No automatic downsampling (unlike MATLAB's later built-in ``ssim``). With
    ``y_channel=False`` and several channels, each channel gets its own map and the maps are
    averaged. Arithmetic is float64.

    Args:
        pred, target, shave, y_channel, data_range, quantize: as for :func:`psnr`. The shaved
            image must be at least 11x11.

    Returns:
        ``(N,)`` float64 mean SSIM; exactly 1 for identical images, symmetric in its arguments.

    Source: Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    win_size, sigma, k1, k2, peak = 11, 1.5, 0.01, 0.03, 255.0
    p, t = _prepare(pred, target, shave, y_channel, data_range, quantize, "ssim", min_size=win_size)
    h, w = p.shape[-2:]
    p, t = p * peak, t * peak  # (N, C, H, W) in 0..255 units, as ssim_index expects
    g = _gaussian_window(win_size, sigma, p.dtype, p.device)
    hv, wv = h - win_size + 1, w - win_size + 1  # 'valid' output size

    def filt(x: Tensor) -> Tensor:
        # separable Gaussian, 'valid' like filter2(window, x, 'valid'), as 11 shifted slices per
        # axis: cheaper than a float64 conv2d on CPU. (..., H, W) -> (..., H-10, W-10)
        x = sum(g[k] * x[..., k:k + hv, :] for k in range(win_size))
        return sum(g[k] * x[..., k:k + wv] for k in range(win_size))

    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    # the five local moments in one pass, every channel alike: (5, N, C, H-10, W-10)
    mu_p, mu_t, e_pp, e_tt, e_pt = filt(torch.stack([p, t, p * p, t * t, p * t]))
    mu_pp, mu_tt, mu_pt = mu_p * mu_p, mu_t * mu_t, mu_p * mu_t
    var_p, var_t, cov = e_pp - mu_pp, e_tt - mu_tt, e_pt - mu_pt
    ssim_map = ((2 * mu_pt + c1) * (2 * cov + c2)) / ((mu_pp + mu_tt + c1) * (var_p + var_t + c2))
    return ssim_map.mean(dim=(1, 2, 3))  # (N,): mean of the map (and over channels when several)
