"""Image files as people have them: every suffix written in its own format, phone JPEGs read upright."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from zoo.data import read_image, write_image

MAGIC = {".png": b"\x89PNG", ".jpg": b"\xff\xd8\xff", ".bmp": b"BM", ".tif": (b"II*\x00", b"MM\x00*"), ".webp": b"RIFF"}


@pytest.mark.parametrize("suffix", sorted(MAGIC))
def test_write_image_writes_the_format_its_suffix_names(suffix, tmp_path):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 20), torch.linspace(0, 1, 30), indexing="ij")
    img = torch.stack([xx, yy, (xx + yy) / 2])  # smooth, as photographs are (JPEG is for those)
    path = tmp_path / f"x{suffix}"
    write_image(img, path)
    head = path.read_bytes()[:4]
    assert head.startswith(MAGIC[suffix]) if isinstance(MAGIC[suffix], bytes) else head in MAGIC[suffix]
    back = read_image(path)
    exact = (img * 255).round() / 255
    tolerance = 0.05 if suffix == ".jpg" else 0.0  # only JPEG is lossy (quality 95)
    assert back.shape == (3, 20, 30) and (back - exact).abs().max() <= tolerance + 1e-6


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"name it with one of \.png"):
        write_image(torch.rand(3, 4, 4), tmp_path / "x.out")


def test_exif_rotated_jpeg_reads_upright(tmp_path):
    """A phone stores a portrait photo landscape with EXIF orientation 6 (rotate 90 degrees clockwise)."""
    upright = torch.zeros(3, 40, 20)
    upright[0, :10] = 1.0  # a red band at the top of the portrait image
    stored = (upright.permute(1, 2, 0) * 255).byte().numpy()
    sideways = Image.fromarray(stored).transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote: 20 x 40 -> 40 x 20
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    sideways.save(path, exif=exif.tobytes(), quality=95)
    got = read_image(path)
    assert got.shape == (3, 40, 20)
    assert got[0, :8].mean() > 0.8 and got[0, 12:].mean() < 0.2  # the red band is at the top again
