"""Command line: ``python -m zoo list|info|check|upscale|quantize|export-onnx|generate|sample|train``.

    python -m zoo list "*eca*" --pretrained     # architectures, or arch.tag with weights
    python -m zoo info fcanet50                 # pretrained config, parameters, feature stages
    python -m zoo check "*resnet50*"            # build, run a procedural batch, print a table
    python -m zoo upscale --model rcan_tiny_x2 photo.png photo_x2.png --tile 256
    python -m zoo quantize rcan_tiny_x2 rcan_w4a8.safetensors --spec w4a8 --method awq --calib sr_samples
    python -m zoo quantize rcan_tiny_x2 rcan_auto.safetensors --auto --budget 0.18 --calib sr_samples --report q.html
    python -m zoo export-onnx seresnet50 seresnet50.onnx --size 224     # checked in onnxruntime
    python -m zoo generate --model moc_lm_tiny --weights lm.safetensors --prompt "def " --temperature 0
    python -m zoo sample --model var_d16 --weights var_d16.pth --vae vae_ch160v4096z32.pth --class 3 --n 16 out.png
    python -m zoo train fit -c configs/digits_seresnet.yaml          # train.py (zoo-train), installed
"""
from __future__ import annotations

import argparse
import json
from importlib.util import find_spec
import sys
import time
from pathlib import Path

import torch

from . import create, get_pretrained_cfg, list_models
from .data import DATAMODULES
from .data.images import IMAGE_SUFFIXES, WRITE_FORMATS, read_image, write_image
from .generation import check_sampling_args, generate_text, load_for_sampling, sample_grid
from .hub import save_pretrained
from .inference import upscale
from .onnx_export import default_example, export_onnx
from .quant import QuantSpec, analyze, quantize, summary
from .quant.auto import Budget
from .quant.io import save_quantized
from .quant.methods import METHODS


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


def _check_inputs(model: torch.nn.Module, batch: int, size: int) -> tuple:
    """A forward's arguments for ``check``: the model's own ``example_inputs`` where it takes something other
    than normalised images (token ids, labels, images in another range), else procedural images."""
    if hasattr(model, "example_inputs"):
        return model.example_inputs(batch, size, generator=torch.Generator().manual_seed(0))
    return (_procedural_images(batch, size),)


