"""Blocks: parity with the official modules' vectors, the registry, and clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from zoo import blocks
from zoo.blocks.fca import adaptive_pool_matrix, freq_indices
from zoo.blocks.layers import MaxPool2d, PixelShuffle, eca_kernel_size, stochastic_depth

# (block, vector file, constructor kwargs matching the official module)
VECTOR_CASES = [
    ("se", "block_se_c64_r16", dict(rd_channels=4)),  # torchvision SqueezeExcitation(64, 4)
    ("eca", "block_eca_c64_k3", dict(k_size=3)),  # ECA-Net eca_layer(64, k_size=3)
    ("fca", "block_fca_c64_dct7_in7", dict(dct_h=7, dct_w=7)),  # FcaNet MultiSpectralAttentionLayer(64, 7, 7)
]


def _load_block(vectors, name, file, kwargs):
    data = load_file(str(vectors / "attn" / f"{file}.safetensors"))
    block = blocks.create(name, 64, **kwargs)
    block.load_state_dict({k[len("param."):]: v for k, v in data.items() if k.startswith("param.")})
    return block.eval(), data


@pytest.mark.parametrize("name,file,kwargs", VECTOR_CASES)
def test_block_matches_official_vectors(vectors, name, file, kwargs):
    block, data = _load_block(vectors, name, file, kwargs)
    with torch.no_grad():
        out = block(data["input"])
        out64 = block.double()(data["input"].double())
    torch.testing.assert_close(out, data["output_fp32"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out64, data["output_fp64"], atol=1e-10, rtol=0)
    # the gate matters: the output is far from the identity and from a constant half-gate
    assert (data["output_fp32"] - data["input"]).abs().max() > 0.1
    assert (data["output_fp32"] - data["input"] * 0.5).abs().max() > 1e-3


def test_fca_dct_filter_is_the_release_buffer(vectors):
    data = load_file(str(vectors / "attn" / "block_fca_c64_dct7_in7.safetensors"))
    block = blocks.create("fca", 64, dct_h=7, dct_w=7)
    torch.testing.assert_close(block.dct_layer.weight, data["param.dct_layer.weight"], atol=1e-7, rtol=0)


def test_fca_pooled_input_equals_pool_then_filter():
    """Folding adaptive pooling into the filter equals the release's pool-then-weight path."""
    block = blocks.create("fca", 32, dct_h=7, dct_w=7, freq_sel_method="low4").double()
    for size in [(10, 10), (5, 9), (14, 14), (1, 1)]:
        x = torch.randn(2, 32, *size, dtype=torch.float64)
        pooled = F.adaptive_avg_pool2d(x, (7, 7))
        s = (pooled * block.dct_layer.weight).sum(dim=(2, 3))
        expected = x * torch.sigmoid(block.fc(s))[:, :, None, None]
        torch.testing.assert_close(block(x), expected, atol=1e-12, rtol=0)


def test_fca_pools_with_its_shared_frequency_filters():
    """The block hands the pooling op its G distinct DCT filters (one per frequency group) for a
    channels_last map or another size, and the buffer itself for an NCHW map at the DCT size; all agree
    with the release's per-channel buffer, in both layouts and at another input size."""
    block = blocks.create("fca", 64, dct_h=7, dct_w=7).double()  # top16: runs of 4 channels
    layer = block.dct_layer
    assert layer.groups == 16
    assert layer.spatial_filter(7, 7, per_channel=True) is layer.weight
    torch.testing.assert_close(layer.spatial_filter(7, 7).repeat_interleave(4, 0), layer.weight, atol=0, rtol=0)
    for size in [(7, 7), (10, 9)]:
        x = torch.randn(2, 64, *size, dtype=torch.float64)
        pooled = F.adaptive_avg_pool2d(x, (7, 7))
        expected = x * torch.sigmoid(block.fc((pooled * layer.weight).sum(dim=(2, 3))))[:, :, None, None]
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.testing.assert_close(block(x.contiguous(memory_format=layout)), expected, atol=1e-12, rtol=0)


def test_fca_falls_back_to_per_channel_filters_for_a_loaded_buffer_without_shared_runs():
    """A state dict whose DCT buffer differs inside a frequency group is pooled channel by channel
    (checked on load); loading the release's pattern back restores the shared filters."""
    block = blocks.create("fca", 32, dct_h=4, dct_w=4, freq_sel_method="low4").double()
    state = {k: v.clone() for k, v in block.state_dict().items()}
    edited = {**state, "dct_layer.weight": state["dct_layer.weight"].clone()}
    edited["dct_layer.weight"][1] *= 2.0
    block.load_state_dict(edited)
    assert block.dct_layer.groups == 32
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    expected = x * torch.sigmoid(block.fc((x * edited["dct_layer.weight"]).sum(dim=(2, 3))))[:, :, None, None]
    torch.testing.assert_close(block(x), expected, atol=1e-12, rtol=0)
    block.load_state_dict(state)
    assert block.dct_layer.groups == 4


