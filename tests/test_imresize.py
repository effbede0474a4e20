"""MATLAB-compatible bicubic imresize: the Set5 LR files, a scalar-loop reference, sizes and errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data.imresize import imresize

SCALES = (2, 3, 4)
NAMES = ("baby", "bird", "butterfly", "head", "woman")


def _load_u8(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


@pytest.fixture(scope="module")
def set5_pairs(set5) -> dict[int, list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """(name, HR, LR) uint8 (3, H, W) per scale, read once for the module."""
    return {s: [(n, _load_u8(set5 / "HR" / f"x{s}" / f"{n}.png"), _load_u8(set5 / "LR" / f"x{s}" / f"{n}.png"))
                for n in NAMES] for s in SCALES}


# ----------------------------------------------------------------------------------------------------
# a deliberately plain reference: MATLAB's imresize.m written out pixel by pixel with Python floats


def _cubic_ref(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1
    if ax <= 2:
        return -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2
    return 0.0


def _resize_1d_ref(row: list[float], out_len: int, scale: float, antialias: bool, boundary: str) -> list[float]:
    n = len(row)
    shrink = antialias and scale < 1
    width = 4 / scale if shrink else 4
    out = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        acc, total = 0.0, 0.0
        for j in range(left, left + math.ceil(width) + 2):
            w = scale * _cubic_ref(scale * (u - j)) if shrink else _cubic_ref(u - j)
            if boundary == "replicate":
                k = min(max(j, 1), n)
            else:  # symmetric
                k = (j - 1) % (2 * n)
                k = k + 1 if k < n else 2 * n - k
            acc += w * row[k - 1]
            total += w
        out.append(acc / total)
    return out


def _imresize_ref(img: torch.Tensor, out_hw: tuple[int, int], scale_hw: tuple[float, float], antialias: bool = True,
                  boundary: str = "replicate", uint8: bool = False) -> torch.Tensor:
    """(C, H, W) -> (C, out_h, out_w) float64, rounding each pass like MATLAB when ``uint8``."""
    a = img.double().tolist()

    def rnd(v: float) -> float:
        return min(max(math.floor(v + 0.5) if v >= 0 else math.ceil(v - 0.5), 0), 255) if uint8 else v

    def along_h(c):
        cols = [_resize_1d_ref([c[i][j] for i in range(len(c))], out_hw[0], scale_hw[0], antialias, boundary)
                for j in range(len(c[0]))]
        return [[rnd(cols[j][i]) for j in range(len(cols))] for i in range(out_hw[0])]

    def along_w(c):
        return [[rnd(v) for v in _resize_1d_ref(r, out_hw[1], scale_hw[1], antialias, boundary)] for r in c]

    first, second = (along_h, along_w) if scale_hw[0] <= scale_hw[1] else (along_w, along_h)
    return torch.tensor([second(first(c)) for c in a], dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_set5_uint8_downscale_reproduces_matlab_lr_exactly(set5_pairs, scale):
    # the shipped LR files are MATLAB's imresize(hr, 1/s, 'bicubic') of the uint8 HR
    for name, hr, lr in set5_pairs[scale]:
        out = imresize(hr, 1 / scale)
        assert out.dtype == torch.uint8 and out.shape == lr.shape, name
        diff = (out.int() - lr.int()).abs().max().item()
        assert diff == 0, f"x{scale} {name}: max difference {diff} grey levels"


@pytest.mark.parametrize("scale", SCALES)
def test_set5_float_downscale_within_two_levels(set5_pairs, scale):
    # float arithmetic skips MATLAB's rounding between the two passes: mostly exact, a few pixels off
    for name, hr, lr in set5_pairs[scale][:3]:  # three images keep this fast
        out = imresize(hr.double(), 1 / scale).round().clamp(0, 255)
        diff = (out - lr.double()).abs()
        assert diff.max() <= 2, f"x{scale} {name}: max difference {diff.max()}"
        assert (diff > 0).double().mean() < 0.2, f"x{scale} {name}: too many pixels differ"
        assert (diff > 1).double().mean() < 1e-3, f"x{scale} {name}: too many pixels differ by 2"


def test_symmetric_boundary_misses_matlab_at_the_border(set5_pairs):
    # the evidence for replication: mirroring changes only the outermost LR pixels, by several levels
    _, hr, lr = set5_pairs[2][2]  # butterfly
    out = imresize(hr, 0.5, boundary="symmetric").int()
    diff = (out - lr.int()).abs()
    assert diff[:, 2:-2, 2:-2].max() == 0
    assert diff.max() >= 3


@pytest.mark.parametrize("boundary", ["replicate", "symmetric"])
@pytest.mark.parametrize("in_hw,kwargs", [
    ((5, 7), dict(scale=3)),            # upscaling
    ((6, 4), dict(scale=2.5)),          # non-integer upscaling
    ((13, 11), dict(scale=0.5)),        # ragged downscaling: ceil(6.5) x ceil(5.5)
    ((17, 9), dict(scale=1 / 3)),
    ((9, 12), dict(size=(4, 7))),       # per-dimension factors; height shrinks more: rows first
    ((10, 12), dict(size=(7, 3))),      # width shrinks more: MATLAB does width first
    ((8, 9), dict(size=(13, 5))),       # one up, one down
    ((1, 6), dict(size=(3, 2))),        # a single row
])
def test_matches_loop_reference(in_hw, kwargs, boundary):
    img = torch.rand(2, *in_hw, dtype=torch.float64) * 10 - 3  # any value range
    out = imresize(img, boundary=boundary, **kwargs)
    if "scale" in kwargs:
        s = kwargs["scale"]
        out_hw, scale_hw = (math.ceil(s * in_hw[0]), math.ceil(s * in_hw[1])), (s, s)
    else:
        out_hw = kwargs["size"]
        scale_hw = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    ref = _imresize_ref(img, out_hw, scale_hw, boundary=boundary)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kwargs", [dict(scale=0.5), dict(scale=3), dict(size=(5, 11)), dict(size=(17, 4))])
def test_uint8_rounds_each_pass_like_matlab(kwargs):
    img = (torch.rand(3, 9, 10) * 256).floor().to(torch.uint8)
    out = imresize(img, **kwargs)
    assert out.dtype == torch.uint8
    if "scale" in kwargs:
        s = kwargs["scale"]
        out_hw, scale_hw = (math.ceil(9 * s), math.ceil(10 * s)), (s, s)
    else:
        out_hw, scale_hw = kwargs["size"], (kwargs["size"][0] / 9, kwargs["size"][1] / 10)
    ref = _imresize_ref(img, out_hw, scale_hw, uint8=True)
    assert torch.equal(out.double(), ref)


def test_no_antialias_matches_reference():
    img = torch.rand(1, 12, 10, dtype=torch.float64)
    out = imresize(img, 0.5, antialias=False)
    ref = _imresize_ref(img, (6, 5), (0.5, 0.5), antialias=False)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    assert not torch.allclose(out, imresize(img, 0.5))


@pytest.mark.parametrize("kwargs", [dict(scale=0.3), dict(scale=1 / 3), dict(scale=4), dict(size=(5, 17))])
def test_constant_image_stays_constant(kwargs):
    img = torch.full((2, 3, 11, 14), 0.7, dtype=torch.float64)
    torch.testing.assert_close(imresize(img, **kwargs), torch.full_like(imresize(img, **kwargs), 0.7),
                               atol=1e-14, rtol=0)
    img8 = torch.full((3, 11, 14), 200, dtype=torch.uint8)
    assert (imresize(img8, **kwargs) == 200).all()


def test_shapes_dtypes_and_batching():
    img = torch.rand(2, 3, 510, 7)
    out = imresize(img, 1 / 3)
    assert out.shape == (2, 3, 170, 3) and out.dtype == torch.float32  # ceil(170.0), ceil(2.33)
    torch.testing.assert_close(imresize(img[1], 1 / 3), out[1])  # (C, H, W) the same as one batch item
    assert imresize(img.half(), 0.5).dtype == torch.float16
    same = torch.rand(3, 8, 8, dtype=torch.float64)
    assert torch.equal(imresize(same, 1), same)  # scale 1 is the identity


def test_upscaling_overshoots_and_is_not_clamped():
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    out = imresize(step, 4)
    assert out.min() < 0 and out.max() > 1  # cubic ringing survives: clamping is the caller's choice


@pytest.mark.parametrize("args,kwargs,match", [
    ((torch.rand(8, 8),), dict(scale=2), r"\(C, H, W\) or \(N, C, H, W\)"),
    ((torch.randint(0, 9, (1, 8, 8)),), dict(scale=2), "floating-point or uint8"),
    ((torch.rand(1, 8, 8),), dict(), "exactly one of"),
    ((torch.rand(1, 8, 8),), dict(scale=2, size=(4, 4)), "exactly one of"),
    ((torch.rand(1, 8, 8),), dict(scale=0), "positive"),
    ((torch.rand(1, 8, 8),), dict(size=(4, 0)), "two positive integers"),
    ((torch.rand(1, 8, 8),), dict(size=(4,)), "two positive integers"),
    ((torch.rand(1, 8, 8),), dict(scale=2, boundary="reflect"), "boundary must be one of"),
])
def test_bad_input(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        imresize(*args, **kwargs)
