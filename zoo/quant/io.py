"""Quantized models on disk: one safetensors file holding the packed weights, their scales, the float
layers, and (in the header metadata) the spec and each quantized layer's configuration, so
``zoo.create(arch, pretrained=<file>)`` rebuilds the quantized model without any float weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Collection, Optional

from torch import nn

from zoo.blocks.quant import QuantConv2d, QuantLinear
from zoo.blocks.quant_spec import QuantSpec

from ..checkpoint import DIGEST_KEY, CheckpointError, clean_state_dict, content_digest, fit_state_dict, read_checkpoint
from ..files import atomic_write
from .convert import LayerReport, _set_module
from .plan import QuantPlan

META_KEY = "zoo.quant"
# 2: each layer records its "weight_bits" (mixed precision: a 4-bit spec's keep_w8 layers hold int8).
# Version 1 files (every layer at the spec's bits) read the same way; the int4 codes of both are
# ``nibble - 8`` (version 2 writers use the -8 level, which version 1 readers also decode correctly).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def quant_metadata(model: nn.Module) -> dict:
    """The metadata describing a quantized model: spec, method and each quantized layer's shape."""
    spec = getattr(model, "quant_spec", None)
    if spec is None:
        raise ValueError("the model is not quantized; call zoo.quantize(model, spec) first")
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            layers[name] = {"type": type(module).__name__, "in_channels": module.in_channels,
                            "out_channels": module.out_channels, **type(module).layer_config(module)}
    record = {"version": FORMAT_VERSION, "spec": json.loads(spec.to_json()),
              "method": getattr(model, "quant_method", "rtn"), "layers": layers}
    plan = getattr(model, "quant_plan", None)
    if plan is not None:  # mixed precision: what each layer got and why (the layer records rebuild it)
        record["plan"] = plan.to_dict()
    return record


def save_quantized(model: nn.Module, path: str | os.PathLike, extra_metadata: Optional[dict] = None) -> Path:
    """Write a quantized model to one ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"quantized models are saved as .safetensors; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", META_KEY: json.dumps(quant_metadata(model))}
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata[DIGEST_KEY] = content_digest(tensors)  # last, so extra_metadata cannot replace it; checked on read
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def read_quant_metadata(path: str | os.PathLike) -> Optional[dict]:
    """The quantization record of a ``.safetensors`` file, None for a float file (or another format)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # not readable as safetensors: the normal loader reports it
        return None
    if META_KEY not in meta:
        return None
    data = _parse_metadata(meta[META_KEY], path)
    if data.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path} is a zoo quantized file of format version {data.get('version')}; this zoo reads "
                         f"versions {', '.join(map(str, READABLE_VERSIONS))}: quantize the float model again with "
                         f"this zoo (or load the file with the zoo that wrote it)")
    data["path"] = str(path)
    return data


