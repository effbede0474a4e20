"""The super-resolution comparison figure: per image, a crop where the model and bicubic differ most,
shown as bicubic | model | ground truth beside the whole image, captioned with PSNRs.

``comparison_row`` picks the crop and measures it; ``draw_comparison`` lays rows out with PIL (its
default font, so no extra package); ``comparison_figure`` does both for a model and HR images, outside
training. The super-resolution task calls the first two at test time.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.imresize import imresize
from ..data.super_resolution import degrade, mod_crop
from ..files import atomic_write
from ..metrics import psnr, rgb_to_y

METHODS = ("bicubic", "model")  # the upscalings each row compares against the ground truth


@dataclass
class ComparisonRow:
    """One image of the figure. PSNRs are zoo.metrics.psnr with the SR protocol (Y channel, 8-bit):
    ``image_psnr`` on the whole image with ``scale`` pixels shaved, as the test table prints it;
    ``crop_psnr`` on the crop, which lies inside that shaved border, so nothing more is shaved."""

    name: str
    scale: int
    image_size: tuple[int, int]  # HR (height, width)
    box: tuple[int, int, int, int]  # the crop in HR pixels: top, left, height, width
    crops: dict[str, Tensor]  # "bicubic", "model", "ground truth" -> (3, height, width) on the CPU
    thumbnail: Tensor  # the whole HR image, shrunk to fit a tile: (3, h, w) on the CPU
    image_psnr: dict[str, float] = field(default_factory=dict)  # per method
    crop_psnr: dict[str, float] = field(default_factory=dict)


def largest_difference_window(bicubic: Tensor, model: Tensor, target: Tensor, size: tuple[int, int],
                              border: int) -> tuple[int, int]:
    """(top, left) of the ``size`` window, inside ``border`` pixels of every side, whose Y-channel squared
    error differs most (either way) between the two upscalings: where PSNR tells them apart.

    The per-pixel gap ``(bicubic - target)^2 - (model - target)^2`` is summed over every window with an
    integral image (an avg_pool with a kernel of the crop's size would cost crop^2 per pixel)."""
    y = [rgb_to_y(t[None].double())[0, 0] for t in (bicubic, model, target)]  # (H, W) each
    gap = (y[0] - y[2]).square() - (y[1] - y[2]).square()
    h, w = gap.shape
    gap = gap[border:h - border, border:w - border]
    integral = F.pad(gap.cumsum(0).cumsum(1), (1, 0, 1, 0))  # integral[i, j] = gap[:i, :j].sum()
    sh, sw = size
    sums = integral[sh:, sw:] - integral[:-sh, sw:] - integral[sh:, :-sw] + integral[:-sh, :-sw]
    best = int(sums.abs().flatten().argmax())
    return border + best // sums.shape[1], border + best % sums.shape[1]


def comparison_row(name: str, bicubic: Tensor, model: Tensor, target: Tensor, scale: int, crop: int = 64,
                   thumbnail: int = 224) -> ComparisonRow:
    """Pick and measure the crop of one image: (3, H, W) bicubic and model upscalings (clamped to [0, 1])
    and the HR ground truth. ``crop`` is in HR pixels; ``thumbnail`` bounds the whole-image view."""
    images = {"bicubic": bicubic.detach(), "model": model.detach(), "ground truth": target.detach()}
    h, w = target.shape[-2:]
    size = (min(crop, h - 2 * scale), min(crop, w - 2 * scale))  # a small image gives a smaller crop
    top, left = largest_difference_window(images["bicubic"], images["model"], target, size, border=scale)
    crops = {k: v[:, top:top + size[0], left:left + size[1]].float().cpu() for k, v in images.items()}
    metric = dict(y_channel=True, quantize=True)  # the task's protocol; shave below
    row = ComparisonRow(name, scale, (h, w), (top, left, *size), crops, _shrink(target, thumbnail))
    for method in METHODS:
        row.image_psnr[method] = psnr(images[method][None], target[None], shave=scale, **metric).item()
        row.crop_psnr[method] = psnr(crops[method][None], crops["ground truth"][None], **metric).item()
    return row


def _shrink(img: Tensor, bound: int) -> Tensor:
    """The whole image, antialiased down to fit ``bound`` x ``bound`` (never enlarged)."""
    h, w = img.shape[-2:]
    factor = min(1.0, bound / max(h, w))
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    return F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True)[0].clamp(0, 1).cpu()


