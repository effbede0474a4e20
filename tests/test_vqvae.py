"""VAR's multi-scale VQVAE (Tian et al., NeurIPS 2024): the release's layout, parity with the release's
tiny tokenizer in ../shared/vectors/var/, training mode and bad input."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.checkpoint import CheckpointError


def _layout(module: torch.nn.Module) -> list:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()]


@pytest.fixture(scope="module")
def tiny(vectors):
    """(the tiny VQVAE loaded from the vectors' state file, io tensors, config)."""
    folder = vectors / "var"
    cfg = json.loads((folder / "tiny_d2_config.json").read_text())["config"]
    vae = zoo.create("vqvae", pretrained=str(folder / "tiny_d2_state.safetensors"), vocab_size=cfg["V"],
                     z_channels=cfg["Cvae"], ch=cfg["ch"], share_quant_resi=cfg["share_quant_resi"],
                     quant_resi=cfg["quant_resi"], patch_nums=cfg["patch_nums"])
    return vae, load_file(str(folder / "tiny_d2_io.safetensors")), cfg


def test_release_layout_and_size(vectors):
    """vae_ch160v4096z32.pth: every key, shape and dtype in the release's order; 108.95M parameters."""
    ref = json.loads((vectors / "var" / "vqvae_ch160v4096z32_keys.json").read_text())
    with torch.device("meta"):
        vae = zoo.create("vqvae_ch160v4096z32")
    assert _layout(vae) == ref["state_dict"]
    assert sum(p.numel() for p in vae.parameters()) == ref["config"]["n_params"] == 108_948_355
    assert sum(p.numel() for p in vae.encoder.parameters()) == ref["config"]["enc_params"]
    assert vae.downsample == ref["config"]["downsample"] and vae.img_size == 256
    cfg = zoo.get_pretrained_cfg("vqvae_ch160v4096z32")
    assert cfg.filename == "vae_ch160v4096z32.pth" and "FoundationVision/var" in cfg.url


def test_tokenizer_parity(tiny):
    vae, io, cfg = tiny
    img = io["input.img_B3HW"]
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())  # test_mode, as the release
    with torch.no_grad():
        ids = vae.img_to_idxBl(img)
        assert [i.shape[1] for i in ids] == [pn * pn for pn in cfg["patch_nums"]]
        assert torch.equal(torch.cat(ids, 1), io["vae.gt_idx_BL"])
        assert len(torch.cat(ids, 1).unique()) >= 5  # the ids are not degenerate (8 distinct codes)
        torch.testing.assert_close(vae.idxBl_to_var_input(ids), io["var.x_BLCv_wo_first_l"], atol=1e-6, rtol=0)
        f = vae.quant_conv(vae.encoder(img))
        f_hat = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)[-1]
        torch.testing.assert_close(f_hat, io["vae.fhat_last_BChw"], atol=1e-6, rtol=0)
        recon = vae.fhat_to_img(f_hat)
        torch.testing.assert_close(recon, io["vae.recon_B3HW"], atol=5e-5, rtol=0)  # measured 1.8e-5
        # ids -> image goes through the same f_hat (the decoder magnifies float noise of the memory layout)
        b = img.shape[0]
        codes = [vae.quantize.embedding(i).transpose(1, 2).reshape(b, vae.Cvae, pn, pn)
                 for i, pn in zip(ids, cfg["patch_nums"])]
        torch.testing.assert_close(vae.quantize.embed_to_fhat(codes, last_one=True), f_hat, atol=1e-6, rtol=0)
        torch.testing.assert_close(vae.idxBl_to_img(ids, same_shape=True, last_one=True), recon, atol=1e-4, rtol=0)
        torch.testing.assert_close(vae.img_to_reconstructed_img(img, last_one=True), recon, atol=0, rtol=0)


def test_next_autoregressive_input_rebuilds_teacher_forcing(tiny):
    """Feeding the ids scale by scale (the sampler's path) gives the teacher-forcing input and f_hat."""
    vae, io, cfg = tiny
    ids = io["vae.gt_idx_BL"].split([pn * pn for pn in cfg["patch_nums"]], dim=1)
    b, S = ids[0].shape[0], len(cfg["patch_nums"])
    f_hat = torch.zeros(b, vae.Cvae, cfg["patch_nums"][-1], cfg["patch_nums"][-1])
    inputs = []
    with torch.no_grad():
        for si, pn in enumerate(cfg["patch_nums"]):
            h = vae.quantize.embedding(ids[si]).transpose(1, 2).reshape(b, vae.Cvae, pn, pn)
            f_hat, nxt = vae.get_next_autoregressive_input(si, S, f_hat, h)
            if si < S - 1:
                inputs.append(nxt.flatten(2).transpose(1, 2))
    torch.testing.assert_close(torch.cat(inputs, 1), io["var.x_BLCv_wo_first_l"], atol=1e-6, rtol=0)
    torch.testing.assert_close(f_hat, io["vae.fhat_last_BChw"], atol=1e-6, rtol=0)


def test_training_mode_has_gradients_and_counts_codes():
    torch.manual_seed(0)
    vae = zoo.create("vqvae", vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                     patch_nums=(1, 2, 4), test_mode=False)
    assert vae.training and vae.img_size == 8
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    recon, usages, vq_loss = vae(x, ret_usages=True)
    assert recon.shape == x.shape and vq_loss.ndim == 0 and vq_loss > 0
    assert len(usages) == 3 and all(0 <= u <= 100 for u in usages)
    assert vae.quantize.ema_vocab_hit_SV.sum(1).tolist() == [2.0, 8.0, 32.0]  # one hit per token, per scale
    (recon.square().mean() + vq_loss).backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert vae.quantize.embedding.weight.grad.abs().sum() > 0  # codebook loss
    assert vae.quantize.quant_resi.qresi_ls[0].weight.grad is not None


def test_bad_input(tiny, tmp_path):
    vae, io, cfg = tiny
    with pytest.raises(ValueError, match="64x64"):
        vae.img_to_idxBl(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match="increasing"):
        zoo.create("vqvae", ch=32, patch_nums=(1, 3, 2))
    with pytest.raises(ValueError, match="must end at"):
        vae.quantize.f_to_idxBl_or_fhat(torch.zeros(1, cfg["Cvae"], 4, 4), False, v_patch_nums=(1, 2, 5))
    path = tmp_path / "vae.safetensors"
    ckpt = {k: v.clone() for k, v in vae.state_dict().items()}
    save_file(ckpt, str(path))
    with pytest.raises(CheckpointError, match="vocab_size=64"):
        zoo.create("vqvae", pretrained=str(path), vocab_size=32, z_channels=cfg["Cvae"], ch=cfg["ch"],
                   patch_nums=cfg["patch_nums"])
    del ckpt["quant_conv.bias"]
    save_file(ckpt, str(path))
    with pytest.raises(CheckpointError, match="quant_conv.bias"):
        zoo.create("vqvae", pretrained=str(path), vocab_size=cfg["V"], z_channels=cfg["Cvae"], ch=cfg["ch"],
                   patch_nums=cfg["patch_nums"])
