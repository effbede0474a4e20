"""torch.export and zoo.export_onnx: each family's graph runs with eager's numbers, batch (and a language
model's sequence length) kept dynamic."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from zoo import kernels
import zoo
from zoo.kernels.export import reference_decompositions
from zoo.onnx_export import ONNXMismatchError

ort = pytest.importorskip("onnxruntime")

# (architecture, arguments, input): together they call every float zoo op a forward can hold on the CPU
FAMILIES = [
    ("seresnet18", dict(num_classes=5), lambda: torch.randn(1, 3, 40, 40)),  # pool_mean, channel_scale
    ("eca_resnet18", dict(num_classes=5), lambda: torch.randn(1, 3, 40, 40)),
    ("fcanet34", dict(num_classes=5), lambda: torch.randn(1, 3, 56, 56)),  # pool_weighted
    ("han_x2", dict(n_resblocks=1, n_feats=8, reduction=4), lambda: torch.rand(1, 3, 12, 12)),  # csam
    ("channelvit_tiny", dict(img_size=32, in_chans=3, depth=1), lambda: torch.randn(1, 3, 32, 32)),  # patch embed
    ("moc_lm_tiny", dict(), lambda: torch.randint(0, 100, (1, 12))),  # moc_ffn
]


def _run(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    err = (out.double() - ref.double()).pow(2).mean().item()
    return math.inf if err == 0 else 10 * math.log10(ref.double().pow(2).mean().item() / err)


@pytest.mark.parametrize("name,kwargs,make_input", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_exported_graph_matches_eager_at_another_batch(tmp_path, name, kwargs, make_input):
    torch.manual_seed(0)
    model = zoo.create(name, **kwargs).eval()
    x = make_input()
    path = zoo.export_onnx(model, tmp_path / f"{name}.onnx", x)  # the check in export_onnx runs too
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert not any("zoo" in op for op in ops)
    batch = torch.cat([make_input() for _ in range(3)])  # the batch dimension was exported symbolic
    with torch.no_grad():
        expected = model(batch)
    got = _run(path, batch)
    assert got.shape == expected.shape
    assert _sqnr_db(got, expected) > 80, name


@pytest.mark.parametrize("name", ["moc_lm_tiny", "dense_lm_tiny"])
def test_language_model_exports_with_a_dynamic_sequence_length(name):
    """One program for every length from 2 to the context: no branch on the length may specialise it (a
    causal flag computed from it, the MoC block's decode cut-off)."""
    torch.manual_seed(0)
    model = zoo.create(name).eval()
    seq = torch.export.Dim("seq", min=2, max=model.max_seq_len)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    program = torch.export.export(model, (ids,), dynamic_shapes={"input_ids": {1: seq}}).module()
    for length in (3, 37):  # below and above the decode cut-off (zoo.kernels.moc.DECODE_TOKENS)
        x = torch.randint(0, model.config.vocab_size, (2, length))
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-4)


def test_default_example_comes_from_the_pretrained_cfg(tmp_path):
    model = zoo.create("seresnet18", num_classes=3)  # input_size (3, 224, 224)
    path = zoo.export_onnx(model, tmp_path / "se.onnx", dynamic_batch=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 224, 224]
    assert model.training  # the mode it came in with


def test_every_float_op_has_a_decomposition():
    """A new zoo op that a forward can call needs an entry, or ONNX export of its model fails."""
    not_exported = {"int_conv2d", "quantize_act", "onednn_int8_layer", "moc_ffn_decode_int",  # integer layers
                    "kv_quantize", "kv_dequantize"}  # caches: decoding state, not a graph's
    table = {op.name().split("::")[1] for op in reference_decompositions()}
    ops = {n for n in dir(torch.ops.zoo) if isinstance(getattr(torch.ops.zoo, n), torch._ops.OpOverloadPacket)}
    forward_ops = {n for n in ops if not n.endswith("_backward") and n not in not_exported}
    assert forward_ops - table == set()
    assert table <= ops


def test_channel_scale_decomposition_equals_the_op():
    x, gate, shortcut = torch.randn(2, 6, 5, 5), torch.rand(2, 6), torch.randn(2, 6, 5, 5)
    fn = reference_decompositions()[torch.ops.zoo.channel_scale.default]
    assert torch.equal(fn(x, gate, shortcut, True), kernels.channel_scale(x, gate, shortcut, relu=True))


