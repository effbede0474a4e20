"""The resolved config of a run, written into its folder as ``config.yaml``."""
from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback

from ..files import atomic_write


class RunConfigFile(SaveConfigCallback):
    """``config.yaml`` in the run folder: every key with its value (defaults included), ``output_dir`` the run
    folder itself, the file a later ``-c`` reproduces or resumes the run from. Written whole or not at all, by a
    fit (a resumed one replaces it); an evaluation leaves the training config in place."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        text = self.parser.dump(self.config)  # every key, the unset ones as their defaults
        path = Path(trainer.default_root_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
