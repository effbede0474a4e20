"""VAR (Tian et al., NeurIPS 2024): the release's layouts and sizes, parity of teacher forcing and of the
seeded KV-cached sampler with the release's tiny model in ../shared/vectors/var/, the follow-up sampling
options, the ``sample`` command and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from zoo import blocks
import zoo
from zoo.checkpoint import CheckpointError
from zoo.models.var import VAR

# measured with kernels.adaln_modulate: 1.8e-7 on teacher-forcing logits, 3e-7 / 8e-7 on the sampler's raw /
# guided logits (0 with the plain-PyTorch formula), 1.1e-5 / 1.3e-5 on sampled / smoothed images (decoder)
ATOL = 1e-5


def _layout(module: torch.nn.Module) -> list:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()]


@pytest.fixture(scope="module")
def tiny(vectors):
    """(VAR loaded through zoo.create(pretrained=<file>), io tensors, config, the state file)."""
    folder = vectors / "var"
    meta = json.loads((folder / "tiny_d2_config.json").read_text())
    cfg, state = meta["config"], str(folder / "tiny_d2_state.safetensors")
    vae = zoo.create("vqvae", pretrained=state, vocab_size=cfg["V"], z_channels=cfg["Cvae"], ch=cfg["ch"],
                     share_quant_resi=cfg["share_quant_resi"], quant_resi=cfg["quant_resi"],
                     patch_nums=cfg["patch_nums"])
    model = zoo.create("var", pretrained=state, vae=vae, num_classes=cfg["num_classes"], depth=cfg["depth"],
                       embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
                       shared_aln=cfg["shared_aln"], attn_l2_norm=cfg["attn_l2_norm"], patch_nums=cfg["patch_nums"],
                       cond_drop_rate=0.0).eval()
    return model, load_file(str(folder / "tiny_d2_io.safetensors")), meta, state


@pytest.mark.parametrize("name", ["var_d16", "var_d36_saln"])
def test_release_layouts(vectors, name):
    """Every key, shape and dtype of the released checkpoints, in order (buffers included)."""
    ref = json.loads((vectors / "var" / f"{name}_keys.json").read_text())
    c = ref["config"]
    with torch.device("meta"):
        if name == "var_d16":
            model = zoo.create("var_d16")
        else:  # the 512px tokenizer schedule
            vae = zoo.create("vqvae", ch=160, patch_nums=c["patch_nums"])
            model = zoo.create("var", vae=vae, depth=c["depth"], embed_dim=c["width"], num_heads=c["heads"],
                               shared_aln=True)
    assert _layout(model) == ref["state_dict"]
    assert len(model.state_dict()) == c["n_state_keys"] and model.L == c["L"]
    assert sum(p.numel() for p in model.parameters()) == c["n_params"]


def test_paper_sizes(vectors):
    """var_d16 ... d30 at width 64 * depth, depth heads: the release's parameter counts exactly."""
    real = json.loads((vectors / "var" / "summary.json").read_text())["real_models"]
    for depth in (16, 20, 24, 30):
        with torch.device("meta"):
            model = zoo.create(f"var_d{depth}")
        c = real[f"var_d{depth}"]
        assert (model.C, model.num_heads, model.depth) == (c["width"], c["heads"], c["depth"])
        assert sum(p.numel() for p in model.parameters()) == c["n_params"]
        assert len(model.state_dict()) == c["n_state_keys"]
        cfg = zoo.get_pretrained_cfg(f"var_d{depth}")
        assert cfg.filename == f"var_d{depth}.pth" and "FoundationVision/var" in cfg.url
    assert sum(p.numel() for p in zoo.create("var_d16", device="meta").parameters()) == 310_283_520


def test_buffers_are_the_release_masks(tiny):
    model, _, meta, _ = tiny
    assert model.L == meta["L"] and model.begin_ends == [tuple(be) for be in meta["begin_ends"]]
    assert model.lvl_1L.tolist() == [[0] + [1] * 4 + [2] * 9 + [3] * 16]
    bias = model.attn_bias_for_masking[0, 0]
    assert bias[4, 4] == 0 and bias[1, 4] == 0 and bias[0, 1] == -torch.inf and bias[13, 14] == -torch.inf
    assert torch.equal(bias == 0, (model.lvl_1L.T >= model.lvl_1L))  # block-causal over scales


