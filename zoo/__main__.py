"""Command line: ``python -m zoo list|info|check|upscale|quantize``.

    python -m zoo list "*eca*" --pretrained     # architectures, or arch.tag with weights
    python -m zoo info fcanet50                 # pretrained config, parameters, feature stages
    python -m zoo check "*resnet50*"            # build, run a procedural batch, print a table
    python -m zoo upscale --model rcan_tiny_x2 photo.png photo_x2.png --tile 256
    python -m zoo quantize rcan_tiny_x2 rcan_w4a8.safetensors --spec w4a8 --method awq --calib sr_samples
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from . import create, get_pretrained_cfg, list_models


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, pretrained=args.pretrained)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0 if names else 1


def _cmd_info(args: argparse.Namespace) -> int:
    model = create(args.name)
    info = {
        "pretrained_cfg": get_pretrained_cfg(args.name).to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_features": getattr(model, "num_features", None),
        "feature_info": list(getattr(model, "feature_info", [])),
    }
    print(json.dumps(info, indent=2, default=str))
    return 0


def _procedural_images(batch: int, size: int) -> torch.Tensor:
    """Smooth colour gradients with a few discs: deterministic, normalised like ImageNet inputs."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for i in range(batch):
        gen = torch.Generator().manual_seed(i)
        img = torch.stack([xx, yy, (xx + yy) / 2]) * torch.rand(3, 1, 1, generator=gen)
        for cx, cy, r in torch.rand(3, 3, generator=gen).tolist():
            img[:, ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.1 + 0.2 * r) ** 2] = torch.rand(3, 1, generator=gen)
        images.append(img)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (torch.stack(images) - mean[:, None, None]) / std[:, None, None]  # (B, 3, H, W)


def _cmd_check(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    x = _procedural_images(args.batch, args.size)
    print(f"{'model':<16} {'params (M)':>10} {'output':>14} {'forward (ms)':>12}")
    for name in names:
        model = create(name).eval()
        with torch.inference_mode():
            model(x)  # warm-up
            start = time.perf_counter()
            out = model(x)
            ms = 1e3 * (time.perf_counter() - start)
        if not torch.isfinite(out).all():
            print(f"{name}: non-finite output", file=sys.stderr)
            return 1
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<16} {params:>10.2f} {str(tuple(out.shape)):>14} {ms:>12.1f}", flush=True)
    print(f"{len(names)} models built and ran on {args.batch} procedural {args.size}x{args.size} images")
    return 0


