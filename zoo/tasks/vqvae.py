"""Training VAR's multi-scale VQVAE tokenizer: reconstruction + the residual quantizer's VQ loss."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import image_grid, write_image
from ..models.vqvae import VQVAE
from .base import BaseTask
from .optim import Spec


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> (B,) PSNR in dB on the [0, 1] scale."""
    mse = ((pred.float().clamp(-1, 1) - target.float()) * 0.5).square().flatten(1).mean(dim=1)  # (B,)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def save_grid_png(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """(N, C, H, W) in [0, 1] (C = 1 or 3) -> one grid PNG, written atomically."""

    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)  # grey -> RGB for the PNG writer
    write_image(image_grid(images, nrow=nrow), path)
    return path


class VQVAETask(BaseTask):
    """Trains :class:`zoo.models.vqvae.VQVAE` (Tian et al., NeurIPS 2024) on ``(images, labels)``
    batches with images in [-1, 1] (``data.args.normalize: symmetric`` for digits).

    The loss is ``l2_weight * MSE + l1_weight * L1`` of the reconstruction plus ``vq_weight`` times
    the quantizer's own loss (codebook + beta * commitment, averaged over the scales, as the
    release's ``VectorQuantizer2`` returns it). The release trains its tokenizer with LPIPS and a
    GAN loss on top; those are left out here.

    Args (beyond :class:`BaseTask`'s):
        l2_weight, l1_weight, vq_weight: loss weights.
        grid_images: originals (top row) and reconstructions (bottom row) written each validation
            epoch to ``<output_dir>/samples/recon_epochNNN.png``; 0 turns the grid off.
    Logged: ``train/loss``, ``train/vq_loss``, ``train/usage`` (percent of the codebook in use, mean
    over scales), ``val/loss``, ``val/psnr`` (dB, [0, 1] scale), ``val/l1``; the same under ``test/``.
    """

    monitor = ("val/psnr", "max")

    def __init__(self, model: nn.Module, optimizer: Spec | None = None,
                 scheduler: Spec | None = None, ema_decay: float | None = None, compile: bool | str = False,
                 l2_weight: float = 1.0, l1_weight: float = 0.2, vq_weight: float = 1.0, grid_images: int = 8) -> None:

        if not isinstance(model, VQVAE):
            raise TypeError(f"task vqvae trains a VQVAE (model.name: vqvae); got {type(model).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("the VQVAE is frozen (test_mode=True, the release's default for sampling); set "
                             "model.kwargs.test_mode: false to train it")
        if min(l2_weight, l1_weight, vq_weight) < 0 or l2_weight + l1_weight == 0:
            raise ValueError(f"loss weights must be >= 0 with l2_weight + l1_weight > 0; got l2={l2_weight}, "
                             f"l1={l1_weight}, vq={vq_weight}")
        super().__init__(model, optimizer, scheduler, ema_decay, compile)
        self.l2_weight, self.l1_weight, self.vq_weight, self.grid_images = l2_weight, l1_weight, vq_weight, grid_images
        self._grid_batch: torch.Tensor | None = None
        self.save_hyperparameters({"l2_weight": l2_weight, "l1_weight": l1_weight, "vq_weight": vq_weight,
                                   "grid_images": grid_images})

    def forward(self, x: torch.Tensor, ret_usages: bool = False) -> tuple[torch.Tensor, Any, torch.Tensor]:
        return (self._compiled_forward or self.model)(x, ret_usages=ret_usages)

    def _losses(self, images: torch.Tensor, recon: torch.Tensor, vq_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        l2, l1 = F.mse_loss(recon, images), F.l1_loss(recon, images)
        loss = self.l2_weight * l2 + self.l1_weight * l1 + self.vq_weight * vq_loss
        return {"loss": loss, "l2": l2, "l1": l1, "vq_loss": vq_loss}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        log_usage = batch_idx % max(1, self.trainer.log_every_n_steps if self._trainer else 1) == 0
        recon, usages, vq_loss = self(images, ret_usages=log_usage)
        losses = self._losses(images, recon, vq_loss)
        self.check_loss(losses["loss"])
        self.log("train/loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        self.log("train/vq_loss", losses["vq_loss"], on_step=True, on_epoch=False, batch_size=len(images))
        if usages:
            self.log("train/usage", sum(usages) / len(usages), on_step=True, on_epoch=False, batch_size=len(images))
        self.log_lr()
        return losses["loss"]

    def _evaluate(self, batch: Any, batch_idx: int, stage: str) -> None:
        images = batch[0]
        recon, _, vq_loss = self(images)
        losses = self._losses(images, recon, vq_loss)
        n = len(images)
        self.log(f"{stage}/loss", losses["loss"], batch_size=n, sync_dist=True)
        self.log(f"{stage}/l1", losses["l1"], batch_size=n, sync_dist=True)
        self.log(f"{stage}/psnr", psnr_per_image(recon, images).mean(), prog_bar=True, batch_size=n, sync_dist=True)
        if stage == "val" and batch_idx == 0 and self.grid_images:
            keep = min(self.grid_images, n)
            self._grid_batch = torch.cat([images[:keep], recon[:keep].clamp(-1, 1)]).add(1).mul(0.5)  # (2k, C, H, W)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        grid, self._grid_batch = self._grid_batch, None
        if grid is None or self._trainer is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        out = Path(self.trainer.default_root_dir) / "samples" / f"recon_epoch{self.current_epoch:03d}.png"
        save_grid_png(grid, out, nrow=len(grid) // 2)
