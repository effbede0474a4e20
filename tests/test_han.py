"""HAN (Niu et al., ECCV 2020): parity with the release's vectors, its key layout, and its two blocks."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from zoo import blocks
import zoo

from kernel_testing import needs_triton

SMALL = {"scale": 2, "n_resgroups": 10, "n_resblocks": 1, "n_feats": 16, "reduction": 4}  # han_small_x2.json's config


@pytest.fixture(scope="module")
def han_vectors(vectors):
    folder = vectors / "rcan"
    meta = json.loads((folder / "han_small_x2.json").read_text())
    return {"dir": folder, "meta": meta, "io": load_file(str(folder / "han_small_x2_io.safetensors")),
            "state": str(folder / "han_small_x2_official_state.safetensors")}


@pytest.fixture(scope="module")
def small_han(han_vectors):
    cfg = {k: v for k, v in han_vectors["meta"]["config"].items() if k in SMALL}
    assert cfg == SMALL, "the vectors' config changed; update SMALL"
    return zoo.create("han", pretrained=han_vectors["state"], **SMALL).eval()


def _block_from_release(name: str, prefix: str, state_path: str, **kwargs) -> torch.nn.Module:
    state = load_file(state_path)
    block = blocks.create(name, 16, **kwargs)
    block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return block.eval()


def test_small_han_matches_release_through_pretrained_path(han_vectors, small_han):
    io = han_vectors["io"]
    with torch.no_grad():
        out = small_han(io["input"] / 255) * 255  # the vectors are in 0..255, the model in [0, 1]
        out64 = small_han.double()(io["input"].double() / 255) * 255
    small_han.float()
    assert out.shape == io["output"].shape == (1, 3, 16, 16)
    # fp32 on a 0..255 scale: oneDNN picks its convolution algorithm per CPU, summing in another order on some
    # (1.2e-3 = 5e-6 relative seen on an AVX512-VNNI machine without AMX); fp64 is the strict check
    torch.testing.assert_close(out, io["output"], atol=2e-3, rtol=0)
    torch.testing.assert_close(out64, io["output_fp64"], atol=1e-9, rtol=0)
    assert small_han.pretrained_cfg["source"] == "user"


@needs_triton
def test_small_han_matches_release_on_the_triton_path(han_vectors, small_han, triton_mode):
    """With the kernels forced (the interpreter without a GPU), every CA block's pool, excitation and
    rescale and the CSAM run as fused ops, and the model still reproduces the release, fp32 and fp64."""
    io = han_vectors["io"]
    with torch.no_grad():
        out = small_han(io["input"] / 255) * 255
        out64 = small_han.double()(io["input"].double() / 255) * 255
    small_han.float()
    # fp32 on a 0..255 scale: the kernels sum in another order than ATen (5e-6 relative); fp64 is the strict check
    torch.testing.assert_close(out, io["output"], atol=2e-3, rtol=0)
    torch.testing.assert_close(out64, io["output_fp64"], atol=1e-9, rtol=0)


def test_each_attention_path_moves_the_output(han_vectors, small_han):
    """A pass is meaningful: switching off either attention moves the output far past the tolerance."""
    x = han_vectors["io"]["input"] / 255
    with torch.no_grad():
        ref = small_han(x)
        for block in (small_han.la, small_han.csa):
            gamma = block.gamma.clone()
            block.gamma.zero_()
            moved = (small_han(x) - ref).abs().max() * 255
            block.gamma.copy_(gamma)
            assert moved > 1.0, f"{type(block).__name__} barely matters ({moved:.3g})"


def test_lam_block_matches_release(han_vectors):
    io, meta = han_vectors["io"], han_vectors["meta"]
    lam = _block_from_release("lam", "la.", han_vectors["state"], num_layers=11)
    assert lam.gamma.item() == pytest.approx(meta["la_gamma"])
    assert io["lam_in"].shape == (1, 11, 16, 5, 6)
    with torch.no_grad():
        out = lam(io["lam_in"])
    torch.testing.assert_close(out, io["lam_out"], atol=1e-5, rtol=0)
    assert (io["lam_out"] - io["lam_in"].flatten(1, 2)).abs().max() > 1e-2  # attention did something


@pytest.mark.parametrize("mode", ["auto", pytest.param("triton", marks=needs_triton)])
def test_csam_block_matches_release(han_vectors, monkeypatch, mode):
    monkeypatch.setenv("ZOO_KERNELS", mode)  # triton: the fused op (under the interpreter without a GPU)
    io, meta = han_vectors["io"], han_vectors["meta"]
    csam = _block_from_release("csam", "csa.", han_vectors["state"])
    assert csam.gamma.item() == pytest.approx(meta["csa_gamma"])
    with torch.no_grad():
        out = csam(io["csam_in"])
    torch.testing.assert_close(out, io["csam_out"], atol=1e-5, rtol=0)
    assert (io["csam_out"] - io["csam_in"]).abs().max() > 0.1


def test_full_size_keys_and_shapes_are_the_release_layout(vectors):
    full = json.loads((vectors / "rcan" / "han_full_keys.json").read_text())
    assert {"x2", "x3", "x4"} <= set(full["models"])
    for scale, ref in full["models"].items():
        model = zoo.create(f"han_{scale}", device="meta")  # shapes only: no memory, no init cost
        state = model.state_dict()
        assert [[k, list(v.shape)] for k, v in state.items()] == ref["keys"], scale
        assert sum(v.numel() for v in state.values()) == ref["n_params_total"]


def test_meta_device_runs_the_forward_for_shapes():
    model = zoo.create("han", device="meta", **SMALL)
    assert model(torch.empty(2, 3, 8, 7, device="meta")).shape == (2, 3, 16, 14)


def test_forward_is_head_of_features():
    model = zoo.create("han", **{**SMALL, "scale": 3}).eval()
    with torch.no_grad():
        model.la.gamma.fill_(0.5)
        model.csa.gamma.fill_(0.5)
        x = torch.rand(1, 3, 6, 5)
        feats = model.forward_features(x)
        assert feats.shape == (1, 16, 6, 5)
        torch.testing.assert_close(model.forward_head(feats), model(x), atol=0, rtol=0)
    assert model(x).shape == (1, 3, 18, 15)


def test_layer_attention_stays_fp32_under_autocast():
    lam = blocks.create("lam", 8)
    with torch.no_grad():
        lam.gamma.fill_(0.7)
    x = torch.randn(2, 4, 8, 6, 5)
    with torch.no_grad():
        ref = lam(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.bmm(x[:, :, 0, 0], x[:, :, 0, 0].transpose(1, 2)).dtype == torch.bfloat16  # autocast is live
            out = lam(x)
            out_bf16 = lam(x.bfloat16())
    # fp32 in: every step in fp32, bit for bit the result without autocast
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    # bf16 in: bf16 out, computed in fp32 from the bf16 values (only the final rounding differs)
    assert out_bf16.dtype == torch.bfloat16
    with torch.no_grad():
        ref_bf16 = lam(x.bfloat16().float())
    torch.testing.assert_close(out_bf16.float(), ref_bf16, atol=0, rtol=2 ** -8)


def test_han_runs_under_autocast(small_han, han_vectors):
    x = han_vectors["io"]["input"] / 255
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = small_han(x)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,shape", [("lam", (2, 3, 4, 3, 2)), ("csam", (2, 4, 3, 5))])
def test_blocks_gradcheck_fp64(name, shape):
    block = blocks.create(name, 4, dtype=torch.float64)
    with torch.no_grad():
        block.gamma.fill_(0.6)  # at the release's init (0) the attention branch has no effect
    params = {k: v.detach().clone().requires_grad_(True) for k, v in block.named_parameters()}
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    names = list(params)

    def fn(x, *values):
        return functional_call(block, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params.values()))


def test_bad_configs_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"n_resgroups=10.*n_feats \* 11.*got n_resgroups=4"):
        zoo.create("han", n_resgroups=4, n_resblocks=1, n_feats=16, reduction=4)
    with pytest.raises(ValueError, match="in_chans=3"):
        zoo.create("han", in_chans=1, n_resblocks=1, n_feats=16, reduction=4)
    lam = blocks.create("lam", 16, num_layers=11)
    with pytest.raises(ValueError, match=r"C=16 and N=11.*\(1, 10, 16, 4, 4\)"):
        lam(torch.randn(1, 10, 16, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, N, C, H, W\)"):
        lam(torch.randn(1, 176, 4, 4))
    with pytest.raises(ValueError, match=r"built for 16 channels.*8 channels"):
        blocks.create("csam", 16)(torch.randn(1, 8, 4, 4))


def test_blocks_registry_and_factory_arguments():
    assert {"lam", "csam"} <= set(blocks.list_blocks())
    assert blocks.list_blocks("*ca") == ["ca", "eca", "fca"]
    for name in ("lam", "csam"):
        cls = blocks.get_block(name)
        assert "ECCV 2020" in blocks.han.__doc__ and "gamma" in cls.__doc__
        block = blocks.create(name, 16, dtype=torch.bfloat16, device="cpu")
        assert all(p.dtype == torch.bfloat16 for p in block.parameters())
        assert block.gamma.shape == (1,) and block.gamma.item() == 0  # identity at init, as released
    assert list(blocks.create("csam", 16).state_dict()) == ["gamma", "conv.weight", "conv.bias"]
    assert dict(blocks.create("csam", 16).named_parameters())["conv.weight"].shape == (1, 1, 3, 3, 3)


def test_registered_names_and_release_cfgs():
    assert {"han", "han_x2", "han_x3", "han_x4"} <= set(zoo.list_models("han*"))
    assert "han_x4.release" in zoo.list_pretrained("han*")
    cfg = zoo.create("han_x2", device="meta").pretrained_cfg
    assert cfg["filename"] == "HAN_BIX2.pt" and cfg["first_conv"] == "head.0"