def _cmd_upscale(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.images import IMAGE_SUFFIXES, read_image, write_image
    from .inference import upscale

    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        pairs = [(p, dst / f"{p.stem}_x{{scale}}.png") for p in sorted(src.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not pairs:
            raise FileNotFoundError(f"folder {str(src)!r} holds no images")
    else:
        pairs = [(src, dst)]
    if not getattr(create(args.model, device="meta"), "scale", None):  # meta: no memory, no weights read
        raise ValueError(f"{args.model} is not a super-resolution model; try rcan_tiny_x2, rcan_x2 or han_x2")
    model = create(args.model, pretrained=args.weights or True).eval().to(args.device)
    scale = model.scale
    for src_path, dst_path in pairs:
        image = read_image(src_path)
        start = time.perf_counter()
        out = upscale(model, image, tile=args.tile, overlap=args.overlap, progress=True)
        dst_path = Path(str(dst_path).format(scale=scale))
        write_image(out, dst_path)
        h, w = image.shape[-2:]
        print(f"{src_path} ({w}x{h}) -> {dst_path} ({w * scale}x{h * scale}) in {time.perf_counter() - start:.1f} s")
    return 0


def _calibration_batches(source: str, args_json: str, size: int, batches: int) -> list:
    """Calibration inputs from a data module (its training batches) or a folder of images (centre crops)."""
    from pathlib import Path

    from .data import DATAMODULES
    from .data.images import IMAGE_SUFFIXES, read_image

    if source in DATAMODULES:
        data = DATAMODULES[source](**json.loads(args_json or "{}"))
        data.setup("fit")
        loader = iter(data.train_dataloader())
        return [batch for _, batch in zip(range(batches), loader)]
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"--calib {source!r} is neither a data module ({', '.join(DATAMODULES)}) nor a "
                                f"folder of images")
    images = [read_image(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES][:batches * 4]
    if not images:
        raise FileNotFoundError(f"folder {str(folder)!r} holds no images")
    crops = []
    for img in images:  # (3, H, W) centre crops, so images of any size batch together
        h, w = img.shape[-2:]
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        crops.append(img[:, top:top + size, left:left + size])
    smallest = min(min(c.shape[-2:]) for c in crops)
    crops = [c[:, :smallest, :smallest] for c in crops]
    return [torch.stack(crops[i:i + 4]) for i in range(0, len(crops), 4)]


def _cmd_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .hub import save_pretrained
    from .quant import QuantSpec, quantize, summary
    from .quant.io import save_quantized

    spec = QuantSpec.parse(args.spec)  # bad input fails before any work
    if args.method != "rtn" and not args.calib:
        raise ValueError(f"--method {args.method} needs calibration data: --calib <data module name or image folder>")
    model = create(args.model, pretrained=args.weights or True).eval()
    calib = _calibration_batches(args.calib, args.calib_args, args.calib_size, args.calib_batches) if args.calib else None
    start = time.perf_counter()
    quantize(model, spec, calib=calib, method=args.method, progress=True)
    elapsed = time.perf_counter() - start
    out = Path(args.output)
    if out.suffix == ".safetensors":
        save_quantized(model, out)
        size = out.stat().st_size
    else:
        save_pretrained(model, out)
        size = (out / "model.safetensors").stat().st_size
    print(summary(model))
    print(f"quantized in {elapsed:.1f} s; wrote {out} ({size / 2**20:.2f} MiB); load it with "
          f"zoo.create({args.model.split('.')[0]!r}, pretrained={str(out)!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list architectures")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true", help="list arch.tag names that have weights")
    p.set_defaults(fn=_cmd_list)
    p = sub.add_parser("info", help="show a model's pretrained config and stages")
    p.add_argument("name")
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("check", help="build models and run them on procedural images")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.set_defaults(fn=_cmd_check)
    p = sub.add_parser("upscale", help="upscale an image (or a folder of images) with an SR model")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("output", help="the output file (or folder)")
    p.add_argument("--model", default="rcan_tiny_x2", help="an SR architecture or arch.tag (default: rcan_tiny_x2)")
    p.add_argument("--weights", default=None, help="weights file/folder; default: the model's pretrained weights")
    p.add_argument("--tile", type=int, default=256, help="tile size in input pixels (0: whole image at once)")
    p.add_argument("--overlap", type=int, default=32, help="overlap between tiles in input pixels")
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=_cmd_upscale)
    p = sub.add_parser("quantize", help="quantize a model's weights and save the integer model")
    p.add_argument("model", help="an architecture or arch.tag")
    p.add_argument("output", help="a .safetensors file, or a folder (save_pretrained layout)")
    p.add_argument("--spec", default="w8a8", help="w8a8, w4a8, w4a16, w8a16, fp8 (+ suffixes, e.g. w4a8-g128)")
    p.add_argument("--method", default="rtn", choices=["rtn", "smoothquant", "awq", "os+"])
    p.add_argument("--weights", default=None, help="float weights file/folder; default: the pretrained weights")
    p.add_argument("--calib", default=None, help="a data module name (sr_samples, digits, ...) or a folder of images")
    p.add_argument("--calib-args", default="{}", help="JSON arguments of the calibration data module")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--calib-size", type=int, default=64, help="crop size for a folder of images")
    p.set_defaults(fn=_cmd_quantize)
    args = parser.parse_args(argv)
    if getattr(args, "tile", None) == 0:
        args.tile = None
    try:
        return args.fn(args)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
