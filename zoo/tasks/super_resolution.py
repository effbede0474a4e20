"""Single-image super-resolution: L1 loss on crops, PSNR/SSIM on the Y channel against bicubic."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imresize import imresize
from ..metrics import psnr, ssim
from .base import BaseTask
from .optim import Spec
from .sr_figure import ComparisonRow, comparison_row, draw_comparison, figure_title


class SuperResolutionTask(BaseTask):
    """Train on (LR, HR) crops with an L1 (or L2) loss; evaluate whole images with the SR protocol
    (Y channel, a border of ``scale`` pixels shaved, 8-bit outputs), beside MATLAB-bicubic upscaling.

    Logged: ``train/loss``; ``val/psnr``, ``val/ssim``, ``val/psnr_bicubic``, ``val/ssim_bicubic`` (and
    ``val_ema/*`` with EMA); the same under ``test/``. The test also prints a per-image table and
    writes ``comparison.png`` to the run folder (``zoo.tasks.sr_figure``): per test image, up to
    ``comparison_images``, a ``comparison_size``-pixel crop where the model and bicubic differ most,
    bicubic | model | ground truth, with PSNRs of the whole image and of the crop.
    """

    monitor = ("val/psnr", "max")

    def __init__(self, model: nn.Module, optimizer: Spec | None = None,
                 scheduler: Spec | None = None, ema_decay: float | None = None, compile: bool | str = False,
                 scale: int | None = None, loss: Literal["l1", "l2"] = "l1", comparison_size: int = 64,
                 comparison_images: int = 8) -> None:
        super().__init__(model, optimizer, scheduler, ema_decay, compile)
        self.scale = int(scale or getattr(model, "scale", 0))
        if self.scale < 2:
            raise ValueError("super-resolution needs scale >= 2: set task.args.scale or use a model with .scale")
        if getattr(model, "scale", self.scale) != self.scale:
            raise ValueError(f"task scale x{self.scale} does not match the model's x{model.scale}")
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
        self.loss_fn = F.l1_loss if loss == "l1" else F.mse_loss
        self.comparison_size, self.comparison_images = comparison_size, comparison_images
        self._test_rows: list[tuple[float, float, float, float]] = []
        self._comparison: list[ComparisonRow] = []  # crops only: a large test set's images are not kept
        self.save_hyperparameters({"scale": self.scale, "loss": loss})

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        lr, hr = batch
        loss = self.check_loss(self.loss_fn(self(lr), hr))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(lr))
        self.log_lr()
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        lr, hr = batch
        if hr.shape[-2:] != (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale):
            raise ValueError(f"HR {tuple(hr.shape[-2:])} is not x{self.scale} of LR {tuple(lr.shape[-2:])}: "
                             f"crop HR images to a multiple of the scale")
        bicubic = imresize(lr, scale=self.scale).clamp(0, 1)
        metric = dict(shave=self.scale, y_channel=True, quantize=True)
        base = (psnr(bicubic, hr, **metric).mean(), ssim(bicubic, hr, **metric).mean())
        runs = [(stage, self(lr))] + ([(f"{stage}_ema", self.ema(lr))] if self.ema is not None else [])
        for prefix, sr in runs:
            sr = sr.clamp(0, 1)
            scores = (psnr(sr, hr, **metric).mean(), ssim(sr, hr, **metric).mean())
            self.log(f"{prefix}/psnr", scores[0], prog_bar=prefix == stage, batch_size=len(lr), sync_dist=True)
            self.log(f"{prefix}/ssim", scores[1], batch_size=len(lr), sync_dist=True)
            if prefix == stage == "test":
                self._test_rows.append((base[0].item(), scores[0].item(), base[1].item(), scores[1].item()))
                for i in range(min(len(lr), self.comparison_images - len(self._comparison))):
                    name = f"image {len(self._comparison)}"  # the data module's names come at the end
                    self._comparison.append(comparison_row(name, bicubic[i], sr[i], hr[i], self.scale, self.comparison_size))
        self.log(f"{stage}/psnr_bicubic", base[0], batch_size=len(lr), sync_dist=True)
        self.log(f"{stage}/ssim_bicubic", base[1], batch_size=len(lr), sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._test_rows, self._comparison = [], []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        if not self._test_rows or not self.trainer.is_global_zero:
            return
        names = getattr(getattr(self.trainer, "datamodule", None), "splits", {}).get("test")
        names = getattr(names, "names", None) or [f"image {i}" for i in range(len(self._test_rows))]
        lines = [f"x{self.scale} on held-out images (Y channel, {self.scale}-pixel border shaved)",
                 f"{'image':<22} {'bicubic PSNR':>13} {'model PSNR':>11} {'gain':>7} {'bicubic SSIM':>13} {'model SSIM':>11}"]
        for name, (bp, mp, bs, ms) in zip(names, self._test_rows):
            lines.append(f"{name:<22} {bp:>13.2f} {mp:>11.2f} {mp - bp:>+7.2f} {bs:>13.4f} {ms:>11.4f}")
        n = len(self._test_rows)
        mean = [sum(r[i] for r in self._test_rows) / n for i in range(4)]
        lines.append(f"{'mean':<22} {mean[0]:>13.2f} {mean[1]:>11.2f} {mean[1] - mean[0]:>+7.2f} {mean[2]:>13.4f} {mean[3]:>11.4f}")
        self.print("\n".join(lines))
        if self._comparison:
            for row, name in zip(self._comparison, names):
                row.name = name
            path = Path(self.trainer.default_root_dir) / "comparison.png"
            draw_comparison(self._comparison, path, figure_title(self.model, self.scale))
            self.print(f"comparison (bicubic | model | ground truth, crops where they differ most): {path}")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        lr = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(lr).clamp(0, 1)

