"""VAR's multi-scale residual VQ tokenizer (VQVAE).

Tian et al., "Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction",
NeurIPS 2024 (arXiv:2404.02905), with the release's names (github.com/FoundationVision/VAR,
``models/vqvae.py``, ``basic_vae.py``, ``quant.py``), so ``vae_ch160v4096z32.pth`` loads unchanged.

An image is encoded (the VQGAN/LDM f16 encoder) to a ``Cvae``-channel map f of side
``patch_nums[-1]``. Quantization is residual over scales: for each side ``pn`` of ``patch_nums``
the residual is area-downsampled to pn x pn, each vector snapped to its nearest codebook entry
(the token ids of that scale), the codes upsampled back (bicubic), passed through a ``phi``
convolution (``h * (1 - r) + conv(h) * r``, r = ``quant_resi``; ``share_quant_resi`` convolutions
shared over the scales by their relative position) and added to the reconstruction ``f_hat``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..builder import build_model
from ..checkpoint import CheckpointError
from ..pretrained import PretrainedCfg
from ..registry import register_model, register_pretrained_cfgs
from .vqvae_codec import Decoder, Encoder

__all__ = ["VQVAE", "VectorQuantizer2", "Encoder", "Decoder", "checkpoint_filter_fn", "RELEASE_PATCH_NUMS"]

RELEASE_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


class Phi(nn.Conv2d):
    """``phi(h) = h * (1 - r) + conv3x3(h) * r``: the residual refinement of upsampled codes."""

    def __init__(self, channels: int, quant_resi: float, **factory: Any) -> None:
        super().__init__(channels, channels, 3, padding=1, **factory)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


class PhiPartiallyShared(nn.Module):
    """K ``phi`` convolutions (``qresi_ls``) shared by the scales: scale ``si`` of ``S`` uses the one
    whose tick is nearest ``si / (S - 1)`` (ticks as the release: 1/3K margins for K = 4)."""

    def __init__(self, qresi_ls: nn.ModuleList) -> None:
        super().__init__()
        self.qresi_ls = qresi_ls
        k = len(qresi_ls)
        margin = 1 / 3 / k if k == 4 else 1 / 2 / k
        self.ticks = np.linspace(margin, 1 - margin, k)

    def __getitem__(self, at_from_0_to_1: float) -> nn.Module:
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at_from_0_to_1)))]


class PhiShared(nn.Module):
    """One ``phi`` for every scale (``share_quant_resi=1``)."""

    def __init__(self, qresi: nn.Module) -> None:
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _: float) -> nn.Module:
        return self.qresi


class PhiNonShared(nn.ModuleList):
    """One ``phi`` per scale (``share_quant_resi=0``), picked by the same tick rule."""

    def __init__(self, qresi: list[nn.Module]) -> None:
        super().__init__(qresi)
        k = len(qresi)
        margin = 1 / 3 / k if k == 4 else 1 / 2 / k
        self.ticks = np.linspace(margin, 1 - margin, k)

    def __getitem__(self, at_from_0_to_1: float) -> nn.Module:
        return super().__getitem__(int(np.argmin(np.abs(self.ticks - at_from_0_to_1))))


class VectorQuantizer2(nn.Module):
    """The multi-scale residual quantizer: codebook ``embedding`` (V, Cvae) and the ``phi`` convs."""

    def __init__(self, vocab_size: int, Cvae: int, using_znorm: bool = False, beta: float = 0.25,
                 default_qresi_counts: int = 0, v_patch_nums: Sequence[int] = RELEASE_PATCH_NUMS,
                 quant_resi: float = 0.5, share_quant_resi: int = 4, **factory: Any) -> None:
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm, self.beta = vocab_size, Cvae, using_znorm, beta
        self.v_patch_nums = tuple(v_patch_nums)
        self.quant_resi_ratio = quant_resi

        def phi() -> nn.Module:
            return Phi(Cvae, quant_resi, **factory) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([phi() for _ in range(default_qresi_counts or len(self.v_patch_nums))])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(phi())
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList([phi() for _ in range(share_quant_resi)]))
        # per-scale codebook usage, kept by VQVAE training; stored in the release's checkpoints
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size,
                                                             device=factory.get("device")))
        self.record_hit = 0
        self.embedding = nn.Embedding(vocab_size, Cvae, **factory)

    def phi(self, si: int) -> nn.Module:
        """The ``phi`` of scale ``si``."""
        return self.quant_resi[si / (len(self.v_patch_nums) - 1)]

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """(N, Cvae) vectors -> (N,) nearest codebook ids (L2, or cosine with ``using_znorm``)."""
        codes = self.embedding.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(codes.T, dim=0), dim=1)
        dist = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(codes.square(), dim=1)  # (N, V)
        dist.addmm_(z_NC, codes.T, alpha=-2, beta=1)
        return torch.argmin(dist, dim=1)

    def forward(self, f_BChw: torch.Tensor, ret_usages: bool = False) -> tuple[torch.Tensor, list[float] | None, torch.Tensor]:
        """Training: (B, Cvae, H, W) -> straight-through ``f_hat``, per-scale codebook usage in percent
        (``ret_usages``) and the VQ loss (codebook + beta * commitment, averaged over scales). In
        training mode the per-scale hit counts update ``ema_vocab_hit_SV`` as the release does."""
        f = f_BChw.float()
        b, c, h, w = f.shape
        f_no_grad = f.detach()
        f_rest, f_hat = f_no_grad.clone(), torch.zeros_like(f_no_grad)
        loss = f.new_zeros(())
        last = len(self.v_patch_nums) - 1
        for si, pn in enumerate(self.v_patch_nums):
            rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != last else f_rest
            idx_N = self.nearest(rest.permute(0, 2, 3, 1).reshape(-1, c))  # (B*pn*pn,)
            if self.training:
                hit_V = idx_N.bincount(minlength=self.vocab_size).float()
                ema = self.ema_vocab_hit_SV[si]
                momentum = 0.0 if self.record_hit == 0 else (0.9 if self.record_hit < 100 else 0.99)
                ema.mul_(momentum).add_(hit_V.mul(1 - momentum))
            h_BChw = self.embedding(idx_N.view(b, pn, pn)).permute(0, 3, 1, 2)  # (B, C, pn, pn)
            if si != last:
                h_BChw = F.interpolate(h_BChw, size=(h, w), mode="bicubic")
            h_BChw = self.phi(si)(h_BChw.contiguous())
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw
            loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
        if self.training:
            self.record_hit += 1
        usages = None
        if ret_usages:  # a code counts as used when hit > 8% of a uniform share
            margin = (f.numel() / c) / self.vocab_size * 0.08
            usages = [(self.ema_vocab_hit_SV[si] >= margin).float().mean().item() * 100
                      for si in range(len(self.v_patch_nums))]
        f_hat = (f_hat.detach() - f_no_grad) + f  # straight-through estimator
        return f_hat, usages, loss / len(self.v_patch_nums)

    def f_to_idxBl_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool,
                           v_patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        """(B, Cvae, H, W) -> per scale the (B, pn*pn) ids, or the cumulative ``f_hat`` (B, Cvae, H, W)."""
        b, c, h, w = f_BChw.shape
        pns = tuple(v_patch_nums or self.v_patch_nums)
        if pns[-1] != h or pns[-1] != w:
            raise ValueError(f"patch_nums {pns} must end at the feature map's side {h}x{w} (image side / "
                             f"downsample); pass an image of side {pns[-1]} * downsample or a schedule ending at {h}")
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        last = len(pns) - 1
        for si, pn in enumerate(pns):
            rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != last else f_rest
            idx_N = self.nearest(rest.permute(0, 2, 3, 1).reshape(-1, c))  # (B*pn*pn,)
            h_BChw = self.embedding(idx_N.view(b, pn, pn)).permute(0, 3, 1, 2)  # (B, C, pn, pn)
            if si != last:
                h_BChw = F.interpolate(h_BChw, size=(h, w), mode="bicubic")
            h_BChw = self.quant_resi[si / last](h_BChw.contiguous())
            f_hat.add_(h_BChw)
            f_rest.sub_(h_BChw)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(b, pn * pn))
        return out

    def embed_to_fhat(self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool = True,
                      last_one: bool = False) -> list[torch.Tensor] | torch.Tensor:
        """Per-scale code maps (B, Cvae, pn, pn) -> the cumulative ``f_hat`` after each scale (or the last)."""
        b, side, last = ms_h_BChw[0].shape[0], self.v_patch_nums[-1], len(self.v_patch_nums) - 1
        if not all_to_max_scale:  # the release's experimental coarse-to-fine path
            f_hat = ms_h_BChw[0].new_zeros(b, self.Cvae, self.v_patch_nums[0], self.v_patch_nums[0])
            out = []
            for si, pn in enumerate(self.v_patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic") + self.phi(si)(ms_h_BChw[si])
                out.append(f_hat)
            return out[-1] if last_one else out
        f_hat = ms_h_BChw[0].new_zeros(b, self.Cvae, side, side, dtype=torch.float32)
        out = []
        for si, h_BChw in enumerate(ms_h_BChw):
            if si < last:
                h_BChw = F.interpolate(h_BChw, size=(side, side), mode="bicubic")
            f_hat.add_(self.phi(si)(h_BChw))
            out.append(f_hat.clone())
        return out[-1] if last_one else out

    def idxBl_to_var_input(self, gt_ms_idx_Bl: list[torch.Tensor]) -> torch.Tensor | None:
        """Teacher forcing: per-scale ids -> (B, L - first_l, Cvae), the area-downsampled ``f_hat``
        after scale k at the side of scale k + 1, for k = 0 .. S-2."""
        b, c = gt_ms_idx_Bl[0].shape[0], self.Cvae
        side, last = self.v_patch_nums[-1], len(self.v_patch_nums) - 1
        f_hat = gt_ms_idx_Bl[0].new_zeros(b, c, side, side, dtype=torch.float32)
        next_scales = []
        for si in range(last):
            pn, pn_next = self.v_patch_nums[si], self.v_patch_nums[si + 1]
            h_BChw = self.embedding(gt_ms_idx_Bl[si]).transpose(1, 2).reshape(b, c, pn, pn)  # (B, C, pn, pn)
            f_hat.add_(self.phi(si)(F.interpolate(h_BChw, size=(side, side), mode="bicubic")))
            next_scales.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(b, c, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1) if next_scales else None  # (B, L - first_l, C)

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor,
                                      h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling: add scale ``si``'s codes (B, Cvae, pn, pn) to ``f_hat`` (in place) and return it
        with the next scale's input (``f_hat`` area-downsampled; ``f_hat`` itself after the last)."""
        side = self.v_patch_nums[-1]
        if si != SN - 1:
            f_hat.add_(self.quant_resi[si / (SN - 1)](F.interpolate(h_BChw, size=(side, side), mode="bicubic")))
            pn_next = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
        f_hat.add_(self.quant_resi[si / (SN - 1)](h_BChw))
        return f_hat, f_hat


