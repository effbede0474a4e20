"""``zoo.create``: the one call that builds, loads and (later) quantizes any model of the zoo."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.blocks.validation import closest

from . import registry
from .builder import BUILD_ONLY_ARGS, release_name_cfg, resolve_tag
from .hub import Source, read_source_config, resolve_source
from .pretrained import PretrainedCfg
from .quant import QuantSpec, quantize


def create(name: str, pretrained: Any = False, quant: Any = None, **kwargs) -> nn.Module:
    """Build model ``name`` (``arch``, ``arch.tag``, ``hf-hub:org/repo`` or ``local-dir:path``).

    Args:
        name: a registered architecture, optionally with a pretrained tag (``seresnet50.a1_in1k``),
            or a hub repository / local folder holding ``config.json`` + ``model.safetensors``.
        pretrained: False; True (the tag's or the default tag's weights); another tag; a path to a
            ``.safetensors`` or torch file (read with ``weights_only=True``) or to a saved folder;
            ``local-dir:path``; ``hf-hub:org/repo[@revision]``; a URL; or a state dict.
        quant: None, or a quantization spec (``w8a8``, ``w4a8``, ``w4a16``, ``w8a16``, ``fp8``, a
            :class:`zoo.quant.QuantSpec`): after loading the weights, quantize with round-to-nearest
            weights and dynamic per-token activations (``zoo.quantize`` calibrates). A quantized file
            saved by ``zoo.quant.save_quantized`` / ``save_pretrained`` passed as ``pretrained``
            rebuilds its quantized model directly.
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``drop_rate``, ...), and
            ``features_only``/``out_indices``, ``checkpoint_path``, ``pretrained_cfg_overlay``.

    A folder or hub source's ``config.json`` supplies the model arguments it was saved with;
    explicit ``kwargs`` win. Unknown names and arguments raise with the closest valid ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"zoo.create takes a model name such as 'resnet50' (see zoo.list_models()); got a "
                        f"{type(name).__name__}")
    if quant is not None:
        QuantSpec.parse(quant)  # a bad spec fails before any work
    source_config = None
    if name.startswith(("hf-hub:", "local-dir:")):
        source_config = read_source_config(name, required=True)  # its fields are checked as it is read
        if not source_config or "architecture" not in source_config:
            raise FileNotFoundError(f"{name} has no config.json naming its architecture")
        _check_registered(source_config["architecture"], name)
        if pretrained is True:
            pretrained = name
        name = source_config["architecture"]
    arch, tag = registry.split_name(name)
    entrypoint = registry.model_entrypoint(name)
    # timm's pretrained_cfg=: a tag of the architecture, a dict, or a config object (ours or timm's)
    cfg = kwargs.pop("pretrained_cfg", None) or registry.get_pretrained_cfg(name)
    if isinstance(cfg, str):
        cfg = registry.get_pretrained_cfg(f"{arch}.{cfg}")
    elif not isinstance(cfg, (PretrainedCfg, dict)) and hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if isinstance(cfg, dict):
        cfg = PretrainedCfg.from_dict({"architecture": arch, **cfg})
    cfg, pretrained = resolve_tag(arch, pretrained, cfg)
    if kwargs.get("pretrained_cfg_overlay"):  # before the weights are looked for: it may point elsewhere
        cfg = cfg.replace(**kwargs.pop("pretrained_cfg_overlay"))
    # pretrained is resolved here, once: the file, its config.json and its quantization record
    source = resolve_source(pretrained, cfg) if pretrained is not False and pretrained is not None else None
    record = source.quant if source is not None else None
    if record is not None and quant is not None:
        stored = QuantSpec.from_json(json.dumps(record["spec"]))
        if QuantSpec.parse(quant) != stored:
            raise ValueError(f"{record['path']} holds a model quantized with {stored.name}, not "
                             f"{QuantSpec.parse(quant).name}; pass quant=None (or quant={stored.name!r}) to load it, "
                             f"or quantize the float weights with the spec you want")
    source_config = source_config or (source.config if source is not None else None)
    defaults: dict = {}
    if source_config and source_config.get("architecture") == arch:
        # a saved model brings its arguments and its preprocessing (mean, std, input size, ...)
        defaults = dict(source_config.get("model_args") or {})
        if "num_classes" in source_config:
            defaults.setdefault("num_classes", source_config["num_classes"])
        if source_config.get("pretrained_cfg"):
            own = (source_config.get("zoo") or {}).get("pretrained_cfg") or {}  # the zoo's fields beside timm's
            cfg = PretrainedCfg.from_dict({**source_config["pretrained_cfg"], **own, "architecture": arch, "tag": tag})
    model_args = {**defaults, **kwargs}
    head = record["layers"].get(cfg.classifier) if record is not None and cfg.classifier else None
    if head is not None and "num_classes" not in model_args:  # a bare quantized file records its head's size
        model_args["num_classes"] = head["out_channels"]
    built_args = _build_submodels(arch, model_args, source)
    model = entrypoint(pretrained=source if source is not None else False, pretrained_cfg=cfg,
                       **{**model_args, **built_args})
    model.model_args = {k: v for k, v in model_args.items() if k not in BUILD_ONLY_ARGS}
    if (pretrained is not False and pretrained is not None) or model_args.get("checkpoint_path"):
        warn_suspicious_weights(model, name)
    if quant is not None and record is None:
        quantize(model, quant)
    return model