def _parse_metadata(text: str, path: Path) -> dict:
    """The file's quantization record as a dict with a readable spec and a layer table, or a
    :class:`CheckpointError` naming the file: a damaged header otherwise fails as a bare KeyError or
    JSONDecodeError deep inside the rebuild."""
    fix = "quantize the float model again and save it with zoo.quant.save_quantized"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has malformed quantization metadata ({META_KEY!r} is not valid JSON); "
                              f"{fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} has malformed quantization metadata (not a JSON object); {fix}")
    missing = [k for k in ("spec", "layers") if not isinstance(data.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path} has malformed quantization metadata (no {' or '.join(map(repr, missing))} "
                              f"record); {fix}")
    try:
        QuantSpec.from_json(json.dumps(data["spec"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a malformed quantization spec ({type(exc).__name__}: {exc}); {fix}") from None
    return data


def _quant_layer(name: str, cfg: dict, spec: QuantSpec, device) -> nn.Module:
    """An empty quantized layer as one layer record of the file describes it."""
    act = {k: cfg[k] for k in ("act_multiplier", "act_shift", "act_scale")}
    bits = cfg.get("weight_bits", spec.weight_bits)  # absent in version 1 files
    if bits not in (spec.weight_bits, 8):
        raise ValueError(f"the quantized file's layer {name!r} has {bits}-bit weights under spec {spec.name!r}; "
                         f"the file is corrupt or from an incompatible writer")
    layer_spec = spec if bits == spec.weight_bits else spec.eight_bit()
    if cfg["type"] == "QuantConv2d":
        return QuantConv2d(cfg["in_channels"], cfg["out_channels"], tuple(cfg["kernel_size"]),
                           tuple(cfg["stride"]), tuple(cfg["padding"]), cfg["bias"], spec=layer_spec,
                           group_size=cfg["group_size"], device=device, **act)
    return QuantLinear(cfg["in_channels"], cfg["out_channels"], cfg["bias"], spec=layer_spec,
                       group_size=cfg["group_size"], device=device, **act)


def rebuild(model: nn.Module, metadata: dict, keep_float: Collection[str] = ()) -> nn.Module:
    """Swap ``model``'s float layers for empty quantized ones as ``metadata`` describes (weights follow);
    layers named in ``keep_float`` stay float (a classifier re-sized for other classes)."""
    spec = QuantSpec.from_json(json.dumps(metadata["spec"]))
    report = []
    for name, cfg in metadata["layers"].items():
        if name in keep_float:
            report.append(LayerReport(name, cfg["type"], "kept", "float, re-initialised: another shape than the file's"))
            continue
        try:
            float_layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the quantized file has layer {name!r}, which this model does not have; was it saved "
                             f"from another architecture or with other model arguments?") from None
        try:
            layer = _quant_layer(name, cfg, spec, next(float_layer.parameters()).device)
        except (KeyError, TypeError, AttributeError) as exc:  # a layer record with missing or mistyped fields

            raise CheckpointError(f"{metadata.get('path', 'the quantized file')} has a malformed record for layer "
                                  f"{name!r} ({type(exc).__name__}: {exc}); quantize the float model again and "
                                  f"save it with zoo.quant.save_quantized") from None
        _set_module(model, name, layer)
        report.append(LayerReport(name, cfg["type"], "quantized", "loaded"))
    model.quant_spec = spec
    model.quant_method = metadata.get("method", "rtn")
    model.quant_plan = QuantPlan.from_dict(metadata["plan"]) if "plan" in metadata else None
    model.quant_report = report
    return model


def load_quantized_into(model: nn.Module, record: dict, state_dict: Optional[dict] = None, classifier: Optional[str] = None,
                        source: Optional[str] = None) -> nn.Module:
    """Make ``model`` (float, possibly built on the meta device) the quantized model ``record`` describes
    and load ``state_dict`` (default: the recorded file) through the strict key, shape and dtype check
    that float weights pass. A ``classifier`` sized for other classes than the file's stays float at
    its init (``zoo.create(..., num_classes=...)`` on a quantized file)."""
    head = classifier if classifier and classifier in record["layers"] else None
    keep_float = [head] if head and record["layers"][head].get("out_channels") != \
        getattr(model.get_submodule(head), "out_features", None) else []
    rebuild(model, record, keep_float=keep_float)
    state = state_dict if state_dict is not None else read_checkpoint(record["path"])
    state, kept_init = fit_state_dict(clean_state_dict(state), model, first_conv=None, classifier=classifier,
                                      source=source or record.get("path", "the quantized file"))
    model.load_state_dict(state, strict=False, assign=True)
    _materialize(model, kept_init)
    return model


def _materialize(model: nn.Module, kept_init: list[str]) -> None:
    """Give the modules left at their init (a re-sized head) real tensors where the model was built on the
    meta device; anything else still on meta was missing from the file."""
    for name in {key.rpartition(".")[0] for key in kept_init}:
        module = model.get_submodule(name)
        if any(t.is_meta for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]):
            module.to_empty(device="cpu", recurse=False)
            module.reset_parameters()
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise CheckpointError(f"tensors {leftovers[:5]} were not in the file and were built on the meta device")
