"""Building a registered model: one path shared by every family's entrypoints and by every kind of
weights, quantized files included."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo.blocks.validation import check_kwargs

from . import registry
from .checkpoint import FilterFn, load_into, read_checkpoint
from .features import FEATURE_CLASSES, FeatureGetterNet, FeatureListNet
from .hub import Source, Weights, check_num_classes, resolve_source
from .pretrained import PretrainedCfg
from .pruning.replay import apply_record
from .quant.io import load_quantized_into

BUILD_ONLY_ARGS = ("features_only", "out_indices", "feature_cls", "checkpoint_path", "pretrained_cfg",
                   "pretrained_cfg_overlay")


def resolve_tag(variant: str, pretrained: Any, cfg: PretrainedCfg | None) -> tuple[PretrainedCfg, Any]:
    """``pretrained='a1_in1k'`` (a tag of ``variant``) -> that tag's cfg and ``True``; a release file's bare
    name that is no file here (``'fca50.pth'``) -> that release's cfg and ``True``, so it is found in the
    cache, fetched or hinted at as ``pretrained=True`` would be; otherwise the given cfg (or the variant's
    default) and ``pretrained`` unchanged."""
    if isinstance(pretrained, str) and registry.has_tag(variant, pretrained):
        return registry.get_pretrained_cfg(f"{variant}.{pretrained}"), True
    release = release_name_cfg(variant, pretrained)
    if release is not None:
        return release, True
    return cfg or registry.get_pretrained_cfg(variant), pretrained


def release_name_cfg(variant: str, pretrained: Any) -> PretrainedCfg | None:
    """The cfg of the release file ``pretrained`` names when it is a bare file name (no folder) that does
    not exist here and that ``variant``'s family publishes; None otherwise. A cfg of another architecture
    of the family is given ``variant``'s name, since it describes the model being built."""
    if not isinstance(pretrained, (str, os.PathLike)):
        return None
    text = os.fspath(pretrained)
    if not text or Path(text).name != text or Path(text).exists():
        return None
    cfg = registry.release_file_cfg(variant, text)
    if cfg is None or cfg.architecture == variant:
        return cfg
    return cfg.replace(architecture=variant, tag="")


def build_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: Any = False,
    *,
    filter_fn: FilterFn | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    feature_cls: str | None = None,
    checkpoint_path: str | None = None,
    pretrained_cfg: PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Construct ``model_cls(**kwargs)`` for ``variant``, load weights, optionally wrap for features.

    ``pretrained`` is False, True (the cfg's weights), a tag of ``variant``, a path, ``local-dir:``,
    ``hf-hub:``, a URL, a state dict, or a :class:`zoo.hub.Source` ``zoo.create`` resolved. Float and
    quantized files load the same way: through the family's ``filter_fn`` (float files), timm's
    adaptation of ``num_classes`` (and of ``in_chans`` for float weights) and the strict key, shape
    and dtype check. ``checkpoint_path`` loads a float file after that. ``feature_cls`` (``'list'`` or
    ``'getter'``, default: the model class's ``feature_cls``) picks the ``features_only`` wrapper.
    """
    if feature_cls is not None and feature_cls not in FEATURE_CLASSES:
        raise ValueError(f"feature_cls must be one of {', '.join(map(repr, FEATURE_CLASSES))}; got {feature_cls!r}")
    check_kwargs(variant, kwargs, model_cls.__init__ if isinstance(model_cls, type) else model_cls)
    if "num_classes" in kwargs:
        check_num_classes(kwargs["num_classes"], f"the arguments of {variant}")
    cfg, pretrained = resolve_tag(variant, pretrained, pretrained_cfg)
    if pretrained_cfg_overlay:
        cfg = cfg.replace(**pretrained_cfg_overlay)
    source = pretrained if isinstance(pretrained, Source) else \
        resolve_source(pretrained, cfg) if pretrained is not False and pretrained is not None else None
    # read the weights before building: a bad file fails before any work
    weights = source.read() if source is not None else None

    # a pruned model's folder records each shrunk layer's width: replayed on the fresh model before the strict load
    pruned = (source.config or {}).get("pruned") if source is not None else None
    if source is not None and source.quant is not None:
        model = _load_quantized(model_cls, kwargs, weights, source.quant, cfg, pruned)
    else:
        model = model_cls(**kwargs)
        if pruned:
            apply_record(model, pruned)
        if weights is not None:
            load_into(model, weights.state_dict, source=weights.source, filter_fn=filter_fn,
                      first_conv=cfg.first_conv, classifier=cfg.classifier)
    cfg_dict = cfg.to_dict()
    if source is not None and not source.from_cfg:
        cfg_dict.update(file=source.label, hf_hub_id="", url="", source="user")
    model.pretrained_cfg = cfg_dict
    model.default_cfg = cfg_dict  # timm's older name
    if checkpoint_path:
        extra = Weights(read_checkpoint(checkpoint_path), checkpoint_path)
        load_into(model, extra.state_dict, source=extra.source, filter_fn=filter_fn,
                  first_conv=cfg.first_conv, classifier=cfg.classifier)
    if features_only:
        if not getattr(model, "feature_info", None):
            raise ValueError(f"{variant} has no feature stages, so features_only=True has nothing to return; call "
                             f"model.forward_features(x) for its last features")
        kind = feature_cls or getattr(model, "feature_cls", "list")
        if kind == "getter" and not hasattr(model, "prune_intermediate_layers"):
            raise ValueError(f"feature_cls='getter' needs forward_intermediates, which {variant} lacks; use 'list'")
        model = FeatureGetterNet(model, out_indices) if kind == "getter" else FeatureListNet(model, out_indices)
    return model


def _load_quantized(model_cls: Callable[..., nn.Module], kwargs: dict, weights: Weights, record: dict,
                    cfg: PretrainedCfg, pruned: dict | None = None) -> nn.Module:
    """The file's quantized model: built on the meta device where the model allows (no float weights are
    ever allocated), its layers swapped for the recorded quantized ones, then loaded through the same
    strict fit check as float weights. A classifier sized for other classes stays float at its init."""
    try:
        with torch.device("meta"):
            model = model_cls(**kwargs)
    except (RuntimeError, NotImplementedError):  # model code that computes on its tensors at build time
        model = model_cls(**kwargs)
    if pruned:  # pruned first: the quantized layers are swapped in at the pruned widths
        apply_record(model, pruned)
    return load_quantized_into(model, record, weights.state_dict, classifier=cfg.classifier, source=weights.source)