def test_teacher_forcing_parity(tiny):
    model, io, meta, _ = tiny
    vae, label = model.vae, io["input.label_B"]
    with torch.no_grad():
        ids = vae.img_to_idxBl(io["input.img_B3HW"])
        assert torch.equal(torch.cat(ids, 1), io["vae.gt_idx_BL"])
        x = vae.idxBl_to_var_input(ids)
        torch.testing.assert_close(x, io["var.x_BLCv_wo_first_l"], atol=1e-6, rtol=0)
        logits = model(label, x)
        uncond = model(torch.full_like(label, model.num_classes), x)
    torch.testing.assert_close(logits, io["var.logits_BLV"], atol=ATOL, rtol=0)
    torch.testing.assert_close(uncond, io["var.logits_uncond_BLV"], atol=ATOL, rtol=0)
    assert (logits - uncond).abs().max() > 1e-2  # the class matters
    loss = F.cross_entropy(logits.flatten(0, 1), torch.cat(ids, 1).flatten())
    assert loss.item() == pytest.approx(meta["loss"], abs=1e-5)
    torch.testing.assert_close(loss.view(1), io["var.loss"], atol=1e-5, rtol=0)


def test_sampler_parity(tiny):
    """Seeded KV-cached sampling (g_seed 0, cfg 1.5, top_k 10, top_p 0.9): the release's ids, logits and
    images, which needs its RNG use exactly (one generator: multinomial per scale, Gumbel when smooth)."""
    model, io, meta, _ = tiny
    args = meta["sampler_args"]
    label = torch.tensor(args["label_B"])
    result = model.sample(args["B"], label, g_seed=args["g_seed"], cfg=args["cfg"], top_k=args["top_k"],
                          top_p=args["top_p"], keep_logits=True)
    assert torch.equal(torch.cat(result.idx_Bl, 1), io["sample.idx_BL"])
    torch.testing.assert_close(torch.cat(result.raw_logits, 1), io["sample.raw_logits_2BLV"], atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat(result.guided_logits, 1), io["sample.cfg_logits_BLV"], atol=ATOL, rtol=0)
    torch.testing.assert_close(result.images, io["sample.img_B3HW"], atol=5e-5, rtol=0)
    assert 0 <= result.images.min() and result.images.max() <= 1
    images = model.autoregressive_infer_cfg(2, label, g_seed=0, cfg=1.5, top_k=10, top_p=0.9)
    assert torch.equal(images, result.images)  # repeatable
    smooth = model.autoregressive_infer_cfg(2, label, g_seed=0, cfg=1.5, top_k=10, top_p=0.9, more_smooth=True)
    torch.testing.assert_close(smooth, io["sample_smooth.img_B3HW"], atol=5e-5, rtol=0)
    drawn = [model.sample(3, None, g_seed=7, cfg=1.5, top_k=10).idx_Bl[-1] for _ in range(2)]
    assert torch.equal(drawn[0], drawn[1])  # labels drawn from the seeded generator too
    other = model.sample(2, label, g_seed=1, cfg=1.5, top_k=10, top_p=0.9)
    assert not torch.equal(torch.cat(other.idx_Bl, 1), io["sample.idx_BL"])  # the seed matters


def test_kv_cached_sampler_matches_teacher_forcing(tiny):
    """The sampler's per-scale logits equal teacher forcing on its own samples (conditional and null class)."""
    model, _, _, _ = tiny
    label = torch.tensor([1, 8, 3])
    result = model.sample(3, label, g_seed=5, cfg=2.0, top_k=20, top_p=0.95, keep_logits=True)
    raw = torch.cat(result.raw_logits, 1)  # (2B, L, V)
    with torch.no_grad():
        x = model.vae.idxBl_to_var_input(result.idx_Bl)
        cond = model(label, x)
        uncond = model(torch.full_like(label, model.num_classes), x)
    torch.testing.assert_close(raw[:3], cond, atol=ATOL, rtol=0)
    torch.testing.assert_close(raw[3:], uncond, atol=ATOL, rtol=0)


