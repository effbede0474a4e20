"""Reading checkpoints safely and fitting them to a model.

Files are read with safetensors, or with ``torch.load(weights_only=True)``: nothing is ever
unpickled beyond tensors and plain containers. Every key, shape and dtype is checked before any weight
is copied, and the error names what does not fit. Files the project writes carry a sha256 of their
contents (:data:`DIGEST_KEY`), checked on every read, so bytes damaged on disk or in transfer are refused.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import torch
from torch import nn

FilterFn = Callable[[dict, nn.Module], dict]

# containers that training scripts wrap weights in, in the order they are preferred
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module", "net", "params", "params_ema")
_PREFIXES = ("module.", "_orig_mod.")
# what torch's weights-only unpickler says when it meets a Python object it will not build
_UNSAFE_PICKLE = re.compile(r"GLOBAL \S+ (was not an allowed global|whose module \S+ is blocked)|allowlisted via")
_DOCS_HINT = "Check the documentation of torch.load"
# where a file written by the project records the sha256 of its contents: a key of the safetensors
# metadata, or a top-level key of a torch file's dict (digest of the dict without it)
DIGEST_KEY = "zoo_sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def content_digest(tree: object) -> str:
    """The sha256 (hex) of every leaf of a nested dict / list / tuple, in an order that survives a save
    and a load: mapping keys sorted, each leaf preceded by its key path; tensors and arrays by dtype,
    shape and raw bytes, other values by their repr.

    Lists and tuples digest alike (a format may turn one into the other), as do dict subclasses.
    """
    digest = hashlib.sha256()
    _digest_into(digest, tree, "")
    return digest.hexdigest()


def _digest_into(digest, node: object, path: str) -> None:
    """Feed ``node`` (reached by ``path``) into ``digest``, depth first."""
    if isinstance(node, Mapping):
        digest.update(f"{path}:map{len(node)};".encode())
        for key in sorted(node, key=lambda k: (type(k).__name__, repr(k))):
            _digest_into(digest, node[key], f"{path}/{key!r}")
    elif isinstance(node, (list, tuple)):
        digest.update(f"{path}:seq{len(node)};".encode())
        for i, item in enumerate(node):
            _digest_into(digest, item, f"{path}/{i}")
    elif isinstance(node, torch.Tensor):
        t = node.detach().cpu().resolve_conj().resolve_neg()
        t = t.to_dense() if t.layout != torch.strided else t
        digest.update(f"{path}:tensor:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    elif type(node).__module__ == "numpy" and hasattr(node, "tobytes"):  # an array's repr elides its middle
        digest.update(f"{path}:array:{node.dtype}:{getattr(node, 'shape', ())};".encode() + node.tobytes())
    elif isinstance(node, (set, frozenset)):  # set order follows the per-process string hash seed
        digest.update(f"{path}:set:{sorted(map(repr, node))};".encode())
    else:
        digest.update(f"{path}:{type(node).__name__}:{node!r};".encode())


def _verify_digest(path: Path, stored: object, tree: object) -> None:
    """Refuse a file whose recorded digest does not match its contents."""
    if not isinstance(stored, str) or stored != content_digest(tree):
        raise CheckpointError(f"{str(path)!r} is corrupt: its contents do not match the sha256 recorded when it was "
                              f"written; re-download it or save it again")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Tensors of a ``.safetensors`` file or a torch file, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist" +
                                (" (it is a folder; pass pretrained='local-dir:...' or the file inside)" if path.is_dir() else ""))
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path, head):
        return _read_safetensors(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch wraps every weights-only failure as "Weights only load failed", corrupt bytes included:
        # refuse only when the unpickler met a Python object it will not build
        if _UNSAFE_PICKLE.search(str(exc)):
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it pickles Python objects beyond tensors, whose unpickling could "
                f"run arbitrary code; if you trust the file, re-save only its tensors (torch.save(state_dict) or "
                f"safetensors) and load that") from None
        raise CheckpointError(f"cannot read {str(path)!r}: truncated or not a torch checkpoint "
                              f"({str(exc).rsplit('WeightsUnpickler error:', 1)[-1].split(_DOCS_HINT)[0].strip()})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r}: truncated or not a checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, Mapping) and DIGEST_KEY in loaded:
        stored = loaded[DIGEST_KEY]
        loaded = {k: v for k, v in loaded.items() if k != DIGEST_KEY}
        _verify_digest(path, stored, loaded)
    return loaded


def _read_safetensors(path: Path) -> dict:
    """A safetensors file's tensors, checked against the digest in its metadata when it has one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r} as safetensors (truncated or not a safetensors file): {exc}") from None
    if DIGEST_KEY in metadata:
        _verify_digest(path, metadata[DIGEST_KEY], tensors)
    return tensors


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    """A safetensors file starts with a little-endian header length followed by '{'."""
    if len(head) < 8:
        return False
    header_len = int.from_bytes(head, "little")
    if not 0 < header_len < path.stat().st_size:
        return False
    with open(path, "rb") as fh:
        fh.seek(8)
        return fh.read(1) == b"{"


