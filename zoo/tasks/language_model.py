"""Language modelling: next-token cross-entropy on packed sequences, perplexity, tokens per second."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from ..files import atomic_write
from .base import BaseTask
from .optim import Spec


def token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the counted targets (in fp32 under autocast) and that count."""
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # (B * T, V)
    flat_targets = targets.reshape(-1)  # (B * T,)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index)
    return loss, (flat_targets != ignore_index).sum()


class LanguageModelTask(BaseTask):
    """Causal language modelling on ``(input_ids, targets)`` batches of shape ``(B, T)``; the model maps
    ``input_ids`` to logits ``(B, T, vocab_size)``.

    Perplexity is ``exp`` of the mean token loss over the whole evaluation set (every token weighs
    the same, whatever batch it is in), not a mean of per-batch perplexities.

    Args (beyond :class:`BaseTask`'s):
        ignore_index: target id that is not scored (padding).
        sample_prompt: after each validation, the greedy continuation of this prompt is appended to
            ``samples.txt`` in the run folder (needs the data module's tokenizer); None turns it off.
        sample_tokens: tokens to generate for that sample.
    Logged: ``train/loss``, ``train/tokens_per_s``; ``val/loss``, ``val/ppl`` (and ``val_ema/*`` with
    EMA); the same under ``test/``. The checkpoint monitor is ``val/loss`` (lower is better).
    """

    monitor = ("val/loss", "min")

    def __init__(self, model: nn.Module, optimizer: Spec | None = None,
                 scheduler: Spec | None = None, ema_decay: float | None = None, compile: bool | str = False,
                 ignore_index: int = -100, sample_prompt: str | None = "def ", sample_tokens: int = 64) -> None:
        super().__init__(model, optimizer, scheduler, ema_decay, compile)
        if sample_tokens < 0:
            raise ValueError(f"sample_tokens must be >= 0; got {sample_tokens}")
        self.ignore_index, self.sample_prompt, self.sample_tokens = ignore_index, sample_prompt, sample_tokens
        prefixes = ["val", "test"] + (["val_ema", "test_ema"] if self.ema is not None else [])
        # token-weighted mean loss per evaluation prefix; summed across processes by torchmetrics
        self.eval_loss = nn.ModuleDict({p: MeanMetric() for p in prefixes})
        self.samples: list[str] = []
        self._last_batch_end: float | None = None
        self.save_hyperparameters({"ignore_index": ignore_index, "sample_prompt": sample_prompt,
                                   "sample_tokens": sample_tokens})

    def model_vocab_size(self) -> int | None:
        size = getattr(self.model, "vocab_size", None)
        if size is None:
            size = getattr(getattr(self.model, "config", None), "vocab_size", None)
        return int(size) if size else None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_vocab, model_vocab = getattr(data, "vocab_size", None), self.model_vocab_size()
        if data_vocab and model_vocab and data_vocab > model_vocab:
            name = getattr(getattr(data, "tokenizer", None), "name", "?")
            raise ValueError(f"the tokenizer {name!r} has {data_vocab} tokens but the model's vocabulary has "
                             f"{model_vocab}; set model.kwargs.vocab_size: {data_vocab} (or use a smaller tokenizer)")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids, targets = batch
        loss, _ = token_loss(self(input_ids), targets, self.ignore_index)
        self.check_loss(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(input_ids))
        self.log_lr()
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        # tokens over the time between consecutive batch ends: the whole step, data loading included
        now = time.perf_counter()
        if self._last_batch_end is not None:
            rate = batch[0].numel() / max(now - self._last_batch_end, 1e-9)
            self.log("train/tokens_per_s", rate, prog_bar=False, on_step=True, on_epoch=False)
        self._last_batch_end = now

    def on_validation_start(self) -> None:
        self._last_batch_end = None  # validation time is not training throughput

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    def _evaluate(self, batch: Any, stage: str) -> None:
        input_ids, targets = batch
        runs = [(stage, self(input_ids))]
        if self.ema is not None:
            runs.append((f"{stage}_ema", self.ema(input_ids)))
        for prefix, logits in runs:
            loss, count = token_loss(logits, targets, self.ignore_index)
            self.eval_loss[prefix].update(loss, count)

    def _log_eval(self, stage: str) -> None:
        for prefix, metric in self.eval_loss.items():
            if not prefix.startswith(stage) or metric.update_count == 0:
                continue
            mean = metric.compute()
            self.log(f"{prefix}/loss", mean, prog_bar=prefix == stage)
            self.log(f"{prefix}/ppl", mean.exp(), prog_bar=False)
            metric.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.write_sample()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(input_ids).argmax(dim=-1)  # (B, T) the most likely next tokens

    @torch.no_grad()
    def continue_greedy(self, prompt_ids: list[int], new_tokens: int) -> list[int]:
        """The prompt's greedy continuation: the model's own ``generate`` when it has one, else a plain
        loop of full forwards over the last ``max_seq_len`` tokens (fine for a short sample)."""
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)  # (1, T)
        if hasattr(self.model, "generate"):
            out = self.model.generate(ids, max_new_tokens=new_tokens, temperature=0.0)
            return out[0, ids.shape[1]:].tolist()
        context = int(getattr(self.model, "max_seq_len", 0) or 0)
        for _ in range(new_tokens):
            window = ids[:, -context:] if context else ids
            next_id = self.model(window)[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
            ids = torch.cat([ids, next_id], dim=1)
        return ids[0, len(prompt_ids):].tolist()

    def write_sample(self) -> Path | None:
        """Append the greedy sample of this validation to ``samples.txt`` in the run folder."""
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if not self.sample_prompt or not self.sample_tokens or tokenizer is None:
            return None
        was_training = self.model.training
        self.model.eval()
        try:
            text = tokenizer.decode(self.continue_greedy(tokenizer.encode(self.sample_prompt), self.sample_tokens))
        finally:
            self.model.train(was_training)
        self.samples.append(f"--- step {self.global_step}, greedy, prompt {self.sample_prompt!r}\n"
                            f"{self.sample_prompt}{text}\n")
        path = Path(self.trainer.default_root_dir) / "samples.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        content = "\n".join(self.samples)
        atomic_write(path, lambda tmp: Path(tmp).write_text(content, encoding="utf-8"))
        return path
