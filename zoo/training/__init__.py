"""The training command (``train.py``, ``zoo-train``, ``python -m zoo train``): Lightning's CLI over
``zoo.tasks`` and ``zoo.data``, with the run folder of ``zoo.tasks.run_folder``."""
from .build import ConfigError
from .cli import SUBCOMMANDS, ZooCLI, main, run

__all__ = ["ConfigError", "SUBCOMMANDS", "ZooCLI", "main", "run"]
