"""Which folder a command runs in and which checkpoint it starts from, decided once, before any work.

A fresh fit never writes into a folder that holds a run: it goes to the next numbered folder
(``runs/NAME-2``). Resuming (``--ckpt_path last``) and evaluating without ``--ckpt_path`` use the latest
run of ``output_dir``; a checkpoint inside a run folder is resumed or evaluated in that folder."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..tasks.checkpointing import resolve_ckpt_path
from ..tasks.run_folder import fresh_run, holds_run, latest_run, launched_rank

# rank 0's folder, inherited by the processes Lightning's launcher starts (they must not pick the next number)
RUN_FOLDER_ENV = "ZOO_RUN_FOLDER"
VERBS = {"fit": "resuming", "validate": "validating", "test": "testing", "predict": "predicting with"}


@dataclass(frozen=True)
class RunPlace:
    """The run folder, the checkpoint to load (None: a fresh fit, or the model as built), and why, in words."""

    folder: Path
    ckpt_path: Optional[str]
    reason: str

    def line(self) -> str:
        return f"run folder: {self.folder} ({self.reason})"


def _run_of(ckpt_path: str) -> Optional[Path]:
    """The run folder a local checkpoint was written in (``RUN/checkpoints/NAME.ckpt``), if it is one."""
    path = Path(ckpt_path)
    if "://" in ckpt_path or path.parent.name != "checkpoints" or not holds_run(path.parent.parent):
        return None
    return path.parent.parent


def place_run(output_dir: Path, subcommand: str, ckpt_path: Optional[str]) -> RunPlace:
    inherited = os.environ.get(RUN_FOLDER_ENV) if launched_rank() else None
    verb = VERBS[subcommand]
    if ckpt_path in ("last", "best"):
        folder = Path(inherited) if inherited else latest_run(output_dir)
        return RunPlace(folder, resolve_ckpt_path(ckpt_path, folder), f"{verb} its checkpoints/{ckpt_path}.ckpt")
    if ckpt_path is not None:
        resolved = resolve_ckpt_path(ckpt_path, output_dir)
        own = _run_of(resolved)
        if inherited or own:
            return RunPlace(Path(inherited) if inherited else own, resolved, f"{verb} its {Path(resolved).name}")
        folder = fresh_run(output_dir)
        return RunPlace(folder, resolved, f"a new run {verb} {resolved}" + _beside(folder, output_dir))
    if subcommand == "fit":
        folder = Path(inherited) if inherited else fresh_run(output_dir)
        return RunPlace(folder, None, "a new run" + _beside(folder, output_dir))
    folder = Path(inherited) if inherited else latest_run(output_dir)
    latest = f", the latest run of {output_dir}" if folder != output_dir else ""
    for name, note in (("best", ""), ("last", " (no best.ckpt: no validation ran)")):
        path = folder / "checkpoints" / f"{name}.ckpt"
        if path.is_file():
            return RunPlace(folder, resolve_ckpt_path(name, folder), f"{verb} its checkpoints/{name}.ckpt{note}{latest}")
    return RunPlace(folder, None, f"{verb} the model as built: no checkpoint in {folder}")


def _beside(folder: Path, output_dir: Path) -> str:
    return f": {output_dir} holds an earlier run" if folder != output_dir else ""
