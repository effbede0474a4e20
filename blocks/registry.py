"""The block registry: ``register``, ``create``, ``list_blocks``."""
from __future__ import annotations

import fnmatch
from typing import Callable, TypeVar

from torch import nn

from .validation import check_kwargs, unknown_name_error

_BLOCKS: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a block creatable as ``zoo.blocks.create(name, channels, ...)``.

    A block takes its channel count first and accepts ``device`` and ``dtype``.
    """

    def wrap(cls: T) -> T:
        if name in _BLOCKS and _BLOCKS[name] is not cls:
            raise ValueError(f"block name {name!r} is already registered by {_BLOCKS[name].__qualname__}")
        _BLOCKS[name] = cls
        cls.block_name = name
        return cls

    return wrap


def get_block(name: str) -> type[nn.Module]:
    """The class registered as ``name``; unknown names raise with the closest registered ones."""
    try:
        return _BLOCKS[name]
    except KeyError:
        raise unknown_name_error("block", name, _BLOCKS) from None


def create(name: str, channels: int, **kwargs) -> nn.Module:
    """Build block ``name`` for ``channels`` channels. Unknown keyword arguments raise ``TypeError``."""
    cls = get_block(name)
    check_kwargs(f"block {name!r}", kwargs, cls.__init__)
    return cls(channels, **kwargs)


def list_blocks(pattern: str = "*") -> list[str]:
    """Registered block names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _BLOCKS if fnmatch.fnmatchcase(n, pattern))
