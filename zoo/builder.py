"""Building a registered model: one path shared by every family's entrypoints."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from blocks.validation import check_kwargs

from . import registry
from .checkpoint import FilterFn, load_into, read_checkpoint
from .features import FeatureListNet
from .hub import Weights, check_num_classes, load_weights
from .pretrained import PretrainedCfg

BUILD_ONLY_ARGS = ("features_only", "out_indices", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay")


def build_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: Any = False,
    *,
    filter_fn: FilterFn | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    checkpoint_path: str | None = None,
    pretrained_cfg: PretrainedCfg | None = None,
    pretrained_cfg_overlay: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Construct ``model_cls(**kwargs)`` for ``variant``, load weights, optionally wrap for features.

    ``pretrained`` is False, True (the cfg's weights), a tag of ``variant``, a path, ``local-dir:``,
    ``hf-hub:``, a URL, or a state dict. ``checkpoint_path`` loads a file after that. Both go
    through the family's ``filter_fn`` and timm's adaptation of ``num_classes`` and ``in_chans``.
    """
    check_kwargs(variant, kwargs, model_cls.__init__ if isinstance(model_cls, type) else model_cls)
    if "num_classes" in kwargs:
        check_num_classes(kwargs["num_classes"], f"the arguments of {variant}")
    cfg = pretrained_cfg or registry.get_pretrained_cfg(variant)
    if isinstance(pretrained, str) and registry.has_tag(variant, pretrained):  # pretrained='a1_in1k'
        cfg, pretrained = registry.get_pretrained_cfg(f"{variant}.{pretrained}"), True
    if pretrained_cfg_overlay:
        cfg = cfg.replace(**pretrained_cfg_overlay)
    # read the weights before building: a bad file fails before any work
    weights = load_weights(pretrained, cfg) if pretrained is not False and pretrained is not None else None

    model = model_cls(**kwargs)
    cfg_dict = cfg.to_dict()
    if weights is not None and pretrained is not True:
        cfg_dict.update(file=weights.source, hf_hub_id="", url="", source="user")
    model.pretrained_cfg = cfg_dict
    model.default_cfg = cfg_dict  # timm's older name
    for w in filter(None, (weights, Weights(read_checkpoint(checkpoint_path), checkpoint_path) if checkpoint_path else None)):
        load_into(model, w.state_dict, source=w.source, filter_fn=filter_fn,
                  first_conv=cfg.first_conv, classifier=cfg.classifier)
    if features_only:
        model = FeatureListNet(model, out_indices)
    return model
