"""The model registry: entrypoints by architecture name and pretrained configs by ``arch.tag``."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

from zoo.blocks.validation import unknown_name_error

from .pretrained import PretrainedCfg

F = TypeVar("F", bound=Callable)

_ENTRYPOINTS: dict[str, Callable] = {}
_FAMILY: dict[str, str] = {}
# architecture -> tag -> cfg; the first tag registered for an architecture is its default
_CFGS: dict[str, dict[str, PretrainedCfg]] = {}
_SUBMODELS: dict[str, dict[str, "SubmodelArg"]] = {}


@dataclass(frozen=True)
class SubmodelArg:
    """A model argument that is itself a zoo model (VAR's ``vae`` tokenizer). ``zoo.create`` builds it
    and hands it in built: a path or saved folder is loaded as ``default_arch`` unless its config.json
    names another architecture, with ``kwargs``; with the entrypoint's own release weights and no value
    given, ``default_arch``'s release weights are loaded."""

    default_arch: str
    kwargs: dict = field(default_factory=dict)
    with_release_weights: bool = False
    hint: str = ""  # where such a model comes from, for the error when a path does not exist


def register_submodel(arg: str, default_arch: str, with_release_weights: bool = False, hint: str = "",
                      **kwargs) -> Callable[[F], F]:
    """Decorator (under ``@register_model``): ``arg`` of this entrypoint names a model; see :class:`SubmodelArg`."""
    def decorate(fn: F) -> F:
        _SUBMODELS.setdefault(fn.__name__, {})[arg] = SubmodelArg(default_arch, dict(kwargs), with_release_weights, hint)
        return fn
    return decorate


def submodel_args(name: str) -> dict[str, SubmodelArg]:
    """The arguments of architecture ``name`` that ``zoo.create`` builds as models."""
    return dict(_SUBMODELS.get(split_name(name)[0], {}))


def register_model(fn: F) -> F:
    """Decorator: register ``fn(pretrained=False, **kwargs) -> nn.Module`` under its own name."""
    name = fn.__name__
    if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice ({fn.__module__} and {_FAMILY[name]})")
    _ENTRYPOINTS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def register_pretrained_cfgs(cfgs: dict[str, PretrainedCfg]) -> dict[str, PretrainedCfg]:
    """Register configs keyed ``'arch.tag'`` (or ``'arch'`` for an untagged, weightless default)."""
    out = {}
    for key, cfg in cfgs.items():
        arch, _, tag = key.partition(".")
        cfg = cfg.replace(architecture=arch, tag=tag)
        _CFGS.setdefault(arch, {})[tag] = cfg
        out[key] = cfg
    return out


def pretrained_cfgs(arch: str) -> list[PretrainedCfg]:
    """Every registered config of ``arch``, its default (weights first) leading."""
    tags = _CFGS.get(arch, {})
    first = get_pretrained_cfg(arch) if arch in _ENTRYPOINTS else None
    return ([first] if first is not None and first.tag in tags else []) + [c for c in tags.values() if c is not first]


def release_file_cfg(arch: str, filename: str) -> PretrainedCfg | None:
    """The config whose release file is named ``filename``: one of ``arch``'s own, else one of its
    family's (``rcan`` takes ``RCAN_BIX2.pt`` of ``rcan_x2``); None when no release has that name."""
    family = _FAMILY.get(arch)
    own = list(_CFGS.get(arch, {}).values())
    kin = [c for a, tags in _CFGS.items() if a != arch and family and _FAMILY.get(a) == family for c in tags.values()]
    return next((c for c in own + kin if c.release_file == filename), None)


def split_name(name: str) -> tuple[str, str]:
    """``'seresnet50.a1_in1k'`` -> ``('seresnet50', 'a1_in1k')``; no tag gives ``''``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def is_model(name: str) -> bool:
    return split_name(name)[0] in _ENTRYPOINTS


def model_entrypoint(name: str) -> Callable:
    arch = split_name(name)[0]
    if arch not in _ENTRYPOINTS:
        raise unknown_name_error("model", name, list(_ENTRYPOINTS) + list_pretrained())
    return _ENTRYPOINTS[arch]


def has_tag(arch: str, tag: str) -> bool:
    return bool(tag) and tag in _CFGS.get(arch, {})


def model_family(name: str) -> str:
    return _FAMILY[split_name(name)[0]]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The cfg of ``arch.tag``; a bare ``arch`` gives its default tag (or a weightless cfg)."""
    arch, tag = split_name(name)
    model_entrypoint(arch)  # raises for unknown architectures
    tags = _CFGS.get(arch, {})
    if not tag:
        with_weights = [c for c in tags.values() if c.has_weights]
        return with_weights[0] if with_weights else tags.get("", PretrainedCfg(architecture=arch))
    if tag not in tags:
        known = [t for t in tags if t]
        raise KeyError(f"{arch!r} has no pretrained tag {tag!r}; "
                       + (f"tags: {', '.join(known)}" if known else "it has no pretrained weights"))
    return tags[tag]


def _patterns(given: str | Sequence[str]) -> list[str]:
    """One wildcard pattern or several, empty ones dropped (timm takes either)."""
    return [p for p in ([given] if isinstance(given, str) else given) if p]


def _matches(name: str, patterns: list[str]) -> bool:
    """``name`` (or its architecture, for ``arch.tag``) matches one of the wildcard ``patterns``."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(split_name(name)[0], p) for p in patterns)


def list_models(filter: str | Sequence[str] = "", module: str = "", pretrained: bool = False,
                exclude_filters: str | Sequence[str] = "", name_matches_cfg: bool = False,
                include_tags: bool | None = None) -> list[str]:
    """Model names, as timm's ``list_models`` takes its arguments.

    Args:
        filter: wildcard pattern(s) to keep (``"*eca*"``; a list keeps the union); empty keeps all.
        module: only the models of one family module (``"resnet"``, ``"rcan"``, ...).
        pretrained: only models with pretrained weights.
        exclude_filters: wildcard pattern(s) to drop.
        name_matches_cfg: only architectures that have a registered pretrained config.
        include_tags: list ``arch.tag`` names (default: when ``pretrained``).
    """
    include_tags = pretrained if include_tags is None else include_tags
    names = [n for n in sorted(_ENTRYPOINTS) if not module or _FAMILY[n] == module]
    if name_matches_cfg:
        names = [n for n in names if n in _CFGS]
    if include_tags:
        names = [cfg.name for n in names for cfg in _CFGS.get(n, {}).values()
                 if cfg.tag and (cfg.has_weights or not pretrained)]
    elif pretrained:
        names = [n for n in names if any(c.has_weights for c in _CFGS.get(n, {}).values())]
    keep, drop = _patterns(filter), _patterns(exclude_filters)
    return sorted(n for n in names if (not keep or _matches(n, keep)) and not _matches(n, drop))


def list_pretrained(filter: str | Sequence[str] = "", exclude_filters: str | Sequence[str] = "") -> list[str]:
    """``arch.tag`` names that have a weight source (timm's ``list_pretrained``)."""
    return list_models(filter, pretrained=True, exclude_filters=exclude_filters)