@dataclass(frozen=True)
class Layout:
    """Pixel sizes of the figure: four columns (whole image, bicubic, model, ground truth) of ``tile``
    pixels; each row is three caption lines over its tiles."""

    tile: int = 256
    thumbnail: int = 224  # the whole image's bound, within its tile: a photograph costs the most bytes
    margin: int = 16
    gap: int = 12
    font_size: int = 15
    title_size: int = 20

    @property
    def line(self) -> int:
        return round(self.font_size * 1.4)

    @property
    def header(self) -> int:  # the title and two lines on how to read the figure
        return self.margin + round(self.title_size * 1.4) + 2 * self.line + self.gap

    @property
    def caption(self) -> int:  # three lines over each tile
        return 3 * self.line + 4

    @property
    def row(self) -> int:
        return self.caption + self.tile + 2 * self.gap

    def zoom(self, height: int, width: int) -> int:
        """The nearest-neighbour enlargement of a crop: the largest whole factor (pixels stay square
        and equal) that fits the tile."""
        return max(1, min(self.tile // height, self.tile // width))

    def size(self, rows: int) -> tuple[int, int]:
        """(width, height) of a figure of ``rows`` rows."""
        return 2 * self.margin + 4 * self.tile + 3 * self.gap, self.header + rows * self.row + self.margin - 2 * self.gap


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:  # older Pillow: the fixed bitmap font, small but legible
        return ImageFont.load_default()


def _image(img: Tensor):
    from PIL import Image

    array = (img.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
    return Image.fromarray(array)


def row_captions(row: ComparisonRow, zoom: int) -> list[tuple[str, str, str]]:
    """The three caption lines over each tile of ``row``: whole image, bicubic, model, ground truth."""
    def psnr_line(where: str, psnrs: dict[str, float], method: str) -> str:
        gain = "" if method == "bicubic" else f" ({psnrs[method] - psnrs['bicubic']:+.2f} dB)"
        return f"{where}: {psnrs[method]:.2f} dB{gain}"

    top, left, ch, cw = row.box
    captions = [(row.name, f"{row.image_size[1]}x{row.image_size[0]}", "red box: the crop")]
    for method in METHODS:
        captions.append((method, psnr_line("image", row.image_psnr, method), psnr_line("crop", row.crop_psnr, method)))
    captions.append(("ground truth", f"crop {cw}x{ch} at x={left}, y={top}", f"shown x{zoom}, nearest neighbour"))
    return captions


def draw_comparison(rows: Sequence[ComparisonRow], path: str | Path, title: str,
                    layout: Layout = Layout()) -> tuple[int, int]:
    """Write the figure of ``rows`` to ``path`` (PNG, atomically); returns its (width, height).

    Crops are enlarged with nearest-neighbour by a whole factor so every pixel stays a visible square;
    the whole image is boxed where the crop lies."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("draw_comparison needs at least one row")
    # a crop larger than the tile widens the columns rather than spilling over its neighbour
    layout = replace(layout, tile=max(layout.tile, *(max(row.box[2:]) for row in rows)))
    width, height = layout.size(len(rows))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    text, muted, font, title_font = (30, 30, 30), (90, 90, 90), _font(layout.font_size), _font(layout.title_size)
    x0, y = layout.margin, layout.margin
    draw.text((x0, y), title, fill=text, font=title_font)
    y += round(layout.title_size * 1.4)
    scale = rows[0].scale
    notes = (f"PSNR on the Y channel of 8-bit images. image: the whole image, a {scale}-pixel border shaved; "
             "crop: the crop shown.",
             "Each crop is where the model's and bicubic's errors differ most; the red box marks it in the whole image.")
    for i, note in enumerate(notes):
        draw.text((x0, y + i * layout.line), note, fill=muted, font=font)
    y = layout.header
    for row in rows:
        top, left, ch, cw = row.box
        zoom = layout.zoom(ch, cw)
        captions = row_captions(row, zoom)
        thumb = _image(row.thumbnail)
        tiles = [thumb] + [_image(row.crops[k]).resize((cw * zoom, ch * zoom), Image.NEAREST)
                           for k in (*METHODS, "ground truth")]
        for column, (lines, tile) in enumerate(zip(captions, tiles)):
            x = x0 + column * (layout.tile + layout.gap)
            for i, line in enumerate(lines):
                draw.text((x, y + i * layout.line), line, fill=text if i == 0 else muted, font=font)
            tx, ty = x + (layout.tile - tile.width) // 2, y + layout.caption + (layout.tile - tile.height) // 2
            canvas.paste(tile, (tx, ty))
            if column == 0:  # the crop's place in the whole image
                f = thumb.width / row.image_size[1]
                draw.rectangle((tx + left * f, ty + top * f, tx + (left + cw) * f, ty + (top + ch) * f),
                               outline=(230, 20, 20), width=2)
        y += layout.row
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG", optimize=True))
    return width, height


def figure_title(model: nn.Module, scale: int) -> str:
    """The title line: the architecture name zoo.create gave the model (else its class name) and the scale."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture") or type(model).__name__
    return f"{name}, x{scale} super-resolution: bicubic | model | ground truth"


@torch.no_grad()
def comparison_figure(model: nn.Module, images: Sequence[Tensor], path: str | Path, scale: int | None = None,
                      names: Sequence[str] | None = None, crop: int = 64,
                      layout: Layout = Layout()) -> list[ComparisonRow]:
    """Degrade each HR ``image`` ((3, H, W) in [0, 1]) as the benchmarks do, upscale it with ``model`` and
    with bicubic, and write the comparison figure to ``path``; returns the rows (crops and PSNRs)."""
    scale = int(scale or getattr(model, "scale", 0))
    if scale < 2:
        raise ValueError("pass scale= or use a model with a .scale attribute")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        rows = []
        for name, hr in zip(names, images):
            hr = mod_crop(hr.float(), scale).to(device)
            lr = degrade(hr[None], scale)
            sr = model(lr.to(param.dtype) if param is not None else lr).float().clamp(0, 1)[0]
            bicubic = imresize(lr, scale=scale).clamp(0, 1)[0]
            rows.append(comparison_row(name, bicubic, sr, hr, scale, crop, layout.thumbnail))
    finally:
        model.train(was_training)
    draw_comparison(rows, path, figure_title(model, scale), layout)
    return rows
