"""VAR: visual autoregressive modelling by next-scale prediction.

Tian et al., "Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction",
NeurIPS 2024 (arXiv:2404.02905), with the release's names and call signatures
(github.com/FoundationVision/VAR, ``models/var.py``), so ``var_d16.pth`` ... load unchanged.

The image's token pyramid (:class:`zoo.models.vqvae.VQVAE`, scales ``patch_nums``) is one sequence of
L = sum(pn^2) tokens. The first scale's single token is the class embedding (``class_emb``, with a
null class ``num_classes`` for classifier-free guidance) plus ``pos_start``; every later scale's
tokens are the reconstruction so far, area-downsampled to that scale (``word_embed``); all get a
position (``pos_1LC``) and a per-scale embedding (``lvl_embed``). Blocks (``adaln_attn_block``) are
conditioned on the class by AdaLN and see their own scale and all coarser ones (the block-causal
``attn_bias_for_masking``). Sampling runs one scale per step with a KV cache, guidance rising
linearly over the scales (``t = cfg * si / (S - 1)``).

Options from the follow-up work (keyword arguments of :meth:`VAR.autoregressive_infer_cfg` and
:meth:`VAR.sample`, off by default): ``guidance_off_last`` (Switti, Voronov et al. 2024,
arXiv:2412.01819: no guidance, and no unconditional half, on the finest scales),
``local_attn_last`` (Switti's non-autoregressive variant: the finest scales attend only to
themselves), and ``kv_cache`` (``"kivi4"``/``"kivi2"``: KIVI's 4/2-bit cache, Liu et al., ICML 2024;
``"none"``: recompute the prefix at every scale).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.blocks.validation import values_readable
from zoo.blocks.adaln_attn import AdaLNBeforeHead, AdaLNSelfAttn, resolve_attn_impl, scale_block_mask

from ..builder import build_model
from ..checkpoint import CheckpointError
from ..pretrained import PretrainedCfg
from ..registry import register_model, register_pretrained_cfgs, register_submodel
from .kv_cache import ChunkQuantizedKVCache, ConcatKVCache, KVCache
from .var_sampling import check_sampling_args, gumbel_softmax_with_rng, sample_with_top_k_top_p_
from .vqvae import RELEASE_PATCH_NUMS, VQVAE

__all__ = ["VAR", "SampleResult", "sample_with_top_k_top_p_", "gumbel_softmax_with_rng", "checkpoint_filter_fn"]


class SharedAdaLin(nn.Linear):
    """The projection shared by all blocks when ``shared_aln``: (B, D) -> (B, 1, 6, C)."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)  # (B, 1, 6, C)


@dataclass
class SampleResult:
    """What :meth:`VAR.sample` returns: images in [0, 1], the sampled ids per scale, and per scale the
    raw (2B or B, l, V) logits and the guided (B, l, V) logits before top-k/top-p filtering."""

    images: torch.Tensor
    idx_Bl: list[torch.Tensor]
    raw_logits: list[torch.Tensor] = field(default_factory=list)
    guided_logits: list[torch.Tensor] = field(default_factory=list)
    kv_cache_bytes: int = 0


