"""The zoo's architectures that timm lacks (FcaNet, the ECA-Net release layout, RCAN, HAN, ChannelViT,
the MoC LM, VAR, ...), registered with timm's model registry when ``zoo`` is imported, so code built
on timm (``timm.create_model``, ``timm.list_models``, a timm training script) builds them through
``zoo.create``: the zoo's loading, checks and configs, with timm's calling convention."""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from timm.models import DefaultCfg, register_model
from timm.models import PretrainedCfg as TimmCfg
from timm.models import list_models as timm_models

from . import registry
from .factory import create

# timm's register_model reads the registering module's ``default_cfgs``: the zoo's configs, in timm's form
default_cfgs: dict[str, DefaultCfg] = {}


def _tag_of(pretrained_cfg: Any) -> str:
    """The tag in whatever form timm passes the cfg: a tag string, a dict or timm's PretrainedCfg."""
    if isinstance(pretrained_cfg, str):
        return pretrained_cfg
    if isinstance(pretrained_cfg, dict):
        return pretrained_cfg.get("tag") or ""
    return getattr(pretrained_cfg, "tag", None) or ""


def _saved_source(pretrained_cfg: Any) -> str:
    """The folder or hub repository timm read a ``local-dir:`` / ``hf-hub:`` name's config.json from, as the
    zoo's ``pretrained=`` spec; '' for a registered cfg."""
    def field(key: str) -> str:
        value = pretrained_cfg.get(key) if isinstance(pretrained_cfg, dict) else getattr(pretrained_cfg, key, None)
        return value or ""

    if field("source") == "local-dir" and field("file"):
        return "local-dir:" + field("file")
    if field("source") == "hf-hub" and field("hf_hub_id"):
        return "hf-hub:" + field("hf_hub_id")
    return ""


def _entrypoint(arch: str) -> Callable:
    def build(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: dict | None = None,
              cache_dir: Any = None, pretrained_model_args: dict | None = None, **kwargs: Any):
        # timm has already merged a saved folder's model_args into kwargs; pretrained_model_args repeats them
        saved = _saved_source(pretrained_cfg)
        if saved:  # timm.create_model("local-dir:..." / "hf-hub:..."): the saved weights, not the release's
            return create(arch, pretrained=saved if pretrained else False,
                          pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
        tag = _tag_of(pretrained_cfg)
        return create(f"{arch}.{tag}" if tag else arch, pretrained=pretrained,
                      pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)

    build.__name__ = build.__qualname__ = arch
    build.__module__ = __name__
    build.__doc__ = f"``zoo.create({arch!r}, ...)`` for timm's registry."
    return build


def _timm_cfg(cfg) -> TimmCfg:
    timm_cfg, _ = cfg.split_for_timm()
    sources = {k: v for k, v in (("url", cfg.url), ("hf_hub_id", cfg.hf_hub_id), ("file", cfg.file)) if v}
    return TimmCfg(**{**timm_cfg, **sources, "architecture": cfg.architecture, "tag": cfg.tag or None})


def register_with_timm() -> list[str]:
    """Register every zoo architecture timm does not have; returns their names."""
    known = set(timm_models())
    added = []
    for arch in registry.list_models():
        if arch in known:
            continue
        cfgs = {cfg.tag: _timm_cfg(cfg) for cfg in registry.pretrained_cfgs(arch)}
        if cfgs:
            default_cfgs[arch] = DefaultCfg(tags=deque(cfgs), cfgs=cfgs)
        register_model(_entrypoint(arch))
        added.append(arch)
    return added
