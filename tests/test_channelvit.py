"""ChannelViT (Bao et al., ICLR 2024): parity with the release's vectors, both release layouts, channel
subsets, Hierarchical Channel Sampling, the ViT baseline and errors."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import timm
import torch
from einops import rearrange
from safetensors.torch import load_file

from zoo import blocks
import zoo
from zoo.checkpoint import CheckpointError, fit_state_dict
from zoo.models.channelvit import checkpoint_filter_fn

# the vectors' config: the release's HCS class at img 32, patch 8, 5 channels, dim 48, depth 2, 3 heads
TINY = {"img_size": 32, "patch_size": 8, "in_chans": 5, "embed_dim": 48, "depth": 2, "num_heads": 3}
CASES = {"all": ("input_x", [0, 1, 2, 3, 4]), "subset": ("input_x", [0, 2, 3]), "single": ("input_x", [4]),
         "all_48px": ("input_x48", [0, 1, 2, 3, 4])}
ATOL = 1e-5  # measured max differences: about 1e-7 (positions), 6e-7 (patch tokens), 1e-6 (outputs)


@pytest.fixture(scope="module")
def release(request):
    """(state dict path, io tensors, meta) of the release's HCS model in the vectors."""
    folder = request.getfixturevalue("vectors") / "channelvit"
    stem = folder / "hcs_channelvit_tiny5"
    return (stem.with_name(stem.name + "_state_dict.safetensors"), load_file(str(stem) + "_io.safetensors"),
            json.loads(stem.with_name(stem.name + "_meta.json").read_text()))


def _tiny(pretrained=False, **kwargs):
    return zoo.create("channelvit", pretrained=pretrained, **{**TINY, "num_classes": 0, **kwargs})


@pytest.mark.parametrize("case", CASES)
def test_release_vectors(release, case):
    path, io, meta = release
    model = _tiny(pretrained=str(path)).eval()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == list(meta["state_dict"].items())
    source, channels = CASES[case]
    x, ids = io[source][:, channels], torch.tensor(channels)
    with torch.no_grad():
        pos = model.pos_table(x, copies=len(channels))  # (N, D)
        pos_used = torch.cat([model.pos_embed[0, :1], pos.repeat(len(channels), 1)])[None]  # (1, 1 + C*N, D)
        patch_tokens = model.patch_embed(x, ids, torch.zeros_like(pos))  # no position: the release's patch_embed
        tokens = model.forward_features(x, ids)
        cls = model(x, ids)
    diffs = {}
    for name, got in (("pos_embed_used", pos_used), ("patch_tokens", patch_tokens), ("last_tokens_normed", tokens),
                      ("cls_out", cls)):
        want = io[f"{case}/{name}"]
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m, n=name: f"{case}/{n}: {m}")
        diffs[name] = (got - want).abs().max().item()
    print(f"{case}: max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    torch.testing.assert_close(cls, tokens[:, 0], atol=0, rtol=0)
    assert (io[f"{case}/cls_out"][0] - io[f"{case}/cls_out"][1]).abs().max() > 1e-2  # the outputs depend on the input


def test_position_table_is_resampled_unless_one_channel_at_native_size(release):
    path, io, _ = release
    model = _tiny(pretrained=str(path))
    raw = model.pos_embed[0, 1:]
    x = io["input_x"]
    assert torch.equal(model.pos_table(x[:, :1], copies=1), raw)
    assert (model.pos_table(x, copies=5) - raw).abs().max() > 1e-3  # the release's +0.1 offset moves it
    assert model.pos_table(io["input_x48"][:, :1], copies=1).shape == (36, 48)


def test_dino_layout_loads_to_the_same_model(release, tmp_path):
    """The DINO class stores the channel embedding as a (1, D, C, 1, 1) parameter; DINO training wraps
    the backbone (``backbone.``) beside a projection head, under DataParallel (``module.``)."""
    path, io, _ = release
    state = load_file(str(path))
    dino = {f"module.backbone.{k}": v for k, v in state.items() if k != "patch_embed.channel_embed.weight"}
    dino["module.backbone.patch_embed.channel_embed"] = rearrange(state["patch_embed.channel_embed.weight"],
                                                                  "c d -> 1 d c 1 1")
    dino["module.head.last_layer.weight"] = torch.randn(16, 48)
    torch.save(dino, tmp_path / "dino.pth")
    hcs, from_dino = _tiny(pretrained=str(path)).eval(), _tiny(pretrained=str(tmp_path / "dino.pth")).eval()
    x, ids = io["input_x"][:, [1, 3]], torch.tensor([1, 3])
    with torch.no_grad():
        torch.testing.assert_close(from_dino(x, ids), hcs(x, ids), atol=0, rtol=0)


def test_release_hub_layouts_fit(vectors):
    """Every released checkpoint's keys and shapes fit its pretrained config's model (no download)."""
    expected = json.loads((vectors / "channelvit" / "official_hub_expected_keys.json").read_text())
    by_file = {zoo.get_pretrained_cfg(n).url.rsplit("/", 1)[-1]: n for n in zoo.list_pretrained("channelvit*")}
    assert sorted(by_file) == sorted(f"{name}.pth" for name in expected)
    for name, spec in expected.items():
        tagged = by_file[f"{name}.pth"]
        cfg = zoo.get_pretrained_cfg(tagged)
        assert cfg.input_size[0] == spec["in_chans"] and len(cfg.mean) == len(cfg.std) in (3, spec["in_chans"])
        model = zoo.create(tagged, device="meta")
        assert model.patch_size == spec["patch_size"] and model.in_chans == spec["in_chans"] == cfg.input_size[0]
        keys = dict(spec["non_block_keys"])
        keys.update({f"blocks.{i}.{k}": s for i in range(spec["depth"]) for k, s in spec["per_block_keys"].items()})
        assert len(keys) == spec["n_keys"] and sum(math.prod(s) for s in keys.values()) == spec["n_params"]
        ckpt = {k: torch.empty(s, device="meta") for k, s in keys.items()}
        fit_state_dict(checkpoint_filter_fn(ckpt, model), model, first_conv=cfg.first_conv,
                       classifier=cfg.classifier, source=name)  # raises naming any key or shape that does not fit


def test_channel_ids_shared_or_per_sample():
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        shared = model(x, torch.tensor([4, 0, 2]))
        torch.testing.assert_close(model(x, torch.tensor([[4, 0, 2], [4, 0, 2]])), shared, atol=0, rtol=0)
        torch.testing.assert_close(model(x, [4, 0, 2]), shared, atol=0, rtol=0)
        per_sample = model(x, torch.tensor([[4, 0, 2], [1, 3, 2]]))
        torch.testing.assert_close(per_sample[0], shared[0], atol=0, rtol=0)
        torch.testing.assert_close(per_sample[1:], model(x[1:], torch.tensor([1, 3, 2])), atol=0, rtol=0)
        assert (per_sample[1] - shared[1]).abs().max() > 1e-3  # the ids matter
        # the CLS output does not depend on the order the channels come in, only on which they are
        torch.testing.assert_close(model(x[:, [2, 0, 1]], torch.tensor([2, 4, 0])), shared, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x[:, :3]), model(x, torch.arange(3)), atol=0, rtol=0)  # default 0..C_in-1