def _cmd_check(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print(f"{'model':<22} {'params (M)':>10} {'output':>16} {'forward (ms)':>12}")
    ran = 0
    for name in names:
        params = sum(p.numel() for p in create(name, device="meta").parameters())  # no memory, no init
        if params > args.max_params * 1e6:
            print(f"{name:<22} {params / 1e6:>10.2f}   skipped: above --max-params {args.max_params:g}M", flush=True)
            continue
        model = create(name).eval()
        inputs = _check_inputs(model, args.batch, args.size)
        with torch.inference_mode():
            model(*inputs)  # warm-up
            start = time.perf_counter()
            out = model(*inputs)
            ms = 1e3 * (time.perf_counter() - start)
        out = out[0] if isinstance(out, tuple) else out  # the VQVAE returns (images, usages, vq loss)
        if not torch.isfinite(out).all():
            print(f"{name}: non-finite output", file=sys.stderr)
            return 1
        print(f"{name:<22} {params / 1e6:>10.2f} {str(tuple(out.shape)):>16} {ms:>12.1f}", flush=True)
        ran += 1
    print(f"{ran} of {len(names)} models built and ran (batch {args.batch}; images {args.size}x{args.size} "
          "unless a model fixes its own size)")
    return 0


def _cmd_upscale(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        pairs = [(p, dst / f"{p.stem}_x{{scale}}.png") for p in sorted(src.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not pairs:
            raise FileNotFoundError(f"folder {str(src)!r} holds no images")
    else:
        pairs = [(src, dst)]
        if dst.suffix.lower() not in WRITE_FORMATS:  # before the model runs
            raise ValueError(f"--output {str(dst)!r}: name the file with one of {', '.join(WRITE_FORMATS)}")
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
    spec = QuantSpec.parse(args.spec)  # bad input fails before any work
    if args.method != "rtn" and not args.calib:
        raise ValueError(f"--method {args.method} needs calibration data: --calib <data module name or image folder>")
    if args.auto and args.method != "rtn":
        raise ValueError(f"--auto chooses a method per layer; drop --method {args.method}")
    if args.auto != (args.budget is not None):
        raise ValueError("--auto needs --budget (e.g. --budget 0.18: 18% of the float size), and --budget needs --auto")
    if args.verify and not args.auto:
        raise ValueError(f"--verify {args.verify} checks the layers of an --auto plan; add --auto --budget, or drop --verify")
    if args.verify < 0:
        raise ValueError(f"--verify takes a number of layers >= 0 (0: no verification pass); got {args.verify}")
    budget = Budget.parse(args.budget) if args.auto else None
    if (args.auto or args.report) and not args.calib:
        raise ValueError(f"{'--auto' if args.auto else '--report'} needs calibration data: --calib <data module name "
                         f"or image folder>")
    model = create(args.model, pretrained=args.weights or True).eval()
    calib = _calibration_batches(args.calib, args.calib_args, args.calib_size, args.calib_batches) if args.calib else None
    start = time.perf_counter()
    report = None
    if args.report or args.auto:  # one analysis serves the page and the plan
        report = analyze(model, calib, spec, every_precision=args.auto, progress=True)
        if args.report:
            path = Path(args.report)
            report.to_json(path) if path.suffix == ".json" else report.to_html(path)
            print(report.summary(top=10))
            print(f"wrote the report {path}")
    if args.auto:
        quantize(model, "auto", calib=calib, budget=budget, report=report, verify=args.verify, progress=True)
    else:
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


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    out = Path(args.output)
    model = create(args.model, pretrained=args.weights or args.pretrained).eval()  # bad names fail here
    start = time.perf_counter()
    export_onnx(model, out, default_example(model, args.size), dynamic_batch=not args.static_batch, opset=args.opset)
    checked = ("onnxruntime's outputs matched eager PyTorch's" if find_spec("onnxruntime")
               else "install onnxruntime to check it against eager")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB) in {time.perf_counter() - start:.1f} s; {checked}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    generate_text(args.model, args.prompt, weights=args.weights or True, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                  cache=None if args.cache == "none" else args.cache, tokenizer=args.tokenizer, device=args.device,
                  quant=args.quant)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1; got {args.n}")
    check_sampling_args(args.cfg, args.top_k, args.top_p)  # before the weights are read
    net = load_for_sampling(args.model, args.weights, args.vae, device=args.device)
    start = time.perf_counter()
    out = sample_grid(net, args.output, args.class_id, n=args.n, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
                      seed=args.seed, more_smooth=args.more_smooth, guidance_off_last=args.guidance_off_last,
                      local_attn_last=args.local_attn_last, kv_cache=None if args.cache == "dense" else args.cache)
    print(f"{args.n} samples of class {args.class_id} -> {out} in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every command with its arguments; choices come from the registries the API reads."""
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
    p = sub.add_parser("check", help="build models and run each on inputs of its kind (images, tokens, ...)")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--max-params", type=float, default=400.0, help="skip models above this many million parameters")
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
    p.add_argument("--method", default="rtn", choices=sorted(METHODS),  # the API's registry: a new method shows here
                   help="calibration method (every one but rtn needs --calib)")
    p.add_argument("--weights", default=None, help="float weights file/folder; default: the pretrained weights")
    p.add_argument("--calib", default=None, help="a data module name (sr_samples, digits, ...) or a folder of images")
    p.add_argument("--calib-args", default="{}", help="JSON arguments of the calibration data module")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--calib-size", type=int, default=64, help="crop size for a folder of images")
    p.add_argument("--report", default=None, help="write zoo.quant.analyze's report here (.html page, or .json)")
    p.add_argument("--auto", action="store_true", help="mixed precision: a precision and method per layer under "
                   "--budget, from the report (--spec gives the activations and the 4-bit format)")
    p.add_argument("--budget", default=None, help="with --auto: a fraction of the float size (0.18, 18%%), bytes "
                   "(2.5MB), average weight bits (4.5bits) or a floor of the output SQNR in dB (>=30)")
    p.add_argument("--verify", type=int, default=0, metavar="N", help="with --auto: try the other methods on the "
                   "plan's N costliest layers with every layer quantized at once, keeping what measures better")
    p.set_defaults(fn=_cmd_quantize)
    p = sub.add_parser("export-onnx", help="export a float model to ONNX, checked against eager in onnxruntime")
    p.add_argument("model", help="an architecture or arch.tag")
    p.add_argument("output", help="the .onnx file")
    p.add_argument("--pretrained", action="store_true", help="with the tag's pretrained weights (default: random)")
    p.add_argument("--weights", default=None, help="a weights file/folder to load first")
    p.add_argument("--size", type=int, default=None, help="the example's image size (or sequence length); "
                   "default: the model's input_size")
    p.add_argument("--static-batch", action="store_true", help="fix the batch dimension at 1 (default: dynamic)")
    p.add_argument("--opset", type=int, default=None, help="the ONNX opset (default: torch.onnx's)")
    p.set_defaults(fn=_cmd_export_onnx)
    p = sub.add_parser("generate", help="stream a language model's continuation of a prompt")
    p.add_argument("--model", required=True, help="a language model (moc_lm_tiny, dense_lm_tiny, ...)")
    p.add_argument("--weights", default=None, help="weights file/folder; default: the model's pretrained weights")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="makes sampling repeatable")
    p.add_argument("--cache", default="dense", choices=["dense", "kivi4", "kivi2", "none"], help="KV cache")
    p.add_argument("--tokenizer", default=None, help="byte, hf:<name>, tiktoken:<enc>; default: the model's")
    p.add_argument("--quant", default=None, help="quantize the float weights first: w8a8, w4a8, ... (RTN; a quantized "
                   "file passed as --weights needs no flag)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=_cmd_generate)
    p = sub.add_parser("sample", help="sample class-conditional images with a VAR model into a grid PNG")
    p.add_argument("output", help="the grid image (.png)")
    p.add_argument("--model", default="var_d16", help="var_d16, var_d20, var_d24, var_d30 or var")
    p.add_argument("--weights", default=None, help="VAR weights file/folder; default: the release's")
    p.add_argument("--vae", default=None, help="tokenizer weights file/folder; default: vae_ch160v4096z32.pth")
    p.add_argument("--class", dest="class_id", type=int, required=True, help="the class id to draw")
    p.add_argument("--n", type=int, default=16, help="images in the grid")
    p.add_argument("--cfg", type=float, default=4.0, help="guidance at the finest scale (rises from 0)")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax soft codes (visual only)")
    p.add_argument("--guidance-off-last", type=int, default=0, help="no guidance on the finest N scales (Switti)")
    p.add_argument("--local-attn-last", type=int, default=0, help="finest N scales attend only to themselves")
    p.add_argument("--cache", default="dense", choices=["dense", "kivi4", "kivi2", "none"], help="KV cache (none: recompute every scale)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=_cmd_sample)
    # everything after "train" is the training CLI's command line (its own --help, subcommands and errors)
    p = sub.add_parser("train", help="train a model: fit|validate|test|predict -c CONFIG (train.py, zoo-train)",
                       add_help=False)
    p.add_argument("train_args", nargs=argparse.REMAINDER)  # listed in --help; main() hands them on
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # argparse would take the training CLI's own options (--help, -c) for its own
        from .training import main as train_main  # Lightning's CLI only when training

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "tile", None) == 0:
        args.tile = None
    try:
        return args.fn(args)
    except (KeyError, TypeError, ValueError, OSError) as exc:  # the library's sentences; anything else is a bug
        message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        print("error: " + " ".join(line.strip() for line in message.splitlines()), file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