class VQVAE(nn.Module):
    """VAR's tokenizer (Tian et al., NeurIPS 2024): the LDM f16 autoencoder with the multi-scale
    residual quantizer.

    Args:
        vocab_size, z_channels: codebook size V and code width Cvae (release: 4096, 32).
        ch, ch_mult, num_res_blocks, dropout: the encoder/decoder widths (release: 160,
            (1, 1, 2, 2, 4), 2); the image side is ``patch_nums[-1] * 2 ** (len(ch_mult) - 1)``.
        beta: commitment weight; using_znorm: cosine nearest-neighbour search.
        quant_conv_ks: kernel of ``quant_conv``/``post_quant_conv``.
        quant_resi, share_quant_resi, default_qresi_counts: the ``phi`` convs (ratio 0.5, 4 shared).
        patch_nums: the scale schedule (the release's ``v_patch_nums``).
        test_mode: eval mode and frozen parameters (the release's default, as VAR uses it).
        in_channels: image channels.
    """

    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, dropout: float = 0.0,
                 beta: float = 0.25, using_znorm: bool = False, quant_conv_ks: int = 3, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0,
                 patch_nums: Sequence[int] = RELEASE_PATCH_NUMS, test_mode: bool = True, in_channels: int = 3,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        patch_nums = tuple(int(p) for p in patch_nums)
        if not patch_nums or any(b <= a for a, b in zip(patch_nums, patch_nums[1:])) or patch_nums[0] < 1:
            raise ValueError(f"patch_nums must be positive and increasing, e.g. {RELEASE_PATCH_NUMS}; got {patch_nums}")
        if len(patch_nums) < 2:
            raise ValueError(f"patch_nums needs at least two scales; got {patch_nums}")
        if ch % 32:
            raise ValueError(f"ch={ch} must be a multiple of 32 (GroupNorm with 32 groups); e.g. ch={max(32, ch // 32 * 32)}")
        factory = {"device": device, "dtype": dtype}
        self.test_mode = test_mode
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        self.in_channels = in_channels
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.img_size = patch_nums[-1] * self.downsample
        config = {"ch": ch, "ch_mult": tuple(ch_mult), "num_res_blocks": num_res_blocks, "dropout": dropout,
                  "in_channels": in_channels, "z_channels": z_channels}
        self.encoder = Encoder(**config, **factory)
        self.decoder = Decoder(**config, **factory)
        self.quantize = VectorQuantizer2(vocab_size, z_channels, using_znorm=using_znorm, beta=beta,
                                         default_qresi_counts=default_qresi_counts, v_patch_nums=patch_nums,
                                         quant_resi=quant_resi, share_quant_resi=share_quant_resi, **factory)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, padding=quant_conv_ks // 2, **factory)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, padding=quant_conv_ks // 2, **factory)
        if test_mode:
            self.eval()
            self.requires_grad_(False)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.v_patch_nums

    def _check_image(self, img: torch.Tensor) -> None:
        if img.ndim != 4 or img.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W) in [-1, 1]; got shape {tuple(img.shape)}")
        side = self.patch_nums[-1] * self.downsample
        if img.shape[-2:] != (side, side):
            raise ValueError(f"images must be {side}x{side} (patch_nums[-1]={self.patch_nums[-1]} x downsample "
                             f"{self.downsample}); got {img.shape[-2]}x{img.shape[-1]}. Resize or crop them")

    def example_inputs(self, batch: int, size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        """A forward's arguments for smoke runs (``python -m zoo check``): images in [-1, 1] of the size its
        quantizer's scale schedule fixes (``size`` is unused)."""
        side = self.img_size
        return (torch.rand(batch, self.in_channels, side, side, generator=generator) * 2 - 1,)  # (B, 3, H, W)

    def forward(self, inp: torch.Tensor, ret_usages: bool = False) -> tuple[torch.Tensor, list[float] | None, torch.Tensor]:
        """Training: images in [-1, 1] -> (reconstruction, per-scale usage % or None, VQ loss), as the release."""
        self._check_image(inp)
        f_hat, usages, vq_loss = self.quantize(self.quant_conv(self.encoder(inp)), ret_usages=ret_usages)
        return self.decoder(self.post_quant_conv(f_hat)), usages, vq_loss

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """(B, Cvae, h, w) -> images in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def img_to_idxBl(self, inp_img_no_grad: torch.Tensor,
                     v_patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Images in [-1, 1] (B, 3, H, W) -> per scale the (B, pn*pn) token ids."""
        self._check_image(inp_img_no_grad)
        f = self.quant_conv(self.encoder(inp_img_no_grad))
        return self.quantize.f_to_idxBl_or_fhat(f, to_fhat=False, v_patch_nums=v_patch_nums)

    def idxBl_to_img(self, ms_idx_Bl: list[torch.Tensor], same_shape: bool = True,
                     last_one: bool = False) -> list[torch.Tensor] | torch.Tensor:
        """Per-scale ids -> the images decoded after each scale (or only the last) in [-1, 1]."""
        b = ms_idx_Bl[0].shape[0]
        ms_h = []
        for idx_Bl in ms_idx_Bl:
            pn = round(idx_Bl.shape[1] ** 0.5)
            ms_h.append(self.quantize.embedding(idx_Bl).transpose(1, 2).reshape(b, self.Cvae, pn, pn))  # (B, C, pn, pn)
        return self.embed_to_img(ms_h, all_to_max_scale=same_shape, last_one=last_one)

    def embed_to_img(self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool,
                     last_one: bool = False) -> list[torch.Tensor] | torch.Tensor:
        f_hats = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        return self.fhat_to_img(f_hats) if last_one else [self.fhat_to_img(f) for f in f_hats]

    def img_to_reconstructed_img(self, x: torch.Tensor, v_patch_nums: Sequence[int] | None = None,
                                 last_one: bool = False) -> list[torch.Tensor] | torch.Tensor:
        """Images -> their reconstructions after each scale (or only the last), in [-1, 1]."""
        self._check_image(x)
        f_hats = self.quantize.f_to_idxBl_or_fhat(self.quant_conv(self.encoder(x)), True, v_patch_nums)
        return self.fhat_to_img(f_hats[-1]) if last_one else [self.fhat_to_img(f) for f in f_hats]

    def idxBl_to_var_input(self, gt_ms_idx_Bl: list[torch.Tensor]) -> torch.Tensor | None:
        """The transformer's teacher-forcing input (B, L - first_l, Cvae); see :class:`VectorQuantizer2`."""
        return self.quantize.idxBl_to_var_input(gt_ms_idx_Bl)

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor,
                                      h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantize.get_next_autoregressive_input(si, SN, f_hat, h_BChw)


def checkpoint_filter_fn(state_dict: dict, model: VQVAE) -> dict:
    """The release's layout is the model's. A file holding both a VAR and its VQVAE (keys ``var.``
    and ``vae.``) gives its ``vae.`` part; a usage buffer of another schedule length is reset, as
    the release's ``load_state_dict`` does."""
    if any(k.startswith("vae.") for k in state_dict) and any(k.startswith("var.") for k in state_dict):
        state_dict = {k[4:]: v for k, v in state_dict.items() if k.startswith("vae.")}
    out = dict(state_dict)
    emb = out.get("quantize.embedding.weight")
    if emb is not None and emb.ndim == 2 and emb.shape != (model.vocab_size, model.Cvae):
        raise CheckpointError(f"the checkpoint's codebook is {tuple(emb.shape)} (vocab_size={emb.shape[0]}, "
                              f"z_channels={emb.shape[1]}) but the model was built with vocab_size={model.vocab_size}, "
                              f"z_channels={model.Cvae}; build it with those values")
    hits = out.get("quantize.ema_vocab_hit_SV")
    if hits is not None and hits.shape[0] != len(model.patch_nums):
        out["quantize.ema_vocab_hit_SV"] = model.quantize.ema_vocab_hit_SV.detach().clone()
    return out


_HF = "https://huggingface.co/FoundationVision/var/resolve/main/"  # the release's Hugging Face repo
default_cfgs = register_pretrained_cfgs({
    "vqvae_ch160v4096z32.release": PretrainedCfg(
        url=f"{_HF}vae_ch160v4096z32.pth", filename="vae_ch160v4096z32.pth", input_size=(3, 256, 256), mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5), num_classes=0, first_conv="encoder.conv_in", classifier="",
        paper="https://arxiv.org/abs/2404.02905", origin_url="https://github.com/FoundationVision/VAR",
        license="mit", notes="images in [-1, 1]; tokens at patch_nums 1,2,3,4,5,6,8,10,13,16"),
    "vqvae": PretrainedCfg(input_size=(3, 256, 256), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), num_classes=0,
                           first_conv="encoder.conv_in", classifier="", paper="https://arxiv.org/abs/2404.02905",
                           origin_url="https://github.com/FoundationVision/VAR", license="mit"),
})


def _create(variant: str, pretrained: Any = False, **kwargs: Any) -> VQVAE:
    if kwargs.pop("features_only", False):
        raise ValueError(f"{variant} is a tokenizer with no feature pyramid; use img_to_idxBl / encoder")
    return build_model(VQVAE, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def vqvae(pretrained: Any = False, **kwargs: Any) -> VQVAE:
    """VAR's multi-scale VQVAE with every argument free (defaults: the release's ch=128 base)."""
    return _create("vqvae", pretrained, **kwargs)


@register_model
def vqvae_ch160v4096z32(pretrained: Any = False, **kwargs: Any) -> VQVAE:
    """The released tokenizer: ch 160, vocab 4096, Cvae 32, 256px images at 16x16 tokens (108.95M)."""
    return _create("vqvae_ch160v4096z32", pretrained, **{"ch": 160, "vocab_size": 4096, "z_channels": 32, **kwargs})
