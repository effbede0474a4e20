"""Generation as an application: load a model, stream its text (``python -m zoo generate``) or write
a grid of its images (``python -m zoo sample``). The decoding itself lives with the models
(:mod:`zoo.models.decoding`, :mod:`zoo.models.var_sampling`); its public names are re-exported here.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from . import registry
from .data.images import image_grid, write_image
from .data.tokenizers import get_tokenizer
from .factory import create
from .models.decoding import (cached_logits, check_lengths, check_sampling, generate, sample_next, stream_tokens,
                              top_k_filter, top_p_filter)
from .models.var import VAR
from .models.var_sampling import check_sampling_args



class TextStreamer:
    """Prints decoded text as tokens arrive, holding back a trailing partial character (a byte-level
    tokenizer splits multi-byte UTF-8 characters over several tokens)."""

    def __init__(self, tokenizer: Any, out: TextIO | None = None, eos_id: int | None = None) -> None:
        self.tokenizer, self.out, self.eos_id = tokenizer, out or sys.stdout, eos_id
        self.tokens: list[int] = []
        self.printed = 0

    def __call__(self, token: torch.Tensor) -> None:
        value = int(token.reshape(-1)[0])
        if value == self.eos_id:
            return
        self.tokens.append(value)
        text = self.tokenizer.decode(self.tokens)
        stable = len(text) - 1 if text.endswith("\ufffd") else len(text)  # maybe an incomplete character
        if stable > self.printed:
            self.out.write(text[self.printed:stable])
            self.out.flush()
            self.printed = stable

    def finish(self) -> str:
        """Print what is held back; returns the whole generated text."""
        text = self.tokenizer.decode(self.tokens)
        self.out.write(text[self.printed:] + "\n")
        self.out.flush()
        self.printed = len(text)
        return text


def generate_text(model_name: str, prompt: str, weights: Any = True, max_new_tokens: int = 200,
                  temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                  seed: int | None = None, cache: str | None = "dense", tokenizer: str | None = None,
                  device: str = "cpu", out: TextIO | None = None, quant: str | None = None) -> str:
    """Load ``model_name`` with ``weights``, stream a continuation of ``prompt`` to ``out`` (stdout); return it.

    The tokenizer defaults to the model's pretrained cfg (``extra['tokenizer']``, byte-level for the
    tiny models). ``quant`` (``w8a8``, ``w4a8``, ...) quantizes the loaded float weights (RTN, dynamic
    activations) as ``zoo.create(..., quant=)`` does; a quantized file passed as ``weights`` loads as it is.
    The CLI ``python -m zoo generate`` calls this.
    """

    check_sampling(temperature, top_k, top_p)
    if not prompt:
        raise ValueError("the prompt is empty; pass --prompt with at least one character")
    model = create(model_name, pretrained=weights, quant=quant).eval().to(device)
    if not hasattr(model, "make_cache"):
        raise ValueError(f"{model_name} is not a language model; try moc_lm_tiny or dense_lm_tiny")
    name = tokenizer or model.pretrained_cfg.get("extra", {}).get("tokenizer", "byte")
    tok = get_tokenizer(name)
    ids = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=device)  # (1, T)
    if int(ids.max()) >= model.vocab_size:
        raise ValueError(f"tokenizer {name!r} gives id {int(ids.max())} but {model_name} has {model.vocab_size} "
                         f"tokens; pick the tokenizer the model was trained with (--tokenizer)")
    check_lengths(ids.shape[1], max_new_tokens, model.max_seq_len)  # before anything is printed
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    eos_id = getattr(tok, "eos_id", None)
    streamer = TextStreamer(tok, out, eos_id)
    (out or sys.stdout).write(prompt)
    model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                   generator=generator, cache=cache, stream=streamer)
    return streamer.finish()


def load_for_sampling(model: str, weights: str | None = None, vae: str | None = None, device: str = "cpu") -> VAR:
    """A VAR and its tokenizer for sampling: ``weights``/``vae`` are files or saved folders (None:
    the release's weights); a folder's config.json gives the architecture and arguments."""
    tokenizer_arg = registry.submodel_args(model).get("vae")
    if tokenizer_arg is None:  # before any weights are read
        raise ValueError(f"{model} is not a VAR model; try var_d16, var_d20, var_d24 or var_d30")
    # a tokenizer path is built by zoo.create (registry.register_submodel); without one, the release's
    tokenizer = vae or create(tokenizer_arg.default_arch, pretrained=True)
    return create(model, pretrained=weights or True, vae=tokenizer).eval().to(device)


def sample_grid(net: VAR, output: str | Path, class_id: int, n: int = 16, cfg: float = 4.0, top_k: int = 900,
                top_p: float = 0.95, seed: int | None = 0, more_smooth: bool = False, **options: Any) -> Path:
    """Sample ``n`` images of ``class_id`` and write them as one grid PNG (atomically)."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    check_sampling_args(cfg, top_k, top_p)
    if not 0 <= class_id < net.num_classes:
        raise ValueError(f"class {class_id} is out of range: the model has num_classes={net.num_classes} "
                         f"(ids 0..{net.num_classes - 1})")
    images = net.autoregressive_infer_cfg(n, class_id, g_seed=seed, cfg=cfg, top_k=top_k, top_p=top_p,
                                          more_smooth=more_smooth, **options)
    write_image(image_grid(images.float().cpu()), output)
    return Path(output)


__all__ = ["cached_logits", "top_k_filter", "top_p_filter", "sample_next", "stream_tokens", "generate", "TextStreamer",
           "generate_text", "check_sampling", "check_lengths", "load_for_sampling", "sample_grid"]
