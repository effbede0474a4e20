"""Image classification: cross-entropy with label smoothing, mixup/cutmix, top-1/top-5."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .base import BaseTask
from .optim import Spec


class ClassificationTask(BaseTask):
    """Supervised classification of ``(images, labels)`` or ``(images, labels, channel_ids)`` batches.

    A third batch entry (multi-channel data with a channel subset, e.g. ``multichannel_digits`` with
    ``channels: [0, 2]``) is passed on as ``model(images, channel_ids=...)``; two-entry batches call
    ``model(images)``, so other models never see the keyword.

    Args (beyond :class:`BaseTask`'s):
        num_classes: classes; defaults to ``model.num_classes``.
        label_smoothing: smoothing of the one-hot targets (Szegedy et al., CVPR 2016).
        mixup_alpha, cutmix_alpha: Beta parameters of mixup (Zhang et al., ICLR 2018) and cutmix
            (Yun et al., ICCV 2019); 0 turns each off. ``mix_prob`` is the chance a batch is mixed.
    Logged: ``train/loss``, ``val/loss``, ``val/top1``, ``val/top5`` (and ``val_ema/*`` with EMA),
    the same under ``test/``.
    """

    def __init__(self, model: nn.Module, optimizer: Spec | None = None,
                 scheduler: Spec | None = None, ema_decay: float | None = None, compile: bool | str = False,
                 num_classes: int | None = None, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, mix_prob: float = 1.0) -> None:
        super().__init__(model, optimizer, scheduler, ema_decay, compile)
        self.num_classes = int(num_classes or getattr(model, "num_classes", 0))
        if self.num_classes < 2:
            raise ValueError(f"classification needs num_classes >= 2; got {self.num_classes} "
                             f"(set model.kwargs.num_classes to the number of classes in the data)")
        self.label_smoothing = label_smoothing
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mix_prob,
                               label_smoothing=label_smoothing, num_classes=self.num_classes)
        top_k = min(5, self.num_classes)
        prefixes = ["val", "test"] + (["val_ema", "test_ema"] if self.ema is not None else [])
        self.metrics = nn.ModuleDict({
            p: nn.ModuleDict({"top1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
                              f"top{top_k}": MulticlassAccuracy(self.num_classes, top_k=top_k, average="micro")})
            for p in prefixes})
        self.save_hyperparameters({"num_classes": self.num_classes, "label_smoothing": label_smoothing,
                                   "mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "mix_prob": mix_prob})

    def forward(self, x: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        if channel_ids is None:
            return super().forward(x)
        return (self._compiled_forward or self.model)(x, channel_ids=channel_ids)

    @staticmethod
    def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(images, labels[, channel_ids])`` -> images, labels and the model's extra keyword arguments."""
        images, labels, *rest = batch
        return images, labels, ({"channel_ids": rest[0]} if rest else {})

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels, extra = self._unpack(batch)
        if self.mixup is not None:
            # mixing pairs images of one batch; their channel_ids are the same (one subset per data module)
            images, soft = self.mixup(images, labels)  # soft targets already carry the smoothing
            loss = torch.sum(-soft * F.log_softmax(self(images, **extra), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(self(images, **extra), labels, label_smoothing=self.label_smoothing)
        self.check_loss(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(labels))
        self.log_lr()
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        images, labels, extra = self._unpack(batch)
        runs = [(stage, self(images, **extra))]
        if self.ema is not None:
            runs.append((f"{stage}_ema", self.ema(images, **extra)))
        for prefix, logits in runs:
            self.log(f"{prefix}/loss", F.cross_entropy(logits, labels), prog_bar=False, batch_size=len(labels), sync_dist=True)
            for name, metric in self.metrics[prefix].items():
                metric.update(logits, labels)
                self.log(f"{prefix}/{name}", metric, prog_bar=name == "top1" and prefix == stage, batch_size=len(labels))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if not isinstance(batch, (tuple, list)):
            return self(batch).softmax(dim=-1)
        extra = {"channel_ids": batch[2]} if len(batch) > 2 else {}
        return self(batch[0], **extra).softmax(dim=-1)