def test_patch_embed_block_is_the_release_conv3d_forward_and_backward():
    """The block's fused op equals the release's Conv3d + channel embedding + positions, gradients included."""
    embed = blocks.create("channel_patch_embed", 5, embed_dim=6, patch_size=4, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[4, 0, 2], [1, 3, 2]])
    pos = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)  # a 2x3 grid
    out = embed(x, ids, pos)
    ref = torch.nn.functional.conv3d(x[:, None], embed.proj.weight, embed.proj.bias, stride=(1, 4, 4))  # (B,D,C,2,3)
    ref = ref + rearrange(embed.channel_embed(ids), "b c d -> b d c 1 1")
    ref = rearrange(ref, "b d c h w -> b (c h w) d") + pos.repeat(3, 1)  # (B, C*N, D), channel-major
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    grad = torch.randn_like(out)
    params = [x, pos, embed.proj.weight, embed.proj.bias, embed.channel_embed.weight]
    # the op's backward works in fp32 whatever the input dtype (kernels/patch_embed.py), hence fp32 tolerances
    for got, want in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_compiles_as_one_graph():
    """The custom op and the position resampling trace (aot_eager: CI's graph-capture check)."""
    model = _tiny(num_classes=2, enable_sample=False).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, ids = torch.randn(2, 3, 32, 32), torch.tensor([0, 2, 4])
    out = compiled(x, ids)
    torch.testing.assert_close(out, model(x, ids), atol=1e-6, rtol=0)
    out.sum().backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_hcs_sampler_statistics_and_train_only():
    sampler = blocks.create("hcs_sampler", 4)
    x = torch.arange(4.0).view(1, 4, 1, 1).expand(2, 4, 3, 3)  # channel c holds the value c
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    gen = torch.Generator().manual_seed(0)
    sizes, subsets, draws = Counter(), Counter(), 4000
    for _ in range(draws):
        sub, sub_ids = sampler(x, ids, generator=gen)
        kept = tuple(int(v) for v in sub[0, :, 0, 0])
        assert sub.shape == (2, len(kept), 3, 3) and torch.equal(sub[1], sub[0])  # one draw for the batch
        assert sub_ids.tolist() == [[10 + c for c in kept], [20 + c for c in kept]] and kept == tuple(sorted(set(kept)))
        sizes[len(kept)] += 1
        subsets[kept] += 1
    assert all(abs(sizes[k] / draws - 1 / 4) < 0.03 for k in range(1, 5))  # k uniform over 1..C
    for k, n_subsets in ((1, 4), (2, 6), (3, 4)):  # each k-subset uniform given k
        counts = [n for s, n in subsets.items() if len(s) == k]
        assert len(counts) == n_subsets and max(counts) / min(counts) < 1.5
    torch.manual_seed(3)
    a = sampler(x, ids)
    torch.manual_seed(3)
    assert torch.equal(sampler(x, ids)[1], a[1])  # the global RNG without a generator
    assert sampler.eval()(x, ids)[0] is x and blocks.create("hcs_sampler", 4, enabled=False)(x, ids)[0] is x