def test_fca_keeps_one_filter_per_input_size_until_the_buffer_changes():
    """A size's filter is built once (the same tensor comes back), outside inference mode so a later
    training step may save it; an in-place edit, a reload or a cast of the buffer rebuilds it."""
    block = blocks.create("fca", 32, dct_h=7, dct_w=7, freq_sel_method="low4").double()
    layer = block.dct_layer
    with torch.inference_mode():
        first = layer.spatial_filter(10, 9)
    assert not first.is_inference()
    assert layer.spatial_filter(10, 9) is first and layer.spatial_filter(10, 9, per_channel=True) is not first
    x = torch.randn(2, 32, 10, 9, dtype=torch.float64, requires_grad=True)
    block(x).sum().backward()  # the kept filter is saved for backward
    with torch.no_grad():
        layer.weight.mul_(2.0)
    rebuilt = layer.spatial_filter(10, 9)
    torch.testing.assert_close(rebuilt, 2.0 * first, atol=1e-12, rtol=0)
    block.load_state_dict({**block.state_dict(), "dct_layer.weight": layer.weight / 2.0})
    torch.testing.assert_close(layer.spatial_filter(10, 9), first, atol=1e-12, rtol=0)
    block.load_state_dict({**block.state_dict(), "dct_layer.weight": layer.weight * 3.0}, assign=True)  # a new tensor
    torch.testing.assert_close(layer.spatial_filter(10, 9), 3.0 * first, atol=1e-12, rtol=0)
    block.float()
    assert layer.spatial_filter(10, 9).dtype == torch.float32
    for size in range(1, 12):  # more sizes than the cache keeps: it stays bounded
        layer.spatial_filter(size, size)
    assert len(layer.filters) == blocks.fca.FILTER_CACHE_SIZE


def test_adaptive_pool_matrix_matches_torch():
    for out_size, in_size in [(7, 10), (7, 7), (56, 24), (3, 8), (4, 1)]:
        v = torch.randn(3, in_size, dtype=torch.float64)
        torch.testing.assert_close(v @ adaptive_pool_matrix(out_size, in_size).T,
                                   F.adaptive_avg_pool1d(v[None], out_size)[0])


def test_fca_frequency_tables():
    xs, ys = freq_indices("top16")
    assert xs == [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2]
    assert ys == [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2]
    for method in ("top32", "low32", "bot32"):
        xs, ys = freq_indices(method)
        assert len(set(zip(xs, ys))) == 32, f"{method} repeats a frequency"
        assert all(0 <= u < 7 for u in xs + ys)
    # n=1 'low' is the (0, 0) DC basis: FcaNet reduces to a scaled global average pool
    block = blocks.create("fca", 16, dct_h=4, dct_w=4, freq_sel_method="low1")
    torch.testing.assert_close(block.dct_layer.weight, torch.full((16, 4, 4), 0.25))


def test_eca_adaptive_kernel_sizes():
    # k = |(log2 C + 1) / 2| rounded to odd, as in the paper and blocks.json's k_rule
    assert [eca_kernel_size(c) for c in (64, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 7]
    assert blocks.create("eca", 256).conv.weight.shape == (1, 1, 5)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_stochastic_depth_refuses_a_rate_outside_zero_to_one(rate):
    with pytest.raises(ValueError, match=r"drop_path rate must be in \[0, 1\)"):
        stochastic_depth(rate)
    assert isinstance(stochastic_depth(0.0), torch.nn.Identity)


def _pooled_layouts(monkeypatch) -> list[str]:
    """Record the layout of every map F.max_pool2d receives (the stock layer calls it too)."""
    seen, stock = [], F.max_pool2d

    def spy(x, *args, **kwargs):
        seen.append("nhwc" if not x.is_contiguous() else "nchw")
        return stock(x, *args, **kwargs)

    monkeypatch.setattr(F, "max_pool2d", spy)
    return seen


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True),
                                    dict(kernel_size=2, dilation=2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_infers_channels_last_on_the_cpu_with_the_stock_result(monkeypatch, kwargs, dtype):
    x = torch.relu(torch.randn(2, 5, 13, 11)).to(dtype)  # zeros tie in many windows
    expected = torch.nn.MaxPool2d(**kwargs)(x)
    pool = MaxPool2d(**kwargs)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(pool))  # a proxy takes the stock path
    assert torch.equal(traced(x), expected)
    seen = _pooled_layouts(monkeypatch)
    with torch.inference_mode():
        got = pool(x)
    assert seen == ["nhwc"] and torch.equal(got, expected) and got.is_contiguous()
    x_cl = x.contiguous(memory_format=torch.channels_last)  # already channels-last: the stock kernel is fast
    with torch.no_grad():
        assert torch.equal(pool(x_cl), expected) and seen[-1] == "nhwc" and len(seen) == 2

    leaf = x.clone().requires_grad_()  # training keeps the stock kernel, and so its choice among ties
    ref_leaf = x.clone().requires_grad_()
    pool(leaf).sum().backward()
    torch.nn.MaxPool2d(**kwargs)(ref_leaf).sum().backward()
    assert seen[2] == "nchw" and torch.equal(leaf.grad, ref_leaf.grad)


