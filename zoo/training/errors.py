"""jsonargparse's report of an unknown key, turned into one sentence with the nearest valid key."""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from jsonargparse import ArgumentParser

from ..blocks.validation import closest

# keys of the loop before it was Lightning's CLI, and what replaced them
RENAMED = {
    "run": "give the step as a subcommand: train.py fit|validate|test|predict -c CONFIG (with none: fit, then "
           "test the best checkpoint, then export)",
    "seed": "the key is seed_everything",
}
_UNKNOWN = (r"unrecognized arguments: --?([\w.\-]+)", r"does not accept option '([\w.\-]+)'",
            r"(?:[Kk]eys?|Option) ['\"]?([\w.\-]+)['\"]? (?:is|are) not (?:expected|accepted)",
            r"[Kk]ey ['\"]([\w.\-]+)['\"] is not expected")


def _flat_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a nested dict (a class_path section's init_args count as its own keys)."""
    if not isinstance(value, dict):
        return [prefix] if prefix else []
    if "class_path" in value:
        value = value.get("init_args") or {}
    keys = [prefix] if prefix else []
    for key, sub in value.items():
        keys += _flat_keys(sub, f"{prefix}.{key}" if prefix else key)
    return keys


def _init_args(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "params", "optimizer")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def unknown_key(message: str) -> str | None:
    """The full dotted key jsonargparse refused, or None when the message is about something else."""
    for pattern in _UNKNOWN:
        match = re.search(pattern, message)
        if match:
            key = match.group(1)
            section = re.search(r'Parser key "([\w.]+)"', message)  # a nested section's own message
            if section and not key.startswith(section.group(1) + "."):
                key = f"{section.group(1)}.{key}"
            return key
    return None


def _class_names() -> list[str]:
    """The short names a class_path section resolves: Lightning's callbacks and loggers, torch's
    optimizers and schedules."""
    import lightning.pytorch.callbacks as callbacks
    import lightning.pytorch.loggers as loggers
    import torch.optim as optim
    import torch.optim.lr_scheduler as schedules

    return [n for module in (callbacks, loggers, optim, schedules) for n in dir(module) if n[:1].isupper()]


def _class_problem(message: str) -> str | None:
    """A class_path that names no class, or a class given without its required arguments."""
    section = re.search(r'Parser key "([\w.]+)"', message)
    where = section.group(1) if section else "a class_path"
    name = re.search(r"Expected a dot import path string: ([\w.]+)", message)
    if name:
        near = closest(name.group(1), _class_names(), n=1)
        return f"{where}: no class {name.group(1)!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                          "; give its import path, e.g. torch.optim.SGD")
    required = re.search(r"class_path '([\w.]+)':\s*the following arguments are required: ([\w, ]+)", message)
    if required:
        cls, args = required.group(1).rpartition(".")[2], [a.strip() for a in required.group(2).split(",")]
        return f"{where}: {cls} needs {', '.join(args)}; give " + " ".join(f"--{where}.{a} VALUE" for a in args)
    return None


def explain(parser: ArgumentParser, message: str) -> str:
    """'unknown config key K; did you mean N?' for an unknown key, else jsonargparse's own first lines."""
    key = unknown_key(message)
    if key is None:
        problem = _class_problem(message)
        if problem:
            return problem
        lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
        return " ".join(lines[:6])
    top = key.split(".")[0]
    if top in RENAMED:
        return f"unknown config key {key!r}: {RENAMED[top]}"
    known = _flat_keys(parser.get_defaults().as_dict())
    for class_path in re.findall(r"class_path '([\w.]+)'", message):  # the class the section was switched to
        section = key.rpartition(".")[0]
        known += [f"{section}.{arg}" for arg in _init_args(class_path)]
    near = closest(key, sorted(set(known)), n=1)
    return f"unknown config key {key!r}" + (f"; did you mean {near[0]!r}?" if near else "")
