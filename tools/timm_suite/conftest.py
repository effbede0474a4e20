"""Points timm's own ``tests/test_models.py`` at zoo's image classifiers (``python tools/timm_suite.py``).

timm's test module reads ``list_models`` / ``create_model`` / ``get_pretrained_cfg_value`` from ``timm``
when it is imported, to parametrize its tests; this conftest is imported first and puts the zoo's in
their place, so every assertion runs as timm wrote it, on zoo models built by ``zoo.create``. One
architecture per family keeps the run short (``ZOO_TIMM_SUITE=all``: every classifier).
"""
from __future__ import annotations

import fnmatch
import os

import pytest
import timm
import timm.models

import zoo

# the timm module whose API each zoo family follows
TIMM_MODULES = {"resnet": "resnet", "channelvit": "vision_transformer"}
# one image classifier per family (the default), or every one (ZOO_TIMM_SUITE=all)
ONE_PER_FAMILY = ("resnet18", "seresnet18", "eca_resnet18", "fcanet34", "vit_tiny", "channelvit_tiny")
ZOO_CLASSIFIERS = {name: TIMM_MODULES[family] for family in TIMM_MODULES
                   for name in zoo.list_models(module=family)
                   if os.environ.get("ZOO_TIMM_SUITE") == "all" or name in ONE_PER_FAMILY}


def _patterns(value) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _matches(name: str, patterns) -> bool:
    """timm's name filters, by name; a ChannelViT also answers to ``vit_*`` (timm's filters put the
    transformers, whose features are tokens, in their non-standard tests by that prefix)."""
    aliases = [name] + (["vit_" + name] if ZOO_CLASSIFIERS[name] == "vision_transformer" else [])
    return any(fnmatch.fnmatch(a, p) for a in aliases for p in _patterns(patterns))


def list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                include_tags=None):
    names = sorted(ZOO_CLASSIFIERS)
    if filter:
        names = [n for n in names if _matches(n, filter)]
    if module:
        names = [n for n in names if any(fnmatch.fnmatch(ZOO_CLASSIFIERS[n], p) for p in _patterns(module))]
    names = [n for n in names if not _matches(n, exclude_filters)]
    if pretrained:
        names = [n for n in names if zoo.list_pretrained(n + ".*")]
    return names


def list_pretrained(filter="", exclude_filters=""):
    return [n for n in zoo.list_pretrained(filter or "*") if n.split(".")[0] in ZOO_CLASSIFIERS
            and not any(fnmatch.fnmatch(n, p) for p in _patterns(exclude_filters))]


def create_model(model_name, pretrained=False, **kwargs):
    if model_name.split(".")[0] not in ZOO_CLASSIFIERS:  # a test written for one of timm's own models
        pytest.skip(f"{model_name} is timm's own model, not the zoo's")
    return zoo.create(model_name, pretrained=pretrained, **kwargs)


def get_pretrained_cfg_value(model_name, cfg_key):
    return zoo.get_pretrained_cfg(model_name).to_dict().get(cfg_key)


for target in (timm, timm.models):
    target.list_models, target.list_pretrained = list_models, list_pretrained
    target.create_model, target.get_pretrained_cfg_value = create_model, get_pretrained_cfg_value
