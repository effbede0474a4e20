"""The quantized MoC language model: validation perplexity and size per spec and calibration method.

    nice -n 10 python benchmarks/moc_lm_quant.py                       # train 200 steps, then measure
    python benchmarks/moc_lm_quant.py --weights runs/lm/model            # a trained model (folder or file)

The model (``moc_lm_tiny`` by default) is trained briefly on the stdlib corpus as in
benchmarks/kv_cache.py unless ``--weights`` gives one. Each row quantizes a copy of it with
``zoo.quantize`` (first and last layers kept in float, the presets' default; calibrated methods see
``--calib-batches`` training batches) and reports the validation loss and perplexity on the same
sequences, the perplexity change against fp32, the stored size (``zoo.save_quantized``) against the fp32
file, and how many greedy tokens match fp32's over 64 steps from a few code prompts (decoding one
sequence: the quantized MoC FFN runs its integer decode, or on a CPU whose integer layers run on
oneDNN's int8 kernels, those layers densely).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import machine, print_table  # noqa: E402
from tiny_lm import add_model_args, describe, model_and_data, nll  # noqa: E402

import zoo  # noqa: E402

ROWS = [("fp32", None, None), ("w8a8", "w8a8", "rtn"), ("w8a8 SmoothQuant", "w8a8", "smoothquant"),
        ("w4a16", "w4a16", "rtn"), ("w4a8", "w4a8", "rtn"), ("w4a8 AWQ", "w4a8", "awq"),
        ("w4a8 SmoothQuant", "w4a8", "smoothquant")]
PROMPTS = ["def ", "import ", "class Parser:\n    def ", "    return "]


def stored_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's safetensors file (quantized: packed codes, scales and the float layers)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        if getattr(model, "quant_spec", None) is not None:
            zoo.save_quantized(model, path)
        else:
            zoo.save_pretrained(model, tmp)
            path = next(Path(tmp).glob("*.safetensors"))
        return path.stat().st_size


def greedy(model: torch.nn.Module, prompt: str, steps: int) -> list[int]:
    ids = torch.tensor([list(prompt.encode())])
    return model.generate(ids, steps, temperature=0.0)[0, ids.shape[1]:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--greedy-steps", type=int, default=64)
    args = parser.parse_args()
    model, data, x, y = model_and_data(args)
    loader = iter(data.train_dataloader())
    calib = [next(loader)[0] for _ in range(args.calib_batches)]  # (8, T) token ids each
    rows, reference = [], {}
    for name, spec, method in ROWS:
        if spec is None:
            quantized = model
        else:
            quantized = zoo.quantize(copy.deepcopy(model), spec, calib=calib if method != "rtn" else None,
                                     method=method)
        with torch.no_grad():
            loss = nll(quantized(x), y)
            tokens = [greedy(quantized, p, args.greedy_steps) for p in PROMPTS]
        size = stored_bytes(quantized)
        if spec is None:
            reference = {"loss": loss, "size": size, "tokens": tokens}
        agree = sum(a == b for got, want in zip(tokens, reference["tokens"]) for a, b in zip(got, want))
        total = sum(len(t) for t in reference["tokens"])
        rows.append([name, f"{loss:.4f}", f"{math.exp(loss):.4f}", f"{100 * (math.exp(loss - reference['loss']) - 1):+.2f}%",
                     f"{size / 2 ** 20:.2f}", f"{size / reference['size']:.3f}", f"{agree}/{total}"])
        print(f"{name}: val loss {loss:.4f}", flush=True)
    print()
    print(f"{describe(args, x)}; calibration: {args.calib_batches} batches of 8")
    print_table(["model", "val loss", "val ppl", "ppl vs fp32", "file MiB", "x fp32", "greedy tokens = fp32"], rows)
    print(machine())


if __name__ == "__main__":
    main()