def clean_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Unwrap training containers and strip DataParallel / torch.compile prefixes."""
    sd = checkpoint
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(f"no tensors found in checkpoint; top-level keys: {', '.join(map(str, list(sd)[:10]))}")
        sd = inner
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"a checkpoint must hold a dict of tensors, got {type(sd).__name__}")
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith(_PREFIXES):  # DataParallel and torch.compile wrappers, possibly nested
            key = key.split(".", 1)[1]
        out[key] = value
    # 'model.' is only a wrapper prefix when every key has it (a model may own a submodule called model)
    if out and all(k.startswith("model.") for k in out):
        out = {k[len("model."):]: v for k, v in out.items()}
    return out


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a first-conv weight (O, I, kh, kw) to ``in_chans`` inputs, as timm does.

    One channel sums the pretrained filters (a grey image is R = G = B); more channels repeat them
    and rescale by I / in_chans so activations keep their magnitude.
    """
    in_ckpt = weight.shape[1]
    if in_ckpt == in_chans:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_chans / in_ckpt)
        w = w.repeat(1, repeats, 1, 1)[:, :in_chans] * (in_ckpt / in_chans)
    return w.to(dtype)


def _dtype_kind(t: torch.Tensor) -> str:
    """float, complex, bool or int: within a kind ``load_state_dict`` casts harmlessly (fp16 -> fp32), across
    kinds it turns weights into garbage (an int64 tensor truncated, a bool mask read as 0 / 1 weights)."""
    if t.is_floating_point():
        return "float"
    if t.is_complex():
        return "complex"
    return "bool" if t.dtype == torch.bool else "int"


def dtype_mismatches(state_dict: Mapping, target: Mapping) -> list[str]:
    """``key: checkpoint <dtype> vs model <dtype>`` for each shared key whose dtype kinds differ.

    BatchNorm's ``num_batches_tracked`` counter is exempt: some converters store it as a float, and it does
    not change what the model computes in eval.
    """
    return [f"{k}: checkpoint {state_dict[k].dtype} vs model {target[k].dtype}" for k in state_dict
            if k in target and not k.endswith("num_batches_tracked")
            and _dtype_kind(state_dict[k]) != _dtype_kind(target[k])]


def fit_state_dict(state_dict: dict, model: nn.Module, *, first_conv: str | None, classifier: str | None,
                   source: str) -> tuple[dict, list[str]]:
    """Adapt the first conv and drop a mis-sized classifier, then check every key and shape.

    Returns the state dict to load and the model keys deliberately left at their init (the head).
    Raises :class:`CheckpointError` naming missing, unexpected, mis-shaped and mis-typed keys (an integer or
    bool tensor where the model holds a float one, or the reverse).
    """
    target = model.state_dict()
    sd = dict(state_dict)
    if first_conv and f"{first_conv}.weight" in sd and f"{first_conv}.weight" in target:
        key = f"{first_conv}.weight"
        want = target[key].shape[1]
        if sd[key].ndim == 4 and sd[key].shape[1] != want and sd[key].shape[0] == target[key].shape[0]:
            sd[key] = adapt_input_conv(sd[key], want)
    kept_init: list[str] = []
    if classifier:  # every tensor of the head (a quantized head has codes and scales, not weight and bias)
        head = [k for k in sd if k.startswith(f"{classifier}.")]
        if any(k not in target or sd[k].shape != target[k].shape for k in head):
            for k in head:
                sd.pop(k)
            kept_init = [k for k in target if k.startswith(f"{classifier}.")]
    missing = [k for k in target if k not in sd and k not in kept_init and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in sd if k in target and sd[k].shape != target[k].shape]
    wrong_dtype = dtype_mismatches(sd, target)
    if missing or unexpected or mismatched or wrong_dtype:
        lines = [f"checkpoint {source} does not fit {type(model).__name__}:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
                             ("dtype mismatches", wrong_dtype)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                lines.append(f"  {label} ({len(items)}): {shown}")
        lines.append("  Is it a checkpoint of this architecture and configuration?")
        raise CheckpointError("\n".join(lines))
    return sd, kept_init


def load_into(model: nn.Module, checkpoint: Mapping, *, source: str, filter_fn: FilterFn | None = None,
              first_conv: str | None = None, classifier: str | None = None) -> list[str]:
    """Clean, remap (``filter_fn``), adapt and check ``checkpoint``, then copy it into ``model``."""
    sd = clean_state_dict(checkpoint)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    sd, kept_init = fit_state_dict(sd, model, first_conv=first_conv, classifier=classifier, source=source)
    model.load_state_dict(sd, strict=False)
    return kept_init
