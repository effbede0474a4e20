"""The quantized MoC FFN's decode path (``zoo::moc_ffn_decode_int``): reference, Triton twins, the block.

The block's integer decode must equal its dense integer path (every projection as an integer layer over
all H channels) bit for bit in fp32, read only the selected rows, and the Triton kernels must repeat the
reference's integer arithmetic (down kernel: bit for bit; up kernel: to the last bits of its SiLU).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo import blocks
from zoo import kernels
import zoo
from zoo.kernels import moc_int as int_module

from kernel_testing import DEVICE, needs_triton, opcheck_tests


def _quantized_block(spec: str, dim: int = 48, hidden: int = 192, top_k: int = 21, method: str = "rtn",
                     seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A MoC block between two linears (so it is neither first nor last), quantized; (model, block)."""
    torch.manual_seed(seed)
    block = blocks.create("moc_ffn", dim, hidden_dim=hidden, top_k=top_k)
    model = nn.Sequential(nn.Linear(dim, dim), block, nn.Linear(dim, dim)).eval()
    calib = [torch.randn(6, dim) * torch.linspace(0.2, 4, dim) for _ in range(2)]
    zoo.quantize(model, spec, calib=calib if method != "rtn" or "static" in spec else None, method=method)
    return model, block


@pytest.fixture
def decode_calls(monkeypatch) -> list:
    """One entry per call of ``zoo.kernels.moc_ffn_decode_int`` (which still runs)."""
    calls = []
    op = kernels.moc_ffn_decode_int
    monkeypatch.setattr(kernels, "moc_ffn_decode_int", lambda *a, **k: calls.append(1) or op(*a, **k))
    return calls


SPECS = [("w8a8", 192, "rtn"), ("w4a8", 192, "rtn"), ("w4a8-g16", 192, "rtn"), ("w4a8-asym", 192, "rtn"),
         ("w4a8", 172, "rtn"), ("w8a8-static", 192, "rtn"), ("w4a8", 192, "smoothquant"), ("w4a8", 192, "awq")]


@pytest.fixture
def reference_layers(monkeypatch):
    """The integer layers on their exact reference path (ZOO_KERNELS=torch), the oracle these tests compare with."""
    monkeypatch.setenv("ZOO_KERNELS", "torch")


@pytest.mark.parametrize("spec,hidden,method", SPECS, ids=[f"{s}-H{h}-{m}" for s, h, m in SPECS])
def test_block_decode_equals_dense_integer_path(spec, hidden, method, decode_calls, reference_layers):
    """1..4 tokens through the row-gathering op == the three integer layers on all H channels, bit for bit
    (the layers' exact reference; the CPU's oneDNN path sums the same int32 accumulators in another order)."""
    model, block = _quantized_block(spec, hidden=hidden, method=method)
    assert block._integer_decode_ready(), block
    with torch.no_grad():
        for tokens in (1, 3, 4):  # 2 * T * K <= H: T <= 4 at H = 192 (and 172), K = 21
            h = model[0](torch.randn(tokens, 48))
            got = block(h)
            want = block._forward_through_modules(h)
            assert torch.equal(got, want), (spec, tokens, (got - want).abs().max())
    assert len(decode_calls) == 3, "every call took the integer decode"
    with torch.no_grad():
        block(torch.randn(5, 48))  # the rows 5 tokens read approach all H: the dense integer path
    assert len(decode_calls) == 3


@pytest.mark.skipif(kernels.onednn_int8.unavailable_reason() is not None, reason="oneDNN int8 kernels unavailable")
def test_cpu_with_onednn_layers_decodes_through_the_dense_layers(decode_calls):
    """Where the integer layers run on oneDNN (a CPU with VNNI or AMX), a decode step takes them, densely:
    faster there than the row-gathering op's reference; the same top-K math."""
    model, block = _quantized_block("w8a8")
    assert block._integer_decode_ready() and block.gate_proj.execution()[0] == "onednn"
    with torch.no_grad():
        h = model[0](torch.randn(1, 48))
        assert torch.equal(block(h), block._forward_through_modules(h))
    assert decode_calls == []


def test_down_shift_and_weight_only_take_the_dense_path(decode_calls):
    """A shift before down_proj (an unfolded Outlier Suppression+ shift turns the activation's zeros into
    -shift) or weight-only layers: the block runs its dense path, and says so by not calling the op."""
    model, block = _quantized_block("w4a8")
    block.down_proj.act_shift = torch.full((192,), 0.01)
    _, weight_only = _quantized_block("w4a16")
    with torch.no_grad():
        for b in (block, weight_only):
            assert not b._integer_decode_ready()
            x = model[0](torch.randn(2, 48))
            assert torch.equal(b(x), b._forward_through_modules(x))
    assert not decode_calls


def test_reads_only_the_selected_rows():
    """Changing every unselected row of the packed up weights and of Wd^T leaves the result unchanged."""
    model, block = _quantized_block("w4a8")
    with torch.no_grad():
        h = model[0](torch.randn(2, 48))
        want = block(h)
        selected = block.selected_channels(h).flatten().unique()
        w_down_t, scale_t, zero_t = block._integer_down_transposed()
        unused = torch.ones(block.hidden_dim, dtype=torch.bool)
        unused[selected] = False
        assert unused.sum() > block.hidden_dim // 2
        up = block.up_proj
        scrambled_up = up.qweight.view(up.out_channels, -1).clone()
        scrambled_up[unused] = torch.randint(0, 256, scrambled_up[unused].shape, dtype=torch.uint8)
        scrambled_down = w_down_t.clone()
        scrambled_down[unused] = torch.randint(0, 256, scrambled_down[unused].shape, dtype=torch.uint8)
        tokens = h.reshape(-1, 48)
        gate_sel, idx = block.gate_proj(tokens).topk(block.top_k, dim=-1)
        idx, order = idx.sort(dim=-1)
        q, a = kernels.quantize_act(tokens, up.act_multiplier, up.act_shift, up.act_scale)
        got = kernels.moc_ffn_decode_int(q, a, gate_sel.gather(-1, order), idx, scrambled_up, up.weight_scale,
                                         up.weight_zero, up.bias, 4, up.group_size, scrambled_down, scale_t, zero_t,
                                         block.down_proj.bias, 4, block.down_proj.group_size)
    assert torch.equal(got, want)


def test_transposed_weights_are_the_same_codes():
    """transpose_int_weight moves codes: dequantizing both layouts gives the same matrix (int4 and int8)."""
    for spec in ("w4a8", "w8a8", "w4a8-asym"):
        _, block = _quantized_block(spec, hidden=192)
        down = block.down_proj
        values_t, scale_t, zero_t = kernels.transpose_int_weight(down.qweight, down.weight_scale, down.weight_zero,
                                                                 down.spec.weight_bits, down.in_channels)
        n, h = down.out_channels, down.in_channels
        rows = torch.arange(h)
        segment = rows // (down.group_size or h) if scale_t.shape[0] > 1 else torch.zeros_like(rows)
        if down.spec.weight_bits == 8:
            codes = values_t.float()
        else:
            zero = 8 if zero_t is None else zero_t.float()[segment]
            codes = kernels.unpack_int4(values_t, n).float() - zero
        dequantized_t = codes * scale_t.float()[segment]  # (H, N)
        torch.testing.assert_close(dequantized_t.t(), down.dequantized_weight().view(n, h), rtol=0, atol=0)


def test_cached_transpose_follows_the_weights(reference_layers):
    """The block keeps Wd^T's codes between calls and rebuilds them when the integer weights change."""
    model, block = _quantized_block("w4a8")
    with torch.no_grad():
        x = model[0](torch.randn(1, 48))
        block(x)
        first = block._down_t_int[1][0]
        block(x)
        assert block._down_t_int[1][0] is first
        block.down_proj.set_weight(torch.randn(48, 1, 1, 192))
        got = block(x)
        assert block._down_t_int[1][0] is not first
        assert torch.equal(got, block._forward_through_modules(x))