class VAR(nn.Module):
    """The next-scale transformer (Tian et al., NeurIPS 2024).

    Args:
        vae: the :class:`VQVAE` tokenizer (held outside the state dict, as the release); None builds
            the release's ``vqvae_ch160v4096z32`` layout (no weights).
        num_classes: classes; ``class_emb`` has one more row, the null class for guidance.
        depth, embed_dim, num_heads, mlp_ratio: the transformer (VAR-d: width 64*d, d heads).
        drop_rate, attn_drop_rate, drop_path_rate: dropouts; stochastic depth rises over the blocks.
        norm_eps: LayerNorm epsilon. shared_aln: one AdaLN projection for all blocks (VAR-d36).
        cond_drop_rate: probability that ``forward`` replaces a label by the null class (the release
            does it in eval too; pass 0 for deterministic teacher-forcing logits).
        attn_l2_norm: cosine attention with a learnt scale (True in every released model).
        patch_nums: the scale schedule; must equal the tokenizer's (default: the tokenizer's).
        init: apply the release's ``init_weights`` (False when weights are loaded anyway).
        attn_impl: teacher forcing's attention: ``"sdpa"`` (the dense additive mask), ``"flex"``
            (FlexAttention with a ``BlockMask``; forward only on CPU) or ``"auto"`` (flex on CUDA when
            importable, else sdpa). The KV-cached sampler always uses SDPA with no mask.
    """

    pipeline_tag = "unconditional-image-generation"  # the Hugging Face hub's task, for the model card

    def __init__(self, vae: VQVAE | None = None, num_classes: int = 1000, depth: int = 16, embed_dim: int = 1024,
                 num_heads: int = 16, mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, shared_aln: bool = False,
                 cond_drop_rate: float = 0.1, attn_l2_norm: bool = True, patch_nums: Sequence[int] | None = None,
                 init: bool = True, attn_impl: str = "sdpa", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        resolve_attn_impl(attn_impl, "cpu", attn_drop_rate)  # a bad name fails here, before any work
        if attn_impl == "flex" and attn_drop_rate > 0:
            raise ValueError(f"attn_impl='flex' has no attention dropout; set attn_drop_rate=0 (got {attn_drop_rate}) "
                             f"or use attn_impl='sdpa'")
        self.attn_impl, self._block_masks = attn_impl, {}
        if isinstance(vae, (str, os.PathLike)):
            raise TypeError(f"vae={str(vae)!r}: build VAR through zoo.create, which loads a tokenizer named by its file "
                            f"or saved folder, or pass a built VQVAE (zoo.create('vqvae', pretrained=...))")
        if vae is None:
            vae = VQVAE(vocab_size=4096, z_channels=32, ch=160, patch_nums=patch_nums or RELEASE_PATCH_NUMS, **factory)
        if not isinstance(vae, VQVAE):
            raise TypeError(f"vae must be a zoo VQVAE (zoo.create('vqvae', ...)); got {type(vae).__name__}")
        patch_nums = tuple(int(p) for p in (patch_nums or vae.patch_nums))
        if patch_nums[-1] != vae.patch_nums[-1]:
            raise ValueError(f"patch_nums {patch_nums} must end at the tokenizer's {vae.patch_nums[-1]}x"
                             f"{vae.patch_nums[-1]} grid (its patch_nums {vae.patch_nums}); pass patch_nums="
                             f"{vae.patch_nums} or build the VQVAE with this schedule")
        if patch_nums != vae.patch_nums:
            raise ValueError(f"patch_nums {patch_nums} differ from the tokenizer's {vae.patch_nums}; the sampler "
                             f"rebuilds each scale with the tokenizer's schedule, so build both with the same one")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.Cvae, self.V = vae.Cvae, vae.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.num_classes, self.cond_drop_rate, self.prog_si = num_classes, cond_drop_rate, -1
        self.patch_nums = patch_nums
        self.L = sum(pn * pn for pn in patch_nums)
        self.first_l = patch_nums[0] ** 2
        self.begin_ends, cur = [], 0
        for pn in patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        self.num_stages_minus_1 = len(patch_nums) - 1
        self.vae_proxy: tuple[VQVAE] = (vae,)  # a tuple keeps the tokenizer out of the state dict
        self.vae_quant_proxy = (vae.quantize,)

        init_std = math.sqrt(1 / self.C / 3)
        self.word_embed = nn.Linear(self.Cvae, self.C, **factory)
        self.class_emb = nn.Embedding(num_classes + 1, self.C, **factory)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C, **factory))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C, **factory))
        self.lvl_embed = nn.Embedding(len(patch_nums), self.C, **factory)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t, std=init_std)
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(), SharedAdaLin(self.D, 6 * self.C, **factory)) if shared_aln
                               else nn.Identity())
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(self.C, self.D, num_heads, mlp_ratio, shared_aln=shared_aln, attn_l2_norm=attn_l2_norm,
                          drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], norm_eps=norm_eps, **factory)
            for i in range(depth)])
        # each token sees its own scale and the coarser ones; persistent buffers, as in the release files
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(patch_nums)]).view(1, self.L, 1)
        self.register_buffer("lvl_1L", lvl.transpose(1, 2)[:, 0].contiguous().to(factory["device"]))  # (1, L)
        bias = torch.where(lvl >= lvl.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        self.register_buffer("attn_bias_for_masking", bias.to(device=factory["device"]).contiguous())
        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_eps=norm_eps, **factory)
        self.head = nn.Linear(self.C, self.V, **factory)
        if init:
            self.init_weights()

    @property
    def vae(self) -> VQVAE:
        return self.vae_proxy[0]

    @property
    def model_args(self) -> dict:
        """The build arguments ``zoo.create`` records, less the tokenizer (saved on its own)."""
        return self.__dict__.get("_model_args", {})

    @model_args.setter
    def model_args(self, args: dict) -> None:
        # a tokenizer given by path is recorded (the export then loads alone); an object is not
        self.__dict__["_model_args"] = {k: v for k, v in args.items() if k != "init" and
                                        (k != "vae" or isinstance(v, (str, os.PathLike)))}

    def _apply(self, fn: Any, recurse: bool = True) -> VAR:
        """``.to()``, ``.cuda()``, ``.half()`` also move the tokenizer, which the state dict leaves out."""
        self.vae_proxy[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = -1.0) -> None:
        """The release's init as ``build_vae_var`` calls it: truncated normals of std sqrt(1/3C),
        depth-scaled output projections, small AdaLN gains and a small head."""
        std = init_std if init_std >= 0 else (1 / self.C / 3) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                block.ada_lin[-1].weight[2 * self.C:].mul_(init_adaln)
                block.ada_lin[-1].weight[:2 * self.C].mul_(init_adaln_gamma)
                block.ada_lin[-1].bias.zero_()

    def _check_labels(self, label_B: torch.Tensor) -> None:
        if label_B.dtype.is_floating_point or label_B.dtype == torch.bool or label_B.ndim != 1:
            raise ValueError(f"label_B must be a (B,) integer tensor of class ids; got {label_B.dtype} "
                             f"{tuple(label_B.shape)}")
        if label_B.numel() and values_readable(label_B):
            lo, hi = int(label_B.min()), int(label_B.max())
            if lo < 0 or hi > self.num_classes:
                raise ValueError(f"class ids must lie in 0..{self.num_classes - 1} (or {self.num_classes}, the null "
                                 f"class); got values from {lo} to {hi}. The model has num_classes={self.num_classes}")

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(h.float(), cond_BD).float()).float()

    def example_inputs(self, batch: int, size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """A forward's arguments for smoke runs (``python -m zoo check``): labels and a teacher-forcing input
        (the tokenizer's schedule fixes the size, so ``size`` is unused)."""
        labels = torch.randint(0, self.num_classes, (batch,), generator=generator)  # (B,)
        return labels, torch.randn(batch, self.L - self.first_l, self.Cvae, generator=generator)  # (B, L - first_l, Cvae)

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B,) labels and the (B, L - first_l, Cvae) input of
        :meth:`VQVAE.idxBl_to_var_input` -> logits (B, L, V)."""
        self._check_labels(label_B)
        b = x_BLCv_wo_first_l.shape[0]
        if b == 0:
            raise ValueError(f"VAR got an empty batch (B = 0: {tuple(label_B.shape)} labels, input "
                             f"{tuple(x_BLCv_wo_first_l.shape)}); pass at least one label and its input")
        want = (b, self.L - self.first_l, self.Cvae)
        if tuple(x_BLCv_wo_first_l.shape) != want or label_B.shape[0] != b:
            raise ValueError(f"x_BLCv_wo_first_l must be (B, L - first_l, Cvae) = {want} for {b} labels; got "
                             f"{tuple(x_BLCv_wo_first_l.shape)} and {label_B.shape[0]} labels. Build it with "
                             f"vae.idxBl_to_var_input(vae.img_to_idxBl(img))")
        if self.cond_drop_rate > 0:  # the release draws this even in eval
            drop = torch.rand(b, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        sos = cond_BD = self.class_emb(label_B)  # (B, D)
        sos = sos.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)  # (B, l0, C)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)  # (B, L, C)
        x_BLC = x_BLC + (self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC)
        attn_bias = self.attn_bias_for_masking
        if resolve_attn_impl(self.attn_impl, attn_bias.device, self.blocks[0].attn.attn_drop) == "flex":
            attn_bias = self._flex_block_mask(attn_bias.device)
        cond = self.shared_ada_lin(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond, attn_bias)
        return self.get_logits(x_BLC, cond_BD)  # (B, L, V)

    def _flex_block_mask(self, device: torch.device) -> Any:
        """The block-causal ``BlockMask`` for FlexAttention, built once per device."""
        if device.type == "cpu" and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            raise NotImplementedError(f"attn_impl='flex' cannot train on CPU: torch {torch.__version__}'s "
                                      f"FlexAttention has no CPU backward. Use attn_impl='sdpa' (or 'auto') on CPU, "
                                      f"or run the forward under torch.no_grad()")
        if device not in self._block_masks:
            self._block_masks[device] = scale_block_mask(self.lvl_1L[0].to(device))
        return self._block_masks[device]

    @torch.no_grad()
    def teacher_forcing_batch(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> the (B, L) target ids and the (B, L - first_l, Cvae) input of :meth:`forward`."""
        ids = self.vae_proxy[0].img_to_idxBl(img_B3HW)
        return torch.cat(ids, dim=1), self.vae_proxy[0].idxBl_to_var_input(ids)

    def scale_mask(self, length: int | None = None, local_from: int | None = None) -> torch.Tensor:
        """The additive (1, 1, length, length) mask: block-causal over scales (``attn_bias_for_masking``),
        with the tokens of scales >= ``local_from`` seeing only their own scale (Switti's variant)."""
        length = self.L if length is None else length
        if local_from is None or local_from >= len(self.patch_nums):
            return self.attn_bias_for_masking[:, :, :length, :length]
        lvl = self.lvl_1L[0, :length]
        allowed = lvl[:, None] >= lvl[None, :]  # (length, length)
        fine = lvl >= local_from
        allowed[fine] = lvl[fine][:, None] == lvl[None, :]
        return torch.where(allowed, 0.0, -torch.inf)[None, None]

    def loss_per_scale(self, logits_BLV: torch.Tensor, gt_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and top-1 accuracy of each scale (S,), from (B, L, V) logits and (B, L) ids."""
        ce = F.cross_entropy(logits_BLV.flatten(0, 1).float(), gt_BL.flatten(), reduction="none").view_as(gt_BL)
        hit = (logits_BLV.argmax(-1) == gt_BL).float()  # (B, L)
        losses = torch.stack([ce[:, b:e].mean() for b, e in self.begin_ends])
        accs = torch.stack([hit[:, b:e].mean() for b, e in self.begin_ends])
        return losses, accs

    def _labels(self, B: int, label_B: int | torch.Tensor | None, rng: torch.Generator | None) -> torch.Tensor:
        device = self.lvl_1L.device
        if label_B is None:
            uniform = torch.full((1, self.num_classes), 1.0 / self.num_classes, device=device)
            return torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
        if isinstance(label_B, bool):
            raise ValueError(f"label_B must be a class id, a (B,) tensor or list of class ids, or None; got {label_B!r}")
        if isinstance(label_B, int):
            if label_B >= self.num_classes:
                raise ValueError(f"class {label_B} is out of range: the model has num_classes={self.num_classes} "
                                 f"(ids 0..{self.num_classes - 1}; a negative id samples unconditionally)")
            return torch.full((B,), self.num_classes if label_B < 0 else label_B, device=device)
        try:  # a list or tuple of ids is accepted like a tensor
            label_B = torch.as_tensor(label_B, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"label_B must be a class id, a (B,) tensor or list of class ids, or None; got "
                             f"{label_B!r}") from None
        self._check_labels(label_B)
        if label_B.shape[0] != B:
            raise ValueError(f"label_B holds {label_B.shape[0]} labels for B={B} images; give one per image")
        return label_B

    @torch.no_grad()
    def sample(self, B: int, label_B: int | torch.Tensor | None, g_seed: int | None = None, cfg: float = 1.5,
               top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False, guidance_off_last: int = 0,
               local_attn_last: int = 0, kv_cache: Any = None, keep_logits: bool = False) -> SampleResult:
        """Scale-by-scale sampling; returns a :class:`SampleResult` (images in [0, 1], ids, logits).

        The first seven arguments are :meth:`autoregressive_infer_cfg`'s. Options (defaults: the release):
            guidance_off_last: no guidance on the finest N scales; with the dense cache the
                unconditional half is dropped from then on (Switti).
            local_attn_last: the finest N scales attend only to their own tokens (Switti's
                non-autoregressive variant), leaving the cache as it is.
            kv_cache: None (dense tensors, the release), ``'none'`` (no cache: every scale runs the
                whole prefix under the block-causal mask, the baseline the cache saves), a
                :class:`zoo.models.kv_cache.KVCache`, or ``'kivi4'``/``'kivi2'`` (KIVI's quantized cache,
                each scale quantized as it is stored: :class:`zoo.models.kv_cache.ChunkQuantizedKVCache`).
            keep_logits: record each scale's raw (2B or B, l, V) and guided (B, l, V) logits.
        """
        S = len(self.patch_nums)
        if isinstance(B, bool) or not isinstance(B, int) or B < 1:
            raise ValueError(f"B is the number of images to sample and must be an int >= 1; got {B!r}")
        check_sampling_args(cfg, top_k, top_p)
        top_k = min(top_k, self.V)  # top_k >= V keeps everything (the release's 900 on a small vocabulary)
        if not 0 <= guidance_off_last <= S or not 0 <= local_attn_last <= S:
            raise ValueError(f"guidance_off_last and local_attn_last count scales: 0..{S}; got "
                             f"{guidance_off_last}, {local_attn_last}")
        rng = None
        if g_seed is not None:
            rng = torch.Generator(device=self.lvl_1L.device)
            rng.manual_seed(g_seed)
        label_B = self._labels(B, label_B, rng)
        vae, quant = self.vae_proxy[0], self.vae_quant_proxy[0]
        sos = cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))  # (2B, D)
        cond = self.shared_ada_lin(cond_BD)
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)
        next_token_map = (sos.unsqueeze(1).expand(2 * B, self.first_l, -1)
                          + self.pos_start.expand(2 * B, self.first_l, -1) + lvl_pos[:, :self.first_l])  # (2B, l0, C)
        recompute = kv_cache == "none"  # no cache: run the whole prefix again at every scale
        cache = None if recompute else _make_kv_cache(kv_cache, self.depth)
        for i, block in enumerate(self.blocks):
            block.attn.kv_caching(not recompute, cache, i)
        prefix = None
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        result, cur_L, batch = SampleResult(images=f_hat, idx_Bl=[]), 0, 2 * B
        try:
            for si, pn in enumerate(self.patch_nums):
                ratio = si / self.num_stages_minus_1
                cur_L += pn * pn
                guided = si < S - guidance_off_last
                # drop the unconditional half for good (not from a cache that cannot narrow its batch)
                if not guided and batch == 2 * B and (cache is None or isinstance(cache, ConcatKVCache)):
                    batch = B
                    cond_BD, cond, next_token_map = cond_BD[:B], cond[:B], next_token_map[:B]
                    prefix = None if prefix is None else prefix[:B]
                    if cache is not None:
                        cache.keep_batch(B)
                for block in self.blocks:
                    block.attn.attend_current_only = si >= S - local_attn_last
                x = next_token_map
                if recompute:
                    prefix = x if prefix is None else torch.cat((prefix, x), dim=1)  # (batch, cur_L, C)
                    bias, x = self.scale_mask(cur_L, S - local_attn_last).to(x.dtype), prefix
                    for block in self.blocks:
                        x = block(x, cond, bias)
                    x = x[:, cur_L - pn * pn:]  # (batch, l, C)
                else:
                    for block in self.blocks:
                        x = block(x, cond, None)
                raw = logits_BlV = self.get_logits(x, cond_BD)  # (batch, l, V)
                t = cfg * ratio if guided else 0.0
                if batch == 2 * B:
                    logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]  # (B, l, V)
                if keep_logits:
                    result.raw_logits.append(raw.clone())
                    result.guided_logits.append(logits_BlV.clone())
                idx_Bl = sample_with_top_k_top_p_(logits_BlV, top_k=top_k, top_p=top_p, rng=rng)[:, :, 0]  # (B, l)
                result.idx_Bl.append(idx_Bl)
                if not more_smooth:
                    h_BlC = quant.embedding(idx_Bl)  # (B, l, Cvae)
                else:  # the release's visual smoothing (not for FID): soft codes from masked logits
                    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                    soft = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=tau, hard=False, dim=-1, rng=rng)
                    h_BlC = soft @ quant.embedding.weight.unsqueeze(0)  # (B, l, Cvae)
                h_BChw = h_BlC.transpose(1, 2).reshape(B, self.Cvae, pn, pn)  # (B, Cvae, pn, pn)
                f_hat, next_map = quant.get_next_autoregressive_input(si, S, f_hat, h_BChw)
                if si != self.num_stages_minus_1:
                    nxt = self.patch_nums[si + 1]
                    next_map = next_map.view(B, self.Cvae, -1).transpose(1, 2)  # (B, l_next, Cvae)
                    next_token_map = self.word_embed(next_map) + lvl_pos[:, cur_L:cur_L + nxt * nxt]
                    next_token_map = next_token_map.repeat(batch // B, 1, 1)  # (batch, l_next, C)
            result.kv_cache_bytes = int(cache.nbytes()) if cache is not None else 0
        finally:
            for block in self.blocks:
                block.attn.kv_caching(False)
        result.images = vae.fhat_to_img(f_hat).add_(1).mul_(0.5)  # [-1, 1] -> [0, 1]
        return result

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B: int | torch.Tensor | None, g_seed: int | None = None,
                                 cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                                 **options: Any) -> torch.Tensor:
        """The release's sampler: (B, 3, H, W) images in [0, 1].

        Args:
            B: images; label_B: a (B,) tensor of classes, one int for all (negative: unconditional),
                or None (uniformly drawn with the seeded generator).
            g_seed: seeds a fresh generator that every draw uses (labels, multinomial per scale,
                Gumbel noise), as the release; None uses the global RNG.
            cfg: guidance; scale si uses ``t = cfg * si / (S - 1)``: ``(1 + t) cond - t uncond``.
            top_k, top_p: filtering (0: off). more_smooth: Gumbel-softmax soft codes (visual only).
            **options: ``guidance_off_last``, ``local_attn_last``, ``kv_cache`` (see :meth:`sample`).
        """
        return self.sample(B, label_B, g_seed, cfg, top_k, top_p, more_smooth, **options).images


def _make_kv_cache(spec: Any, depth: int) -> KVCache:
    """None (the release's concatenating cache), a cache object, or ``'kivi4'``/``'kivi2'``/``'kivi8'``."""
    if spec is None:
        return ConcatKVCache(depth)
    if not isinstance(spec, str):
        return spec
    match = re.fullmatch(r"kivi([248])", spec)
    if match is None:
        raise ValueError(f"kv_cache must be None (dense), 'none' (recompute), a KVCache, 'kivi4' or 'kivi2'; "
                         f"got {spec!r}")
    # one scale per update: each scale's keys are one group per channel, quantized as soon as stored (no
    # full-precision window, which on a short schedule such as digits' 30 tokens would hold half the cache)
    return ChunkQuantizedKVCache(depth, bits=int(match.group(1)))


def checkpoint_filter_fn(state_dict: dict, model: VAR) -> dict:
    """The release's layout is the model's; this checks what would otherwise fail obscurely: the
    depth, the class count and the scale schedule. A file holding a VAR and its VQVAE (``var.``,
    ``vae.`` prefixes) gives its ``var.`` part."""
    if any(k.startswith("var.") for k in state_dict) and any(k.startswith("vae.") for k in state_dict):
        state_dict = {k[4:]: v for k, v in state_dict.items() if k.startswith("var.")}
    ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(ids) + 1 if ids else 0
    if ids and depth != model.depth:
        raise CheckpointError(f"the checkpoint has {depth} blocks but the model was built with depth={model.depth}; "
                              f"use var_d{depth} or zoo.create('var', depth={depth}, ...)")
    emb = state_dict.get("class_emb.weight")
    if emb is not None and emb.shape[0] != model.num_classes + 1:
        raise CheckpointError(f"the checkpoint has {emb.shape[0] - 1} classes (+1 null class) but the model was "
                              f"built with num_classes={model.num_classes}; pass num_classes={emb.shape[0] - 1}")
    lvl = state_dict.get("lvl_1L")
    if lvl is not None and (lvl.shape != model.lvl_1L.shape or not torch.equal(lvl.cpu(), model.lvl_1L.cpu())):
        raise CheckpointError(f"the checkpoint's scale schedule (lvl_1L over {lvl.shape[-1]} tokens) is not the "
                              f"model's patch_nums {model.patch_nums} (L={model.L}); build it with the schedule "
                              f"it was trained on")
    return dict(state_dict)


_HF = "https://huggingface.co/FoundationVision/var/resolve/main/"  # the release's Hugging Face repo


def _cfg(**kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(**{
        "input_size": (3, 256, 256), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "num_classes": 1000,
        "first_conv": "word_embed", "classifier": "", "paper": "https://arxiv.org/abs/2404.02905",
        "origin_url": "https://github.com/FoundationVision/VAR", "license": "mit",
        "notes": "class-conditional ImageNet 256px; tokenizer vqvae_ch160v4096z32 (vae_ch160v4096z32.pth)",
        **kwargs})


default_cfgs = register_pretrained_cfgs({
    **{f"var_d{d}.release_in1k": _cfg(url=f"{_HF}var_d{d}.pth", filename=f"var_d{d}.pth") for d in (16, 20, 24, 30)},
    "var": _cfg(),
})


def _create(variant: str, pretrained: Any = False, **kwargs: Any) -> VAR:
    if kwargs.pop("features_only", False):
        raise ValueError(f"{variant} is a generator with no feature pyramid")
    if pretrained is not False and pretrained is not None:
        kwargs.setdefault("init", False)  # every weight is overwritten
    return build_model(VAR, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


def _sized(variant: str, depth: int, pretrained: Any, **kwargs: Any) -> VAR:
    # the paper's family: width 64 * depth, depth heads, drop path 0.1 * depth / 24 in training
    return _create(variant, pretrained, **{"depth": depth, "embed_dim": 64 * depth, "num_heads": depth,
                                           "attn_l2_norm": True, **kwargs})


# the tokenizer is built by zoo.create; the release's weights come with the release's tokenizer
_TOKENIZER = register_submodel(
    "vae", "vqvae_ch160v4096z32", with_release_weights=True, test_mode=True,
    hint="train one first (python train.py --config configs/vqvae_digits.yaml writes runs/vqvae_digits/export) or "
         "point vae= at a tokenizer file or exported folder")


@register_model
@_TOKENIZER
def var(pretrained: Any = False, **kwargs: Any) -> VAR:
    """VAR with every argument free (``vae=`` a :class:`VQVAE`; defaults: VAR-d16 on the release tokenizer)."""
    return _create("var", pretrained, **kwargs)


@register_model
@_TOKENIZER
def var_d16(pretrained: Any = False, **kwargs: Any) -> VAR:
    """VAR-d16: 1024 wide, 16 heads, 310.28M parameters (ImageNet 256, FID 3.55)."""
    return _sized("var_d16", 16, pretrained, **kwargs)


@register_model
@_TOKENIZER
def var_d20(pretrained: Any = False, **kwargs: Any) -> VAR:
    """VAR-d20: 1280 wide, 20 heads, 600.92M parameters."""
    return _sized("var_d20", 20, pretrained, **kwargs)


@register_model
@_TOKENIZER
def var_d24(pretrained: Any = False, **kwargs: Any) -> VAR:
    """VAR-d24: 1536 wide, 24 heads, 1.03B parameters."""
    return _sized("var_d24", 24, pretrained, **kwargs)


@register_model
@_TOKENIZER
def var_d30(pretrained: Any = False, **kwargs: Any) -> VAR:
    """VAR-d30: 1920 wide, 30 heads, 2.01B parameters."""
    return _sized("var_d30", 30, pretrained, **kwargs)
