"""Class-conditional scale-wise generation: VAR's next-scale prediction trained by teacher forcing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..hub import save_pretrained
from ..models.var import VAR
from .base import BaseTask
from .callbacks import ExportModel
from .optim import Spec
from .vqvae import save_grid_png


class ScalewiseGenerationTask(BaseTask):
    """Trains :class:`zoo.models.var.VAR` (Tian et al., NeurIPS 2024) on ``(images, labels)`` batches,
    images in [-1, 1] at the tokenizer's size.

    The tokenizer is frozen and outside the optimiser: build the model with ``model.kwargs.vae`` the
    trained VQVAE's file or exported folder (e.g. ``runs/vqvae_digits/export``). Each batch is
    tokenized (``img_to_idxBl``), the teacher-forcing input built (``idxBl_to_var_input``), and the
    loss is the release's: cross-entropy over all L tokens of every scale, each token weighted 1/L
    (so fine scales, holding most tokens, dominate), with optional label smoothing. Labels are
    replaced by the null class with probability ``model.kwargs.cond_drop_rate`` (inside
    ``VAR.forward``, as the release) so classifier-free guidance works at sampling time.

    Args (beyond :class:`BaseTask`'s):
        label_smoothing: of the token targets (the release's ``--ls``, default 0).
        sample_classes, sample_per_class: the grid written each validation epoch to
            ``<output_dir>/samples/epochNNN.png``: one row per class (the first ``sample_classes``),
            ``sample_per_class`` images each; 0 turns it off.
        sample_cfg, sample_top_k, sample_top_p, sample_seed: the grid's guidance (rising over the
            scales as the release), filtering and seed (the same seed every epoch).
    Logged: ``train/loss``, ``train/acc``; ``val/loss``, ``val/acc`` (mean over tokens),
    ``val/acc_tail`` and ``val/loss_tail`` (the finest scale), and per scale ``val/acc_{pn}x{pn}``
    and ``val/loss_{pn}x{pn}``; the same under ``test/``. Evaluation keeps every label (no dropout).
    """

    monitor = ("val/loss", "min")

    def __init__(self, model: nn.Module, optimizer: Spec | None = None,
                 scheduler: Spec | None = None, ema_decay: float | None = None, compile: bool | str = False,
                 label_smoothing: float = 0.0, sample_classes: int = 10, sample_per_class: int = 8,
                 sample_cfg: float = 2.0, sample_top_k: int = 0, sample_top_p: float = 0.0, sample_seed: int = 0) -> None:

        if not isinstance(model, VAR):
            raise TypeError(f"task scalewise_gen trains a VAR (model.name: var or var_d16 ...); got {type(model).__name__}")
        if getattr(model.vae, "pretrained_cfg", None) is None:
            raise ValueError("the VAR has no trained tokenizer: set model.kwargs.vae to the VQVAE's weights file or "
                             "exported folder (e.g. runs/vqvae_digits/export from configs/vqvae_digits.yaml)")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
        if sample_classes < 0 or sample_per_class < 0:
            raise ValueError(f"sample_classes and sample_per_class must be >= 0; got {sample_classes}, {sample_per_class}")
        super().__init__(model, optimizer, scheduler, ema_decay, compile)
        self.label_smoothing = label_smoothing
        self.sample_classes = min(sample_classes, model.num_classes)
        self.sample_per_class, self.sample_cfg = sample_per_class, sample_cfg
        self.sample_top_k, self.sample_top_p, self.sample_seed = sample_top_k, sample_top_p, sample_seed
        self.scale_names = [f"{pn}x{pn}" for pn in model.patch_nums]
        self.save_hyperparameters({"label_smoothing": label_smoothing, "sample_classes": sample_classes,
                                   "sample_per_class": sample_per_class, "sample_cfg": sample_cfg,
                                   "sample_top_k": sample_top_k, "sample_top_p": sample_top_p,
                                   "sample_seed": sample_seed})

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        return (self._compiled_forward or self.model)(label_B, x_BLCv_wo_first_l)

    def _tokens(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, labels)`` -> labels, target ids (B, L) and the teacher-forcing input (B, L - 1, Cvae)."""
        images, labels = batch[0], batch[1]
        gt_BL, x_BLCv = self.model.teacher_forcing_batch(images)  # frozen tokenizer, no grad
        return labels, gt_BL, x_BLCv

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        labels, gt_BL, x_BLCv = self._tokens(batch)
        logits_BLV = self(labels, x_BLCv)  # (B, L, V)
        ce_BL = F.cross_entropy(logits_BLV.flatten(0, 1), gt_BL.flatten(), label_smoothing=self.label_smoothing,
                                reduction="none").view_as(gt_BL)
        loss = ce_BL.mean()  # the release's weight 1/L per token, summed over tokens, mean over the batch
        self.check_loss(loss)
        n = len(labels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/acc", (logits_BLV.detach().argmax(-1) == gt_BL).float().mean(), on_step=True, on_epoch=False,
                 batch_size=n)
        self.log_lr()
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        labels, gt_BL, x_BLCv = self._tokens(batch)
        drop, self.model.cond_drop_rate = self.model.cond_drop_rate, 0.0  # every label kept: deterministic
        try:
            logits_BLV = self(labels, x_BLCv)
        finally:
            self.model.cond_drop_rate = drop
        n = len(labels)
        losses, accs = self.model.loss_per_scale(logits_BLV, gt_BL)  # (S,), (S,)
        ce = F.cross_entropy(logits_BLV.flatten(0, 1), gt_BL.flatten())
        self.log(f"{stage}/loss", ce, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc", (logits_BLV.argmax(-1) == gt_BL).float().mean(), batch_size=n, sync_dist=True)
        self.log(f"{stage}/loss_tail", losses[-1], batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc_tail", accs[-1], prog_bar=True, batch_size=n, sync_dist=True)
        for name, loss_s, acc_s in zip(self.scale_names, losses, accs):
            self.log(f"{stage}/loss_{name}", loss_s, batch_size=n, sync_dist=True)
            self.log(f"{stage}/acc_{name}", acc_s, batch_size=n, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """(classes * per_class, C, H, W) seeded samples in [0, 1], class-major (one row per class)."""
        labels = torch.arange(self.sample_classes, device=self.device).repeat_interleave(self.sample_per_class)
        return self.model.autoregressive_infer_cfg(len(labels), labels, g_seed=self.sample_seed, cfg=self.sample_cfg,
                                                   top_k=self.sample_top_k, top_p=self.sample_top_p)

    def on_validation_epoch_end(self) -> None:
        if (not self.sample_classes or not self.sample_per_class or self._trainer is None
                or self.trainer.sanity_checking or not self.trainer.is_global_zero):
            return
        out = Path(self.trainer.default_root_dir) / "samples" / f"epoch{self.current_epoch:03d}.png"
        save_grid_png(self.sample_grid(), out, nrow=self.sample_per_class)

    def on_fit_end(self) -> None:
        """Save the tokenizer beside the exported VAR (``<export>/vae``): the VAR's state dict leaves
        it out (as the release), and ``python -m zoo sample --vae`` needs it."""

        if self._trainer is None or not self.trainer.is_global_zero:
            return
        for callback in self.trainer.callbacks:
            if isinstance(callback, ExportModel):
                callback.exported.append(save_pretrained(self.model.vae, callback.directory / "vae"))
