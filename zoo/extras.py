"""Optional dependencies: each heavy package that serves one feature sits behind an extra of the
distribution (pyproject.toml), and a missing one is named with the command that installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "channelzoo"


class MissingExtraError(ModuleNotFoundError):
    """An optional package is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise one sentence naming ``purpose`` and ``pip install "channelzoo[extra]"``.

    A module that is installed but fails inside its own imports re-raises as it is: that is not a
    missing extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (module == missing or module.startswith(missing + ".")):
            raise
        raise MissingExtraError(f"{purpose} needs the package {missing!r}, which is not installed: "
                                f"pip install \"{DISTRIBUTION}[{extra}]\"", name=missing) from None