def test_switti_options(tiny):
    model, io, _, _ = tiny
    label, S = io["input.label_B"], len(model.patch_nums)
    base = dict(g_seed=0, top_k=10, top_p=0.9)
    # no guidance anywhere is cfg=0 (and skips the unconditional half)
    off = model.sample(2, label, cfg=1.5, guidance_off_last=S, keep_logits=True, **base)
    plain = model.sample(2, label, cfg=0.0, **base)
    assert torch.equal(torch.cat(off.idx_Bl, 1), torch.cat(plain.idx_Bl, 1))
    assert all(r.shape[0] == 2 for r in off.raw_logits)
    # guidance off on the last scale only: the coarser scales are the release's samples
    last = model.sample(2, label, cfg=1.5, guidance_off_last=1, **base)
    assert torch.equal(torch.cat(last.idx_Bl[:-1], 1), io["sample.idx_BL"][:, :14])
    # local attention on the last 2 scales = teacher forcing with those scales' tokens seeing only themselves
    local = model.sample(2, label, cfg=1.5, local_attn_last=2, keep_logits=True, **base)
    assert torch.equal(torch.cat(local.idx_Bl[:2], 1), io["sample.idx_BL"][:, :5])
    lvl = model.lvl_1L[0]
    mask = lvl[:, None] >= lvl[None, :]
    fine = lvl >= S - 2
    mask[fine] = lvl[fine][:, None] == lvl[None, :]
    assert torch.equal(model.scale_mask(local_from=S - 2)[0, 0] == 0, mask)
    saved = model.attn_bias_for_masking.clone()
    try:
        model.attn_bias_for_masking.copy_(torch.where(mask, 0.0, -torch.inf).view_as(saved))
        with torch.no_grad():
            want = model(label, model.vae.idxBl_to_var_input(local.idx_Bl))
    finally:
        model.attn_bias_for_masking.copy_(saved)
    torch.testing.assert_close(torch.cat(local.raw_logits, 1)[:2], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("options", [{}, {"guidance_off_last": 1, "local_attn_last": 2}])
def test_kv_cache_equals_recomputing_every_scale(tiny, options):
    model, io, _, _ = tiny
    label = io["input.label_B"]
    cached = model.sample(2, label, g_seed=0, cfg=1.5, top_k=10, top_p=0.9, keep_logits=True, **options)
    full = model.sample(2, label, g_seed=0, cfg=1.5, top_k=10, top_p=0.9, keep_logits=True, kv_cache="none",
                        **options)
    assert torch.equal(torch.cat(full.idx_Bl, 1), torch.cat(cached.idx_Bl, 1))
    for a, b in zip(full.raw_logits, cached.raw_logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert full.kv_cache_bytes == 0 and cached.kv_cache_bytes > 0
    if not options:
        assert torch.equal(torch.cat(full.idx_Bl, 1), io["sample.idx_BL"])


@pytest.mark.parametrize("bits", [4, 2])
def test_quantized_kv_cache(tiny, bits):
    """The KIVI cache quantizes each scale as it is stored (keys per channel over the scale's tokens,
    values per token in groups of 64 channels): the same samples as the dense cache on the tiny model,
    logits a little off from the second scale on, at 0.274x (4 bits) or 0.211x (2 bits) of its bytes."""
    model, io, _, _ = tiny
    label = io["input.label_B"]
    dense = model.sample(2, label, g_seed=0, cfg=1.5, top_k=10, top_p=0.9, keep_logits=True)
    kivi = model.sample(2, label, g_seed=0, cfg=1.5, top_k=10, top_p=0.9, kv_cache=f"kivi{bits}", keep_logits=True)
    assert torch.equal(torch.cat(kivi.idx_Bl, 1), io["sample.idx_BL"])
    torch.testing.assert_close(kivi.images, dense.images, atol=ATOL, rtol=0)
    # the first scale attends to itself at full precision; later scales read the past dequantized
    assert torch.equal(kivi.raw_logits[0], dense.raw_logits[0])
    errors = [float((a - b).abs().max()) for a, b in zip(kivi.raw_logits[1:], dense.raw_logits[1:])]
    assert all(1e-5 < e < (3e-3 if bits == 4 else 2e-2) for e in errors), errors
    rows, heads, head_dim = 4, model.num_heads, model.C // model.num_heads  # 2B rows under guidance
    key_bytes = sum(pn * pn * head_dim * bits // 8 + 2 * head_dim * 4 for pn in model.patch_nums)  # fp32 stats
    value_bytes = model.L * (head_dim * bits // 8 + 2 * 4)  # one group of 64 channels per token and head
    assert kivi.kv_cache_bytes == model.depth * rows * heads * (key_bytes + value_bytes)
    assert dense.kv_cache_bytes == model.depth * 2 * rows * model.L * model.C * 4  # K and V, 2B rows, fp32
    assert kivi.kv_cache_bytes / dense.kv_cache_bytes == pytest.approx(0.27396 if bits == 4 else 0.21146, abs=1e-5)
    with pytest.raises(ValueError, match="kivi4"):
        model.sample(1, 0, kv_cache="kivi3")


def test_block_registry_and_kernel_formula():
    block = blocks.create("adaln_attn_block", 32, cond_dim=16, num_heads=2, mlp_ratio=2.0)
    head = blocks.create("adaln_before_head", 32, cond_dim=16)
    x, cond = torch.randn(2, 5, 32), torch.randn(2, 16)
    assert block(x, cond, None).shape == (2, 5, 32) and head(x, cond).shape == (2, 5, 32)
    scale, shift = torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    want = F.layer_norm(x, (32,), eps=1e-6) * (1 + scale) + shift
    torch.testing.assert_close(blocks.adaln_attn.adaln_modulate(x, scale, shift, 1e-6), want)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        blocks.create("adaln_attn_block", 30, num_heads=4)


def test_training_gradients_and_label_dropping(tiny):
    model, io, _, _ = tiny
    x = io["var.x_BLCv_wo_first_l"]
    net = zoo.create("var", vae=model.vae, num_classes=10, depth=2, embed_dim=64, num_heads=2, cond_drop_rate=1.0)
    logits = net(io["input.label_B"], x)
    null = net(torch.full_like(io["input.label_B"], 10), x)
    torch.testing.assert_close(logits, null, atol=0, rtol=0)  # every label dropped to the null class
    F.cross_entropy(logits.flatten(0, 1), io["vae.gt_idx_BL"].flatten()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    assert not any(p.grad is not None for p in net.vae.parameters())  # the tokenizer is frozen


def test_loss_per_scale_and_moving_the_tokenizer(tiny):
    model, io, meta, _ = tiny
    gt, x = model.teacher_forcing_batch(io["input.img_B3HW"])
    assert torch.equal(gt, io["vae.gt_idx_BL"]) and torch.equal(x, io["var.x_BLCv_wo_first_l"])
    with torch.no_grad():
        logits = model(io["input.label_B"], x)
    losses, accs = model.loss_per_scale(logits, gt)
    assert losses.shape == accs.shape == (4,)
    sizes = torch.tensor([pn * pn for pn in model.patch_nums], dtype=torch.float)
    assert (losses * sizes).sum() / sizes.sum() == pytest.approx(meta["loss"], abs=1e-5)  # token-weighted mean
    assert ((0 <= accs) & (accs <= 1)).all()
    net = zoo.create("var", vae=zoo.create("vqvae", vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2),
                                           num_res_blocks=1, patch_nums=(1, 2)),
                     num_classes=3, depth=1, embed_dim=32, num_heads=2)
    net.to(torch.float64)
    assert net.head.weight.dtype == net.vae.decoder.conv_out.weight.dtype == torch.float64


def test_forward_traces_as_one_graph(tiny):
    """torch.compile(fullgraph=True): the label check and the AdaLN custom op trace (aot_eager, as CI)."""
    model, io, _, _ = tiny
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        logits = compiled(io["input.label_B"], io["var.x_BLCv_wo_first_l"])
    torch.testing.assert_close(logits, io["var.logits_BLV"], atol=ATOL, rtol=0)


def test_quantized_transformer(tiny):
    """quant='w8a8': the transformer's linear layers in int8 (the tokenizer stays float), logits close."""
    model, io, meta, state = tiny
    c = meta["config"]
    net = zoo.create("var", pretrained=state, vae=model.vae, num_classes=c["num_classes"], depth=c["depth"],
                     embed_dim=c["embed_dim"], num_heads=c["num_heads"], cond_drop_rate=0.0, quant="w8a8").eval()
    quantized = {r.name for r in net.quant_report if r.action == "quantized"}
    assert {"blocks.0.attn.mat_qkv", "blocks.1.ffn.fc2", "blocks.1.ada_lin.1"} <= quantized
    assert type(net.vae.decoder.conv_out) is torch.nn.Conv2d
    with torch.no_grad():
        logits = net(io["input.label_B"], io["var.x_BLCv_wo_first_l"])
    err = (logits - io["var.logits_BLV"]).abs().max()
    assert 0 < err < 1e-2  # measured 1.3e-3 (logits up to 0.86)
    assert net.autoregressive_infer_cfg(2, 3, g_seed=0, top_k=10).shape == (2, 3, 64, 64)


def test_bad_input(tiny, tmp_path):
    model, io, meta, state = tiny
    x = io["var.x_BLCv_wo_first_l"]
    with pytest.raises(ValueError, match="0..9"):
        model(torch.tensor([3, 11]), x)
    with pytest.raises(ValueError, match="num_classes=10"):
        model.autoregressive_infer_cfg(2, 10)
    with pytest.raises(ValueError, match="idxBl_to_var_input"):
        model(io["input.label_B"], x[:, :-1])
    with pytest.raises(ValueError, match="must end at the tokenizer's 4x4"):
        zoo.create("var", vae=model.vae, num_classes=10, depth=2, embed_dim=64, num_heads=2, patch_nums=(1, 2, 3, 5))
    with pytest.raises(ValueError, match="differ from the tokenizer"):
        zoo.create("var", vae=model.vae, num_classes=10, depth=2, embed_dim=64, num_heads=2, patch_nums=(1, 2, 4))
    with pytest.raises(CheckpointError, match="2 blocks .* depth=3"):
        zoo.create("var", pretrained=state, vae=model.vae, num_classes=10, depth=3, embed_dim=128, num_heads=2)
    with pytest.raises(CheckpointError, match="num_classes=10"):
        zoo.create("var", pretrained=state, vae=model.vae, num_classes=7, depth=2, embed_dim=128, num_heads=2)
    partial = {k[4:]: v for k, v in load_file(state).items() if k.startswith("var.") and k != "var.head.bias"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): head.bias"):
        zoo.create("var", pretrained=str(tmp_path / "partial.safetensors"), vae=model.vae, num_classes=10, depth=2,
                   embed_dim=128, num_heads=2)


def test_sample_command_writes_a_grid(tiny, tmp_path):
    """``python -m zoo sample`` on the tiny model saved as zoo folders."""
    from PIL import Image

    from zoo.__main__ import main

    model, _, meta, _ = tiny
    c = meta["config"]
    zoo.save_pretrained(model.vae, tmp_path / "vae")
    zoo.save_pretrained(model, tmp_path / "var")  # records the build arguments, not the tokenizer
    saved = json.loads((tmp_path / "var" / "config.json").read_text())["model_args"]
    assert "vae" not in saved and saved["depth"] == c["depth"] and saved["embed_dim"] == c["embed_dim"]
    out = tmp_path / "grid.png"
    rc = main(["sample", "--model", "var", "--weights", str(tmp_path / "var"), "--vae", str(tmp_path / "vae"),
               "--class", "3", "--n", "4", "--cfg", "1.5", "--top-k", "10", "--top-p", "0.9", "--seed", "0", str(out)])
    assert rc == 0 and out.is_file()
    grid = torch.tensor(np.array(Image.open(out))).float() / 255  # (H, W, 3)
    assert grid.shape == (2 + 2 * 66, 2 + 2 * 66, 3)
    images = model.autoregressive_infer_cfg(4, 3, g_seed=0, cfg=1.5, top_k=10, top_p=0.9)
    torch.testing.assert_close(grid[2:66, 2:66].permute(2, 0, 1), images[0], atol=1 / 255 + 1e-6, rtol=0)
    assert main(["sample", "--model", "var", "--weights", str(tmp_path / "var"), "--vae", str(tmp_path / "vae"),
                 "--class", "10", str(out)]) == 2  # out of range: a clear error, exit code 2
    assert isinstance(zoo.create("var", pretrained=str(tmp_path / "var"), vae=model.vae), VAR)


def _with_attn_impl(tiny, attn_impl: str, device: str = "cpu") -> VAR:
    """The tiny release model rebuilt through zoo.create with another ``attn_impl``."""
    model, _, meta, state = tiny
    cfg = meta["config"]
    return zoo.create("var", pretrained=state, vae=model.vae, num_classes=cfg["num_classes"], depth=cfg["depth"],
                      embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
                      shared_aln=cfg["shared_aln"], attn_l2_norm=cfg["attn_l2_norm"], patch_nums=cfg["patch_nums"],
                      cond_drop_rate=0.0, attn_impl=attn_impl).to(device).eval()


@pytest.mark.filterwarnings("ignore:.*flex_attention.*")
def test_flex_attention_matches_sdpa(tiny):
    """FlexAttention with the block-causal BlockMask gives SDPA's logits; CPU has its forward only, so
    training with it there is refused with the fix; "auto" keeps SDPA on CPU; the sampler is unchanged."""
    model, io, _, _ = tiny
    label, x = io["input.label_B"], io["var.x_BLCv_wo_first_l"]
    flex = _with_attn_impl(tiny, "flex")
    assert flex.attn_impl == "flex" and flex.model_args["attn_impl"] == "flex"
    with torch.no_grad():
        want, got = model(label, x), flex(label, x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got, io["var.logits_BLV"], atol=ATOL, rtol=0)
    mask = flex._block_masks[torch.device("cpu")]  # the BlockMask is the release's dense mask
    dense = mask.to_dense()[0, 0].bool()  # (L, L) at the mask's 128-token block size: one block here
    assert dense.all() and mask.mask_mod(0, 0, torch.tensor(1), torch.tensor(4)).item()
    assert not mask.mask_mod(0, 0, torch.tensor(1), torch.tensor(5)).item()  # scale 1 does not see scale 2
    assert mask.mask_mod(0, 0, torch.tensor(13), torch.tensor(0)).item()
    with pytest.raises(NotImplementedError, match="attn_impl='sdpa'"):
        flex(label, x)  # grad enabled on CPU: FlexAttention has no CPU backward
    assert _with_attn_impl(tiny, "auto").attn_impl == "auto"
    with torch.no_grad():  # auto is SDPA on CPU: bit-identical to the default
        assert torch.equal(_with_attn_impl(tiny, "auto")(label, x), want)
        a = model.autoregressive_infer_cfg(2, label, g_seed=0, cfg=1.5, top_k=5)
        b = flex.autoregressive_infer_cfg(2, label, g_seed=0, cfg=1.5, top_k=5)
    assert torch.equal(a, b)  # the KV-cached sampler keeps SDPA
    block = model.blocks[0]
    block.attn.kv_caching(True)
    try:
        with pytest.raises(ValueError, match="full-sequence"):
            block(torch.zeros(1, model.L, model.C), torch.zeros(1, model.D), mask)
    finally:
        block.attn.kv_caching(False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
def test_flex_attention_backward_matches_sdpa_on_cuda(tiny):
    _, io, _, _ = tiny
    label, x = io["input.label_B"].cuda(), io["var.x_BLCv_wo_first_l"].cuda()
    grads = []
    for impl in ("sdpa", "flex"):
        net = _with_attn_impl(tiny, impl, "cuda")
        logits = net(label, x)
        F.cross_entropy(logits.flatten(0, 1), io["vae.gt_idx_BL"].cuda().flatten()).backward()
        grads.append((logits.detach(), [p.grad for p in net.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=ATOL, rtol=0)
    for g_flex, g_sdpa in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g_flex, g_sdpa, atol=ATOL, rtol=1e-4)


def test_attn_impl_bad_value(tiny):
    model = tiny[0]
    with pytest.raises(ValueError, match=r"attn_impl must be one of \('sdpa', 'flex', 'auto'\); got 'flash'"):
        zoo.create("var", vae=model.vae, num_classes=10, depth=2, embed_dim=64, num_heads=2, attn_impl="flash")
    with pytest.raises(ValueError, match="no attention dropout"):
        zoo.create("var", vae=model.vae, num_classes=10, depth=2, embed_dim=64, num_heads=2, attn_impl="flex",
                   attn_drop_rate=0.1)