def _build_submodels(arch: str, model_args: dict, source: Source | None) -> dict:
    """The model-valued arguments of ``arch`` (VAR's ``vae``) built here, so a model never creates
    another by name: a path or saved folder is loaded; with the release weights and no value, the
    sub-model's release weights come too. ``model_args`` keeps the paths, which is what gets recorded."""
    built = {}
    for arg, sub in registry.submodel_args(arch).items():
        value, device = model_args.get(arg), model_args.get("device")
        if isinstance(value, (str, os.PathLike)) and release_name_cfg(sub.default_arch, value) is not None:
            # a release file's bare name (vae='vae_ch160v4096z32.pth'): the cache, a download or the hint
            built[arg] = create(sub.default_arch, pretrained=os.fspath(value), device=device, **sub.kwargs)
        elif isinstance(value, (str, os.PathLike)):
            path = Path(value).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"{arch}'s {arg}={str(value)!r} does not exist; "
                                        + (sub.hint or f"give the file or exported folder of a {sub.default_arch}"))
            sub_arch = (read_source_config(str(path)) or {}).get("architecture", sub.default_arch)
            built[arg] = create(sub_arch, pretrained=str(path), device=device, **sub.kwargs)
        elif value is None and sub.with_release_weights and source is not None and source.from_cfg:
            built[arg] = create(sub.default_arch, pretrained=True, device=device, **sub.kwargs)
    return built


def _check_registered(arch: str, source: str) -> None:
    """A folder or hub repository must name an architecture this zoo builds."""
    if not registry.is_model(arch):
        near = closest(arch, registry.list_models())
        hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
        raise ValueError(f"the config.json of {source} names architecture {arch!r}, which is not a model of this "
                         f"zoo{hint}; fix its 'architecture' field (zoo.list_models() lists the names)")


def warn_suspicious_weights(model: nn.Module, name: str) -> None:
    """Warn about loaded weights that run but compute nonsense: NaN anywhere or an infinite parameter (a
    diverged run or a damaged file; buffers may hold -inf on purpose, as attention masks do), and all-zero
    quantization scales (every weight of that layer dequantizes to 0)."""
    non_finite, zero_scales = [], []
    params = {key for key, _ in model.named_parameters()}
    for key, t in model.state_dict().items():
        if t.is_meta or not t.is_floating_point() or not t.numel():
            continue
        if bool(t.isnan().any()) or (key in params and not bool(torch.isfinite(t).all())):
            non_finite.append(key)
        elif key.endswith("weight_scale") and not bool(t.any()):
            zero_scales.append(key)
    for keys, what in ((non_finite, "hold NaN or infinite values (a diverged run or a damaged file)"),
                       (zero_scales, "are all zero, so those layers' weights dequantize to 0")):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            warnings.warn(f"{name}: the loaded weights {shown} {what}; check or re-create the checkpoint",
                          stacklevel=3)
