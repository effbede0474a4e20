"""Reading RGB images for people's files: grey and RGBA are converted, with a note, never silently."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# the format each suffix names, for Pillow; JPEG at quality 95 (Pillow's default of 75 blurs test images)
WRITE_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
                 ".bmp": ("BMP", {}), ".tif": ("TIFF", {}), ".tiff": ("TIFF", {}), ".webp": ("WEBP", {"lossless": True})}


def to_rgb_tensor(array: np.ndarray, name: str = "image") -> torch.Tensor:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8/float array -> (3, H, W) float32 in [0, 1].

    Grey images are repeated to three channels; RGBA is composited on white. Both emit a warning that
    names the image, so a wrong input is visible.
    """
    return _rgb(array, name)


def _rgb(array: np.ndarray, name: str) -> torch.Tensor:
    """``to_rgb_tensor`` for both public readers; its warnings name the line that called them (two frames up)."""
    if array.dtype == np.uint8:
        img = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        img = array.astype(np.float32) / 65535.0
    else:
        img = array.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if img.shape[2] == 1:
        warnings.warn(f"{name} is greyscale; repeating it to RGB", stacklevel=3)
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        warnings.warn(f"{name} has an alpha channel; compositing it on white", stacklevel=3)
        alpha = img[..., 3:]
        img = img[..., :3] * alpha + (1.0 - alpha)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, H, W)


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a (3, H, W) float32 RGB tensor in [0, 1]."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:  # PIL reports an empty, truncated or foreign file as UnidentifiedImageError, OSError or SyntaxError
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # a phone's portrait JPEG is stored sideways with an EXIF tag
            mode = im.mode
            if mode in ("P", "LA", "PA"):
                im = im.convert("RGBA")
            elif mode in ("CMYK", "YCbCr", "HSV"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        what = "is empty" if path.stat().st_size == 0 else f"is not a readable image ({exc})"
        raise ValueError(f"image {str(path)!r} {what}; re-export or re-download it as PNG or JPEG") from None
    return _rgb(array, path.name)


def write_image(img: torch.Tensor, path: str | Path) -> None:
    """(3, H, W) in [0, 1] -> an 8-bit image (clamped and rounded) in the format its suffix names (PNG,
    JPEG, BMP, TIFF, lossless WebP), written atomically."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise ValueError(f"cannot write {str(path)!r}: name it with one of {', '.join(WRITE_FORMATS)}")
    fmt, options = WRITE_FORMATS[path.suffix.lower()]
    array = (img.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt, **options))


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> one (3, H', W') grid, ``nrow`` images a row (default: ~square)."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = images.new_ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid
