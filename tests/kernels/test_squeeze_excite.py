"""The fused squeeze-excite ops (squeeze_excite_mlp: SE / CA / FcaNet; squeeze_excite_conv: ECA): the
one-launch Triton kernel against the reference (pool, then excitation) on ragged maps, NCHW and
channels_last, mean and weighted pooling (a filter per channel or shared by runs of channels),
fp32 / bf16 / fp16 / fp64, forward and every gradient; maps split over many programs so the
last-program hand-off runs; gradcheck; opcheck; and the blocks taking the fused path where it runs.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (conftest sets
TRITON_INTERPRET=1), which runs programs one after another: it checks the arithmetic and the
bookkeeping, not the cross-program memory ordering (benchmarks/gpu_check.sh runs these tests on CUDA).
"""
from __future__ import annotations

import pytest
import torch

from zoo import blocks
from zoo import kernels

from kernel_testing import DEVICE, TOL, forward_and_grads, needs_triton, opcheck_tests

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# (B, C, H, W, R): channels and maps off the tile sizes; B = 1, H x W = 1 and C = R = 1 included
SHAPES = [(2, 12, 5, 7, 3), (1, 33, 3, 3, 7), (3, 16, 1, 1, 4), (1, 1, 2, 3, 1), (2, 24, 6, 5, 6)]
FILTERS = ["mean", "per_channel", "shared"]


def _map(shape, dtype, layout, seed=0):
    b, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=gen).to(device=DEVICE or "cpu", dtype=dtype).contiguous(
        memory_format=LAYOUTS[layout])


def _filter(kind, c, h, w, dtype, device, seed=1):
    if kind == "mean":
        return None
    gen = torch.Generator().manual_seed(seed)
    groups = c if kind == "per_channel" else (4 if c % 4 == 0 else 1)
    return (torch.randn(groups, h, w, generator=gen) / (h * w) ** 0.5).to(device=device, dtype=dtype)


def _mlp_weights(c, r, dtype, device, bias=True, seed=2):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    return [rand(r, c, scale=c ** -0.5), rand(r) if bias else None, rand(c, r, scale=r ** -0.5),
            rand(c) if bias else None]


def _assert_matches(fn, ref, inputs, dtype):
    """Gate, pooled vector and every gradient against the reference (fp32 for 16-bit inputs)."""
    gate, grads = forward_and_grads(fn, inputs)
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    want, want_grads = forward_and_grads(ref, [t.to(ref_dtype) if t is not None else None for t in inputs])
    assert gate.dtype == dtype and gate.is_contiguous()
    torch.testing.assert_close(gate, want.to(dtype), **TOL[dtype])
    pooled = fn(*inputs)[1]
    assert pooled.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(pooled, ref(*[t.to(ref_dtype) if t is not None else None for t in inputs])[1],
                               **TOL[dtype])
    for got, expected in zip(grads, want_grads):
        assert got.dtype == dtype
        scale = max(1.0, expected.abs().max().item())  # weight gradients sum over the batch: relative
        torch.testing.assert_close(got.to(ref_dtype) / scale, expected / scale, **TOL[dtype])


@pytest.fixture
def many_programs(monkeypatch):
    """Tiny tiles and a high program target: every sample's map is pooled by several channel blocks and
    HW splits, so the last-program hand-off sums partial rows; the MLP loops over many C tiles."""
    from zoo.kernels import _triton_channel_excite, _triton_channel_gate, _triton_squeeze_excite

    monkeypatch.setattr(_triton_channel_gate, "TILE", 8)
    monkeypatch.setattr(_triton_channel_gate, "MAX_BLOCK_C_CHANNELS_LAST", 4)
    monkeypatch.setattr(_triton_channel_gate, "MAX_BLOCK_HW", 4)
    monkeypatch.setattr(_triton_channel_gate, "MIN_PROGRAMS", 64)
    monkeypatch.setattr(_triton_channel_excite, "TILE", 16)
    monkeypatch.setattr(_triton_channel_excite, "BLOCK_C_CONV", 4)
    monkeypatch.setattr(_triton_squeeze_excite, "BLOCK_S", 4)


def _mlp_case(shape, kind, layout, dtype, bias=True):
    b, c, h, w, r = shape
    x = _map((b, c, h, w), dtype, layout)
    return [x, _filter(kind, c, h, w, dtype, x.device), *_mlp_weights(c, r, dtype, x.device, bias)]


@needs_triton
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", FILTERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlp_kernel_matches_reference(triton_mode, many_programs, shape, kind, layout):
    _assert_matches(lambda *t: kernels.squeeze_excite_mlp(*t, "relu"),
                    lambda *t: kernels.squeeze_excite_mlp_reference(*t, "relu"),
                    _mlp_case(shape, kind, layout, torch.float32), torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["mean", "shared"])
def test_mlp_kernel_matches_reference_in_each_dtype(triton_mode, many_programs, kind, layout, dtype):
    _assert_matches(lambda *t: kernels.squeeze_excite_mlp(*t, "relu"),
                    lambda *t: kernels.squeeze_excite_mlp_reference(*t, "relu"),
                    _mlp_case((2, 12, 5, 7, 3), kind, layout, dtype), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mlp_kernel_silu_without_biases(triton_mode, many_programs, dtype):
    _assert_matches(lambda *t: kernels.squeeze_excite_mlp(*t, "silu"),
                    lambda *t: kernels.squeeze_excite_mlp_reference(*t, "silu"),
                    _mlp_case((3, 20, 4, 3, 5), "shared", "channels_last", dtype, bias=False), dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape,k", [((2, 12, 5, 7), 3), ((1, 33, 3, 3), 5), ((2, 2, 1, 1), 5), ((1, 9, 4, 4), 1)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"k{v}")
def test_conv_kernel_matches_reference(triton_mode, many_programs, shape, k, layout, dtype):
    x = _map(shape, dtype, layout)
    taps = torch.randn(k, generator=torch.Generator().manual_seed(3)).to(x)
    _assert_matches(kernels.squeeze_excite_conv, kernels.squeeze_excite_conv_reference, [x, None, taps], dtype)


@needs_triton
def test_default_tiles_and_the_fallbacks(triton_mode, monkeypatch):
    """Default tiles on an SE-ResNet-sized map (one launch: the pool kernel is not called); a bottleneck
    wider than MAX_R pools with the pool kernel and excites with the reference; an empty batch."""
    from zoo.kernels import _triton_channel_excite, _triton_squeeze_excite

    pools = []
    real_pool = _triton_squeeze_excite.pool
    monkeypatch.setattr(_triton_squeeze_excite, "pool", lambda *a: pools.append(1) or real_pool(*a))
    inputs = _mlp_case((2, 256, 7, 7, 16), "shared", "channels_last", torch.float32)
    for act in ("relu", "silu"):
        got, want = kernels.squeeze_excite_mlp(*inputs, act), kernels.squeeze_excite_mlp_reference(*inputs, act)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL[torch.float32])
    assert not pools
    monkeypatch.setattr(_triton_channel_excite, "MAX_R", 8)
    got, want = kernels.squeeze_excite_mlp(*inputs, "relu"), kernels.squeeze_excite_mlp_reference(*inputs, "relu")
    assert pools
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float32])
    empty = [inputs[0][:0], *inputs[1:]]
    gate, pooled = kernels.squeeze_excite_mlp(*empty)
    assert gate.shape == pooled.shape == (0, 256)


@needs_triton
def test_repeated_calls_reuse_nothing_stale(triton_mode, many_programs):
    """Each call starts its counters from zero: a second call on new data gives the new result."""
    first = _mlp_case((2, 12, 5, 7, 3), "mean", "nchw", torch.float32)
    second = [first[0].flip(0) * 2, *first[1:]]
    kernels.squeeze_excite_mlp(*first)
    got, want = kernels.squeeze_excite_mlp(*second), kernels.squeeze_excite_mlp_reference(*second, "relu")
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float32])


@pytest.mark.skipif(DEVICE != "cuda", reason="programs race only on a GPU: the interpreter runs them one by one")
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_last_program_hand_off_holds_under_contention_on_cuda(layout):
    """Thousands of programs per launch, many launches: a program that read the partial rows before
    the others had written them (a missing barrier, a wrong memory order) would show as a gate unlike
    the reference's in some launch."""
    for b, c, h, w in [(64, 256, 56, 56), (128, 2048, 7, 7)]:
        x = torch.randn(b, c, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=LAYOUTS[layout])
        inputs = [x, _filter("shared", c, h, w, torch.bfloat16, "cuda"), *_mlp_weights(c, c // 16, torch.bfloat16,
                                                                                     "cuda")]
        want = kernels.squeeze_excite_mlp_reference(*inputs, "relu")[0]
        for _ in range(50):
            torch.testing.assert_close(kernels.squeeze_excite_mlp(*inputs, "relu")[0], want, **TOL[torch.bfloat16])