def test_hcs_in_training_only():
    model = _tiny(num_classes=3)
    x = torch.randn(2, 5, 32, 32)
    model.train()
    lengths = {model.forward_features(x).shape[1] for _ in range(40)}
    assert lengths == {1 + 16 * k for k in range(1, 6)}
    model.eval()
    with torch.no_grad():
        assert model.forward_features(x[:, :3], torch.tensor([0, 1, 4])).shape[1] == 1 + 16 * 3
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)
    model = _tiny(num_classes=3, enable_sample=False).train()
    assert {model.forward_features(x).shape[1] for _ in range(5)} == {81}


def test_gradients_reach_every_parameter_and_only_the_given_channels():
    model = _tiny(num_classes=3, enable_sample=False, drop_path_rate=0.1).train()
    model(torch.randn(2, 5, 32, 32)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
    x = torch.randn(2, 2, 32, 32, requires_grad=True)
    model(x, torch.tensor([1, 3])).sum().backward()
    rows = model.patch_embed.channel_embed.weight.grad.abs().sum(1)
    assert rows[[1, 3]].min() > 0 and rows[[0, 2, 4]].max() == 0 and x.grad.abs().sum() > 0
    model.set_grad_checkpointing()
    model.zero_grad()
    model(torch.randn(2, 5, 32, 32)).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_heads_and_pooling():
    x = torch.randn(2, 5, 32, 32)
    model = _tiny().eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 81, 48) and model(x).shape == (2, 48) and model.num_features == 48
        torch.testing.assert_close(model(x), feats[:, 0], atol=0, rtol=0)
        model.reset_classifier(10, global_pool="avg")
        assert model(x).shape == (2, 10)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
        assert [t.shape for t in model.get_intermediate_layers(x, n=2)] == [(2, 81, 48)] * 2
    assert zoo.create("channelvit_tiny_p8", num_classes=7, depth=1)(torch.randn(1, 2, 16, 16)).shape == (1, 7)
    pyramid = zoo.create("channelvit_tiny_p8", depth=2, in_chans=2, features_only=True).eval()  # taps, as timm's
    # ViTs (eval: in training, Hierarchical Channel Sampling may drop a channel)
    assert [tuple(t.shape) for t in pyramid(torch.randn(1, 2, 16, 16))] == [(1, 2 * 192, 2, 2)] * 2


def test_vit_baseline_matches_timm_and_fills_missing_channels():
    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch16_224", img_size=64, depth=3).eval()  # no download
    model = zoo.create("vit_small", img_size=64, depth=3, num_classes=1000, pretrained=reference.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    vit = zoo.create("vit", **TINY).eval()
    assert vit.forward_features(torch.randn(1, 5, 32, 32)).shape == (1, 17, 48)  # one token per patch
    full = torch.randn(2, 5, 32, 32)
    filled = torch.zeros_like(full)
    filled[:, [1, 4]] = full[:, [1, 4]] * 5 / 2  # the release's evaluation of ViT on a channel subset
    with torch.no_grad():
        torch.testing.assert_close(vit(full[:, [1, 4]], torch.tensor([1, 4])), vit(filled), atol=1e-6, rtol=0)
    vit = zoo.create("vit", **TINY, enable_sample=True).train()
    assert vit.forward_features(full).shape == (2, 17, 48)


def test_checkpoint_adapts_grid_and_head(release):
    path, _, _ = release
    model = _tiny(pretrained=str(path), img_size=48, num_classes=4)  # 4x4 table -> 6x6; the head stays at init
    assert model.pos_embed.shape == (1, 37, 48) and model(torch.randn(1, 5, 48, 48)).shape == (1, 4)
    with pytest.raises(CheckpointError, match="in_chans=5"):
        _tiny(pretrained=str(path), in_chans=8)


def test_errors_name_the_fix():
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        model(x, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        model(x, torch.tensor([-1, 1, 2]))
    with pytest.raises(ValueError, match="one id per channel"):
        model(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one id per channel"):
        model(x, torch.tensor([[0, 1, 2]] * 3))
    with pytest.raises(ValueError, match="integer"):
        model(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="repeat a channel"):
        model(x, torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match="repeat a channel"):
        model(x, torch.tensor([[0, 1, 2], [3, 1, 3]]))
    with pytest.raises(ValueError, match="in_chans=6"):
        model(torch.randn(1, 6, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch size 8.*32x24"):
        model(torch.randn(1, 3, 36, 30))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        _tiny(img_size=30)
