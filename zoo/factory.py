"""``zoo.create``: the one call that builds, loads and (later) quantizes any model of the zoo."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from . import registry
from .builder import BUILD_ONLY_ARGS
from .hub import read_source_config
from .pretrained import PretrainedCfg

QUANT_SPECS = ("w8a8", "w4a8", "w4a16", "w8a16", "fp8")


def _check_quant(quant: Any) -> None:
    if quant is None:
        return
    if isinstance(quant, str) and quant not in QUANT_SPECS:
        raise ValueError(f"quant={quant!r} is not a quantization spec; use one of {', '.join(QUANT_SPECS)}")
    raise NotImplementedError(f"quant={quant!r}: quantization (zoo.quant) is not part of this release yet; "
                              f"create the model with quant=None")


def create(name: str, pretrained: Any = False, quant: Any = None, **kwargs) -> nn.Module:
    """Build model ``name`` (``arch``, ``arch.tag``, ``hf-hub:org/repo`` or ``local-dir:path``).

    Args:
        name: a registered architecture, optionally with a pretrained tag (``seresnet50.a1_in1k``),
            or a hub repository / local folder holding ``config.json`` + ``model.safetensors``.
        pretrained: False; True (the tag's or the default tag's weights); another tag; a path to a
            ``.safetensors`` or torch file (read with ``weights_only=True``) or to a saved folder;
            ``local-dir:path``; ``hf-hub:org/repo[@revision]``; a URL; or a state dict.
        quant: None, or a quantization spec (``w8a8``, ``w4a8``, ``w4a16``, ``w8a16``, ``fp8``).
        **kwargs: model arguments (``num_classes``, ``in_chans``, ``drop_rate``, ...), and
            ``features_only``/``out_indices``, ``checkpoint_path``, ``pretrained_cfg_overlay``.

    A folder or hub source's ``config.json`` supplies the model arguments it was saved with;
    explicit ``kwargs`` win. Unknown names and arguments raise with the closest valid ones.
    """
    _check_quant(quant)
    source_config = None
    if name.startswith(("hf-hub:", "local-dir:")):
        source_config = read_source_config(name, required=True)
        if not source_config or "architecture" not in source_config:
            raise FileNotFoundError(f"{name} has no config.json naming its architecture")
        if pretrained is True:
            pretrained = name
        name = source_config["architecture"]
    arch, tag = registry.split_name(name)
    entrypoint = registry.model_entrypoint(name)
    if source_config is None and isinstance(pretrained, (str, os.PathLike)) and not registry.has_tag(arch, str(pretrained)):
        source_config = read_source_config(pretrained)
    cfg = kwargs.pop("pretrained_cfg", None) or registry.get_pretrained_cfg(name)  # timm accepts pretrained_cfg=
    if isinstance(cfg, dict):
        cfg = PretrainedCfg.from_dict({"architecture": arch, **cfg})
    defaults: dict = {}
    if source_config and source_config.get("architecture") == arch:
        # a saved model brings its arguments and its preprocessing (mean, std, input size, ...)
        defaults = dict(source_config.get("model_args") or {})
        if "num_classes" in source_config:
            defaults.setdefault("num_classes", source_config["num_classes"])
        if source_config.get("pretrained_cfg"):
            cfg = PretrainedCfg.from_dict({**source_config["pretrained_cfg"], "architecture": arch, "tag": tag})
    model_args = {**defaults, **kwargs}
    model = entrypoint(pretrained=pretrained, pretrained_cfg=cfg, **model_args)
    model.model_args = {k: v for k, v in model_args.items() if k not in BUILD_ONLY_ARGS}
    return model
