"""Callbacks for people watching runs: the exported model, a summary, plots."""
from __future__ import annotations

import copy
import csv
import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from ..extras import MissingExtraError, require
from ..hub import save_pretrained


class ExportModel(L.Callback):
    """At the end of fit, write ``model.safetensors`` + ``config.json`` (and ``ema/`` with EMA) that
    ``zoo.create(name, pretrained=folder)`` loads; after quantization-aware training also
    ``quantized/``, the integer model of the trained weights."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.exported: list[Path] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # the model card carries the last validation metrics, measured on the run's data
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val") and v.numel() == 1}
        data = type(trainer.datamodule).__name__ if trainer.datamodule is not None else ""
        self.exported = [save_pretrained(pl_module.model, self.directory, metrics=metrics, dataset=data)]
        if getattr(pl_module, "ema", None) is not None:
            ema = pl_module.ema.module
            ema.pretrained_cfg, ema.model_args = pl_module.model.pretrained_cfg, getattr(pl_module.model, "model_args", {})
            self.exported.append(save_pretrained(ema, self.directory / "ema"))
        spec = getattr(pl_module.model, "quant_aware_spec", None)
        if spec is not None:
            from ..quant import quantize

            quantized = quantize(copy.deepcopy(pl_module.model).cpu().eval(), spec)
            self.exported.append(save_pretrained(quantized, self.directory / "quantized"))


class RunSummary(L.Callback):
    """Times the fit and counts samples; ``report()`` gives the end-of-run summary lines."""

    def __init__(self, monitor: str, mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.place = ""  # the run folder and why it was chosen, one line
        self.evaluated = ""  # the checkpoint (or weights) the evaluation metrics are of
        self.samples = 0
        self.fit_seconds = 0.0
        self._start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)

    def on_train_end(self, trainer, pl_module) -> None:
        self.fit_seconds = time.perf_counter() - self._start

    def record_checkpoints(self, best: ModelCheckpoint, last: ModelCheckpoint) -> None:
        """Note the checkpoint paths after fit: restoring 'best' for testing resets the callback's state."""
        self.best = (best.best_model_score, best.best_model_path)
        self.last_path = last.best_model_path or last.last_model_path

    def report(self, trainer: L.Trainer, export: ExportModel, test_metrics: dict) -> str:
        best_score, best_path = getattr(self, "best", (None, ""))
        lines = ["", "=" * 64, "run summary"] + ([f"  {self.place}"] if self.place else [])
        if self.fit_seconds:
            rate = self.samples / self.fit_seconds
            lines.append(f"  trained {trainer.global_step} steps, {trainer.current_epoch} epochs in "
                         f"{self.fit_seconds:.1f} s ({rate:.1f} samples/s per process)")
        if best_score is not None:
            lines.append(f"  best {self.monitor}: {float(best_score):.4f}  ({best_path})")
        elif self.fit_seconds:  # Lightning's warning about the missing key, said once in our words
            lines.append(f"  no best checkpoint: no validation ran before the fit ended (no {self.monitor})")
        if test_metrics and self.evaluated:
            lines.append(f"  metrics of: {self.evaluated}")
        for key, value in sorted(test_metrics.items()):
            lines.append(f"  {key}: {float(value):.4f}")
        if getattr(self, "last_path", ""):
            lines.append(f"  last checkpoint: {self.last_path}  (resume with --ckpt_path last)")
        for path in export.exported:
            lines.append(f"  exported model: {path}  (zoo.create(..., pretrained='{path}'))")
        lines.append("=" * 64)
        return "\n".join(lines)


def plot_metrics(metrics_csv: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """PNG plots of the training loss and every validation metric from Lightning's ``metrics.csv``; none,
    with a one-line note, where matplotlib is missing (a finished run is not failed for its plots)."""
    try:
        matplotlib = require("matplotlib", "train", "the run's plots")
    except MissingExtraError as missing:
        print(f"no plots: {missing}")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_csv, out_dir = Path(metrics_csv), Path(out_dir)
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "epoch") or not value:
                continue
            series.setdefault(key, []).append((float(row["step"]), float(value)))
    written = []
    groups = {"loss": [k for k in series if "loss" in k and not k.endswith("_epoch")],
              "validation": [k for k in series if k.startswith(("val", "test")) and not k.endswith("loss")]}
    for title, keys in groups.items():
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key in sorted(keys):
            steps, values = zip(*series[key])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{title}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
