"""Errors that name the problem and the fix: unknown names and keyword arguments."""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Iterable


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


def accepted_kwargs(*fns: Callable) -> tuple[set[str], bool]:
    """Names the callables take, and whether any of them swallows ``**kwargs``."""
    names: set[str] = set()
    open_ended = False
    for fn in fns:
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                open_ended = True
            elif p.kind is not p.VAR_POSITIONAL:
                names.add(p.name)
    return names, open_ended


def check_kwargs(owner: str, kwargs: dict, *fns: Callable, extra: Iterable[str] = ()) -> None:
    """Raise ``TypeError`` naming every keyword ``fns`` do not take, with the nearest valid one."""
    names, _ = accepted_kwargs(*fns)
    names |= set(extra)
    bad = [k for k in kwargs if k not in names]
    if bad:
        parts = []
        for k in bad:
            near = closest(k, names, n=1)
            parts.append(f"{k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise TypeError(f"{owner} got unknown argument{'s' if len(bad) > 1 else ''} {', '.join(parts)}; "
                        f"valid: {', '.join(sorted(names))}")