def test_pool_weighted_decomposition_matches_the_reference():
    x, w = torch.randn(2, 8, 7, 7), torch.randn(4, 7, 7)  # runs of two channels share a filter
    fn = reference_decompositions()[torch.ops.zoo.pool_weighted.default]
    torch.testing.assert_close(fn(x, w), kernels.pool_weighted(x, w), rtol=1e-5, atol=1e-5)


def test_moc_ffn_decomposition_matches_the_reference():
    torch.manual_seed(0)
    x, wg, wu, wd = torch.randn(40, 16), torch.randn(64, 16), torch.randn(64, 16), torch.randn(16, 64)
    fn = reference_decompositions()[torch.ops.zoo.moc_ffn.default]
    y, idx, g, u = fn(x, wg, wu, wd, 8)
    y_ref, idx_ref, g_ref, u_ref = kernels.moc_ffn_reference(x, wg, wu, wd, 8)
    order, order_ref = idx.long().sort(1).indices, idx_ref.long().sort(1).indices  # same channels, any order
    assert torch.equal(idx.gather(1, order), idx_ref.gather(1, order_ref)) and idx.dtype == idx_ref.dtype
    torch.testing.assert_close(g.gather(1, order), g_ref.gather(1, order_ref))
    torch.testing.assert_close(u.gather(1, order), u_ref.gather(1, order_ref), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


def test_quantized_model_is_refused(tmp_path):
    model = zoo.quantize(zoo.create("seresnet18", num_classes=3), "w8a8")
    with pytest.raises(ValueError, match="float model.*onnxruntime.quantization"):
        zoo.export_onnx(model, tmp_path / "q.onnx")
    assert not any(tmp_path.iterdir())


def test_models_make_their_own_example(tmp_path):
    model = zoo.create("moc_lm_tiny")  # token ids, from the model's example_inputs
    path = zoo.export_onnx(model, tmp_path / "lm.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(int64)"


def test_bad_arguments_fail_before_work(tmp_path):
    model = zoo.create("moc_lm_tiny")
    with pytest.raises(TypeError, match="tensor or a tuple"):
        zoo.export_onnx(model, tmp_path / "lm.onnx", [1, 2])
    bare = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="example_input"):
        zoo.export_onnx(bare, tmp_path / "lin.onnx")
    with pytest.raises(ValueError, match=r"\.onnx file"):
        zoo.export_onnx(model, tmp_path / "lm.pt", torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.export_onnx(model, tmp_path / "missing" / "lm.onnx", torch.zeros(1, 4, dtype=torch.long))


def test_missing_exporter_names_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ImportError, match=r"'onnxscript'.*pip install"):
        zoo.export_onnx(zoo.create("rcan_tiny_x2"), tmp_path / "r.onnx", torch.rand(1, 3, 8, 8))


def test_a_disagreeing_graph_is_reported(tmp_path):
    model = zoo.create("rcan_tiny_x2")
    with pytest.raises(ONNXMismatchError, match="dB SQNR"):
        zoo.export_onnx(model, tmp_path / "r.onnx", torch.rand(1, 3, 8, 8), min_sqnr_db=1e9)


def test_a_top_k_model_that_disagrees_is_told_why_and_what_to_pass(tmp_path):
    """A Mixture-of-Channels LM can flip near-tied selections under onnxruntime's rounding (moc_lm_130m: 39-44 dB,
    its dense twin passes): the error says so; a model without a selection does not get that sentence."""
    with pytest.raises(ONNXMismatchError, match=r"top-K .*min_sqnr_db= what you accept, or check=False"):
        zoo.export_onnx(zoo.create("moc_lm_tiny"), tmp_path / "m.onnx", min_sqnr_db=1e9)
    with pytest.raises(ONNXMismatchError, match=r"for inspection\.$"):
        zoo.export_onnx(zoo.create("dense_lm_tiny"), tmp_path / "d.onnx", min_sqnr_db=1e9)


def test_cli_exports_and_reports(tmp_path, capsys):
    from zoo.__main__ import main

    out = tmp_path / "rcan.onnx"
    assert main(["export-onnx", "rcan_tiny_x2", str(out), "--pretrained", "--size", "16"]) == 0
    assert "matched eager" in capsys.readouterr().out
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = zoo.create("rcan_tiny_x2", pretrained=True).eval()(x)
    assert _sqnr_db(_run(out, x), expected) > 80  # the trained weights went in
    assert main(["export-onnx", "rcan_tiny_x2", str(tmp_path / "r.pt")]) == 2
    assert ".onnx file" in capsys.readouterr().err