@pytest.mark.parametrize("r,shape", [(2, (2, 12, 5, 7)), (3, (1, 18, 4, 3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pixel_shuffle_infers_by_one_strided_copy_with_the_stock_result(monkeypatch, r, shape, dtype):
    x = torch.randn(shape).to(dtype)
    expected = torch.nn.PixelShuffle(r)(x)
    leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn_like(expected)
    torch.nn.PixelShuffle(r)(ref_leaf).backward(grad)
    shuffle = PixelShuffle(r)
    assert torch.equal(torch.fx.symbolic_trace(torch.nn.Sequential(shuffle))(x), expected)
    calls, stock = [], F.pixel_shuffle
    monkeypatch.setattr(F, "pixel_shuffle", lambda t, f: calls.append(f) or stock(t, f))
    with torch.inference_mode():
        got = shuffle(x)
    assert not calls and torch.equal(got, expected) and got.is_contiguous()
    shuffle(leaf).backward(grad)  # training: the stock op
    assert calls == [r] and torch.equal(leaf.grad, ref_leaf.grad)
    with pytest.raises(RuntimeError, match="divisible"), torch.no_grad():  # the stock op's own message
        shuffle(torch.randn(1, r * r + 1, 2, 2))


def test_se_rounding_follows_timm():
    assert blocks.create("se", 64).fc1.out_channels == 8
    assert blocks.create("se", 64, rd_divisor=1).fc1.out_channels == 4
    assert blocks.create("se", 256, rd_channels=10).fc1.out_channels == 10


@pytest.mark.parametrize("name", ["se", "eca", "fca", "ca"])
def test_block_gradients_match_autograd_of_plain_formula(name):
    kwargs = {"dct_h": 7, "dct_w": 7, "reduction": 4} if name == "fca" else {"reduction": 4} if name == "ca" else {}
    block = blocks.create(name, 16, **kwargs).double()
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64, requires_grad=True)  # ragged, pooled to 7x7 for fca
    assert torch.autograd.gradcheck(block, (x,))
    # every parameter receives a gradient
    block(x).square().sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["se", "eca", "fca", "ca"])
def test_block_device_dtype_and_channels_last(name):
    block = blocks.create(name, 32, dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in block.parameters())
    x = torch.randn(2, 32, 7, 7)
    ref = blocks.create(name, 32)
    ref.load_state_dict(block.float().state_dict())
    y = ref(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref(x))


def test_registry_lists_and_creates():
    assert {"se", "eca", "fca", "ca"} <= set(blocks.list_blocks())
    assert blocks.list_blocks("*ca") == ["ca", "eca", "fca"]
    assert isinstance(blocks.create("ca", 64), blocks.ChannelAttention)
    assert "ECA" in blocks.get_block("eca").__doc__ and "CVPR 2020" in blocks.eca.__doc__


def test_unknown_block_and_kwarg_errors():
    with pytest.raises(KeyError, match="did you mean 'eca'"):
        blocks.create("ecaa", 64)
    with pytest.raises(TypeError, match="did you mean 'rd_ratio'"):
        blocks.create("se", 64, rd_ration=0.25)
    with pytest.raises(ValueError, match="odd kernel size"):
        blocks.create("eca", 64, k_size=4)
    with pytest.raises(ValueError, match="not divisible by 16"):
        blocks.create("fca", 40)
    with pytest.raises(ValueError, match="freq_sel_method"):
        blocks.create("fca", 64, freq_sel_method="top3")


@pytest.mark.parametrize("name", ["se", "eca", "fca", "ca"])
def test_wrong_channel_count_names_both(name):
    block = blocks.create(name, 32)
    with pytest.raises(ValueError, match=r"built for 32 channels.*16 channels"):
        block(torch.randn(1, 16, 7, 7))


def test_register_rejects_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        @blocks.register("se")
        class Other(torch.nn.Module):
            pass
