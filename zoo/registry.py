"""The model registry: entrypoints by architecture name and pretrained configs by ``arch.tag``."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from blocks.validation import unknown_name_error

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


def list_models(pattern: str = "*", pretrained: bool = False, exclude: str | None = None) -> list[str]:
    """Architecture names matching ``pattern``; ``pretrained=True`` lists ``arch.tag`` with weights."""
    names = list_pretrained() if pretrained else sorted(_ENTRYPOINTS)
    names = [n for n in names if fnmatch.fnmatchcase(n, pattern) or
             (pretrained and fnmatch.fnmatchcase(split_name(n)[0], pattern))]
    if exclude:
        names = [n for n in names if not fnmatch.fnmatchcase(n, exclude)]
    return names


def list_pretrained(pattern: str = "*") -> list[str]:
    """``arch.tag`` names that have a weight source, matching ``pattern``."""
    names = [cfg.name for tags in _CFGS.values() for cfg in tags.values() if cfg.tag and cfg.has_weights]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