@pytest.mark.parametrize("spec", ["w4a8", "w8a8-static"])
def test_compiles_with_fullgraph(spec, reference_layers):
    """The integer decode traces whole (the transposed down weights are built inside the graph, the
    data-dependent checks are skipped) and equals eager bit for bit (the layers on the reference path,
    which is what compiled layers run)."""
    model, block = _quantized_block(spec)
    torch.compiler.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        x = model[0](torch.randn(2, 48))
        assert torch.equal(compiled(x), block(x))


def test_bad_input_is_named():
    _, block = _quantized_block("w4a8")
    up, down = block.up_proj, block.down_proj
    w_down_t, scale_t, zero_t = block._integer_down_transposed()
    q = torch.zeros(2, 48, dtype=torch.int8)
    a = torch.ones(2)
    idx = torch.tensor([[3, 1], [0, 2]])
    args = [q, a, torch.zeros(2, 2), idx, up.qweight.view(192, -1), up.weight_scale, None, None, 4, up.group_size,
            w_down_t, scale_t, zero_t, None, 4, down.group_size]
    with pytest.raises(ValueError, match="strictly ascending"):
        kernels.moc_ffn_decode_int(*args)
    args[3] = torch.tensor([[1, 3], [0, 2]])
    bad = list(args)
    bad[4] = up.qweight.view(192, -1)[:, :10]
    with pytest.raises(ValueError, match=r"w_up for d = 48 is torch.uint8 \(H, 24\)"):
        kernels.moc_ffn_decode_int(*bad)
    bad = list(args)
    bad[9] = 7
    with pytest.raises(ValueError, match="up_group=7 does not divide the 48"):
        kernels.moc_ffn_decode_int(*bad)
    bad = list(args)
    bad[3] = torch.tensor([[1, 300], [0, 2]])
    with pytest.raises(ValueError, match="idx must lie in 0..191"):
        kernels.moc_ffn_decode_int(*bad)


def test_quantized_lm_generates_through_the_integer_decode(decode_calls, monkeypatch):
    """w4a8 moc_lm_tiny: greedy generation through the row-gathering decode == through the dense integer
    layers, token for token; the op runs once per MoC layer and step."""
    torch.manual_seed(0)
    model = zoo.create("moc_lm_tiny", quant="w4a8").eval()
    prompt = torch.tensor([[100, 101, 32, 61]])
    fast = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    assert len(decode_calls) >= 5 * model.config.n_layers
    monkeypatch.setattr(blocks.MoCFFN, "_integer_decode_ready", lambda self: False)
    dense = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    assert torch.equal(fast, dense)


# --------------------------------------------------------------------------------------------------
# Triton kernels against the reference (TRITON_INTERPRET=1 on the CPU)
# --------------------------------------------------------------------------------------------------
def _operands(t, d, h, n, k, bits, up_group, down_group, asym, bias, mult, seed=0, device="cpu", shared=False):
    """Random integer operands in the layout the block passes (ascending idx, packed rows, tables); with
    ``shared``, one scale (and zero point) per row for all its groups, as int_conv2d also accepts."""
    gen = torch.Generator().manual_seed(seed)

    def packed(rows, length, group):
        segments = length // group if group and not shared else 1
        if bits == 8:
            values = torch.randint(-127, 128, (rows, length), generator=gen, dtype=torch.int8)
        else:
            values = kernels.pack_int4(torch.randint(0, 16, (rows, length), generator=gen))
        scale = (torch.rand(rows, segments, generator=gen) * 0.02 + 1e-3).to(torch.float16 if group else torch.float32)
        zero = torch.randint(0, 16, (rows, segments), generator=gen, dtype=torch.uint8) if asym else None
        return values, scale, zero

    w_up, up_scale, up_zero = packed(h, d, up_group)
    w_down, down_scale, down_zero = packed(n, h, down_group)  # (N, H) as the layer stores it
    w_down_t, scale_t, zero_t = kernels.transpose_int_weight(w_down, down_scale, down_zero, bits, h)
    idx = torch.stack([torch.randperm(h, generator=gen)[:k].sort().values for _ in range(t)])  # (T, K)
    tensors = dict(
        q=torch.randint(-127, 128, (t, d), generator=gen, dtype=torch.int8), a_scale=torch.rand(t, generator=gen) + 0.1,
        gate_sel=torch.randn(t, k, generator=gen), idx=idx.to(torch.int16), w_up=w_up, up_scale=up_scale,
        up_zero=up_zero, up_bias=torch.randn(h, generator=gen) if bias else None, up_bits=bits, up_group=up_group,
        w_down_t=w_down_t, down_scale_t=scale_t, down_zero_t=zero_t,
        down_bias=torch.randn(n, generator=gen) if bias else None, down_bits=bits, down_group=down_group,
        down_multiplier=torch.rand(h, generator=gen) + 0.5 if mult else None)
    return {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in tensors.items()}


# (T, d, H, N, K, bits, up_group, down_group, asym, bias, multiplier): ragged sizes, odd d and N for int4,
# K = 1 and K = H, one token and a full decode batch, groups that split rows into several segments
CASES = [
    (1, 20, 37, 20, 5, 4, None, None, False, False, False),
    (3, 33, 40, 27, 40, 4, 11, 8, True, True, True),
    (16, 24, 48, 31, 1, 8, 8, 16, False, True, False),
    (2, 64, 96, 64, 12, 4, 32, 32, False, False, True),
    (5, 18, 30, 9, 7, 8, None, 10, False, False, True),
]


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=[f"T{c[0]}-d{c[1]}-H{c[2]}-N{c[3]}-K{c[4]}-w{c[5]}" for c in CASES])
def test_kernels_match_reference(case, triton_mode, monkeypatch):
    from zoo.kernels import _triton_moc_int as triton_int

    monkeypatch.setattr(triton_int, "UP_BLOCKS", (4, 8))  # several row blocks and channel chunks
    monkeypatch.setattr(triton_int, "DOWN_BLOCK_N", 8)
    monkeypatch.setattr(triton_int, "DOWN_K_CHUNK", 3)  # chunks that cut groups in two: atomic int32 sums
    ops = _operands(*case, device=DEVICE)
    n = ops["down_scale_t"].shape[1]
    up_args = [ops[k] for k in ("q", "a_scale", "gate_sel", "idx", "w_up", "up_scale", "up_zero", "up_bias",
                                "up_bits", "up_group", "down_multiplier")]
    v = triton_int.moc_int_up(*up_args)
    cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in up_args]
    want_v = int_module.moc_int_up_reference(*cpu)
    torch.testing.assert_close(v.cpu(), want_v, rtol=1e-6, atol=1e-6)
    qd, d_scale = kernels.quantize_act_reference(want_v)  # the same codes for both down paths
    down_args = [qd, d_scale, ops["idx"].cpu(), *(ops[k] for k in ("w_down_t", "down_scale_t", "down_zero_t",
                                                                   "down_bias", "down_bits", "down_group")), n]
    down_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in down_args]
    want_y = int_module.moc_int_down_reference(*down_args)
    y = triton_int.moc_int_down(*[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in down_args])
    assert torch.equal(y.cpu(), want_y), (y.cpu() - want_y).abs().max()
    # the whole op: Triton throughout vs the reference (a SiLU rounding may move one requantized code)
    full = kernels.moc_ffn_decode_int(**ops)
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    want = kernels.moc_ffn_decode_int(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in ops.items()})
    torch.testing.assert_close(full.cpu(), want, rtol=1e-4, atol=1e-3 * float(want.abs().max()))


@needs_triton
def test_shared_tables_with_groups(triton_mode):
    """Groups with one scale per row: still one int32 accumulator per group (as the dense integer layers),
    each scaled by the row's single scale; Triton == reference bit for bit in the down projection."""
    from zoo.kernels import _triton_moc_int as triton_int

    ops = _operands(2, 24, 48, 20, 10, 4, 8, 12, True, False, False, device=DEVICE, shared=True)
    assert ops["down_scale_t"].shape[0] == 1 and ops["up_scale"].shape[1] == 1
    cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in ops.items()}
    v = int_module.moc_int_up_reference(*(cpu[k] for k in ("q", "a_scale", "gate_sel", "idx", "w_up", "up_scale",
                                                           "up_zero", "up_bias", "up_bits", "up_group",
                                                           "down_multiplier")))
    qd, d_scale = kernels.quantize_act_reference(v)
    args = [qd, d_scale, cpu["idx"], cpu["w_down_t"], cpu["down_scale_t"], cpu["down_zero_t"], None, 4, 12, 20]
    want = int_module.moc_int_down_reference(*args)
    got = triton_int.moc_int_down(*[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args])
    assert torch.equal(got.cpu(), want)
    # the reference against the dense integer layer on the scattered activation (int_linear, (N, 1) scales)
    hidden = torch.zeros(2, 48, dtype=torch.int8).scatter_(1, cpu["idx"].long(), qd)
    w_down = kernels.transpose_int_weight(cpu["w_down_t"], cpu["down_scale_t"], cpu["down_zero_t"], 4, 20)
    dense = kernels.int_linear(hidden, d_scale, w_down[0].view(20, -1), w_down[1], w_down[2], None, 4, 12)
    assert torch.equal(dense, want)


@needs_triton
def test_bf16_gate_and_output(triton_mode, monkeypatch):
    """bf16 tokens: the gate values come in bf16 and y goes out in bf16; the math stays fp32 inside."""
    ops = _operands(4, 33, 40, 27, 9, 4, 11, 8, False, True, True, device=DEVICE)
    ops["gate_sel"] = ops["gate_sel"].to(torch.bfloat16)
    got = kernels.moc_ffn_decode_int(**ops, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    want = kernels.moc_ffn_decode_int(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in ops.items()},
                                      out_dtype=torch.bfloat16)
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=2e-2, atol=2e-2 * float(want.abs().max()))


@needs_triton
def test_down_kernel_closes_segments_at_the_end_of_each_run():
    """All K selected channels in one segment, every channel its own segment, and alternating runs."""
    from zoo.kernels import _triton_moc_int as triton_int

    for group, idx in ((16, [[0, 1, 2, 3]]), (1, [[0, 5, 9, 15]]), (4, [[0, 1, 4, 8, 9, 10, 15]])):
        ops = _operands(1, 8, 16, 12, len(idx[0]), 4, None, group, True, True, False, device=DEVICE)
        k = len(idx[0])
        qd = torch.randint(-127, 128, (1, k), dtype=torch.int8)
        args = [qd, torch.tensor([0.37]), torch.tensor(idx, dtype=torch.int32), ops["w_down_t"].cpu(),
                ops["down_scale_t"].cpu(), ops["down_zero_t"].cpu(), ops["down_bias"].cpu(), 4, group, 12]
        want = int_module.moc_int_down_reference(*args)
        got = triton_int.moc_int_down(*[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args])
        assert torch.equal(got.cpu(), want), group


def _opcheck_cases(device):
    ops = _operands(3, 33, 40, 27, 6, 4, 11, 8, True, True, True, device=device)
    args = tuple(ops[k] for k in ("q", "a_scale", "gate_sel", "idx", "w_up", "up_scale", "up_zero", "up_bias",
                                  "up_bits", "up_group", "w_down_t", "down_scale_t", "down_zero_t", "down_bias",
                                  "down_bits", "down_group", "down_multiplier")) + (None, torch.float32)
    return [(torch.ops.zoo.moc_ffn_decode_int.default, args)]


test_opcheck_reference_path, test_opcheck_triton_path = opcheck_tests(
    _opcheck_cases, test_utils=("test_schema", "test_faketensor"))