@pytest.mark.parametrize("kind", FILTERS)
def test_backward_formulas_gradcheck(monkeypatch, kind):
    """gradcheck in fp64 of both ops (their autograd formulas) on the reference path, the filter included."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    b, c, h, w, r = 2, 8, 3, 4, 3
    x = torch.randn(b, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    filt = _filter(kind, c, h, w, torch.float64, "cpu")
    leaves = [t.requires_grad_() for t in [x, filt, *_mlp_weights(c, r, torch.float64, "cpu")] if t is not None]

    def mlp(*args):
        it = iter(args)
        x_, f_ = next(it), (next(it) if filt is not None else None)
        return kernels.squeeze_excite_mlp(x_, f_, *it, "silu")

    assert torch.autograd.gradcheck(mlp, tuple(leaves))
    taps = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, t_: kernels.squeeze_excite_conv(x_, None, t_), (leaves[0], taps))


def _opcheck_args(device):
    leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    x = torch.randn(2, 8, 3, 5, device=device)
    w1, b1, w2, b2 = _mlp_weights(8, 2, torch.float32, device)
    shared = _filter("shared", 8, 3, 5, torch.float32, device)
    taps = torch.randn(3, device=device)
    return [
        (kernels.squeeze_excite_mlp, (leaf(x), None, leaf(w1), leaf(b1), leaf(w2), leaf(b2), "relu"), {}),
        (kernels.squeeze_excite_mlp, (x.to(memory_format=torch.channels_last), shared, w1, None, w2, None, "silu"),
         {}),
        (kernels.squeeze_excite_mlp, (x.bfloat16(), shared.bfloat16(), *(t.bfloat16() for t in (w1, b1, w2, b2)),
                                      "relu"), {}),
        (kernels.squeeze_excite_conv, (leaf(x), None, leaf(taps)), {}),
    ]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(_opcheck_args)


def test_bad_inputs_fail_before_any_work():
    x = torch.randn(2, 6, 3, 3)
    w1, b1, w2, b2 = _mlp_weights(6, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"w1 must have shape \(3, 6\) for C = 6 channels.*got \(3, 5\)"):
        kernels.squeeze_excite_mlp(x, None, w1[:, :5], b1, w2, b2)
    with pytest.raises(ValueError, match=r"b2 \(torch.bfloat16, cpu\) must match w1 \(torch.float32.*one dtype"):
        kernels.squeeze_excite_mlp(x, None, w1, b1, w2, b2.bfloat16())
    with pytest.raises(ValueError, match=r"squeeze_excite_mlp needs a \(C, H, W\) = \(6, 3, 3\) filter"):
        kernels.squeeze_excite_mlp(x, torch.randn(4, 3, 3), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"squeeze_excite_conv expects a \(B, C, H, W\) feature map"):
        kernels.squeeze_excite_conv(x[0], None, torch.randn(3))
    with pytest.raises(ValueError, match=r"odd number of taps"):
        kernels.squeeze_excite_conv(x, None, torch.randn(2))
    with pytest.raises(TypeError, match=r"floating-point layers; got torch.int64"):
        kernels.squeeze_excite_conv(x, None, torch.ones(3, dtype=torch.int64))


# --------------------------------------------------------------------------------------------------
# the blocks: one squeeze-excite launch where its kernel runs, the modules everywhere else
# --------------------------------------------------------------------------------------------------
def _count_calls(monkeypatch):
    calls = []
    for name in ("squeeze_excite_mlp", "squeeze_excite_conv", "pool_mean", "pool_weighted"):
        op = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _op=op, _name=name, **k: calls.append(_name) or _op(*a, **k))
    return calls


BLOCK_CASES = [("se", {}, "squeeze_excite_mlp"), ("se", {"act_layer": "silu", "bias": False}, "squeeze_excite_mlp"),
               ("ca", {"reduction": 4}, "squeeze_excite_mlp"),
               ("fca", {"dct_h": 4, "dct_w": 4}, "squeeze_excite_mlp"),  # the map's own size
               ("fca", {"dct_h": 7, "dct_w": 7}, "squeeze_excite_mlp"),  # adaptive pooling folded in
               ("eca", {"k_size": 5}, "squeeze_excite_conv")]


@needs_triton
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name,kwargs,op", BLOCK_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_blocks_use_one_squeeze_excite_launch_on_the_triton_path(triton_mode, monkeypatch, name, kwargs, op, layout):
    """With the kernels running, the block's gate is one squeeze-excite launch (no separate pool), equal
    to its modules' gate: forward and the gradients of the input and every parameter."""
    block = blocks.create(name, 32, **kwargs).to(DEVICE)
    x = torch.randn(2, 32, 5, 4, device=DEVICE).contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    calls = _count_calls(monkeypatch)
    out = block(x)
    assert calls == [op]
    grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    calls.clear()
    want = block(x)
    assert op not in calls  # the reference path pools, then runs the modules
    want_grads = torch.autograd.grad(want.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(out, want, **TOL[torch.float32])
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@needs_triton
def test_blocks_keep_their_modules_for_hooked_or_unsupported_layers(triton_mode, monkeypatch):
    """A forward hook (calibration, feature extraction) or an activation the kernel lacks: the block pools
    with the pool op and runs its modules."""
    calls = _count_calls(monkeypatch)
    x = torch.randn(2, 32, 3, 3, device=DEVICE)
    hooked = blocks.create("se", 32).to(DEVICE)
    seen = []
    hooked.fc1.register_forward_hook(lambda *args: seen.append(1))
    hooked(x)
    assert seen and calls == ["pool_mean"]
    blocks.create("se", 32, act_layer="gelu").to(DEVICE)(x)
    blocks.create("se", 32, gate_layer="hard_sigmoid").to(DEVICE)(x)
    assert calls == ["pool_mean"] * 3
