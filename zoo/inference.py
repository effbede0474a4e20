"""Upscaling images of any size with bounded memory: overlapping tiles, stitched at their centres."""
from __future__ import annotations

import torch
from torch import nn


def _tile_plan(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Per axis: (tile start, keep start, keep end). Tiles overlap by at least ``overlap``; each output
    pixel comes from the tile in which it lies farthest from an edge (cuts at overlap midpoints)."""
    if length <= tile:
        return [(0, 0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    cuts = [0] + [(nxt + cur + tile) // 2 for cur, nxt in zip(starts, starts[1:])] + [length]
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


@torch.inference_mode()
def upscale(model: nn.Module, image: torch.Tensor, scale: int | None = None, tile: int | None = None,
            overlap: int = 32, progress: bool = False) -> torch.Tensor:
    """Run an SR ``model`` on ``image`` ((3, H, W) or (1, 3, H, W), floats in [0, 1] or uint8 0..255, which is
    divided by 255) -> upscaled float image, clamped to [0, 1].

    With ``tile`` (LR pixels), the image is processed in overlapping ``tile x tile`` pieces so memory
    stays bounded. For networks whose receptive field fits in ``overlap / 2`` pixels the result equals
    the untiled one; RCAN-style channel attention pools over each whole tile, so there tiles differ
    slightly from a full-image pass (larger tiles, smaller difference).
    """
    scale = int(scale or getattr(model, "scale", 0))
    if scale < 1:
        raise ValueError("pass scale= or use a model with a .scale attribute")
    squeeze = image.ndim == 3
    x = image[None] if squeeze else image
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"upscale takes one RGB image (3, H, W) or (1, 3, H, W); got {tuple(image.shape)}")
    if tile is not None and not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile); got overlap={overlap}, tile={tile}")
    if x.dtype == torch.uint8:  # an 8-bit image as read from a file: the models take [0, 1]
        x = x.float() / 255
    param = next(model.parameters(), None)
    if param is not None and x.is_floating_point():  # integer images other than uint8 reach the model's check
        x = x.to(device=param.device, dtype=param.dtype)
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        out = model(x)
    else:
        rows, cols = _tile_plan(h, tile, overlap), _tile_plan(w, tile, overlap)
        out = x.new_empty(1, 3, h * scale, w * scale)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(rows) * len(cols), desc=f"upscaling x{scale}", unit="tile")
        for y0, ky0, ky1 in rows:
            for x0, kx0, kx1 in cols:
                sr = model(x[..., y0:y0 + tile, x0:x0 + tile])  # (1, 3, tile * s, tile * s)
                out[..., ky0 * scale:ky1 * scale, kx0 * scale:kx1 * scale] = \
                    sr[..., (ky0 - y0) * scale:(ky1 - y0) * scale, (kx0 - x0) * scale:(kx1 - x0) * scale]
                if bar is not None:
                    bar.update()
        if bar is not None:
            bar.close()
    out = out.clamp(0, 1)
    return out[0] if squeeze else out
