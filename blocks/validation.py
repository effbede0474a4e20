"""Errors that name the problem and the fix: unknown names, keyword arguments and model inputs."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable, TypeVar

import torch
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

F = TypeVar("F", bound=Callable)


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The registered names most like ``name``, best first."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:  # fall back to substring matches so 'resnet' still suggests 'seresnet50'
        found = [c for c in choices if name.lower() in c.lower()][:n]
    return found


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> KeyError:
    near = closest(name, choices)
    hint = f"; did you mean {', '.join(repr(c) for c in near)}?" if near else ""
    return KeyError(f"unknown {kind} {name!r}{hint}")


def supplied_by_caller(*names: str) -> Callable[[F], F]:
    """Decorator: whoever calls the function passes ``names`` itself (a task's ``model``, ``optimizer``
    and ``scheduler``, which train.py builds from their own config sections), so the user cannot set them:
    :func:`check_kwargs` refuses them and leaves them out of its list of valid names."""
    def mark(fn: F) -> F:
        fn.__supplied_by_caller__ = tuple(names)  # read by accepted_kwargs
        return fn
    return mark


def caller_supplied(*fns: Callable) -> set[str]:
    """The parameters of ``fns`` that their callers pass themselves (see :func:`supplied_by_caller`)."""
    return {name for fn in fns for name in getattr(fn, "__supplied_by_caller__", ())}


def accepted_kwargs(*fns: Callable) -> tuple[set[str], bool]:
    """Names a user may pass to the callables, and whether any of them swallows ``**kwargs``. Left out:
    ``self`` / ``cls`` of a method taken from its class (``cls.__init__``), and what the caller supplies."""
    names: set[str] = set()
    open_ended = False
    for fn in fns:
        params = list(inspect.signature(fn).parameters.values())
        if params and params[0].name in ("self", "cls") and params[0].kind is not params[0].KEYWORD_ONLY:
            params = params[1:]
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                open_ended = True
            elif p.kind is not p.VAR_POSITIONAL:
                names.add(p.name)
    return names - caller_supplied(*fns), open_ended


def check_kwargs(owner: str, kwargs: dict, *fns: Callable, extra: Iterable[str] = ()) -> None:
    """Raise ``TypeError`` naming every keyword ``fns`` do not take from a user, with the nearest valid one."""
    names, _ = accepted_kwargs(*fns)
    names |= set(extra)
    supplied = caller_supplied(*fns)
    bad = [k for k in kwargs if k not in names]
    if bad:
        parts = []
        for k in bad:
            near = closest(k, names, n=1)
            parts.append(f"{k!r}" + (" (the caller passes it: not settable here)" if k in supplied
                                     else f" (did you mean {near[0]!r}?)" if near else ""))
        raise TypeError(f"{owner} got unknown argument{'s' if len(bad) > 1 else ''} {', '.join(parts)}; "
                        f"valid: {', '.join(sorted(names))}")


def symbolic_tracing() -> bool:
    """Whether FX is tracing symbolically (torchvision's ``create_feature_extractor``, timm's FX helpers):
    inputs are proxies, so no check may branch on a shape or read a value, and no fusion may branch on
    the tensor's device."""
    return is_fx_symbolic_tracing()


def eager() -> bool:
    """Whether a forward runs eagerly, so a check may read tensor values (``int(x.max())``).

    Under torch.compile / torch.export, TorchScript or FX symbolic tracing a value read would break the
    graph or fail on a fake tensor: there shape and dtype checks still run and value checks are skipped.
    """
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return not symbolic_tracing()


def values_readable(x: torch.Tensor) -> bool:
    """Whether a check may read ``x``'s values: eagerly, and only from a tensor that has them (a meta or
    fake tensor, used to infer shapes, has none)."""
    if not eager() or x.is_meta:
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(x)


def owner_name(module: Any) -> str:
    """The architecture a zoo model was built as (``rcan_x2``), else its class name, for error messages."""
    cfg = getattr(module, "pretrained_cfg", None)
    return (cfg.get("architecture") if isinstance(cfg, dict) else None) or type(module).__name__


def check_tensor(owner: str, x: object, what: str) -> None:
    """A list or array where a tensor belongs fails deep inside torch (``'list' object has no attribute
    'ndim'``); name the argument instead. Skipped under FX tracing, where inputs are proxies."""
    if not isinstance(x, torch.Tensor) and eager():
        raise TypeError(f"{owner} takes {what} as a torch.Tensor; got a {type(x).__name__}: convert it first "
                        f"(torch.as_tensor(...))")


def check_image(owner: str, x: torch.Tensor, like: torch.Tensor | None = None, unit_range: bool = False) -> None:
    """A (B, C, H, W) image batch that the network can read: floating point, in the weights' dtype (unless
    autocast casts it), with pixels; ``unit_range`` also refuses values clearly on a 0..255 scale.

    Integer images reach the first conv as a dtype error, or (SR models, which scale by 255 themselves)
    overflow into garbage; a 0x0 image fails inside a convolution's padding arithmetic.
    """
    if not x.is_floating_point():
        fix = ("divide by 255 (zoo.inference.upscale does this for you)" if unit_range
               else "convert it with x.float() and normalise it as the model's pretrained_cfg says")
        raise TypeError(f"{owner} expects float images{' in [0, 1]' if unit_range else ''}; got {x.dtype}: {fix}")
    if x.ndim >= 2 and (x.shape[-2] == 0 or x.shape[-1] == 0):
        raise ValueError(f"{owner} got an empty {x.shape[-2]}x{x.shape[-1]} image; pass images with at least one "
                         f"pixel in each dimension")
    if (like is not None and like.is_floating_point() and x.dtype != like.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(f"{owner}'s weights are {like.dtype} but the input is {x.dtype}; cast the input "
                        f"(x.to({like.dtype})) or the model (model.to({x.dtype})), or run under torch.autocast")
    if unit_range and x.numel() and values_readable(x):
        top = float(x.detach().amax())
        if top > 2.0:
            raise ValueError(f"{owner} expects float images in [0, 1]; got values up to {top:g}, as from a 0..255 "
                             f"image: divide by 255 (zoo.inference.upscale takes uint8 images and does this for you)")


def float_param(module: torch.nn.Module) -> torch.Tensor | None:
    """The module's first floating-point parameter, whose dtype its inputs must have (a quantized layer
    holds integer weights, but its bias and the norms around it stay float)."""
    return next((p for p in module.parameters() if p.is_floating_point()), None)
