"""The channel-gate ops (pool_mean, pool_weighted, channel_scale with its residual + ReLU epilogue):
Triton kernels against their PyTorch references, forward and backward, NCHW and channels_last,
fp32 / fp16 / bf16, on small ragged shapes; gradcheck of the references; opcheck of every custom op.

Without a GPU the Triton path runs on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1); with one, it runs compiled on CUDA tensors.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from zoo import blocks
from zoo import kernels

from kernel_testing import DEVICE, TOL, needs_triton, opcheck_tests

# channels and H x W off the tile sizes (B=1, C=1, H x W = 1, W = 1 included)
SHAPES = [(2, 5, 3, 7), (1, 3, 1, 1), (3, 19, 4, 5), (2, 33, 6, 1), (1, 1, 1, 9)]
LAYOUTS = ["nchw", "channels_last"]

def _shared_filters(weight: torch.Tensor) -> torch.Tensor:
    """The first G rows of a (C, H, W) filter, G the largest proper divisor of C (1 for a prime C): a
    filter shared by runs of C / G channels, as FcaNet's frequency groups."""
    c = weight.shape[0]
    return weight[: next((d for d in range(c // 2, 0, -1) if c % d == 0), 1)]


# name -> (the op under test, its plain-PyTorch reference, the tensors it takes)
CASES = {
    "pool_mean": (lambda x, w, g, s: kernels.pool_mean(x), lambda x, w, g, s: kernels.pool_mean_reference(x), "x"),
    "pool_weighted": (lambda x, w, g, s: kernels.pool_weighted(x, w),
                      lambda x, w, g, s: kernels.pool_weighted_reference(x, w), "xw"),
    "pool_weighted_shared": (lambda x, w, g, s: kernels.pool_weighted(x, _shared_filters(w)),
                             lambda x, w, g, s: kernels.pool_weighted_reference(x, _shared_filters(w)), "xw"),
    "scale": (lambda x, w, g, s: kernels.channel_scale(x, g), lambda x, w, g, s: kernels.channel_scale_reference(x, g), "xg"),
    "scale_relu": (lambda x, w, g, s: kernels.channel_scale(x, g, relu=True),
                   lambda x, w, g, s: kernels.channel_scale_reference(x, g, relu=True), "xg"),
    "scale_add": (lambda x, w, g, s: kernels.channel_scale(x, g, s),
                  lambda x, w, g, s: kernels.channel_scale_reference(x, g, s), "xgs"),
    "scale_add_relu": (lambda x, w, g, s: kernels.channel_scale(x, g, s, relu=True),
                       lambda x, w, g, s: kernels.channel_scale_reference(x, g, s, relu=True), "xgs"),
}


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def _inputs(shape, dtype, layout, device):
    b, c, h, w = shape
    x = _layout(torch.randn(shape, device=device), layout).to(dtype)
    weight = torch.randn(c, h, w, device=device)
    gate = torch.rand(b, c, device=device)
    shortcut = _layout(torch.randn(shape, device=device), layout).to(dtype)
    return {"x": x, "w": weight, "g": gate, "s": shortcut}


def _run(fn, tensors: dict, names: str, grad_out_layout: str):
    """Output and gradients of every input in ``names``, for a fixed random upstream gradient."""
    leaves = {k: v.detach().clone().requires_grad_(k in names) for k, v in tensors.items()}
    out = fn(leaves["x"], leaves["w"], leaves["g"], leaves["s"])
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)
    if out.ndim == 4:
        grad_out = _layout(grad_out, grad_out_layout)
    grads = torch.autograd.grad(out, [leaves[k] for k in names], grad_out)
    return out, grads


def _compare(case, shape, dtype, layout, device):
    fn, ref, names = CASES[case]
    tensors = _inputs(shape, dtype, layout, device)
    other = "nchw" if layout == "channels_last" else "channels_last"  # upstream gradient in the other layout
    out, grads = _run(fn, tensors, names, other)
    # the reference in fp32 on the same values; the gate rounded to x's dtype as the op specifies
    upcast = {k: v.float() for k, v in tensors.items()}
    upcast["g"] = tensors["g"].to(dtype).float()
    ref_out, ref_grads = _run(ref, upcast, names, other)
    tol = TOL[dtype]
    assert out.dtype == (dtype if out.ndim == 4 else torch.float32)
    torch.testing.assert_close(out, ref_out.to(out.dtype), **tol)
    if out.ndim == 4:  # the output keeps x's memory format
        assert out.stride() == tensors["x"].stride() or out.numel() <= 1
    for name, got, want in zip(names, grads, ref_grads):
        assert got.shape == want.shape and got.dtype == tensors[name].dtype, name
        torch.testing.assert_close(got, want.to(got.dtype), **tol, msg=lambda m: f"grad of {name}: {m}")


@pytest.fixture
def tiny_tiles(monkeypatch):
    """16-element tiles and HW split across programs: many tiles, ragged edges on both axes, and the
    two-stage reduction (partial rows, then a sum)."""
    from zoo.kernels import _triton_channel_gate

    monkeypatch.setattr(_triton_channel_gate, "TILE", 16)
    monkeypatch.setattr(_triton_channel_gate, "MAX_BLOCK_C_CHANNELS_LAST", 4)
    monkeypatch.setattr(_triton_channel_gate, "MAX_BLOCK_HW", 4)
    monkeypatch.setattr(_triton_channel_gate, "MIN_PROGRAMS", 32)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference_fp32(triton_mode, case, shape, layout):
    _compare(case, shape, torch.float32, layout, DEVICE)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 9, 3, 5), (1, 6, 5, 1)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference_tiny_tiles(triton_mode, tiny_tiles, case, shape, layout):
    from zoo.kernels import _triton_channel_gate

    b, c, h, w = shape
    block_c, block_hw = _triton_channel_gate._tiles(c, h * w, layout == "channels_last")
    splits = _triton_channel_gate._splits(b, -(-c // block_c), h * w, block_hw, torch.device(DEVICE))[0]
    assert splits > 1  # really split
    _compare(case, shape, torch.float32, layout, DEVICE)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (3, 19, 4, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference_low_precision(triton_mode, case, shape, layout, dtype):
    _compare(case, shape, dtype, layout, DEVICE)


@needs_triton
@pytest.mark.parametrize("case", ["pool_mean", "pool_weighted", "scale_add_relu"])
def test_kernel_fp64_and_expanded_gradients(triton_mode, case):
    """fp64 accumulates in fp64; a stride-0 upstream gradient (from .sum()) is read in place."""
    fn, ref, names = CASES[case]
    tensors = {k: v.double() for k, v in _inputs((2, 6, 3, 5), torch.float64, "channels_last", DEVICE).items()}
    leaves = {k: v.clone().requires_grad_(k in names) for k, v in tensors.items()}
    ref_leaves = {k: v.clone().requires_grad_(k in names) for k, v in tensors.items()}
    out = fn(*(leaves[k] for k in "xwgs"))
    expected = ref(*(ref_leaves[k] for k in "xwgs"))
    torch.testing.assert_close(out, expected, **TOL[torch.float64])
    grads = torch.autograd.grad(out.sum(), [leaves[k] for k in names])
    want = torch.autograd.grad(expected.sum(), [ref_leaves[k] for k in names])
    for got, w in zip(grads, want):
        torch.testing.assert_close(got, w, **TOL[torch.float64])


@needs_triton
def test_kernel_reads_strided_inputs(triton_mode):
    """A sliced (non-dense) map and a transposed gate give the reference's values; the output is NCHW."""
    base = torch.randn(2, 7, 5, 8, device=DEVICE)
    x = base[:, 1:6, :, ::2]  # (2, 5, 5, 4), neither NCHW- nor channels_last-contiguous
    gate = torch.rand(5, 2, device=DEVICE).t()
    shortcut = torch.randn(2, 5, 5, 4, device=DEVICE)
    weight = torch.randn(5, 5, 4, device=DEVICE)
    torch.testing.assert_close(kernels.pool_mean(x), kernels.pool_mean_reference(x), **TOL[torch.float32])
    torch.testing.assert_close(kernels.pool_weighted(x, weight), kernels.pool_weighted_reference(x, weight),
                               **TOL[torch.float32])
    out = kernels.channel_scale(x, gate, shortcut, relu=True)
    assert out.is_contiguous()
    torch.testing.assert_close(out, kernels.channel_scale_reference(x, gate, shortcut, relu=True), **TOL[torch.float32])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES))
def test_reference_path_matches_plain_autograd(monkeypatch, case, layout):
    """ZOO_KERNELS=torch runs the references inside the custom ops: the autograd formulas and the
    reference backward ops give what autograd gives on the plain references."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    for shape in SHAPES:
        fn, ref, names = CASES[case]
        tensors = _inputs(shape, torch.float32, layout, "cpu")
        out, grads = _run(fn, tensors, names, layout)
        ref_out, ref_grads = _run(ref, tensors, names, layout)
        torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-6)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck_fp64(monkeypatch, case, layout):
    """gradcheck of the plain reference and of the custom op (its autograd formula) in fp64."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    fn, ref, names = CASES[case]
    tensors = {k: v.double() for k, v in _inputs((2, 3, 2, 3), torch.float64, layout, "cpu").items()}
    tensors["s"] = tensors["s"] + 0.3  # keep the ReLU's inputs away from its kink
    for f in (ref, fn):
        def call(*args, f=f):
            full = dict(tensors)
            full.update(zip(names, args))
            return f(full["x"], full["w"], full["g"], full["s"])

        args = tuple(tensors[k].clone().requires_grad_() for k in names)
        assert torch.autograd.gradcheck(call, args)


@pytest.fixture
def shared_rows_path(monkeypatch):
    """Every channels_last CPU map with a shared filter takes the embedding_bag path (normally only
    runs of 8 or more channels do)."""
    from zoo.kernels import channel_gate

    monkeypatch.setattr(channel_gate, "MIN_SHARED_CHANNELS", 1)


def _plain_weighted_pool(x, weight):
    return (x * kernels.per_channel_filter(weight, x.shape[1])).sum(dim=(2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 32, 5, 7), (2, 48, 1, 4)], ids=lambda s: "x".join(map(str, s)))
def test_shared_filter_rows_path_matches_plain_formula(shared_rows_path, shape, dtype):
    """The channels_last embedding_bag path (one row of C / G channels per pixel and group, bags of one
    image row) against x * filter summed, forward and both gradients, from inside and outside inference_mode
    (its index cache is built in one and used in the other)."""
    from zoo.kernels import channel_gate

    x = _layout(torch.randn(shape, dtype=dtype), "channels_last")
    weight = _shared_filters(torch.randn(shape[1:], dtype=dtype))
    with torch.inference_mode():
        torch.testing.assert_close(kernels.pool_weighted_reference(x, weight), _plain_weighted_pool(x, weight),
                                   **TOL[torch.float32])
    calls = []
    original = channel_gate._pool_shared_rows
    channel_gate._pool_shared_rows = lambda *a: calls.append(1) or original(*a)
    try:
        leaves = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
        out = kernels.pool_weighted_reference(*leaves)
    finally:
        channel_gate._pool_shared_rows = original
    # a map that is also NCHW-contiguous (C = 1, or 1x1) takes the NCHW path
    assert bool(calls) == (not x.is_contiguous())
    plain = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
    expected = _plain_weighted_pool(*plain)
    torch.testing.assert_close(out, expected.to(out.dtype), **TOL[torch.float32])
    grad = torch.randn_like(expected)
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    for got, want in zip(grads, torch.autograd.grad(expected, plain, grad)):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_shared_filter_rows_path_is_taken_for_wide_runs(monkeypatch):
    """At the default threshold a channels_last fp32 map with runs of 16 channels takes the rows path
    (and NCHW does not), with the same result as the per-channel filter."""
    from zoo.kernels import channel_gate

    calls = []
    original = channel_gate._pool_shared_rows
    monkeypatch.setattr(channel_gate, "_pool_shared_rows", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(2, 64, 6, 5)
    weight = torch.randn(4, 6, 5)
    expected = kernels.pool_weighted_reference(x, kernels.per_channel_filter(weight, 64))
    assert not calls
    got = kernels.pool_weighted_reference(_layout(x, "channels_last"), weight)
    assert calls
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("groups", [24, 3], ids=["per-channel", "shared"])
def test_weighted_pool_ignores_autocast(monkeypatch, layout, groups):
    """Under bf16 autocast the pool's bmm / conv / embedding_bag and the filter's gradient still run in
    fp32: bit for bit the values without autocast."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    x = _layout(torch.randn(2, 24, 9, 8), layout)
    weight = torch.randn(groups, 9, 8)

    def pool_and_grads():
        leaves = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
        out = kernels.pool_weighted(*leaves)
        return (out, *torch.autograd.grad(out.square().sum(), leaves))

    expected = pool_and_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pool_and_grads()
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=0, rtol=0)


def _opcheck_args(device):
    """(op, args, kwargs) for every custom op: NCHW and channels_last, fp32 and bf16, with and without
    inputs that require grad (the backward ops have no autograd formula: no double backward)."""
    b, c, h, w = 2, 5, 3, 4
    x = torch.randn(b, c, h, w, device=device)
    weight = torch.randn(c, h, w, device=device)
    gate = torch.rand(b, c, device=device)
    shortcut = torch.randn(b, c, h, w, device=device)
    grad = torch.randn(b, c, h, w, device=device)
    out = torch.relu(x * gate[:, :, None, None] + shortcut)

    def cl(t):
        return t.contiguous(memory_format=torch.channels_last)

    def leaf(t):
        return t.detach().clone().requires_grad_()

    return [
        (kernels.pool_mean.op, (leaf(x),), {}),
        (kernels.pool_mean.op, (cl(x).to(torch.bfloat16),), {}),
        (kernels.pool_weighted.op, (leaf(cl(x)), weight), {}),
        (kernels.pool_weighted.op, (x, leaf(weight)), {}),
        (kernels.pool_weighted.op, (leaf(cl(x)), leaf(weight[:1])), {}),  # one filter shared by all channels
        (kernels.pool_backward, (gate, weight, h, w, torch.bfloat16, True), {}),
        (kernels.pool_backward, (gate, weight[:1], h, w, torch.float32, False), {}),
        (kernels.pool_backward, (gate, None, h, w, torch.float32, False), {}),
        (kernels.channel_scale.op, (leaf(cl(x)), leaf(gate)), {}),
        (kernels.channel_scale.op, (leaf(x), leaf(gate), leaf(shortcut)), {"relu": True}),
        (kernels.channel_scale.op, (x.to(torch.bfloat16), gate), {"relu": True}),
        (kernels.channel_scale_backward, (grad, x, gate, out, True, True, True), {}),
        (kernels.channel_scale_backward, (cl(grad), cl(x), gate, None, False, True, False), {}),
    ]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_args)


def test_bad_inputs_fail_before_any_work():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"\(B, C\) = \(2, 4\) gate.*\(2, 3\)"):
        kernels.channel_scale(x, torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"shortcut's shape \(2, 4, 3, 2\)"):
        kernels.channel_scale(x, torch.rand(2, 4), torch.randn(2, 4, 3, 2), relu=True)
    with pytest.raises(ValueError, match=r"shortcut .*float64.* must match"):
        kernels.channel_scale(x, torch.rand(2, 4), x.double())
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(4, 3, 3\) filter.*\(4, 7, 7\)"):
        kernels.pool_weighted(x, torch.randn(4, 7, 7))
    with pytest.raises(ValueError, match=r"\(G, H, W\) with G dividing C = 4.*\(3, 3, 3\)"):
        kernels.pool_weighted(x, torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) feature map; got shape \(4, 3, 3\)"):
        kernels.pool_mean(x[0])


def test_available_reports_backends(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "auto")
    info = kernels.available()
    assert info["backend"]["cpu"] == "torch"
    assert info["backend"]["cuda"] == ("triton" if info["cuda"] and info["triton"] else "torch" if info["cuda"] else None)
    assert info["ops"]["channel_scale.backward"] == ["torch", "triton"]
    monkeypatch.setenv("ZOO_KERNELS", "triton")
    assert kernels.available()["backend"]["cpu"] == ("triton" if info["triton"] and info["interpret"] else None)


# --------------------------------------------------------------------------------------------------
# blocks and ResNet blocks on the Triton path
# --------------------------------------------------------------------------------------------------
VECTOR_CASES = [
    ("se", "block_se_c64_r16", dict(rd_channels=4)),
    ("eca", "block_eca_c64_k3", dict(k_size=3)),
    ("fca", "block_fca_c64_dct7_in7", dict(dct_h=7, dct_w=7)),
]


@needs_triton
@pytest.mark.parametrize("name,file,kwargs", VECTOR_CASES)
def test_block_vectors_on_the_triton_path(vectors, triton_mode, name, file, kwargs):
    data = load_file(str(vectors / "attn" / f"{file}.safetensors"))
    block = blocks.create(name, 64, **kwargs).to(DEVICE)
    block.load_state_dict({k[len("param."):]: v for k, v in data.items() if k.startswith("param.")})
    with torch.no_grad():
        out = block.eval()(data["input"].to(DEVICE))
        out64 = block.double()(data["input"].double().to(DEVICE))
    torch.testing.assert_close(out.cpu(), data["output_fp32"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out64.cpu(), data["output_fp64"], atol=1e-10, rtol=0)


def _resnet_block(kind: str, attn: str, **kwargs):
    from zoo.models.resnet import BasicBlock, Bottleneck

    if kind == "basic":
        down = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 1, bias=False), torch.nn.BatchNorm2d(16))
        return BasicBlock(16, 16, downsample=down, attn_layer=attn, attn_kwargs=kwargs)
    return Bottleneck(16, 4, attn_layer=attn, attn_kwargs=kwargs)  # identity shortcut, 16 channels


def _unfused(block, x):
    """The block's output through the attention module's own forward, then a separate add and ReLU."""
    shortcut = x if block.downsample is None else block.downsample(x)
    y = block.act1(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):  # Bottleneck
        y, act = block.bn3(block.conv3(block.act2(block.bn2(block.conv2(y))))), block.act3
    else:
        y, act = block.bn2(block.conv2(y)), block.act2
    return act(block.drop_path(block._modules[block.attn_name](y)) + shortcut)


@pytest.mark.parametrize("mode", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("kind,attn,kwargs", [("basic", "se", {}), ("bottleneck", "eca", {}),
                                              ("bottleneck", "fca", dict(dct_h=7, dct_w=7, reduction=4)),
                                              ("basic", "ca", dict(reduction=4))])
def test_resnet_block_fused_epilogue_equals_unfused(monkeypatch, mode, kind, attn, kwargs):
    monkeypatch.setenv("ZOO_KERNELS", mode)
    device = DEVICE if mode == "triton" else "cpu"
    block = _resnet_block(kind, attn, **kwargs).to(device)
    for p in block.parameters():  # no zero-init: every term matters
        torch.nn.init.normal_(p, 0.0, 0.3) if p.ndim > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    calls = []
    scale = kernels.channel_scale
    monkeypatch.setattr(kernels, "channel_scale", lambda *a, **k: calls.append(len(a) > 2) or scale(*a, **k))
    x = torch.randn(2, 16, 5, 6, device=device).to(memory_format=torch.channels_last).requires_grad_()
    out = block(x)
    assert calls == [True]  # one fused call with the shortcut
    expected = _unfused(block, x)
    exact = dict(atol=0, rtol=0) if mode == "torch" else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, **exact)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *block.parameters()], grad)
    want = torch.autograd.grad(expected, [x, *block.parameters()], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_resnet_block_keeps_the_unfused_path_for_drop_path_and_hooks(monkeypatch):
    calls = []
    scale = kernels.channel_scale
    monkeypatch.setattr(kernels, "channel_scale", lambda *a, **k: calls.append(len(a) > 2) or scale(*a, **k))
    from zoo.models.resnet import Bottleneck

    block = Bottleneck(16, 4, attn_layer="se", drop_path=0.5)
    x = torch.randn(2, 16, 4, 4)
    block.train()(x)
    block.eval()(x)
    assert calls == [False, True]  # stochastic depth active: gate then add; in eval: fused
    seen = []
    block.se.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    calls.clear()
    block(x)
    assert calls == [False] and seen == [x.shape]  # a hook on the attention module still fires


def test_a_global_hook_turns_every_fusion_off_in_blocks_and_resnet_alike(monkeypatch):
    """One rule (blocks.fusion.can_fuse) for the blocks and the ResNet epilogue: with a global forward
    hook, no module's forward is skipped anywhere, so the hook sees every one the unfused model calls."""
    from torch.nn.modules.module import register_module_forward_hook

    import zoo

    calls = []
    scale = kernels.channel_scale
    monkeypatch.setattr(kernels, "channel_scale", lambda *a, **k: calls.append(len(a) > 2) or scale(*a, **k))
    model = zoo.create("seresnet18", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    reference = model(x)
    assert calls and all(calls)  # no hook: every block's epilogue fuses the rescale with the residual add
    seen: list = []
    handle = register_module_forward_hook(lambda m, i, o: seen.append(m))
    try:
        calls.clear()
        out = model(x)
    finally:
        handle.remove()
    assert calls and not any(calls)  # every epilogue ran its modules
    attn = [m for m in model.modules() if isinstance(m, blocks.ChannelGate)]
    relus = [b.act2 for b in model.modules() if hasattr(b, "act2")]
    assert all(any(s is m for s in seen) for m in attn + relus)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
